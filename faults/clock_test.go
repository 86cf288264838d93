package faults

import (
	"fmt"
	"testing"
	"time"
)

// TestClockOffset (h): C's clock is 2 h behind (P2PCHAT_TEST_CLOCK_OFFSET
// =-2h), D's 3 h ahead (+3h). Both are stopped while the admin removes X
// (a rotation) and A and B talk under the new key. C and D come back, get
// the key they missed (the suite sees only the outcome; the product's way
// for a member that was offline is the key request) and read everything;
// what they send
// then reaches A and B, stamped with their skewed clocks; X reads nothing
// sent once its sender dropped it.
func TestClockOffset(t *testing.T) {
	gate(t)
	t.Parallel()
	per := 20
	if *soak {
		per = 200
	}
	tp := newTopo(t, 5)
	a := newDaemon(t, tp, 1, "A", "", nil)
	b := newDaemon(t, tp, 2, "B", "", nil)
	c := newDaemon(t, tp, 3, "C", "", []string{"P2PCHAT_TEST_CLOCK_OFFSET=-2h"})
	d := newDaemon(t, tp, 4, "D", "", []string{"P2PCHAT_TEST_CLOCK_OFFSET=3h"})
	x := newDaemon(t, tp, 5, "X", "", nil)
	all := []*daemon{a, b, c, d, x}
	stay := []*daemon{a, b, c, d}
	offset := map[*daemon]time.Duration{c: -2 * time.Hour, d: 3 * time.Hour}
	gid := formGroup(t, "clock", all...)
	l := &ledger{gid: gid}
	burst(l, "before", 3, all...)
	converge(t, 60*time.Second, l, all, everyone)

	c.stop()
	d.stop()
	rm := newRemoval(x)
	a.mustRun("group", "remove", gid, x.id.PeerID)
	rm.mark(a, time.Now())
	key, _ := waitRoster(t, 60*time.Second, gid, []*daemon{a, b}, stay, rm)
	burst(l, "rotated", per, a, b)

	c.start()
	d.start()
	entitled := func(r *daemon, s sent) bool { return r != x || s.end.Before(rm.cutoffOf(a)) }
	took, _ := converge(t, 120*time.Second, l, stay, entitled)
	if k, _ := waitRoster(t, 60*time.Second, gid, stay, stay, rm); k != key {
		t.Errorf("the group moved from key %s to %s when the skewed members came back", key, k)
	}
	burst(l, "skewed", 5, c, d)
	converge(t, 60*time.Second, l, all, entitled)
	// Their stamps show their clocks.
	for _, m := range a.messages(gid) {
		for _, s := range []*daemon{c, d} {
			if m.Sender != s.id.PeerID || m.Status != "ok" {
				continue
			}
			at, err := time.Parse(time.RFC3339Nano, m.SentAt)
			if err != nil {
				t.Fatalf("sent_at %q: %v", m.SentAt, err)
			}
			if skew := time.Until(at) - offset[s]; skew < -30*time.Minute || skew > 5*time.Minute {
				t.Errorf("%s's %q stamped %v: not %v off", s.name, m.Text, at, offset[s])
			}
		}
	}
	r := audit(t, "(h) clock −2h and +3h, rotation missed", l, all, entitled, rm.forbids, took)
	r.note = fmt.Sprintf("C (−2h) and D (+3h) read the %d messages under the key they missed %v after restart", 2*per, took.Round(100*time.Millisecond))
	report(t, r)
}
