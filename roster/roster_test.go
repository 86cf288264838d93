package roster

import (
	"slices"
	"testing"
)

const (
	M = RoleMember
	A = RoleAdmin
)

func TestCreate(t *testing.T) {
	d := newDAG(t, alice)
	c := d.ops["c"]
	if d.r.ID() != c.ID || c.Group != c.ID {
		t.Fatalf("group id %s, create %s, create.Group %s", d.r.ID(), c.ID, c.Group)
	}
	if d.r.Name() != "test group" || d.r.Founder() != testIDs[alice] {
		t.Fatalf("name %q founder %s", d.r.Name(), d.r.Founder())
	}
	st := d.r.State()
	wantMembers(t, st, map[int]Role{alice: A})
	if !sameIDs(st.Heads, []OpID{c.ID}) || st.Size != 1 {
		t.Fatalf("heads %v size %d", st.Heads, st.Size)
	}
	if !d.r.Has(c.ID) || !d.r.Effective(c.ID) || d.r.Len() != 1 {
		t.Fatal("create op not applied/effective")
	}
	if _, err := New(d.mk("a", KindAdd, alice, bob, M, "c")); err == nil {
		t.Fatal("New accepted a non-create op")
	}
	if _, err := New(&Op{Kind: KindCreate}); err == nil {
		t.Fatal("New accepted an unverified op")
	}
}

func TestRules(t *testing.T) {
	type step struct {
		name          string
		kind          Kind
		author, who   int
		role          Role
		parents       []string
		wantEffective bool
	}
	tests := []struct {
		name  string
		steps []step
		want  map[int]Role
	}{
		{
			name: "founder adds member and admin",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
			},
			want: map[int]Role{alice: A, bob: M, carol: A},
		},
		{
			name: "added admin can add and remove",
			steps: []step{
				{"a1", KindAdd, alice, carol, A, []string{"c"}, true},
				{"a2", KindAdd, carol, bob, M, []string{"a1"}, true},
				{"r1", KindRemove, carol, bob, 0, []string{"a2"}, true},
				{"r2", KindRemove, carol, alice, 0, []string{"r1"}, true},
			},
			want: map[int]Role{carol: A},
		},
		{
			name: "member cannot add",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"a2", KindAdd, bob, carol, M, []string{"a1"}, false},
			},
			want: map[int]Role{alice: A, bob: M},
		},
		{
			name: "member cannot remove",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"r1", KindRemove, bob, alice, 0, []string{"a1"}, false},
			},
			want: map[int]Role{alice: A, bob: M},
		},
		{
			name: "remove of a non-member has no effect",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a1"}, true},
				{"r2", KindRemove, alice, bob, 0, []string{"r1"}, false},
			},
			want: map[int]Role{alice: A},
		},
		{
			name: "member leaves",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"l1", KindLeave, bob, 0, 0, []string{"a1"}, true},
				{"l2", KindLeave, bob, 0, 0, []string{"l1"}, false},
			},
			want: map[int]Role{alice: A},
		},
		{
			name: "founder leaves",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"l1", KindLeave, alice, 0, 0, []string{"a1"}, true},
			},
			want: map[int]Role{bob: A},
		},
		{
			name: "removed member's later ops have no effect",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a1"}, true},
				{"a2", KindAdd, bob, carol, M, []string{"r1"}, false},
				{"l1", KindLeave, bob, 0, 0, []string{"a2"}, false},
			},
			want: map[int]Role{alice: A},
		},
		{
			name: "role change by re-add",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"a2", KindAdd, alice, bob, A, []string{"a1"}, true},
				{"a3", KindAdd, bob, carol, M, []string{"a2"}, true},
				{"a4", KindAdd, alice, bob, M, []string{"a3"}, true},
				{"a5", KindAdd, bob, dave, M, []string{"a4"}, false},
			},
			want: map[int]Role{alice: A, bob: M, carol: M},
		},
		{
			name: "same-role re-add is effective and changes nothing",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"a2", KindAdd, alice, bob, M, []string{"a1"}, true},
			},
			want: map[int]Role{alice: A, bob: M},
		},
		{
			name: "concurrent adds with different roles: lower role wins",
			steps: []step{
				{"a0", KindAdd, alice, carol, A, []string{"c"}, true},
				{"a1", KindAdd, alice, bob, A, []string{"a0"}, true},
				{"a2", KindAdd, carol, bob, M, []string{"a0"}, true},
			},
			want: map[int]Role{alice: A, bob: M, carol: A},
		},
		{
			name: "re-add after removal",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a1"}, true},
				{"a2", KindAdd, alice, bob, A, []string{"r1"}, true},
			},
			want: map[int]Role{alice: A, bob: A},
		},
		{
			name: "re-add after leave",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"l1", KindLeave, bob, 0, 0, []string{"a1"}, true},
				{"a2", KindAdd, alice, bob, M, []string{"l1"}, true},
			},
			want: map[int]Role{alice: A, bob: M},
		},
		{
			name: "re-add concurrent with removal is invalid",
			steps: []step{
				{"a0", KindAdd, alice, carol, A, []string{"c"}, true},
				{"a1", KindAdd, alice, bob, M, []string{"a0"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a1"}, true},
				{"a2", KindAdd, carol, bob, A, []string{"a1"}, true}, // ∥ r1
			},
			want: map[int]Role{alice: A, carol: A},
		},
		{
			name: "add concurrent with leave is invalid",
			steps: []step{
				{"a0", KindAdd, alice, carol, A, []string{"c"}, true},
				{"a1", KindAdd, alice, bob, M, []string{"a0"}, true},
				{"l1", KindLeave, bob, 0, 0, []string{"a1"}, true},
				{"a2", KindAdd, carol, bob, A, []string{"a1"}, true}, // ∥ l1
			},
			want: map[int]Role{alice: A, carol: A},
		},
		{
			name: "re-add after both concurrent removal and add",
			steps: []step{
				{"a0", KindAdd, alice, carol, A, []string{"c"}, true},
				{"a1", KindAdd, alice, bob, M, []string{"a0"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a1"}, true},
				{"a2", KindAdd, carol, bob, A, []string{"a1"}, true},
				{"a3", KindAdd, alice, bob, M, []string{"r1", "a2"}, true},
			},
			want: map[int]Role{alice: A, bob: M, carol: A},
		},
		{
			name: "concurrent add by concurrently removed admin is filtered, transitively",
			steps: []step{
				{"a0", KindAdd, alice, carol, A, []string{"c"}, true},
				{"r1", KindRemove, alice, carol, 0, []string{"a0"}, true},
				{"a1", KindAdd, carol, dave, A, []string{"a0"}, false}, // ∥ r1
				{"a2", KindAdd, dave, erin, M, []string{"a1"}, false},  // dave's later op
				{"l1", KindLeave, dave, 0, 0, []string{"a2"}, false},
				{"a3", KindAdd, alice, bob, M, []string{"r1", "l1"}, true}, // merge
			},
			want: map[int]Role{alice: A, bob: M},
		},
		{
			name: "removed member's concurrent leave is not needed and filters nothing",
			steps: []step{
				{"a0", KindAdd, alice, carol, A, []string{"c"}, true},
				{"a1", KindAdd, alice, bob, M, []string{"a0"}, true},
				{"l1", KindLeave, carol, 0, 0, []string{"a1"}, true},
				{"a2", KindAdd, carol, dave, M, []string{"a1"}, true}, // ∥ l1: a leave does not filter
			},
			want: map[int]Role{alice: A, bob: M, dave: M},
		},
		{
			name: "mutual removal removes both",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
				{"r1", KindRemove, bob, carol, 0, []string{"a2"}, true},
				{"r2", KindRemove, carol, bob, 0, []string{"a2"}, true},
			},
			want: map[int]Role{alice: A},
		},
		{
			name: "mutual removal of the founder",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a1"}, true},
				{"r2", KindRemove, bob, alice, 0, []string{"a1"}, true},
			},
			want: map[int]Role{},
		},
		{
			name: "three-cycle removes all three",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
				{"a3", KindAdd, alice, dave, A, []string{"a2"}, true},
				{"r1", KindRemove, bob, carol, 0, []string{"a3"}, true},
				{"r2", KindRemove, carol, dave, 0, []string{"a3"}, true},
				{"r3", KindRemove, dave, bob, 0, []string{"a3"}, true},
			},
			want: map[int]Role{alice: A},
		},
		{
			name: "removed member's concurrent remove of a third party has no effect",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, M, []string{"a1"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a2"}, true},
				{"r2", KindRemove, bob, carol, 0, []string{"a2"}, false}, // ∥ r1, no cycle
			},
			want: map[int]Role{alice: A, carol: M},
		},
		{
			name: "removal chain is not a cycle",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
				{"a3", KindAdd, alice, dave, M, []string{"a2"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a3"}, true},
				{"r2", KindRemove, bob, carol, 0, []string{"a3"}, false},
				{"r3", KindRemove, carol, dave, 0, []string{"a3"}, false},
			},
			// r2 is filtered (bob removed concurrently), so carol stays an
			// admin. In the first round r2 was effective and filtered r3,
			// and the filter set only grows (§4.3): dave stays. Fewer
			// changes, never more, is what a duel of three costs.
			want: map[int]Role{alice: A, carol: A, dave: M},
		},
		{
			name: "a removal lost in a duel can be made again",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
				{"a3", KindAdd, alice, dave, M, []string{"a2"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a3"}, true},
				{"r2", KindRemove, bob, carol, 0, []string{"a3"}, false},
				{"r3", KindRemove, carol, dave, 0, []string{"a3"}, false},
				{"r4", KindRemove, carol, dave, 0, []string{"r1", "r2", "r3"}, true},
			},
			want: map[int]Role{alice: A, carol: A},
		},
		{
			name: "filtered remover restores its target",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a2"}, true},
				{"r2", KindRemove, bob, carol, 0, []string{"a2"}, false},
				{"a3", KindAdd, carol, dave, M, []string{"r2"}, true}, // carol acts after bob's void removal
			},
			want: map[int]Role{alice: A, carol: A, dave: M},
		},
		{
			name: "an old removal does not make a cycle",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
				{"a3", KindAdd, alice, dave, A, []string{"a2"}, true},
				{"r0", KindRemove, alice, dave, 0, []string{"a3"}, true},
				{"a4", KindAdd, carol, dave, A, []string{"r0"}, true}, // dave is back
				{"r1", KindRemove, dave, bob, 0, []string{"a4"}, true},
				{"r2", KindRemove, bob, alice, 0, []string{"a4"}, false}, // ∥ r1
			},
			// alice→dave (r0) is in r2's past, undone by a4: dave→bob→alice
			// is no removal cycle, so bob's removal concurrent with his own
			// is filtered and alice stays.
			want: map[int]Role{alice: A, carol: A, dave: A},
		},
		{
			// Issue #9's attack, without admission: carol, removed by
			// dave, signs a removal of alice backdated to just after her
			// own add. Strong removal alone hands her the duel (r2
			// filters alice's add of dave in the first round, so dave's
			// removal of carol is void); only admission (§4.4) stops it.
			name: "backdated removal wins the duel without admission",
			steps: []step{
				{"a1", KindAdd, alice, bob, M, []string{"c"}, true},
				{"a2", KindAdd, alice, carol, A, []string{"a1"}, true},
				{"a3", KindAdd, alice, dave, A, []string{"a2"}, false},
				{"r1", KindRemove, dave, carol, 0, []string{"a3"}, false},
				{"r2", KindRemove, carol, alice, 0, []string{"a2"}, false},
			},
			want: map[int]Role{alice: A, bob: M, carol: A},
		},
		{
			name: "removal causally after an op does not filter it",
			steps: []step{
				{"a1", KindAdd, alice, bob, A, []string{"c"}, true},
				{"a2", KindAdd, bob, carol, M, []string{"a1"}, true},
				{"r1", KindRemove, alice, bob, 0, []string{"a2"}, true},
			},
			want: map[int]Role{alice: A, carol: M},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := newDAG(t, alice)
			for _, s := range tc.steps {
				op := d.mk(s.name, s.kind, s.author, s.who, s.role, s.parents...)
				applied, err := d.r.Insert(op)
				if err != nil || len(applied) != 1 || applied[0] != op {
					t.Fatalf("insert %s: %v, %v", s.name, applied, err)
				}
			}
			wantMembers(t, d.r.State(), tc.want)
			checkOracle(t, d.r, func(f string, args ...any) { t.Helper(); t.Errorf(f, args...) })
			for _, s := range tc.steps {
				if got := d.r.Effective(d.ops[s.name].ID); got != s.wantEffective {
					t.Errorf("Effective(%s) = %v, want %v", s.name, got, s.wantEffective)
				}
			}
			// The same ops in reverse order converge.
			r2, err := New(d.ops["c"])
			if err != nil {
				t.Fatal(err)
			}
			for i := len(tc.steps) - 1; i >= 0; i-- {
				if _, err := r2.Insert(d.ops[tc.steps[i].name]); err != nil {
					t.Fatal(err)
				}
			}
			if r2.PendingCount() != 0 || r2.State().Digest != d.r.State().Digest {
				t.Fatalf("reverse delivery diverged: pending %d", r2.PendingCount())
			}
		})
	}
}

func TestWaitForParent(t *testing.T) {
	d := newDAG(t, alice)
	a1 := d.mk("a1", KindAdd, alice, bob, A, "c")
	a2 := d.mk("a2", KindAdd, bob, carol, M, "a1")
	a3 := d.mk("a3", KindAdd, alice, dave, M, "a1")
	a4 := d.mk("a4", KindLeave, carol, 0, 0, "a2", "a3")

	for _, op := range []*Op{a4, a2, a3} {
		applied, err := d.r.Insert(op)
		if err != nil || len(applied) != 0 {
			t.Fatalf("insert early %v: %v %v", op, applied, err)
		}
	}
	if d.r.PendingCount() != 3 || d.r.Has(a2.ID) || !d.r.IsPending(a2.ID) {
		t.Fatalf("pending %d", d.r.PendingCount())
	}
	if got := d.r.Missing(); !sameIDs(got, []OpID{a1.ID}) {
		t.Fatalf("Missing = %v, want [%s]", got, a1.ID)
	}
	wantMembers(t, d.r.State(), map[int]Role{alice: A})

	applied, err := d.r.Insert(a1)
	if err != nil {
		t.Fatal(err)
	}
	if len(applied) != 4 || applied[0] != a1 || applied[3] != a4 {
		t.Fatalf("applied %v", applied)
	}
	pos := map[OpID]int{}
	for i, op := range applied {
		for _, p := range op.Parents {
			if j, ok := pos[p]; ok && j > i {
				t.Fatalf("op %v before its parent", op)
			}
		}
		pos[op.ID] = i
	}
	if d.r.PendingCount() != 0 || len(d.r.Missing()) != 0 {
		t.Fatal("still pending")
	}
	wantMembers(t, d.r.State(), map[int]Role{alice: A, bob: A, dave: M})
	if !sameIDs(d.r.Heads(), []OpID{a4.ID}) {
		t.Fatalf("heads %v", d.r.Heads())
	}
}

func TestDuplicateInsert(t *testing.T) {
	d := newDAG(t, alice)
	a1 := d.mk("a1", KindAdd, alice, bob, M, "c")
	a2 := d.mk("a2", KindAdd, alice, carol, M, "a1")
	if applied, err := d.r.Insert(a2); err != nil || len(applied) != 0 {
		t.Fatal(applied, err)
	}
	if applied, err := d.r.Insert(a2); err != nil || len(applied) != 0 || d.r.PendingCount() != 1 {
		t.Fatal("duplicate pending insert", applied, err)
	}
	d.insert(a1)
	st := d.r.State()
	for _, op := range []*Op{d.ops["c"], a1, a2} {
		applied, err := d.r.Insert(op)
		if err != nil || len(applied) != 0 {
			t.Fatalf("duplicate insert of %v: %v %v", op, applied, err)
		}
	}
	// A re-parsed copy is the same op.
	cp, err := Parse(a1.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if applied, err := d.r.Insert(cp); err != nil || len(applied) != 0 {
		t.Fatal(applied, err)
	}
	if d.r.Len() != 3 || d.r.State().Digest != st.Digest {
		t.Fatal("duplicate changed the roster")
	}
}

func TestWrongGroup(t *testing.T) {
	d := newDAG(t, alice)
	other, err := NewCreate(testPrivs[alice], "test group", []byte("0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.r.Insert(other)
	mustErrIs(t, err, ErrWrongGroup)
	r2, err := New(other)
	if err != nil {
		t.Fatal(err)
	}
	op, err := NewAdd(testPrivs[alice], r2.ID(), []OpID{other.ID}, testIDs[bob], M, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.r.Insert(op)
	mustErrIs(t, err, ErrWrongGroup)
	// Even when it names this group's ops as parents.
	op, err = NewAdd(testPrivs[alice], r2.ID(), []OpID{d.ops["c"].ID}, testIDs[bob], M, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.r.Insert(op)
	mustErrIs(t, err, ErrWrongGroup)
	if d.r.Len() != 1 || d.r.PendingCount() != 0 {
		t.Fatal("wrong-group op kept")
	}
}

func TestNeverMemberNotAuthorized(t *testing.T) {
	d := newDAG(t, alice)
	d.add("a1", alice, bob, M, "c")
	// erin was never added: her op is rejected once its parents are present.
	e1 := d.mk("e1", KindAdd, erin, frank, M, "a1")
	// A descendant of it, by a legitimate author, arrives first and waits.
	b1 := d.mk("b1", KindLeave, bob, 0, 0, "e1")
	// And a grandchild.
	b2 := d.mk("b2", KindAdd, alice, carol, M, "b1")
	if applied, err := d.r.Insert(b2); err != nil || len(applied) != 0 {
		t.Fatal(applied, err)
	}
	if applied, err := d.r.Insert(b1); err != nil || len(applied) != 0 {
		t.Fatal(applied, err)
	}
	_, err := d.r.Insert(e1)
	mustErrIs(t, err, ErrNotAuthorized)
	if d.r.PendingCount() != 0 || d.r.Has(e1.ID) || d.r.Has(b1.ID) || d.r.Has(b2.ID) {
		t.Fatalf("rejected ops kept: pending %d", d.r.PendingCount())
	}
	if len(d.r.Missing()) != 0 {
		t.Fatalf("missing %v", d.r.Missing())
	}
	// Re-delivery and late descendants are refused too.
	_, err = d.r.Insert(e1)
	mustErrIs(t, err, ErrNotAuthorized)
	late := d.mk("late", KindAdd, alice, dave, M, "e1", "a1")
	_, err = d.r.Insert(late)
	mustErrIs(t, err, ErrNotAuthorized)

	// A child of a rejected op arriving later takes its own waiting
	// descendants down with it.
	d4 := newDAG(t, alice)
	d4.add("a1", alice, bob, M, "c")
	y1 := d4.mk("y1", KindLeave, erin, 0, 0, "a1")
	y2 := d4.mk("y2", KindLeave, bob, 0, 0, "y1")
	y3 := d4.mk("y3", KindAdd, alice, carol, M, "y2", "a1")
	_, err = d4.r.Insert(y1)
	mustErrIs(t, err, ErrNotAuthorized)
	if _, err := d4.r.Insert(y3); err != nil || d4.r.PendingCount() != 1 {
		t.Fatal(err, d4.r.PendingCount())
	}
	_, err = d4.r.Insert(y2)
	mustErrIs(t, err, ErrNotAuthorized)
	if d4.r.PendingCount() != 0 || len(d4.r.Missing()) != 0 || d4.r.Len() != 2 {
		t.Fatalf("pending %d missing %v", d4.r.PendingCount(), d4.r.Missing())
	}

	// Cascade case: the unauthorized op is made ready by another insert.
	d2 := newDAG(t, alice)
	x1 := d2.mk("x1", KindAdd, alice, bob, M, "c")
	x2 := d2.mk("x2", KindLeave, erin, 0, 0, "x1")
	x3 := d2.mk("x3", KindAdd, alice, carol, M, "x2")
	x4 := d2.mk("x4", KindAdd, alice, dave, M, "x1")
	for _, op := range []*Op{x3, x2, x4} {
		if _, err := d2.r.Insert(op); err != nil {
			t.Fatal(err)
		}
	}
	applied, err := d2.r.Insert(x1)
	if err != nil {
		t.Fatal(err)
	}
	if !sameIDs(opIDs(applied), []OpID{x1.ID, x4.ID}) || d2.r.PendingCount() != 0 {
		t.Fatalf("applied %v pending %d", applied, d2.r.PendingCount())
	}
	wantMembers(t, d2.r.State(), map[int]Role{alice: A, bob: M, dave: M})

	// A member who was removed is still "ever a member": the op is kept
	// but has no effect.
	d3 := newDAG(t, alice)
	d3.add("a1", alice, bob, A, "c")
	d3.remove("r1", alice, bob, "a1")
	d3.add("b1", bob, carol, M, "r1")
	d3.wantEffective(map[string]bool{"b1": false})
}

func TestInsertRefusesUnverifiedOp(t *testing.T) {
	d := newDAG(t, alice)
	a1 := d.mk("a1", KindAdd, alice, bob, A, "c")
	forged := *a1
	forged.verified = false
	_, err := d.r.Insert(&forged)
	mustErrIs(t, err, ErrMalformed)
	_, err = d.r.Insert(&Op{ID: a1.ID, Group: d.r.ID(), Author: testIDs[alice], Parents: []OpID{d.ops["c"].ID}, Kind: KindAdd, Member: testIDs[bob], Role: A})
	mustErrIs(t, err, ErrMalformed)
	_, err = d.r.Insert(nil)
	mustErrIs(t, err, ErrMalformed)
}

func TestStateAt(t *testing.T) {
	d := newDAG(t, alice)
	d.add("a1", alice, bob, A, "c")
	d.add("a2", bob, carol, M, "a1")
	d.remove("r1", alice, bob, "a2")
	d.add("a3", alice, dave, M, "a1") // concurrent branch

	old, err := d.r.StateAt([]OpID{d.ops["a2"].ID})
	if err != nil {
		t.Fatal(err)
	}
	wantMembers(t, old, map[int]Role{alice: A, bob: A, carol: M})
	if old.Size != 3 || !sameIDs(old.Heads, []OpID{d.ops["a2"].ID}) {
		t.Fatalf("old state size %d heads %v", old.Size, old.Heads)
	}
	wantMembers(t, d.r.State(), map[int]Role{alice: A, carol: M, dave: M})

	// Redundant heads are dropped; the state equals the one without them.
	red, err := d.r.StateAt([]OpID{d.ops["a1"].ID, d.ops["a2"].ID, d.ops["c"].ID})
	if err != nil {
		t.Fatal(err)
	}
	if red.Digest != old.Digest {
		t.Fatal("redundant heads changed the state")
	}
	// The full head set gives the current state.
	full, err := d.r.StateAt(d.r.Heads())
	if err != nil {
		t.Fatal(err)
	}
	if full.Digest != d.r.State().Digest || full.Size != d.r.Len() {
		t.Fatal("StateAt(Heads) != State")
	}
	// Two branches.
	st, err := d.r.StateAt([]OpID{d.ops["a3"].ID, d.ops["a2"].ID})
	if err != nil {
		t.Fatal(err)
	}
	wantMembers(t, st, map[int]Role{alice: A, bob: A, carol: M, dave: M})
	// The cached answer is a copy.
	st.Members[0].Role = 0
	again, _ := d.r.StateAt([]OpID{d.ops["a3"].ID, d.ops["a2"].ID})
	wantMembers(t, again, map[int]Role{alice: A, bob: A, carol: M, dave: M})

	_, err = d.r.StateAt([]OpID{{1, 2, 3}})
	mustErrIs(t, err, ErrUnknownOp)
	_, err = d.r.StateAt(nil)
	mustErrIs(t, err, ErrUnknownOp)
	pend := d.mk("p", KindLeave, carol, 0, 0, "a3", "a2")
	_, err = d.r.StateAt([]OpID{pend.ID})
	mustErrIs(t, err, ErrUnknownOp)
}

func TestHeadsKnowsDescends(t *testing.T) {
	d := newDAG(t, alice)
	c := d.ops["c"].ID
	a1 := d.add("a1", alice, bob, A, "c").ID
	a2 := d.add("a2", alice, carol, M, "a1").ID
	b1 := d.add("b1", bob, dave, M, "a1").ID
	heads := []OpID{a2, b1}
	slices.SortFunc(heads, OpID.Compare)
	if !sameIDs(d.r.Heads(), heads) {
		t.Fatalf("heads %v want %v", d.r.Heads(), heads)
	}
	unknown := OpID{9}
	if !d.r.Knows(heads) || !d.r.Knows(nil) || d.r.Knows([]OpID{a1, unknown}) {
		t.Fatal("Knows")
	}
	cases := []struct {
		a, b []OpID
		want bool
	}{
		{[]OpID{a2}, []OpID{a1}, true},
		{[]OpID{a2}, []OpID{c}, true},
		{[]OpID{a2}, []OpID{a2}, true},
		{[]OpID{a1}, []OpID{a2}, false},
		{[]OpID{a2}, []OpID{b1}, false},
		{[]OpID{a2, b1}, []OpID{b1, a1}, true},
		{[]OpID{a2}, nil, true},
		{[]OpID{a2}, []OpID{unknown}, false},
		{[]OpID{unknown}, []OpID{c}, false},
	}
	for i, tc := range cases {
		if got := d.r.Descends(tc.a, tc.b); got != tc.want {
			t.Errorf("case %d: Descends = %v, want %v", i, got, tc.want)
		}
	}
	ops := d.r.Ops()
	if len(ops) != 4 || ops[0].ID != c || ops[1].ID != a1 {
		t.Fatalf("Ops order %v", ops)
	}
	// Ties among a2 and b1 broken by lowest ID.
	if ops[2].ID.Compare(ops[3].ID) > 0 {
		t.Fatal("Ops tie not broken by lowest ID")
	}
}

func TestStateHelpers(t *testing.T) {
	d := newDAG(t, alice)
	d.add("a1", alice, bob, M, "c")
	st := d.r.State()
	if !st.IsMember(testIDs[bob]) || st.IsMember(testIDs[carol]) {
		t.Fatal("IsMember")
	}
	if r, ok := st.RoleOf(testIDs[alice]); !ok || r != A {
		t.Fatal("RoleOf")
	}
	ids := st.MemberIDs()
	if len(ids) != 2 || string(ids[0]) > string(ids[1]) {
		t.Fatalf("MemberIDs %v", ids)
	}
	// The roster answers the same without copying the state, and follows
	// it as ops arrive.
	if !d.r.IsMember(testIDs[bob]) || d.r.IsMember(testIDs[carol]) {
		t.Fatal("Roster.IsMember")
	}
	if r, ok := d.r.RoleOf(testIDs[bob]); !ok || r != M {
		t.Fatal("Roster.RoleOf")
	}
	// State returns a copy.
	st.Members = nil
	if !d.r.State().IsMember(testIDs[bob]) {
		t.Fatal("State is not a copy")
	}
	// Digest depends on heads even if membership is the same.
	before := d.r.State().Digest
	d.add("a2", alice, bob, M, "a1")
	if d.r.State().Digest == before {
		t.Fatal("digest ignores heads")
	}
}

func TestStrings(t *testing.T) {
	if RoleMember.String() != "member" || RoleAdmin.String() != "admin" || Role(7).String() != "Role(7)" {
		t.Fatal("Role.String")
	}
	if KindCreate.String() != "create" || KindAdd.String() != "add" || KindRemove.String() != "remove" || KindLeave.String() != "leave" {
		t.Fatal("Kind.String")
	}
	var id OpID
	for i := range id {
		id[i] = byte(i)
	}
	if id.String() != "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f" || id.ShortString() != "00010203" {
		t.Fatal("OpID strings")
	}
	got, err := ParseOpID(id[:])
	if err != nil || got != id {
		t.Fatal("ParseOpID")
	}
	_, err = ParseOpID(id[:31])
	mustErrIs(t, err, ErrMalformed)
}
