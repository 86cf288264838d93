package faults

// Topology: one router namespace, and per daemon a namespace with a veth to
// the router: node i is 10.77.i.2/24, its router side 10.77.i.1, default
// route via the router.

import (
	"fmt"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
)

var topoSeq atomic.Int64

type topo struct {
	t      *testing.T
	router string
	name   string // this topology's part of the namespace names
	nodes  []string
}

// sh runs a command and fails t if it fails.
func sh(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newTopo makes the router and n node namespaces; t.Cleanup deletes them
// (after the daemons' cleanups, which are registered later and run first).
func newTopo(t *testing.T, n int) *topo {
	t.Helper()
	tp := &topo{t: t, name: fmt.Sprintf("%s%d", prefix, topoSeq.Add(1))}
	tp.router = tp.name + "-r"
	t.Cleanup(func() {
		for _, ns := range append([]string{tp.router}, tp.nodes...) {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v: %s", ns, err, out)
			}
		}
	})
	sh(t, "ip", "netns", "add", tp.router)
	sh(t, "ip", "-n", tp.router, "link", "set", "lo", "up")
	sh(t, "ip", "netns", "exec", tp.router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	for i := 1; i <= n; i++ {
		ns := fmt.Sprintf("%s-n%d", tp.name, i)
		sh(t, "ip", "netns", "add", ns)
		tp.nodes = append(tp.nodes, ns)
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
		sh(t, "ip", "-n", tp.router, "link", "add", fmt.Sprintf("r%d", i), "type", "veth", "peer", "name", "eth0", "netns", ns)
		sh(t, "ip", "-n", tp.router, "addr", "add", fmt.Sprintf("10.77.%d.1/24", i), "dev", fmt.Sprintf("r%d", i))
		sh(t, "ip", "-n", tp.router, "link", "set", fmt.Sprintf("r%d", i), "up")
		sh(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.77.%d.2/24", i), "dev", "eth0")
		sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", ns, "route", "add", "default", "via", fmt.Sprintf("10.77.%d.1", i))
	}
	return tp
}

// ip is node i's address (i from 1).
func nodeIP(i int) string { return fmt.Sprintf("10.77.%d.2", i) }

// partition cuts every path between the nodes of side a and those of side
// b (node numbers from 1) in the router, silently: packets are dropped, as
// on a broken link, not refused. heal undoes it.
func (tp *topo) partition(a, b []int) (heal func()) {
	t := tp.t
	t.Helper()
	var rules [][]string
	for _, i := range a {
		for _, j := range b {
			for _, dir := range [][2]int{{i, j}, {j, i}} {
				r := []string{"from", fmt.Sprintf("10.77.%d.0/24", dir[0]), "to", fmt.Sprintf("10.77.%d.0/24", dir[1]), "blackhole"}
				sh(t, append([]string{"ip", "-n", tp.router, "rule", "add"}, r...)...)
				rules = append(rules, r)
			}
		}
	}
	// Packets already routed are not; flush the route cache anyway.
	return func() {
		for _, r := range rules {
			sh(t, append([]string{"ip", "-n", tp.router, "rule", "del"}, r...)...)
		}
	}
}

// setLink brings node i's link to the router up or down (its side).
func (tp *topo) setLink(i int, up bool) {
	state := "down"
	if up {
		state = "up"
	}
	sh(tp.t, "ip", "-n", tp.router, "link", "set", fmt.Sprintf("r%d", i), state)
	if up {
		// The router's route to the node's net comes back with the link.
		sh(tp.t, "ip", "-n", tp.nodes[i-1], "link", "set", "eth0", "up")
	}
}

// loss makes the router drop each forwarded packet with probability p
// (iptables statistic match in the router's FORWARD chain).
func (tp *topo) loss(p float64) (undo func()) {
	t := tp.t
	t.Helper()
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatal("iptables is not installed: apt-get install -y iptables (.ci/run does)")
	}
	rule := []string{"FORWARD", "-m", "statistic", "--mode", "random", "--probability", fmt.Sprint(p), "-j", "DROP"}
	sh(t, append([]string{"ip", "netns", "exec", tp.router, "iptables", "-A"}, rule...)...)
	return func() { sh(t, append([]string{"ip", "netns", "exec", tp.router, "iptables", "-D"}, rule...)...) }
}

// forwardDrops is how many packets the router's FORWARD chain dropped.
func (tp *topo) forwardDrops() string {
	out, err := exec.Command("ip", "netns", "exec", tp.router, "iptables", "-L", "FORWARD", "-v", "-n", "-x").CombinedOutput()
	if err != nil {
		return err.Error()
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "DROP") && strings.Contains(l, "statistic") {
			return strings.Fields(l)[0]
		}
	}
	return "?"
}
