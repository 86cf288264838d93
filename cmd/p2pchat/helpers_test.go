package main

// The harness of the end-to-end tests: TestMain builds the p2pchat binary
// once, and the tests run it as real daemons on loopback and as the CLI that
// talks to them. Nothing is mocked.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// binPath is the p2pchat binary TestMain built.
var binPath string

// noHome is a directory that never exists: every command runs with
// P2PCHAT_HOME pointing at it, so a test that forgets --home cannot touch the
// real config directory of whoever runs the tests.
var noHome string

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	flag.Parse() // for testing.Verbose
	dir, err := os.MkdirTemp("", "p2pchat-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binPath = filepath.Join(dir, "p2pchat")
	noHome = filepath.Join(dir, "no-home")

	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	args := []string{"build", "-o", binPath}
	if raceEnabled {
		// Race-check the daemon too: a race makes it exit 66 and print
		// "DATA RACE", which the tests treat as a failure.
		args = append(args, "-race")
	}
	args = append(args, ".")
	build := exec.Command(goTool, args...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	start := time.Now()
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go build:", err)
		return 1
	}
	if testing.Verbose() {
		fmt.Fprintf(os.Stderr, "e2e: built %s in %v (race: %v)\n", binPath, time.Since(start).Round(time.Millisecond), raceEnabled)
	}
	return m.Run()
}

func testEnv() []string {
	return append(os.Environ(), "P2PCHAT_HOME="+noHome)
}

// cliEnv is testEnv for the short-lived CLI commands. A -race binary sleeps
// a second at exit by default (GORACE atexit_sleep_ms) to catch late
// reports; the CLI commands skip that, the daemons keep it.
func cliEnv() []string {
	env := testEnv()
	if raceEnabled {
		env = append(env, "GORACE="+strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	}
	return env
}

// result is the outcome of one p2pchat command.
type result struct {
	args           []string
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("p2pchat %s: exit %d after %v\n--- stdout:\n%s--- stderr:\n%s",
		strings.Join(r.args, " "), r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// stderrLines returns stderr split into lines (without the final newline).
func (r result) stderrLines() []string {
	s := strings.TrimSuffix(r.stderr, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// commandTimeout bounds one CLI command; the CLI's own bound is 45 s.
const commandTimeout = 60 * time.Second

// run runs p2pchat with args and returns what it did. It fails the test if
// the command cannot be run, outlives its timeout, or crashes.
func run(t *testing.T, timeout time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binPath, args...)
	cmd.Env = cliEnv()
	if len(args) > 0 && args[0] == "daemon" {
		cmd.Env = testEnv()
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String(), took: time.Since(start)}
	if cmd.ProcessState == nil {
		t.Fatalf("p2pchat %s: %v", strings.Join(args, " "), err)
	}
	r.code = cmd.ProcessState.ExitCode()
	if ctx.Err() != nil {
		t.Fatalf("timed out after %v: %s", timeout, r)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%v: %s", err, r)
	}
	checkNoCrash(t, r.String(), r.stdout+r.stderr)
	return r
}

// mustRun runs p2pchat and fails the test unless it exits 0.
func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	r := run(t, commandTimeout, args...)
	if r.code != 0 {
		t.Fatalf("want exit 0: %s", r)
	}
	return r.stdout
}

// checkNoCrash fails the test if out looks like a crash or a data race.
func checkNoCrash(t *testing.T, what, out string) {
	t.Helper()
	// "panic:" and "goroutine " (with the colon and the space) cannot occur
	// in a base58 peer id or a base64 invite code by chance.
	for _, bad := range []string{"panic:", "goroutine ", "DATA RACE", "runtime error:"} {
		if strings.Contains(out, bad) {
			t.Errorf("output contains %q:\n%s", bad, what)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a process writing while a test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is one running `p2pchat daemon` process.
type daemon struct {
	name   string
	home   string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdout *syncBuffer
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	id     identity      // set once the daemon answers

	mu      sync.Mutex
	stopped bool
}

// daemonArgs are the flags every test daemon runs with.
func daemonArgs(home string) []string {
	return []string{"daemon", "--home", home, "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--api", "127.0.0.1:0"}
}

// newHome returns a home directory that does not exist yet (the daemon
// creates it).
func newHome(t *testing.T, name string) string {
	return filepath.Join(t.TempDir(), name)
}

// launchDaemon starts a daemon on home without waiting for it; t.Cleanup
// stops it with SIGTERM and checks that it stopped cleanly.
func launchDaemon(t *testing.T, name, home string, extra ...string) *daemon {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{name: name, home: home, cancel: cancel, stdout: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	d.cmd = exec.CommandContext(ctx, binPath, append(daemonArgs(home), extra...)...)
	d.cmd.Env = testEnv()
	d.cmd.Stdout, d.cmd.Stderr = d.stdout, d.stderr
	if err := d.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start daemon %s: %v", name, err)
	}
	go func() {
		_ = d.cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() { d.stop(t) })
	return d
}

// startDaemon starts a daemon and waits until it answers.
func startDaemon(t *testing.T, name, home string, extra ...string) *daemon {
	t.Helper()
	d := launchDaemon(t, name, home, extra...)
	d.waitReady(t)
	return d
}

// startDaemons starts one daemon per name, each on a new home, in parallel.
func startDaemons(t *testing.T, names ...string) []*daemon {
	t.Helper()
	var ds []*daemon
	for _, n := range names {
		ds = append(ds, launchDaemon(t, n, newHome(t, n)))
	}
	for _, d := range ds {
		d.waitReady(t)
	}
	return ds
}

// readyTimeout bounds a daemon's start (generous for -race on 2 cores).
const readyTimeout = 30 * time.Second

// waitReady polls until HOME/api exists and `id --json` succeeds.
func (d *daemon) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			t.Fatalf("daemon %s exited during start (exit %d)\nstdout:\n%s\nstderr:\n%s",
				d.name, d.cmd.ProcessState.ExitCode(), d.stdout, d.stderr)
		default:
		}
		if _, err := os.Stat(filepath.Join(d.home, "api")); err == nil {
			r := run(t, commandTimeout, "id", "--json", "--home", d.home)
			if r.code == 0 {
				decodeJSON(t, r.stdout, &d.id, "peer_id", "addrs")
				return
			}
			last = r.String()
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("daemon %s not ready after %v; last id attempt: %s\ndaemon stderr:\n%s", d.name, readyTimeout, last, d.stderr)
}

// stop sends SIGTERM, waits for the exit and checks that it was clean: exit
// code 0, the api file removed, no crash output. Later calls do nothing.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	d.stopWith(t, syscall.SIGTERM)
}

// kill stops the daemon with SIGKILL, as a crash would, and waits for it.
func (d *daemon) kill(t *testing.T) {
	t.Helper()
	d.mu.Lock()
	d.stopped = true
	d.mu.Unlock()
	d.cancel() // exec.CommandContext kills the process
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon %s survived SIGKILL", d.name)
	}
}

// stopWith is stop with the given signal.
func (d *daemon) stopWith(t *testing.T, sig os.Signal) {
	t.Helper()
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return
	}
	d.stopped = true
	d.mu.Unlock()
	defer d.cancel()

	select {
	case <-d.done:
		t.Errorf("daemon %s exited before it was stopped (exit %d)\nstderr:\n%s", d.name, d.cmd.ProcessState.ExitCode(), d.stderr)
		return
	default:
	}
	start := time.Now()
	if err := d.cmd.Process.Signal(sig); err != nil {
		t.Errorf("signal daemon %s: %v", d.name, err)
	}
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		d.cancel() // SIGKILL
		<-d.done
		t.Errorf("daemon %s still running 20s after %v; killed it\nstderr:\n%s", d.name, sig, d.stderr)
		return
	}
	took := time.Since(start)
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("daemon %s exited %d after %v, want 0\nstdout:\n%s\nstderr:\n%s", d.name, code, sig, d.stdout, d.stderr)
	}
	if _, err := os.Stat(filepath.Join(d.home, "api")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("daemon %s left %s behind after a clean stop (stat: %v)", d.name, filepath.Join(d.home, "api"), err)
	}
	if !strings.Contains(d.stdout.String(), "p2pchat daemon stopping") {
		t.Errorf("daemon %s did not say it was stopping; stdout:\n%s", d.name, d.stdout)
	}
	checkNoCrash(t, "daemon "+d.name+" stderr:\n"+d.stderr.String(), d.stderr.String())
	t.Logf("daemon %s stopped by %v in %v", d.name, sig, took.Round(time.Millisecond))
}

// run runs a command against this daemon (adds --home).
func (d *daemon) run(t *testing.T, args ...string) result {
	t.Helper()
	return run(t, commandTimeout, append(args, "--home", d.home)...)
}

// mustRun runs a command against this daemon and wants exit 0.
func (d *daemon) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	return mustRun(t, append(args, "--home", d.home)...)
}

// The JSON the CLI prints. Field names are the contract; decodeJSON also
// checks that each named key is present.
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

var (
	groupKeys   = []string{"group_id", "name", "members", "key_id"}
	messageKeys = []string{"id", "sender", "sent_at", "text", "status"}
)

// decodeJSON decodes one JSON object from s into v and checks that each of
// keys is present in it.
func decodeJSON(t *testing.T, s string, v any, keys ...string) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
	if len(keys) == 0 {
		return
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("decode %q as an object: %v", s, err)
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			t.Fatalf("JSON %s has no %q field", strings.TrimSpace(s), k)
		}
	}
}

func (d *daemon) groupInfo(t *testing.T, group string) groupInfo {
	t.Helper()
	var g groupInfo
	decodeJSON(t, d.mustRun(t, "group", "info", group, "--json"), &g, groupKeys...)
	for _, m := range g.Members {
		if m.Role != "admin" && m.Role != "member" {
			t.Fatalf("member %s has role %q", m.PeerID, m.Role)
		}
	}
	return g
}

// messages runs `messages GROUP --json` and checks each line's shape.
func (d *daemon) messages(t *testing.T, group string) []message {
	t.Helper()
	return parseMessages(t, d.mustRun(t, "messages", group, "--json"))
}

func parseMessages(t *testing.T, out string) []message {
	t.Helper()
	var msgs []message
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		msgs = append(msgs, parseMessage(t, line))
	}
	return msgs
}

func parseMessage(t *testing.T, line string) message {
	t.Helper()
	var m message
	decodeJSON(t, line, &m, messageKeys...)
	switch m.Status {
	case "ok":
		if _, err := time.Parse(time.RFC3339Nano, m.SentAt); err != nil {
			t.Fatalf("message %s: sent_at %q is not RFC 3339: %v", line, m.SentAt, err)
		}
	case "waiting_for_key":
		if m.Text != "" {
			t.Fatalf("message waiting for its key shows text: %s", line)
		}
	default:
		t.Fatalf("message %s: status %q, want ok or waiting_for_key", line, m.Status)
	}
	if m.ID == "" || !strings.HasPrefix(m.ID, m.Sender+"/") {
		t.Fatalf("message %s: id %q does not name its sender %q", line, m.ID, m.Sender)
	}
	return m
}

// readable reports whether msgs hold text from sender with status ok.
func readable(msgs []message, sender, text string) bool {
	return slices.ContainsFunc(msgs, func(m message) bool {
		return m.Status == "ok" && m.Text == text && (sender == "" || m.Sender == sender)
	})
}

// eventually polls cond until it reports true or timeout passes, then fails
// the test with what and cond's last detail.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	start := time.Now()
	for {
		ok, detail := cond()
		if ok {
			t.Logf("%s: after %v", what, time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v; last: %s", what, timeout, detail)
		}
		time.Sleep(150 * time.Millisecond)
	}
}

// apiGet sends an authenticated (token != "") GET to the daemon's api.
func apiGet(t *testing.T, ctx context.Context, home, path, token string) *http.Response {
	t.Helper()
	addr, err := os.ReadFile(filepath.Join(home, "api"))
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+strings.TrimSpace(string(addr))+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp
}

func readToken(t *testing.T, home string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(home, "api.token"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// lineReader delivers the lines of r on a channel, closed at EOF.
func lineReader(r io.Reader) <-chan string {
	ch := make(chan string, 256)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			ch <- sc.Text()
		}
	}()
	return ch
}

// nextLine waits for the next line of ch until timeout; ok is false at EOF.
func nextLine(t *testing.T, ch <-chan string, timeout time.Duration, what string) (string, bool) {
	t.Helper()
	select {
	case l, ok := <-ch:
		return l, ok
	case <-time.After(timeout):
		t.Fatalf("%s: no line within %v", what, timeout)
	}
	return "", false
}
