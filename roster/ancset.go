package roster

import "math/bits"

// ancSet is the set of an op's strict ancestors, by insertion index, kept
// compact for the near-linear DAGs that groups make: every index below all
// is in the set, and words holds the members from base = all rounded down
// to a multiple of 64 on (bit i-base). An op whose parents are the heads of
// an up-to-date roster has a set of a few words, whatever the DAG's size,
// where a plain bitset would take |V|/8 bytes per op (1.25 GB at 100 k ops).
type ancSet struct {
	all   int
	base  int
	words bitset
}

func (a *ancSet) has(i int) bool {
	if i < a.all {
		return true
	}
	if i < a.base {
		return false
	}
	return a.words.has(i - a.base)
}

// count returns the number of indices in the set.
func (a *ancSet) count() int {
	n := a.base
	for _, w := range a.words {
		n += bits.OnesCount64(w)
	}
	return n
}

// orInto adds the set to the full bitset b (long enough for every index).
func (a *ancSet) orInto(b bitset) {
	full := a.base >> 6
	for i := range full {
		b[i] = ^uint64(0)
	}
	for i, w := range a.words {
		b[full+i] |= w
	}
}

// ancestry builds the ancestor set of an op whose parents are the applied
// nodes ps.
func ancestry(ps []*node) ancSet {
	lo, top := 0, 0
	for _, p := range ps {
		lo = max(lo, p.anc.all)
		top = max(top, p.idx+1)
	}
	base := lo &^ 63
	// Ancestors lie below the highest parent's index (+1): an op naming
	// old parents (a removed member's backdated op) costs a few words, not
	// a bitset over the whole DAG.
	buf := newBitset(top - base)
	for _, p := range ps {
		a := &p.anc
		for i := base; i < a.all; i++ { // p's prefix above base (under 64 + gaps)
			buf.set(i - base)
		}
		for wi, w := range a.words {
			for w != 0 {
				b := bits.TrailingZeros64(w)
				w &^= 1 << uint(b)
				if i := a.base + wi*64 + b; i >= base {
					buf.set(i - base)
				}
			}
		}
		if p.idx >= base { // a redundant parent below the window is in the prefix already
			buf.set(p.idx - base)
		}
	}
	// Every index below lo is in; extend the prefix over the set bits.
	all := lo
	for all < top && buf.has(all-base) {
		all++
	}
	nb := all &^ 63
	return ancSet{all: all, base: nb, words: trimBitset(buf[(nb-base)>>6:])}
}

// trimBitset drops trailing zero words.
func trimBitset(b bitset) bitset {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return append(bitset(nil), b...)
}
