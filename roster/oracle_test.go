package roster

import (
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
)

// oracle is a deliberately naive transcription of the resolution rules in
// doc.go, with no bitsets, indices or per-peer shortcuts. The convergence
// test checks the real implementation against it.
type oracle struct {
	ops   map[OpID]*Op
	anc   map[OpID]map[OpID]bool
	order []OpID // Kahn, lowest ID first
}

func newOracle(ops []*Op) *oracle {
	o := &oracle{ops: map[OpID]*Op{}, anc: map[OpID]map[OpID]bool{}}
	for _, op := range ops {
		o.ops[op.ID] = op
	}
	var ancestors func(id OpID) map[OpID]bool
	ancestors = func(id OpID) map[OpID]bool {
		if a, ok := o.anc[id]; ok {
			return a
		}
		a := map[OpID]bool{}
		for _, p := range o.ops[id].Parents {
			a[p] = true
			for q := range ancestors(p) {
				a[q] = true
			}
		}
		o.anc[id] = a
		return a
	}
	indeg := map[OpID]int{}
	for id, op := range o.ops {
		ancestors(id)
		indeg[id] = len(op.Parents)
	}
	var ready []OpID
	for id, d := range indeg {
		if d == 0 {
			ready = append(ready, id)
		}
	}
	for len(ready) > 0 {
		slices.SortFunc(ready, OpID.Compare)
		id := ready[0]
		ready = ready[1:]
		o.order = append(o.order, id)
		for cid, c := range o.ops {
			if slices.Contains(c.Parents, id) {
				if indeg[cid]--; indeg[cid] == 0 {
					ready = append(ready, cid)
				}
			}
		}
	}
	return o
}

func (o *oracle) before(a, b OpID) bool { return o.anc[b][a] }

func (o *oracle) concurrent(a, b OpID) bool {
	return a != b && !o.before(a, b) && !o.before(b, a)
}

// membersOf implements the membership function on a set of effective ops.
func (o *oracle) membersOf(E []OpID) map[peer.ID]Role {
	type add struct {
		id   OpID
		role Role
	}
	adds := map[peer.ID][]add{}
	removals := map[peer.ID][]OpID{}
	for _, id := range E {
		op := o.ops[id]
		switch op.Kind {
		case KindCreate:
			adds[op.Author] = append(adds[op.Author], add{id, RoleAdmin})
		case KindAdd:
			adds[op.Member] = append(adds[op.Member], add{id, op.Role})
		case KindRemove:
			removals[op.Member] = append(removals[op.Member], id)
		case KindLeave:
			removals[op.Author] = append(removals[op.Author], id)
		}
	}
	out := map[peer.ID]Role{}
	for x, as := range adds {
		var live []add
		for _, a := range as {
			ok := true
			for _, r := range removals[x] {
				if !o.before(r, a.id) {
					ok = false
				}
			}
			if ok {
				live = append(live, a)
			}
		}
		var role Role
		for _, a := range live {
			maximal := true
			for _, b := range live {
				if o.before(a.id, b.id) {
					maximal = false
				}
			}
			if maximal && (role == 0 || a.role < role) {
				role = a.role
			}
		}
		if role != 0 {
			out[x] = role
		}
	}
	return out
}

// segments partitions the membership ops (every kind but the ack), in
// Kahn order, into the segments of §4.3: a cut (a membership op comparable
// to every other membership op) is a segment of its own, and the
// membership ops between two consecutive cuts form one.
func (o *oracle) segments() [][]OpID {
	var mem []OpID
	for _, id := range o.order {
		if o.ops[id].Kind != KindAck {
			mem = append(mem, id)
		}
	}
	isCut := func(c OpID) bool {
		for _, id := range mem {
			if id != c && !o.before(id, c) && !o.before(c, id) {
				return false
			}
		}
		return true
	}
	var cuts []OpID
	for _, id := range mem {
		if isCut(id) {
			cuts = append(cuts, id)
		}
	}
	// An op's stage: a cut after k other cuts is at 2k; a non-cut op with k
	// cuts among its ancestors is at 2k-1.
	stage := map[OpID]int{}
	maxStage := 0
	for _, id := range mem {
		k := 0
		for _, c := range cuts {
			if o.before(c, id) {
				k++
			}
		}
		if isCut(id) {
			stage[id] = 2 * k
		} else {
			stage[id] = 2*k - 1
		}
		maxStage = max(maxStage, stage[id])
	}
	segs := make([][]OpID, maxStage+1)
	for _, id := range mem {
		segs[stage[id]] = append(segs[stage[id]], id)
	}
	return segs
}

func (o *oracle) resolve() (eff map[OpID]bool, members map[peer.ID]Role) {
	eff = map[OpID]bool{}
	// authority decides the ops of seg, given F and the verdicts on every
	// op before seg.
	authority := func(seg []OpID, F map[OpID]bool) {
		for _, id := range seg {
			op := o.ops[id]
			eff[id] = false
			if F[id] {
				continue
			}
			var past []OpID
			for _, e := range o.order {
				if eff[e] && o.before(e, id) {
					past = append(past, e)
				}
			}
			S := o.membersOf(past)
			switch op.Kind {
			case KindCreate:
				eff[id] = true
			case KindAdd:
				eff[id] = S[op.Author] == RoleAdmin
			case KindRemove:
				_, targetIn := S[op.Member]
				eff[id] = S[op.Author] == RoleAdmin && targetIn
			case KindLeave, KindAck:
				_, in := S[op.Author]
				eff[id] = in
			}
		}
	}
	// filterOf adds to F what the effective removes of seg filter in seg.
	filterOf := func(seg []OpID, F map[OpID]bool) bool {
		type edge struct {
			to peer.ID
			op OpID
		}
		edges := map[peer.ID][]edge{}
		for _, id := range seg {
			if op := o.ops[id]; eff[id] && op.Kind == KindRemove {
				edges[op.Author] = append(edges[op.Author], edge{op.Member, id})
			}
		}
		// reachable: from reaches to through effective removes concurrent
		// with op with.
		reachable := func(from, to peer.ID, with OpID) bool {
			seen := map[peer.ID]bool{from: true}
			stack := []peer.ID{from}
			for len(stack) > 0 {
				x := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				if x == to {
					return true
				}
				for _, e := range edges[x] {
					if !seen[e.to] && o.concurrent(e.op, with) {
						seen[e.to] = true
						stack = append(stack, e.to)
					}
				}
			}
			return false
		}
		grew := false
		for _, rid := range seg {
			R := o.ops[rid]
			if !eff[rid] || R.Kind != KindRemove {
				continue
			}
			for _, oid := range seg {
				op := o.ops[oid]
				if op.Author != R.Member || !o.concurrent(oid, rid) || F[oid] {
					continue
				}
				if op.Kind == KindRemove && reachable(op.Member, R.Author, oid) {
					continue
				}
				F[oid] = true
				grew = true
			}
		}
		return grew
	}
	// Segment by segment; within one, F only grows until a round adds
	// nothing.
	for _, seg := range o.segments() {
		F := map[OpID]bool{}
		for {
			authority(seg, F)
			if !filterOf(seg, F) {
				break
			}
		}
	}
	// Acks last: authority as for a leave, and no effective remove of the
	// author concurrent with the ack.
	var acks []OpID
	for _, id := range o.order {
		if o.ops[id].Kind == KindAck {
			acks = append(acks, id)
		}
	}
	authority(acks, nil)
	for _, id := range acks {
		for rid, R := range o.ops {
			if eff[rid] && R.Kind == KindRemove && R.Member == o.ops[id].Author && o.concurrent(rid, id) {
				eff[id] = false
			}
		}
	}
	var all []OpID
	for _, id := range o.order {
		if eff[id] {
			all = append(all, id)
		}
	}
	return eff, o.membersOf(all)
}
