package main

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/roster"
)

// runSelfHeal reproduces node/bench_test.go BenchmarkSelfHeal with product
// timings (DefaultParams): a (admin), relay and spare are connected to each
// other; n is connected to relay only and cannot reach a. Each sample a
// removes spare (rotating; its push reaches relay, never n), then sends a
// message under the new key. n shows it waiting for its key, asks the group,
// relay answers. Measured: n's waiting event to n's decrypted event.
func runSelfHeal(cfg *config, res *results, plots *plotData) {
	const sec = "Self-heal (raced message, loopback TCP)"
	heal, noRace, err := measureSelfHeal(cfg.selfHealSamples)
	plots.selfHeal = heal
	if len(heal) == 0 {
		if err == nil {
			err = fmt.Errorf("no sample raced (%d tries)", noRace)
		}
		res.fail(sec, "waiting → decrypted", err)
		return
	}
	h := sortedCopy(heal)
	note := fmt.Sprintf("%d samples; %d sends not raced (key arrived first) were not counted; includes the %v KeyRequestDelay", len(h), noRace, node.DefaultParams().KeyRequestDelay)
	if err != nil {
		note += "; stopped early: " + err.Error()
	}
	res.add(row{Section: sec, Metric: "waiting → decrypted, p50", Unit: "ms", Raw: math.NaN(), P2P: ms(pct(h, .5)), Note: note})
	p99 := ms(pct(h, .99))
	res.add(row{Section: sec, Metric: "waiting → decrypted, p99", Unit: "ms", Raw: math.NaN(), P2P: p99, Target: "≤ 500 ms", Verdict: verdict(p99 <= 500)})
}

func measureSelfHeal(samples int) (heal []time.Duration, noRace int, err error) {
	var nodes []*pnode
	defer func() { closeAll(nodes, (*pnode).close) }()
	for i := 0; i < 4; i++ {
		p, err := newLoopbackNode("", node.DefaultParams(), true)
		if err != nil {
			return nil, 0, err
		}
		nodes = append(nodes, p)
	}
	a, relay, spare, n := nodes[0], nodes[1], nodes[2], nodes[3]
	if err := connectHosts(hostsOf([]*pnode{a, relay, spare})); err != nil {
		return nil, 0, err
	}
	if err := connectHosts(hostsOf([]*pnode{relay, n})); err != nil {
		return nil, 0, err
	}
	gid, err := formGroup([]*pnode{a, relay, spare}, 30*time.Second)
	if err != nil {
		return nil, 0, err
	}
	ctx := context.Background()
	ag := mustGroup(a, gid)
	if err := withTimeout(30*time.Second, func(ctx context.Context) error { return ag.Add(ctx, n.ID(), roster.RoleMember) }); err != nil {
		return nil, 0, err
	}
	if err := waitFor(10*time.Second, "relay applies the add", func() bool { return mustGroup(relay, gid).IsMember(n.ID()) }); err != nil {
		return nil, 0, err
	}
	jctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	_, err = n.JoinGroup(jctx, gid, addrInfo(relay.Host()))
	cancel()
	if err != nil {
		return nil, 0, err
	}
	// Partition: n cannot reach a or spare, whichever side dials.
	for _, x := range []*pnode{a, spare} {
		x.gater.Block(n.ID())
		n.gater.Block(x.ID())
		_ = x.Host().Network().ClosePeer(n.ID())
		_ = n.Host().Network().ClosePeer(x.ID())
	}
	time.Sleep(2 * time.Second) // let the mesh settle: gossip loss is not what this measures

	var mu sync.Mutex
	waiting := map[string]time.Time{}
	decrypted := map[string]time.Time{}
	n.setHandler(func(e node.Event) {
		if e.Group != gid || e.Message == nil {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		id := e.Message.ID()
		if e.Kind == node.EventMessage && e.Message.Status == node.StatusWaitingForKey {
			waiting[id] = e.Time
		}
		if e.Message.Status == node.StatusOK {
			if _, ok := decrypted[id]; !ok {
				decrypted[id] = e.Time
			}
		}
	})
	tries := 0
	for len(heal) < samples && tries < samples*2 {
		tries++
		if err := withTimeout(30*time.Second, func(ctx context.Context) error { return ag.Remove(ctx, spare.ID()) }); err != nil {
			return heal, noRace, fmt.Errorf("remove: %w", err)
		}
		key := ag.SendingKeyID()
		if err := waitFor(10*time.Second, "relay holds the key", func() bool { return mustGroup(relay, gid).HasKey(key) }); err != nil {
			return heal, noRace, err
		}
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := ag.Send(sctx, fmt.Sprintf("heal %d", tries))
		cancel()
		if err != nil {
			return heal, noRace, fmt.Errorf("send: %w", err)
		}
		id := m.ID()
		if err := waitFor(10*time.Second, "n decrypts the message", func() bool {
			mu.Lock()
			defer mu.Unlock()
			_, ok := decrypted[id]
			return ok
		}); err != nil {
			return heal, noRace, err
		}
		mu.Lock()
		w, raced := waiting[id]
		d := decrypted[id]
		mu.Unlock()
		if raced {
			heal = append(heal, d.Sub(w))
		} else {
			noRace++
		}
		// Re-add spare (not timed).
		if err := withTimeout(30*time.Second, func(ctx context.Context) error { return ag.Add(ctx, spare.ID(), roster.RoleMember) }); err != nil {
			return heal, noRace, fmt.Errorf("re-add: %w", err)
		}
		jctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err = spare.JoinGroup(jctx, gid, addrInfo(a.Host()))
		cancel()
		if err != nil {
			return heal, noRace, fmt.Errorf("rejoin: %w", err)
		}
		if err := waitFor(10*time.Second, "everyone sees the re-add", func() bool {
			return mustGroup(n, gid).IsMember(spare.ID()) && mustGroup(relay, gid).IsMember(spare.ID())
		}); err != nil {
			return heal, noRace, err
		}
	}
	return heal, noRace, nil
}
