package node

// History: reading stored messages back, verified again, and the member's
// view of an envelope (decrypted, waiting for its key, or undecryptable).

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/store"
	"github.com/p2pchat/p2pchat/wire"
)

// History returns every stored message, each sender's in sequence order
// and senders interleaved in arrival order (inSenderOrder), decrypted where
// the key is held.
func (g *Group) History() ([]Message, error) {
	leave, err := g.n.life.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	var recs []*wire.MessageRecord
	err = g.n.store.Messages(g.id, func(b []byte) error {
		rec := new(wire.MessageRecord)
		if err := proto.Unmarshal(b, rec); err != nil {
			g.n.log.Warn("skipping unreadable message record", "group", g.id.ShortString(), "err", err)
			return nil
		}
		if !rec.Undecryptable {
			recs = append(recs, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Stored envelopes are verified again (see loadEnvelope), each sender's
	// as batches.
	signed := make([]*wire.Signed, len(recs))
	for i, rec := range recs {
		signed[i] = rec.Envelope
	}
	envs, errs := gossip.OpenEnvelopes(g.n.verifier, signed)
	var out []Message
	for i, e := range envs {
		if errs[i] != nil {
			// One bad record must not hide the rest of the history.
			g.n.log.Warn("skipping stored envelope that does not verify", "group", g.id.ShortString(), "err", errs[i])
			continue
		}
		g.mu.Lock() // per message: a long history does not hold up the group
		m := g.messageLocked(e, time.UnixMilli(recs[i].ReceivedAtMs))
		g.mu.Unlock()
		if m != nil {
			out = append(out, *m)
		}
	}
	inSenderOrder(out)
	return out, nil
}

// inSenderOrder reorders msgs (in arrival order) so that each sender's
// messages come in sequence order, as the live view shows them, while the
// interleaving of senders stays that of arrival: each sender's messages,
// sorted by seq, fill the positions its messages held. The store's arrival
// log is durable, so the order is the same on every call and restart.
func inSenderOrder(msgs []Message) {
	slots := make(map[peer.ID][]int)
	for i, m := range msgs {
		slots[m.Sender] = append(slots[m.Sender], i)
	}
	for _, idx := range slots {
		if len(idx) < 2 {
			continue
		}
		mine := make([]Message, len(idx))
		for k, i := range idx {
			mine[k] = msgs[i]
		}
		slices.SortStableFunc(mine, func(a, b Message) int { return cmp.Compare(a.Seq, b.Seq) })
		for k, i := range idx {
			msgs[i] = mine[k]
		}
	}
}

// loadEnvelope reads a stored envelope. Stored envelopes were verified when
// they arrived; they are verified again here because the store is a file an
// attacker with disk access could edit, and verification is cheap next to I/O.
func (g *Group) loadEnvelope(sender peer.ID, seq uint64) (*gossip.Envelope, *wire.MessageRecord, error) {
	rec, err := g.loadRecord(sender, seq)
	if err != nil {
		return nil, nil, err
	}
	e, err := gossip.OpenEnvelope(g.n.verifier, rec.Envelope)
	if err != nil {
		return nil, nil, fmt.Errorf("stored envelope: %w", err)
	}
	return e, rec, nil
}

// loadRecord reads a stored message record without verifying it.
func (g *Group) loadRecord(sender peer.ID, seq uint64) (*wire.MessageRecord, error) {
	b, err := g.n.store.Message(g.id, []byte(sender), seq)
	if err != nil {
		return nil, err
	}
	var rec wire.MessageRecord
	if err := proto.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("message record: %w", err)
	}
	return &rec, nil
}

// messageLocked builds the member's view of an envelope: decrypted when the
// key is held, waiting otherwise; nil when it does not authenticate.
func (g *Group) messageLocked(e *gossip.Envelope, received time.Time) *Message {
	m := &Message{Group: g.id, Sender: e.Sender, Seq: e.Seq, KeyID: e.KeyID, Status: StatusWaitingForKey, ReceivedAt: received}
	k, ok := g.ring.Get(e.KeyID)
	if !ok {
		return m
	}
	c, err := e.Open(k)
	if err != nil {
		return nil
	}
	m.Status, m.Text, m.SentAt = StatusOK, c.Text, time.UnixMilli(c.SentAtMs)
	return m
}

// markUndecryptable keeps a member's envelope that fails authentication
// under a key we hold: it is never shown, but its slot stays taken.
func (g *Group) markUndecryptable(e *gossip.Envelope, now time.Time) {
	rec, _ := proto.Marshal(&wire.MessageRecord{Envelope: e.Signed, ReceivedAtMs: now.UnixMilli(), Undecryptable: true})
	g.n.disk.put(store.MessageUpdate(g.id, []byte(e.Sender), e.Seq, rec))
	g.n.log.Warn("message does not decrypt under its key", "group", g.id.ShortString(), "env", e)
}
