package node

// Per-sender delivery order: messages are shown in sequence order, each
// sender's out-of-order ones held for a short window, gaps then synced.

import (
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// deliveryOrder puts each sender's messages in sequence order for display.
// It is pure bookkeeping: the caller passes the time and whether a
// predecessor is stored, and shows what it returns, so it is tested alone
// with a made-up clock (order_test.go). The group holds it under its lock.
type deliveryOrder struct {
	reorderWindow      time.Duration // how long an early message waits for earlier ones
	firstContactWindow time.Duration // ...when nothing of the sender was seen yet
	gapSyncWait        time.Duration // extra wait once a sync for the gap is asked
	senders            map[peer.ID]*senderOrder
}

// senderOrder keeps one sender's messages in sequence order for display.
type senderOrder struct {
	next      uint64              // next sequence number to show; 0 = not known yet
	buffered  map[uint64]*Message // arrived early, waiting for a gap to fill
	deadline  time.Time           // when buffered messages are shown anyway
	gapSynced bool                // a sync was asked for this gap
}

func newDeliveryOrder(p Params) *deliveryOrder {
	return &deliveryOrder{
		reorderWindow:      p.ReorderWindow,
		firstContactWindow: p.FirstContactWindow,
		gapSyncWait:        p.GapSyncWait,
		senders:            make(map[peer.ID]*senderOrder),
	}
}

func (d *deliveryOrder) sender(p peer.ID) *senderOrder {
	o := d.senders[p]
	if o == nil {
		o = &senderOrder{buffered: make(map[uint64]*Message)}
		d.senders[p] = o
	}
	return o
}

// offer takes m and returns the messages to show now, in order (m and any
// it unblocks; none if m waits). armed reports that m started a wait: the
// caller's timer must call flush by the new deadline. predecessorStored
// tells whether message m.Seq-1 of the sender is stored (shown before a
// restart); keyFirstSeq is the sender's first seq under m's key, or 0.
func (d *deliveryOrder) offer(m *Message, keyFirstSeq uint64, predecessorStored bool, now time.Time) (show []*Message, armed bool) {
	o := d.sender(m.Sender)
	// The first message seen from a sender this session: start there if it
	// is the sender's first ever, or if its predecessor is stored; else
	// from the sender's first message under this message's key, which we
	// are entitled to; else wait, briefly, for earlier ones.
	if o.next == 0 && len(o.buffered) == 0 {
		switch {
		case m.Seq == 1 || predecessorStored:
			o.next = m.Seq
		case keyFirstSeq != 0:
			o.next = keyFirstSeq
		}
	}
	switch {
	case o.next != 0 && m.Seq < o.next:
		return []*Message{m}, false // late: its slot was given up
	case m.Seq == o.next:
		show = append(show, m)
		o.next++
		show = o.drain(show)
		if len(o.buffered) == 0 {
			o.gapSynced = false
		}
		return show, false
	}
	if len(o.buffered) == 0 {
		// A sender we have seen nothing from may well have sent messages
		// we are not entitled to (we joined later): wait only for
		// reordering in flight, not for history.
		wait := d.reorderWindow
		if o.next == 0 {
			wait = min(wait, d.firstContactWindow)
		}
		o.deadline = now.Add(wait)
		armed = true
	}
	o.buffered[m.Seq] = m
	return nil, armed
}

// delivered records that seq of sender was shown by other means (our own
// sends).
func (d *deliveryOrder) delivered(sender peer.ID, seq uint64) {
	d.sender(sender).next = seq + 1
}

// waiting returns the buffered message seq of sender, if one waits.
func (d *deliveryOrder) waiting(sender peer.ID, seq uint64) (*Message, bool) {
	o := d.senders[sender]
	if o == nil {
		return nil, false
	}
	m, ok := o.buffered[seq]
	return m, ok
}

// shownUpTo returns the highest seq of sender shown in order, or 0.
func (d *deliveryOrder) shownUpTo(sender peer.ID) uint64 {
	if o := d.senders[sender]; o != nil && o.next > 0 {
		return o.next - 1
	}
	return 0
}

func (o *senderOrder) drain(show []*Message) []*Message {
	for {
		m, ok := o.buffered[o.next]
		if !ok {
			return show
		}
		delete(o.buffered, o.next)
		show = append(show, m)
		o.next++
	}
}

// flush shows buffered messages whose wait has run out, from the lowest
// sequence number on. For a real gap (the next expected seq is known) it
// first asks once for a sync (the senders in gaps) and waits GapSyncWait
// more. next is the earliest deadline still pending, zero if none.
func (d *deliveryOrder) flush(now time.Time) (show []*Message, gaps []peer.ID, next time.Time) {
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	for sender, o := range d.senders {
		if len(o.buffered) == 0 {
			continue
		}
		if now.Before(o.deadline) {
			soonest(o.deadline)
			continue
		}
		if o.next != 0 && !o.gapSynced {
			// A real gap: ask a peer for the missing messages and keep the
			// later ones back a little longer, so the gap usually fills in
			// order instead of showing up late.
			o.gapSynced = true
			gaps = append(gaps, sender)
			o.deadline = now.Add(d.gapSyncWait)
			soonest(o.deadline)
			continue
		}
		seqs := make([]uint64, 0, len(o.buffered))
		for s := range o.buffered {
			seqs = append(seqs, s)
		}
		slices.Sort(seqs)
		o.next = seqs[0]
		o.gapSynced = false
		show = o.drain(show)
		if len(o.buffered) > 0 {
			o.deadline = now.Add(d.reorderWindow)
			soonest(o.deadline)
		}
	}
	return show, gaps, next
}

// deliverLocked shows m in its sender's sequence order. A message that
// arrives before an earlier one waits at most ReorderWindow; history sync
// fills real gaps later, and the late message is shown when it comes.
func (g *Group) deliverLocked(m *Message, keyFirstSeq uint64) {
	show, armed := g.order.offer(m, keyFirstSeq, g.hasMessageLocked(m.Sender, m.Seq-1), time.Now())
	for _, m := range show {
		g.emitMessage(m)
	}
	if armed {
		g.nudge()
	}
}

// hasMessageLocked reports whether the store holds message seq of sender,
// from memory.
func (g *Group) hasMessageLocked(sender peer.ID, seq uint64) bool {
	return g.stored[sender].contains(seq)
}

// noteDeliveredLocked records that seq of sender was shown (our own sends).
func (g *Group) noteDeliveredLocked(sender peer.ID, seq uint64) {
	g.order.delivered(sender, seq)
}

// flushOrderLocked shows buffered messages whose wait has run out and
// queues syncs for gaps; it returns when to look again.
func (g *Group) flushOrderLocked(now time.Time) time.Time {
	show, gaps, next := g.order.flush(now)
	for _, m := range show {
		g.emitMessage(m)
	}
	g.gapSenders = append(g.gapSenders, gaps...)
	return next
}

func (g *Group) emitMessage(m *Message) {
	g.n.events.publish(Event{Kind: EventMessage, Group: g.id, Message: m})
}
