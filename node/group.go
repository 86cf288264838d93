package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/store"
	"github.com/p2pchat/p2pchat/wire"
)

// Group is one joined group. Its methods are safe for concurrent use.
//
// One mutex guards the group's state (roster, keys, waiting messages); it is
// never held across network I/O or a call into pubsub.
type Group struct {
	n     *Node
	id    roster.GroupID
	topic *gossip.Topic // nil once the group is left

	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of this group but the topic's two
	wake   chan struct{}  // nudges the timer loop

	// The topic's reader and peer-event goroutines stop before the topic
	// closes: pubsub refuses (and races) closing a topic with live handlers.
	topicCancel context.CancelFunc
	topicWG     sync.WaitGroup

	ingestMu sync.Mutex // serializes storing and showing messages; taken before mu
	sendMu   sync.Mutex // held by the Send storing a batch of our sends; taken before mu
	sendQMu  sync.Mutex // guards sendQ; held for no more than a slice operation
	sendQ    []*sendRequest

	// out publishes our stored envelopes; pushed to under mu, so they
	// leave in sequence order. Set while the topic is joined.
	out *outbox

	mu                sync.Mutex
	roster            *roster.Roster
	ring              *keyring.Ring
	left              bool
	members           []peer.ID                   // last membership reported in an event
	sendKey           keyring.ID                  // last sending key reported in an event
	keyCh             chan struct{}               // closed and replaced when a key arrives
	ingestQ           chan heldEnvelope           // envelopes from the topic, for ingestLoop
	signedMeta        map[keyring.ID]*wire.Signed // our signature over key metadata, for transfers
	waiting           map[keyring.ID][]msgRef     // messages waiting for a key
	keyReqs           *keyRequestSchedule         // our requests for missing keys
	order             *deliveryOrder              // per-sender delivery order
	held              []heldEnvelope              // envelopes whose roster heads are unknown
	reqBudget         map[peer.ID]*tokenBucket    // key requests accepted per requester
	answered          answeredRequests            // key requests answered; its own lock
	rotateAt          time.Time                   // designated rotation deadline; zero when none
	ackAt             time.Time                   // when to sign an ack; zero when none is due
	toMark            map[peer.ID]bool            // departed peers the next ack marks
	highSeq           map[peer.ID]uint64          // highest envelope seq stored, per sender (this run)
	stored            map[peer.ID]seqRanges       // slots the store holds, per sender (see loadStoredSlots)
	departedKeys      map[keyring.ID]*keyring.Key // departed creators' keys no waiting message names yet
	fetching          map[peer.ID]bool            // roster fetches running, by peer
	syncing           map[peer.ID]bool            // history syncs running, by peer
	resyncAt          map[peer.ID]time.Time       // syncs due once the mesh settles
	gapSenders        []peer.ID                   // senders with a gap to sync soon
	nextPeriodicSync  time.Time
	stopped           bool
	sendKeyCache      *keyring.Key // sendingKeyLocked's answer...
	sendKeyCacheAt    [2]int       // ...for this roster size and ring size
	sendKeyCacheValid bool
	removals          []roster.OpID // effective removals, cached for the sending-key rule
	removalsAt        int           // roster size the cache was computed at
}

type msgRef struct {
	sender peer.ID
	seq    uint64
}

// startGroup wires a roster into a running group: keys from the store, the
// topic, and the group's goroutines.
func (n *Node) startGroup(r *roster.Roster, left, isNew bool) (*Group, error) {
	g := &Group{
		n:            n,
		id:           r.ID(),
		wake:         make(chan struct{}, 1),
		roster:       r,
		ring:         keyring.NewRing(r.ID()),
		left:         left,
		signedMeta:   make(map[keyring.ID]*wire.Signed),
		waiting:      make(map[keyring.ID][]msgRef),
		keyReqs:      newKeyRequestSchedule(n.params),
		order:        newDeliveryOrder(n.params),
		reqBudget:    make(map[peer.ID]*tokenBucket),
		fetching:     make(map[peer.ID]bool),
		keyCh:        make(chan struct{}),
		ingestQ:      make(chan heldEnvelope, 4*ingestBatch),
		syncing:      make(map[peer.ID]bool),
		resyncAt:     make(map[peer.ID]time.Time),
		toMark:       make(map[peer.ID]bool),
		highSeq:      make(map[peer.ID]uint64),
		stored:       make(map[peer.ID]seqRanges),
		departedKeys: make(map[keyring.ID]*keyring.Key),
	}
	g.ctx, g.cancel = context.WithCancel(n.ctx)
	if err := g.loadKeys(); err != nil {
		return nil, err
	}
	if err := g.loadStoredSlots(); err != nil {
		return nil, err
	}
	if err := g.persistRecord(); err != nil {
		return nil, err
	}
	st := r.State()
	g.members = st.MemberIDs()
	if k := g.ring.SendingKey(g.members, g.height); k != nil {
		g.sendKey = k.ID()
	}
	if !st.IsMember(n.self) {
		g.left = true
	}
	// Everything stop needs (the topic, its cancel func, the wait groups)
	// is in place before the group is published in n.groups, where Close
	// finds it.
	var peerEvents *pubsub.TopicEventHandler
	var tctx context.Context
	if !g.left {
		t, err := gossip.JoinTopic(n.ps, g.id, n.verifier, g.policy)
		if err != nil {
			return nil, err
		}
		if peerEvents, err = t.EventHandler(); err != nil {
			_ = t.Close()
			return nil, err
		}
		g.topic = t
		g.out = newOutbox(t.Publish, n.params, n.log.With("group", g.id.ShortString()), func(msgs, envs uint64) {
			n.stats.topicMessagesSent.Add(msgs)
			n.stats.envelopesPublished.Add(envs)
		})
		tctx, g.topicCancel = context.WithCancel(g.ctx)
		g.topicWG.Add(4)
		g.wg.Add(2)
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		g.abandon(peerEvents)
		return nil, ErrClosed
	}
	n.groups[g.id] = g
	if g.topic != nil {
		n.byTopic[gossip.TopicName(g.id)] = g
	}
	n.mu.Unlock()
	if g.topic != nil {
		go g.readLoop(tctx, g.topic)
		go g.ingestLoop(tctx)
		go func() {
			defer g.topicWG.Done()
			g.out.run(tctx)
		}()
		go g.peerLoop(tctx, peerEvents)
		go g.timerLoop()
		go g.requestMissingKeys()
	}
	if isNew {
		n.events.publish(Event{Kind: EventGroupJoined, Group: g.id, Members: st.Members})
	}
	n.rememberAddrsSoon() // members we are connected to already
	return g, nil
}

// abandon undoes a startGroup that did not publish the group: no
// goroutine was started, so the counts added for them are released and the
// topic is left.
func (g *Group) abandon(peerEvents *pubsub.TopicEventHandler) {
	if g.topic != nil {
		peerEvents.Cancel()
		g.topicCancel()
		g.topicWG.Add(-4)
		g.wg.Add(-2)
		_ = g.topic.Close()
		g.topic = nil
	}
	g.cancel()
}

// stop ends the group's goroutines and leaves its topic.
func (g *Group) stop() {
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return
	}
	g.stopped = true
	g.mu.Unlock()
	g.closeTopic()
	g.cancel()
	g.wg.Wait()
}

// closeTopic stops the topic's goroutines, then leaves the topic.
func (g *Group) closeTopic() {
	g.mu.Lock()
	t := g.topic
	g.topic = nil
	g.mu.Unlock()
	if t == nil {
		return
	}
	g.topicCancel()
	g.topicWG.Wait()
	if err := t.Close(); err != nil {
		g.n.log.Debug("close topic", "group", g.id.ShortString(), "err", err)
	}
	g.n.mu.Lock()
	delete(g.n.byTopic, gossip.TopicName(g.id))
	g.n.mu.Unlock()
}

// goTracked runs fn on a goroutine that stop waits for.
func (g *Group) goTracked(fn func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.goTrackedLocked(fn)
}

// goTrackedLocked is goTracked for callers that hold g.mu.
func (g *Group) goTrackedLocked(fn func()) {
	if g.stopped {
		return
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		fn()
	}()
}

func (g *Group) nudge() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// ID is the group's ID.
func (g *Group) ID() roster.GroupID { return g.id }

// Node is the node the group belongs to.
func (g *Group) Node() *Node { return g.n }

// Name is the group's display name, chosen by its founder.
func (g *Group) Name() string { return g.roster.Name() }

// Members returns the current membership, sorted by peer ID.
func (g *Group) Members() []roster.Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.roster.State().Members)
}

// State returns the current roster state.
func (g *Group) State() *roster.State {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.roster.State()
}

// SendingKeyID returns the ID of the key this node now sends with, or the
// zero ID when it holds no qualifying key (the next send generates one).
func (g *Group) SendingKeyID() keyring.ID {
	g.mu.Lock()
	defer g.mu.Unlock()
	if k := g.sendingKeyLocked(); k != nil {
		return k.ID()
	}
	return keyring.ID{}
}

// KeyIDs lists every key held for the group, old ones included.
func (g *Group) KeyIDs() []keyring.ID {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []keyring.ID
	for _, k := range g.ring.Keys() {
		out = append(out, k.ID())
	}
	return out
}

// HasKey reports whether this node holds key id.
func (g *Group) HasKey(id keyring.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.ring.Get(id)
	return ok
}

func (g *Group) hasLeft() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.left
}

// IsMember reports whether p is a current member.
func (g *Group) IsMember(p peer.ID) bool { return g.isMember(p) }

func (g *Group) isMember(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.roster.IsMember(p)
}

// Peers lists connected peers subscribed to the group's topic.
func (g *Group) Peers() []peer.ID {
	g.mu.Lock()
	t := g.topic
	g.mu.Unlock()
	if t == nil {
		return nil
	}
	return t.Peers()
}

// WaitPeers waits until at least n peers are subscribed to the group's topic.
func (g *Group) WaitPeers(ctx context.Context, n int) error {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for len(g.Peers()) < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %d peers: %w", n, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

func (g *Group) persistRecord() error {
	create, ok := g.roster.Op(g.id)
	if !ok {
		return errors.New("roster without its create op")
	}
	b, err := proto.Marshal(&wire.GroupRecord{CreateOp: create.Signed, Left: g.left})
	if err != nil {
		return err
	}
	g.n.disk.put(store.GroupWrite(g.id, b))
	return nil
}

func comparePeers(a, b peer.ID) int { return bytes.Compare([]byte(a), []byte(b)) }
