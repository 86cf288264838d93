package node

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
)

// TestMissingFromMatchesSlotBySlot: the slots a responder serves (what it
// stores that the requester's summary lacks) equal a slot-by-slot check,
// for random stored ranges and summaries, including ranges at the ends of
// the sequence space and summaries naming seq 0 or slots we do not store.
func TestMissingFromMatchesSlotBySlot(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	senders := []peer.ID{"alice", "bob", "carol"}
	randomRanges := func(base uint64) seqRanges {
		var rs seqRanges
		for range rng.IntN(5) {
			rs = rs.add(base + uint64(rng.IntN(40)))
		}
		for range rng.IntN(3) {
			lo := base + uint64(rng.IntN(40))
			for s := lo; s < lo+uint64(rng.IntN(6)); s++ {
				rs = rs.add(s)
			}
		}
		return rs
	}
	for round := range 2000 {
		base := uint64(0)
		if round%5 == 0 {
			base = math.MaxUint64 - 45
		}
		g := &Group{stored: map[peer.ID]seqRanges{}}
		have := map[peer.ID]seqRanges{}
		for _, p := range senders {
			if rs := randomRanges(base); len(rs) > 0 {
				g.stored[p] = rs
			}
			if rng.IntN(4) > 0 {
				have[p] = randomRanges(base)
			}
		}
		var want []slot
		for _, p := range senders {
			for _, rg := range g.stored[p] {
				for s := rg[0]; ; s++ {
					if !have[p].contains(s) {
						want = append(want, slot{p, s})
					}
					if s == rg[1] {
						break
					}
				}
			}
		}
		if got := g.missingFrom(have); !slices.Equal(got, want) {
			t.Fatalf("round %d: stored %v, have %v:\ngot  %v\nwant %v", round, g.stored, have, got, want)
		}
	}
}
