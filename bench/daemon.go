package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// runDaemon builds the p2pchat binary, then, per run, starts `p2pchat
// daemon` on a fresh home (loopback TCP, no mDNS, API on a free port),
// times until `p2pchat id --home HOME` first succeeds, idles 5 s and reads
// the daemon's VmRSS, and stops it with SIGTERM.
func runDaemon(cfg *config, res *results, _ *plotData) {
	const sec = "Daemon"
	nan := math.NaN()
	tmp, err := os.MkdirTemp("", "p2pchat-bench-daemon-")
	if err != nil {
		res.fail(sec, "build", err)
		return
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "p2pchat")
	t0 := time.Now()
	bctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	build := exec.CommandContext(bctx, "go", "build", "-o", bin, "./cmd/p2pchat")
	build.Dir = cfg.root
	if out, err := build.CombinedOutput(); err != nil {
		cancel()
		res.fail(sec, "build", fmt.Errorf("go build: %v: %s", err, out))
		return
	}
	cancel()
	buildTook := time.Since(t0)
	var starts, restarts []time.Duration
	var rss []float64
	var lastErr error
	for i := 0; i < cfg.daemonRuns; i++ {
		home := filepath.Join(tmp, fmt.Sprintf("home%d", i))
		cold, r, err := daemonRun(bin, home, true)
		if err != nil {
			lastErr = err
			logf("daemon run %d: %v", i, err)
			continue
		}
		starts = append(starts, cold)
		rss = append(rss, r)
		// Second start on the same home: identity and store exist.
		warm, _, err := daemonRun(bin, home, false)
		if err != nil {
			lastErr = err
			continue
		}
		restarts = append(restarts, warm)
	}
	if len(starts) == 0 {
		res.fail(sec, "cold start", lastErr)
		return
	}
	s := sortedCopy(starts)
	note := fmt.Sprintf("%d runs, worst %.0f ms; includes one `p2pchat id` process (poll every 5 ms); build took %v (not counted)", len(s), ms(s[len(s)-1]), buildTook.Round(100*time.Millisecond))
	if lastErr != nil {
		note += "; a run failed: " + lastErr.Error()
	}
	res.add(row{Section: sec, Metric: "cold start (fresh home) → `p2pchat id` succeeds, median", Unit: "ms", Raw: nan, P2P: ms(pct(s, .5)), Note: note})
	if len(restarts) > 0 {
		r := sortedCopy(restarts)
		res.add(row{Section: sec, Metric: "restart (existing home) → `p2pchat id` succeeds, median", Unit: "ms", Raw: nan, P2P: ms(pct(r, .5))})
	}
	worst := 0.0
	for _, v := range rss {
		worst = max(worst, v)
	}
	res.add(row{Section: sec, Metric: "idle daemon RSS after 5 s (worst run)", Unit: "MiB", Raw: nan, P2P: worst, Target: "≤ 40 MB (38.1 MiB)",
		Verdict: verdict(worst*(1<<20) <= 40e6), Note: fmt.Sprintf("VmRSS; runs: %s", fmtList(rss))})
}

func fmtList(xs []float64) string {
	var b bytes.Buffer
	for i, x := range xs {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%.1f", x)
	}
	return b.String()
}

// daemonRun starts the daemon, returns the time to API ready and (if
// measureRSS) its VmRSS in MiB after 5 s idle.
func daemonRun(bin, home string, measureRSS bool) (time.Duration, float64, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, "daemon", "--home", home, "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--api", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return errors.New("daemon did not exit within 10 s of SIGTERM; killed")
		}
	}
	var ready time.Duration
	deadline := start.Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		id := exec.CommandContext(ctx, bin, "id", "--home", home)
		err := id.Run()
		cancel()
		if err == nil {
			ready = time.Since(start)
			break
		}
		select {
		case err := <-exited:
			return 0, 0, fmt.Errorf("daemon exited early (%v): %s", err, out.String())
		default:
		}
		if time.Now().After(deadline) {
			_ = stop()
			return 0, 0, fmt.Errorf("`p2pchat id` did not succeed within 30 s: %s", out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	var rss float64
	if measureRSS {
		time.Sleep(5 * time.Second)
		rss = mib(float64(procRSS(cmd.Process.Pid)))
	}
	if err := stop(); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return ready, rss, err
		}
		logf("daemon exit status after SIGTERM: %v", err)
	}
	return ready, rss, nil
}
