package node

// Per-sender delivery order: messages are shown in sequence order, each
// sender's out-of-order ones held for a short window, gaps then synced.

import (
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// senderOrder keeps one sender's messages in sequence order for display.
type senderOrder struct {
	next      uint64              // next sequence number to show; 0 = not known yet
	buffered  map[uint64]*Message // arrived early, waiting for a gap to fill
	deadline  time.Time           // when buffered messages are shown anyway
	gapSynced bool                // a sync was asked for this gap
}

// deliverLocked shows m in its sender's sequence order. A message that
// arrives before an earlier one waits at most ReorderWindow; history sync
// fills real gaps later, and the late message is shown when it comes.
func (g *Group) deliverLocked(m *Message, keyFirstSeq uint64) {
	o := g.order[m.Sender]
	if o == nil {
		o = &senderOrder{buffered: make(map[uint64]*Message)}
		g.order[m.Sender] = o
	}
	// The first message seen from a sender this session: start there if it
	// is the sender's first ever, or if its predecessor is stored (shown
	// before a restart); else from the sender's first message under this
	// message's key, which we are entitled to; else wait, briefly, for
	// earlier ones.
	if o.next == 0 && len(o.buffered) == 0 {
		switch {
		case m.Seq == 1 || g.hasMessageLocked(m.Sender, m.Seq-1):
			o.next = m.Seq
		case keyFirstSeq != 0:
			o.next = keyFirstSeq
		}
	}
	switch {
	case o.next != 0 && m.Seq < o.next:
		g.emitMessage(m) // late: its slot was given up
	case m.Seq == o.next:
		g.emitMessage(m)
		o.next++
		g.drainLocked(o)
		if len(o.buffered) == 0 {
			o.gapSynced = false
		}
	default:
		if len(o.buffered) == 0 {
			// A sender we have seen nothing from may well have sent messages
			// we are not entitled to (we joined later): wait only for
			// reordering in flight, not for history.
			wait := g.n.params.ReorderWindow
			if o.next == 0 {
				wait = min(wait, g.n.params.FirstContactWindow)
			}
			o.deadline = time.Now().Add(wait)
			g.nudge()
		}
		o.buffered[m.Seq] = m
	}
}

// hasMessageLocked reports whether the store holds message seq of sender,
// from memory.
func (g *Group) hasMessageLocked(sender peer.ID, seq uint64) bool {
	return g.stored[sender].contains(seq)
}

// noteDeliveredLocked records that seq of sender was shown (our own sends).
func (g *Group) noteDeliveredLocked(sender peer.ID, seq uint64) {
	o := g.order[sender]
	if o == nil {
		o = &senderOrder{buffered: make(map[uint64]*Message)}
		g.order[sender] = o
	}
	o.next = seq + 1
}

func (g *Group) drainLocked(o *senderOrder) {
	for {
		m, ok := o.buffered[o.next]
		if !ok {
			return
		}
		delete(o.buffered, o.next)
		g.emitMessage(m)
		o.next++
	}
}

// flushOrderLocked shows buffered messages whose wait has run out, from the
// lowest sequence number on.
func (g *Group) flushOrderLocked(now time.Time) (next time.Time) {
	for sender, o := range g.order {
		if len(o.buffered) == 0 {
			continue
		}
		if now.Before(o.deadline) {
			if next.IsZero() || o.deadline.Before(next) {
				next = o.deadline
			}
			continue
		}
		if o.next != 0 && !o.gapSynced {
			// A real gap: ask a peer for the missing messages and keep the
			// later ones back a little longer, so the gap usually fills in
			// order instead of showing up late.
			o.gapSynced = true
			g.gapSenders = append(g.gapSenders, sender)
			o.deadline = now.Add(g.n.params.GapSyncWait)
			if next.IsZero() || o.deadline.Before(next) {
				next = o.deadline
			}
			continue
		}
		seqs := make([]uint64, 0, len(o.buffered))
		for s := range o.buffered {
			seqs = append(seqs, s)
		}
		slices.Sort(seqs)
		o.next = seqs[0]
		o.gapSynced = false
		g.drainLocked(o)
		if len(o.buffered) > 0 {
			o.deadline = now.Add(g.n.params.ReorderWindow)
			if next.IsZero() || o.deadline.Before(next) {
				next = o.deadline
			}
		}
	}
	return next
}

func (g *Group) emitMessage(m *Message) {
	g.n.events.publish(Event{Kind: EventMessage, Group: g.id, Message: m})
}
