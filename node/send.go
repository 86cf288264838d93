package node

// The send path: Send (one at a time under sendMu; the group lock only to
// pick key and heads) stores an envelope and pushes it to the group's
// outbox (outbox.go), which publishes it.

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// awaitExpectedKey waits while this node holds no qualifying key but its
// own add op promises one (derived from the adder's key): generating a key
// instead would split the group's sending key for no reason.
func (g *Group) awaitExpectedKey(ctx context.Context) {
	g.mu.Lock()
	waitNeeded := g.sendingKeyLocked() == nil && g.expectsDerivedKeyLocked()
	g.mu.Unlock()
	if !waitNeeded {
		return
	}
	deadline := time.NewTimer(g.n.params.ExpectedKeyWait)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		if g.sendingKeyLocked() != nil || !g.expectsDerivedKeyLocked() {
			g.mu.Unlock()
			return
		}
		arrived := g.keyCh
		g.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		case <-g.ctx.Done():
			return
		}
	}
}

// expectsDerivedKeyLocked reports whether the effective add op that admitted
// this node names a parent key, and the derived key has not arrived.
func (g *Group) expectsDerivedKeyLocked() bool {
	var mine *roster.Op
	for _, op := range g.roster.Ops() {
		if op.Kind == roster.KindAdd && op.Member == g.n.self && g.roster.Effective(op.ID) {
			mine = op
		}
	}
	return mine != nil && len(mine.ParentKeyID) == 32 && g.derivedForLocked(mine.ID) == nil
}

// capHeads bounds the heads an op or envelope names. Heads are sorted, so
// every node that caps picks the same ones; ops that leave some heads out
// still merge them later, and envelopes use heads only as a hint.
func capHeads(heads []roster.OpID, max int) []roster.OpID {
	if len(heads) > max {
		return heads[:max]
	}
	return heads
}

// Send encrypts text under the group's sending key, signs and stores it
// (durably, before it returns) and queues it for publishing: at once after
// a quiet spell, or with the sends queued behind it (Params.PublishBatch,
// PublishInterval). A member that just joined first waits (briefly) for the
// epoch key its adder derived for it. With no qualifying key it generates
// one for the current roster and sends it to every member.
func (g *Group) Send(ctx context.Context, text string) (*Message, error) {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return nil, err
	}
	defer finish()
	if len(text) > gossip.MaxTextSize {
		return nil, fmt.Errorf("%w: text of %d bytes exceeds %d", ErrTooLarge, len(text), gossip.MaxTextSize)
	}
	g.awaitExpectedKey(ctx)
	// sendMu orders our sends: sequence numbers are taken, stored and
	// queued for publishing one send at a time, so they stay gap-free and
	// leave in order. The group lock is held only to choose the key and
	// the roster heads, never across sealing or the disk.
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	g.mu.Lock()
	if g.left || !g.roster.IsMember(g.n.self) {
		g.mu.Unlock()
		return nil, fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	key := g.sendingKeyLocked()
	var rotated *keyring.Key
	if key == nil {
		var err error
		if rotated, err = g.rotateLocked(); err != nil {
			g.mu.Unlock()
			return nil, err
		}
		key = rotated
	}
	// The envelope names these heads: a roster change applied while it is
	// sealed and stored comes after it, as it would for a send a moment
	// earlier.
	heads := capHeads(g.roster.Heads(), gossip.MaxRosterHeads)
	g.mu.Unlock()

	// The key is durable before any message under it.
	if err := g.n.disk.sync(ctx, g.n.disk.ticket()); err != nil {
		return nil, err
	}
	now := time.Now()
	sentAt := g.n.wallNow()
	var env *gossip.Envelope
	firstMark := "kfs/" + key.ID().String() // our first seq under this key
	seq, err := g.n.store.AppendOwn(g.id, "seq", firstMark, []byte(g.n.self), func(seq, first uint64) ([]byte, error) {
		var err error
		env, err = gossip.SealEnvelopeFrom(g.n.rand, g.n.priv, key, seq, first, heads, &wire.Content{Text: text, SentAtMs: sentAt.UnixMilli()})
		if err != nil {
			return nil, err
		}
		return proto.Marshal(&wire.MessageRecord{Envelope: env.Signed, ReceivedAtMs: now.UnixMilli()})
	})
	if err != nil {
		return nil, err
	}
	msg := &Message{Group: g.id, Sender: g.n.self, Seq: seq, KeyID: key.ID(), Status: StatusOK,
		Text: text, SentAt: time.UnixMilli(sentAt.UnixMilli()), ReceivedAt: now}
	g.mu.Lock()
	g.noteStoredLocked(g.n.self, seq)
	g.noteDeliveredLocked(g.n.self, seq)
	if g.topic != nil {
		g.out.push(env.Signed)
	}
	g.mu.Unlock()

	if rotated != nil {
		g.emitRotated(rotated)
		g.distribute(rotated, nil)
	}
	g.n.events.publish(Event{Kind: EventMessage, Group: g.id, Message: msg})
	return msg, nil
}
