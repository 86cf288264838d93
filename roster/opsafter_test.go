package roster

import (
	"slices"
	"testing"
)

// TestOpsAfter: a peer with some heads is served exactly the applied ops
// outside their causal past, in the order of Ops; a peer with our heads is
// served nothing; a head we lack (or none) means everything.
func TestOpsAfter(t *testing.T) {
	d := newDAG(t, alice)
	a1 := d.mk("a1", KindAdd, alice, bob, M, "c")
	a2 := d.mk("a2", KindAdd, alice, carol, M, "a1")
	b1 := d.mk("b1", KindAdd, alice, dave, M, "a1")       // concurrent with a2
	a3 := d.mk("a3", KindAdd, alice, erin, M, "a2", "b1") // merges both
	for _, op := range []*Op{a1, a2, b1, a3} {
		d.insert(op)
	}
	ids := func(ops []*Op) []OpID {
		out := make([]OpID, len(ops))
		for i, op := range ops {
			out[i] = op.ID
		}
		return out
	}
	if got, ok := d.r.OpsAfter(d.r.Heads()); !ok || len(got) != 0 {
		t.Fatalf("a peer with our heads is served %d ops (ok %v)", len(got), ok)
	}
	got, ok := d.r.OpsAfter([]OpID{a2.ID})
	if want := []OpID{b1.ID, a3.ID}; !ok || !slices.Equal(ids(got), want) {
		t.Fatalf("after a2: %v (ok %v), want b1, a3", ids(got), ok)
	}
	got, ok = d.r.OpsAfter([]OpID{a2.ID, b1.ID})
	if want := []OpID{a3.ID}; !ok || !slices.Equal(ids(got), want) {
		t.Fatalf("after a2 and b1: %v, want a3", ids(got))
	}
	all := ids(d.r.Ops())
	unknown := d.mk("x", KindRemove, alice, bob, M, "a3") // made, never inserted
	for name, heads := range map[string][]OpID{"none": nil, "unknown head": {a1.ID, unknown.ID}} {
		got, ok := d.r.OpsAfter(heads)
		if ok || !slices.Equal(ids(got), all) {
			t.Fatalf("%s: %d ops (ok %v), want all %d and false", name, len(got), ok, len(all))
		}
	}
}
