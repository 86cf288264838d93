package roster

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

var convergenceSeed = flag.Uint64("roster.seed", 0, "seed for TestRosterConvergence (0: time-based)")

const (
	convergenceDAGs  = 1000
	deliveryReplicas = 3 // fresh replicas, each fed its own shuffled order
	minOps, maxOps   = 15, 60
)

type simStats struct {
	ops, rejected, ineffective, mutual, cycles, readds, pendingSeen int
}

// sim is one simulated group: a few authoring replicas with partial views.
type sim struct {
	t        testing.TB
	rng      *rand.Rand
	create   *Op
	replicas []*Roster
	all      []*Op // every op authored, in authoring order
	rejected map[OpID]bool
	removed  map[peer.ID]bool // ever the target of an authored remove/leave
	stats    *simStats
	founder  int
	gentle   bool // benchmark mode: the founder is never removed and never leaves
}

func (s *sim) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf(format, args...)
}

// author inserts a freshly authored op into replica ri and records it.
func (s *sim) must(op *Op, err error) *Op {
	s.t.Helper()
	if err != nil {
		s.fatalf("author: %v", err)
	}
	return op
}

func (s *sim) author(ri int, op *Op) *Op {
	s.t.Helper()
	s.all = append(s.all, op)
	s.stats.ops++
	if _, err := s.replicas[ri].Insert(op); err != nil {
		if !errors.Is(err, ErrNotAuthorized) {
			s.fatalf("insert authored op %v: %v", op, err)
		}
		s.rejected[op.ID] = true
		s.stats.rejected++
	}
	return op
}

// sync copies a random subset (or all) of src's applied ops to dst, in a
// random order. Ops whose parents did not come along wait as pending.
func (s *sim) sync(dst, src int, all bool) {
	ops := s.replicas[src].Ops()
	s.rng.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
	for _, op := range ops {
		if !all && s.rng.IntN(3) == 0 {
			continue
		}
		if _, err := s.replicas[dst].Insert(op); err != nil {
			s.fatalf("sync insert %v: %v", op, err)
		}
	}
	if s.replicas[dst].PendingCount() > 0 {
		s.stats.pendingSeen++
	}
}

func (s *sim) admins(ri int) []int {
	st := s.replicas[ri].State()
	var out []int
	for _, m := range st.Members {
		if m.Role == RoleAdmin {
			out = append(out, idIndex[m.ID])
		}
	}
	slices.Sort(out)
	return out
}

func (s *sim) members(ri int) []int {
	st := s.replicas[ri].State()
	out := make([]int, 0, len(st.Members))
	for _, m := range st.Members {
		out = append(out, idIndex[m.ID])
	}
	slices.Sort(out)
	return out
}

func (s *sim) randomRole() Role {
	if s.rng.IntN(3) == 0 {
		return RoleMember
	}
	return RoleAdmin
}

// step authors one ordinary op from replica ri's local view.
func (s *sim) step(ri int) {
	r := s.replicas[ri]
	heads := r.Heads()
	st := r.State()
	members := s.members(ri)
	var who int
	if len(members) == 0 || s.rng.IntN(10) == 0 {
		who = s.rng.IntN(numTestKeys) // maybe a non-member, maybe never a member
	} else {
		who = members[s.rng.IntN(len(members))]
	}
	// pick returns another peer: a current member with probability pm
	// (when there is one), otherwise preferably a non-member.
	pick := func(pm int) int {
		var in, out []int
		for x := range numTestKeys {
			if x == who {
				continue
			}
			if st.IsMember(testIDs[x]) {
				in = append(in, x)
			} else {
				out = append(out, x)
			}
		}
		if len(in) > 0 && (len(out) == 0 || s.rng.IntN(100) < pm) {
			return in[s.rng.IntN(len(in))]
		}
		return out[s.rng.IntN(len(out))]
	}
	add := func() {
		target := pick(30)
		if s.removed[testIDs[target]] {
			s.stats.readds++
		}
		s.author(ri, s.must(NewAdd(testPrivs[who], r.ID(), heads, testIDs[target], s.randomRole(), nil)))
	}
	remove := func() {
		target := pick(85)
		if s.gentle && target == s.founder {
			return
		}
		s.removed[testIDs[target]] = true
		s.author(ri, s.must(NewRemove(testPrivs[who], r.ID(), heads, testIDs[target])))
	}
	leave := func() {
		if s.gentle && who == s.founder {
			return
		}
		s.removed[testIDs[who]] = true
		s.author(ri, s.must(NewLeave(testPrivs[who], r.ID(), heads)))
	}
	if s.rng.IntN(10) == 0 {
		// An ack: no membership effect, but it merges heads and is an op of
		// its author like any other (filtered with them, too).
		s.author(ri, s.must(NewAck(testPrivs[who], r.ID(), heads, nil)))
		return
	}
	p := s.rng.IntN(100)
	if role, _ := st.RoleOf(testIDs[who]); role == RoleAdmin {
		switch {
		case p < 55:
			add()
		case p < 90:
			remove()
		default:
			leave()
		}
		return
	}
	// A member or non-member: leaves, and attempts that have no effect.
	switch {
	case p < 40:
		leave()
	case p < 70:
		add()
	default:
		remove()
	}
}

// mutualRemoval: two replicas with the same view each have one admin
// remove the other, concurrently.
func (s *sim) mutualRemoval() {
	i, j := s.rng.IntN(len(s.replicas)), s.rng.IntN(len(s.replicas)-1)
	if j >= i {
		j++
	}
	s.sync(j, i, true)
	s.sync(i, j, true)
	admins := s.admins(i)
	if len(admins) < 2 {
		return
	}
	s.rng.Shuffle(len(admins), func(x, y int) { admins[x], admins[y] = admins[y], admins[x] })
	a, b := admins[0], admins[1]
	ri, rj := s.replicas[i], s.replicas[j]
	hi, hj := ri.Heads(), rj.Heads()
	s.author(i, s.must(NewRemove(testPrivs[a], ri.ID(), hi, testIDs[b])))
	s.author(j, s.must(NewRemove(testPrivs[b], rj.ID(), hj, testIDs[a])))
	s.removed[testIDs[a]], s.removed[testIDs[b]] = true, true
	s.stats.mutual++
}

// removalCycle: k admins (k = 3 when possible) remove each other around a
// cycle, each on its own replica from the same view.
func (s *sim) removalCycle() {
	n := len(s.replicas)
	for i := 1; i < n; i++ {
		s.sync(0, i, true)
	}
	for i := 1; i < n; i++ {
		s.sync(i, 0, true)
	}
	admins := s.admins(0)
	k := min(n, len(admins), 3+s.rng.IntN(2))
	if k < 3 {
		return
	}
	s.rng.Shuffle(len(admins), func(x, y int) { admins[x], admins[y] = admins[y], admins[x] })
	heads := s.replicas[0].Heads()
	for c := range k {
		a, b := admins[c], admins[(c+1)%k]
		s.author(c, s.must(NewRemove(testPrivs[a], s.replicas[c].ID(), heads, testIDs[b])))
		s.removed[testIDs[b]] = true
	}
	s.stats.cycles++
}

// genDAG simulates one group and returns its create op and all ops.
// size 0 picks a random size in [minOps, maxOps].
func genDAG(t testing.TB, rng *rand.Rand, stats *simStats, size int) *sim {
	founder := rng.IntN(numTestKeys)
	nonce := make([]byte, NonceLen)
	for i := range nonce {
		nonce[i] = byte(rng.Uint32())
	}
	create, err := NewCreate(testPrivs[founder], "sim", nonce)
	if err != nil {
		t.Fatal(err)
	}
	s := &sim{t: t, rng: rng, create: create, rejected: map[OpID]bool{}, removed: map[peer.ID]bool{}, stats: stats,
		founder: founder, gentle: size > 0}
	nrep := 3 + rng.IntN(2)
	for range nrep {
		r, err := New(create)
		if err != nil {
			t.Fatal(err)
		}
		s.replicas = append(s.replicas, r)
	}
	// Bootstrap: the founder adds 5..8 others, mostly admins.
	others := rng.Perm(numTestKeys)
	nadd := 5 + rng.IntN(4)
	for _, x := range others {
		if nadd == 0 {
			break
		}
		if x == founder {
			continue
		}
		nadd--
		s.author(0, s.must(NewAdd(testPrivs[founder], create.ID, s.replicas[0].Heads(), testIDs[x], s.randomRole(), nil)))
	}
	for i := 1; i < nrep; i++ {
		s.sync(i, 0, true)
	}
	target := size
	if target == 0 {
		target = minOps + rng.IntN(maxOps-minOps+1)
	}
	for len(s.all) < target {
		switch p := rng.IntN(100); {
		case p < 25 || (size > 0 && p < 60):
			i, j := rng.IntN(nrep), rng.IntN(nrep)
			if i != j {
				s.sync(i, j, size > 0 || rng.IntN(2) == 0)
			}
		case p < 28 && size == 0:
			s.mutualRemoval()
		case p < 30 && (size == 0 || p == 29):
			s.removalCycle()
		default:
			s.step(rng.IntN(nrep))
		}
	}
	return s
}

// closureOf returns the causal closure of heads, following parents.
func closureOf(r *Roster, heads []OpID) []*Op {
	seen := map[OpID]bool{}
	var out []*Op
	stack := slices.Clone(heads)
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if seen[id] {
			continue
		}
		seen[id] = true
		op, _ := r.Op(id)
		out = append(out, op)
		stack = append(stack, op.Parents...)
	}
	return out
}

func stateString(st *State) string {
	s := fmt.Sprintf("size=%d heads=%d digest=%x members=[", st.Size, len(st.Heads), st.Digest[:4])
	for _, m := range st.Members {
		s += fmt.Sprintf(" %s:%s", nameOf(m.ID), m.Role)
	}
	return s + " ]"
}

func equalStates(a, b *State) bool {
	return a.Digest == b.Digest && a.Size == b.Size && slices.Equal(a.Heads, b.Heads) && slices.Equal(a.Members, b.Members)
}

func TestRosterConvergence(t *testing.T) {
	seed := *convergenceSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reproduce with: go test -run TestRosterConvergence ./roster -args -roster.seed=%d", seed)
		}
	})
	start := time.Now()
	// Shards run in parallel (they share only the read-only test keys).
	const shards = 4
	var shardStats [shards]simStats
	t.Run("shards", func(t *testing.T) {
		for k := range shards {
			t.Run(fmt.Sprint(k), func(t *testing.T) {
				t.Parallel()
				stats := &shardStats[k]
				for n := k; n < convergenceDAGs; n += shards {
					dagSeed := seed + uint64(n)
					rng := rand.New(rand.NewPCG(dagSeed, 0x726f73746572))
					s := genDAG(t, rng, stats, 0)
					checkConvergence(t, rng, s, stats, n, dagSeed)
					if t.Failed() {
						t.Fatalf("DAG %d (seed %d) diverged; reproduce with -roster.seed=%d", n, dagSeed, seed)
					}
				}
			})
		}
	})
	var stats simStats
	for _, s := range shardStats {
		stats.ops += s.ops
		stats.rejected += s.rejected
		stats.ineffective += s.ineffective
		stats.mutual += s.mutual
		stats.cycles += s.cycles
		stats.readds += s.readds
		stats.pendingSeen += s.pendingSeen
	}
	t.Logf("seed %d: %d DAGs, %d ops (%d rejected, %d ineffective), %d mutual removals, %d removal cycles, %d re-adds, %d syncs left pending ops, %v",
		seed, convergenceDAGs, stats.ops, stats.rejected, stats.ineffective, stats.mutual, stats.cycles, stats.readds, stats.pendingSeen, time.Since(start))
	// The generator must actually exercise the interesting cases.
	if stats.rejected == 0 || stats.ineffective < convergenceDAGs || stats.mutual < convergenceDAGs/10 ||
		stats.cycles < convergenceDAGs/20 || stats.readds < convergenceDAGs/10 || stats.pendingSeen < convergenceDAGs/10 {
		t.Errorf("generator too tame: %+v", stats)
	}
}

func checkConvergence(t *testing.T, rng *rand.Rand, s *sim, stats *simStats, n int, seed uint64) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Errorf("DAG %d seed %d: %s", n, seed, fmt.Sprintf(format, args...))
	}
	// Reference: all ops in authoring order (parents first).
	ref, err := New(s.create)
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range s.all {
		_, err := ref.Insert(op)
		if s.rejected[op.ID] != errors.Is(err, ErrNotAuthorized) || (err != nil && !errors.Is(err, ErrNotAuthorized)) {
			fail("reference insert %v: %v (rejected when authored: %v)", op, err, s.rejected[op.ID])
			return
		}
	}
	if ref.PendingCount() != 0 || len(ref.Missing()) != 0 {
		fail("reference has pending ops")
	}
	refState := ref.State()
	refOps := opIDs(ref.Ops())
	refHeads := ref.Heads()
	for _, id := range refOps {
		if !ref.Effective(id) {
			stats.ineffective++
		}
	}
	// Ops() is topological.
	pos := map[OpID]int{}
	for i, op := range ref.Ops() {
		for _, p := range op.Parents {
			if _, ok := pos[p]; !ok {
				fail("Ops(): %v before its parent", op)
			}
		}
		pos[op.ID] = i
	}
	if refState.Size != len(refOps) || !slices.Equal(refState.Heads, refHeads) {
		fail("reference state size/heads inconsistent")
	}
	checkOracle(t, ref, fail)

	// Fresh replicas, each fed every op (and the create again) in its own
	// random order: children often before parents.
	deliver := append([]*Op{s.create}, s.all...)
	for rep := range deliveryReplicas {
		order := slices.Clone(deliver)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		if rep == 0 {
			slices.Reverse(order[1:]) // one fully reversed-ish delivery
		}
		r, err := New(s.create)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range order {
			if _, err := r.Insert(op); err != nil && !errors.Is(err, ErrNotAuthorized) {
				fail("replica %d insert %v: %v", rep, op, err)
			} else if err != nil && !s.rejected[op.ID] {
				fail("replica %d rejected %v which the author's replica accepted", rep, op)
			}
			if rep == 1 && rng.IntN(8) == 0 {
				_ = r.State() // exercise cache invalidation mid-stream
			}
		}
		st := r.State()
		if r.PendingCount() != 0 || len(r.Missing()) != 0 {
			fail("replica %d: %d pending, missing %v", rep, r.PendingCount(), r.Missing())
		}
		if !equalStates(st, refState) {
			fail("replica %d state\n got %s\nwant %s", rep, stateString(st), stateString(refState))
		}
		if !slices.Equal(r.Heads(), refHeads) {
			fail("replica %d heads differ", rep)
		}
		if !slices.Equal(opIDs(r.Ops()), refOps) {
			fail("replica %d Ops() order differs", rep)
		}
		for _, op := range deliver {
			if r.Has(op.ID) != ref.Has(op.ID) || r.Effective(op.ID) != ref.Effective(op.ID) {
				fail("replica %d: op %v has=%v/%v effective=%v/%v", rep, op,
					r.Has(op.ID), ref.Has(op.ID), r.Effective(op.ID), ref.Effective(op.ID))
			}
		}
	}

	// The authoring replicas converge too once fully synced.
	for i := 1; i < len(s.replicas); i++ {
		s.sync(0, i, true)
	}
	if !equalStates(s.replicas[0].State(), refState) {
		fail("authoring replica after full sync\n got %s\nwant %s", stateString(s.replicas[0].State()), stateString(refState))
	}

	// StateAt over a random subset's closure equals a roster built from
	// exactly that closure.
	for range 2 {
		k := 1 + rng.IntN(3)
		heads := make([]OpID, k)
		for i := range heads {
			heads[i] = refOps[rng.IntN(len(refOps))]
		}
		at, err := ref.StateAt(heads)
		if err != nil {
			fail("StateAt: %v", err)
			continue
		}
		cl := closureOf(ref, heads)
		rng.Shuffle(len(cl), func(i, j int) { cl[i], cl[j] = cl[j], cl[i] })
		fresh, err := New(s.create)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range cl {
			if _, err := fresh.Insert(op); err != nil {
				fail("closure insert: %v", err)
			}
		}
		if fresh.PendingCount() != 0 {
			fail("closure not closed")
		}
		if fs := fresh.State(); !equalStates(at, fs) {
			fail("StateAt(%d heads)\n got %s\nwant %s", k, stateString(at), stateString(fs))
		}
		if !ref.Descends(refHeads, heads) || !ref.Descends(heads, at.Heads) || !ref.Descends(at.Heads, heads) {
			fail("Descends inconsistent with StateAt heads")
		}
	}
}

// checkOracle compares r with the naive transcription of the rules.
func checkOracle(t *testing.T, r *Roster, fail func(string, ...any)) {
	t.Helper()
	o := newOracle(r.Ops())
	if !slices.Equal(o.order, opIDs(r.Ops())) {
		fail("Ops() order differs from the oracle's")
	}
	eff, members := o.resolve()
	for _, op := range r.Ops() {
		if r.Effective(op.ID) != eff[op.ID] {
			fail("Effective(%v) = %v, oracle says %v", op, r.Effective(op.ID), eff[op.ID])
		}
	}
	st := r.State()
	got := map[peer.ID]Role{}
	for _, m := range st.Members {
		got[m.ID] = m.Role
	}
	if fmt.Sprint(got) != fmt.Sprint(members) {
		fail("members %s, oracle says %v", stateString(st), members)
	}
}

// BenchmarkResolve measures a full resolution of a simulated 2000-op group.
func BenchmarkResolve(b *testing.B) {
	var stats simStats
	s := genDAG(b, rand.New(rand.NewPCG(1, 2)), &stats, 2000)
	r, err := New(s.create)
	if err != nil {
		b.Fatal(err)
	}
	for _, op := range s.all {
		_, _ = r.Insert(op)
	}
	b.Logf("%d ops applied, %d members", r.Len(), len(r.State().Members))
	b.ResetTimer()
	for b.Loop() {
		r.res = nil
		_ = r.State()
	}
}
