package node

import (
	"math/rand/v2"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/roster"
)

// This file owns what makes a removal final at this node (docs/protocol.md
// §4.4, §4.5): the acks it signs after someone departs (they merge heads and
// mark how far the departed peer's messages reached it), and the one rule
// by which an envelope's sender is judged on every path — topic, history
// sync and the held queue.

const (
	// mergeHeadsAbove is the number of roster heads above which the node
	// merges them with an ack (after a random delay, so that one member
	// usually does it for all).
	mergeHeadsAbove = 8
	// maxHeldPerSender bounds the envelopes held for one sender, so that a
	// departed member's flood cannot push out others' held messages.
	maxHeldPerSender = 64
)

// scheduleAckLocked arranges an ack after the peers in departed stopped
// being members, and a merge when the heads grew many.
func (g *Group) scheduleAckLocked(departed []peer.ID) {
	if g.left {
		return
	}
	now := time.Now()
	marked := false
	for _, p := range departed {
		if p != g.n.self {
			g.toMark[p] = true
			marked = true
		}
	}
	switch {
	case marked:
		if g.ackAt.IsZero() || g.ackAt.After(now.Add(g.n.params.AckDelay)) {
			g.ackAt = now.Add(g.n.params.AckDelay)
		}
	case len(g.roster.Heads()) > mergeHeadsAbove && g.ackAt.IsZero():
		g.ackAt = now.Add(time.Duration(rand.Int64N(int64(g.n.params.AckDelay)) + 1))
	default:
		return
	}
	g.nudge()
}

// authorAck signs and publishes the ack that is due: marks for the
// departed peers, parents the current heads. An ack that would only merge
// is skipped when someone else merged the heads meanwhile.
func (g *Group) authorAck() {
	g.mu.Lock()
	if g.left || g.stopped || !g.roster.IsMember(g.n.self) {
		g.mu.Unlock()
		return
	}
	departed := make([]peer.ID, 0, len(g.toMark))
	for p := range g.toMark {
		departed = append(departed, p)
	}
	slices.Sort(departed)
	if len(departed) > roster.MaxMarks {
		departed = departed[:roster.MaxMarks]
		g.ackAt = time.Now() // the rest in the next ack
		g.nudge()
	}
	if len(departed) == 0 && len(g.roster.Heads()) <= mergeHeadsAbove {
		g.mu.Unlock()
		return
	}
	marks := make([]roster.Mark, 0, len(departed))
	for _, p := range departed {
		delete(g.toMark, p)
		marks = append(marks, roster.Mark{Peer: p, Seq: g.highestSeqLocked(p)})
	}
	op, err := roster.NewAck(g.n.priv, g.id, capHeads(g.roster.Heads(), roster.MaxParents), marks)
	if err == nil {
		err = g.applyLocalLocked(op)
	}
	g.mu.Unlock()
	g.nudge() // a rotation may have waited for this ack (rotationDelayLocked)
	if err != nil {
		g.n.log.Warn("sign ack", "group", g.id.ShortString(), "err", err)
		return
	}
	g.publishOp(g.ctx, op)
}

// highestSeqLocked is the highest envelope seq of p this node holds:
// stored this run, shown in order, or held — a departed member's messages
// that arrive while this node waits AckDelay are held, and the mark must
// cover them (that wait is what lets in-flight messages count).
func (g *Group) highestSeqLocked(p peer.ID) uint64 {
	seq := g.highSeq[p]
	if shown := g.order.shownUpTo(p); shown > seq {
		seq = shown
	}
	// Held ones count only where they continue the sequence without a gap:
	// a departed member that sends seq 2^63 in this window must not raise
	// its bound for ever.
	heldSeqs := make(map[uint64]bool)
	for _, h := range g.held {
		if h.env.Sender == p {
			heldSeqs[h.env.Seq] = true
		}
	}
	for heldSeqs[seq+1] {
		seq++
	}
	return seq
}

// mergeHeadsLocked merges the roster heads with acks until a key made now
// can name them all (gossip.MaxRosterHeads): no key is ever refused for
// heads that someone else made.
func (g *Group) mergeHeadsLocked() {
	for range 4 {
		heads := g.roster.Heads()
		if len(heads) <= gossip.MaxRosterHeads {
			return
		}
		op, err := roster.NewAck(g.n.priv, g.id, capHeads(heads, roster.MaxParents), nil)
		if err == nil {
			err = g.applyLocalLocked(op)
		}
		if err != nil {
			g.n.log.Warn("merge heads", "group", g.id.ShortString(), "err", err)
			return
		}
		g.goTrackedLocked(func() { g.publishOp(g.ctx, op) })
	}
}

// senderVerdict is the judgement on an envelope's sender.
type senderVerdict int

const (
	senderAccept senderVerdict = iota // a member, or a departed one within its bound
	senderHold                        // departed, its bound not final yet
	senderReject                      // never named, or past its final bound
)

// judgeSenderLocked is the one rule for an envelope's sender on every path
// (docs/protocol.md §4.5). A current member's envelope is accepted. A peer
// the roster never named, or named only by adds that took no effect, is
// refused. A departed member's envelope is
// accepted if its seq is at most the highest mark any other member's ack
// gives for it; otherwise it is held while some current member has not yet
// marked it, and refused once every current member has. The state an
// envelope names plays no part: its sender chooses it.
func (g *Group) judgeSenderLocked(sender peer.ID, seq uint64) senderVerdict {
	if g.roster.IsMember(sender) {
		return senderAccept
	}
	if !g.roster.EverAdded(sender) || !g.roster.EverMember(sender) {
		return senderReject
	}
	if bound, ok := g.roster.MarkBound(sender); ok && seq <= bound {
		return senderAccept
	}
	if !g.roster.MarkedByEveryMember(sender) {
		return senderHold
	}
	return senderReject
}

// holdLocked keeps e until the roster can judge it, within the bounds.
func (g *Group) holdLocked(from peer.ID, e *gossip.Envelope) {
	if len(g.held) >= maxHeldEnvelopes {
		return
	}
	n := 0
	for _, h := range g.held {
		if h.env.Sender == e.Sender {
			if h.env.Seq == e.Seq {
				return
			}
			n++
		}
	}
	if n < maxHeldPerSender {
		g.held = append(g.held, heldEnvelope{from: from, env: e})
	}
}
