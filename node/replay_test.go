package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/internal/gate"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// TestRewrappedReplayDeduplicated: a stranger (not a member: its own host
// and router, subscribed to the group topic) captures a member's key
// request off the topic and republishes it 40 times, each copy re-wrapped
// with another unknown field, then again from a second stranger host, and
// again once the holders' seen cache has forgotten it. The holders answer
// the request exactly as they answer it once: one transfer each.
//
// The member's requests are published by its own libp2p host signing as the
// member, as its node would: a node that holds a key never asks for it, and
// this way every transfer is counted exactly, by the nonce it answers.
func TestRewrappedReplayDeduplicated(t *testing.T) {
	const seenTTL = time.Second
	ta, tb := newReplayTracer(), newReplayTracer()
	a := newTestNodeOptions(t, pubsub.WithSeenMessagesTTL(seenTTL), pubsub.WithRawTracer(ta))
	b := newTestNodeOptions(t, pubsub.WithSeenMessagesTTL(seenTTL), pubsub.WithRawTracer(tb))
	holders := []*testNode{a, b}
	tracers := []*replayTracer{ta, tb}
	connectAll(t, holders)
	gid := formGroup(t, holders)
	oldKey := a.mustGroup(gid).SendingKeyID()

	// The member m: added by a, on the topic through its own host.
	mPriv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	m := newSpy(t, mPriv)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.mustGroup(gid).Add(ctx, m.host.ID(), roster.RoleMember); err != nil {
		t.Fatal(err)
	}
	key := waitSameSendingKey(t, holders, gid, oldKey)
	eventually(t, 10*time.Second, "both holders hold m's key", func() bool {
		for _, h := range holders {
			k, ok := h.mustGroup(gid).heldKey(key)
			if !ok || !k.Meta.IsRecipient(m.host.ID()) || !h.mustGroup(gid).IsMember(m.host.ID()) {
				return false
			}
		}
		return true
	})
	m.connect(a, b)
	m.listen(gid)

	s1 := newStranger(t, gid)
	s1.connect(t, a.Host(), b.Host(), m.host)
	waitTopicPeer(t, gid, m.host.ID(), a, b)
	waitTopicPeer(t, gid, s1.host.ID(), a, b)
	waitListed(t, m.topic, a.ID(), b.ID(), s1.host.ID())
	waitListed(t, s1.topic, a.ID(), b.ID(), m.host.ID())

	// One request: each holder ranks within the first two, so two transfers.
	req := m.newRequest(mPriv, gid, key)
	m.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: req.Signed}})
	eventually(t, 10*time.Second, "both holders answer the request", func() bool { return m.answers(req.Nonce) == 2 })
	var captured []byte
	select {
	case captured = <-s1.captured:
	case <-time.After(10 * time.Second):
		t.Fatal("the stranger captured no key request")
	}
	if in, err := gossip.DecodeInbound(nil, captured); err != nil || in.KeyRequest == nil || !bytes.Equal(in.KeyRequest.Nonce, req.Nonce) {
		t.Fatalf("the stranger captured something else (%v)", err)
	}

	// 40 re-wrapped replays by the stranger, every one new bytes.
	const replays = 40
	copies := make(map[string]bool)
	for i := range replays {
		c := rewrap(t, captured, i)
		if copies[string(c)] || bytes.Equal(c, captured) {
			t.Fatal("setup: two replays are the same bytes")
		}
		copies[string(c)] = true
		s1.publish(t, c)
	}
	for i, tr := range tracers {
		eventually(t, 10*time.Second, "every replay reaches holder "+label(i), func() bool {
			return tr.count(s1.host.ID(), req.Nonce, false)+tr.count(s1.host.ID(), req.Nonce, true) >= replays
		})
	}
	for i, tr := range tracers {
		if n := tr.count(s1.host.ID(), req.Nonce, false); n != 0 {
			t.Errorf("holder %s validated %d re-wrapped replays: they did not share the request's message ID", label(i), n)
		}
	}
	// A fresh request from m, after the replays, shows they were all
	// handled: whatever they caused has been sent by the time it is answered.
	marker := m.newRequest(mPriv, gid, key)
	m.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: marker.Signed}})
	eventually(t, 10*time.Second, "the marker request answered, or a replay answered", func() bool {
		return m.answers(marker.Nonce) == 2 || m.answers(req.Nonce) > 2
	})
	if got := m.answers(req.Nonce); got != 2 {
		time.Sleep(time.Second) // for the figure only: let every transfer land
		t.Fatalf("%d re-wrapped replays drew %d more key transfers (%d in all, 2 for the request alone)",
			replays, m.answers(req.Nonce)-2, m.answers(req.Nonce))
	}

	// From a second stranger host, whose router has seen nothing: the
	// original bytes and a new re-wrap. The holders' seen caches still
	// know the ID.
	s2 := newStranger(t, gid)
	s2.connect(t, a.Host(), b.Host())
	waitListed(t, s2.topic, a.ID(), b.ID())
	s2.publish(t, captured) // not counted by the tracers: the rewrap after it is
	s2.publish(t, rewrap(t, captured, replays))
	for i, tr := range tracers {
		eventually(t, 10*time.Second, "the second stranger's replays reach holder "+label(i), func() bool {
			return tr.count(s2.host.ID(), req.Nonce, false)+tr.count(s2.host.ID(), req.Nonce, true) >= 1
		})
	}

	// Past the seen cache, the validator accepts the replay again (it is a
	// member's request, well within answeredFor): the group must
	// remember that it answered it. Handed to each holder as its reader
	// would after pubsub delivered it.
	in, err := gossip.DecodeInbound(nil, rewrap(t, captured, replays+1))
	if err != nil {
		t.Fatal(err)
	}
	for i, h := range holders {
		g := h.mustGroup(gid)
		if res := g.policy(s2.host.ID(), in); res != pubsub.ValidationAccept {
			t.Fatalf("holder %s: validator says %v to the replay", label(i), res)
		}
		_, before := g.answered.stats()
		g.onKeyRequest(in.KeyRequest)
		if _, after := g.answered.stats(); after != before+1 {
			t.Errorf("holder %s answered a replayed request again", label(i))
		}
	}
	marker2 := m.newRequest(mPriv, gid, key)
	m.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: marker2.Signed}})
	eventually(t, 10*time.Second, "the second marker answered", func() bool { return m.answers(marker2.Nonce) == 2 })
	if got := m.answers(req.Nonce); got != 2 {
		t.Fatalf("replays past the seen cache drew %d more key transfers", got-2)
	}

	if testing.Short() {
		t.Log("-short: skipping the replay after the seen cache's sweep (up to a minute)")
		return
	}
	// The real thing: GossipSub sweeps its seen cache once a minute, after
	// which a replay (here seenTTL-old) is validated as new. s2 replays a
	// fresh re-wrap each second until both holders validate one (from s2,
	// or forwarded by the other holder, whichever comes first).
	validatedA, validatedB := ta.validated(req.Nonce), tb.validated(req.Nonce)
	deadline := time.Now().Add(100 * time.Second)
	for i := replays + 2; ; i++ {
		if time.Now().After(deadline) {
			t.Fatal("no replay passed the holders' seen caches within 100 s")
		}
		s2.publish(t, rewrap(t, captured, i))
		passed := func() bool {
			return ta.validated(req.Nonce) > validatedA && tb.validated(req.Nonce) > validatedB
		}
		for end := time.Now().Add(time.Second); time.Now().Before(end) && !passed(); {
			time.Sleep(20 * time.Millisecond)
		}
		if passed() {
			break
		}
	}
	marker3 := m.newRequest(mPriv, gid, key)
	m.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: marker3.Signed}})
	eventually(t, 10*time.Second, "the third marker answered, or a replay answered", func() bool {
		return m.answers(marker3.Nonce) == 2 || m.answers(req.Nonce) > 2
	})
	if got := m.answers(req.Nonce); got != 2 {
		t.Fatalf("a replay after the seen cache expired drew %d more key transfers", got-2)
	}
	for i, h := range holders {
		if _, repeats := h.mustGroup(gid).answered.stats(); repeats < 2 {
			t.Errorf("holder %s: %d replays refused as answered, want at least 2", label(i), repeats)
		}
	}
}

// newTestNodeOptions is newTestNode with extra router options.
func newTestNodeOptions(t testing.TB, opts ...pubsub.Option) *testNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gater := gate.New()
	n, err := New(ctx, Config{
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, Params: testParams,
		HostOptions: []libp2p.Option{libp2p.ConnectionGater(gater)}, PubSubOptions: opts,
	})
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	tn := &testNode{Node: n, t: t, rec: newRecorder(n), gater: gater}
	t.Cleanup(func() { tn.Close() })
	return tn
}

func (g *Group) heldKey(id keyring.ID) (*keyring.Key, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ring.Get(id)
}

func (s *spy) newRequest(priv crypto.PrivKey, gid roster.GroupID, id keyring.ID) *gossip.KeyRequest {
	s.t.Helper()
	req, err := gossip.NewKeyRequest(rand.Reader, priv, gid, id, 0, time.Now().UnixMilli())
	if err != nil {
		s.t.Fatal(err)
	}
	return req
}

// answers counts the key transfers the spy received in answer to nonce.
func (s *spy) answers(nonce []byte) int {
	n := 0
	for _, tr := range s.received() {
		if bytes.Equal(tr.RequestNonce, nonce) {
			n++
		}
	}
	return n
}

// rewrap re-encodes a captured key request with unknown field 100+i: in the
// TopicMessage for even i, in the Signed for odd i. It decodes to the same
// signed request.
func rewrap(t testing.TB, data []byte, i int) []byte {
	t.Helper()
	unknown := protowire.AppendVarint(protowire.AppendTag(nil, protowire.Number(100+i), protowire.VarintType), uint64(i))
	if i%2 == 0 {
		return append(bytes.Clone(data), unknown...)
	}
	var m wire.TopicMessage
	if err := proto.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	sb, err := proto.Marshal(m.GetKeyRequest())
	if err != nil {
		t.Fatal(err)
	}
	return protowire.AppendBytes(protowire.AppendTag(nil, 3, protowire.BytesType), append(sb, unknown...))
}

// waitListed waits until a router lists every peer on the topic.
func waitListed(t testing.TB, topic *pubsub.Topic, peers ...peer.ID) {
	t.Helper()
	eventually(t, 10*time.Second, "topic peers listed", func() bool {
		listed := topic.ListPeers()
		for _, p := range peers {
			found := false
			for _, l := range listed {
				found = found || l == p
			}
			if !found {
				return false
			}
		}
		return true
	})
}

// stranger is a libp2p peer that is no member: its own host and router on
// the group's topic, with message IDs of its own choosing (a hash of the
// bytes), so it sends every re-encoding it makes. It keeps the key requests
// it sees.
type stranger struct {
	host     host.Host
	topic    *pubsub.Topic
	captured chan []byte
}

func newStranger(t testing.TB, gid roster.GroupID) *stranger {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h,
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign), pubsub.WithNoAuthor(), pubsub.WithFloodPublish(true),
		pubsub.WithPeerOutboundQueueSize(4096), // its replays leave in one burst
		pubsub.WithMessageIdFn(func(m *pb.Message) string { id := sha256.Sum256(m.Data); return string(id[:]) }))
	if err != nil {
		t.Fatal(err)
	}
	topic, err := ps.Join(gossip.TopicName(gid))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	s := &stranger{host: h, topic: topic, captured: make(chan []byte, 64)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := sub.Next(ctx)
			if err != nil {
				return
			}
			if in, err := gossip.DecodeInbound(nil, m.Data); err == nil && in.KeyRequest != nil {
				select {
				case s.captured <- m.Data:
				default:
				}
			}
		}
	}()
	t.Cleanup(func() {
		sub.Cancel()
		cancel()
		<-done
		_ = h.Close()
	})
	return s
}

func (s *stranger) connect(t testing.TB, hosts ...host.Host) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, h := range hosts {
		if err := s.host.Connect(ctx, peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()}); err != nil {
			t.Fatalf("stranger connect: %v", err)
		}
	}
}

func (s *stranger) publish(t testing.TB, data []byte) {
	t.Helper()
	if err := s.topic.Publish(context.Background(), data); err != nil {
		t.Fatalf("stranger publish: %v", err)
	}
}

// replayTracer counts, per forwarding peer and request nonce, the
// re-wrapped key requests (those with unknown fields) a router validated
// (delivered or refused) and those it dropped as already seen.
type replayTracer struct {
	noopTracer
	mu sync.Mutex
	n  map[traceKey]int
}

type traceKey struct {
	from  peer.ID
	nonce string
	dup   bool
}

func newReplayTracer() *replayTracer { return &replayTracer{n: make(map[traceKey]int)} }

func (r *replayTracer) note(m *pubsub.Message, dup bool) {
	in, err := gossip.DecodeInbound(nil, m.Data)
	if err != nil || in.KeyRequest == nil || !rewrapped(m.Data) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.n[traceKey{m.ReceivedFrom, string(in.KeyRequest.Nonce), dup}]++
}

// rewrapped reports whether a topic message carries unknown fields.
func rewrapped(data []byte) bool {
	var m wire.TopicMessage
	if proto.Unmarshal(data, &m) != nil {
		return false
	}
	return len(m.ProtoReflect().GetUnknown()) > 0 || len(m.GetKeyRequest().ProtoReflect().GetUnknown()) > 0
}

// validated counts the re-wrapped requests with nonce a router validated,
// whoever forwarded them.
func (r *replayTracer) validated(nonce []byte) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for k, v := range r.n {
		if k.nonce == string(nonce) && !k.dup {
			n += v
		}
	}
	return n
}

func (r *replayTracer) count(from peer.ID, nonce []byte, dup bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[traceKey{from, string(nonce), dup}]
}

func (r *replayTracer) DeliverMessage(m *pubsub.Message)          { r.note(m, false) }
func (r *replayTracer) RejectMessage(m *pubsub.Message, _ string) { r.note(m, false) }
func (r *replayTracer) DuplicateMessage(m *pubsub.Message)        { r.note(m, true) }
