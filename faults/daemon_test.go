package faults

// Daemons in namespaces, and the CLI that talks to them from inside the
// same namespace (the local API listens on the namespace's 127.0.0.1).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// crashMarks are what a crashed or racing Go program prints.
var crashMarks = []string{"panic:", "fatal error", "SIGBUS", "SIGSEGV", "DATA RACE", "goroutine "}

func checkNoCrash(t *testing.T, what, out string) {
	t.Helper()
	for _, bad := range crashMarks {
		if strings.Contains(out, bad) {
			t.Errorf("%s contains %q:\n%s", what, bad, tail(out, 4000))
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("p2pchat %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

type identity struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

type member struct {
	PeerID string `json:"peer_id"`
	Role   string `json:"role"`
}

type groupInfo struct {
	GroupID string   `json:"group_id"`
	Name    string   `json:"name"`
	Members []member `json:"members"`
	KeyID   string   `json:"key_id"`
	Left    bool     `json:"left"`
}

type message struct {
	ID     string `json:"id"`
	Sender string `json:"sender"`
	SentAt string `json:"sent_at"`
	Text   string `json:"text"`
	Status string `json:"status"`
}

// seq is the sender's sequence number in the message id SENDER/SEQ.
func (m message) seq() uint64 {
	_, s, _ := strings.Cut(m.ID, "/")
	n, _ := strconv.ParseUint(s, 10, 64)
	return n
}

// daemon is one p2pchat daemon in namespace ns, on home; it can be killed
// and started again on the same home and address.
type daemon struct {
	t     *testing.T
	name  string
	node  int // its number in the topology (address 10.77.node.2)
	ns    string
	home  string
	env   []string
	extra []string
	logs  string // directory of its stdout/stderr files, one pair a run
	id    identity

	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	runs  int
	errs  *bytes.Buffer
	alive bool
}

const commandTimeout = 60 * time.Second

// newDaemon starts a daemon named name in node i of tp and waits until it
// answers. t.Cleanup stops it (SIGTERM, then SIGKILL) and checks its output.
func newDaemon(t *testing.T, tp *topo, i int, name, home string, env []string, extra ...string) *daemon {
	t.Helper()
	if home == "" {
		home = filepath.Join(t.TempDir(), name)
	}
	d := &daemon{t: t, name: name, node: i, ns: tp.nodes[i-1], home: home, env: env, extra: extra, logs: t.TempDir()}
	t.Cleanup(d.cleanup)
	d.start()
	return d
}

func (d *daemon) addr() string {
	return fmt.Sprintf("/ip4/%s/tcp/4001/p2p/%s", nodeIP(d.node), d.id.PeerID)
}

// start starts the daemon (again) and waits until `id --json` answers.
func (d *daemon) start() {
	t := d.t
	t.Helper()
	d.mu.Lock()
	if d.alive {
		d.mu.Unlock()
		t.Fatalf("%s: already running", d.name)
	}
	d.runs++
	args := append([]string{"netns", "exec", d.ns, binPath, "daemon", "--home", d.home,
		"--listen", fmt.Sprintf("/ip4/%s/tcp/4001", nodeIP(d.node)), "--no-mdns", "--api", "127.0.0.1:0"}, d.extra...)
	cmd := exec.Command("ip", args...)
	cmd.Env = append(append(os.Environ(), "P2PCHAT_HOME=/nonexistent/p2pchat-faults"), d.env...)
	out, err := os.Create(filepath.Join(d.logs, fmt.Sprintf("run%d.out", d.runs)))
	if err != nil {
		d.mu.Unlock()
		t.Fatal(err)
	}
	d.errs = &bytes.Buffer{}
	cmd.Stdout = out
	cmd.Stderr = &lockedWriter{mu: &d.mu, w: d.errs}
	if err := cmd.Start(); err != nil {
		d.mu.Unlock()
		t.Fatalf("start %s: %v", d.name, err)
	}
	d.cmd, d.done, d.alive = cmd, make(chan struct{}), true
	done := d.done
	d.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		out.Close()
		close(done)
	}()
	d.waitReady()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (d *daemon) stderr() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.errs.String()
}

func (d *daemon) waitReady() {
	t := d.t
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last result
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			t.Fatalf("daemon %s exited during start (%v)\nstderr:\n%s", d.name, d.cmd.ProcessState, d.stderr())
		default:
		}
		if _, err := os.Stat(filepath.Join(d.home, "api")); err == nil {
			last = d.run("id", "--json")
			if last.code == 0 {
				var id identity
				if err := json.Unmarshal([]byte(last.stdout), &id); err != nil {
					t.Fatalf("%s: id --json: %v", d.name, err)
				}
				if d.id.PeerID != "" && id.PeerID != d.id.PeerID {
					t.Fatalf("%s came back as %s, was %s: the identity did not survive", d.name, id.PeerID, d.id.PeerID)
				}
				d.id = id
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("daemon %s not ready after 30s; last: %s\nstderr:\n%s", d.name, last, d.stderr())
}

// kill SIGKILLs the daemon by its pid and waits for it to be gone.
func (d *daemon) kill() {
	d.t.Helper()
	d.mu.Lock()
	cmd, done, alive := d.cmd, d.done, d.alive
	d.alive = false
	d.mu.Unlock()
	if !alive {
		d.t.Fatalf("kill %s: not running", d.name)
	}
	select {
	case <-done:
		d.t.Errorf("daemon %s had exited before it was killed (%v)\nstderr:\n%s", d.name, cmd.ProcessState, d.stderr())
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
	checkNoCrash(d.t, "daemon "+d.name+" stderr", d.stderr())
}

// stop stops the daemon with SIGTERM and wants a clean exit.
func (d *daemon) stop() {
	d.t.Helper()
	d.mu.Lock()
	cmd, done, alive := d.cmd, d.done, d.alive
	d.alive = false
	d.mu.Unlock()
	if !alive {
		return
	}
	select {
	case <-done:
		d.t.Errorf("daemon %s had exited before it was stopped (%v)\nstderr:\n%s", d.name, cmd.ProcessState, d.stderr())
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
		d.t.Errorf("daemon %s still running 20s after SIGTERM; killed it", d.name)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		d.t.Errorf("daemon %s exited %d after SIGTERM, want 0\nstderr:\n%s", d.name, code, d.stderr())
	}
	checkNoCrash(d.t, "daemon "+d.name+" stderr", d.stderr())
}

// running reports whether the daemon process is up (and was not stopped).
func (d *daemon) running() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.alive {
		return false
	}
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

func (d *daemon) cleanup() {
	if d.running() {
		d.stop()
		return
	}
	d.mu.Lock()
	alive := d.alive
	d.mu.Unlock()
	if alive { // it died by itself
		d.t.Errorf("daemon %s died (%v)\nstderr:\n%s", d.name, d.cmd.ProcessState, d.stderr())
	}
}

// run runs a CLI command against the daemon, inside its namespace.
func (d *daemon) run(args ...string) result {
	t := d.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	full := append([]string{"netns", "exec", d.ns, binPath}, append(args, "--home", d.home)...)
	cmd := exec.CommandContext(ctx, "ip", full...)
	cmd.Env = append(os.Environ(), "P2PCHAT_HOME=/nonexistent/p2pchat-faults")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	if cmd.ProcessState == nil {
		t.Fatalf("%s: p2pchat %s: %v", d.name, strings.Join(args, " "), err)
	}
	r.code = cmd.ProcessState.ExitCode()
	if ctx.Err() != nil {
		t.Fatalf("%s: timed out after %v: %s", d.name, commandTimeout, r)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v: %s", d.name, err, r)
	}
	checkNoCrash(t, d.name+": "+r.String(), r.stdout+r.stderr)
	return r
}

func (d *daemon) mustRun(args ...string) string {
	d.t.Helper()
	r := d.run(args...)
	if r.code != 0 {
		d.t.Fatalf("%s: want exit 0: %s", d.name, r)
	}
	return r.stdout
}

func (d *daemon) connect(o *daemon) {
	d.t.Helper()
	d.mustRun("connect", o.addr())
}

// connectAll connects every daemon to every other (once per pair).
func connectAll(ds ...*daemon) {
	for i, a := range ds {
		for _, b := range ds[i+1:] {
			a.connect(b)
		}
	}
}

func (d *daemon) groupInfo(gid string) groupInfo {
	d.t.Helper()
	var g groupInfo
	if err := json.Unmarshal([]byte(d.mustRun("group", "info", gid, "--json")), &g); err != nil {
		d.t.Fatalf("%s: group info: %v", d.name, err)
	}
	return g
}

func (d *daemon) messages(gid string) []message {
	d.t.Helper()
	var out []message
	for _, line := range strings.Split(strings.TrimSpace(d.mustRun("messages", gid, "--json")), "\n") {
		if line == "" {
			continue
		}
		var m message
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			d.t.Fatalf("%s: messages --json line %q: %v", d.name, line, err)
		}
		out = append(out, m)
	}
	return out
}

// eventually polls cond until it holds or timeout passes; it returns how
// long that took and fails t with cond's last detail otherwise.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, detail := cond()
		if ok {
			took := time.Since(start)
			t.Logf("%s: after %v", what, took.Round(time.Millisecond))
			return took
		}
		if time.Since(start) > timeout {
			t.Fatalf("%s: not true after %v; last: %s", what, timeout, detail)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
