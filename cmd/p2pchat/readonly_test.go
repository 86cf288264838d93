package main

import (
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonStopsOnReadOnlyHome: a daemon whose home turns read-only under
// it (a remount, as a failing disk does) exits within a few seconds of
// SIGTERM with one clear error line and a non-zero status, instead of
// hanging in the store's flush; started again on the writable home, it
// has every message it had accepted. Needs root for the read-only bind
// mount, as CI runs.
func TestDaemonStopsOnReadOnlyHome(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a read-only bind mount (CI runs as root)")
	}
	home := newHome(t, "ro")
	d := startDaemon(t, "RO", home)
	createGroup(t, d, "ro")
	for _, text := range []string{"one", "two", "three"} {
		d.mustRun(t, "send", "ro", text)
	}
	if out, err := exec.Command("mount", "--bind", home, home).CombinedOutput(); err != nil {
		t.Skipf("bind mount not available here: %v: %s", err, out)
	}
	mounted := true
	unmount := func() {
		if mounted {
			_ = exec.Command("umount", home).Run()
			mounted = false
		}
	}
	defer unmount()
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", home).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v: %s", err, out)
	}

	d.mu.Lock()
	d.stopped = true // this test checks the stop itself
	d.mu.Unlock()
	start := time.Now()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		d.cancel()
		<-d.done
		t.Fatalf("daemon still running 15 s after SIGTERM on a read-only home\nstderr:\n%s", d.stderr)
	}
	took := time.Since(start)
	if code := d.cmd.ProcessState.ExitCode(); code == 0 {
		t.Fatalf("daemon exited 0 although it could not close its store\nstderr:\n%s", d.stderr)
	}
	lines := strings.Split(strings.TrimSpace(d.stderr.String()), "\n")
	last := lines[len(lines)-1]
	if !strings.HasPrefix(last, "p2pchat: error: stopping: ") || !strings.Contains(last, "read-only") {
		t.Fatalf("last stderr line %q, want one clear error about stopping", last)
	}
	checkNoCrash(t, "daemon stderr", d.stderr.String())
	t.Logf("stopped in %v: %s", took.Round(time.Millisecond), last)

	unmount()
	d2 := startDaemon(t, "RO again", home)
	msgs := d2.messages(t, "ro")
	for _, text := range []string{"one", "two", "three"} {
		if !readable(msgs, d2.id.PeerID, text) {
			t.Fatalf("after the read-only stop, %q is missing: %v", text, msgs)
		}
	}
}
