package node

// Membership: Add, Remove and Leave, roster ops from peers (admission,
// pending caps), roster fetches (never from a peer counted out), and what a
// roster change sets off (events, acks, rotation, leaving the topic).

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/store"
	"github.com/p2pchat/p2pchat/wire"
)

// Add admits p with role. The new member gets the next epoch key, derived
// from the current one so it cannot read what was sent before it joined.
func (g *Group) Add(ctx context.Context, p peer.ID, role roster.Role) error {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	if _, _, err := g.n.verifier.PeerKey([]byte(p)); err != nil {
		return fmt.Errorf("add %s: %w", p, err)
	}
	g.mu.Lock()
	if err := g.requireAdminLocked(); err != nil {
		g.mu.Unlock()
		return err
	}
	st := g.roster.State()
	if r, ok := st.RoleOf(p); ok && r == role {
		g.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrAlreadyMember, p.String())
	}
	var parentID []byte
	if k := g.sendingKeyLocked(); k != nil {
		id := k.ID()
		parentID = id[:]
	}
	op, err := roster.NewAdd(g.n.priv, g.id, capHeads(g.roster.Heads(), roster.MaxParents), p, role, parentID)
	if err != nil {
		g.mu.Unlock()
		return err
	}
	if err := g.applyLocalLocked(op); err != nil {
		g.mu.Unlock()
		return err
	}
	derived := g.derivedForLocked(op.ID)
	var rotated *keyring.Key
	if derived == nil && g.sendingKeyLocked() == nil {
		if rotated, err = g.rotateLocked(); err != nil {
			g.mu.Unlock()
			return err
		}
	}
	g.mu.Unlock()

	// Our op is durable before any peer sees it.
	if err := g.n.syncDisk(ctx); err != nil {
		return err
	}
	g.publishOp(ctx, op)
	switch {
	case rotated != nil:
		g.emitRotated(rotated)
		g.distribute(rotated, nil)
	case derived != nil:
		g.distribute(derived, []peer.ID{p})
	}
	return nil
}

// Remove removes p from the group and rotates the key at once: the new key
// goes to every remaining member and never to p.
func (g *Group) Remove(ctx context.Context, p peer.ID) error {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	g.mu.Lock()
	if err := g.requireAdminLocked(); err != nil {
		g.mu.Unlock()
		return err
	}
	if p == g.n.self {
		g.mu.Unlock()
		return errors.New("use Leave to leave a group")
	}
	if !g.roster.IsMember(p) {
		g.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotMember, p.String())
	}
	op, err := roster.NewRemove(g.n.priv, g.id, capHeads(g.roster.Heads(), roster.MaxParents), p)
	if err != nil {
		g.mu.Unlock()
		return err
	}
	if err := g.applyLocalLocked(op); err != nil {
		g.mu.Unlock()
		return err
	}
	k, err := g.rotateLocked()
	g.mu.Unlock()
	if err != nil {
		return err
	}
	// The op and the new key are durable before any peer sees them.
	if err := g.n.syncDisk(ctx); err != nil {
		return err
	}
	g.publishOp(ctx, op)
	g.emitRotated(k)
	g.distribute(k, nil)
	return nil
}

// Leave removes this node from the group. Its keys and history stay, read-only.
func (g *Group) Leave(ctx context.Context) error {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	g.mu.Lock()
	if g.left || !g.roster.IsMember(g.n.self) {
		g.mu.Unlock()
		return fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	op, err := roster.NewLeave(g.n.priv, g.id, capHeads(g.roster.Heads(), roster.MaxParents))
	t := g.topic
	g.mu.Unlock()
	if err != nil {
		return err
	}
	// Publish before applying: applying our own departure closes the topic.
	g.publishOpOn(ctx, t, op)
	g.mu.Lock()
	err = g.applyLocalLocked(op)
	g.mu.Unlock()
	if err != nil {
		return err
	}
	return g.n.syncDisk(ctx)
}

func (g *Group) requireAdminLocked() error {
	if g.left {
		return fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	role, ok := g.roster.RoleOf(g.n.self)
	if !ok {
		return fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	if role != roster.RoleAdmin {
		return fmt.Errorf("%w of group %s", ErrNotAdmin, g.id.ShortString())
	}
	return nil
}

// applyLocalLocked inserts an op this node authored.
func (g *Group) applyLocalLocked(op *roster.Op) error {
	applied, err := g.roster.Insert(op)
	if err != nil {
		return err
	}
	return g.appliedLocked(applied)
}

func (g *Group) publishOp(ctx context.Context, op *roster.Op) {
	g.mu.Lock()
	t := g.topic
	g.mu.Unlock()
	g.publishOpOn(ctx, t, op)
}

func (g *Group) publishOpOn(ctx context.Context, t *gossip.Topic, op *roster.Op) {
	if t == nil {
		return
	}
	if err := t.Publish(ctx, &wire.TopicMessage{Payload: &wire.TopicMessage_RosterOp{RosterOp: op.Signed}}); err != nil {
		g.n.log.Warn("publish roster op failed", "group", g.id.ShortString(), "err", err)
	}
}

// appliedLocked persists newly applied roster ops and reacts to the change.
func (g *Group) appliedLocked(applied []*roster.Op) error {
	if len(applied) == 0 {
		return nil
	}
	ws := make([]store.Write, len(applied))
	for i, op := range applied {
		ws[i] = store.OpWrite(g.id, op.ID, op.Marshal())
	}
	g.n.disk.put(ws...)
	for _, op := range applied {
		if op.Kind == roster.KindAdd && len(op.ParentKeyID) == 32 {
			g.deriveLocked(op)
		}
	}
	g.rosterChangedLocked()
	return nil
}

// rosterChangedLocked reports membership changes, notices this node's own
// departure, and arranges a rotation when the roster shrank and nobody
// holds a qualifying key yet.
func (g *Group) rosterChangedLocked() {
	st := g.roster.State()
	now := st.MemberIDs()
	var added, removed []peer.ID
	for _, p := range now {
		if _, ok := slices.BinarySearch(g.members, p); !ok {
			added = append(added, p)
		}
	}
	for _, p := range g.members {
		if _, ok := slices.BinarySearch(now, p); !ok {
			removed = append(removed, p)
		}
	}
	g.members = now
	if len(added)+len(removed) > 0 {
		g.n.events.publish(Event{Kind: EventRoster, Group: g.id, Members: slices.Clone(st.Members), Added: added, Removed: removed})
	}
	if len(added) > 0 {
		g.n.rememberAddrsSoon()
	}
	if !st.IsMember(g.n.self) {
		if !g.left {
			g.left = true
			if err := g.persistRecord(); err != nil {
				g.n.log.Warn("persist group record", "group", g.id.ShortString(), "err", err)
			}
			g.n.events.publish(Event{Kind: EventGroupLeft, Group: g.id})
			if g.topic != nil && !g.stopped {
				// Closing the topic waits for the reader (which may be the
				// caller) and for pubsub's event loop: do it elsewhere.
				g.wg.Add(1)
				go func() {
					defer g.wg.Done()
					g.closeTopic()
				}()
			}
		}
		return
	}
	g.scheduleAckLocked(removed)
	g.recheckHeldLocked()
	if len(removed) > 0 && g.sendingKeyLocked() == nil {
		if wait, ok := g.rotationDelayLocked(st); ok {
			g.rotateAt = time.Now().Add(wait)
			g.nudge()
		}
	}
	g.noteSendingKeyLocked()
}

// onOps inserts verified roster ops; ops whose parents are missing wait
// and trigger a roster fetch from the peer that sent them.
func (g *Group) onOps(from peer.ID, ops []*roster.Op) {
	g.mu.Lock()
	batch := ops[:0:0]
	for _, op := range ops {
		if !g.roster.Knows(op.Parents) && (g.roster.PendingCount() >= maxPendingOps ||
			(!g.roster.IsMember(op.Author) && g.roster.PendingBy(op.Author) >= maxPendingPerAuthor)) {
			// A flood of ops with invented parents (or naming ops refused
			// as a removed member's): a later sync brings real ones. A
			// non-member's share is capped so it cannot crowd out a new
			// member's ops that arrived before its add.
			continue
		}
		batch = append(batch, op)
	}
	// Admit refuses the ops of a member this node has counted out (§4.4):
	// a removed member's ops, backdated or not, add nothing here.
	applied, refused := g.roster.Admit(batch)
	if refused > 0 {
		g.n.stats.opsRefused.Add(uint64(refused))
		g.n.log.Debug("roster ops of removed members refused", "group", g.id.ShortString(), "count", refused)
	}
	if err := g.appliedLocked(applied); err != nil {
		g.n.log.Warn("apply roster ops", "group", g.id.ShortString(), "err", err)
	}
	missing := g.roster.PendingCount() > 0
	g.mu.Unlock()
	if missing && from != "" {
		g.fetchRoster(from)
	}
}

// fetchRoster asks from for the whole roster, once at a time per peer.
func (g *Group) fetchRoster(from peer.ID) {
	g.mu.Lock()
	if g.fetching[from] || from == g.n.self || from == "" || g.countedOutLocked(from) {
		g.mu.Unlock()
		return
	}
	g.fetching[from] = true
	g.mu.Unlock()
	g.goTracked(func() {
		defer func() {
			g.mu.Lock()
			delete(g.fetching, from)
			g.mu.Unlock()
		}()
		ops, err := g.fetchRosterOps(g.ctx, from)
		if err != nil {
			g.n.log.Debug("roster fetch failed", "peer", from.ShortString(), "err", err)
			return
		}
		g.onOps("", ops)
	})
}

// countedOutLocked reports whether the current state has counted p out
// (some add of it is effective, and it is not a member). No roster is
// fetched from such a peer, in the background or at the start of a sync: a
// removed member would serve its own forgeries (§4.4, §8.2). A peer the
// roster has not named yet may be a newcomer whose add is what we lack.
func (g *Group) countedOutLocked(p peer.ID) bool {
	return g.roster.EverMember(p) && !g.roster.IsMember(p)
}

func (g *Group) countedOut(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.countedOutLocked(p)
}

// errCountedOut refuses a roster fetch from a peer the current state has
// counted out: a removed member would serve its forgeries (§4.4, §8.2).
var errCountedOut = errors.New("no roster fetch from a peer that is no longer a member")

// fetchRosterOps fetches and decodes a peer's roster. It is the one way
// the node fetches a roster, so the rule that no fetch goes to a peer the
// current state has counted out holds on every path (topic, sync, key
// transfer).
func (g *Group) fetchRosterOps(ctx context.Context, from peer.ID) ([]*roster.Op, error) {
	if g.countedOut(from) {
		return nil, errCountedOut
	}
	g.mu.Lock()
	known := g.roster.Heads()
	g.mu.Unlock()
	signed, err := g.n.streams.FetchRoster(ctx, from, g.id, known)
	if err != nil {
		return nil, err
	}
	// Ops we already hold are skipped before their signatures are checked:
	// a roster sync with every joining peer must not re-verify the DAG.
	g.mu.Lock()
	fresh := signed[:0]
	for _, s := range signed {
		if s != nil && !g.roster.Has(roster.IDOf(s.Body)) {
			fresh = append(fresh, s)
		}
	}
	g.mu.Unlock()
	ops := make([]*roster.Op, 0, len(fresh))
	for _, s := range fresh {
		op, err := roster.Decode(g.n.verifier, s)
		if err != nil {
			return nil, err
		}
		if op.Group != g.id || op.Kind == roster.KindCreate {
			continue
		}
		ops = append(ops, op)
	}
	return ops, nil
}
