package main

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/roster"
)

// rotationPoint is the result for one group size.
type rotationPoint struct {
	size      int // members holding the new key after the removal
	transport string
	took      []time.Duration
	transfers []float64 // per rotation, summed over every node
	requests  []float64 // key requests published per rotation, summed
	setup     time.Duration
	form      time.Duration
	err       error
}

// runRotation measures, for each group size n, the time from an admin's
// Remove call to every one of the n remaining members (admin included)
// holding the new key, and the key transfers sent in that window by all
// nodes. The group has n+1 members before the removal; after each sample
// the removed member is re-added and rejoins (not timed).
func runRotation(cfg *config, res *results, plots *plotData) {
	const sec = "Rotation after a removal"
	for _, size := range cfg.rotationSizes {
		pt := measureRotation(size, "mocknet", cfg.rotationSamples(size), cfg.rotationExtra)
		plots.rotation = append(plots.rotation, pt)
		reportRotation(res, sec, pt)
	}
	for _, size := range cfg.rotationLoopback {
		pt := measureRotation(size, "loopback", cfg.rotationSamples(size), -1)
		plots.rotation = append(plots.rotation, pt)
		reportRotation(res, sec, pt)
	}
}

func reportRotation(res *results, sec string, pt rotationPoint) {
	label := fmt.Sprintf("%d members (%s)", pt.size, pt.transport)
	if pt.err != nil && len(pt.took) == 0 {
		res.fail(sec, label, pt.err)
		return
	}
	took := sortedCopy(pt.took)
	nan := math.NaN()
	isTarget := pt.size == 100 && pt.transport == "mocknet"
	r1 := row{Section: sec, Metric: label + ": removal → all hold new key, p50", Unit: "ms", Raw: nan, P2P: ms(pct(took, .5)),
		Note: fmt.Sprintf("%d samples; group formed in %v (connect %v)", len(took), pt.form.Round(10*time.Millisecond), pt.setup.Round(10*time.Millisecond))}
	r2 := row{Section: sec, Metric: label + ": removal → all hold new key, max", Unit: "ms", Raw: nan, P2P: ms(took[len(took)-1])}
	maxT := 0.0
	for _, t := range pt.transfers {
		maxT = max(maxT, t)
	}
	bound := 1.1 * float64(pt.size-1)
	r3 := row{Section: sec, Metric: label + ": key transfers per rotation (max)", Raw: nan, P2P: maxT,
		Note: fmt.Sprintf("ideal n−1 = %d; mean %.1f; key requests per rotation %.1f", pt.size-1, mean(pt.transfers), mean(pt.requests))}
	if isTarget {
		r2.Target, r2.Verdict = "≤ 1000 ms", verdict(ms(took[len(took)-1]) <= 1000)
		r3.Target, r3.Verdict = fmt.Sprintf("≤ 1.1·(n−1) = %.1f", bound), verdict(maxT <= bound)
	}
	if pt.err != nil {
		r1.Note += "; stopped early: " + pt.err.Error()
	}
	res.add(r1)
	res.add(r2)
	res.add(r3)
}

func measureRotation(size int, transport string, samples, extra int) (pt rotationPoint) {
	pt = rotationPoint{size: size, transport: transport}
	logf("rotation %d members (%s): starting %d nodes", size, transport, size+1)
	t0 := time.Now()
	var nodes []*pnode
	switch transport {
	case "mocknet":
		mc, err := newMockCluster(size+1, extra, node.DefaultParams())
		if err != nil {
			pt.err = err
			return pt
		}
		defer mc.close()
		nodes = mc.nodes
	default:
		for i := 0; i < size+1; i++ {
			p, err := newLoopbackNode("", node.DefaultParams(), false)
			if err != nil {
				pt.err = err
				closeAll(nodes, (*pnode).close)
				return pt
			}
			nodes = append(nodes, p)
		}
		defer closeAll(nodes, (*pnode).close)
		if err := connectHosts(hostsOf(nodes)); err != nil {
			pt.err = err
			return pt
		}
	}
	pt.setup = time.Since(t0)
	t0 = time.Now()
	gid, err := formGroup(nodes, 5*time.Minute)
	if err != nil {
		pt.err = fmt.Errorf("form group: %w", err)
		return pt
	}
	pt.form = time.Since(t0)
	logf("rotation %d members (%s): group formed in %v", size, transport, pt.form.Round(time.Millisecond))
	time.Sleep(time.Duration(2+size/100) * time.Second) // post-join resyncs (MeshSettle) finish

	admin, spare := nodes[0], nodes[size]
	remaining := nodes[:size]
	ag := mustGroup(admin, gid)
	ctx := context.Background()
	sumStats := func() (transfers, requests uint64) {
		for _, n := range nodes {
			st := n.Stats()
			transfers += st.KeyTransfersSent
			requests += st.KeyRequestsSent
		}
		return
	}
	for i := 0; i < samples; i++ {
		tBefore, rBefore := sumStats()
		adminBefore := admin.Stats().KeyTransfersSent
		start := time.Now()
		if err := withTimeout(30*time.Second, func(ctx context.Context) error { return ag.Remove(ctx, spare.ID()) }); err != nil {
			pt.err = fmt.Errorf("remove: %w", err)
			return pt
		}
		key := ag.SendingKeyID()
		holds := make([]bool, len(remaining))
		left := len(remaining)
		var took time.Duration
		deadline := start.Add(60 * time.Second)
		for left > 0 {
			for j, n := range remaining {
				if !holds[j] && mustGroup(n, gid).HasKey(key) {
					holds[j] = true
					left--
				}
			}
			if left == 0 {
				took = time.Since(start)
				break
			}
			if time.Now().After(deadline) {
				pt.err = fmt.Errorf("sample %d: %d of %d members still lack the new key after 60 s", i, left, len(remaining))
				return pt
			}
			time.Sleep(2 * time.Millisecond)
		}
		pt.took = append(pt.took, took)
		// Let acknowledgements and any late transfers or requests land.
		_ = waitFor(10*time.Second, "transfers acknowledged", func() bool {
			return admin.Stats().KeyTransfersSent-adminBefore >= uint64(size-1)
		})
		time.Sleep(500 * time.Millisecond)
		tAfter, rAfter := sumStats()
		pt.transfers = append(pt.transfers, float64(tAfter-tBefore))
		pt.requests = append(pt.requests, float64(rAfter-rBefore))
		logf("rotation %d members (%s): sample %d: %v, %d transfers", size, transport, i, took.Round(100*time.Microsecond), tAfter-tBefore)
		if i == samples-1 {
			break
		}
		// Re-add the removed member for the next sample (not timed).
		if err := withTimeout(30*time.Second, func(ctx context.Context) error { return ag.Add(ctx, spare.ID(), roster.RoleMember) }); err != nil {
			pt.err = fmt.Errorf("re-add: %w", err)
			return pt
		}
		jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := spare.JoinGroup(jctx, gid, addrInfo(admin.Host()))
		cancel()
		if err != nil {
			pt.err = fmt.Errorf("rejoin: %w", err)
			return pt
		}
		if err := waitMesh(nodes, gid, 60*time.Second); err != nil {
			pt.err = fmt.Errorf("after re-add: %w", err)
			return pt
		}
		time.Sleep(300 * time.Millisecond)
	}
	slices.Sort(pt.took)
	return pt
}
