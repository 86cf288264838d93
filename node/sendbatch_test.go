package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestConcurrentSendsGroupCommitted: sends made at the same time (stored
// together, in group commits) get gap-free sequence numbers, each its own
// text, every one durable (there after a restart) and delivered to the
// other member.
func TestConcurrentSendsGroupCommitted(t *testing.T) {
	dir := t.TempDir()
	a := newTestNode(t, dir)
	b := newTestNode(t, "")
	nodes := []*testNode{a, b}
	connectAll(t, nodes)
	gid := formGroup(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := a.mustGroup(gid)
	const n = 100
	var wg sync.WaitGroup
	msgs := make([]*Message, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs[i], errs[i] = g.Send(ctx, fmt.Sprint("concurrent ", i))
		}()
	}
	wg.Wait()
	var seqs []uint64
	textOf := map[uint64]string{}
	for i, m := range msgs {
		if errs[i] != nil {
			t.Fatalf("send %d: %v", i, errs[i])
		}
		if m.Text != fmt.Sprint("concurrent ", i) {
			t.Fatalf("send %d answered with another send's message %q", i, m.Text)
		}
		seqs = append(seqs, m.Seq)
		textOf[m.Seq] = m.Text
	}
	slices.Sort(seqs)
	for i := 1; i < len(seqs); i++ {
		if seqs[i] != seqs[i-1]+1 {
			t.Fatalf("sequence numbers not gap-free: %v", seqs)
		}
	}
	eventually(t, 10*time.Second, "b shows every concurrent send", func() bool {
		got := b.rec.readable(gid)
		for _, m := range msgs {
			if got[m.ID()] != m.Text {
				return false
			}
		}
		return true
	})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	again := newTestNodeWith(t, dir, a.Node.priv)
	hist, err := again.mustGroup(gid).History()
	if err != nil {
		t.Fatal(err)
	}
	stored := map[uint64]string{}
	for _, m := range hist {
		if m.Sender == a.ID() {
			stored[m.Seq] = m.Text
		}
	}
	for seq, text := range textOf {
		if stored[seq] != text {
			t.Fatalf("after a restart, seq %d holds %q, want %q", seq, stored[seq], text)
		}
	}
}
