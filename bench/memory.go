package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/node"
)

// memSnap is the process's heap in use (after a forced GC) and RSS.
type memSnap struct{ heap, alloc, rss uint64 }

func snapshotMem() memSnap {
	for i := 0; i < 3; i++ {
		runtime.GC()
	}
	debug.FreeOSMemory()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return memSnap{heap: m.HeapInuse, alloc: m.HeapAlloc, rss: procRSS(os.Getpid())}
}

// procRSS reads VmRSS of a process from /proc, in bytes (0 if unknown).
func procRSS(pid int) uint64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fs := strings.Fields(v)
			if len(fs) >= 1 {
				kb, _ := strconv.ParseUint(fs[0], 10, 64)
				return kb << 10
			}
		}
	}
	return 0
}

func mib(b float64) float64 { return b / (1 << 20) }

// memDelta is memory added per item, in MiB.
type memDelta struct{ heap, alloc, rss float64 }

func perItem(before, after memSnap, n int) memDelta {
	d := func(a, b uint64) float64 { return mib((float64(b) - float64(a)) / float64(n)) }
	return memDelta{heap: d(before.heap, after.heap), alloc: d(before.alloc, after.alloc), rss: d(before.rss, after.rss)}
}

// runMemory measures, in this process, the heap (and RSS) added per node
// and per group membership: N raw nodes (host + GossipSub) with T topics,
// versus N p2pchat nodes (own loopback host, on-disk store, as the daemon
// runs) with G groups of all N members. All nodes are connected to each
// other, and each step idles 3 s before it is measured.
func runMemory(cfg *config, res *results, _ *plotData) {
	const sec = "Memory (in-process, after GC)"
	n, groups := cfg.memNodes, cfg.memGroups
	var rawN, rawTopic memDelta
	rawOK := func() error {
		before := snapshotMem()
		var nodes []*rawNode
		defer func() { closeAll(nodes, (*rawNode).close) }()
		for i := 0; i < n; i++ {
			r, err := newRawNode()
			if err != nil {
				return err
			}
			nodes = append(nodes, r)
		}
		if err := connectHosts(rawHosts(nodes)); err != nil {
			return err
		}
		time.Sleep(3 * time.Second)
		mid := snapshotMem()
		rawN = perItem(before, mid, n)
		var subs []*pubsub.Subscription
		var topics []*pubsub.Topic
		for t := 0; t < groups; t++ {
			name := fmt.Sprintf("/bench/mem/%d/%d", time.Now().UnixNano(), t)
			for _, r := range nodes {
				tp, err := r.ps.Join(name)
				if err != nil {
					return err
				}
				sub, err := tp.Subscribe(pubsub.WithBufferSize(gossip.SubscriptionBuffer))
				if err != nil {
					return err
				}
				topics, subs = append(topics, tp), append(subs, sub)
			}
		}
		if err := waitFor(30*time.Second, "raw topic peers", func() bool {
			for _, tp := range topics {
				if len(tp.ListPeers()) < n-1 {
					return false
				}
			}
			return true
		}); err != nil {
			return err
		}
		time.Sleep(3 * time.Second)
		after := snapshotMem()
		rawTopic = perItem(mid, after, n*groups)
		for _, s := range subs {
			s.Cancel()
		}
		for _, tp := range topics {
			_ = tp.Close()
		}
		return nil
	}()
	if rawOK != nil {
		res.fail(sec, "raw nodes", rawOK)
		return
	}
	time.Sleep(time.Second)

	var p2pNode, p2pGroup memDelta
	err := func() error {
		before := snapshotMem()
		var nodes []*pnode
		var dirs []string
		defer func() {
			closeAll(nodes, (*pnode).close)
			for _, d := range dirs {
				_ = os.RemoveAll(d)
			}
		}()
		for i := 0; i < n; i++ {
			d, err := os.MkdirTemp("", "p2pchat-bench-mem-")
			if err != nil {
				return err
			}
			dirs = append(dirs, d)
			p, err := newLoopbackNode(d, node.DefaultParams(), false)
			if err != nil {
				return err
			}
			nodes = append(nodes, p)
		}
		if err := connectHosts(hostsOf(nodes)); err != nil {
			return err
		}
		time.Sleep(3 * time.Second)
		mid := snapshotMem()
		p2pNode = perItem(before, mid, n)

		for g := 0; g < groups; g++ {
			// Rotate who founds each group, as real use would.
			order := append(append([]*pnode{}, nodes[g%n:]...), nodes[:g%n]...)
			if _, err := formGroup(order, 60*time.Second); err != nil {
				return err
			}
		}
		time.Sleep(3 * time.Second)
		after := snapshotMem()
		p2pGroup = perItem(mid, after, n*groups)
		if cfg.memProfile != "" {
			if f, err := os.Create(cfg.memProfile); err == nil {
				_ = pprof.WriteHeapProfile(f)
				f.Close()
				cfg.memProfiled = true
			}
		}
		return nil
	}()
	if err != nil {
		res.fail(sec, "p2pchat nodes", err)
		return
	}
	res.add(row{Section: sec, Metric: fmt.Sprintf("per node, RSS (%d connected nodes)", n), Unit: "MiB", Raw: rawN.rss, P2P: p2pNode.rss,
		Note: "process VmRSS delta ÷ nodes; p2pchat nodes have on-disk stores"})
	res.add(row{Section: sec, Metric: fmt.Sprintf("per node, heap in use (%d connected nodes)", n), Unit: "MiB", Raw: rawN.heap, P2P: p2pNode.heap,
		Note: fmt.Sprintf("HeapInuse delta ÷ nodes (live objects: raw %.2f, p2pchat %.2f MiB); counts badger's memtable arena (MemTableSize 8 MiB), allocated at open but mostly not resident", rawN.alloc, p2pNode.alloc)})
	res.add(row{Section: sec, Metric: fmt.Sprintf("per group per member, RSS (%d groups × %d members)", groups, n), Unit: "KiB", Raw: rawTopic.rss * 1024, P2P: p2pGroup.rss * 1024,
		Note: "raw: one more topic joined and subscribed"})
	res.add(row{Section: sec, Metric: fmt.Sprintf("per group per member, heap in use (%d groups × %d members)", groups, n), Unit: "KiB", Raw: rawTopic.heap * 1024, P2P: p2pGroup.heap * 1024,
		Note: fmt.Sprintf("live objects: raw %.0f KiB, p2pchat %.0f KiB", rawTopic.alloc*1024, p2pGroup.alloc*1024)})
}
