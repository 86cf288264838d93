package roster

import (
	"maps"
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

func (o *oracle) resolve() (eff map[OpID]bool, members map[peer.ID]Role) {
	authority := func(F map[OpID]bool) map[OpID]bool {
		eff := map[OpID]bool{}
		for _, id := range o.order {
			op := o.ops[id]
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
		return eff
	}
	// filterOf adds to F what the effective removes of eff filter.
	filterOf := func(eff, F map[OpID]bool) bool {
		type edge struct {
			to peer.ID
			op OpID
		}
		edges := map[peer.ID][]edge{}
		for id := range eff {
			if op := o.ops[id]; eff[id] && op.Kind == KindRemove {
				edges[op.Author] = append(edges[op.Author], edge{op.Member, id})
			}
		}
		// reachable: from reaches to through effective removes outside the
		// causal past of op notBefore.
		reachable := func(from, to peer.ID, notBefore OpID) bool {
			seen := map[peer.ID]bool{from: true}
			stack := []peer.ID{from}
			for len(stack) > 0 {
				x := stack[len(stack)-1]
				stack = stack[:len(stack)-1]
				if x == to {
					return true
				}
				for _, e := range edges[x] {
					if !seen[e.to] && !o.before(e.op, notBefore) {
						seen[e.to] = true
						stack = append(stack, e.to)
					}
				}
			}
			return false
		}
		grew := false
		for rid := range eff {
			R := o.ops[rid]
			if !eff[rid] || R.Kind != KindRemove {
				continue
			}
			for oid, op := range o.ops {
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
	// Recompute F from the last round's effective removes until it settles;
	// if it never does, the monotone variant (F only grows) decides.
	F := map[OpID]bool{}
	converged := false
	for round := 0; round < len(o.order)+3; round++ {
		eff = authority(F)
		next := map[OpID]bool{}
		filterOf(eff, next)
		if maps.Equal(next, F) {
			converged = true
			break
		}
		F = next
	}
	if !converged {
		F = map[OpID]bool{}
		for {
			eff = authority(F)
			if !filterOf(eff, F) {
				break
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
