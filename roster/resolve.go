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
	// cuts lists, ascending, the membership ops comparable to every
	// membership op of the universe, and memHeads the maximal membership
	// ops (docs/protocol.md §4.3, "Segments"); kept for the full
	// resolution only, where the incremental path needs them.
	cuts, memHeads []int
	// filtered lists, ascending, the ops the strong-removal rounds
	// filtered (full resolution only): a segment with none took one round.
	filtered []int
}

// changesMembership reports whether an op of this kind takes part in the
// rounds of §4.3: every kind but the ack, which no verdict reads.
func changesMembership(k Kind) bool { return k != KindAck }

// stepCuts extends the cut chain and the maximal membership ops of a
// universe by the membership op i, which no earlier op descends from. The
// cuts i does not descend from stop being cuts (cuts form a chain, so they
// are the last ones); i is a cut itself when it descends from every
// maximal membership op. cuts is reused (only the resolution being built
// holds it); memHeads is not modified.
func (r *Roster) stepCuts(cuts, memHeads []int, i int) ([]int, []int, bool) {
	anc := &r.nodes[i].anc
	for len(cuts) > 0 && !anc.has(cuts[len(cuts)-1]) {
		cuts = cuts[:len(cuts)-1]
	}
	heads := make([]int, 0, len(memHeads)+1)
	for _, h := range memHeads {
		if !anc.has(h) {
			heads = append(heads, h)
		}
	}
	isCut := len(heads) == 0
	heads = append(heads, i)
	if isCut {
		cuts = append(cuts, i)
	}
	return cuts, heads, isCut
}

// resolve computes effectiveness and membership of the universe univ (a
// causally closed set of node indices; nil means all applied ops). See the
// package doc for the rules.
func (r *Roster) resolve(univ bitset, heads []OpID, size int) *resolution {
	n := len(r.nodes)
	in := func(i int) bool { return univ == nil || univ.has(i) }
	// The cuts, found in one pass over the membership ops.
	var cuts, memHeads []int
	for i := range n {
		if in(i) && changesMembership(r.nodes[i].op.Kind) {
			cuts, memHeads, _ = r.stepCuts(cuts, memHeads, i)
		}
	}
	eff := make([]bool, n)
	var seg, filtered []int
	next := 0 // index into cuts of the next cut
	for i := range n {
		if !in(i) || !changesMembership(r.nodes[i].op.Kind) {
			continue
		}
		if next < len(cuts) && cuts[next] == i {
			filtered = r.resolveSegment(seg, eff, filtered)
			filtered = r.resolveSegment([]int{i}, eff, filtered)
			seg = seg[:0]
			next++
			continue
		}
		seg = append(seg, i)
	}
	filtered = r.resolveSegment(seg, eff, filtered)
	for i := range n {
		if in(i) && !changesMembership(r.nodes[i].op.Kind) {
			eff[i] = r.ackVerdict(i, eff)
		}
	}

	effIn := func(j int) bool { return eff[j] }
	var members []Member
	for p := range r.addsOf {
		if role, ok := r.roleIn(p, effIn); ok {
			members = append(members, Member{ID: p, Role: role})
		}
	}
	slices.SortFunc(members, compareMembers)
	res := &resolution{
		eff: eff,
		state: &State{
			Heads:   heads,
			Size:    size,
			Members: members,
			Digest:  stateDigest(r.id, heads, members),
		},
	}
	if univ == nil {
		res.cuts, res.memHeads, res.filtered = cuts, memHeads, filtered
	}
	return res
}

func compareMembers(a, b Member) int { return strings.Compare(string(a.ID), string(b.ID)) }

// ackVerdict decides the ack i once every membership op of the universe is
// decided: its author is a member in its causal past, and no effective
// remove of its author is concurrent with it. No other verdict reads an
// ack's, so acks take no part in the rounds.
func (r *Roster) ackVerdict(i int, eff []bool) bool {
	nd := r.nodes[i]
	return r.authorized(nd.op, func(j int) bool { return eff[j] && nd.anc.has(j) }) && !r.removedConcurrently(i, eff)
}

// removedConcurrently reports whether an effective remove of the author of
// op i is concurrent with it.
func (r *Roster) removedConcurrently(i int, eff []bool) bool {
	nd := r.nodes[i]
	for _, j := range r.remsOf[nd.op.Author] {
		if eff[j] && r.nodes[j].op.Kind == KindRemove && !nd.anc.has(j) && !r.nodes[j].anc.has(i) {
			return true
		}
	}
	return false
}

// resolveSegment decides the ops of one segment (ascending node indices,
// every op before the segment already decided in eff). The filter set only
// grows, round by round, until a round adds nothing: at most len(seg)+1
// rounds, and no round undoes another's filtering, so resolution cannot
// oscillate. It appends the ops it filtered, ascending, to out.
func (r *Roster) resolveSegment(seg []int, eff []bool, out []int) []int {
	switch len(seg) {
	case 0:
		return out
	case 1: // concurrent with no membership op: nothing can filter it
		r.authorityPass(seg, nil, eff)
		return out
	}
	filtered := make(map[int]bool)
	for {
		r.authorityPass(seg, filtered, eff)
		if !r.strongRemovalPass(seg, filtered, eff) {
			break
		}
	}
	for _, i := range seg {
		if filtered[i] {
			out = append(out, i)
		}
	}
	return out
}

// authorityPass decides the ops of seg in insertion order, which is
// topological: an op's verdict reads only verdicts of its ancestors.
func (r *Roster) authorityPass(seg []int, filtered map[int]bool, eff []bool) {
	for _, i := range seg {
		eff[i] = false
		if filtered[i] {
			continue
		}
		nd := r.nodes[i]
		eff[i] = r.authorized(nd.op, func(j int) bool { return eff[j] && nd.anc.has(j) })
	}
}

// authorized is the authority rule: whether op takes effect given the
// effective ops of its causal past (past).
func (r *Roster) authorized(op *Op, past func(int) bool) bool {
	switch op.Kind {
	case KindCreate:
		return true
	case KindAdd:
		role, ok := r.roleIn(op.Author, past)
		return ok && role == RoleAdmin
	case KindRemove:
		role, ok := r.roleIn(op.Author, past)
		if !ok || role != RoleAdmin {
			return false
		}
		_, ok = r.roleIn(op.Member, past)
		return ok
	case KindLeave, KindAck:
		_, ok := r.roleIn(op.Author, past)
		return ok
	}
	return false
}

// strongRemovalPass adds to filtered every op of seg by a removed member
// that is concurrent with an effective removal of it, except removes on a
// removal cycle. It reports whether filtered grew. Ops concurrent with an
// op of seg are all in seg: every op outside it is an ancestor or a
// descendant of every op in it.
func (r *Roster) strongRemovalPass(seg []int, filtered map[int]bool, eff []bool) bool {
	// Graph of effective removes: author -> (target, op index).
	type edge struct {
		to peer.ID
		op int
	}
	edges := make(map[peer.ID][]edge)
	byAuthor := make(map[peer.ID][]int)
	var removes []int
	for _, i := range seg {
		op := r.nodes[i].op
		byAuthor[op.Author] = append(byAuthor[op.Author], i)
		if eff[i] && op.Kind == KindRemove {
			edges[op.Author] = append(edges[op.Author], edge{op.Member, i})
			removes = append(removes, i)
		}
	}
	if len(removes) == 0 {
		return false
	}
	concurrent := func(a, b int) bool {
		return a != b && !r.nodes[a].anc.has(b) && !r.nodes[b].anc.has(a)
	}
	// onCycle reports whether remove o (of y) closes a removal cycle with a
	// removal by remover: remover is reachable from y through effective
	// removes concurrent with o. A removal o's author had already seen is
	// history, not a conflict, and one made after o cannot make o part of
	// a duel it did not know of.
	onCycle := func(o int, y, remover peer.ID) bool {
		seen := map[peer.ID]bool{y: true}
		queue := []peer.ID{y}
		for len(queue) > 0 {
			x := queue[0]
			queue = queue[1:]
			if x == remover {
				return true
			}
			for _, e := range edges[x] {
				if !seen[e.to] && concurrent(o, e.op) {
					seen[e.to] = true
					queue = append(queue, e.to)
				}
			}
		}
		return false
	}

	grew := false
	for _, ri := range removes {
		rop := r.nodes[ri].op
		for _, oi := range byAuthor[rop.Member] {
			if filtered[oi] || !concurrent(oi, ri) {
				continue
			}
			if on := r.nodes[oi].op; on.Kind == KindRemove && onCycle(oi, on.Member, rop.Author) {
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
	// floor: every index below it is an ancestor of a maximal element found
	// so far, so the walk can stop there (in a linear history, at once).
	floor := 0
	for k := len(rems) - 1; k >= 0; k-- {
		j := rems[k]
		if j < floor {
			break
		}
		if in(j) && !r.belowAny(j, maxR) {
			maxR = append(maxR, j)
			floor = max(floor, r.nodes[j].anc.all)
		}
	}
	var role Role
	maxA := bufA[:0]
	adds := r.addsOf[x]
	floor = 0
	for k := len(adds) - 1; k >= 0; k-- {
		a := adds[k]
		if a < floor {
			break
		}
		if !in(a) || r.belowAny(a, maxA) {
			continue
		}
		floor = max(floor, r.nodes[a].anc.all)
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
