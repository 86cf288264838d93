package faults

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestKillMidBurst (a): three members send in a loop while one of them is
// SIGKILLed and restarted N times (5; 20 with -soak). Every send that
// returned success reaches all three, once each, in sender order.
func TestKillMidBurst(t *testing.T) {
	gate(t)
	t.Parallel()
	n := 5
	if *soak {
		n = 20
	}
	tp := newTopo(t, 3)
	a := newDaemon(t, tp, 1, "A", "", nil)
	b := newDaemon(t, tp, 2, "B", "", nil)
	c := newDaemon(t, tp, 3, "C", "", nil)
	ds := []*daemon{a, b, c}
	gid := formGroup(t, "kill", ds...)
	l := &ledger{gid: gid}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var bSends atomic.Int64
	for _, d := range ds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; !stop.Load(); i++ {
				if r := l.send(d, fmt.Sprintf("burst %s %d", d.name, i)); r.code != 0 {
					time.Sleep(50 * time.Millisecond) // B is down
				} else if d == b {
					bSends.Add(1)
				}
			}
		}()
	}
	for k := 0; k < n; k++ {
		// Let B accept a few sends and take a few in, then kill it.
		base := bSends.Load()
		eventually(t, 30*time.Second, fmt.Sprintf("kill %d: B accepts sends", k+1), func() (bool, string) {
			return bSends.Load() >= base+10, fmt.Sprint(bSends.Load()-base, " sends")
		})
		b.kill()
		b.start()
	}
	stop.Store(true)
	wg.Wait()
	took, _ := converge(t, 90*time.Second, l, ds, everyone)
	r := audit(t, fmt.Sprintf("(a) SIGKILL mid-burst ×%d", n), l, ds, everyone, nobody, took)
	r.note = fmt.Sprintf("%d sends failed while B was down", l.failed)
	report(t, r)
}
