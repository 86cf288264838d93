package faults

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPartitionRemovalsHeal (b): six members split 3|3 (A B X | C D Y);
// on A's side the admin A removes X, on the other side Y leaves; both sides
// talk; the partition heals. The rosters converge on A B C D with one key,
// every accepted message reaches every member entitled to it, and neither X
// nor Y reads anything a sender sent after that sender had applied its
// removal. The split lasts 40 s (3 min with -soak), and the daemons
// reconnect by themselves (nobody runs connect after the heal).
func TestPartitionRemovalsHeal(t *testing.T) {
	gate(t)
	t.Parallel()
	// Long enough for the connections across the cut to die (yamux keeps
	// alive every 30 s), so the heal needs new ones.
	perPhase, hold := 10, 40*time.Second
	if *soak {
		perPhase, hold = 60, 3*time.Minute
	}
	tp := newTopo(t, 6)
	a := newDaemon(t, tp, 1, "A", "", nil)
	b := newDaemon(t, tp, 2, "B", "", nil)
	x := newDaemon(t, tp, 3, "X", "", nil)
	c := newDaemon(t, tp, 4, "C", "", nil)
	d := newDaemon(t, tp, 5, "D", "", nil)
	y := newDaemon(t, tp, 6, "Y", "", nil)
	all := []*daemon{a, b, x, c, d, y}
	stay := []*daemon{a, b, c, d}
	gid := formGroup(t, "partition", all...)
	l := &ledger{gid: gid}
	burst(l, "before", 3, all...)
	if took, ok := converge(t, 60*time.Second, l, all, everyone); !ok {
		t.Fatalf("no convergence before the partition (%v)", took)
	}
	cut := time.Now()

	heal := tp.partition([]int{1, 2, 3}, []int{4, 5, 6})
	rmX, rmY := newRemoval(x), newRemoval(y)
	a.mustRun("group", "remove", gid, x.id.PeerID)
	rmX.mark(a, time.Now())
	y.mustRun("group", "leave", gid)
	waitRoster(t, 60*time.Second, gid, []*daemon{a, b}, []*daemon{a, b, c, d, y}, rmX, rmY)
	waitRoster(t, 60*time.Second, gid, []*daemon{c, d}, []*daemon{a, b, x, c, d}, rmX, rmY)
	paced(l, "split", hold, 500*time.Millisecond, stay...)

	// The cut was real: nothing crossed it.
	for _, m := range c.messages(gid) {
		if m.Sender == a.id.PeerID && strings.HasPrefix(m.Text, "split") {
			t.Fatalf("the partition leaked: C has %q from A", m.Text)
		}
	}
	heal()
	healed := time.Now()
	_, rosterTook := waitRoster(t, 120*time.Second, gid, stay, stay, rmX, rmY)
	burst(l, "healed", perPhase, stay...)

	before := func(s sent) bool { return s.end.Before(cut) }
	entitled := func(r *daemon, s sent) bool {
		if r == x || r == y {
			return before(s)
		}
		return true
	}
	forbidden := anyOf(rmX.forbids, rmY.forbids)
	took, _ := converge(t, 120*time.Second, l, all, entitled)
	r := audit(t, "(b) partition 3 vs 3, removals", l, all, entitled, forbidden, time.Since(healed))
	r.note = fmt.Sprintf("rosters converged %v after the heal; messages %v after the last send", rosterTook.Round(100*time.Millisecond), took.Round(100*time.Millisecond))
	report(t, r)
	for _, g := range []*daemon{x, y} {
		info := g.groupInfo(gid)
		if slices.ContainsFunc(info.Members, func(m member) bool { return m.PeerID == g.id.PeerID }) && !info.Left {
			t.Errorf("%s still counts itself a member: %+v", g.name, info)
		}
	}
}
