package main

import (
	"context"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/internal/gate"
	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/roster"
)

// loopback is the only address every host in the harness listens on.
const loopback = "/ip4/127.0.0.1/tcp/0"

// closeAll closes nodes in parallel (closing 200 nodes one by one is slow)
// and waits, with a deadline, for all of them.
func closeAll[T any](items []T, closeFn func(T)) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for _, it := range items {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			closeFn(it)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		logf("warning: closing %d nodes took over 60 s; continuing", len(items))
	}
}

// withTimeout runs fn with a context that expires after d.
func withTimeout(d time.Duration, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return fn(ctx)
}

// waitFor polls cond every 10 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return nil
}

func ed25519Key() crypto.PrivKey {
	k, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
}

// ---------------------------------------------------------------------------
// p2pchat nodes

// pnode is a p2pchat node with an event consumer whose handler a scenario
// can swap.
type pnode struct {
	*node.Node
	dir   string
	gater *gate.Gater
	sub   *node.Subscription
	done  chan struct{}

	hmu     sync.Mutex
	handler func(node.Event)

	// for mocknet nodes: what the harness created and must close.
	psCancel context.CancelFunc
	host     host.Host
}

func (p *pnode) setHandler(fn func(node.Event)) {
	p.hmu.Lock()
	p.handler = fn
	p.hmu.Unlock()
}

func watch(n *node.Node, handler func(node.Event)) *pnode {
	p := &pnode{Node: n, sub: n.Subscribe(), done: make(chan struct{}), handler: handler}
	go func() {
		defer close(p.done)
		for e := range p.sub.C() {
			p.hmu.Lock()
			h := p.handler
			p.hmu.Unlock()
			if h != nil {
				h(e)
			}
		}
	}()
	return p
}

// close closes the node (and, for mocknet nodes, the pubsub and host the
// harness gave it).
func (p *pnode) close() {
	_ = p.Node.Close()
	p.sub.Close()
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
	if p.psCancel != nil {
		p.psCancel()
	}
	if p.host != nil {
		_ = p.host.Close()
	}
}

// newLoopbackNode starts a p2pchat node that creates its own host on
// loopback TCP: the product's own host and pubsub construction.
func newLoopbackNode(dir string, params node.Params, withGater bool) (*pnode, error) {
	return newLoopbackNodeH(dir, params, withGater, nil)
}

// newLoopbackNodeH is newLoopbackNode with an event handler installed
// before the first event is read.
func newLoopbackNodeH(dir string, params node.Params, withGater bool, handler func(node.Event)) (*pnode, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg := node.Config{Dir: dir, ListenAddrs: []string{loopback}, Params: params, PubSubOptions: tracing()}
	var g *gate.Gater
	if withGater {
		g = gate.New()
		cfg.HostOptions = []libp2p.Option{libp2p.ConnectionGater(g)}
	}
	n, err := node.New(ctx, cfg)
	if err != nil {
		return nil, err
	}
	p := watch(n, handler)
	p.dir, p.gater = dir, g
	return p, nil
}

func addrInfo(h host.Host) peer.AddrInfo { return peer.AddrInfo{ID: h.ID(), Addrs: h.Addrs()} }

// connectHosts connects every pair of hosts once (lower index dials),
// retrying the simultaneous-open failures loopback TCP sometimes gives.
func connectHosts(hosts []host.Host) error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, a := range hosts {
		for _, b := range hosts[i+1:] {
			var err error
			for try := 0; try < 5; try++ {
				dctx := ctx
				if try > 0 {
					dctx = network.WithForceDirectDial(ctx, "bench retry")
				}
				if err = a.Connect(dctx, addrInfo(b)); err == nil {
					break
				}
				time.Sleep(time.Duration(10*(try+1)) * time.Millisecond)
			}
			if err != nil {
				return fmt.Errorf("connect: %w", err)
			}
		}
	}
	return nil
}

func hostsOf(nodes []*pnode) []host.Host {
	out := make([]host.Host, len(nodes))
	for i, n := range nodes {
		out[i] = n.Host()
	}
	return out
}

func mustGroup(n *pnode, gid roster.GroupID) *node.Group {
	g, ok := n.Group(gid)
	if !ok {
		panic(fmt.Sprintf("node %s has no group %s", n.ID().ShortString(), gid.ShortString()))
	}
	return g
}

// formGroup has nodes[0] create a group and add every other node, each of
// which joins through nodes[0] (the product's add-then-join path, one member
// at a time); then waits until every member sees every other on the topic
// and all agree on the roster.
func formGroup(nodes []*pnode, timeout time.Duration) (roster.GroupID, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	g, err := nodes[0].CreateGroup(ctx, "bench")
	if err != nil {
		return roster.GroupID{}, fmt.Errorf("create group: %w", err)
	}
	for _, m := range nodes[1:] {
		if err := g.Add(ctx, m.ID(), roster.RoleMember); err != nil {
			return roster.GroupID{}, fmt.Errorf("add: %w", err)
		}
		if _, err := m.JoinGroup(ctx, g.ID(), addrInfo(nodes[0].Host())); err != nil {
			return roster.GroupID{}, fmt.Errorf("join: %w", err)
		}
	}
	left := time.Until(deadlineOf(ctx))
	err = waitMesh(nodes, g.ID(), left)
	return g.ID(), err
}

func deadlineOf(ctx context.Context) time.Time {
	d, ok := ctx.Deadline()
	if !ok {
		return time.Now().Add(time.Minute)
	}
	return d
}

// waitMesh waits until every node sees each member it is connected to on
// the group's topic, and all agree on the roster.
func waitMesh(nodes []*pnode, gid roster.GroupID, timeout time.Duration) error {
	ids := make(map[peer.ID]bool, len(nodes))
	for _, n := range nodes {
		ids[n.ID()] = true
	}
	return waitFor(timeout, "topic peers and roster agreement", func() bool {
		want := mustGroup(nodes[0], gid).State().Digest
		for _, n := range nodes {
			g := mustGroup(n, gid)
			if g.State().Digest != want {
				return false
			}
			neighbours := 0
			for _, p := range n.Host().Network().Peers() {
				if ids[p] {
					neighbours++
				}
			}
			if len(g.Peers()) < neighbours {
				return false
			}
		}
		return true
	})
}

// ---------------------------------------------------------------------------
// mocknet p2pchat nodes (large groups)

type mockCluster struct {
	mn    mocknet.Mocknet
	nodes []*pnode
}

// newMockCluster starts n p2pchat nodes on a mocknet, each on a host and
// GossipSub router the harness builds (gossip.PubSubOptions(), as the node
// would), all linked, connected as topology(n, extra) says.
func newMockCluster(n, extra int, params node.Params) (*mockCluster, error) {
	mc := &mockCluster{mn: mocknet.New()}
	ok := false
	defer func() {
		if !ok {
			mc.close()
		}
	}()
	hosts := make([]host.Host, n)
	for i := range hosts {
		a := ma.StringCast(fmt.Sprintf("/ip4/10.%d.%d.%d/tcp/4001", i/65536%256, i/256%256, i%256+1))
		h, err := mc.mn.AddPeer(ed25519Key(), a)
		if err != nil {
			return nil, err
		}
		hosts[i] = h
	}
	for _, h := range hosts {
		psctx, pscancel := context.WithCancel(context.Background())
		filter := node.NewPeerFilter()
		ps, err := pubsub.NewGossipSub(psctx, h, filter.PubSubOptions()...)
		if err != nil {
			pscancel()
			return nil, err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		nd, err := node.New(ctx, node.Config{Host: h, PubSub: ps, PeerFilter: filter, Params: params})
		cancel()
		if err != nil {
			pscancel()
			return nil, err
		}
		p := watch(nd, nil)
		p.psCancel, p.host = pscancel, h
		mc.nodes = append(mc.nodes, p)
	}
	// Connect only once every router runs: a router that meets a peer
	// before the peer's router exists never opens its own stream to it.
	if err := mc.mn.LinkAll(); err != nil {
		return nil, err
	}
	for _, e := range topology(n, extra) {
		if _, err := mc.mn.ConnectPeers(hosts[e[0]].ID(), hosts[e[1]].ID()); err != nil {
			return nil, err
		}
	}
	ok = true
	return mc, nil
}

func (mc *mockCluster) close() {
	closeAll(mc.nodes, (*pnode).close)
	_ = mc.mn.Close()
}

// ---------------------------------------------------------------------------
// raw GossipSub nodes

// rawNode is the baseline: a libp2p host built exactly as node.New builds
// its own (libp2p.New with the identity and the listen address, nothing
// else) and a GossipSub router with gossip.PubSubOptions(), publishing and
// reading plain bytes.
type rawNode struct {
	h      host.Host
	ps     *pubsub.PubSub
	cancel context.CancelFunc
	topic  *pubsub.Topic
	sub    *pubsub.Subscription
}

func newRawNode() (*rawNode, error) { return newRawNodeOpts(false) }

// newRawNodeOpts with signed set uses GossipSub's own default signing
// (StrictSign: an Ed25519 signature per message, checked by every
// receiver) on top of gossip.PubSubOptions(); a reference point only.
func newRawNodeOpts(signed bool) (*rawNode, error) {
	h, err := libp2p.New(libp2p.Identity(ed25519Key()), libp2p.ListenAddrStrings(loopback))
	if err != nil {
		return nil, err
	}
	opts := append(gossip.PubSubOptions(), tracing()...)
	if signed {
		opts = append(opts, pubsub.WithMessageAuthor(""), pubsub.WithMessageSignaturePolicy(pubsub.StrictSign))
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h, opts...)
	if err != nil {
		cancel()
		_ = h.Close()
		return nil, err
	}
	return &rawNode{h: h, ps: ps, cancel: cancel}, nil
}

// join joins and subscribes to topic with the subscription buffer p2pchat
// uses.
func (r *rawNode) join(topic string) error {
	t, err := r.ps.Join(topic)
	if err != nil {
		return err
	}
	sub, err := t.Subscribe(pubsub.WithBufferSize(gossip.SubscriptionBuffer))
	if err != nil {
		return err
	}
	r.topic, r.sub = t, sub
	return nil
}

func (r *rawNode) close() {
	if r.sub != nil {
		r.sub.Cancel()
	}
	if r.topic != nil {
		_ = r.topic.Close()
	}
	r.cancel()
	_ = r.h.Close()
}

func rawHosts(nodes []*rawNode) []host.Host {
	out := make([]host.Host, len(nodes))
	for i, n := range nodes {
		out[i] = n.h
	}
	return out
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// topology returns the connections of an n-node cluster: node 0 (the admin)
// connects to every node, and every other node to extra distinct random
// others, so each member has about 1+2*extra connections. extra < 0 means
// a full mesh. The random source is seeded by n: the same topology every run.
func topology(n, extra int) [][2]int {
	var edges [][2]int
	seen := make(map[[2]int]bool)
	addEdge := func(a, b int) {
		if a > b {
			a, b = b, a
		}
		if a == b || seen[[2]int{a, b}] {
			return
		}
		seen[[2]int{a, b}] = true
		edges = append(edges, [2]int{a, b})
	}
	if extra < 0 || extra >= n-2 {
		for i := 0; i < n; i++ {
			for j := i + 1; j < n; j++ {
				addEdge(i, j)
			}
		}
		return edges
	}
	rng := mrand.New(mrand.NewPCG(uint64(n), 42))
	for i := 1; i < n; i++ {
		addEdge(0, i)
	}
	for i := 1; i < n; i++ {
		// extra new connections dialed by i, to random members it is not
		// connected to yet (fewer if there are not that many left).
		cands := rng.Perm(n - 1)
		added := 0
		for _, c := range cands {
			j := c + 1
			if added == extra {
				break
			}
			if j == i || seen[[2]int{min(i, j), max(i, j)}] {
				continue
			}
			addEdge(i, j)
			added++
		}
	}
	return edges
}
