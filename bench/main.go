// Command bench compares p2pchat with raw GossipSub on identical set-ups
// and measures p2pchat's own costs: key rotation, self-heal, offline
// catch-up, memory and daemon start-up. It prints a table and, with
// -write-docs, writes docs/benchmarks.md and the plots in docs/bench/.
//
//	go run ./bench                 # everything (under 10 minutes on 2 cores)
//	go run ./bench -quick          # a smoke run
//	go run ./bench -only rotation  # a subset (comma-separated)
//	go run ./bench -write-docs     # also write docs/benchmarks.md and docs/bench/*.svg
package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"
)

type config struct {
	root  string
	quick bool
	full  bool // every scenario at its default size

	nodeCounts    []int
	warmup        int
	pacedMsgs     int
	pacedRate     int // messages per second
	burstMsgs     int
	burstDeadline time.Duration
	diskVariant   bool

	rotationSizes    []int // mocknet
	rotationLoopback []int
	rotationExtra    int // random extra connections per member on mocknet
	samples          map[int]int

	selfHealSamples int
	catchupMsgs     int
	catchupRuns     int
	memNodes        int
	memGroups       int
	daemonRuns      int

	memProfile  string
	memProfiled bool
}

func (c *config) rotationSamples(size int) int {
	if n, ok := c.samples[size]; ok {
		return n
	}
	return 3
}

func defaultConfig(quick bool) *config {
	if quick {
		return &config{quick: true,
			nodeCounts: []int{10}, warmup: 5, pacedMsgs: 100, pacedRate: 100, burstMsgs: 200, burstDeadline: 15 * time.Second,
			rotationSizes: []int{10, 30}, rotationLoopback: []int{10}, rotationExtra: 6, samples: map[int]int{10: 3, 30: 3},
			selfHealSamples: 5, catchupMsgs: 2000, catchupRuns: 1, memNodes: 5, memGroups: 3, daemonRuns: 1}
	}
	return &config{
		nodeCounts: []int{10, 20}, warmup: 20, pacedMsgs: 400, pacedRate: 100, burstMsgs: 1000, burstDeadline: 30 * time.Second, diskVariant: true,
		rotationSizes: []int{10, 50, 100, 200}, rotationLoopback: []int{10, 20}, rotationExtra: 6,
		samples:         map[int]int{10: 10, 20: 10, 50: 8, 100: 6, 200: 4},
		selfHealSamples: 20, catchupMsgs: 10000, catchupRuns: 2, memNodes: 10, memGroups: 10, daemonRuns: 3,
	}
}

type scenario struct {
	name    string
	aliases []string
	run     func(*config, *results, *plotData)
}

var scenarios = []scenario{
	{"daemon", nil, runDaemon},
	{"memory", []string{"mem"}, runMemory},
	{"delivery", []string{"throughput", "latency", "burst"}, runThroughput},
	{"disk", []string{"daemon-delivery"}, runDiskVariant},
	{"breakdown", []string{"latency-breakdown"}, runBreakdown},
	{"rotation", nil, runRotation},
	{"selfheal", []string{"self-heal", "heal"}, runSelfHeal},
	{"catchup", []string{"catch-up"}, runCatchUp},
	{"micro", []string{"per-message", "permessage"}, runMicro},
}

func main() {
	only := flag.String("only", "", "comma-separated scenarios to run: daemon, memory, delivery (throughput, latency, burst), disk (delivery on on-disk stores), breakdown, rotation, selfheal, catchup, micro")
	quick := flag.Bool("quick", false, "smoke run: fewer nodes, messages and samples")
	writeDocs := flag.Bool("write-docs", false, "write docs/benchmarks.md and docs/bench/*.svg")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	memProfile := flag.String("memprofile", "", "write a heap profile to this file: in the memory scenario, while the p2pchat nodes and groups are up; otherwise at the end")
	timeout := flag.Duration("timeout", 15*time.Minute, "abort (printing what was measured) after this long")
	rotSizes := flag.String("rotation-sizes", "", "override the mocknet rotation group sizes, e.g. 100,200")
	nodeCounts := flag.String("nodes", "", "override the delivery node counts, e.g. 10 (skips the on-disk variant)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}

	cfg := defaultConfig(*quick)
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	cfg.root = root
	cfg.memProfile = *memProfile
	if *rotSizes != "" {
		cfg.rotationSizes = nil
		for _, f := range strings.Split(*rotSizes, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || v < 2 {
				fmt.Fprintf(os.Stderr, "bench: bad -rotation-sizes %q\n", *rotSizes)
				os.Exit(2)
			}
			cfg.rotationSizes = append(cfg.rotationSizes, v)
		}
	}

	if *nodeCounts != "" {
		cfg.nodeCounts, cfg.diskVariant = nil, false
		for _, f := range strings.Split(*nodeCounts, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || v < 2 {
				fmt.Fprintf(os.Stderr, "bench: bad -nodes %q\n", *nodeCounts)
				os.Exit(2)
			}
			cfg.nodeCounts = append(cfg.nodeCounts, v)
		}
	}

	selected, err := selectScenarios(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	cfg.full = !*quick && len(selected) == len(scenarios) && *rotSizes == "" && *nodeCounts == ""

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(2)
		}
		defer f.Close()
	}

	res := &results{}
	plots := &plotData{}
	start := time.Now()
	watchdog := time.AfterFunc(*timeout, func() {
		pprof.StopCPUProfile()
		fmt.Print(table(res.snapshot()))
		fmt.Fprintf(os.Stderr, "bench: aborted after %v (-timeout); the table above is partial\n", *timeout)
		os.Exit(3)
	})
	var names []string
	for _, sc := range selected {
		names = append(names, sc.name)
		logf("=== %s", sc.name)
		t0 := time.Now()
		runScenario(sc, cfg, res, plots)
		logf("=== %s done in %v", sc.name, time.Since(t0).Round(100*time.Millisecond))
	}
	watchdog.Stop()
	if *cpuProfile != "" {
		pprof.StopCPUProfile()
	}
	if *memProfile != "" && !cfg.memProfiled {
		if f, err := os.Create(*memProfile); err == nil {
			runtime.GC()
			_ = pprof.WriteHeapProfile(f)
			f.Close()
		}
	}
	total := time.Since(start)
	tr := row{Section: "Harness", Metric: "total run time of this invocation", Unit: "min", Raw: math.NaN(), P2P: total.Minutes(), Note: "scenarios: " + strings.Join(names, ", ")}
	if cfg.full {
		tr.Target, tr.Verdict = "< 10 min", verdict(total < 10*time.Minute)
	}
	res.add(tr)

	rows := res.snapshot()
	fmt.Println()
	fmt.Print(table(rows))
	fmt.Println()
	fmt.Print(summary(rows))

	if *writeDocs {
		if err := writeDocsFiles(cfg, rows, plots, total, names, os.Args[1:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench: write docs:", err)
			os.Exit(1)
		}
		logf("wrote docs/benchmarks.md and docs/bench/*.svg under %s", root)
	}
}

// runScenario runs one scenario, turning a panic into an ERROR row so the
// others still run.
func runScenario(sc scenario, cfg *config, res *results, plots *plotData) {
	defer func() {
		if r := recover(); r != nil {
			res.fail(sc.name, "scenario panicked", fmt.Errorf("%v\n%s", r, debug.Stack()))
		}
	}()
	sc.run(cfg, res, plots)
}

func selectScenarios(only string) ([]scenario, error) {
	if strings.TrimSpace(only) == "" {
		return scenarios, nil
	}
	want := map[string]bool{}
	for _, w := range strings.Split(only, ",") {
		w = strings.ToLower(strings.TrimSpace(w))
		found := false
		for _, sc := range scenarios {
			if w == sc.name || slices.Contains(sc.aliases, w) {
				want[sc.name] = true
				found = true
			}
		}
		if !found {
			names := make([]string, len(scenarios))
			for i, sc := range scenarios {
				names[i] = sc.name
			}
			return nil, fmt.Errorf("unknown scenario %q (have %s)", w, strings.Join(names, ", "))
		}
	}
	var out []scenario
	for _, sc := range scenarios {
		if want[sc.name] {
			out = append(out, sc)
		}
	}
	return out, nil
}

// moduleRoot finds the p2pchat module's directory from the working
// directory upwards.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/p2pchat/p2pchat\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the p2pchat module (go.mod not found)")
		}
		dir = parent
	}
}

// summary lists the rows that carry a target.
func summary(rows []row) string {
	var b strings.Builder
	b.WriteString("Targets:\n")
	for _, r := range rows {
		if r.Verdict == "" {
			continue
		}
		fmt.Fprintf(&b, "  %-7s %s: %s (target %s)\n", r.Verdict, r.Metric, summaryValue(r), orDash(r.Target))
	}
	return b.String()
}

func summaryValue(r row) string {
	if !math.IsNaN(r.ratio()) {
		return fmt.Sprintf("%s vs raw %s = %s", fmtVal(r.P2P, r.Unit), fmtVal(r.Raw, r.Unit), fmtRatio(r.ratio()))
	}
	if r.Verdict == "ERROR" {
		return r.Note
	}
	return fmtVal(r.P2P, r.Unit)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}
