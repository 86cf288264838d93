package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/roster"
)

// A side is one of the two systems under comparison: a cluster in which
// node 0 sends and every other node receives.
type side interface {
	send(ctx context.Context, payload string) error
	receivers() int
	// setSink installs the function receivers report deliveries to; recv is
	// the receiver's index (0..receivers()-1).
	setSink(fn func(recv int, payload string, at time.Time))
	close()
}

// payload builds a message of exactly size bytes: run and index, then
// padding. Both sides send the same bytes (p2pchat as the message text).
func payload(run, idx, size int) string {
	h := fmt.Sprintf("%02d%08d", run, idx)
	if size <= len(h) {
		return h
	}
	return h + strings.Repeat("x", size-len(h))
}

func parsePayload(p string) (run, idx int, ok bool) {
	if len(p) < 10 {
		return 0, 0, false
	}
	r, err1 := strconv.Atoi(p[:2])
	i, err2 := strconv.Atoi(p[2:10])
	return r, i, err1 == nil && err2 == nil
}

// ---------------------------------------------------------------------------
// raw GossipSub side

type rawSide struct {
	nodes  []*rawNode
	sink   atomic.Pointer[func(int, string, time.Time)]
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newRawSide(n int, settle time.Duration) (*rawSide, error) {
	return newRawSideOpts(n, settle, false)
}

func newRawSideOpts(n int, settle time.Duration, signed bool) (*rawSide, error) {
	s := &rawSide{}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	for i := 0; i < n; i++ {
		r, err := newRawNodeOpts(signed)
		if err != nil {
			return nil, err
		}
		s.nodes = append(s.nodes, r)
	}
	if err := connectHosts(rawHosts(s.nodes)); err != nil {
		return nil, err
	}
	topic := "/bench/raw/" + strconv.FormatInt(time.Now().UnixNano(), 36)
	for _, r := range s.nodes {
		if err := r.join(topic); err != nil {
			return nil, err
		}
	}
	if err := waitFor(30*time.Second, "raw topic peers", func() bool {
		for _, r := range s.nodes {
			if len(r.topic.ListPeers()) < n-1 {
				return false
			}
		}
		return true
	}); err != nil {
		return nil, err
	}
	var ctx context.Context
	ctx, s.cancel = context.WithCancel(context.Background())
	for i, r := range s.nodes[1:] {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			self := r.h.ID()
			for {
				m, err := r.sub.Next(ctx)
				if err != nil {
					return
				}
				at := time.Now()
				if m.ReceivedFrom == self {
					continue
				}
				if fn := s.sink.Load(); fn != nil {
					(*fn)(i, string(m.Data), at)
				}
			}
		}()
	}
	time.Sleep(settle)
	ok = true
	return s, nil
}

func (s *rawSide) send(ctx context.Context, p string) error {
	return s.nodes[0].topic.Publish(ctx, []byte(p))
}
func (s *rawSide) receivers() int { return len(s.nodes) - 1 }
func (s *rawSide) setSink(fn func(int, string, time.Time)) {
	s.sink.Store(&fn)
}
func (s *rawSide) close() {
	if s.cancel != nil {
		s.cancel()
	}
	for _, r := range s.nodes {
		if r.sub != nil {
			r.sub.Cancel()
		}
	}
	s.wg.Wait()
	closeAll(s.nodes, (*rawNode).close)
}

// ---------------------------------------------------------------------------
// p2pchat side

type p2pSide struct {
	nodes []*pnode
	gid   roster.GroupID
	group *node.Group
	sink  atomic.Pointer[func(int, string, time.Time)]
	dirs  []string
}

// newP2PSide starts n p2pchat nodes that each create their own loopback TCP
// host (node.Config.ListenAddrs), connects them all, forms one group of all
// of them and lets it settle. disk gives every node an on-disk store.
func newP2PSide(n int, disk bool, settle time.Duration) (*p2pSide, error) {
	return newP2PSideParams(n, disk, settle, node.DefaultParams())
}

// newP2PSideParams is newP2PSide with the nodes' Params given.
func newP2PSideParams(n int, disk bool, settle time.Duration, params node.Params) (*p2pSide, error) {
	s := &p2pSide{}
	ok := false
	defer func() {
		if !ok {
			s.close()
		}
	}()
	for i := 0; i < n; i++ {
		dir := ""
		if disk {
			d, err := os.MkdirTemp("", "p2pchat-bench-")
			if err != nil {
				return nil, err
			}
			dir = d
			s.dirs = append(s.dirs, d)
		}
		p, err := newLoopbackNode(dir, params, false)
		if err != nil {
			return nil, err
		}
		s.nodes = append(s.nodes, p)
	}
	if err := connectHosts(hostsOf(s.nodes)); err != nil {
		return nil, err
	}
	gid, err := formGroup(s.nodes, 60*time.Second)
	if err != nil {
		return nil, err
	}
	s.gid = gid
	s.group = mustGroup(s.nodes[0], gid)
	sender := s.nodes[0].ID()
	for i, p := range s.nodes[1:] {
		p.setHandler(func(e node.Event) {
			if e.Group != gid || e.Message == nil || e.Message.Sender != sender || e.Message.Status != node.StatusOK {
				return
			}
			if e.Kind != node.EventMessage && e.Kind != node.EventMessageDecrypted {
				return
			}
			if fn := s.sink.Load(); fn != nil {
				(*fn)(i, e.Message.Text, e.Time)
			}
		})
	}
	time.Sleep(settle)
	ok = true
	return s, nil
}

func (s *p2pSide) send(ctx context.Context, p string) error {
	_, err := s.group.Send(ctx, p)
	return err
}
func (s *p2pSide) receivers() int { return len(s.nodes) - 1 }
func (s *p2pSide) setSink(fn func(int, string, time.Time)) {
	s.sink.Store(&fn)
}
func (s *p2pSide) close() {
	closeAll(s.nodes, (*pnode).close)
	for _, d := range s.dirs {
		_ = os.RemoveAll(d)
	}
}

// ---------------------------------------------------------------------------
// one run: one sender, every other node receives

type deliveryRun struct {
	msgs, recvs int
	sendAt      []time.Time
	sendTook    []time.Duration
	mu          sync.Mutex
	recv        [][]time.Time // [receiver][msg]
	delivered   atomic.Int64
	dups        atomic.Int64
	all         chan struct{}
	sendErrs    int
}

func (d *deliveryRun) latencies() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []time.Duration
	for _, r := range d.recv {
		for i, t := range r {
			if !t.IsZero() && !d.sendAt[i].IsZero() {
				out = append(out, t.Sub(d.sendAt[i]))
			}
		}
	}
	return out
}

// span is from the first send to the last delivery.
func (d *deliveryRun) span() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var last time.Time
	for _, r := range d.recv {
		for _, t := range r {
			if t.After(last) {
				last = t
			}
		}
	}
	if last.IsZero() {
		return 0
	}
	return last.Sub(d.sendAt[0])
}

func (d *deliveryRun) fraction() float64 {
	return float64(d.delivered.Load()) / float64(d.msgs*d.recvs)
}

func (d *deliveryRun) throughput() float64 {
	sp := d.span()
	if sp <= 0 {
		return math.NaN()
	}
	return float64(d.delivered.Load()) / sp.Seconds()
}

// deliver sends msgs messages of size bytes from node 0, one every interval
// (0: back to back), and waits until every receiver has every message or
// deadline passes after the last send.
func deliver(s side, run, msgs, size int, interval, deadline time.Duration) *deliveryRun {
	d := &deliveryRun{msgs: msgs, recvs: s.receivers(), sendAt: make([]time.Time, msgs), sendTook: make([]time.Duration, msgs), all: make(chan struct{})}
	d.recv = make([][]time.Time, d.recvs)
	for i := range d.recv {
		d.recv[i] = make([]time.Time, msgs)
	}
	want := int64(msgs * d.recvs)
	s.setSink(func(recv int, p string, at time.Time) {
		r, idx, ok := parsePayload(p)
		if !ok || r != run || idx >= msgs {
			return
		}
		d.mu.Lock()
		first := d.recv[recv][idx].IsZero()
		if first {
			d.recv[recv][idx] = at
		}
		d.mu.Unlock()
		if !first {
			d.dups.Add(1)
			return
		}
		if d.delivered.Add(1) == want {
			close(d.all)
		}
	})
	defer s.setSink(nil)
	start := time.Now()
	for i := 0; i < msgs; i++ {
		if interval > 0 {
			if w := time.Until(start.Add(time.Duration(i) * interval)); w > 0 {
				time.Sleep(w)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		d.mu.Lock()
		d.sendAt[i] = time.Now()
		d.mu.Unlock()
		err := s.send(ctx, payload(run, i, size))
		d.sendTook[i] = time.Since(d.sendAt[i])
		cancel()
		if err != nil {
			d.sendErrs++
		}
	}
	select {
	case <-d.all:
	case <-time.After(deadline):
	}
	return d
}

// ---------------------------------------------------------------------------
// the scenario

type latencySeries struct {
	label     string
	raw, p2p  []time.Duration
	rawSigned []time.Duration // reference: GossipSub with StrictSign (one configuration only)
	nodes     int
	size      int
	p2pOnDisk bool
}

// sideRuns pools a side's runs of one configuration over rounds.
type sideRuns struct{ paced, burst []*deliveryRun }

func (a *sideRuns) latencies() []time.Duration {
	var out []time.Duration
	for _, d := range a.paced {
		out = append(out, d.latencies()...)
	}
	return sortedCopy(out)
}

func meanOf(runs []*deliveryRun, f func(*deliveryRun) float64) float64 {
	var xs []float64
	for _, d := range runs {
		xs = append(xs, f(d))
	}
	return mean(xs)
}

func fractionOf(runs []*deliveryRun) float64 {
	var got, want int64
	for _, d := range runs {
		got += d.delivered.Load()
		want += int64(d.msgs * d.recvs)
	}
	if want == 0 {
		return math.NaN()
	}
	return float64(got) / float64(want)
}

// worstCompletion is the longest time to complete, NaN if a run never did.
func worstCompletion(runs []*deliveryRun) float64 {
	worst := 0.0
	for _, d := range runs {
		c := completion(d)
		if math.IsNaN(c) {
			return math.NaN()
		}
		worst = max(worst, c)
	}
	return worst
}

func meanSendMs(runs []*deliveryRun) float64 {
	return meanOf(runs, func(d *deliveryRun) float64 { return ms(meanDur(d.sendTook)) })
}

func sendErrsOf(runs []*deliveryRun) int {
	n := 0
	for _, d := range runs {
		n += d.sendErrs
	}
	return n
}

func dupsOf(runs []*deliveryRun) int64 {
	var n int64
	for _, d := range runs {
		n += d.dups.Load()
	}
	return n
}

// runOnce builds one side's cluster, runs warm-up, paced stream and burst
// on it, and closes it.
func runOnce(cfg *config, kind string, n, size int) (paced, burst *deliveryRun, err error) {
	const settle = 3 * time.Second
	interval := time.Second / time.Duration(cfg.pacedRate)
	var s side
	switch kind {
	case "raw":
		s, err = newRawSide(n, settle)
	case "p2pchat":
		s, err = newP2PSide(n, false, settle)
	case "p2pchat-disk":
		s, err = newP2PSide(n, true, settle)
	case "raw-signed":
		s, err = newRawSideOpts(n, settle, true)
	case "p2pchat-unbatched":
		params := node.DefaultParams()
		params.PublishBatch = 1
		s, err = newP2PSideParams(n, false, settle, params)
	default:
		err = fmt.Errorf("unknown side %q", kind)
	}
	if err != nil {
		return nil, nil, err
	}
	defer s.close()
	deliver(s, 1, cfg.warmup, size, interval, 5*time.Second)
	paced = deliver(s, 2, cfg.pacedMsgs, size, interval, 10*time.Second)
	time.Sleep(time.Second)
	burst = deliver(s, 3, cfg.burstMsgs, size, 0, cfg.burstDeadline)
	return paced, burst, nil
}

func runThroughput(cfg *config, res *results, plots *plotData) {
	const sec = "Delivery: throughput, latency, burst"
	var signedRows []row
	for _, n := range cfg.nodeCounts {
		for _, size := range []int{256, 4096} {
			label := fmt.Sprintf("%d nodes, %s", n, sizeLabel(size))
			tenNodes := n == 10
			// The configurations that carry targets run four times, raw and
			// p2pchat alternating, and pool their samples.
			rounds := 1
			if tenNodes && !cfg.quick {
				rounds = 4
			}
			withSigned := n == cfg.nodeCounts[0] && size == 256
			var raw, p2p, signed, unbatched sideRuns
			var failed error
			for round := 0; round < rounds && failed == nil; round++ {
				kinds := []string{"raw", "p2pchat"}
				if withSigned && round == 0 {
					kinds = append(kinds, "raw-signed", "p2pchat-unbatched")
				}
				for _, kind := range kinds {
					logf("delivery %s: %s (round %d of %d)", label, kind, round+1, rounds)
					paced, burst, err := runOnce(cfg, kind, n, size)
					if err != nil {
						if kind != "raw-signed" && kind != "p2pchat-unbatched" {
							failed = fmt.Errorf("%s: %w", kind, err)
						}
						logf("delivery %s: %s: %v", label, kind, err)
						continue
					}
					dst := map[string]*sideRuns{"raw": &raw, "p2pchat": &p2p, "raw-signed": &signed, "p2pchat-unbatched": &unbatched}[kind]
					dst.paced = append(dst.paced, paced)
					dst.burst = append(dst.burst, burst)
				}
			}
			if failed != nil {
				res.fail(sec, label, failed)
				continue
			}
			rl, pl := raw.latencies(), p2p.latencies()
			ls := latencySeries{label: label, raw: rl, p2p: pl, nodes: n, size: size}
			if len(signed.paced) > 0 {
				ls.rawSigned = signed.latencies()
				signedRows = append(signedRows, signedRef(label, ls.rawSigned, pl, &signed, &p2p)...)
			}
			if len(unbatched.paced) > 0 {
				signedRows = append(signedRows, unbatchedRef(label, &raw, &unbatched)...)
			}
			plots.latency = append(plots.latency, ls)
			tgtT, tgtL := "", ""
			if tenNodes {
				tgtT, tgtL = "≥ 0.90× raw", "≤ 1.20× raw"
			}
			roundsNote := ""
			if rounds > 1 {
				roundsNote = fmt.Sprintf("; %d rounds, raw and p2pchat alternating, pooled", rounds)
			}
			tput := func(d *deliveryRun) float64 { return d.throughput() }
			row1 := row{Section: sec, Metric: label + ": throughput, paced (deliveries/s)", Raw: meanOf(raw.paced, tput), P2P: meanOf(p2p.paced, tput), Target: tgtT,
				Note: fmt.Sprintf("%d msgs at %d msg/s to %d receivers; delivered raw %.1f %%, p2pchat %.1f %%%s", cfg.pacedMsgs, cfg.pacedRate, n-1, 100*fractionOf(raw.paced), 100*fractionOf(p2p.paced), roundsNote)}
			row2 := row{Section: sec, Metric: label + ": throughput, unpaced (deliveries/s)", Raw: meanOf(raw.burst, tput), P2P: meanOf(p2p.burst, tput), Target: tgtT,
				Note: fmt.Sprintf("%d msgs back to back from one goroutine; mean send call raw %.2f ms, p2pchat %.2f ms", cfg.burstMsgs, meanSendMs(raw.burst), meanSendMs(p2p.burst))}
			row3 := row{Section: sec, Metric: label + ": latency p50", Unit: "ms", Raw: ms(pct(rl, .5)), P2P: ms(pct(pl, .5)),
				Note: fmt.Sprintf("paced stream, %d (raw) and %d (p2pchat) samples; mean send call raw %.2f ms, p2pchat %.2f ms", len(rl), len(pl), meanSendMs(raw.paced), meanSendMs(p2p.paced))}
			row4 := row{Section: sec, Metric: label + ": latency p99", Unit: "ms", Raw: ms(pct(rl, .99)), P2P: ms(pct(pl, .99)), Target: tgtL}
			if tenNodes {
				row1.Verdict = verdict(row1.ratio() >= 0.9)
				row2.Verdict = verdict(row2.ratio() >= 0.9)
				row4.Verdict = verdict(row4.ratio() <= 1.2)
			}
			res.add(row1)
			res.add(row2)
			res.add(row3)
			res.add(row4)
			pf := fractionOf(p2p.burst)
			res.add(row{Section: sec, Metric: label + fmt.Sprintf(": burst of %d, delivered", cfg.burstMsgs), Unit: "%", Raw: 100 * fractionOf(raw.burst), P2P: 100 * pf,
				Target: "p2pchat = 100 %", Verdict: verdict(pf == 1),
				Note: fmt.Sprintf("deadline %v after the last send; duplicates raw %d, p2pchat %d; failed send calls raw %d, p2pchat %d", cfg.burstDeadline, dupsOf(raw.burst), dupsOf(p2p.burst), sendErrsOf(raw.burst), sendErrsOf(p2p.burst))})
			res.add(row{Section: sec, Metric: label + fmt.Sprintf(": burst of %d, time to complete", cfg.burstMsgs), Unit: "ms", Raw: worstCompletion(raw.burst), P2P: worstCompletion(p2p.burst),
				Note: "first send to last delivery (worst round); — if never complete"})
		}
	}
	for _, r := range signedRows {
		res.add(r)
	}
}

// signedRef compares p2pchat with GossipSub signing every message itself
// (StrictSign), which costs a signature per publish and a verification per
// receipt, as p2pchat's own envelope signature does.
func signedRef(label string, sl, pl []time.Duration, signed, p2p *sideRuns) []row {
	const sec = "Reference: raw GossipSub with StrictSign (GossipSub's default signing)"
	tput := func(d *deliveryRun) float64 { return d.throughput() }
	return []row{
		{Section: sec, Metric: label + ": latency p50", Unit: "ms", Raw: ms(pct(sl, .5)), P2P: ms(pct(pl, .5)), Note: "raw column = GossipSub with StrictSign (one round); p2pchat column = the same configuration above"},
		{Section: sec, Metric: label + ": latency p99", Unit: "ms", Raw: ms(pct(sl, .99)), P2P: ms(pct(pl, .99))},
		{Section: sec, Metric: label + ": throughput, unpaced (deliveries/s)", Raw: meanOf(signed.burst, tput), P2P: meanOf(p2p.burst, tput),
			Note: fmt.Sprintf("delivered: signed raw %.1f %%", 100*fractionOf(signed.burst))},
	}
}

// unbatchedRef shows what envelope batching contributes: p2pchat with
// Params.PublishBatch 1 (every envelope its own topic message) against raw.
func unbatchedRef(label string, raw, unbatched *sideRuns) []row {
	const sec = "Reference: p2pchat without envelope batching (Params.PublishBatch = 1)"
	tput := func(d *deliveryRun) float64 { return d.throughput() }
	ul := unbatched.latencies()
	return []row{
		{Section: sec, Metric: label + ": throughput, unpaced (deliveries/s)", Raw: meanOf(raw.burst, tput), P2P: meanOf(unbatched.burst, tput),
			Note: fmt.Sprintf("p2pchat column = one round with batching off; raw column = the raw runs above; delivered %.1f %%", 100*fractionOf(unbatched.burst))},
		{Section: sec, Metric: label + ": burst, time to complete", Unit: "ms", Raw: worstCompletion(raw.burst), P2P: worstCompletion(unbatched.burst)},
		{Section: sec, Metric: label + ": latency p99 (paced)", Unit: "ms", Raw: ms(pct(raw.latencies(), .99)), P2P: ms(pct(ul, .99)),
			Note: "paced sends never queue, so batching does not change them"},
	}
}

// runDiskVariant repeats the 10-node 256 B runs with every p2pchat node on
// an on-disk store (the daemon's configuration: synced badger writes),
// against raw measured again in the same way: four rounds (one with
// -quick), raw and p2pchat alternating, samples pooled, and the spread of
// the per-round ratios in the notes.
func runDiskVariant(cfg *config, res *results, plots *plotData) {
	if !cfg.diskVariant {
		return
	}
	const sec = "Delivery with on-disk stores (daemon configuration)"
	n, size := 10, 256
	rounds := 4
	if cfg.quick {
		rounds = 1
	}
	var raw, p2p sideRuns
	for round := range rounds {
		for _, kind := range []string{"raw", "p2pchat-disk"} {
			logf("delivery %d nodes, %s, disk: %s (round %d of %d)", n, sizeLabel(size), kind, round+1, rounds)
			paced, burst, err := runOnce(cfg, kind, n, size)
			if err != nil {
				res.fail(sec, kind+" setup", err)
				return
			}
			dst := &raw
			if kind != "raw" {
				dst = &p2p
			}
			dst.paced, dst.burst = append(dst.paced, paced), append(dst.burst, burst)
		}
	}
	rl, pl := raw.latencies(), p2p.latencies()
	label := "10 nodes, 256 B, disk"
	plots.latency = append(plots.latency, latencySeries{label: label, raw: rl, p2p: pl, nodes: n, size: size, p2pOnDisk: true})
	tput := func(d *deliveryRun) float64 { return d.throughput() }
	// spread gives the range of a per-round ratio p2pchat ÷ raw.
	spread := func(f func(*deliveryRun) float64, runs func(*sideRuns) []*deliveryRun) string {
		lo, hi := math.Inf(1), math.Inf(-1)
		for i := range rounds {
			r := f(runs(&p2p)[i]) / f(runs(&raw)[i])
			lo, hi = math.Min(lo, r), math.Max(hi, r)
		}
		return fmt.Sprintf("per-round ratio %.2f–%.2f× over %d rounds", lo, hi, rounds)
	}
	pacedRuns := func(s *sideRuns) []*deliveryRun { return s.paced }
	burstRuns := func(s *sideRuns) []*deliveryRun { return s.burst }
	p99 := func(d *deliveryRun) float64 { return ms(pct(d.latencies(), .99)) }
	p50 := func(d *deliveryRun) float64 { return ms(pct(d.latencies(), .5)) }
	res.add(row{Section: sec, Metric: label + ": latency p50", Unit: "ms", Raw: ms(pct(rl, .5)), P2P: ms(pct(pl, .5)),
		Note: fmt.Sprintf("%s; mean send call (paced) raw %.2f ms, p2pchat %.2f ms", spread(p50, pacedRuns), meanSendMs(raw.paced), meanSendMs(p2p.paced))})
	res.add(row{Section: sec, Metric: label + ": latency p99", Unit: "ms", Raw: ms(pct(rl, .99)), P2P: ms(pct(pl, .99)),
		Note: spread(p99, pacedRuns)})
	res.add(row{Section: sec, Metric: label + ": throughput, unpaced (deliveries/s)", Raw: meanOf(raw.burst, tput), P2P: meanOf(p2p.burst, tput),
		Note: fmt.Sprintf("%s; mean send call raw %.2f ms, p2pchat %.2f ms", spread(tput, burstRuns), meanSendMs(raw.burst), meanSendMs(p2p.burst))})
	res.add(row{Section: sec, Metric: label + fmt.Sprintf(": burst of %d, delivered", cfg.burstMsgs), Unit: "%", Raw: 100 * fractionOf(raw.burst), P2P: 100 * fractionOf(p2p.burst)})
	res.add(row{Section: sec, Metric: label + fmt.Sprintf(": burst of %d, time to complete", cfg.burstMsgs), Unit: "ms", Raw: worstCompletion(raw.burst), P2P: worstCompletion(p2p.burst)})
}

func completion(d *deliveryRun) float64 {
	if d.fraction() < 1 {
		return math.NaN()
	}
	return ms(d.span())
}

func meanDur(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return s / time.Duration(len(ds))
}

func sizeLabel(size int) string {
	if size >= 1024 && size%1024 == 0 {
		return fmt.Sprintf("%d KiB", size/1024)
	}
	return fmt.Sprintf("%d B", size)
}
