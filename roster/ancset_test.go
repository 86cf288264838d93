package roster

import (
	"math/rand/v2"
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
// state after each insert (so that ops at the tip take the incremental
// path), and compares every state and verdict with a full resolution.
func TestIncrementalResolution(t *testing.T) {
	var stats simStats
	extended := 0
	for n := range 300 {
		rng := rand.New(rand.NewPCG(uint64(n), 0x696e63))
		s := genDAG(t, rng, &stats, 0)
		r, err := New(s.create)
		if err != nil {
			t.Fatal(err)
		}
		for _, op := range s.all {
			before := r.res != nil
			_, _ = r.Insert(op)
			if before && r.res != nil {
				extended++
			}
			got := r.State()
			full := r.resolve(nil, r.Heads(), len(r.nodes))
			if !equalStates(got, full.state) {
				t.Fatalf("DAG %d after %v:\n incremental %s\n full        %s", n, op, stateString(got), stateString(full.state))
			}
			for i := range r.nodes {
				if r.res.eff[i] != full.eff[i] {
					t.Fatalf("DAG %d after %v: verdict of %v differs", n, op, r.nodes[i].op)
				}
			}
		}
	}
	t.Logf("%d inserts resolved incrementally", extended)
	if extended < 1000 {
		t.Errorf("only %d inserts took the incremental path", extended)
	}
}
