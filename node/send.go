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
// one for the current roster and sends it to every member. Sends made at
// the same time are stored in one synced write (a group commit) and keep
// the order in which they were queued.
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
	// Group commit: the send is queued; whoever holds sendMu stores every
	// queued send in one synced transaction and publishes them in order.
	// A send that finds its request already taken waits for the sendMu
	// holder to finish it, which happens before sendMu is released.
	req := &sendRequest{text: text, done: make(chan sendResult, 1)}
	g.sendQMu.Lock()
	g.sendQ = append(g.sendQ, req)
	g.sendQMu.Unlock()
	for {
		select {
		case res := <-req.done:
			return res.msg, res.err
		default:
		}
		g.sendMu.Lock()
		if batch := g.takeSends(); len(batch) > 0 {
			g.sendBatch(batch)
		}
		g.sendMu.Unlock()
	}
}

// sendRequest is one queued Send.
type sendRequest struct {
	text string
	done chan sendResult // buffered: the batch never waits on the caller
}

type sendResult struct {
	msg *Message
	err error
}

// maxSendBatch bounds the sends stored in one transaction.
const maxSendBatch = 64

func (g *Group) takeSends() []*sendRequest {
	g.sendQMu.Lock()
	defer g.sendQMu.Unlock()
	n := min(len(g.sendQ), maxSendBatch)
	batch := g.sendQ[:n:n]
	g.sendQ = g.sendQ[n:]
	return batch
}

// sendBatch stores batch as our next messages in one synced transaction,
// then queues them for publishing in sequence order, and answers each
// request. Called with sendMu held: sequence numbers are taken, stored and
// queued one batch at a time, so they stay gap-free and leave in order.
// The group lock is held only to choose the key and the roster heads,
// never across sealing or the disk.
func (g *Group) sendBatch(batch []*sendRequest) {
	fail := func(err error) {
		for _, r := range batch {
			r.done <- sendResult{err: err}
		}
	}
	g.mu.Lock()
	if g.left || !g.roster.IsMember(g.n.self) {
		g.mu.Unlock()
		fail(fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString()))
		return
	}
	key := g.sendingKeyLocked()
	var rotated *keyring.Key
	if key == nil {
		var err error
		if rotated, err = g.rotateLocked(); err != nil {
			g.mu.Unlock()
			fail(err)
			return
		}
		key = rotated
	}
	// The envelopes name these heads: a roster change applied while they
	// are sealed and stored comes after them, as it would for sends a
	// moment earlier.
	heads := capHeads(g.roster.Heads(), gossip.MaxRosterHeads)
	g.mu.Unlock()

	// The key is durable before any message under it. The batch waits on
	// the group's context, not one caller's: it answers every caller.
	if err := g.n.disk.sync(g.ctx, g.n.disk.ticket()); err != nil {
		fail(err)
		return
	}
	now := time.Now()
	sentAt := g.n.wallNow()
	envs := make([]*gossip.Envelope, len(batch))
	firstMark := "kfs/" + key.ID().String() // our first seq under this key
	seqs, err := g.n.store.AppendOwnBatch(g.id, "seq", firstMark, []byte(g.n.self), len(batch), func(i int, seq, first uint64) ([]byte, error) {
		env, err := gossip.SealEnvelopeFrom(g.n.rand, g.n.priv, key, seq, first, heads, &wire.Content{Text: batch[i].text, SentAtMs: sentAt.UnixMilli()})
		if err != nil {
			return nil, err
		}
		envs[i] = env
		return proto.Marshal(&wire.MessageRecord{Envelope: env.Signed, ReceivedAtMs: now.UnixMilli()})
	})
	if err != nil {
		fail(err)
		return
	}
	msgs := make([]*Message, len(batch))
	g.mu.Lock()
	for i, seq := range seqs {
		msgs[i] = &Message{Group: g.id, Sender: g.n.self, Seq: seq, KeyID: key.ID(), Status: StatusOK,
			Text: batch[i].text, SentAt: time.UnixMilli(sentAt.UnixMilli()), ReceivedAt: now}
		g.noteStoredLocked(g.n.self, seq)
		g.noteDeliveredLocked(g.n.self, seq)
		if g.topic != nil {
			g.out.push(envs[i].Signed)
		}
	}
	g.mu.Unlock()

	if rotated != nil {
		g.emitRotated(rotated)
		g.distribute(rotated, nil)
	}
	for i, m := range msgs {
		g.n.events.publish(Event{Kind: EventMessage, Group: g.id, Message: m})
		batch[i].done <- sendResult{msg: m}
	}
}
