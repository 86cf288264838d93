package faults

import (
	"fmt"
	"testing"
	"time"
)

// TestOfflineThroughRotations (d): C is stopped while the admin removes
// X1, the group talks, the admin removes X2 and the group talks again (two
// rotations, some hundreds of messages: 300 in CI, 1500 with -soak). C
// comes back and catches up everything it is entitled to (all of it: it is
// still a member); X1 and X2 read nothing sent once their sender dropped
// them.
func TestOfflineThroughRotations(t *testing.T) {
	gate(t)
	t.Parallel()
	per := 75 // per sender per phase: 2 phases × 2 senders × 75 = 300
	if *soak {
		per = 375
	}
	tp := newTopo(t, 5)
	a := newDaemon(t, tp, 1, "A", "", nil)
	b := newDaemon(t, tp, 2, "B", "", nil)
	c := newDaemon(t, tp, 3, "C", "", nil)
	x1 := newDaemon(t, tp, 4, "X1", "", nil)
	x2 := newDaemon(t, tp, 5, "X2", "", nil)
	all := []*daemon{a, b, c, x1, x2}
	gid := formGroup(t, "offline", all...)
	l := &ledger{gid: gid}
	burst(l, "before", 3, all...)
	converge(t, 60*time.Second, l, all, everyone)
	key0 := c.groupInfo(gid).KeyID

	c.stop()
	rm1, rm2 := newRemoval(x1), newRemoval(x2)
	a.mustRun("group", "remove", gid, x1.id.PeerID)
	rm1.mark(a, time.Now())
	key1, _ := waitRoster(t, 60*time.Second, gid, []*daemon{a, b, x2}, []*daemon{a, b, c, x2}, rm1)
	burst(l, "phase1", per, a, b)
	a.mustRun("group", "remove", gid, x2.id.PeerID)
	rm2.mark(a, time.Now())
	key2, _ := waitRoster(t, 60*time.Second, gid, []*daemon{a, b}, []*daemon{a, b, c}, rm1, rm2)
	if key0 == key1 || key1 == key2 {
		t.Fatalf("keys %s, %s, %s: want two rotations", key0, key1, key2)
	}
	burst(l, "phase2", per, a, b)

	c.start()
	back := time.Now()
	stay := []*daemon{a, b, c}
	// X1 and X2 are entitled to what was sent before their removal.
	entitled := func(r *daemon, s sent) bool {
		switch r {
		case x1:
			return s.end.Before(rm1.cutoffOf(a))
		case x2:
			return s.end.Before(rm2.cutoffOf(a))
		}
		return true
	}
	took, _ := converge(t, 120*time.Second, l, stay, entitled)
	waitRoster(t, 30*time.Second, gid, stay, stay, rm1, rm2)
	if k := c.groupInfo(gid).KeyID; k != key2 {
		t.Errorf("C sends with %s after catching up, the others with %s", k, key2)
	}
	converge(t, 60*time.Second, l, []*daemon{x1, x2}, entitled)
	r := audit(t, "(d) offline through 2 rotations", l, all, entitled, anyOf(rm1.forbids, rm2.forbids), took)
	r.note = fmt.Sprintf("C caught up %d messages %v after its restart", len(l.snapshot()), time.Since(back).Round(100*time.Millisecond))
	report(t, r)
}
