package node

import (
	"math/rand/v2"
	"testing"
)

// TestSeqRangesAdd: adding sequence numbers in any order keeps the ranges
// sorted, disjoint, merged where they touch, and holding exactly what was
// added.
func TestSeqRangesAdd(t *testing.T) {
	for round := range 200 {
		rng := rand.New(rand.NewPCG(uint64(round), 7))
		var r seqRanges
		held := map[uint64]bool{}
		for range rng.IntN(200) {
			s := uint64(rng.IntN(100))
			r = r.add(s)
			held[s] = true
		}
		for i, rg := range r {
			if rg[0] > rg[1] || (i > 0 && r[i-1][1]+1 >= rg[0]) {
				t.Fatalf("round %d: ranges %v not sorted, disjoint and merged", round, r)
			}
		}
		for s := uint64(0); s < 110; s++ {
			if r.contains(s) != held[s] {
				t.Fatalf("round %d: contains(%d) = %v, want %v (%v)", round, s, r.contains(s), held[s], r)
			}
		}
	}
}
