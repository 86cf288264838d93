package faults

// The harness: TestMain builds the binary once; gate skips the scenarios
// unless P2PCHAT_FAULTS=1, root and `ip netns` are all there.

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

var soak = flag.Bool("soak", false, "run the longer versions of the scenarios (outside CI)")

// binPath is the p2pchat binary TestMain built ("" if the suite is off).
var binPath string

// prefix names every namespace this run makes: p2pf<pid>-.
var prefix = fmt.Sprintf("p2pf%d-", os.Getpid())

// skipReason is why the scenarios skip ("" if they run).
var skipReason string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if spec := os.Getenv("P2PCHAT_FAULTS_PROXY"); spec != "" {
		// Re-executed inside a router namespace as the delaying proxy.
		return proxyMain(spec)
	}
	flag.Parse()
	switch {
	case os.Getenv("P2PCHAT_FAULTS") != "1":
		skipReason = "the fault-injection suite runs only with P2PCHAT_FAULTS=1 (as root): P2PCHAT_FAULTS=1 go test ./faults -v -count=1"
	case os.Geteuid() != 0:
		skipReason = "the fault-injection suite needs root for network namespaces (CI runs as root)"
	default:
		if out, err := exec.Command("ip", "netns", "list").CombinedOutput(); err != nil {
			skipReason = fmt.Sprintf("ip netns does not work here (%v: %s)", err, strings.TrimSpace(string(out)))
		}
	}
	if skipReason != "" {
		return m.Run()
	}
	removeStale()
	dir, err := os.MkdirTemp("", "p2pchat-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if bin := os.Getenv("P2PCHAT_FAULTS_BIN"); bin != "" {
		// A binary built elsewhere (for example from a commit other than
		// the working tree's).
		binPath = bin
		code := m.Run()
		printTable()
		return code
	}
	binPath = filepath.Join(dir, "p2pchat")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goTool, "build", "-o", binPath, "../cmd/p2pchat")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "faults: go build:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "faults: built %s in %v; namespaces %s*\n", binPath, time.Since(start).Round(time.Millisecond), prefix)
	code := m.Run()
	printTable()
	return code
}

// gate skips t unless the suite is on.
func gate(t *testing.T) {
	t.Helper()
	if skipReason != "" {
		t.Skip(skipReason)
	}
}

// removeStale deletes the namespaces (and kills the processes in them) that
// an earlier run of this suite left behind: names p2pf<pid>- whose pid is
// gone.
func removeStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || !strings.HasPrefix(f[0], "p2pf") {
			continue
		}
		name := f[0]
		pid, _, _ := strings.Cut(strings.TrimPrefix(name, "p2pf"), "-")
		if _, err := os.Stat("/proc/" + pid); err == nil && pid != fmt.Sprint(os.Getpid()) {
			continue // another run still going
		}
		if pids, err := exec.Command("ip", "netns", "pids", name).Output(); err == nil {
			for _, p := range strings.Fields(string(pids)) {
				_ = exec.Command("kill", "-9", p).Run()
			}
		}
		_ = exec.Command("ip", "netns", "del", name).Run()
		fmt.Fprintln(os.Stderr, "faults: removed stale namespace", name)
	}
}

// row is one scenario's line in the report table.
type row struct {
	scenario                  string
	accepted, delivered, lost int
	dup, misordered, leaked   int
	converge                  time.Duration
	note                      string
}

var (
	tableMu sync.Mutex
	table   []row
)

func report(t *testing.T, r row) {
	t.Helper()
	t.Logf("%-28s accepted %d, delivered %d, lost %d, duplicates %d, out of order %d, leaked to removed %d, converged in %v %s",
		r.scenario, r.accepted, r.delivered, r.lost, r.dup, r.misordered, r.leaked, r.converge.Round(10*time.Millisecond), r.note)
	tableMu.Lock()
	table = append(table, r)
	tableMu.Unlock()
}

// printTable prints the run's table as Markdown (docs/reliability.md keeps
// the last one).
func printTable() {
	tableMu.Lock()
	defer tableMu.Unlock()
	if len(table) == 0 {
		return
	}
	fmt.Println("| scenario | accepted | delivered | lost | dup | out of order | leaked | converged in | note |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range table {
		fmt.Printf("| %s | %d | %d | %d | %d | %d | %d | %v | %s |\n", r.scenario, r.accepted, r.delivered, r.lost,
			r.dup, r.misordered, r.leaked, r.converge.Round(100*time.Millisecond), r.note)
	}
}
