package roster

import (
	"container/heap"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/libp2p/go-libp2p/core/peer"
)

// bitset is a set of op indices.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }

func (b bitset) has(i int) bool {
	w := i >> 6
	return w < len(b) && b[w]&(1<<(uint(i)&63)) != 0
}

func (b bitset) set(i int) { b[i>>6] |= 1 << (uint(i) & 63) }

// node is an applied op.
type node struct {
	op  *Op
	idx int    // local insertion index; insertion order is topological
	anc ancSet // strict ancestors (all have smaller indices)
}

// Roster holds one group's op DAG: the applied ops, the pending ops waiting
// for parents, and the cached resolution. It is not safe for concurrent use,
// not even of the read methods (State, StateAt, Effective and Ops fill
// caches): the caller serializes all calls with one exclusive lock.
type Roster struct {
	id      GroupID
	name    string
	founder peer.ID

	nodes []*node
	byID  map[OpID]*node
	heads map[OpID]struct{}

	pending  map[OpID]*Op
	waiters  map[OpID][]OpID // absent parent -> pending ops that name it
	rejected map[OpID]struct{}

	addsOf   map[peer.ID][]int // add ops targeting a peer; the create op for the founder
	remsOf   map[peer.ID][]int // remove ops targeting a peer and leave ops by it
	byAuthor map[peer.ID][]int
	markers  map[peer.ID][]int // acks by others that mark a peer

	res   *resolution // resolution of all applied ops; nil when stale
	order []*Op       // cached Ops(); nil when stale
	// judge is, during Admit, the resolution of the ops held before the
	// batch: every op of the batch is judged against it.
	judge *resolution
	// admission makes every insert apply the admission rule (see Admit).
	admission bool
	// refusedInDrain collects, during Admit, pending ops that admission
	// refused when their parents arrived, so that Admit can retry them.
	refusedInDrain []*Op
	atCache        map[string]*State
}

const maxAtCache = 128

// New starts a roster from its group's create op.
func New(create *Op) (*Roster, error) {
	if create == nil || !create.verified {
		return nil, fmt.Errorf("%w: op was not built by Decode, Parse or New*", ErrMalformed)
	}
	if create.Kind != KindCreate {
		return nil, fmt.Errorf("%w: a roster starts from a create op, not %s", ErrMalformed, create.Kind)
	}
	r := &Roster{
		id:       create.ID,
		name:     create.Name,
		founder:  create.Author,
		byID:     make(map[OpID]*node),
		heads:    make(map[OpID]struct{}),
		pending:  make(map[OpID]*Op),
		waiters:  make(map[OpID][]OpID),
		rejected: make(map[OpID]struct{}),
		addsOf:   make(map[peer.ID][]int),
		remsOf:   make(map[peer.ID][]int),
		byAuthor: make(map[peer.ID][]int),
		markers:  make(map[peer.ID][]int),
		atCache:  make(map[string]*State),
	}
	r.attach(create, ancSet{})
	return r, nil
}

// ID returns the group ID (the ID of the create op).
func (r *Roster) ID() GroupID { return r.id }

// Name returns the group name from the create op.
func (r *Roster) Name() string { return r.name }

// Founder returns the author of the create op.
func (r *Roster) Founder() peer.ID { return r.founder }

// Len returns the number of applied ops.
func (r *Roster) Len() int { return len(r.nodes) }

// Insert adds a verified op. Ops whose parents are not all applied are kept
// as pending and applied as soon as the parents arrive. It returns the ops
// that this call applied, each after its parents. A duplicate (applied or
// pending) is a no-op. An op of another group fails with ErrWrongGroup. An
// op whose author is neither the founder nor the target of an add op in its
// causal past fails with ErrNotAuthorized once its parents are present; it
// is discarded with the pending ops that depend on it, and later ops that
// name it as a parent fail the same way. Pending ops that this call
// discards in cascade do not make it fail.
func (r *Roster) Insert(op *Op) ([]*Op, error) {
	if op == nil || !op.verified {
		return nil, fmt.Errorf("%w: op was not built by Decode, Parse or New*", ErrMalformed)
	}
	if op.Group != r.id {
		return nil, fmt.Errorf("%w: op %s is of group %s, not %s", ErrWrongGroup, op.ID.ShortString(), op.Group.ShortString(), r.id.ShortString())
	}
	if _, ok := r.byID[op.ID]; ok {
		return nil, nil
	}
	if _, ok := r.pending[op.ID]; ok {
		return nil, nil
	}
	if _, ok := r.rejected[op.ID]; ok {
		return nil, fmt.Errorf("%w: op %s was rejected before", ErrNotAuthorized, op.ID.ShortString())
	}
	if op.Kind == KindCreate {
		// Unreachable: a create op's group is its own ID, so it is either
		// this roster's create (applied) or of another group.
		return nil, fmt.Errorf("%w: second create op", ErrWrongGroup)
	}
	var missing []OpID
	for _, p := range op.Parents {
		if _, ok := r.rejected[p]; ok {
			r.discard(op.ID)
			return nil, fmt.Errorf("%w: op %s depends on rejected op %s", ErrNotAuthorized, op.ID.ShortString(), p.ShortString())
		}
		if _, ok := r.byID[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		r.pending[op.ID] = op
		for _, p := range missing {
			r.waiters[p] = append(r.waiters[p], op.ID)
		}
		return nil, nil
	}
	if err := r.apply(op); err != nil {
		if errors.Is(err, ErrNotMember) {
			r.forget(op.ID)
		} else {
			r.discard(op.ID)
		}
		return nil, err
	}
	return r.drain(op), nil
}

// drain applies the pending ops that first were waiting for the ops applied
// from start on, breadth first.
func (r *Roster) drain(start *Op) []*Op {
	applied := []*Op{start}
	for i := 0; i < len(applied); i++ {
		id := applied[i].ID
		ws := r.waiters[id]
		delete(r.waiters, id)
		for _, w := range ws {
			op, ok := r.pending[w]
			if !ok || !r.parentsApplied(op) {
				continue
			}
			delete(r.pending, w)
			if err := r.apply(op); err != nil {
				if errors.Is(err, ErrNotMember) {
					r.forget(w)
					r.refusedInDrain = append(r.refusedInDrain, op)
				} else {
					r.discard(w)
				}
				continue
			}
			applied = append(applied, op)
		}
	}
	return applied
}

func (r *Roster) parentsApplied(op *Op) bool {
	for _, p := range op.Parents {
		if _, ok := r.byID[p]; !ok {
			return false
		}
	}
	return true
}

// discard rejects id and every pending op that depends on it.
func (r *Roster) discard(id OpID) {
	stack := []OpID{id}
	for len(stack) > 0 {
		id := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		r.rejected[id] = struct{}{}
		delete(r.pending, id)
		for _, w := range r.waiters[id] {
			if _, ok := r.pending[w]; ok {
				stack = append(stack, w)
			}
		}
		delete(r.waiters, id)
	}
}

// apply attaches an op whose parents are all applied, after checking that
// its author was ever a member in its causal past.
func (r *Roster) apply(op *Op) error {
	ps, _ := r.parentNodes(op)
	anc := ancestry(ps)
	if op.Author != r.founder && !r.anyIn(r.addsOf[op.Author], anc) {
		return fmt.Errorf("%w: op %s by %s", ErrNotAuthorized, op.ID.ShortString(), op.Author)
	}
	if r.admission && r.removedBefore(op.Author, anc) && !r.wanted(op.ID) {
		return fmt.Errorf("%w: op %s by %s", ErrNotMember, op.ID.ShortString(), op.Author)
	}
	r.attach(op, anc)
	return nil
}

// pendingAnc returns the causal past of a pending op as far as it is
// applied: the closure of its applied parents.
func (r *Roster) pendingAnc(op *Op) ancSet {
	ps, _ := r.parentNodes(op)
	return ancestry(ps)
}

// parentNodes returns the applied parents of op and whether all are.
func (r *Roster) parentNodes(op *Op) ([]*node, bool) {
	ps := make([]*node, 0, len(op.Parents))
	for _, p := range op.Parents {
		if pn, ok := r.byID[p]; ok {
			ps = append(ps, pn)
		}
	}
	return ps, len(ps) == len(op.Parents)
}

// forget drops id, refused by admission, from the pending ops without
// remembering it as rejected. The pending ops that wait for it keep
// waiting: should one of them turn out to need it (a member's op), it is
// applied when it comes again.
func (r *Roster) forget(id OpID) { delete(r.pending, id) }

// Admit inserts a batch of verified ops under the admission rule of
// docs/protocol.md §4.4 and returns the ops it applied (each after its
// parents) and the number it refused. Every op of the batch is judged
// against the state held before the batch: an op whose author that state
// has removed (an effective removal of the author, or its leave, that the
// op does not follow with an effective re-add of it) is refused
// (ErrNotMember) and not remembered — unless a pending op that is not
// refused needs it, directly or through other pending ops, as an ancestor
// (an honest op built on it before the removal reached its author). Ops
// whose parents are missing wait, as with Insert, and are judged when they
// apply. The order of the batch does not matter. Admit turns admission on
// for every later Insert too.
func (r *Roster) Admit(ops []*Op) (applied []*Op, refused int) {
	r.admission = true
	r.refusedInDrain = r.refusedInDrain[:0]
	// A copy: the incremental path extends r.res in place as the batch
	// applies, and the batch must be judged against the state before it.
	judge := *r.resolution()
	r.judge = &judge
	defer func() { r.refusedInDrain, r.judge = nil, nil }()
	var notMember []*Op
	for _, op := range ops {
		if op == nil || r.Has(op.ID) || r.IsPending(op.ID) {
			continue
		}
		a, err := r.Insert(op)
		if errors.Is(err, ErrNotMember) {
			notMember = append(notMember, op)
		}
		applied = append(applied, a...)
	}
	// An op refused early in the batch may be needed by an op that came
	// later in it: apply those now, until nothing more is needed.
	for progress := true; progress; {
		progress = false
		notMember = append(notMember, r.refusedInDrain...)
		r.refusedInDrain = r.refusedInDrain[:0]
		rest := notMember[:0]
		for _, op := range notMember {
			if r.Has(op.ID) {
				continue
			}
			if !r.wanted(op.ID) {
				rest = append(rest, op)
				continue
			}
			if a, _ := r.Insert(op); len(a) > 0 {
				applied = append(applied, a...)
				progress = true
			}
		}
		notMember = rest
	}
	return applied, len(notMember)
}

// removedBefore reports whether an op by author with causal past anc
// comes after, or concurrently with, the author's removal: the current
// state has an effective removal of the author (a remove of it, or its
// leave), and the author is no member of the effective ops of anc together
// with every effective removal of it (an op made before a removal that it
// does not follow with a re-add). Such an op is the author's once it was
// out; admission refuses it.
func (r *Roster) removedBefore(author peer.ID, anc ancSet) bool {
	rems := r.remsOf[author]
	if len(rems) == 0 {
		return false
	}
	res := r.judge
	if res == nil {
		res = r.resolution()
	}
	removed := false
	for _, rho := range rems {
		if rho < len(res.eff) && res.eff[rho] {
			removed = true
			break
		}
	}
	if !removed {
		return false
	}
	_, member := r.roleIn(author, func(j int) bool {
		if j >= len(res.eff) || !res.eff[j] {
			return false
		}
		return anc.has(j) || slices.Contains(rems, j)
	})
	return !member
}

// wanted reports whether a pending op that admission would take (its
// author was not removed before it, as far as its applied ancestors show)
// waits, directly or through other pending ops, for op id.
func (r *Roster) wanted(id OpID) bool {
	seen := map[OpID]bool{id: true}
	queue := []OpID{id}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		for _, w := range r.waiters[x] {
			op, ok := r.pending[w]
			if !ok || seen[w] {
				continue
			}
			if !r.removedBefore(op.Author, r.pendingAnc(op)) {
				return true
			}
			seen[w] = true
			queue = append(queue, w)
		}
	}
	return false
}

func (r *Roster) anyIn(idxs []int, set ancSet) bool {
	for _, i := range idxs {
		if set.has(i) {
			return true
		}
	}
	return false
}

func (r *Roster) attach(op *Op, anc ancSet) {
	n := &node{op: op, idx: len(r.nodes), anc: anc}
	r.nodes = append(r.nodes, n)
	r.byID[op.ID] = n
	for _, p := range op.Parents {
		delete(r.heads, p)
	}
	r.heads[op.ID] = struct{}{}
	switch op.Kind {
	case KindCreate:
		r.addsOf[op.Author] = append(r.addsOf[op.Author], n.idx)
	case KindAdd:
		r.addsOf[op.Member] = append(r.addsOf[op.Member], n.idx)
	case KindRemove:
		r.remsOf[op.Member] = append(r.remsOf[op.Member], n.idx)
	case KindLeave:
		r.remsOf[op.Author] = append(r.remsOf[op.Author], n.idx)
	}
	r.byAuthor[op.Author] = append(r.byAuthor[op.Author], n.idx)
	for _, m := range op.Marks {
		if m.Peer != op.Author {
			r.markers[m.Peer] = append(r.markers[m.Peer], n.idx)
		}
	}
	// Last, once the indices above include n: the resolution is brought
	// up to date incrementally (docs/protocol.md §4.3).
	if r.res != nil && len(r.res.eff) == n.idx && op.Kind != KindCreate {
		r.advance(n)
	} else {
		r.res, r.order = nil, nil
	}
}

// advance updates the full resolution for n, the op just attached
// (incremental resolution, docs/protocol.md §4.3). An ack is decided alone:
// no other verdict reads it. A membership op drops the cuts it does not
// descend from; the last cut c that stays is an ancestor of n, every
// membership op after c descends from c, and only the segment after c can
// change. When n descends from every other membership op it is a cut,
// concurrent with no membership op: no verdict but its own changes (and,
// for a remove, those of its target's acks), and its own is the authority
// rule. Otherwise the segment after c, n included, is resolved again.
// Either way the result equals a full resolution; the convergence tests
// check it.
func (r *Roster) advance(n *node) {
	old := r.res
	op := n.op
	tip := n.anc.all == n.idx
	heads := []OpID{op.ID}
	if !tip {
		heads = r.Heads()
		r.order = nil
	} else if r.order != nil {
		r.order = append(r.order, op)
	}
	if !changesMembership(op.Kind) {
		// Appending may write past the end of a copy that Admit keeps as
		// its judge, never into it.
		eff := append(old.eff, false)
		eff[n.idx] = r.ackVerdict(n.idx, eff)
		r.res = &resolution{eff: eff, cuts: old.cuts, memHeads: old.memHeads, filtered: old.filtered, state: r.membersAfter(old.state, eff, nil, heads)}
		return
	}
	cuts, memHeads, isCut := r.stepCuts(old.cuts, old.memHeads, n.idx)
	c := cuts[len(cuts)-1] // the create op is an ancestor of every op
	filtered := old.filtered
	var eff []bool
	var touched []peer.ID
	resegmented := false
	calm := len(filtered) == 0 || filtered[len(filtered)-1] < c
	switch {
	case isCut || (calm && op.Kind != KindRemove):
		// A cut, or an op that is no remove after the last cut that stays,
		// where no round filtered anything: one round decided every op
		// there, and still does, since n filters nothing and nothing
		// descends from n. n is filtered iff an effective remove of its
		// author is concurrent with it.
		eff = append(old.eff, false)
		if op.Kind == KindRemove {
			// Its target's acks are decided again below, and Admit's
			// judge may share the old slice.
			eff = slices.Clone(eff)
		}
		if !isCut && r.removedConcurrently(n.idx, eff) {
			filtered = append(filtered, n.idx)
		} else {
			r.authorityPass([]int{n.idx}, nil, eff)
		}
		if eff[n.idx] {
			touched = touchedBy(op)
		}
	default:
		resegmented = true
		// A fresh slice: Admit's judge may share the old one.
		eff = make([]bool, n.idx+1)
		copy(eff, old.eff)
		var seg []int
		for i := c + 1; i <= n.idx; i++ {
			if o := r.nodes[i].op; changesMembership(o.Kind) {
				seg = append(seg, i)
				touched = append(touched, touchedBy(o)...)
			}
		}
		k, _ := slices.BinarySearch(filtered, c)
		filtered = r.resolveSegment(seg, eff, filtered[:k])
	}
	// The acks of a peer that a changed verdict removes, or no longer
	// removes, are decided again.
	if op.Kind == KindRemove || resegmented {
		for _, x := range touched {
			for _, i := range r.byAuthor[x] {
				if !changesMembership(r.nodes[i].op.Kind) {
					eff[i] = r.ackVerdict(i, eff)
				}
			}
		}
	}
	r.res = &resolution{eff: eff, cuts: cuts, memHeads: memHeads, filtered: filtered, state: r.membersAfter(old.state, eff, touched, heads)}
}

// touchedBy returns the peer whose membership op can change, if any.
func touchedBy(op *Op) []peer.ID {
	switch op.Kind {
	case KindAdd, KindRemove:
		return []peer.ID{op.Member}
	case KindLeave:
		return []peer.ID{op.Author}
	}
	return nil
}

// membersAfter returns the state with heads whose members are those of st,
// except that the peers touched are judged again over the verdicts eff.
// Only ops that add or remove a peer decide its membership, so a peer that
// no changed verdict touches keeps its role.
func (r *Roster) membersAfter(st *State, eff []bool, touched []peer.ID, heads []OpID) *State {
	members := st.Members
	if len(touched) > 0 {
		members = slices.Clone(members)
		effIn := func(j int) bool { return eff[j] }
		for _, x := range touched {
			i, found := slices.BinarySearchFunc(members, x, func(m Member, p peer.ID) int { return strings.Compare(string(m.ID), string(p)) })
			role, ok := r.roleIn(x, effIn)
			switch {
			case ok && found:
				members[i].Role = role
			case ok:
				members = slices.Insert(members, i, Member{ID: x, Role: role})
			case found:
				members = slices.Delete(members, i, i+1)
			}
		}
	}
	return &State{Heads: heads, Size: len(r.nodes), Members: members, Digest: stateDigest(r.id, heads, members)}
}

// EverAdded reports whether p is the founder or the member of some applied
// add op, effective or not: whether the roster ever named p. A peer it never
// named has nothing of the group to offer (history sync refuses it).
func (r *Roster) EverAdded(p peer.ID) bool { return len(r.addsOf[p]) > 0 }

// Has reports whether the op is applied (not merely pending).
func (r *Roster) Has(id OpID) bool {
	_, ok := r.byID[id]
	return ok
}

// Op returns an applied op.
func (r *Roster) Op(id OpID) (*Op, bool) {
	n, ok := r.byID[id]
	if !ok {
		return nil, false
	}
	return n.op, true
}

// IsPending reports whether the op is held waiting for parents.
func (r *Roster) IsPending(id OpID) bool {
	_, ok := r.pending[id]
	return ok
}

// Missing returns, sorted, the parents named by pending ops that are
// neither applied nor pending.
func (r *Roster) Missing() []OpID {
	set := make(map[OpID]struct{})
	for _, op := range r.pending {
		for _, p := range op.Parents {
			if _, ok := r.byID[p]; ok {
				continue
			}
			if _, ok := r.pending[p]; ok {
				continue
			}
			set[p] = struct{}{}
		}
	}
	return sortedIDs(set)
}

// PendingBy returns the number of pending ops authored by p.
func (r *Roster) PendingBy(p peer.ID) int {
	n := 0
	for _, op := range r.pending {
		if op.Author == p {
			n++
		}
	}
	return n
}

// PendingCount returns the number of ops waiting for parents.
func (r *Roster) PendingCount() int { return len(r.pending) }

// Heads returns the applied ops that no applied op names as a parent, sorted.
func (r *Roster) Heads() []OpID { return sortedIDs(r.heads) }

func sortedIDs(set map[OpID]struct{}) []OpID {
	out := make([]OpID, 0, len(set))
	for id := range set {
		out = append(out, id)
	}
	slices.SortFunc(out, OpID.Compare)
	return out
}

// Ops returns all applied ops in a deterministic topological order: Kahn's
// algorithm, ties broken by the lowest op ID.
func (r *Roster) Ops() []*Op {
	if r.order == nil {
		r.order = r.topoOrder()
	}
	return slices.Clone(r.order)
}

// OpsAfter returns, in the order of Ops, the applied ops outside the causal
// past of heads (the heads included in that past): what a peer whose roster
// has these heads lacks. It reports false, and returns every op, when some
// head is not applied here: the peer's past cannot be told apart then.
func (r *Roster) OpsAfter(heads []OpID) ([]*Op, bool) {
	all := r.Ops()
	if len(heads) == 0 {
		return all, false
	}
	below := make([]bool, len(r.nodes))
	stack := make([]*node, 0, len(heads))
	for _, h := range heads {
		n, ok := r.byID[h]
		if !ok {
			return all, false
		}
		stack = append(stack, n)
	}
	for len(stack) > 0 {
		n := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if below[n.idx] {
			continue
		}
		below[n.idx] = true
		for _, p := range n.op.Parents {
			if pn := r.byID[p]; !below[pn.idx] {
				stack = append(stack, pn)
			}
		}
	}
	out := all[:0]
	for _, op := range all {
		if !below[r.byID[op.ID].idx] {
			out = append(out, op)
		}
	}
	return out, true
}

type idHeap []*node

func (h idHeap) Len() int           { return len(h) }
func (h idHeap) Less(i, j int) bool { return h[i].op.ID.Compare(h[j].op.ID) < 0 }
func (h idHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *idHeap) Push(x any)        { *h = append(*h, x.(*node)) }
func (h *idHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func (r *Roster) topoOrder() []*Op {
	indeg := make([]int, len(r.nodes))
	children := make([][]int, len(r.nodes))
	h := &idHeap{}
	for _, n := range r.nodes {
		indeg[n.idx] = len(n.op.Parents)
		for _, p := range n.op.Parents {
			pi := r.byID[p].idx
			children[pi] = append(children[pi], n.idx)
		}
		if indeg[n.idx] == 0 {
			*h = append(*h, n)
		}
	}
	heap.Init(h)
	out := make([]*Op, 0, len(r.nodes))
	for h.Len() > 0 {
		n := heap.Pop(h).(*node)
		out = append(out, n.op)
		for _, c := range children[n.idx] {
			if indeg[c]--; indeg[c] == 0 {
				heap.Push(h, r.nodes[c])
			}
		}
	}
	return out
}

// Effective reports whether the applied op takes effect in the current
// resolution. Unknown, pending and rejected ops are not effective.
func (r *Roster) Effective(id OpID) bool {
	n, ok := r.byID[id]
	if !ok {
		return false
	}
	return r.resolution().eff[n.idx]
}

// State returns the resolution of all applied ops. The result is a copy.
func (r *Roster) State() *State {
	return r.resolution().state.clone()
}

// IsMember reports whether p is a member of the current state, without
// copying the state (validators ask this for every message).
func (r *Roster) IsMember(p peer.ID) bool { return r.resolution().state.IsMember(p) }

// RoleOf returns p's role in the current state, if p is a member.
func (r *Roster) RoleOf(p peer.ID) (Role, bool) { return r.resolution().state.RoleOf(p) }

func (r *Roster) resolution() *resolution {
	if r.res == nil {
		r.res = r.resolve(nil, r.Heads(), len(r.nodes))
	}
	return r.res
}

// StateAt returns the resolution of exactly the causal closure of heads. It
// fails with ErrUnknownOp if a head is not applied. The State's Heads are the
// maximal ops of that closure (redundant heads are dropped).
func (r *Roster) StateAt(heads []OpID) (*State, error) {
	if len(heads) == 0 {
		return nil, fmt.Errorf("%w: no heads", ErrUnknownOp)
	}
	univ, err := r.closure(heads)
	if err != nil {
		return nil, err
	}
	norm := make(map[OpID]struct{}, len(heads))
	for _, h := range heads {
		hn := r.byID[h]
		redundant := false
		for _, o := range heads {
			if r.byID[o].anc.has(hn.idx) {
				redundant = true
				break
			}
		}
		if !redundant {
			norm[h] = struct{}{}
		}
	}
	nh := sortedIDs(norm)
	key := make([]byte, 0, 32*len(nh))
	for _, h := range nh {
		key = append(key, h[:]...)
	}
	// The closure of applied ops never changes, so cached entries stay valid.
	if st, ok := r.atCache[string(key)]; ok {
		return st.clone(), nil
	}
	size := 0
	for _, w := range univ {
		size += popcount(w)
	}
	st := r.resolve(univ, nh, size).state
	if len(r.atCache) >= maxAtCache {
		clear(r.atCache)
	}
	r.atCache[string(key)] = st
	return st.clone(), nil
}

// closure returns the causal closure of ids as a bitset.
func (r *Roster) closure(ids []OpID) (bitset, error) {
	set := newBitset(len(r.nodes))
	for _, id := range ids {
		n, ok := r.byID[id]
		if !ok {
			return nil, fmt.Errorf("%w: %s", ErrUnknownOp, id.ShortString())
		}
		n.anc.orInto(set)
		set.set(n.idx)
	}
	return set, nil
}

// Knows reports whether every op in heads is applied.
func (r *Roster) Knows(heads []OpID) bool {
	for _, h := range heads {
		if _, ok := r.byID[h]; !ok {
			return false
		}
	}
	return true
}

// Descends reports whether closure(b) ⊆ closure(a). It is false when an op
// of a or b is not applied.
func (r *Roster) Descends(a, b []OpID) bool {
	ca, err := r.closure(a)
	if err != nil {
		return false
	}
	for _, id := range b {
		n, ok := r.byID[id]
		if !ok || !ca.has(n.idx) {
			return false
		}
	}
	return true
}

// WouldRefuse reports whether admission would refuse op now: its parents
// are all applied and its author was removed before it (see Admit). A
// validator uses it to drop a removed member's op without applying it.
func (r *Roster) WouldRefuse(op *Op) bool {
	if op == nil || r.Has(op.ID) || len(r.remsOf[op.Author]) == 0 {
		return false
	}
	ps, all := r.parentNodes(op)
	if !all {
		return false
	}
	return r.removedBefore(op.Author, ancestry(ps)) && !r.wanted(op.ID)
}

// MarkBound returns the highest seq that an ack by another member marks
// for p, and whether any ack marks p at all (docs/protocol.md §4.5).
func (r *Roster) MarkBound(p peer.ID) (uint64, bool) {
	var bound uint64
	found := false
	for _, i := range r.markers[p] {
		for _, m := range r.nodes[i].op.Marks {
			if m.Peer == p && (!found || m.Seq > bound) {
				bound, found = m.Seq, true
			}
		}
	}
	return bound, found
}

// MarkedByEveryMember reports whether every member of the current state has
// an applied ack that marks p (docs/protocol.md §4.5: p's bound is final).
func (r *Roster) MarkedByEveryMember(p peer.ID) bool {
	for _, m := range r.resolution().state.Members {
		if !r.MarkedBy(m.ID, p) {
			return false
		}
	}
	return true
}

// MarkedBy reports whether author has an applied ack that marks p.
func (r *Roster) MarkedBy(author, p peer.ID) bool {
	for _, i := range r.markers[p] {
		if r.nodes[i].op.Author == author {
			return true
		}
	}
	return false
}

// EverMember reports whether some add of p (or the create op, for the
// founder) is effective: whether p was a member at some point of the
// current resolution. A peer only named by adds that took no effect never
// was, and has nothing it may have said as a member.
func (r *Roster) EverMember(p peer.ID) bool {
	res := r.resolution()
	for _, i := range r.addsOf[p] {
		if res.eff[i] {
			return true
		}
	}
	return false
}

// RemovalHistory returns, in the order of Ops, the ops in the causal
// closure of every effective removal of p (a remove of p or its leave),
// the removals included: what a peer that was removed needs in order to
// learn it, and no op that followed its removals. Nil if p has no
// effective removal.
func (r *Roster) RemovalHistory(p peer.ID) []*Op {
	res := r.resolution()
	var ids []OpID
	for _, i := range r.remsOf[p] {
		if res.eff[i] {
			ids = append(ids, r.nodes[i].op.ID)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	set, _ := r.closure(ids)
	var out []*Op
	for _, op := range r.Ops() {
		if set.has(r.byID[op.ID].idx) {
			out = append(out, op)
		}
	}
	return out
}
