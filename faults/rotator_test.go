package faults

import (
	"fmt"
	"testing"
	"time"
)

// TestRotatorKilledMidRotation (c): the only admin A removes X and is
// SIGKILLed as soon as `group remove` returns. B and C converge on one new
// key without X; X reads nothing B and C send once they dropped it; when A
// restarts from its home it takes that key and nobody makes another (the
// sending key stays the same everywhere for a while after).
func TestRotatorKilledMidRotation(t *testing.T) {
	gate(t)
	t.Parallel()
	rounds := 1
	if *soak {
		rounds = 3
	}
	tp := newTopo(t, 4+rounds-1)
	a := newDaemon(t, tp, 1, "A", "", nil)
	b := newDaemon(t, tp, 2, "B", "", nil)
	c := newDaemon(t, tp, 3, "C", "", nil)
	var xs []*daemon
	for i := 0; i < rounds; i++ {
		xs = append(xs, newDaemon(t, tp, 4+i, fmt.Sprintf("X%d", i+1), "", nil))
	}
	members := []*daemon{a, b, c}
	all := append(append([]*daemon{}, members...), xs...)
	gid := formGroup(t, "rotator", all...)
	l := &ledger{gid: gid}
	burst(l, "before", 3, all...)
	converge(t, 60*time.Second, l, all, everyone)
	var rms []*removal
	var total time.Duration
	for i, x := range xs {
		key0 := a.groupInfo(gid).KeyID
		rm := newRemoval(x)
		rms = append(rms, rm)
		a.mustRun("group", "remove", gid, x.id.PeerID)
		rm.mark(a, time.Now())
		a.kill()
		killed := time.Now()

		rest := append([]*daemon{a}, members[1:]...)
		rest = append(rest, xs[i+1:]...)
		key1, took := waitRoster(t, 60*time.Second, gid, []*daemon{b, c}, rest, rm)
		total += took
		if key1 == key0 {
			t.Fatalf("round %d: B and C still send with the key X%d held (%s)", i+1, i+1, key1)
		}
		burst(l, fmt.Sprintf("rotated%d", i+1), 5, b, c)

		a.start()
		key2, _ := waitRoster(t, 60*time.Second, gid, append([]*daemon{a}, members[1:]...), rest, rm)
		if key2 != key1 {
			t.Errorf("round %d: the restarted remover moved everyone from key %s to %s (an extra rotation)", i+1, key1, key2)
		}
		// No extra rotation: the key stays put for a while (polled).
		deadline := time.Now().Add(8 * time.Second)
		for time.Now().Before(deadline) {
			for _, d := range members {
				if k := d.groupInfo(gid).KeyID; k != key2 {
					t.Fatalf("round %d: %s switched from key %s to %s after A came back: an extra rotation", i+1, d.name, key2, k)
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
		burst(l, fmt.Sprintf("back%d", i+1), 5, members...)
		t.Logf("round %d: converged %v after the kill", i+1, time.Since(killed).Round(time.Millisecond))
	}
	ix := func(d *daemon) int {
		for i, x := range xs {
			if x == d {
				return i
			}
		}
		return -1
	}
	entitled := func(r *daemon, s sent) bool {
		i := ix(r)
		if i < 0 {
			return true
		}
		// X(i) is entitled to what was done before its removal.
		return s.end.Before(rms[i].cutoffOf(a))
	}
	forbidden := func(r *daemon, s sent) bool {
		for _, rm := range rms {
			if rm.forbids(r, s) {
				return true
			}
		}
		return false
	}
	took, _ := converge(t, 60*time.Second, l, all, entitled)
	r := audit(t, fmt.Sprintf("(c) rotator killed ×%d", rounds), l, all, entitled, forbidden, total)
	r.note = fmt.Sprintf("B, C on one new key without X; same key after A's restart; messages %v after the last send", took.Round(100*time.Millisecond))
	report(t, r)
}
