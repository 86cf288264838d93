package roster

import (
	"crypto/sha256"
	"encoding/binary"
	"math/bits"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

const stateDigestDomain = "p2pchat/v1/roster-state"

// Member is one member of a resolved state.
type Member struct {
	ID   peer.ID
	Role Role
}

// State is the resolution of a causally closed set of ops.
type State struct {
	Heads   []OpID   // maximal ops of the set, sorted
	Size    int      // number of ops in the set (a "height" for ordering states)
	Members []Member // sorted by peer ID bytes
	Digest  [32]byte // see the package doc
}

// IsMember reports whether p is a member.
func (s *State) IsMember(p peer.ID) bool {
	_, ok := s.RoleOf(p)
	return ok
}

// RoleOf returns p's role, if p is a member.
func (s *State) RoleOf(p peer.ID) (Role, bool) {
	i, ok := slices.BinarySearchFunc(s.Members, p, func(m Member, p peer.ID) int {
		return strings.Compare(string(m.ID), string(p))
	})
	if !ok {
		return 0, false
	}
	return s.Members[i].Role, true
}

// MemberIDs returns the members' peer IDs, sorted.
func (s *State) MemberIDs() []peer.ID {
	out := make([]peer.ID, len(s.Members))
	for i, m := range s.Members {
		out[i] = m.ID
	}
	return out
}

func (s *State) clone() *State {
	c := *s
	c.Heads = slices.Clone(s.Heads)
	c.Members = slices.Clone(s.Members)
	return &c
}

func stateDigest(group GroupID, heads []OpID, members []Member) [32]byte {
	h := sha256.New()
	var n [4]byte
	putLen := func(l int) {
		binary.BigEndian.PutUint32(n[:], uint32(l))
		h.Write(n[:])
	}
	h.Write([]byte(stateDigestDomain))
	h.Write([]byte{0})
	h.Write(group[:])
	putLen(len(heads))
	for _, id := range heads {
		h.Write(id[:])
	}
	putLen(len(members))
	for _, m := range members {
		putLen(len(m.ID))
		h.Write([]byte(m.ID))
		h.Write([]byte{byte(m.Role)})
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

func popcount(w uint64) int { return bits.OnesCount64(w) }

// resolution is the verdict on every op of a universe.
type resolution struct {
	eff   []bool // by node index; false outside the universe
	state *State
}

// resolve computes effectiveness and membership of the universe univ (a
// causally closed set of node indices; nil means all applied ops). See the
// package doc for the rules.
func (r *Roster) resolve(univ bitset, heads []OpID, size int) *resolution {
	n := len(r.nodes)
	in := func(i int) bool { return univ == nil || univ.has(i) }
	filtered := make([]bool, n)
	eff := make([]bool, n)
	// The filter set is recomputed from the effective removes of the last
	// round until it no longer changes, so a removal that turns out void
	// filters nothing (A removes B ∥ B removes C ∥ C removes D: B's removal
	// is void, so C's removal of D stands). Should the rounds not settle,
	// the monotone variant, where the filter set only grows, decides.
	converged := false
	for round := 0; round < n+3; round++ {
		r.authorityPass(in, filtered, eff)
		next := make([]bool, n)
		r.strongRemovalPass(in, next, eff)
		if slices.Equal(next, filtered) {
			converged = true
			break
		}
		filtered = next
	}
	if !converged {
		clear(filtered)
		for {
			r.authorityPass(in, filtered, eff)
			if !r.strongRemovalPass(in, filtered, eff) {
				break
			}
		}
	}

	effIn := func(j int) bool { return eff[j] }
	var members []Member
	for p := range r.addsOf {
		if role, ok := r.roleIn(p, effIn); ok {
			members = append(members, Member{ID: p, Role: role})
		}
	}
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(string(a.ID), string(b.ID)) })
	return &resolution{
		eff: eff,
		state: &State{
			Heads:   heads,
			Size:    size,
			Members: members,
			Digest:  stateDigest(r.id, heads, members),
		},
	}
}

// authorityPass decides every op of the universe in insertion order, which
// is topological: an op's verdict reads only verdicts of its ancestors.
func (r *Roster) authorityPass(in func(int) bool, filtered, eff []bool) {
	for i, nd := range r.nodes {
		eff[i] = false
		if !in(i) || filtered[i] {
			continue
		}
		op := nd.op
		past := func(j int) bool { return eff[j] && nd.anc.has(j) }
		switch op.Kind {
		case KindCreate:
			eff[i] = true
		case KindAdd:
			role, ok := r.roleIn(op.Author, past)
			eff[i] = ok && role == RoleAdmin
		case KindRemove:
			role, ok := r.roleIn(op.Author, past)
			if ok && role == RoleAdmin {
				_, eff[i] = r.roleIn(op.Member, past)
			}
		case KindLeave, KindAck:
			_, eff[i] = r.roleIn(op.Author, past)
		}
	}
}

// strongRemovalPass adds to filtered every op of a removed member that is
// concurrent with an effective removal of it, except removes on a removal
// cycle. It reports whether filtered grew.
func (r *Roster) strongRemovalPass(in func(int) bool, filtered, eff []bool) bool {
	// Graph of effective removes: author -> (target, op index).
	type edge struct {
		to peer.ID
		op int
	}
	edges := make(map[peer.ID][]edge)
	var removes []int
	for i, nd := range r.nodes {
		if eff[i] && nd.op.Kind == KindRemove {
			edges[nd.op.Author] = append(edges[nd.op.Author], edge{nd.op.Member, i})
			removes = append(removes, i)
		}
	}
	if len(removes) == 0 {
		return false
	}
	// onCycle reports whether remove o (of y) closes a removal cycle with a
	// removal by remover: remover is reachable from y through effective
	// removes none of which is in o's causal past. A removal o's author had
	// already seen (and that was undone, or o could not be effective) is
	// history, not a concurrent conflict.
	onCycle := func(o int, y, remover peer.ID) bool {
		anc := r.nodes[o].anc
		seen := map[peer.ID]bool{y: true}
		queue := []peer.ID{y}
		for len(queue) > 0 {
			x := queue[0]
			queue = queue[1:]
			if x == remover {
				return true
			}
			for _, e := range edges[x] {
				if !seen[e.to] && !anc.has(e.op) {
					seen[e.to] = true
					queue = append(queue, e.to)
				}
			}
		}
		return false
	}

	grew := false
	for _, ri := range removes {
		rn := r.nodes[ri]
		remover, removed := rn.op.Author, rn.op.Member
		for _, oi := range r.byAuthor[removed] {
			if !in(oi) || filtered[oi] {
				continue
			}
			on := r.nodes[oi]
			if on.anc.has(ri) || rn.anc.has(oi) {
				continue // not concurrent
			}
			if on.op.Kind == KindRemove && onCycle(oi, on.op.Member, remover) {
				continue // on a removal cycle with R
			}
			filtered[oi] = true
			grew = true
		}
	}
	return grew
}

// roleIn is membersOf restricted to peer x, over the ops j with in(j).
//
// It looks only at maximal elements. Liveness is upward closed among the
// adds of x (if b is live and b is an ancestor of a, every removal is an
// ancestor of b, hence of a), so the maximal live adds are exactly the live
// maximal adds, and x is a member iff some maximal add is live. An add is
// live iff every maximal removal is its ancestor (the other removals are
// ancestors of those). Indices ascend along every causal chain, so walking
// downwards meets each maximal element before anything below it.
func (r *Roster) roleIn(x peer.ID, in func(int) bool) (Role, bool) {
	var bufR, bufA [16]int
	maxR := bufR[:0]
	rems := r.remsOf[x]
	for k := len(rems) - 1; k >= 0; k-- {
		if j := rems[k]; in(j) && !r.belowAny(j, maxR) {
			maxR = append(maxR, j)
		}
	}
	var role Role
	maxA := bufA[:0]
	adds := r.addsOf[x]
	for k := len(adds) - 1; k >= 0; k-- {
		a := adds[k]
		if !in(a) || r.belowAny(a, maxA) {
			continue
		}
		maxA = append(maxA, a)
		if r.aboveAll(a, maxR) {
			if ar := r.addRole(a); role == 0 || ar < role {
				role = ar
			}
		}
	}
	return role, role != 0
}

// belowAny reports whether op j is an ancestor of one of ms.
func (r *Roster) belowAny(j int, ms []int) bool {
	for _, m := range ms {
		if r.nodes[m].anc.has(j) {
			return true
		}
	}
	return false
}

// aboveAll reports whether all of ms are ancestors of op a.
func (r *Roster) aboveAll(a int, ms []int) bool {
	anc := r.nodes[a].anc
	for _, m := range ms {
		if !anc.has(m) {
			return false
		}
	}
	return true
}

func (r *Roster) addRole(i int) Role {
	op := r.nodes[i].op
	if op.Kind == KindCreate {
		return RoleAdmin
	}
	return op.Role
}
