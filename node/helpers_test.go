package node

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"slices"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/host"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/internal/gate"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// testParams keep the timed paths quick in tests.
var testParams = Params{
	KeyRequestDelay: 50 * time.Millisecond,
	RotationGrace:   300 * time.Millisecond,
	ReorderWindow:   300 * time.Millisecond,
}

// testNode is a node on loopback TCP with a recorder of its events and a
// connection gater the test can use to cut it off from peers.
type testNode struct {
	*Node
	t     testing.TB
	rec   *recorder
	dir   string
	gater *gate.Gater
}

func newTestNode(t testing.TB, dir string) *testNode {
	t.Helper()
	return newTestNodeWith(t, dir, nil)
}

func newTestNodeWith(t testing.TB, dir string, identity crypto.PrivKey) *testNode {
	t.Helper()
	return newTestNodeParams(t, dir, identity, testParams)
}

func newTestNodeParams(t testing.TB, dir string, identity crypto.PrivKey, params Params) *testNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gater := gate.New()
	n, err := New(ctx, Config{
		Dir: dir, Identity: identity, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, Params: params,
		HostOptions: []libp2p.Option{libp2p.ConnectionGater(gater)},
	})
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	tn := &testNode{Node: n, t: t, rec: newRecorder(n), dir: dir, gater: gater}
	t.Cleanup(func() { tn.Close() })
	return tn
}

// partition cuts every connection between the two sides until heal.
func partition(sideA, sideB []*testNode) {
	for _, a := range sideA {
		for _, b := range sideB {
			a.gater.Block(b.ID())
			b.gater.Block(a.ID())
		}
	}
	for _, a := range sideA {
		for _, b := range sideB {
			_ = a.Host().Network().ClosePeer(b.ID())
			_ = b.Host().Network().ClosePeer(a.ID())
		}
	}
}

// heal lifts every block and reconnects all nodes.
func heal(t testing.TB, nodes []*testNode) {
	for _, n := range nodes {
		n.gater.Clear()
	}
	connectAll(t, nodes)
}

// newTestNodes starts n nodes and connects them all to each other.
func newTestNodes(t testing.TB, n int) []*testNode {
	t.Helper()
	nodes := make([]*testNode, n)
	for i := range nodes {
		nodes[i] = newTestNode(t, "")
	}
	connectAll(t, nodes)
	return nodes
}

func connectAll(t testing.TB, nodes []*testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			// Two peers dialing each other at once from their reused listen
			// ports make a TCP simultaneous open, which fails the security
			// handshake on both sides; a retry resolves it.
			var err error
			for try := 0; try < 5; try++ {
				dctx := ctx
				if try > 0 { // past the dial backoff the failure left
					dctx = network.WithForceDirectDial(ctx, "test retry")
				}
				if err = a.Host().Connect(dctx, addrInfo(b.Node)); err == nil {
					break
				}
				time.Sleep(time.Duration(10*(try+1)) * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
		}
	}
}

func addrInfo(n *Node) peer.AddrInfo {
	return peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorder keeps every event a node emits.
type recorder struct {
	mu     sync.Mutex
	events []Event
	// readableSlots counts the messages per group shown readable, kept as
	// events arrive, so polling it costs nothing (readable rebuilds a map
	// of every message, which a test polling a large history pays for).
	readableSlots map[roster.GroupID]map[slot]struct{}
	sub           *Subscription
	done          chan struct{}
}

func newRecorder(n *Node) *recorder {
	r := &recorder{sub: n.Subscribe(), done: make(chan struct{}), readableSlots: map[roster.GroupID]map[slot]struct{}{}}
	go func() {
		defer close(r.done)
		for e := range r.sub.C() {
			r.mu.Lock()
			r.events = append(r.events, e)
			if m := e.Message; m != nil && m.Status == StatusOK && (e.Kind == EventMessage || e.Kind == EventMessageDecrypted) {
				set := r.readableSlots[e.Group]
				if set == nil {
					set = map[slot]struct{}{}
					r.readableSlots[e.Group] = set
				}
				set[slot{m.Sender, m.Seq}] = struct{}{}
			}
			r.mu.Unlock()
		}
	}()
	return r
}

// readableCount is len(readable(group)), without building it.
func (r *recorder) readableCount(group roster.GroupID) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.readableSlots[group])
}

func (r *recorder) snapshot() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.events...)
}

// readable returns the text of every message of group that this node can
// read, keyed by message ID, from the events it emitted.
func (r *recorder) readable(group roster.GroupID) map[string]string {
	out := make(map[string]string)
	for _, e := range r.snapshot() {
		if e.Group != group || e.Message == nil {
			continue
		}
		if (e.Kind == EventMessage || e.Kind == EventMessageDecrypted) && e.Message.Status == StatusOK {
			out[e.Message.ID()] = e.Message.Text
		}
	}
	return out
}

// shown returns the EventMessage events of group in emission order.
func (r *recorder) shown(group roster.GroupID) []*Message {
	var out []*Message
	for _, e := range r.snapshot() {
		if e.Group == group && e.Kind == EventMessage {
			out = append(out, e.Message)
		}
	}
	return out
}

// formGroup has nodes[0] create a group and add every other node, each of
// which joins through nodes[0]; it waits until every member's topic sees
// every other member.
func formGroup(t testing.TB, nodes []*testNode) roster.GroupID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := nodes[0].CreateGroup(ctx, "test group")
	if err != nil {
		t.Fatalf("create group: %v", err)
	}
	for _, m := range nodes[1:] {
		addAndJoin(t, nodes[0], m, g.ID(), nodes[0])
	}
	waitMesh(t, nodes, g.ID())
	return g.ID()
}

// addAndJoin has admin add newcomer as a member, then newcomer join
// through via.
func addAndJoin(t testing.TB, admin, newcomer *testNode, gid roster.GroupID, via *testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := admin.mustGroup(gid).Add(ctx, newcomer.ID(), roster.RoleMember); err != nil {
		t.Fatalf("add: %v", err)
	}
	if _, err := newcomer.JoinGroup(ctx, gid, addrInfo(via.Node)); err != nil {
		t.Fatalf("join: %v", err)
	}
}

// waitMesh waits until every node is subscribed and sees every other node on
// the group topic, and all agree on the membership.
func waitMesh(t testing.TB, nodes []*testNode, gid roster.GroupID) {
	t.Helper()
	eventually(t, 20*time.Second, "topic peers and roster agreement", func() bool {
		want := nodes[0].mustGroup(gid).State().Digest
		for _, n := range nodes {
			g := n.mustGroup(gid)
			if len(g.Peers()) < len(nodes)-1 || g.State().Digest != want {
				return false
			}
		}
		return true
	})
}

func (n *testNode) mustGroup(gid roster.GroupID) *Group {
	n.t.Helper()
	g, ok := n.Group(gid)
	if !ok {
		n.t.Fatalf("node %s has no group %s", n.ID().ShortString(), gid.ShortString())
	}
	return g
}

func (n *testNode) send(gid roster.GroupID, text string) *Message {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := n.mustGroup(gid).Send(ctx, text)
	if err != nil {
		n.t.Fatalf("send: %v", err)
	}
	return m
}

func label(i int) string { return fmt.Sprintf("n%d", i) }

// spy is a libp2p peer outside p2pchat: a bare host and pubsub that can
// subscribe to a group's topic, publish raw bytes on it, and record key
// transfers sent to it. Tests use it as a malicious or removed member who
// keeps listening.
type spy struct {
	t       testing.TB
	host    host.Host
	ps      *pubsub.PubSub
	topic   *pubsub.Topic
	sub     *pubsub.Subscription
	streams *gossip.Streams

	mu        sync.Mutex
	envelopes []*gossip.Envelope
	transfers []*wire.KeyTransfer
	// answerSync, when set, answers history sync requests (a malicious
	// responder); otherwise the spy refuses them.
	answerSync func(peer.ID, *wire.SyncRequest) (*wire.SyncResponse, bool)
}

func newSpy(t testing.TB, identity crypto.PrivKey) *spy {
	t.Helper()
	opts := []libp2p.Option{libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0")}
	if identity != nil {
		opts = append(opts, libp2p.Identity(identity))
	}
	h, err := libp2p.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h, gossip.PubSubOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	s := &spy{t: t, host: h, ps: ps}
	s.streams = gossip.NewStreams(h, gossip.Handlers{
		Key: func(_ peer.ID, tr *wire.KeyTransfer) bool {
			s.mu.Lock()
			s.transfers = append(s.transfers, tr)
			s.mu.Unlock()
			return true
		},
		Roster: func(peer.ID, [32]byte, []roster.OpID) ([]*wire.Signed, bool) { return nil, false },
		Sync: func(from peer.ID, req *wire.SyncRequest) (*wire.SyncResponse, bool) {
			s.mu.Lock()
			answer := s.answerSync
			s.mu.Unlock()
			if answer == nil {
				return nil, false
			}
			return answer(from, req)
		},
	})
	t.Cleanup(func() {
		if s.sub != nil {
			s.sub.Cancel()
		}
		s.streams.Close()
		cancel()
		_ = h.Close()
	})
	return s
}

func (s *spy) connect(nodes ...*testNode) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range nodes {
		if err := s.host.Connect(ctx, addrInfo(n.Node)); err != nil {
			s.t.Fatalf("spy connect: %v", err)
		}
	}
}

// listen subscribes to the group's topic and records every envelope.
func (s *spy) listen(gid roster.GroupID) {
	var err error
	s.topic, err = s.ps.Join(gossip.TopicName(gid))
	if err != nil {
		s.t.Fatal(err)
	}
	s.sub, err = s.topic.Subscribe()
	if err != nil {
		s.t.Fatal(err)
	}
	go func() {
		for {
			m, err := s.sub.Next(context.Background())
			if err != nil {
				return
			}
			in, err := gossip.DecodeInbound(nil, m.Data)
			if err != nil {
				continue
			}
			s.mu.Lock()
			if in.Envelope != nil {
				s.envelopes = append(s.envelopes, in.Envelope)
			}
			s.envelopes = append(s.envelopes, in.Envelopes...) // a sender's batch
			s.mu.Unlock()
		}
	}()
}

func (s *spy) publish(m *wire.TopicMessage) {
	s.t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		s.t.Fatal(err)
	}
	if err := s.topic.Publish(context.Background(), b); err != nil {
		s.t.Fatalf("spy publish: %v", err)
	}
}

func (s *spy) publishRaw(b []byte) {
	s.t.Helper()
	if err := s.topic.Publish(context.Background(), b); err != nil {
		s.t.Fatalf("spy publish: %v", err)
	}
}

func (s *spy) seen() []*gossip.Envelope {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*gossip.Envelope(nil), s.envelopes...)
}

func (s *spy) received() []*wire.KeyTransfer {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*wire.KeyTransfer(nil), s.transfers...)
}

// keys returns every key a node holds for a group (a malicious member keeps them all).
func (n *testNode) keys(gid roster.GroupID) []*keyring.Key {
	g := n.mustGroup(gid)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.ring.Keys()
}

// canRead reports whether any of keys opens e.
func canRead(e *gossip.Envelope, keys []*keyring.Key) bool {
	for _, k := range keys {
		if _, err := e.Open(k); err == nil {
			return true
		}
	}
	return false
}

// waitSameSendingKey waits until every node sends with the same non-zero key
// and returns it.
func waitSameSendingKey(t testing.TB, nodes []*testNode, gid roster.GroupID, not ...keyring.ID) keyring.ID {
	t.Helper()
	var id keyring.ID
	eventually(t, 20*time.Second, "all members agree on a new sending key", func() bool {
		id = nodes[0].mustGroup(gid).SendingKeyID()
		if id.IsZero() || slices.Contains(not, id) {
			return false
		}
		for _, n := range nodes[1:] {
			if n.mustGroup(gid).SendingKeyID() != id {
				return false
			}
		}
		return true
	})
	return id
}

// storedEnvelope reads a stored envelope, verified again.
func (g *Group) storedEnvelope(sender peer.ID, seq uint64) (*gossip.Envelope, error) {
	e, _, err := g.loadEnvelope(sender, seq)
	return e, err
}
