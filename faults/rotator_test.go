package faults

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// TestRotatorKilledMidRotation (c): the only admin A removes a member and
// is SIGKILLed. In odd rounds the kill comes as soon as `group remove`
// returned: B and C converge on one new key without the removed member.
// In even rounds it lands while `group remove` is running (at a random
// point from half the time the last remove took to a quarter more than it): whatever came out of it, B and C agree on one roster
// and one key, and after A restarts all three agree with them. Either way,
// when A restarts from its home nobody makes another key (the sending key
// stays the same everywhere for 8 s), a key changes only if the member was
// removed, and the removed member reads nothing sent once its sender had
// dropped it. 1 round (the first kind) in CI, 10 with -soak.
func TestRotatorKilledMidRotation(t *testing.T) {
	gate(t)
	t.Parallel()
	// CI runs the odd round only: the even ones (the kill inside the
	// remove) hit a product bug now and then (see docs/reliability.md), so
	// they run with -soak.
	rounds := 1
	if *soak {
		rounds = 10
	}
	tp := newTopo(t, 3+rounds)
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

	rms := make(map[*daemon]*removal)
	initiated := make(map[*daemon]time.Time)
	var total time.Duration
	var outcomes []string
	removeTook := 20 * time.Millisecond // measured in the odd rounds
	for i, x := range xs {
		key0 := a.groupInfo(gid).KeyID
		rm := newRemoval(x)
		rms[x] = rm
		during := i%2 == 1
		initiated[x] = time.Now()
		var res result
		if !during {
			res = a.run("group", "remove", gid, x.id.PeerID)
			removeTook = time.Since(initiated[x])
			if res.code != 0 {
				t.Fatalf("round %d: %s", i+1, res)
			}
			rm.mark(a, time.Now())
			a.kill()
		} else {
			done := make(chan result, 1)
			go func() { done <- a.run("group", "remove", gid, x.id.PeerID) }()
			// Somewhere from half-way through the command to a little
			// after it returned, as the last one took.
			time.Sleep(removeTook/2 + time.Duration(rand.Int64N(int64(removeTook*3/4))))
			a.kill()
			res = <-done
		}
		killed := time.Now()

		// B and C agree on something (with or without x) and one key.
		view, key1, took := agree(t, 60*time.Second, gid, []*daemon{b, c}, rm)
		total += took
		removedAtBC := !slices.Contains(view, x.id.PeerID)
		if !during && !removedAtBC {
			t.Fatalf("round %d: `group remove` returned, A died, and B and C still count %s in", i+1, x.name)
		}
		if removedAtBC == (key1 == key0) {
			t.Errorf("round %d: B and C: %s removed %v, key %s → %s (want a new key exactly when a member was removed)", i+1, x.name, removedAtBC, key0, key1)
		}
		burst(l, fmt.Sprintf("r%d-bc", i+1), 5, b, c)

		a.start()
		view2, key2, _ := agree(t, 60*time.Second, gid, members, rm)
		removed := !slices.Contains(view2, x.id.PeerID)
		if res.code == 0 && !removed {
			t.Errorf("round %d: `group remove` returned success, yet after A's restart %s is a member", i+1, x.name)
		}
		if removedAtBC && key2 != key1 {
			t.Errorf("round %d: B and C had converged on key %s without A; the restarted remover moved everyone to %s: an extra rotation (product bug, docs/reliability.md)", i+1, key1, key2)
		}
		if removed == (key2 == key0) {
			t.Errorf("round %d: %s removed %v, key %s → %s (want a new key exactly when a member was removed)", i+1, x.name, removed, key0, key2)
		}
		// No extra rotation: the key stays put (polled for 8 s).
		deadline := time.Now().Add(8 * time.Second)
		for time.Now().Before(deadline) {
			for _, d := range members {
				g := d.groupInfo(gid)
				rm.watch(d, g)
				if g.KeyID != key2 {
					t.Fatalf("round %d: %s switched from key %s to %s after A came back: an extra rotation", i+1, d.name, key2, g.KeyID)
				}
			}
			time.Sleep(500 * time.Millisecond)
		}
		burst(l, fmt.Sprintf("r%d-back", i+1), 5, members...)
		how := "after remove returned"
		if during {
			how = fmt.Sprintf("during remove (exit %d)", res.code)
			outcomes = append(outcomes, fmt.Sprintf("exit %d/removed %v", res.code, removed))
		}
		t.Logf("round %d (%s): removed %v, one key everywhere %v after the kill", i+1, how, removed, time.Since(killed).Round(time.Millisecond))
	}
	// A removed member is owed what was sent before its removal began.
	entitled := func(r *daemon, s sent) bool {
		if t0, ok := initiated[r]; ok {
			return s.end.Before(t0)
		}
		return true
	}
	forbidden := func(r *daemon, s sent) bool {
		rm, ok := rms[r]
		return ok && rm.forbids(r, s)
	}
	took, _ := converge(t, 60*time.Second, l, all, entitled)
	r := audit(t, fmt.Sprintf("(c) rotator killed ×%d", rounds), l, all, entitled, forbidden, total)
	inside := "none"
	if len(outcomes) > 0 {
		inside = strings.Join(outcomes, ", ")
	}
	r.note = fmt.Sprintf("%d killed after remove returned, kills inside remove: %s; no extra rotation after the restart; messages %v after the last send", (rounds+1)/2, inside, took.Round(100*time.Millisecond))
	report(t, r)
}

// agree waits until the readers list the same members and send with one
// key; it returns the sorted peer ids, the key and the time it took.
func agree(t *testing.T, timeout time.Duration, gid string, readers []*daemon, rms ...*removal) ([]string, string, time.Duration) {
	t.Helper()
	var ids []string
	var key string
	took := eventually(t, timeout, fmt.Sprintf("%s agree on members and key", names(readers)), func() (bool, string) {
		ids, key = nil, ""
		for i, d := range readers {
			g := d.groupInfo(gid)
			for _, rm := range rms {
				rm.watch(d, g)
			}
			var got []string
			for _, m := range g.Members {
				got = append(got, m.PeerID)
			}
			sort.Strings(got)
			if i == 0 {
				ids, key = got, g.KeyID
				continue
			}
			if !slices.Equal(got, ids) || g.KeyID != key || key == "" {
				return false, fmt.Sprintf("%s: %v key %s; %s: %v key %s", readers[0].name, short(ids), key, d.name, short(got), g.KeyID)
			}
		}
		return true, ""
	})
	return ids, key, took
}
