package node

// The topic validator. It runs inline in pubsub's validation workers,
// shared by every topic, so it takes the group lock only briefly and never
// writes to disk.

import (
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/roster"
)

// policy is the topic validator's judgement. It runs inline in pubsub, so it
// only reads state and the store; the reader loop does the work.
func (g *Group) policy(from peer.ID, in *gossip.Inbound) pubsub.ValidationResult {
	self := from == g.n.self
	switch {
	case in.Envelope != nil:
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeEnvelope(from, in.Envelope)
	case len(in.Envelopes) > 0:
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeBatch(from, in.Envelopes)
	case in.Op != nil:
		if in.Op.Group != g.id {
			return pubsub.ValidationReject
		}
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeOp(from, in.Op)
	case in.KeyRequest != nil:
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeKeyRequest(in.KeyRequest)
	}
	return pubsub.ValidationReject
}

// judgeOp passes only ops the DAG can use: new ones, by an author this
// roster names. An op whose parents are unknown may come from a member added
// in ops we lack: it goes to the reader, which fetches the roster from the
// forwarder, and Insert judges it then.
func (g *Group) judgeOp(from peer.ID, op *roster.Op) pubsub.ValidationResult {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.roster.Has(op.ID):
		return pubsub.ValidationIgnore
	case !g.roster.Knows(op.Parents):
		return pubsub.ValidationAccept
	case !g.roster.EverAdded(op.Author):
		return pubsub.ValidationReject
	case g.roster.WouldRefuse(op):
		// A removed member's op: not applied, not forwarded. Not rejected
		// either: an honest peer that has not seen the removal yet may
		// forward it in good faith.
		g.n.stats.opsRefused.Add(1)
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationAccept
}

func (g *Group) judgeEnvelope(from peer.ID, e *gossip.Envelope) pubsub.ValidationResult {
	if e.Group != g.id {
		return pubsub.ValidationReject
	}
	g.mu.Lock()
	member := g.roster.IsMember(e.Sender)
	if !member && !g.roster.Knows(e.RosterHeads) && !g.roster.EverAdded(e.Sender) {
		// The sender names roster ops we have not seen: perhaps its own add.
		// Keep the message and fetch the roster; do not forward what we
		// cannot vouch for.
		g.holdLocked(from, e)
		g.mu.Unlock()
		g.fetchRoster(from)
		return pubsub.ValidationIgnore
	}
	verdict := g.judgeSenderLocked(e.Sender, e.Seq)
	if verdict == senderHold {
		g.holdLocked(from, e)
	}
	g.mu.Unlock()
	switch verdict {
	case senderHold:
		return pubsub.ValidationIgnore
	case senderReject:
		g.n.stats.envelopesRefused.Add(1)
		return pubsub.ValidationReject
	}
	return g.judgeReplay(e)
}

// judgeBatch judges a sender's envelope batch as a whole: one refused
// envelope refuses the batch (an honest sender never makes one), envelopes
// already held are skipped by ingest, and the batch passes if any is new.
func (g *Group) judgeBatch(from peer.ID, envs []*gossip.Envelope) pubsub.ValidationResult {
	res := pubsub.ValidationIgnore
	for _, e := range envs {
		switch g.judgeEnvelope(from, e) {
		case pubsub.ValidationReject:
			return pubsub.ValidationReject
		case pubsub.ValidationAccept:
			res = pubsub.ValidationAccept
		}
	}
	return res
}

// judgeReplay ignores an envelope for a slot the store already holds: an
// exact duplicate (pubsub's seen cache catches most), a replay under
// another nonce, or a second, different envelope for the slot
// (equivocation). None is stored, shown or forwarded; the first stays. It
// asks memory (the stored slots), never the disk, since the validator runs
// on pubsub's shared workers.
func (g *Group) judgeReplay(e *gossip.Envelope) pubsub.ValidationResult {
	g.mu.Lock()
	taken := g.hasMessageLocked(e.Sender, e.Seq)
	g.mu.Unlock()
	if taken {
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationAccept
}

func (g *Group) judgeKeyRequest(r *gossip.KeyRequest) pubsub.ValidationResult {
	if r.Group != g.id {
		return pubsub.ValidationReject
	}
	// No freshness check against sent_at_ms: two machines' clocks need not
	// agree (a node hours off would never recover a key it missed). What
	// bounds a request instead: the requester must be a member now (a
	// replay never draws a key for anyone else), its token bucket here, and
	// the answered memory (answered.go), which draws one answer per
	// (requester, nonce) while it remembers the pair.
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.roster.IsMember(r.Requester) {
		return pubsub.ValidationIgnore
	}
	b := g.reqBudget[r.Requester]
	if b == nil {
		b = &tokenBucket{}
		g.reqBudget[r.Requester] = b
	}
	if !b.take(now, keyRequestRate, keyRequestBurst) {
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationAccept
}
