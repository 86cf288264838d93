package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestRestartKeepsState: a node closed and reopened on the same directory
// has the same identity, groups, roster, keys and history, and chats on.
func TestRestartKeepsState(t *testing.T) {
	dir := t.TempDir()
	a := newTestNode(t, filepath.Join(dir, "a"))
	b := newTestNode(t, "")
	connectAll(t, []*testNode{a, b})
	gid := formGroup(t, []*testNode{a, b})
	for i := 0; i < 5; i++ {
		a.send(gid, fmt.Sprintf("a %d", i))
		b.send(gid, fmt.Sprintf("b %d", i))
	}
	eventually(t, 10*time.Second, "a reads everything", func() bool { return len(a.rec.readable(gid)) == 10 })

	ag := a.mustGroup(gid)
	id, state, keys := a.ID(), ag.State(), ag.KeyIDs()
	hist, err := ag.History()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(filepath.Join(dir, "a", "identity.key"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %v, want 0600", info.Mode().Perm())
	}

	a2 := newTestNode(t, filepath.Join(dir, "a"))
	if a2.ID() != id {
		t.Fatalf("identity changed: %s -> %s", id, a2.ID())
	}
	g2, ok := a2.Group(gid)
	if !ok {
		t.Fatal("group lost on restart")
	}
	if g2.Name() != "test group" {
		t.Fatalf("group name %q after restart", g2.Name())
	}
	st2 := g2.State()
	if st2.Digest != state.Digest || !slices.Equal(st2.Members, state.Members) {
		t.Fatal("roster changed across restart")
	}
	if k2 := g2.KeyIDs(); !slices.Equal(k2, keys) {
		t.Fatalf("keys changed across restart: %d -> %d", len(keys), len(k2))
	}
	hist2, err := g2.History()
	if err != nil {
		t.Fatal(err)
	}
	if len(hist2) != len(hist) {
		t.Fatalf("history has %d messages after restart, %d before", len(hist2), len(hist))
	}
	for i := range hist {
		if hist2[i].ID() != hist[i].ID() || hist2[i].Text != hist[i].Text || hist2[i].Status != StatusOK {
			t.Fatalf("history entry %d differs: %+v vs %+v", i, hist2[i], hist[i])
		}
	}

	// It chats on: sequence numbers continue, and b reads the new message.
	connectAll(t, []*testNode{a2, b})
	waitMesh(t, []*testNode{a2, b}, gid)
	m := a2.send(gid, "after restart")
	if m.Seq != 6 {
		t.Fatalf("sequence restarted: %d", m.Seq)
	}
	eventually(t, 10*time.Second, "b reads the message sent after the restart", func() bool {
		return b.rec.readable(gid)[m.ID()] == "after restart"
	})
}

// TestCloseStopsEverything: Close leaves no goroutine of ours running.
func TestCloseStopsEverything(t *testing.T) {
	defer goleak.VerifyNone(t)
	func() {
		nodes := []*testNode{newTestNode(t, t.TempDir()), newTestNode(t, "")}
		connectAll(t, nodes)
		gid := formGroup(t, nodes)
		nodes[0].send(gid, "x")
		eventually(t, 10*time.Second, "delivery", func() bool { return len(nodes[1].rec.readable(gid)) == 1 })
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := nodes[0].mustGroup(gid).Remove(ctx, nodes[1].ID()); err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			if err := n.Close(); err != nil {
				t.Fatal(err)
			}
			if err := n.Close(); err != nil {
				t.Fatal("second Close:", err)
			}
			<-n.rec.done
		}
	}()
}

// TestWaitingSurvivesRestart: a message stored while its key was missing
// still waits after a restart, and the restarted node asks for the key and
// shows it decrypted.
func TestWaitingSurvivesRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "c")
	a, b, spare := newTestNode(t, ""), newTestNode(t, ""), newTestNode(t, "")
	c := newTestNode(t, dir)
	nodes := []*testNode{a, b, spare, c}
	connectAll(t, nodes)
	gid := formGroup(t, nodes)

	partition([]*testNode{c}, []*testNode{a, b, spare})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.mustGroup(gid).Remove(ctx, spare.ID()); err != nil {
		t.Fatal(err)
	}
	m := a.send(gid, "sent while c was cut off")
	env, err := a.mustGroup(gid).storedEnvelope(a.ID(), m.Seq)
	if err != nil {
		t.Fatal(err)
	}
	cg := c.mustGroup(gid)
	cg.onEnvelope(a.ID(), env) // handed over, as a relay would
	if got := c.rec.readable(gid)[m.ID()]; got != "" {
		t.Fatal("setup: c could read the message")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	c2 := newTestNode(t, dir)
	hist, err := c2.mustGroup(gid).History()
	if err != nil {
		t.Fatal(err)
	}
	waiting := false
	for _, h := range hist {
		if h.ID() == m.ID() && h.Status == StatusWaitingForKey {
			waiting = true
		}
	}
	if !waiting {
		t.Fatal("the message is not waiting after the restart")
	}
	heal(t, []*testNode{a, b, c2})
	eventually(t, 20*time.Second, "c shows the message decrypted after the restart", func() bool {
		return c2.rec.readable(gid)[m.ID()] == m.Text
	})
}

// TestEarlyEventsReachFirstSubscriber: events a node emits before anyone
// subscribes (its groups start inside New) go to the first subscriber; a
// later subscriber sees only what follows its subscription.
func TestEarlyEventsReachFirstSubscriber(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	n, err := New(ctx, Config{ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"}, Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	g, err := n.CreateGroup(ctx, "early")
	if err != nil {
		t.Fatal(err)
	}
	first := n.Subscribe()
	defer first.Close()
	select {
	case e := <-first.C():
		if e.Kind != EventGroupJoined || e.Group != g.ID() || e.Seq != 1 {
			t.Fatalf("first event: %v seq %d", e.Kind, e.Seq)
		}
	case <-ctx.Done():
		t.Fatal("the first subscriber got no event from before it subscribed")
	}
	second := n.Subscribe()
	defer second.Close()
	if _, err := g.Send(ctx, "after both subscribed"); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []*Subscription{first, second} {
		for {
			var e Event
			select {
			case e = <-sub.C():
			case <-ctx.Done():
				t.Fatal("no message event")
			}
			if sub == second && e.Kind == EventGroupJoined {
				t.Fatal("a later subscriber got an event from before it subscribed")
			}
			if e.Kind == EventMessage {
				break
			}
		}
	}
}
