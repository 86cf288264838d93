package node

import (
	"context"
	"crypto/rand"
	"fmt"
	"sync"
	"testing"
	"time"

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
		ps, err := pubsub.NewGossipSub(ctx, h, gossip.PubSubOptions()...)
		if err != nil {
			t.Fatal(err)
		}
		routers = append(routers, ps)
		n, err := New(ctx, Config{Host: h, PubSub: ps, Params: testParams})
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
