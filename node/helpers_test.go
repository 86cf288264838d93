package node

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/roster"
)

// testParams keep the timed paths quick in tests.
var testParams = Params{
	KeyRequestDelay: 50 * time.Millisecond,
	RotationGrace:   300 * time.Millisecond,
	ReorderWindow:   300 * time.Millisecond,
}

// testNode is a node on loopback TCP with a recorder of its events.
type testNode struct {
	*Node
	t   *testing.T
	rec *recorder
	dir string
}

func newTestNode(t *testing.T, dir string) *testNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := New(ctx, Config{Dir: dir, ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, Params: testParams})
	if err != nil {
		t.Fatalf("new node: %v", err)
	}
	tn := &testNode{Node: n, t: t, rec: newRecorder(n), dir: dir}
	t.Cleanup(func() { tn.Close() })
	return tn
}

// newTestNodes starts n nodes and connects them all to each other.
func newTestNodes(t *testing.T, n int) []*testNode {
	t.Helper()
	nodes := make([]*testNode, n)
	for i := range nodes {
		nodes[i] = newTestNode(t, "")
	}
	connectAll(t, nodes)
	return nodes
}

func connectAll(t *testing.T, nodes []*testNode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			if err := a.Host().Connect(ctx, addrInfo(b.Node)); err != nil {
				t.Fatalf("connect: %v", err)
			}
		}
	}
}

func addrInfo(n *Node) peer.AddrInfo {
	return peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
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
	sub    *Subscription
	done   chan struct{}
}

func newRecorder(n *Node) *recorder {
	r := &recorder{sub: n.Subscribe(), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for e := range r.sub.C() {
			r.mu.Lock()
			r.events = append(r.events, e)
			r.mu.Unlock()
		}
	}()
	return r
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
func formGroup(t *testing.T, nodes []*testNode) roster.GroupID {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := nodes[0].CreateGroup(ctx, "test group")
	if err != nil {
		t.Fatalf("create group: %v", err)
	}
	for _, m := range nodes[1:] {
		if err := g.Add(ctx, m.ID(), roster.RoleMember); err != nil {
			t.Fatalf("add: %v", err)
		}
		if _, err := m.JoinGroup(ctx, g.ID(), addrInfo(nodes[0].Node)); err != nil {
			t.Fatalf("join: %v", err)
		}
	}
	waitMesh(t, nodes, g.ID())
	return g.ID()
}

// waitMesh waits until every node is subscribed and sees every other node on
// the group topic, and all agree on the membership.
func waitMesh(t *testing.T, nodes []*testNode, gid roster.GroupID) {
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
