package gossip

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	"github.com/libp2p/go-msgio"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// StreamTimeout bounds one request/answer exchange on a direct stream.
const StreamTimeout = 10 * time.Second

// ErrRefused means the peer answered but refused the request.
var ErrRefused = errors.New("refused by peer")

// Handlers answer the direct-stream protocols. Each runs on a stream handler
// goroutine that Streams tracks; each must return promptly.
type Handlers struct {
	// Key receives a key transfer from an authenticated peer and reports
	// whether it was accepted.
	Key func(from peer.ID, t *wire.KeyTransfer) bool
	// Roster returns the signed ops of a group for an authenticated peer, or
	// false to refuse (the node serves current members only). known are the
	// requester's roster heads (none, or at most roster.MaxParents, checked
	// to be op IDs): what it already has.
	Roster func(from peer.ID, group [32]byte, known []roster.OpID) ([]*wire.Signed, bool)
	// Sync answers a history request from an authenticated peer, or false
	// to refuse (the peer is not a current member).
	Sync func(from peer.ID, req *wire.SyncRequest) (*wire.SyncResponse, bool)
}

// Streams serves the direct-stream protocols on a host and opens them to
// other peers. Close removes the handlers and waits for running ones.
type Streams struct {
	host     host.Host
	handlers Handlers
	wg       sync.WaitGroup
	mu       sync.Mutex
	closed   bool
}

// NewStreams registers the protocol handlers on h. A nil handler refuses
// every request of its protocol.
func NewStreams(h host.Host, handlers Handlers) *Streams {
	if handlers.Key == nil {
		handlers.Key = func(peer.ID, *wire.KeyTransfer) bool { return false }
	}
	if handlers.Roster == nil {
		handlers.Roster = func(peer.ID, [32]byte, []roster.OpID) ([]*wire.Signed, bool) { return nil, false }
	}
	if handlers.Sync == nil {
		handlers.Sync = func(peer.ID, *wire.SyncRequest) (*wire.SyncResponse, bool) { return nil, false }
	}
	s := &Streams{host: h, handlers: handlers}
	h.SetStreamHandler(KeyProtocol, s.track(s.serveKey))
	h.SetStreamHandler(RosterProtocol, s.track(s.serveRoster))
	h.SetStreamHandler(SyncProtocol, s.track(s.serveSync))
	return s
}

// Close unregisters the handlers and waits until running handlers return.
func (s *Streams) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.host.RemoveStreamHandler(KeyProtocol)
	s.host.RemoveStreamHandler(RosterProtocol)
	s.host.RemoveStreamHandler(SyncProtocol)
	// Running handlers finish their exchange (each stream has a
	// StreamTimeout deadline, so a slow peer holds Close up that long at
	// most).
	s.wg.Wait()
}

// track wraps a handler so Close can wait for it; streams that arrive after
// Close are reset.
func (s *Streams) track(fn func(network.Stream)) network.StreamHandler {
	return func(st network.Stream) {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = st.Reset()
			return
		}
		s.wg.Add(1)
		s.mu.Unlock()
		defer s.wg.Done()
		_ = st.SetDeadline(time.Now().Add(StreamTimeout))
		fn(st)
	}
}

func readMsg(st network.Stream, max int, into proto.Message) error {
	b, err := msgio.NewVarintReaderSize(st, max).ReadMsg()
	if err != nil {
		if errors.Is(err, msgio.ErrMsgTooLarge) {
			return fmt.Errorf("%w: frame over %d bytes", ErrTooLarge, max)
		}
		return err
	}
	if err := proto.Unmarshal(b, into); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return nil
}

func writeMsg(st network.Stream, max int, m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	if len(b) > max {
		return fmt.Errorf("%w: frame of %d bytes over %d", ErrTooLarge, len(b), max)
	}
	return msgio.NewVarintWriter(st).WriteMsg(b)
}

func (s *Streams) serveKey(st network.Stream) {
	var t wire.KeyTransfer
	if err := readMsg(st, MaxKeyFrame, &t); err != nil {
		_ = st.Reset()
		return
	}
	ok := s.handlers.Key(st.Conn().RemotePeer(), &t)
	if err := writeMsg(st, MaxKeyFrame, &wire.KeyTransferAck{Accepted: ok}); err != nil {
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

func (s *Streams) serveRoster(st network.Stream) {
	var req wire.RosterRequest
	if err := readMsg(st, MaxKeyFrame, &req); err != nil || len(req.GroupId) != 32 || len(req.KnownHeads) > roster.MaxParents {
		_ = st.Reset()
		return
	}
	known := make([]roster.OpID, 0, len(req.KnownHeads))
	for _, h := range req.KnownHeads {
		id, err := roster.ParseOpID(h)
		if err != nil {
			_ = st.Reset()
			return
		}
		known = append(known, id)
	}
	ops, ok := s.handlers.Roster(st.Conn().RemotePeer(), [32]byte(req.GroupId), known)
	if !ok {
		_ = st.Reset()
		return
	}
	if err := writeMsg(st, MaxRosterFrame, &wire.RosterResponse{Ops: ops}); err != nil {
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

func (s *Streams) serveSync(st network.Stream) {
	var req wire.SyncRequest
	if err := readMsg(st, MaxSyncRequestFrame, &req); err != nil || len(req.GroupId) != 32 {
		_ = st.Reset()
		return
	}
	resp, ok := s.handlers.Sync(st.Conn().RemotePeer(), &req)
	if !ok {
		_ = st.Reset()
		return
	}
	if err := writeMsg(st, MaxSyncFrame, resp); err != nil {
		_ = st.Reset()
		return
	}
	_ = st.Close()
}

// exchange opens a stream to p, writes req, reads one answer into resp.
func (s *Streams) exchange(ctx context.Context, p peer.ID, pid protocol.ID, req proto.Message, maxReq, maxResp int, resp proto.Message) error {
	ctx, cancel := context.WithTimeout(ctx, StreamTimeout)
	defer cancel()
	st, err := s.host.NewStream(ctx, p, pid)
	if err != nil {
		return fmt.Errorf("open %s stream: %w", pid, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = st.Reset() }) // mocknet streams ignore deadlines
	defer stop()
	dl, _ := ctx.Deadline()
	_ = st.SetDeadline(dl)
	if err := writeMsg(st, maxReq, req); err != nil {
		_ = st.Reset()
		return err
	}
	_ = st.CloseWrite()
	if err := readMsg(st, maxResp, resp); err != nil {
		_ = st.Reset()
		return err
	}
	return st.Close()
}

// SendKey delivers a key transfer to p and reports whether p accepted it.
func (s *Streams) SendKey(ctx context.Context, p peer.ID, t *wire.KeyTransfer) error {
	var ack wire.KeyTransferAck
	if err := s.exchange(ctx, p, KeyProtocol, t, MaxKeyFrame, MaxKeyFrame, &ack); err != nil {
		return err
	}
	if !ack.Accepted {
		return ErrRefused
	}
	return nil
}

// FetchRoster asks p for the signed ops of group that are not in the causal
// past of known (our roster heads; nil, or more than roster.MaxParents of
// them, asks for everything). The caller verifies them.
func (s *Streams) FetchRoster(ctx context.Context, p peer.ID, group [32]byte, known []roster.OpID) ([]*wire.Signed, error) {
	req := &wire.RosterRequest{GroupId: group[:]}
	if len(known) <= roster.MaxParents {
		for _, h := range known {
			req.KnownHeads = append(req.KnownHeads, h.Bytes())
		}
	}
	var resp wire.RosterResponse
	if err := s.exchange(ctx, p, RosterProtocol, req, MaxKeyFrame, MaxRosterFrame, &resp); err != nil {
		return nil, err
	}
	return resp.Ops, nil
}

// FetchHistory asks p for envelopes of a group that the summary in req
// says we lack. The caller verifies every envelope.
func (s *Streams) FetchHistory(ctx context.Context, p peer.ID, req *wire.SyncRequest) (*wire.SyncResponse, error) {
	var resp wire.SyncResponse
	if err := s.exchange(ctx, p, SyncProtocol, req, MaxSyncRequestFrame, MaxSyncFrame, &resp); err != nil {
		return nil, err
	}
	return &resp, nil
}
