package roster

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// TestAncestrySets compares every op's compact ancestor set with the
// oracle's plain one, on simulated DAGs inserted in random orders.
func TestAncestrySets(t *testing.T) {
	var stats simStats
	for n := range 200 {
		rng := rand.New(rand.NewPCG(uint64(n), 0x616e63))
		s := genDAG(t, rng, &stats, 0)
		r, err := New(s.create)
		if err != nil {
			t.Fatal(err)
		}
		order := append([]*Op(nil), s.all...)
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, op := range order {
			_, _ = r.Insert(op)
		}
		o := newOracle(r.Ops())
		for _, a := range r.nodes {
			want := 0
			for _, b := range r.nodes {
				before := o.before(b.op.ID, a.op.ID)
				if a.anc.has(b.idx) != before {
					t.Fatalf("DAG %d: %v has(%v) = %v, oracle %v", n, a.op, b.op, a.anc.has(b.idx), before)
				}
				if before {
					want++
				}
			}
			if got := a.anc.count(); got != want {
				t.Fatalf("DAG %d: %v count %d, want %d", n, a.op, got, want)
			}
		}
	}
}

// TestIncrementalResolution inserts simulated groups op by op, reading the
// state after each insert, and compares every state and verdict with a
// full resolution. Every insert must keep the resolution up to date in
// place (no insert may fall back to resolving from scratch), and many must
// take the path that resolves a segment again (a membership op concurrent
// with another), not only the path of a cut.
func TestIncrementalResolution(t *testing.T) {
	var stats simStats
	inserts, resegmented := 0, 0
	for n := range 300 {
		rng := rand.New(rand.NewPCG(uint64(n), 0x696e63))
		s := genDAG(t, rng, &stats, 0)
		r, err := New(s.create)
		if err != nil {
			t.Fatal(err)
		}
		r.State()
		for _, op := range s.all {
			before := len(r.nodes)
			applied, _ := r.Insert(op)
			if r.res == nil {
				t.Fatalf("DAG %d: inserting %v dropped the resolution", n, op)
			}
			inserts += len(applied)
			for i := before; i < len(r.nodes); i++ {
				if changesMembership(r.nodes[i].op.Kind) && !slices.Contains(r.res.cuts, i) {
					resegmented++
				}
			}
			got := r.State()
			full := r.resolve(nil, r.Heads(), len(r.nodes))
			if !equalStates(got, full.state) {
				t.Fatalf("DAG %d after %v:\n incremental %s\n full        %s", n, op, stateString(got), stateString(full.state))
			}
			if !slices.Equal(r.res.cuts, full.cuts) || !slices.Equal(r.res.memHeads, full.memHeads) || !slices.Equal(r.res.filtered, full.filtered) {
				t.Fatalf("DAG %d after %v: cuts %v heads %v filtered %v, full resolution finds %v %v %v", n, op, r.res.cuts, r.res.memHeads, r.res.filtered, full.cuts, full.memHeads, full.filtered)
			}
			for i := range r.nodes {
				if r.res.eff[i] != full.eff[i] {
					t.Fatalf("DAG %d after %v: verdict of %v differs", n, op, r.nodes[i].op)
				}
			}
		}
	}
	t.Logf("%d ops applied incrementally, %d of them concurrent with others", inserts, resegmented)
	if resegmented < 1000 {
		t.Errorf("only %d inserts resolved a segment again", resegmented)
	}
}
