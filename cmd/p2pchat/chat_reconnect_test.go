package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// chatScreen is a running `p2pchat chat` whose input is a pipe and whose
// output the test reads. The screen runs for real: not on a terminal, it
// draws in the terminal's normal buffer and reads keys from the pipe.
type chatScreen struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *syncBuffer
	stderr *syncBuffer
	done   chan struct{}
}

func startChat(t *testing.T, home, group string) *chatScreen {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c := &chatScreen{out: &syncBuffer{}, stderr: &syncBuffer{}, done: make(chan struct{})}
	c.cmd = exec.CommandContext(ctx, binPath, "chat", group, "--home", home)
	c.cmd.Env = cliEnv()
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.stderr
	stdin, err := c.cmd.StdinPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c.stdin = stdin
	if err := c.cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		_ = c.cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		cancel() // kills it if the test did not quit it
		<-c.done
	})
	return c
}

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]`)

// text is what the screen printed, without escape sequences.
func (c *chatScreen) text() string { return ansiRE.ReplaceAllString(c.out.String(), "") }

// waitFor waits until the screen has printed s.
func (c *chatScreen) waitFor(t *testing.T, timeout time.Duration, s string) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for !strings.Contains(c.text(), s) {
		select {
		case <-c.done:
			t.Fatalf("chat exited (%v) before showing %q; output:\n%s\nstderr:\n%s", c.cmd.ProcessState, s, c.text(), c.stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("chat did not show %q within %v; output:\n%s", s, timeout, c.text())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("chat showed %q after %v", s, time.Since(start).Round(time.Millisecond))
}

// quit presses Ctrl+C and wants a clean exit.
func (c *chatScreen) quit(t *testing.T) {
	t.Helper()
	if _, err := c.stdin.Write([]byte{0x03}); err != nil {
		t.Fatalf("type Ctrl+C: %v", err)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("chat still running 10s after Ctrl+C; output:\n%s", c.text())
	}
	if code := c.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("chat exited %d, want 0; stderr:\n%s", code, c.stderr)
	}
	checkNoCrash(t, "chat output:\n"+c.text()+"\nstderr:\n"+c.stderr.String(), c.out.String()+c.stderr.String())
}

// TestChatReconnectsAfterDaemonRestart runs the chat screen against a real
// daemon, restarts the daemon on the same home (new API port and token,
// event IDs from 1 again) and checks that the screen reconnects by itself
// and shows a message sent after the restart.
func TestChatReconnectsAfterDaemonRestart(t *testing.T) {
	t.Parallel()
	a := startDaemon(t, "A", newHome(t, "A"))
	createGroup(t, a, "team")
	a.mustRun(t, "send", "team", "said before the restart")
	tokenBefore := readToken(t, a.home)

	chat := startChat(t, a.home, "team")
	chat.waitFor(t, 10*time.Second, "said before the restart")

	a.stop(t)
	chat.waitFor(t, 10*time.Second, "daemon connection lost — reconnecting…")

	a2 := startDaemon(t, "A (restarted)", a.home)
	if readToken(t, a.home) == tokenBefore {
		t.Fatal("the restarted daemon kept its token; the test would not show the chat re-reads it")
	}
	chat.waitFor(t, 10*time.Second, "reconnected")
	a2.mustRun(t, "send", "team", "said after the restart")
	chat.waitFor(t, 10*time.Second, "said after the restart")
	chat.quit(t)

	out := chat.text()
	if strings.Contains(out, "no longer has this group") || strings.Contains(out, "could not be re-read") {
		t.Errorf("unexpected error line; output:\n%s", out)
	}
}

// TestChatStopsWhenGroupGone restarts the daemon without its data: the
// chat reconnects, finds no such group, says so once and stops retrying.
func TestChatStopsWhenGroupGone(t *testing.T) {
	t.Parallel()
	a := startDaemon(t, "A", newHome(t, "A"))
	createGroup(t, a, "team")

	chat := startChat(t, a.home, "team")
	chat.waitFor(t, 10*time.Second, "team")

	a.stop(t)
	chat.waitFor(t, 10*time.Second, "daemon connection lost — reconnecting…")
	if err := os.RemoveAll(filepath.Join(a.home, "data")); err != nil {
		t.Fatal(err)
	}
	startDaemon(t, "A (without its data)", a.home)
	chat.waitFor(t, 10*time.Second, "the daemon no longer has this group; not reconnecting")
	chat.quit(t)
}
