package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"sync/atomic"
	"time"

	"github.com/p2pchat/p2pchat/node"
)

// runCatchUp reproduces node/bench_test.go BenchmarkCatchUp: a and s (in
// memory) and c (on disk) form a group; c stops; a and s send cfg.catchupMsgs
// messages between them; c restarts from its directory. Measured: from the
// restart (node.New) to c having shown every missed message decrypted.
func runCatchUp(cfg *config, res *results, _ *plotData) {
	const sec = "Offline catch-up (loopback TCP, receiver on disk)"
	var took []time.Duration
	var lastErr error
	var sendTook time.Duration
	for i := 0; i < cfg.catchupRuns; i++ {
		d, st, err := measureCatchUp(cfg.catchupMsgs)
		if err != nil {
			lastErr = err
			logf("catch-up run %d: %v", i, err)
			continue
		}
		took = append(took, d)
		sendTook = st
		logf("catch-up run %d: %v", i, d.Round(time.Millisecond))
	}
	label := fmt.Sprintf("%d messages: restart → all shown", cfg.catchupMsgs)
	if len(took) == 0 {
		res.fail(sec, label, lastErr)
		return
	}
	t := sortedCopy(took)
	worst := ms(t[len(t)-1])
	r := row{Section: sec, Metric: label + " (worst run)", Unit: "ms", Raw: math.NaN(), P2P: worst, Verdict: verdict(worst <= 3000),
		Note: fmt.Sprintf("%d runs, median %.0f ms; sending them took %v", len(t), ms(pct(t, .5)), sendTook.Round(time.Millisecond))}
	if cfg.catchupMsgs == 10000 {
		r.Target = "≤ 3000 ms"
	} else {
		r.Verdict = ""
	}
	if lastErr != nil {
		r.Note += "; a run failed: " + lastErr.Error()
	}
	res.add(r)
}

func measureCatchUp(missed int) (took, sendTook time.Duration, err error) {
	dir, err := os.MkdirTemp("", "p2pchat-bench-catchup-")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	var nodes []*pnode
	defer func() { closeAll(nodes, (*pnode).close) }()
	for _, d := range []string{"", "", dir} {
		p, err := newLoopbackNode(d, node.DefaultParams(), false)
		if err != nil {
			return 0, 0, err
		}
		nodes = append(nodes, p)
	}
	a, s, c := nodes[0], nodes[1], nodes[2]
	if err := connectHosts(hostsOf(nodes)); err != nil {
		return 0, 0, err
	}
	gid, err := formGroup(nodes, 30*time.Second)
	if err != nil {
		return 0, 0, err
	}
	c.close()
	nodes = nodes[:2]
	ga, gs := mustGroup(a, gid), mustGroup(s, gid)
	t0 := time.Now()
	for j := 0; j < missed/2; j++ {
		for _, g := range []*node.Group{ga, gs} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := g.Send(ctx, fmt.Sprintf("catch-up %d from %s", j, g.Node().ID().ShortString()))
			cancel()
			if err != nil {
				return 0, 0, fmt.Errorf("send: %w", err)
			}
		}
	}
	sendTook = time.Since(t0)
	time.Sleep(time.Second) // let a and s finish exchanging what they sent

	var shown atomic.Int64
	seen := make(map[string]bool, missed) // touched only by the event goroutine
	handler := func(e node.Event) {
		if e.Group != gid || e.Message == nil || e.Message.Status != node.StatusOK {
			return
		}
		if e.Kind != node.EventMessage && e.Kind != node.EventMessageDecrypted {
			return
		}
		if id := e.Message.ID(); !seen[id] {
			seen[id] = true
			shown.Add(1)
		}
	}
	start := time.Now()
	c2, err := newLoopbackNodeH(dir, node.DefaultParams(), false, handler)
	if err != nil {
		return 0, sendTook, fmt.Errorf("restart: %w", err)
	}
	nodes = append(nodes, c2)
	if err := connectHosts(hostsOf(nodes)); err != nil {
		return 0, sendTook, err
	}
	if err := waitFor(120*time.Second, "catch-up", func() bool { return shown.Load() >= int64(missed) }); err != nil {
		return 0, sendTook, fmt.Errorf("%w (%d of %d shown)", err, shown.Load(), missed)
	}
	return time.Since(start), sendTook, nil
}
