package node

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// Issue #9: a removed member, with its own identity, its stored ops and
// keys and a modified node (the spy), tries to undo its removal, inject
// messages and stall the group. Every attack below was effective on the
// main before admission (docs/protocol.md §4.4, §4.5).

// addAs has admin add newcomer with role, and newcomer join through admin.
func addAs(t *testing.T, admin, newcomer *testNode, gid roster.GroupID, role roster.Role) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := admin.mustGroup(gid).Add(ctx, newcomer.ID(), role); err != nil {
		t.Fatalf("add: %v", err)
	}
	if _, err := newcomer.JoinGroup(ctx, gid, addrInfo(admin.Node)); err != nil {
		t.Fatalf("join: %v", err)
	}
}

func (n *testNode) rosterHeads(gid roster.GroupID) []roster.OpID {
	g := n.mustGroup(gid)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.roster.Heads()
}

func (n *testNode) hasOp(gid roster.GroupID, id roster.OpID) bool {
	g := n.mustGroup(gid)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.roster.Has(id) || g.roster.IsPending(id)
}

func membersOf(n *testNode, gid roster.GroupID) map[peer.ID]roster.Role {
	out := map[peer.ID]roster.Role{}
	for _, m := range n.mustGroup(gid).State().Members {
		out[m.ID] = m.Role
	}
	return out
}

// impersonate closes n's node and returns a spy with n's identity,
// connected to the others and subscribed to the group's topic.
func impersonate(t *testing.T, n *testNode, gid roster.GroupID, others []*testNode) *spy {
	t.Helper()
	priv := n.Node.priv
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	sp := newSpy(t, priv)
	sp.connect(others...)
	sp.listen(gid)
	eventually(t, 15*time.Second, "the impersonator is on the topic at every member", func() bool {
		for _, o := range others {
			if !slices.Contains(o.mustGroup(gid).Peers(), sp.host.ID()) {
				return false
			}
		}
		return true
	})
	return sp
}

// removeAndRekey has admin remove victim and waits until the remaining
// members send with one new key (none of not), which it returns.
func removeAndRekey(t *testing.T, admin *testNode, gid roster.GroupID, victim peer.ID, remaining []*testNode, not ...keyring.ID) keyring.ID {
	t.Helper()
	not = append(not, admin.mustGroup(gid).SendingKeyID())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := admin.mustGroup(gid).Remove(ctx, victim); err != nil {
		t.Fatal(err)
	}
	return waitSameSendingKey(t, remaining, gid, not...)
}

func publishOp(sp *spy, op *roster.Op) {
	sp.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_RosterOp{RosterOp: op.Signed}})
}

// TestRemovedAdminCannotUndoRemoval: founder X adds M, then R (admin),
// then A (admin). R notes its heads right after its own add. R is removed
// and the key rotates. R then publishes ONE op, "remove X", whose parents
// are the heads it noted (concurrent with X's add of A). Before admission
// every node resolved the members to X, M, R within ~20 ms and R read the
// messages that followed. Variants: the founder removes R itself; R had
// added a puppet P that was removed too, and both sign backdated ops.
func TestRemovedAdminCannotUndoRemoval(t *testing.T) {
	for _, tc := range []struct {
		name      string
		remover   int  // index of the remover: 0 = X (founder), 3 = A
		withAdmin bool // A is added after R noted its heads
		puppet    bool
	}{
		{name: "removed by another admin", remover: 3, withAdmin: true},
		{name: "removed by the founder", remover: 0, withAdmin: true},
		{name: "with a puppet", remover: 3, withAdmin: true, puppet: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := 4
			if tc.puppet {
				n = 5
			}
			nodes := newTestNodes(t, n)
			X, M, R, A := nodes[0], nodes[1], nodes[2], nodes[3]
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			g, err := X.CreateGroup(ctx, "finality")
			if err != nil {
				t.Fatal(err)
			}
			gid := g.ID()
			addAs(t, X, M, gid, roster.RoleMember)
			addAs(t, X, R, gid, roster.RoleAdmin)
			eventually(t, 10*time.Second, "R applied its own add", func() bool { return R.mustGroup(gid).State().IsMember(R.ID()) })
			noted := R.rosterHeads(gid)
			var P *testNode
			if tc.puppet {
				P = nodes[4]
				addAs(t, R, P, gid, roster.RoleAdmin)
			}
			addAs(t, X, A, gid, roster.RoleAdmin)
			waitMesh(t, nodes, gid)

			honest := []*testNode{X, M, A}
			oldKey := X.mustGroup(gid).SendingKeyID()
			remover := nodes[tc.remover].mustGroup(gid)
			if err := remover.Remove(ctx, R.ID()); err != nil {
				t.Fatal(err)
			}
			if tc.puppet {
				if err := remover.Remove(ctx, P.ID()); err != nil {
					t.Fatal(err)
				}
			}
			newKey := waitSameSendingKey(t, honest, gid, oldKey)
			rKeys := R.keys(gid)
			want := map[peer.ID]roster.Role{X.ID(): roster.RoleAdmin, M.ID(): roster.RoleMember, A.ID(): roster.RoleAdmin}
			for _, h := range honest {
				if got := membersOf(h, gid); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("before the attack: members %v", got)
				}
			}

			before := make([]uint64, len(honest))
			for i, h := range honest {
				before[i] = h.Stats().OpsRefused
			}
			attackers := []*spy{impersonate(t, R, gid, honest)}
			forged := []*roster.Op{must(roster.NewRemove(R.Node.priv, gid, noted, X.ID()))}
			if tc.puppet {
				pPriv := P.Node.priv
				pNoted := P.rosterHeads(gid)
				attackers = append(attackers, impersonate(t, P, gid, honest))
				// The puppet re-adds R and removes A, from a state before
				// the removals; R removes A too.
				forged = append(forged,
					must(roster.NewAdd(pPriv, gid, pNoted, R.ID(), roster.RoleAdmin, nil)),
					must(roster.NewRemove(pPriv, gid, pNoted, A.ID())),
					must(roster.NewRemove(R.Node.priv, gid, noted, A.ID())))
			}
			for i, op := range forged {
				publishOp(attackers[min(i, len(attackers)-1)%len(attackers)], op)
			}
			for i, h := range honest {
				eventually(t, 10*time.Second, "every honest member refused the forged ops", func() bool {
					return h.Stats().OpsRefused >= before[i]+uint64(len(forged))
				})
			}
			for _, h := range honest {
				for _, op := range forged {
					if h.hasOp(gid, op.ID) {
						t.Fatalf("%s holds the forged op %v", h.ID().ShortString(), op)
					}
				}
				if got := membersOf(h, gid); fmt.Sprint(got) != fmt.Sprint(want) {
					t.Fatalf("after the attack %s resolves members %v, want %v", h.ID().ShortString(), got, want)
				}
			}
			// The group carries on under the key R never got.
			m := X.send(gid, "after the attack")
			if m.KeyID != newKey {
				t.Fatalf("X sent with %s, not the post-removal key %s", m.KeyID.Short(), newKey.Short())
			}
			for _, h := range []*testNode{M, A} {
				eventually(t, 10*time.Second, "members read X's message", func() bool {
					return h.rec.readable(gid)[m.ID()] == "after the attack"
				})
			}
			eventually(t, 10*time.Second, "the attacker captured the ciphertext", func() bool {
				for _, e := range attackers[0].seen() {
					if e.Sender == X.ID() && e.Seq == m.Seq {
						return true
					}
				}
				return false
			})
			for _, e := range attackers[0].seen() {
				if e.Sender == X.ID() && e.Seq == m.Seq && canRead(e, rKeys) {
					t.Fatal("the removed admin read a message sent after its removal")
				}
			}
		})
	}
}

func must(op *roster.Op, err error) *roster.Op {
	if err != nil {
		panic(err)
	}
	return op
}

// TestRemovedMemberCannotInflateHeads: a removed plain member publishes 300
// branching ops. Before admission each was applied (its author had once
// been added), heads rose to ~140, the admin's next key named 88 heads and
// receivers refused it. Now every one is refused, the heads stay few, and
// the next removal's key reaches everyone.
func TestRemovedMemberCannotInflateHeads(t *testing.T) {
	nodes := newTestNodes(t, 4)
	X, M, P, N := nodes[0], nodes[1], nodes[2], nodes[3]
	gid := formGroup(t, nodes)
	old := P.rosterHeads(gid)
	oldKey := X.mustGroup(gid).SendingKeyID()
	honest := []*testNode{X, M, N}
	k1 := removeAndRekey(t, X, gid, P.ID(), honest)
	// Every op P may name: those it held when it was removed.
	var parents []roster.OpID
	{
		g := P.mustGroup(gid)
		g.mu.Lock()
		for _, op := range g.roster.Ops() {
			parents = append(parents, op.ID)
		}
		g.mu.Unlock()
	}
	pPriv := P.Node.priv
	before := X.Stats().OpsRefused
	sp := impersonate(t, P, gid, honest)
	const flood = 300
	var flooded []*roster.Op
	for i := range flood {
		ps := []roster.OpID{parents[i%len(parents)]}
		if i%3 == 0 {
			ps = old
		}
		// Every op distinct (a unique mark), each a new branch. A removal
		// of a member would be as refused; distinct ones are too few here.
		op := must(roster.NewAck(pPriv, gid, ps, []roster.Mark{{Peer: M.ID(), Seq: uint64(i)}}))
		if i < len(honest) {
			op = must(roster.NewRemove(pPriv, gid, old, honest[i].ID()))
		}
		flooded = append(flooded, op)
		publishOp(sp, op)
		if (i+1)%25 == 0 {
			// Pace the flood: the check below shows each part arrived
			// and was refused before the next is sent.
			eventually(t, 10*time.Second, "X refused this part of the flood", func() bool {
				return X.Stats().OpsRefused >= before+uint64(i+1)
			})
		}
	}
	eventually(t, 20*time.Second, "X refused the whole flood", func() bool {
		return X.Stats().OpsRefused >= before+flood
	})
	for _, h := range honest {
		for _, op := range flooded {
			if h.hasOp(gid, op.ID) {
				t.Fatalf("%s holds the removed member's op %v", h.ID().ShortString(), op)
			}
		}
		if n := len(h.rosterHeads(gid)); n > mergeHeadsAbove {
			t.Fatalf("%s holds %d roster heads after the flood", h.ID().ShortString(), n)
		}
	}
	// Ops that name the refused ones as parents wait as pending (their
	// parents are unknown), but a removed member's share is capped.
	for i := range flood {
		op := must(roster.NewAck(pPriv, gid, []roster.OpID{flooded[i].ID}, nil))
		publishOp(sp, op)
		if (i+1)%25 == 0 {
			time.Sleep(20 * time.Millisecond) // a flood, not a single burst
		}
	}
	eventually(t, 10*time.Second, "X holds the most pending ops a non-member may have", func() bool {
		g := X.mustGroup(gid)
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.roster.PendingBy(P.ID()) == maxPendingPerAuthor
	})
	// The next removal's key reaches every remaining member.
	k2 := removeAndRekey(t, X, gid, N.ID(), []*testNode{X, M}, oldKey, k1)
	m := M.send(gid, "still talking")
	if m.KeyID != k2 {
		t.Fatalf("M sent with %s, want %s", m.KeyID.Short(), k2.Short())
	}
	eventually(t, 10*time.Second, "X reads M", func() bool { return X.rec.readable(gid)[m.ID()] == "still talking" })
}

// TestRemovedMemberCannotInjectViaSync: a removed plain member answers the
// history syncs that members start with topic peers, serving envelopes it
// signed after its removal under an old key, naming its old roster state,
// with sent_at an hour in the past. Before, both remaining members stored
// and showed them as ok. Its messages from before the removal are
// delivered; the forged ones are refused on the sync path and on the topic.
func TestRemovedMemberCannotInjectViaSync(t *testing.T) {
	nodes := newTestNodes(t, 3)
	X, M, P := nodes[0], nodes[1], nodes[2]
	gid := formGroup(t, nodes)
	var legit []*Message
	for i := range 3 {
		legit = append(legit, P.send(gid, fmt.Sprintf("before removal %d", i)))
	}
	for _, h := range []*testNode{X, M} {
		eventually(t, 10*time.Second, "P's messages delivered", func() bool {
			r := h.rec.readable(gid)
			for _, m := range legit {
				if r[m.ID()] != m.Text {
					return false
				}
			}
			return true
		})
	}
	oldHeads := P.rosterHeads(gid)
	pKeys := P.keys(gid)
	pPriv := P.Node.priv
	last := legit[len(legit)-1]
	removeAndRekey(t, X, gid, P.ID(), []*testNode{X, M})
	// Both members' acks marked P's last message.
	for _, h := range []*testNode{X, M} {
		eventually(t, 10*time.Second, "P's departure marked by both members", func() bool {
			g := h.mustGroup(gid)
			g.mu.Lock()
			defer g.mu.Unlock()
			bound, ok := g.roster.MarkBound(P.ID())
			return ok && bound == last.Seq && g.roster.MarkedBy(X.ID(), P.ID()) && g.roster.MarkedBy(M.ID(), P.ID())
		})
	}

	var key *keyring.Key
	for _, k := range pKeys {
		if k.ID() == last.KeyID {
			key = k
		}
	}
	if key == nil {
		t.Fatal("P does not hold the key it sent with")
	}
	lastEnv := envelopesOf(t, X, gid, []*Message{last})[0]
	var forged []*wire.Signed
	var forgedEnvs []*gossip.Envelope
	hourAgo := time.Now().Add(-time.Hour).UnixMilli()
	for i := range 5 {
		e, err := gossip.SealEnvelopeFrom(rand.Reader, pPriv, key, last.Seq+1+uint64(i), lastEnv.KeyFirstSeq, oldHeads,
			&wire.Content{Text: fmt.Sprintf("injected %d", i), SentAtMs: hourAgo})
		if err != nil {
			t.Fatal(err)
		}
		forged = append(forged, e.Signed)
		forgedEnvs = append(forgedEnvs, e)
	}
	sp := impersonate(t, P, gid, []*testNode{X, M})
	sp.mu.Lock()
	sp.answerSync = func(peer.ID, *wire.SyncRequest) (*wire.SyncResponse, bool) {
		return &wire.SyncResponse{Envelopes: forged}, true
	}
	sp.mu.Unlock()
	for _, h := range []*testNode{X, M} {
		before := h.Stats().EnvelopesRefused
		h.mustGroup(gid).syncWith(sp.host.ID())
		eventually(t, 10*time.Second, "the sync's forged envelopes refused", func() bool {
			return h.Stats().EnvelopesRefused >= before+uint64(len(forged))
		})
	}
	// The same envelopes on the topic.
	before := X.Stats().EnvelopesRefused
	for _, e := range forgedEnvs {
		sp.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: e.Signed}})
	}
	eventually(t, 10*time.Second, "the topic's forged envelopes refused", func() bool {
		return X.Stats().EnvelopesRefused >= before+uint64(len(forged))
	})
	for _, h := range []*testNode{X, M} {
		hist, err := h.mustGroup(gid).History()
		if err != nil {
			t.Fatal(err)
		}
		ok := 0
		for _, m := range hist {
			if m.Sender != P.ID() {
				continue
			}
			if m.Seq > last.Seq {
				t.Fatalf("%s stored an envelope P signed after its removal: seq %d %q", h.ID().ShortString(), m.Seq, m.Text)
			}
			if m.Status == StatusOK {
				ok++
			}
		}
		if ok != len(legit) {
			t.Fatalf("%s shows %d of P's %d messages from before its removal", h.ID().ShortString(), ok, len(legit))
		}
	}
}

// TestResolutionStaysBounded: a removed member floods the group with a
// chain of 1000 leave ops and 1000 backdated acks. Before admission each
// applied op re-resolved the whole roster (a 10,000-op chain delayed a
// message 30.9 s). Now no op of the flood is applied, the roster does not
// grow, at most maxPendingPerAuthor wait as pending, and members keep
// talking while it arrives. (Its CPU cost per op is measured by
// BenchmarkRefuseRemovedFlood in roster/, not asserted here.)
func TestResolutionStaysBounded(t *testing.T) {
	nodes := newTestNodes(t, 3)
	X, M, P := nodes[0], nodes[1], nodes[2]
	gid := formGroup(t, nodes)
	oldHeads := P.rosterHeads(gid)
	removeAndRekey(t, X, gid, P.ID(), []*testNode{X, M})
	pPriv := P.Node.priv
	sp := impersonate(t, P, gid, []*testNode{X, M})
	lenBefore := func(n *testNode) int {
		g := n.mustGroup(gid)
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.roster.Len()
	}
	xLen, mLen := lenBefore(X), lenBefore(M)
	refusedBefore := X.Stats().OpsRefused
	const chain, backdated = 1000, 1000
	prev := oldHeads
	var talk []*Message
	for i := range chain + backdated {
		var op *roster.Op
		if i < chain {
			op = must(roster.NewLeave(pPriv, gid, prev))
			prev = []roster.OpID{op.ID}
		} else {
			op = must(roster.NewAck(pPriv, gid, oldHeads, []roster.Mark{{Peer: X.ID(), Seq: uint64(i)}}))
		}
		publishOp(sp, op)
		if (i+1)%25 == 0 {
			time.Sleep(10 * time.Millisecond) // a flood, not a single burst
		}
		if (i+1)%250 == 0 {
			talk = append(talk, X.send(gid, fmt.Sprintf("during the flood %d", i)))
		}
	}
	eventually(t, 20*time.Second, "X refused the first of the chain and every backdated ack", func() bool {
		return X.Stats().OpsRefused >= refusedBefore+1+backdated
	})
	for _, m := range talk {
		eventually(t, 20*time.Second, "M reads X during the flood", func() bool { return M.rec.readable(gid)[m.ID()] == m.Text })
	}
	for _, n := range []*testNode{X, M} {
		g := n.mustGroup(gid)
		g.mu.Lock()
		l, pend := g.roster.Len(), g.roster.PendingBy(P.ID())
		g.mu.Unlock()
		want := xLen
		if n == M {
			want = mLen
		}
		// Acks merge heads, so honest ops may be added meanwhile; none of P's.
		if l < want {
			t.Fatalf("roster shrank")
		}
		g.mu.Lock()
		byP := 0
		for _, op := range g.roster.Ops() {
			if op.Author == P.ID() && (op.Kind == roster.KindLeave || op.Kind == roster.KindAck) {
				byP++
			}
		}
		g.mu.Unlock()
		if byP != 0 {
			t.Fatalf("%s applied %d ops of the flood", n.ID().ShortString(), byP)
		}
		if pend > maxPendingPerAuthor {
			t.Fatalf("%s holds %d pending ops of the removed member", n.ID().ShortString(), pend)
		}
	}
}

// TestMemberHeadsMergedBeforeKey: a current member (a modified node) makes
// 120 branching ops. They are applied — it is a member — but the honest
// members merge the heads with acks, so the key the admin makes at the
// next removal names at most 64 heads and every remaining member takes it.
func TestMemberHeadsMergedBeforeKey(t *testing.T) {
	nodes := newTestNodes(t, 4)
	X, M, C, N := nodes[0], nodes[1], nodes[2], nodes[3]
	gid := formGroup(t, nodes)
	// The ops C may name: those with its own add in their closure.
	var parents []roster.OpID
	{
		g := C.mustGroup(gid)
		g.mu.Lock()
		var addC roster.OpID
		for _, op := range g.roster.Ops() {
			if op.Kind == roster.KindAdd && op.Member == C.ID() {
				addC = op.ID
			}
		}
		for _, op := range g.roster.Ops() {
			if g.roster.Descends([]roster.OpID{op.ID}, []roster.OpID{addC}) {
				parents = append(parents, op.ID)
			}
		}
		g.mu.Unlock()
	}
	cPriv := C.Node.priv
	sp := impersonate(t, C, gid, []*testNode{X, M, N})
	const branches = 120
	var made []*roster.Op
	for i := range branches {
		op := must(roster.NewAck(cPriv, gid, []roster.OpID{parents[i%len(parents)]}, []roster.Mark{{Peer: X.ID(), Seq: uint64(i)}}))
		made = append(made, op)
		publishOp(sp, op)
	}
	eventually(t, 20*time.Second, "every branch applied at X", func() bool {
		for _, op := range made {
			if !X.hasOp(gid, op.ID) {
				return false
			}
		}
		return true
	})
	t.Logf("X holds %d roster heads before the removal", len(X.rosterHeads(gid)))
	k := removeAndRekey(t, X, gid, N.ID(), []*testNode{X, M})
	for _, key := range X.keys(gid) {
		if key.ID() == k && len(key.Meta.RosterHeads) > gossip.MaxRosterHeads {
			t.Fatalf("the key names %d roster heads", len(key.Meta.RosterHeads))
		}
	}
	m := M.send(gid, "after the branches")
	eventually(t, 10*time.Second, "X reads M", func() bool { return X.rec.readable(gid)[m.ID()] == m.Text })
}
