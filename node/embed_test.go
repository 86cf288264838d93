package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pchat/p2pchat/gossip"
)

// TestEmbedded: nodes running on hosts and pubsub routers owned by the
// embedding program (here on go-libp2p's mocknet) chat like any others, and
// Close leaves the program's host and router running.
func TestEmbedded(t *testing.T) {
	mn := mocknet.New()
	defer mn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const count = 3
	var hosts []host.Host
	var nodes []*testNode
	for i := 0; i < count; i++ {
		priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		h, err := mn.AddPeer(priv, ma.StringCast(fmt.Sprintf("/ip4/10.0.0.%d/tcp/4001", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h)
	}
	if err := mn.LinkAll(); err != nil {
		t.Fatal(err)
	}
	if err := mn.ConnectAllButSelf(); err != nil {
		t.Fatal(err)
	}
	var routers []*pubsub.PubSub
	for _, h := range hosts {
		filter := NewPeerFilter()
		ps, err := pubsub.NewGossipSub(ctx, h, filter.PubSubOptions()...)
		if err != nil {
			t.Fatal(err)
		}
		routers = append(routers, ps)
		n, err := New(ctx, Config{Host: h, PubSub: ps, PeerFilter: filter, Params: testParams})
		if err != nil {
			t.Fatal(err)
		}
		tn := &testNode{Node: n, t: t, rec: newRecorder(n)}
		t.Cleanup(func() { tn.Close() })
		nodes = append(nodes, tn)
	}
	if nodes[0].ID() != hosts[0].ID() {
		t.Fatal("the node does not use the embedding program's identity")
	}
	gid := formGroup(t, nodes)
	want := make(map[string]string)
	for i, n := range nodes {
		m := n.send(gid, fmt.Sprintf("embedded %d", i))
		want[m.ID()] = m.Text
	}
	for _, n := range nodes {
		eventually(t, 10*time.Second, "every embedded node reads every message", func() bool {
			got := n.rec.readable(gid)
			for id, text := range want {
				if got[id] != text {
					return false
				}
			}
			return true
		})
	}

	// Closing the node leaves the program's host and router alone: the
	// program can still use its own topics.
	if err := nodes[0].Close(); err != nil {
		t.Fatal(err)
	}
	if len(hosts[0].Network().Peers()) == 0 {
		t.Fatal("closing the node disconnected the embedding program's host")
	}
	topic, err := routers[0].Join("the-programs-own-topic", pubsub.WithTopicMessageIdFn(func(m *pb.Message) string { return gossip.MessageID(m.Data) }))
	if err != nil {
		t.Fatalf("the program's router stopped working: %v", err)
	}
	_ = topic.Close()
}

// deliveryCounter is a GossipSub tracer that counts delivered messages.
type deliveryCounter struct {
	pubsub.RawTracer
	mu        sync.Mutex
	delivered int
}

func (d *deliveryCounter) DeliverMessage(*pubsub.Message) {
	d.mu.Lock()
	d.delivered++
	d.mu.Unlock()
}

func (d *deliveryCounter) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.delivered
}

// TestPubSubOptions: Config.PubSubOptions reach the router a node creates
// (here a tracer that sees the group's messages delivered).
func TestPubSubOptions(t *testing.T) {
	tracer := &deliveryCounter{RawTracer: noopTracer{}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := New(ctx, Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, Params: testParams,
		PubSubOptions: []pubsub.Option{pubsub.WithRawTracer(tracer)}})
	if err != nil {
		t.Fatal(err)
	}
	a := &testNode{Node: n, t: t, rec: newRecorder(n)}
	t.Cleanup(func() { a.Close() })
	b := newTestNode(t, "")
	gid := formGroup(t, []*testNode{a, b})
	b.send(gid, "traced")
	eventually(t, 10*time.Second, "a reads the message", func() bool { return len(a.rec.readable(gid)) == 1 })
	if tracer.count() == 0 {
		t.Fatal("the tracer passed in Config.PubSubOptions saw no delivery")
	}
}

// noopTracer implements pubsub.RawTracer doing nothing.
type noopTracer struct{}

func (noopTracer) OnNewOutboundStream(peer.ID, protocol.ID)             {}
func (noopTracer) OnClosedOutboundStream(peer.ID)                       {}
func (noopTracer) Join(string)                                          {}
func (noopTracer) Leave(string)                                         {}
func (noopTracer) Graft(peer.ID, string)                                {}
func (noopTracer) Prune(peer.ID, string)                                {}
func (noopTracer) ValidateMessage(*pubsub.Message)                      {}
func (noopTracer) DeliverMessage(*pubsub.Message)                       {}
func (noopTracer) RejectMessage(*pubsub.Message, string)                {}
func (noopTracer) DuplicateMessage(*pubsub.Message)                     {}
func (noopTracer) ThrottlePeer(peer.ID)                                 {}
func (noopTracer) RecvRPC(*pubsub.RPC)                                  {}
func (noopTracer) SendRPC(*pubsub.RPC, peer.ID)                         {}
func (noopTracer) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (noopTracer) DropRPC(*pubsub.RPC, peer.ID)                         {}
func (noopTracer) UndeliverableMessage(*pubsub.Message)                 {}

// newEmbedded starts a node on a host and router of its own (a program
// embedding p2pchat), with the peer filter it is given.
func newEmbedded(t *testing.T, filter *PeerFilter, psOpts []pubsub.Option) *testNode {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h, psOpts...)
	if err != nil {
		t.Fatal(err)
	}
	n, err := New(context.Background(), Config{Host: h, PubSub: ps, PeerFilter: filter, Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{Node: n, t: t, rec: newRecorder(n)}
	t.Cleanup(func() {
		tn.Close()
		cancel()
		_ = h.Close()
	})
	return tn
}

// graftTracer records the peers a router grafts onto its meshes, and
// counts the RPCs it handles and the GRAFT requests among them.
type graftTracer struct {
	pubsub.RawTracer
	mu      sync.Mutex
	grafted map[peer.ID]bool
	rpcs    int
	grafts  []int // for each GRAFT request received, the RPC count then
}

func (g *graftTracer) RecvRPC(rpc *pubsub.RPC) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rpcs++
	if rpc.Control != nil && len(rpc.Control.Graft) > 0 {
		g.grafts = append(g.grafts, g.rpcs)
	}
}

// graftCount returns the GRAFT requests received so far.
func (g *graftTracer) graftCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.grafts)
}

// handledAfterGraft reports whether the router has received a GRAFT
// request beyond the first k and handled an RPC after it (one loop handles
// RPCs in order, so that request is done with).
func (g *graftTracer) handledAfterGraft(k int) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.grafts) > k && g.rpcs > g.grafts[k]
}

func (g *graftTracer) Graft(p peer.ID, _ string) {
	g.mu.Lock()
	g.grafted[p] = true
	g.mu.Unlock()
}

func (g *graftTracer) has(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.grafted[p]
}

// TestEmbedderPeerFilterKeepsStrangersOut: an embedder's router built with
// the node's filter meshes a group's topic with members only. A stranger
// subscribed to the topic grafts the member onto its own mesh (its router
// has no filter) and so asks the member for a graft back; the member's
// router grafts its fellow member but never the stranger, for as long as
// the stranger keeps asking (GossipSub retries every heartbeat).
func TestEmbedderPeerFilterKeepsStrangersOut(t *testing.T) {
	filter := NewPeerFilter()
	tracer := &graftTracer{RawTracer: noopTracer{}, grafted: map[peer.ID]bool{}}
	e := newEmbedded(t, filter, append(filter.PubSubOptions(), pubsub.WithRawTracer(tracer)))
	other := newTestNode(t, "")
	connectAll(t, []*testNode{e, other})
	gid := formGroup(t, []*testNode{e, other})
	eventually(t, 10*time.Second, "the member grafts its fellow member", func() bool { return tracer.has(other.ID()) })
	before := tracer.graftCount()
	stranger := newSpy(t, nil)
	stranger.connect(e, other)
	stranger.listen(gid)
	// The stranger's heartbeat grafts the member and sends it a GRAFT; once
	// the member's router has handled a later RPC, it is done with it.
	eventually(t, 10*time.Second, "the member's router handled the stranger's GRAFT request", func() bool {
		return tracer.handledAfterGraft(before) || tracer.has(stranger.host.ID())
	})
	if tracer.has(stranger.host.ID()) {
		t.Fatal("the embedder's router grafted a stranger onto the group's mesh")
	}
}

// TestEmbedderConfigErrors: a supplied router without the node's filter,
// an identity next to a supplied host, a filter used by a second node and
// a context already done are each a clear error.
func TestEmbedderConfigErrors(t *testing.T) {
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ps, err := pubsub.NewGossipSub(ctx, h, gossip.PubSubOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no filter", Config{Host: h, PubSub: ps}, "PeerFilter"},
		{"identity and host", Config{Host: h, PubSub: ps, PeerFilter: NewPeerFilter(), Identity: priv}, "Identity"},
	} {
		if _, err := New(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New returned %v, want an error naming %s", tc.name, err, tc.want)
		}
	}
	done, cancelDone := context.WithCancel(context.Background())
	cancelDone()
	if _, err := New(done, Config{}); !errors.Is(err, context.Canceled) {
		t.Errorf("New with a cancelled context: %v", err)
	}
	filter := NewPeerFilter()
	first := newEmbedded(t, filter, filter.PubSubOptions())
	_ = first
	if _, err := New(context.Background(), Config{Host: h, PubSub: ps, PeerFilter: filter}); err == nil || !strings.Contains(err.Error(), "another node") {
		t.Errorf("a filter reused for a second node: %v", err)
	}
}
