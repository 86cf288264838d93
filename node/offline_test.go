package node

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/wire"
)

// TestBurstNoLoss: one member sends 1000 messages as fast as it can; every
// member ends with all 1000, shown in order, none twice.
func TestBurstNoLoss(t *testing.T) {
	nodes := newTestNodes(t, 4)
	gid := formGroup(t, nodes)
	const burst = 1000
	start := time.Now()
	for i := 0; i < burst; i++ {
		nodes[0].send(gid, fmt.Sprintf("burst %d", i))
	}
	sent := time.Since(start)
	for i, n := range nodes[1:] {
		eventually(t, 60*time.Second, fmt.Sprintf("%s has the whole burst", label(i+1)), func() bool {
			return len(n.rec.readable(gid)) == burst
		})
	}
	t.Logf("burst of %d sent in %v; all delivered after %v", burst, sent, time.Since(start))
	for i, n := range nodes[1:] {
		seen := make(map[string]bool)
		var last uint64
		for _, m := range n.rec.shown(gid) {
			if seen[m.ID()] {
				t.Fatalf("%s: message %s shown twice", label(i+1), m.ID())
			}
			seen[m.ID()] = true
			if m.Seq <= last {
				t.Fatalf("%s: message %d shown after %d", label(i+1), m.Seq, last)
			}
			last = m.Seq
		}
		if len(seen) != burst {
			t.Fatalf("%s showed %d messages", label(i+1), len(seen))
		}
		st := n.Stats()
		t.Logf("%s: %d of %d came through history sync", label(i+1), st.EnvelopesSynced, burst)
	}
}

// TestPublishBeforeMesh: messages sent while no other member is reachable
// are delivered once members appear.
func TestPublishBeforeMesh(t *testing.T) {
	a, b := newTestNode(t, ""), newTestNode(t, "")
	connectAll(t, []*testNode{a, b})
	gid := formGroup(t, []*testNode{a, b})
	partition([]*testNode{a}, []*testNode{b})
	eventually(t, 10*time.Second, "a has no topic peers", func() bool { return len(a.mustGroup(gid).Peers()) == 0 })
	var sent []*Message
	for i := 0; i < 5; i++ {
		sent = append(sent, a.send(gid, fmt.Sprintf("alone %d", i)))
	}
	heal(t, []*testNode{a, b})
	eventually(t, 20*time.Second, "b receives what a sent alone", func() bool {
		got := b.rec.readable(gid)
		for _, m := range sent {
			if got[m.ID()] != m.Text {
				return false
			}
		}
		return true
	})
}

// TestHistoryNotServedBeforeJoin: a member added later gets, by history
// sync, only what was sent after it joined; a removed member gets nothing.
func TestHistoryNotServedBeforeJoin(t *testing.T) {
	a, b := newTestNode(t, ""), newTestNode(t, "")
	connectAll(t, []*testNode{a, b})
	gid := formGroup(t, []*testNode{a, b})
	var early []*Message
	for i := 0; i < 10; i++ {
		early = append(early, a.send(gid, fmt.Sprintf("early %d", i)), b.send(gid, fmt.Sprintf("early b %d", i)))
	}
	eventually(t, 10*time.Second, "b has the early messages", func() bool { return len(b.rec.readable(gid)) == len(early) })

	n := newTestNode(t, "")
	connectAll(t, []*testNode{a, b, n})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	addAndJoin(t, a, n, gid, a)
	waitMesh(t, []*testNode{a, b, n}, gid)
	late := []*Message{a.send(gid, "late a"), b.send(gid, "late b")}
	eventually(t, 10*time.Second, "n reads what was sent after it joined", func() bool {
		got := n.rec.readable(gid)
		return got[late[0].ID()] == "late a" && got[late[1].ID()] == "late b"
	})
	// Ask both peers outright for everything: nothing from before the join.
	ng := n.mustGroup(gid)
	for _, p := range []*testNode{a, b} {
		resp, err := n.streams.FetchHistory(ctx, p.ID(), &wire.SyncRequest{GroupId: gid[:]})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.Envelopes {
			e, err := gossip.OpenEnvelope(nil, s)
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range early {
				if e.Sender == m.Sender && e.Seq == m.Seq {
					t.Fatalf("%s served message %s from before n joined", p.ID().ShortString(), m.ID())
				}
			}
		}
	}
	hist, _ := ng.History()
	for _, m := range hist {
		for _, e := range early {
			if m.ID() == e.ID() {
				t.Fatalf("n stored early message %s", m.ID())
			}
		}
	}

	// A removed member is refused outright.
	if err := a.mustGroup(gid).Remove(ctx, n.ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b applies the removal", func() bool { return !b.mustGroup(gid).IsMember(n.ID()) })
	if _, err := n.streams.FetchHistory(ctx, b.ID(), &wire.SyncRequest{GroupId: gid[:]}); err == nil {
		t.Fatal("a removed member was served history")
	}
}

// TestOfflineCatchUp: a member that is down while 500 messages are sent,
// across a rotation, gets every one of them when it comes back, decrypting
// those under the new key through a key request.
func TestOfflineCatchUp(t *testing.T) {
	dir := t.TempDir()
	a, b, d := newTestNode(t, ""), newTestNode(t, ""), newTestNode(t, "")
	c := newTestNode(t, filepath.Join(dir, "c"))
	nodes := []*testNode{a, b, c, d}
	connectAll(t, nodes)
	gid := formGroup(t, nodes)
	cID := c.ID()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	want := make(map[string]string)
	for i := 0; i < 250; i++ {
		m := a.send(gid, fmt.Sprintf("while c is away %d", i))
		want[m.ID()] = m.Text
	}
	oldKey := a.mustGroup(gid).SendingKeyID()
	if err := a.mustGroup(gid).Remove(ctx, d.ID()); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b holds the new key", func() bool {
		k := a.mustGroup(gid).SendingKeyID()
		return k != oldKey && b.mustGroup(gid).HasKey(k)
	})
	for i := 0; i < 250; i++ {
		sender := a
		if i%2 == 1 {
			sender = b
		}
		m := sender.send(gid, fmt.Sprintf("after the rotation %d", i))
		want[m.ID()] = m.Text
	}

	start := time.Now()
	c2 := newTestNode(t, filepath.Join(dir, "c"))
	if c2.ID() != cID {
		t.Fatal("c came back with another identity")
	}
	connectAll(t, []*testNode{a, b, c2})
	eventually(t, 60*time.Second, "c catches up on all 500 messages", func() bool {
		return len(c2.rec.readable(gid)) == len(want)
	})
	t.Logf("c caught up on %d messages in %v (%d by history sync, %d key requests)", len(want), time.Since(start), c2.Stats().EnvelopesSynced, c2.Stats().KeyRequestsSent)
	got := c2.rec.readable(gid)
	for id, text := range want {
		if got[id] != text {
			t.Fatalf("c reads %q for %s, want %q", got[id], id, text)
		}
	}
}

// TestPartitionHeal: two halves keep chatting while one half removes a
// member; after the partition heals, rosters, sending keys and histories
// converge, and the removed member reads nothing sent after its removal.
func TestPartitionHeal(t *testing.T) {
	nodes := newTestNodes(t, 5)
	a, b, x, c, d := nodes[0], nodes[1], nodes[2], nodes[3], nodes[4]
	gid := formGroup(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	partition([]*testNode{a, b, x}, []*testNode{c, d})
	want := make(map[string]string) // what every remaining member must end with
	for i := 0; i < 5; i++ {
		for _, n := range []*testNode{a, c, d} {
			m := n.send(gid, fmt.Sprintf("apart %d from %s", i, n.ID().ShortString()))
			want[m.ID()] = m.Text
		}
	}
	if err := a.mustGroup(gid).Remove(ctx, x.ID()); err != nil {
		t.Fatal(err)
	}
	// "After its removal" means after the removal reached the sender.
	waitSameSendingKey(t, []*testNode{a, b}, gid)
	afterRemoval := make(map[string]bool)
	for i := 0; i < 5; i++ {
		for _, n := range []*testNode{a, b} {
			m := n.send(gid, fmt.Sprintf("after removal %d from %s", i, n.ID().ShortString()))
			want[m.ID()] = m.Text
			afterRemoval[m.ID()] = true
		}
		m := c.send(gid, fmt.Sprintf("other half %d", i))
		want[m.ID()] = m.Text
	}

	heal(t, nodes)
	remaining := []*testNode{a, b, c, d}
	eventually(t, 30*time.Second, "rosters converge", func() bool {
		want := a.mustGroup(gid).State().Digest
		for _, n := range remaining {
			if n.mustGroup(gid).State().Digest != want || n.mustGroup(gid).IsMember(x.ID()) {
				return false
			}
		}
		return true
	})
	key := waitSameSendingKey(t, remaining, gid)
	for _, n := range remaining {
		m := n.send(gid, "healed from "+n.ID().ShortString())
		want[m.ID()] = m.Text
		afterRemoval[m.ID()] = true
		if m.KeyID != key {
			t.Fatalf("%s sends with %s, not the converged key", n.ID().ShortString(), m.KeyID.Short())
		}
	}
	for _, n := range remaining {
		eventually(t, 30*time.Second, n.ID().ShortString()+" has every message", func() bool {
			got := n.rec.readable(gid)
			for id, text := range want {
				if got[id] != text {
					return false
				}
			}
			return true
		})
	}
	xKeys := x.keys(gid)
	for _, k := range xKeys {
		if k.ID() == key {
			t.Fatal("the removed member holds the converged key")
		}
	}
	for id := range afterRemoval {
		if x.rec.readable(gid)[id] != "" {
			t.Fatalf("the removed member read %s", id)
		}
		var sender *testNode
		for _, n := range remaining {
			if strings.HasPrefix(id, n.ID().String()+"/") {
				sender = n
			}
		}
		seq, _ := strconv.ParseUint(id[strings.LastIndex(id, "/")+1:], 10, 64)
		e, err := sender.mustGroup(gid).storedEnvelope(sender.ID(), seq)
		if err != nil {
			t.Fatal(err)
		}
		if canRead(e, xKeys) {
			t.Fatalf("the removed member's keys open %s", id)
		}
	}
}
