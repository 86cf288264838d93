package roster

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestAdmissionRefusesRemovedAuthors extends the convergence test with
// Byzantine authors. A simulated group is fully synced and every member
// acknowledges what it holds (as nodes do after each change). Then every
// removed member (a peer with an effective removal, not a member now)
// signs a burst of arbitrary ops — adds of
// anyone as admin, removes of anyone, leaves and acks — whose parents it
// picks anywhere it may name: backdated to just after its own add, recent,
// or its own and other attackers' forgeries. Delivered one by one to a
// replica that holds the group (as gossip would), or mixed with the whole
// honest history in one batch in random order to a fresh replica (as a
// roster fetch served by an attacker would), no forged op is applied, and
// the membership, roles and heads are those of the honest history.
func TestAdmissionRefusesRemovedAuthors(t *testing.T) {
	seed := *convergenceSeed
	if seed == 0 {
		seed = rand.Uint64()
	}
	var stats simStats
	attackers, forgedTotal := 0, 0
	for n := range 300 {
		rng := rand.New(rand.NewPCG(seed+uint64(n), 0x61646d))
		s := genDAG(t, rng, &stats, 0)
		// The honest history: what admission lets in, in authoring order
		// (the generator also authors ops that a node would refuse), and
		// then an ack by every member, as nodes make after a change.
		ref, err := New(s.create)
		if err != nil {
			t.Fatal(err)
		}
		ref.Admit(s.all)
		if len(ref.State().Members) == 0 {
			continue // nobody left to protect or to acknowledge
		}
		heads := ref.Heads()
		for _, m := range ref.State().Members {
			ack, err := NewAck(testPrivs[idIndex[m.ID]], ref.ID(), heads, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := ref.Insert(ack); err != nil {
				t.Fatal(err)
			}
		}
		honest := ref.Ops()[1:]
		want := ref.State()

		var forged []*Op
		for x := range numTestKeys {
			p := testIDs[x]
			if ref.IsMember(p) || !effectivelyRemoved(ref, p) {
				continue
			}
			attackers++
			var allowed []OpID
			for _, op := range ref.Ops() {
				if authorizedUnder(ref, p, op.ID) {
					allowed = append(allowed, op.ID)
				}
			}
			for range 12 {
				parents := map[OpID]struct{}{}
				for range 1 + rng.IntN(3) {
					parents[allowed[rng.IntN(len(allowed))]] = struct{}{}
				}
				if len(forged) > 0 && rng.IntN(3) == 0 {
					parents[forged[rng.IntN(len(forged))].ID] = struct{}{}
				}
				ps := slices.Collect(maps.Keys(parents))
				victim := testIDs[rng.IntN(numTestKeys)]
				var op *Op
				switch k := rng.IntN(4); {
				case k == 0 && victim != p:
					op, err = NewAdd(testPrivs[x], ref.ID(), ps, victim, RoleAdmin, nil)
				case k == 1 && victim != p:
					op, err = NewRemove(testPrivs[x], ref.ID(), ps, victim)
				case k == 2:
					op, err = NewLeave(testPrivs[x], ref.ID(), ps)
				default:
					op, err = NewAck(testPrivs[x], ref.ID(), ps, nil)
				}
				if err != nil {
					t.Fatal(err)
				}
				if ref.Has(op.ID) {
					continue // signatures are deterministic: this op is history
				}
				forged = append(forged, op)
			}
		}
		forgedTotal += len(forged)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Errorf("DAG %d seed %d: %s", n, seed+uint64(n), fmt.Sprintf(format, args...))
		}
		check := func(name string, r *Roster, forged []*Op) {
			t.Helper()
			if got := r.State(); !equalStates(got, want) {
				fail("%s: state\n got %s\nwant %s", name, stateString(got), stateString(want))
			}
			// A forgery that names a refused forgery waits as pending (its
			// parent is unknown); the node bounds pending ops per author.
			for _, op := range forged {
				if r.Has(op.ID) {
					fail("%s: forged %v was applied", name, op)
				}
			}
		}

		// Gossip: the replica holds the group; forgeries arrive one by one.
		gossip, err := New(s.create)
		if err != nil {
			t.Fatal(err)
		}
		gossip.Admit(honest)
		if got := gossip.State(); !equalStates(got, want) {
			fail("replaying the honest history: state\n got %s\nwant %s", stateString(got), stateString(want))
			for _, op := range honest {
				if !gossip.Has(op.ID) {
					t.Logf("not applied: %v pending=%v", op, gossip.IsPending(op.ID))
				}
			}
			t.FailNow()
		}
		order := slices.Clone(forged)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		refused := 0
		for _, op := range order {
			if _, k := gossip.Admit([]*Op{op}); k > 0 {
				refused++
			}
		}
		waiting := 0
		for _, op := range forged {
			if gossip.IsPending(op.ID) {
				waiting++
			}
		}
		if refused+waiting != len(forged) {
			fail("gossip: %d forgeries refused and %d waiting, of %d", refused, waiting, len(forged))
		}
		check("gossip", gossip, forged)

		// A roster fetch served by an attacker to a replica that holds the
		// history: everything again plus the forgeries, in one batch, in
		// any order. (A replica that has not applied the removal yet is the
		// window docs/protocol.md §4.4 leaves open: it judges the removed
		// member as a member, whatever path the op takes.)
		for rep := range 2 {
			late, err := New(s.create)
			if err != nil {
				t.Fatal(err)
			}
			late.Admit(honest)
			batch := append(slices.Clone(honest), forged...)
			rng.Shuffle(len(batch), func(i, j int) { batch[i], batch[j] = batch[j], batch[i] })
			if a, _ := late.Admit(batch); len(a) != 0 {
				fail("fetch %d: %d ops applied from a batch of known and forged ops", rep, len(a))
			}
			check(fmt.Sprintf("fetch %d", rep), late, forged)
		}
		if t.Failed() {
			t.Fatalf("reproduce with -roster.seed=%d", seed)
		}
	}
	t.Logf("seed %d: %d attackers signed %d ops; none applied", seed, attackers, forgedTotal)
	if attackers < 200 || forgedTotal < 2000 {
		t.Errorf("too few attacks exercised: %d attackers, %d ops", attackers, forgedTotal)
	}
}

// TestAdmissionKeepsNeededAncestors: an op by a removed member that a
// current member's op names (it was applied somewhere before the removal
// arrived there) is applied after all, when the member's op needs it.
func TestAdmissionKeepsNeededAncestors(t *testing.T) {
	alice, bob, carol := testPrivs[0], testPrivs[1], testPrivs[2]
	create, err := NewCreate(alice, "g", make([]byte, NonceLen))
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	check(err)
	r, err := New(create)
	check(err)
	must := func(op *Op, err error) *Op { t.Helper(); check(err); return op }
	addB := must(NewAdd(alice, create.ID, []OpID{create.ID}, testIDs[1], RoleAdmin, nil))
	addC := must(NewAdd(alice, create.ID, []OpID{addB.ID}, testIDs[2], RoleMember, nil))
	r.Admit([]*Op{addB, addC})
	// Bob, not yet knowing, adds dave while alice removes bob.
	addD := must(NewAdd(bob, create.ID, []OpID{addC.ID}, testIDs[3], RoleMember, nil))
	remB := must(NewRemove(alice, create.ID, []OpID{addC.ID}, testIDs[1]))
	if a, k := r.Admit([]*Op{remB}); len(a) != 1 || k != 0 {
		t.Fatalf("removal: applied %d refused %d", len(a), k)
	}
	// Bob's op arrives after his removal: refused, not remembered.
	if a, k := r.Admit([]*Op{addD}); len(a) != 0 || k != 1 || r.Has(addD.ID) {
		t.Fatalf("late op of a removed member: applied %d refused %d", len(a), k)
	}
	// Carol had applied it first and built on it: her ack needs it.
	ackC := must(NewAck(carol, create.ID, []OpID{addD.ID, addC.ID}, nil))
	if _, k := r.Admit([]*Op{ackC}); k != 0 || !r.IsPending(ackC.ID) {
		t.Fatalf("member's op naming an unknown parent should wait (refused %d)", k)
	}
	a, k := r.Admit([]*Op{addD})
	if k != 0 || len(a) != 2 || !r.Has(addD.ID) || !r.Has(ackC.ID) {
		t.Fatalf("needed ancestor: applied %d refused %d", len(a), k)
	}
	// It is in the DAG, and strong removal gives it no effect.
	if r.Effective(addD.ID) || r.IsMember(testIDs[3]) || r.IsMember(testIDs[1]) {
		t.Fatalf("members %s", stateString(r.State()))
	}
	if _, err := r.Insert(addD); err != nil {
		t.Fatalf("re-insert of an applied op: %v", err)
	}
}

// authorizedUnder reports whether an op by p naming id as a parent passes
// admission's first check: p is the founder or an add of p is in id's
// closure.
func authorizedUnder(r *Roster, p peer.ID, id OpID) bool {
	if p == r.Founder() {
		return true
	}
	n := r.byID[id]
	for _, a := range r.addsOf[p] {
		if a == n.idx || n.anc.has(a) {
			return true
		}
	}
	return false
}

// effectivelyRemoved reports whether an effective remove of p, or p's
// effective leave, is in r.
func effectivelyRemoved(r *Roster, p peer.ID) bool {
	for _, i := range r.remsOf[p] {
		if r.Effective(r.nodes[i].op.ID) {
			return true
		}
	}
	return false
}
