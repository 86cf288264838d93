package faults

// A TCP proxy that delays: the kernel here has no netem, so scenario (g)
// adds latency in user space. The test binary re-executes itself inside the
// router namespace with P2PCHAT_FAULTS_PROXY set; each listener forwards to
// its target and holds every chunk read for delay ± jitter before writing
// it on (in order: a TCP stream cannot be reordered).

import (
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proxyRoute is one listener: listen on Listen, forward to Target.
type proxyRoute struct{ Listen, Target string }

// startProxy runs the proxy for routes in the router namespace; t.Cleanup
// kills it by its pid.
func startProxy(t *testing.T, tp *topo, delay, jitter time.Duration, routes []proxyRoute) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, r := range routes {
		parts = append(parts, r.Listen+">"+r.Target)
	}
	spec := fmt.Sprintf("%v;%v;%s", delay, jitter, strings.Join(parts, ","))
	cmd := exec.Command("ip", "netns", "exec", tp.router, exe)
	cmd.Env = append(os.Environ(), "P2PCHAT_FAULTS_PROXY="+spec)
	var out syncBuffer
	cmd.Stderr = &out
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
	})
	// It prints "ready" once every listener is up.
	ready := make(chan bool, 1)
	go func() {
		buf := make([]byte, 6)
		_, err := io.ReadFull(stdout, buf)
		ready <- err == nil && string(buf) == "ready\n"
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case ok := <-ready:
		if !ok {
			t.Fatalf("the proxy did not start: %s", out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the proxy did not start in 10s")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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

// proxyMain is the proxy process: spec is DELAY;JITTER;LISTEN>TARGET,...
func proxyMain(spec string) int {
	f := strings.SplitN(spec, ";", 3)
	if len(f) != 3 {
		fmt.Fprintln(os.Stderr, "proxy: bad spec", spec)
		return 2
	}
	delay, err1 := time.ParseDuration(f[0])
	jitter, err2 := time.ParseDuration(f[1])
	if err1 != nil || err2 != nil {
		fmt.Fprintln(os.Stderr, "proxy: bad spec", spec)
		return 2
	}
	for _, route := range strings.Split(f[2], ",") {
		listen, target, _ := strings.Cut(route, ">")
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "proxy:", err)
			return 1
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go proxyConn(c, target, delay, jitter)
			}
		}()
	}
	fmt.Println("ready")
	select {}
}

func proxyConn(c net.Conn, target string, delay, jitter time.Duration) {
	u, err := net.DialTimeout("tcp", target, 10*time.Second)
	if err != nil {
		c.Close()
		return
	}
	go delayedCopy(u, c, delay, jitter)
	delayedCopy(c, u, delay, jitter)
}

// delayedCopy copies src to dst, each chunk delay ± jitter after it was
// read, in order; it closes both at the end.
func delayedCopy(dst, src net.Conn, delay, jitter time.Duration) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	q := make(chan chunk, 4096)
	go func() {
		defer close(q)
		last := time.Time{}
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				at := time.Now().Add(delay)
				if jitter > 0 {
					at = at.Add(time.Duration(rand.Int64N(int64(2*jitter))) - jitter)
				}
				if at.Before(last) {
					at = last
				}
				last = at
				q <- chunk{buf[:n], at}
			}
			if err != nil {
				return
			}
		}
	}()
	for ch := range q {
		time.Sleep(time.Until(ch.at))
		if _, err := dst.Write(ch.b); err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
