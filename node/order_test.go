package node

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// seqsOf lists the sequence numbers of ms.
func seqsOf(ms []*Message) []uint64 {
	out := make([]uint64, len(ms))
	for i, m := range ms {
		out[i] = m.Seq
	}
	return out
}

// TestDeliveryOrder drives the per-sender ordering with a made-up clock:
// in-order messages show at once; an early one waits for the gap to fill;
// the first message seen mid-stream waits only FirstContactWindow; a real
// gap asks for a sync once and then waits GapSyncWait more before showing
// what it has; a message whose slot was given up shows as late; a start
// from the key's first seq or from a stored predecessor shows at once.
func TestDeliveryOrder(t *testing.T) {
	p := DefaultParams()
	alice := peer.ID("alice")
	msg := func(seq uint64) *Message { return &Message{Sender: alice, Seq: seq} }
	t0 := time.Unix(1000, 0)
	check := func(what string, got []*Message, want ...uint64) {
		t.Helper()
		if !slices.Equal(seqsOf(got), want) && !(len(got) == 0 && len(want) == 0) {
			t.Fatalf("%s: shown %v, want %v", what, seqsOf(got), want)
		}
	}

	d := newDeliveryOrder(p)
	show, _ := d.offer(msg(1), 0, false, t0)
	check("first ever", show, 1)
	show, armed := d.offer(msg(3), 0, false, t0)
	check("early", show)
	if !armed {
		t.Fatal("an early message did not arm the timer")
	}
	show, _ = d.offer(msg(2), 0, false, t0.Add(time.Millisecond))
	check("the gap fills", show, 2, 3)

	// A real gap: 4 never comes.
	show, _ = d.offer(msg(5), 0, false, t0)
	check("after a gap", show)
	show, gaps, next := d.flush(t0.Add(p.ReorderWindow - time.Millisecond))
	check("before the window ends", show)
	if len(gaps) != 0 || !next.Equal(t0.Add(p.ReorderWindow)) {
		t.Fatalf("before the window: gaps %v, next %v", gaps, next)
	}
	at := t0.Add(p.ReorderWindow)
	show, gaps, next = d.flush(at)
	check("the window ends: a sync first", show)
	if !slices.Equal(gaps, []peer.ID{alice}) || !next.Equal(at.Add(p.GapSyncWait)) {
		t.Fatalf("at the window's end: gaps %v, next %v", gaps, next)
	}
	show, gaps, _ = d.flush(at.Add(p.GapSyncWait))
	check("the sync did not fill it", show, 5)
	if len(gaps) != 0 {
		t.Fatalf("a second sync was asked for the same gap: %v", gaps)
	}
	show, _ = d.offer(msg(4), 0, false, at.Add(p.GapSyncWait+time.Second))
	check("late", show, 4)
	show, _ = d.offer(msg(6), 0, false, at.Add(p.GapSyncWait+time.Second))
	check("in order again", show, 6)
	if d.shownUpTo(alice) != 6 {
		t.Fatalf("shown up to %d, want 6", d.shownUpTo(alice))
	}

	// First contact mid-stream, nothing stored: wait FirstContactWindow only.
	d = newDeliveryOrder(p)
	show, _ = d.offer(msg(40), 0, false, t0)
	check("first contact", show)
	show, gaps, _ = d.flush(t0.Add(p.FirstContactWindow))
	check("first contact window over", show, 40)
	if len(gaps) != 0 {
		t.Fatalf("first contact asked for a sync: %v", gaps)
	}
	if m, ok := d.waiting(alice, 40); ok {
		t.Fatalf("shown message still waiting: %v", m)
	}

	// Starts that need no wait.
	d = newDeliveryOrder(p)
	show, _ = d.offer(msg(7), 7, false, t0)
	check("first under its key", show, 7)
	d = newDeliveryOrder(p)
	show, _ = d.offer(msg(9), 0, true, t0)
	check("predecessor stored", show, 9)
	d = newDeliveryOrder(p)
	d.delivered(alice, 3) // our own send
	show, _ = d.offer(msg(4), 0, false, t0)
	check("after our own send", show, 4)

	// A waiting message can be read (and replaced) until it shows.
	d = newDeliveryOrder(p)
	d.offer(msg(1), 0, false, t0)
	d.offer(msg(3), 0, false, t0)
	if m, ok := d.waiting(alice, 3); !ok || m.Seq != 3 {
		t.Fatal("the early message is not waiting")
	}
}

// TestHistoryInSenderOrder: messages that arrived out of their sender's
// order come back from History in sequence order per sender, in the
// positions that sender's messages held (the interleaving of senders is
// the arrival order).
func TestHistoryInSenderOrder(t *testing.T) {
	a, b := peer.ID("a"), peer.ID("b")
	msgs := []Message{{Sender: a, Seq: 2}, {Sender: b, Seq: 1}, {Sender: a, Seq: 1}, {Sender: b, Seq: 3}, {Sender: a, Seq: 3}, {Sender: b, Seq: 2}}
	inSenderOrder(msgs)
	var got []string
	for _, m := range msgs {
		got = append(got, string(m.Sender)+fmt.Sprint(m.Seq))
	}
	want := []string{"a1", "b1", "a2", "b2", "a3", "b3"}
	if !slices.Equal(got, want) {
		t.Fatalf("history order %v, want %v", got, want)
	}
}
