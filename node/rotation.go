package node

// Keys of our own: which key to send with, rotation, epoch keys derived
// for joiners, and pushing keys pairwise to the members entitled to them.

import (
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/store"
	"github.com/p2pchat/p2pchat/wire"
)

// offerKey pushes our sending key to a member that just appeared on the
// topic, if it is entitled to it and we are the key's creator or the holder
// ranked first for it: a member that joined after its adder's push failed
// gets its key without asking, at the cost of one or two transfers.
func (g *Group) offerKey(p peer.ID) {
	g.mu.Lock()
	k := g.sendingKeyLocked()
	if k == nil || !k.Meta.IsRecipient(p) || !g.roster.IsMember(p) {
		g.mu.Unlock()
		return
	}
	var holders []peer.ID
	for _, r := range k.Meta.Recipients {
		if r != p && g.roster.IsMember(r) {
			holders = append(holders, r)
		}
	}
	g.mu.Unlock()
	req := &gossip.KeyRequest{Nonce: append(k.Meta.KeyID[:], p...)} // rank holders per key and peer
	if k.Meta.Creator == g.n.self || answersRequest(g.n.self, holders, req, 1) {
		g.sendKeyTo(k, []peer.ID{p}, nil)
	}
}

// height orders roster states for the sending-key rule, and rules out
// states that do not follow every removal in the current roster: a key made
// before a shrink is never sent with again, even when its recipients happen
// to equal today's members (the architecture's rule; it also makes the
// key a member sends with change visibly on every departure).
func (g *Group) height(heads []roster.OpID) (int, bool) {
	if !g.roster.Knows(heads) {
		return 0, false
	}
	if removals := g.removalsLocked(); len(removals) > 0 && !g.roster.Descends(heads, removals) {
		return 0, false
	}
	st, err := g.roster.StateAt(heads)
	if err != nil {
		return 0, false
	}
	return st.Size, true
}

// removalsLocked returns the effective remove and leave ops of the current
// roster, cached per roster size.
func (g *Group) removalsLocked() []roster.OpID {
	if g.removalsAt == g.roster.Len() && g.removals != nil {
		return g.removals
	}
	ops := g.roster.Ops()
	g.removals = g.removals[:0]
	for _, op := range ops {
		if (op.Kind == roster.KindRemove || op.Kind == roster.KindLeave) && g.roster.Effective(op.ID) {
			g.removals = append(g.removals, op.ID)
		}
	}
	if g.removals == nil {
		g.removals = []roster.OpID{}
	}
	g.removalsAt = g.roster.Len()
	return g.removals
}

// sendingKeyLocked returns the key to send with, cached until the roster
// or the ring changes (both only grow, so their sizes identify a version).
func (g *Group) sendingKeyLocked() *keyring.Key {
	at := [2]int{g.roster.Len(), g.ring.Len()}
	if g.sendKeyCacheValid && g.sendKeyCacheAt == at {
		return g.sendKeyCache
	}
	g.sendKeyCache = g.ring.SendingKey(g.roster.State().MemberIDs(), g.height)
	g.sendKeyCacheAt, g.sendKeyCacheValid = at, true
	return g.sendKeyCache
}

// loadKeys reads the group's keys. A record that does not verify is
// skipped and logged, not fatal: one bad record must not keep the node
// from starting. requestMissingKeys then asks for the keys of stored
// messages that none of the loaded keys opens.
func (g *Group) loadKeys() error {
	return g.n.store.Keys(g.id, func(b []byte) error {
		var rec wire.KeyRecord
		if err := proto.Unmarshal(b, &rec); err != nil {
			g.n.log.Warn("skipping unreadable key record", "group", g.id.ShortString(), "err", err)
			return nil
		}
		meta, err := keyring.MetaFromWire(g.n.verifier, rec.Meta)
		if err != nil {
			g.n.log.Warn("skipping key record with bad metadata", "group", g.id.ShortString(), "err", err)
			return nil
		}
		k, err := keyring.FromSecret(rec.Secret, meta)
		if err != nil {
			g.n.log.Warn("skipping key record that does not match its id", "group", g.id.ShortString(), "key_id", meta.KeyID.Short())
			return nil
		}
		g.ring.Add(k)
		return nil
	})
}

// storeKeyLocked writes a key to disk, then adds it to the ring: a key is
// durable before anything is encrypted or decrypted with it.
func (g *Group) storeKeyLocked(k *keyring.Key) (bool, error) {
	if _, ok := g.ring.Get(k.ID()); ok {
		return false, nil
	}
	b, err := proto.Marshal(&wire.KeyRecord{Secret: k.Secret(), Meta: k.Meta.ToWire()})
	if err != nil {
		return false, err
	}
	// Handed to the writer, not written under the lock: whoever needs the
	// key durable (Send before sealing under it, the answer to a key
	// transfer) syncs after unlocking.
	g.n.disk.put(store.KeyWrite(g.id, k.ID(), b))
	return g.ring.Add(k), nil
}

// deriveLocked computes the epoch key of an add op from its parent key,
// when this node holds the parent and is entitled to the result.
func (g *Group) deriveLocked(op *roster.Op) *keyring.Key {
	parent, ok := g.ring.Get(keyring.ID(op.ParentKeyID))
	if !ok || !g.roster.Effective(op.ID) {
		return nil
	}
	st, err := g.roster.StateAt([]roster.OpID{op.ID})
	if err != nil || !st.IsMember(g.n.self) {
		return nil
	}
	k, err := keyring.Derive(parent, op.ID, op.Author, st.MemberIDs())
	if err != nil {
		return nil
	}
	if _, err := g.storeKeyLocked(k); err != nil {
		g.n.log.Warn("store derived key", "group", g.id.ShortString(), "err", err)
		return nil
	}
	g.keyArrivedLocked(k)
	return k
}

// derivedForLocked returns the key derived for add op id, if held.
func (g *Group) derivedForLocked(id roster.OpID) *keyring.Key {
	for _, k := range g.ring.Keys() {
		if k.Meta.AddOp == id && !k.Meta.DerivedFrom.IsZero() {
			return k
		}
	}
	return nil
}

// rotationDelayLocked is how long this node waits, after a shrink it did
// not cause, for a qualifying key before it makes one itself: any remaining
// member takes over, in turn. The member at rank r (by peer ID among the
// current members, admins or not) waits RotationGrace·(r+1), so the first
// that is alive rotates and the others get its key before their turn comes;
// a remover that died mid-rotation (or the only admin) leaves no group
// without a key.
//
// The wait starts after AckDelay, and the timer makes the key only once
// this node's ack of the departure is applied: the key is then made for a
// roster state strictly above the removal, higher than any key the remover
// made on the removal alone and may still bring back after a crash, so the
// sending-key rule (§5.4) keeps the key the remaining members converged
// on rather than switching everyone to the remover's on a tie of heights.
func (g *Group) rotationDelayLocked(st *roster.State) (time.Duration, bool) {
	for r, m := range st.Members {
		if m.ID == g.n.self {
			return g.n.params.AckDelay + g.n.params.RotationGrace*time.Duration(r+1), true
		}
	}
	return 0, false
}

// noteSendingKeyLocked emits EventKeyRotated when the sending key changed.
func (g *Group) noteSendingKeyLocked() {
	k := g.sendingKeyLocked()
	if k == nil || k.ID() == g.sendKey {
		return
	}
	g.sendKey = k.ID()
	g.n.events.publish(Event{Kind: EventKeyRotated, Group: g.id, KeyID: k.ID()})
}

// rotateLocked generates a key for the current roster state and stores it.
// The caller distributes it.
func (g *Group) rotateLocked() (*keyring.Key, error) {
	g.mergeHeadsLocked()
	st := g.roster.State()
	k, err := keyring.Generate(g.n.rand, g.id, g.n.self, st.Heads, st.MemberIDs())
	if err != nil {
		return nil, err
	}
	if _, err := g.storeKeyLocked(k); err != nil {
		return nil, err
	}
	g.rotateAt = time.Time{}
	g.n.stats.keysGenerated.Add(1)
	g.n.log.Debug("rotated", "group", g.id.ShortString(), "key", k)
	return k, nil
}

func (g *Group) emitRotated(k *keyring.Key) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.keyArrivedLocked(k)
	g.noteSendingKeyLocked()
}

// signedMetaLocked returns this node's signature over k's metadata.
func (g *Group) signedMetaLocked(k *keyring.Key) (*wire.Signed, error) {
	if s, ok := g.signedMeta[k.ID()]; ok {
		return s, nil
	}
	s, err := gossip.SignKeyMeta(g.n.priv, &k.Meta)
	if err != nil {
		return nil, err
	}
	g.signedMeta[k.ID()] = s
	return s, nil
}

// distribute sends k pairwise to each of to (default: every recipient but
// this node), in parallel, in the background. It never sends to a peer the
// key's metadata does not entitle.
func (g *Group) distribute(k *keyring.Key, to []peer.ID) {
	g.sendKeyTo(k, to, nil)
}

// maxParallelTransfers bounds concurrent key-transfer streams.
const maxParallelTransfers = 32

func (g *Group) sendKeyTo(k *keyring.Key, to []peer.ID, requestNonce []byte) {
	if to == nil {
		to = k.Meta.Recipients
	}
	g.mu.Lock()
	meta, err := g.signedMetaLocked(k)
	g.mu.Unlock()
	if err != nil {
		g.n.log.Warn("sign key metadata", "err", err)
		return
	}
	t := &wire.KeyTransfer{Key: k.Secret(), Meta: meta, RequestNonce: requestNonce}
	g.mu.Lock()
	for _, h := range k.Meta.RosterHeads {
		if op, ok := g.roster.Op(h); ok && len(t.RosterOps) < roster.MaxParents {
			t.RosterOps = append(t.RosterOps, op.Signed)
		}
	}
	g.mu.Unlock()
	sem := make(chan struct{}, maxParallelTransfers)
	for _, p := range to {
		if p == g.n.self || !k.Meta.IsRecipient(p) {
			continue
		}
		g.goTracked(func() {
			select {
			case sem <- struct{}{}:
			case <-g.ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := g.n.streams.SendKey(g.ctx, p, t); err != nil {
				g.n.log.Debug("key transfer failed", "peer", p.ShortString(), "key", k, "err", err)
				return
			}
			g.n.stats.keyTransfersSent.Add(1)
		})
	}
}
