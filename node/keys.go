package node

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// orphanKey is a key transfer for a group this node has not joined yet: the
// adder sends the new member its key right after the add, often before the
// member has fetched the roster. It is checked like any transfer on join.
type orphanKey struct {
	from     peer.ID
	key      *keyring.Key
	received time.Time
}

const (
	maxOrphanKeys = 64
	orphanKeyTTL  = 10 * time.Minute
)

// handleKeyTransfer receives a key over the key stream from an
// authenticated peer and reports whether it was accepted.
func (n *Node) handleKeyTransfer(from peer.ID, t *wire.KeyTransfer) bool {
	meta, signer, err := gossip.OpenKeyMeta(n.verifier, t.Meta)
	if err != nil || signer != from {
		return false
	}
	if !meta.IsRecipient(n.self) {
		return false
	}
	key, err := keyring.FromSecret(t.Key, meta)
	if err != nil {
		return false
	}
	g, ok := n.Group(meta.Group)
	if !ok {
		n.keepOrphan(from, key)
		return false
	}
	// Only a current member's ops are taken from the key stream; anyone
	// else's key is refused below anyway.
	if len(t.RosterOps) > 0 && len(t.RosterOps) <= roster.MaxParents && g.isMember(from) {
		var ops []*roster.Op
		for _, s := range t.RosterOps {
			op, err := roster.Decode(n.verifier, s)
			if err != nil || op.Group != g.id {
				return false // a sender of forged ops gets nothing accepted
			}
			if op.Kind != roster.KindCreate {
				ops = append(ops, op)
			}
		}
		g.onOps(from, ops)
	}
	if !g.acceptKey(from, key, t.RequestNonce) {
		return false
	}
	// "Accepted" tells the sender it need not care any more: the key is
	// durable first.
	ctx, cancel := context.WithTimeout(g.ctx, gossip.StreamTimeout)
	defer cancel()
	return n.syncDisk(ctx) == nil
}

func (n *Node) keepOrphan(from peer.ID, key *keyring.Key) {
	n.mu.Lock()
	defer n.mu.Unlock()
	now := time.Now()
	n.orphans = slices.DeleteFunc(n.orphans, func(o orphanKey) bool { return now.Sub(o.received) > orphanKeyTTL })
	if len(n.orphans) >= maxOrphanKeys {
		n.orphans = n.orphans[1:]
	}
	n.orphans = append(n.orphans, orphanKey{from: from, key: key, received: now})
}

// adoptOrphanKeys checks the keys that arrived for g before it was joined.
func (n *Node) adoptOrphanKeys(g *Group) {
	n.mu.Lock()
	var mine []orphanKey
	n.orphans = slices.DeleteFunc(n.orphans, func(o orphanKey) bool {
		if o.key.Meta.Group == g.id {
			mine = append(mine, o)
			return true
		}
		return false
	})
	n.mu.Unlock()
	for _, o := range mine {
		g.acceptKey(o.from, o.key, nil)
	}
}

// acceptKey admits a key received from a peer. The key already matches its
// ID and names this node as a recipient. It is accepted only if its
// recipients are exactly the members of the roster state it names, its
// creator was a member there, and it either answers one of our requests or
// comes from a current member entitled to it.
func (g *Group) acceptKey(from peer.ID, k *keyring.Key, requestNonce []byte) bool {
	g.mu.Lock()
	if _, ok := g.ring.Get(k.ID()); ok {
		g.mu.Unlock()
		return true
	}
	known := g.roster.Knows(k.Meta.RosterHeads)
	g.mu.Unlock()
	if !known {
		// The key is for roster ops we have not seen; the sender has them.
		ctx, cancel := context.WithTimeout(g.ctx, gossip.StreamTimeout)
		ops, err := g.fetchRosterOps(ctx, from)
		cancel()
		if err != nil {
			return false
		}
		g.onOps("", ops)
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.ring.Get(k.ID()); ok {
		return true
	}
	if !g.keyEntitlementValidLocked(k) {
		return false
	}
	current := g.roster.State()
	solicited := g.answeredRequestLocked(k.ID(), requestNonce)
	entitledSender := k.Meta.IsRecipient(from)
	switch {
	case current.IsMember(from):
		if !(solicited || entitledSender) {
			return false
		}
	case !g.departedKeyLocked(from, k):
		return false
	}
	return g.takeKeyLocked(k)
}

// takeKeyLocked stores an accepted key and brings it into use: messages
// waiting for it are shown, and the sending key is looked at again.
func (g *Group) takeKeyLocked(k *keyring.Key) bool {
	if _, err := g.storeKeyLocked(k); err != nil {
		g.n.log.Warn("store key", "group", g.id.ShortString(), "err", err)
		return false
	}
	g.n.stats.keyTransfersAccepted.Add(1)
	g.keyArrivedLocked(k)
	g.noteSendingKeyLocked()
	return true
}

// requestMissingKeys runs once at start: messages stored while their key
// was missing (before a restart) wait for it again and it is asked for.
// It reads only the key IDs, so it is cheap even for long histories.
func (g *Group) requestMissingKeys() {
	defer g.wg.Done()
	var refs []struct {
		key keyring.ID
		ref msgRef
	}
	err := g.n.store.Messages(g.id, func(b []byte) error {
		if g.ctx.Err() != nil {
			return g.ctx.Err()
		}
		var rec wire.MessageRecord
		var env wire.Envelope
		if proto.Unmarshal(b, &rec) != nil || rec.Undecryptable || rec.Envelope == nil ||
			proto.Unmarshal(rec.Envelope.Body, &env) != nil || len(env.KeyId) != 32 {
			return nil
		}
		id := keyring.ID(env.KeyId)
		g.mu.Lock()
		_, held := g.ring.Get(id)
		g.mu.Unlock()
		if !held {
			refs = append(refs, struct {
				key keyring.ID
				ref msgRef
			}{id, msgRef{peer.ID(env.Sender), env.Seq}})
		}
		return nil
	})
	if err != nil || len(refs) == 0 {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, r := range refs {
		if _, held := g.ring.Get(r.key); held {
			continue
		}
		g.waiting[r.key] = append(g.waiting[r.key], r.ref)
		g.wantKeyLocked(r.key)
	}
}

// keyEntitlementValidLocked checks a key's metadata against the roster.
func (g *Group) keyEntitlementValidLocked(k *keyring.Key) bool {
	m := &k.Meta
	if !g.roster.Knows(m.RosterHeads) {
		return false
	}
	st, err := g.roster.StateAt(m.RosterHeads)
	if err != nil {
		return false
	}
	if !slices.Equal(st.MemberIDs(), m.Recipients) || !st.IsMember(m.Creator) {
		return false
	}
	if !m.DerivedFrom.IsZero() {
		// A derived key belongs to exactly one add op, made by its creator.
		op, ok := g.roster.Op(m.AddOp)
		if !ok || op.Kind != roster.KindAdd || op.Author != m.Creator ||
			len(m.RosterHeads) != 1 || m.RosterHeads[0] != m.AddOp ||
			keyring.ID(op.ParentKeyID) != m.DerivedFrom {
			return false
		}
	}
	return true
}

// keyArrivedLocked reacts to a key that just entered the ring: derive the
// keys of add ops that name it as parent, then decrypt and show the
// messages that waited for it (and for the keys derived from it).
func (g *Group) keyArrivedLocked(k *keyring.Key) {
	g.keyReqs.done(k.ID())
	close(g.keyCh) // wake senders waiting for a key
	g.keyCh = make(chan struct{})
	for _, op := range g.roster.Ops() {
		if op.Kind == roster.KindAdd && len(op.ParentKeyID) == 32 && keyring.ID(op.ParentKeyID) == k.ID() {
			if g.derivedForLocked(op.ID) == nil {
				g.deriveLocked(op)
			}
		}
	}
	refs := g.waiting[k.ID()]
	if len(refs) == 0 {
		return
	}
	delete(g.waiting, k.ID())
	slices.SortFunc(refs, func(a, b msgRef) int {
		if c := comparePeers(a.sender, b.sender); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	refs = slices.Compact(refs)
	// Loading and verifying them reads the disk: not under the lock.
	g.goTrackedLocked(func() { g.showArrived(refs) })
}

// showArrived shows the stored messages that were waiting for a key that
// has arrived, in sender and seq order: each is loaded and verified with no
// lock held, then decrypted under the lock. One still buffered for
// in-order delivery is replaced there, to be shown decrypted.
func (g *Group) showArrived(refs []msgRef) {
	for _, ref := range refs {
		e, rec, err := g.loadEnvelope(ref.sender, ref.seq)
		if err != nil {
			continue
		}
		received := time.UnixMilli(rec.ReceivedAtMs)
		g.mu.Lock()
		m := g.messageLocked(e, received)
		buffered := false
		if m != nil {
			if buf, ok := g.order.waiting(ref.sender, ref.seq); ok {
				*buf = *m // not shown yet: it will be shown decrypted
				buffered = true
			}
		}
		g.mu.Unlock()
		switch {
		case m == nil:
			g.markUndecryptable(e, received)
		case !buffered:
			g.n.events.publish(Event{Kind: EventMessageDecrypted, Group: g.id, Message: m})
		}
	}
}

// handleRosterRequest serves a group's roster to a current member.
func (n *Node) handleRosterRequest(from peer.ID, group [32]byte, known []roster.OpID) ([]*wire.Signed, bool) {
	g, ok := n.Group(roster.GroupID(group))
	if !ok || g.hasLeft() {
		return nil, false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	var ops []*roster.Op
	switch {
	case g.roster.IsMember(from):
		// What the member lacks: everything after the heads it named, or
		// everything when it named one we do not hold.
		ops, _ = g.roster.OpsAfter(known)
	case g.countedOutLocked(from):
		// A removed member (partitioned when it happened, say) learns its
		// removal: the ops that removed it and their causal past, nothing
		// that followed (§8.2).
		if ops = g.roster.RemovalHistory(from); len(ops) == 0 {
			return nil, false
		}
	default:
		return nil, false
	}
	out := make([]*wire.Signed, 0, len(ops))
	for _, op := range ops {
		out = append(out, op.Signed)
	}
	return out, true
}

// maxDepartedKeys bounds the keys kept per group from departed creators
// that no waiting message names yet.
const maxDepartedKeys = 16

// departedKeyLocked decides a key whose sender is no longer a member. It
// is taken, for reading only, when the sender made it itself while it was
// a member (keyEntitlementValidLocked checked that the state it names has
// the creator as a member and this node as a recipient) and a message of
// the sender under it waits here: a member that made a key in Send and
// was removed before the transfer arrived. Its recipients include the
// departed member, so the key never qualifies for sending (§5.4), and the
// sender rule (§4.5) still decides which of its messages count. A key
// that no waiting message names yet is kept, bounded, until one does; it
// is refused now.
func (g *Group) departedKeyLocked(from peer.ID, k *keyring.Key) bool {
	if k.Meta.Creator != from || !k.Meta.IsRecipient(g.n.self) || !g.roster.EverMember(from) {
		return false
	}
	for _, ref := range g.waiting[k.ID()] {
		if ref.sender == from {
			return true
		}
	}
	if _, ok := g.departedKeys[k.ID()]; !ok && len(g.departedKeys) < maxDepartedKeys {
		g.departedKeys[k.ID()] = k
	}
	return false
}

// takeDepartedKeyLocked accepts a kept departed creator's key once a
// message of that creator under it waits here.
func (g *Group) takeDepartedKeyLocked(sender peer.ID, id keyring.ID) {
	k, ok := g.departedKeys[id]
	if !ok || k.Meta.Creator != sender {
		return
	}
	delete(g.departedKeys, id)
	g.takeKeyLocked(k)
}
