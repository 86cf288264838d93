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
	"github.com/p2pchat/p2pchat/internal/wire"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/store"
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
	sendMu   sync.Mutex // serializes our own sends (Send); taken before mu

	// Our envelopes, stored, waiting for publishLoop; appended under mu so
	// they leave in sequence order.
	outMu   sync.Mutex
	outQ    []*wire.Signed
	outWake chan struct{}

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
	keyReqs           map[keyring.ID]*keyRequest  // outstanding requests for keys
	order             map[peer.ID]*senderOrder    // per-sender delivery order
	held              []heldEnvelope              // envelopes whose roster heads are unknown
	reqBudget         map[peer.ID]*tokenBucket    // key requests accepted per requester
	answered          answeredRequests            // key requests answered; its own lock
	rotateAt          time.Time                   // designated rotation deadline; zero when none
	ackAt             time.Time                   // when to sign an ack; zero when none is due
	toMark            map[peer.ID]bool            // departed peers the next ack marks
	highSeq           map[peer.ID]uint64          // highest envelope seq stored, per sender (this run)
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
		outWake:      make(chan struct{}, 1),
		roster:       r,
		ring:         keyring.NewRing(r.ID()),
		left:         left,
		signedMeta:   make(map[keyring.ID]*wire.Signed),
		waiting:      make(map[keyring.ID][]msgRef),
		keyReqs:      make(map[keyring.ID]*keyRequest),
		order:        make(map[peer.ID]*senderOrder),
		reqBudget:    make(map[peer.ID]*tokenBucket),
		fetching:     make(map[peer.ID]bool),
		keyCh:        make(chan struct{}),
		ingestQ:      make(chan heldEnvelope, 4*ingestBatch),
		syncing:      make(map[peer.ID]bool),
		resyncAt:     make(map[peer.ID]time.Time),
		toMark:       make(map[peer.ID]bool),
		highSeq:      make(map[peer.ID]uint64),
		departedKeys: make(map[keyring.ID]*keyring.Key),
	}
	g.ctx, g.cancel = context.WithCancel(n.ctx)
	if err := g.loadKeys(); err != nil {
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
		t, err := gossip.JoinTopic(n.ps, g.id, g.policy)
		if err != nil {
			return nil, err
		}
		if peerEvents, err = t.EventHandler(); err != nil {
			_ = t.Close()
			return nil, err
		}
		g.topic = t
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
		go g.publishLoop(tctx, g.topic)
		go g.peerLoop(tctx, peerEvents)
		go g.timerLoop()
		go g.requestMissingKeys()
	}
	if isNew {
		n.events.publish(Event{Kind: EventGroupJoined, Group: g.id, Members: st.Members})
	}
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

// expectedKeyWait bounds how long a send waits for the key a new member's
// adder derived for it, before generating a key of its own.
const expectedKeyWait = 3 * time.Second

// awaitExpectedKey waits while this node holds no qualifying key but its
// own add op promises one (derived from the adder's key): generating a key
// instead would split the group's sending key for no reason.
func (g *Group) awaitExpectedKey(ctx context.Context) {
	g.mu.Lock()
	waitNeeded := g.sendingKeyLocked() == nil && g.expectsDerivedKeyLocked()
	g.mu.Unlock()
	if !waitNeeded {
		return
	}
	deadline := time.NewTimer(expectedKeyWait)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		if g.sendingKeyLocked() != nil || !g.expectsDerivedKeyLocked() {
			g.mu.Unlock()
			return
		}
		arrived := g.keyCh
		g.mu.Unlock()
		select {
		case <-arrived:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		case <-g.ctx.Done():
			return
		}
	}
}

// expectsDerivedKeyLocked reports whether the effective add op that admitted
// this node names a parent key, and the derived key has not arrived.
func (g *Group) expectsDerivedKeyLocked() bool {
	var mine *roster.Op
	for _, op := range g.roster.Ops() {
		if op.Kind == roster.KindAdd && op.Member == g.n.self && g.roster.Effective(op.ID) {
			mine = op
		}
	}
	return mine != nil && len(mine.ParentKeyID) == 32 && g.derivedForLocked(mine.ID) == nil
}

// offerKey pushes our sending key to a member that just appeared on the
// topic, if it is entitled to it and we are the key's creator or the holder
// ranked first for it: a member that joined after its adder's push failed
// gets its key without asking, at the cost of one or two transfers.
func (g *Group) offerKey(p peer.ID) {
	g.mu.Lock()
	k := g.sendingKeyLocked()
	if k == nil || !k.Meta.IsRecipient(p) || !g.roster.IsMember(p) {
		g.mu.Unlock()
		return
	}
	var holders []peer.ID
	for _, r := range k.Meta.Recipients {
		if r != p && g.roster.IsMember(r) {
			holders = append(holders, r)
		}
	}
	g.mu.Unlock()
	req := &gossip.KeyRequest{Nonce: append(k.Meta.KeyID[:], p...)} // rank holders per key and peer
	if k.Meta.Creator == g.n.self || answersRequest(g.n.self, holders, req, 1) {
		g.sendKeyTo(k, []peer.ID{p}, nil)
	}
}

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

// height orders roster states for the sending-key rule, and rules out
// states that do not follow every removal in the current roster: a key made
// before a shrink is never sent with again, even when its recipients happen
// to equal today's members (the architecture's rule; it also makes the
// key a member sends with change visibly on every departure).
func (g *Group) height(heads []roster.OpID) (int, bool) {
	if !g.roster.Knows(heads) {
		return 0, false
	}
	if removals := g.removalsLocked(); len(removals) > 0 && !g.roster.Descends(heads, removals) {
		return 0, false
	}
	st, err := g.roster.StateAt(heads)
	if err != nil {
		return 0, false
	}
	return st.Size, true
}

// removalsLocked returns the effective remove and leave ops of the current
// roster, cached per roster size.
func (g *Group) removalsLocked() []roster.OpID {
	if g.removalsAt == g.roster.Len() && g.removals != nil {
		return g.removals
	}
	ops := g.roster.Ops()
	g.removals = g.removals[:0]
	for _, op := range ops {
		if (op.Kind == roster.KindRemove || op.Kind == roster.KindLeave) && g.roster.Effective(op.ID) {
			g.removals = append(g.removals, op.ID)
		}
	}
	if g.removals == nil {
		g.removals = []roster.OpID{}
	}
	g.removalsAt = g.roster.Len()
	return g.removals
}

// sendingKeyLocked returns the key to send with, cached until the roster
// or the ring changes (both only grow, so their sizes identify a version).
func (g *Group) sendingKeyLocked() *keyring.Key {
	at := [2]int{g.roster.Len(), g.ring.Len()}
	if g.sendKeyCacheValid && g.sendKeyCacheAt == at {
		return g.sendKeyCache
	}
	g.sendKeyCache = g.ring.SendingKey(g.roster.State().MemberIDs(), g.height)
	g.sendKeyCacheAt, g.sendKeyCacheValid = at, true
	return g.sendKeyCache
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

// loadKeys reads the group's keys. A record that does not verify is
// skipped and logged, not fatal: one bad record must not keep the node
// from starting. requestMissingKeys then asks for the keys of stored
// messages that none of the loaded keys opens.
func (g *Group) loadKeys() error {
	return g.n.store.Keys(g.id, func(b []byte) error {
		var rec wire.KeyRecord
		if err := proto.Unmarshal(b, &rec); err != nil {
			g.n.log.Warn("skipping unreadable key record", "group", g.id.ShortString(), "err", err)
			return nil
		}
		meta, err := keyring.MetaFromWire(rec.Meta)
		if err != nil {
			g.n.log.Warn("skipping key record with bad metadata", "group", g.id.ShortString(), "err", err)
			return nil
		}
		k, err := keyring.FromSecret(rec.Secret, meta)
		if err != nil {
			g.n.log.Warn("skipping key record that does not match its id", "group", g.id.ShortString(), "key_id", meta.KeyID.Short())
			return nil
		}
		g.ring.Add(k)
		return nil
	})
}

// capHeads bounds the heads an op or envelope names. Heads are sorted, so
// every node that caps picks the same ones; ops that leave some heads out
// still merge them later, and envelopes use heads only as a hint.
func capHeads(heads []roster.OpID, max int) []roster.OpID {
	if len(heads) > max {
		return heads[:max]
	}
	return heads
}

// storeKeyLocked writes a key to disk, then adds it to the ring: a key is
// durable before anything is encrypted or decrypted with it.
func (g *Group) storeKeyLocked(k *keyring.Key) (bool, error) {
	if _, ok := g.ring.Get(k.ID()); ok {
		return false, nil
	}
	b, err := proto.Marshal(&wire.KeyRecord{Secret: k.Secret(), Meta: k.Meta.ToWire()})
	if err != nil {
		return false, err
	}
	// Handed to the writer, not written under the lock: whoever needs the
	// key durable (Send before sealing under it, the answer to a key
	// transfer) syncs after unlocking.
	g.n.disk.put(store.KeyWrite(g.id, k.ID(), b))
	return g.ring.Add(k), nil
}

// Send encrypts text under the group's sending key, signs and stores it
// (durably, before it returns) and queues it for publishing: at once after
// a quiet spell, or with the sends queued behind it (Params.PublishBatch,
// PublishInterval). A member that just joined first waits (briefly) for the
// epoch key its adder derived for it. With no qualifying key it generates
// one for the current roster and sends it to every member.
func (g *Group) Send(ctx context.Context, text string) (*Message, error) {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return nil, err
	}
	defer finish()
	if len(text) > gossip.MaxTextSize {
		return nil, fmt.Errorf("%w: text of %d bytes exceeds %d", ErrTooLarge, len(text), gossip.MaxTextSize)
	}
	g.awaitExpectedKey(ctx)
	// sendMu orders our sends: sequence numbers are taken, stored and
	// queued for publishing one send at a time, so they stay gap-free and
	// leave in order. The group lock is held only to choose the key and
	// the roster heads, never across sealing or the disk.
	g.sendMu.Lock()
	defer g.sendMu.Unlock()
	g.mu.Lock()
	if g.left || !g.roster.IsMember(g.n.self) {
		g.mu.Unlock()
		return nil, fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	key := g.sendingKeyLocked()
	var rotated *keyring.Key
	if key == nil {
		var err error
		if rotated, err = g.rotateLocked(); err != nil {
			g.mu.Unlock()
			return nil, err
		}
		key = rotated
	}
	// The envelope names these heads: a roster change applied while it is
	// sealed and stored comes after it, as it would for a send a moment
	// earlier.
	heads := capHeads(g.roster.Heads(), gossip.MaxRosterHeads)
	g.mu.Unlock()

	// The key is durable before any message under it.
	if err := g.n.disk.sync(ctx, g.n.disk.ticket()); err != nil {
		return nil, err
	}
	now := time.Now()
	var env *gossip.Envelope
	firstMark := "kfs/" + key.ID().String() // our first seq under this key
	seq, err := g.n.store.AppendOwn(g.id, "seq", firstMark, []byte(g.n.self), func(seq, first uint64) ([]byte, error) {
		var err error
		env, err = gossip.SealEnvelopeFrom(g.n.rand, g.n.priv, key, seq, first, heads, &wire.Content{Text: text, SentAtMs: now.UnixMilli()})
		if err != nil {
			return nil, err
		}
		return proto.Marshal(&wire.MessageRecord{Envelope: env.Signed, ReceivedAtMs: now.UnixMilli()})
	})
	if err != nil {
		return nil, err
	}
	msg := &Message{Group: g.id, Sender: g.n.self, Seq: seq, KeyID: key.ID(), Status: StatusOK,
		Text: text, SentAt: time.UnixMilli(now.UnixMilli()), ReceivedAt: now}
	g.mu.Lock()
	g.noteDeliveredLocked(g.n.self, seq)
	if g.topic != nil {
		g.enqueuePublish(env.Signed)
	}
	g.mu.Unlock()

	if rotated != nil {
		g.emitRotated(rotated)
		g.distribute(rotated, nil)
	}
	g.n.events.publish(Event{Kind: EventMessage, Group: g.id, Message: msg})
	return msg, nil
}

// maxOutbox bounds the envelopes waiting to be published. They are stored
// already, so dropping the oldest (when the topic cannot keep up) loses
// nothing: history sync delivers them.
const maxOutbox = 4096

// enqueuePublish hands a stored envelope to publishLoop.
func (g *Group) enqueuePublish(s *wire.Signed) {
	g.outMu.Lock()
	if len(g.outQ) >= maxOutbox {
		g.outQ = g.outQ[1:]
		g.n.log.Debug("outbox full: oldest envelope left to history sync", "group", g.id.ShortString())
	}
	g.outQ = append(g.outQ, s)
	g.outMu.Unlock()
	select {
	case g.outWake <- struct{}{}:
	default:
	}
}

func (g *Group) takeOutbox() []*wire.Signed {
	g.outMu.Lock()
	defer g.outMu.Unlock()
	q := g.outQ
	g.outQ = nil
	return q
}

// publishLoop publishes our envelopes in sequence order. A send after a
// quiet spell leaves at once; sends that follow within PublishInterval wait
// for it and leave together, up to PublishBatch per topic message, which is
// what makes a burst cheap for GossipSub and for every receiver. On stop it
// publishes what is left, briefly: what it cannot, history sync delivers.
func (g *Group) publishLoop(ctx context.Context, t *gossip.Topic) {
	defer g.topicWG.Done()
	// publish sends what is queued now; what queues meanwhile has woken
	// the loop and waits for the next interval.
	publish := func(ctx context.Context) (sent bool) {
		envs := g.takeOutbox()
		for _, m := range gossip.PackEnvelopes(envs, g.n.params.PublishBatch) {
			if err := t.Publish(ctx, m); err != nil {
				g.n.log.Warn("publish failed", "group", g.id.ShortString(), "err", err)
				if ctx.Err() != nil {
					return
				}
				continue
			}
			n := uint64(1)
			if b := m.GetEnvelopeBatch(); b != nil {
				n = uint64(len(b.Envelopes))
			}
			g.n.stats.topicMessagesSent.Add(1)
			g.n.stats.envelopesPublished.Add(n)
		}
		return len(envs) > 0
	}
	flush := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		for ctx.Err() == nil && publish(ctx) {
		}
	}
	linger := g.n.params.PublishInterval
	if g.n.params.PublishBatch <= 1 {
		linger = 0
	}
	var last time.Time
	timer := time.NewTimer(0)
	<-timer.C
	defer timer.Stop()
	for {
		select {
		case <-g.outWake:
		case <-ctx.Done():
			flush()
			return
		}
		if wait := linger - time.Since(last); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				flush()
				return
			}
		}
		if publish(ctx) {
			last = time.Now()
		}
	}
}

// History returns every stored message in arrival order, decrypted where
// the key is held.
func (g *Group) History() ([]Message, error) {
	leave, err := g.n.life.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	var recs []*wire.MessageRecord
	err = g.n.store.Messages(g.id, func(b []byte) error {
		rec := new(wire.MessageRecord)
		if err := proto.Unmarshal(b, rec); err != nil {
			g.n.log.Warn("skipping unreadable message record", "group", g.id.ShortString(), "err", err)
			return nil
		}
		if !rec.Undecryptable {
			recs = append(recs, rec)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Stored envelopes are verified again (see loadEnvelope), each sender's
	// as batches.
	signed := make([]*wire.Signed, len(recs))
	for i, rec := range recs {
		signed[i] = rec.Envelope
	}
	envs, errs := gossip.OpenEnvelopes(signed)
	var out []Message
	for i, e := range envs {
		if errs[i] != nil {
			// One bad record must not hide the rest of the history.
			g.n.log.Warn("skipping stored envelope that does not verify", "group", g.id.ShortString(), "err", errs[i])
			continue
		}
		g.mu.Lock() // per message: a long history does not hold up the group
		m := g.messageLocked(e, time.UnixMilli(recs[i].ReceivedAtMs))
		g.mu.Unlock()
		if m != nil {
			out = append(out, *m)
		}
	}
	return out, nil
}

// loadEnvelope reads a stored envelope. Stored envelopes were verified when
// they arrived; they are verified again here because the store is a file an
// attacker with disk access could edit, and verification is cheap next to I/O.
func (g *Group) loadEnvelope(sender peer.ID, seq uint64) (*gossip.Envelope, *wire.MessageRecord, error) {
	b, err := g.n.store.Message(g.id, []byte(sender), seq)
	if err != nil {
		return nil, nil, err
	}
	var rec wire.MessageRecord
	if err := proto.Unmarshal(b, &rec); err != nil {
		return nil, nil, fmt.Errorf("message record: %w", err)
	}
	e, err := gossip.OpenEnvelope(rec.Envelope)
	if err != nil {
		return nil, nil, fmt.Errorf("stored envelope: %w", err)
	}
	return e, &rec, nil
}

// messageLocked builds the member's view of an envelope: decrypted when the
// key is held, waiting otherwise; nil when it does not authenticate.
func (g *Group) messageLocked(e *gossip.Envelope, received time.Time) *Message {
	m := &Message{Group: g.id, Sender: e.Sender, Seq: e.Seq, KeyID: e.KeyID, Status: StatusWaitingForKey, ReceivedAt: received}
	k, ok := g.ring.Get(e.KeyID)
	if !ok {
		return m
	}
	c, err := e.Open(k)
	if err != nil {
		return nil
	}
	m.Status, m.Text, m.SentAt = StatusOK, c.Text, time.UnixMilli(c.SentAtMs)
	return m
}

// Add admits p with role. The new member gets the next epoch key, derived
// from the current one so it cannot read what was sent before it joined.
func (g *Group) Add(ctx context.Context, p peer.ID, role roster.Role) error {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	if _, _, err := wire.PeerKey([]byte(p)); err != nil {
		return fmt.Errorf("add %s: %w", p, err)
	}
	g.mu.Lock()
	if err := g.requireAdminLocked(); err != nil {
		g.mu.Unlock()
		return err
	}
	st := g.roster.State()
	if r, ok := st.RoleOf(p); ok && r == role {
		g.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrAlreadyMember, p.String())
	}
	var parentID []byte
	if k := g.sendingKeyLocked(); k != nil {
		id := k.ID()
		parentID = id[:]
	}
	op, err := roster.NewAdd(g.n.priv, g.id, capHeads(g.roster.Heads(), roster.MaxParents), p, role, parentID)
	if err != nil {
		g.mu.Unlock()
		return err
	}
	if err := g.applyLocalLocked(op); err != nil {
		g.mu.Unlock()
		return err
	}
	derived := g.derivedForLocked(op.ID)
	var rotated *keyring.Key
	if derived == nil && g.sendingKeyLocked() == nil {
		if rotated, err = g.rotateLocked(); err != nil {
			g.mu.Unlock()
			return err
		}
	}
	g.mu.Unlock()

	// Our op is durable before any peer sees it.
	if err := g.n.syncDisk(ctx); err != nil {
		return err
	}
	g.publishOp(ctx, op)
	switch {
	case rotated != nil:
		g.emitRotated(rotated)
		g.distribute(rotated, nil)
	case derived != nil:
		g.distribute(derived, []peer.ID{p})
	}
	return nil
}

// Remove removes p from the group and rotates the key at once: the new key
// goes to every remaining member and never to p.
func (g *Group) Remove(ctx context.Context, p peer.ID) error {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	g.mu.Lock()
	if err := g.requireAdminLocked(); err != nil {
		g.mu.Unlock()
		return err
	}
	if p == g.n.self {
		g.mu.Unlock()
		return errors.New("use Leave to leave a group")
	}
	if !g.roster.IsMember(p) {
		g.mu.Unlock()
		return fmt.Errorf("%w: %s", ErrNotMember, p.String())
	}
	op, err := roster.NewRemove(g.n.priv, g.id, capHeads(g.roster.Heads(), roster.MaxParents), p)
	if err != nil {
		g.mu.Unlock()
		return err
	}
	if err := g.applyLocalLocked(op); err != nil {
		g.mu.Unlock()
		return err
	}
	k, err := g.rotateLocked()
	g.mu.Unlock()
	if err != nil {
		return err
	}
	// The op and the new key are durable before any peer sees them.
	if err := g.n.syncDisk(ctx); err != nil {
		return err
	}
	g.publishOp(ctx, op)
	g.emitRotated(k)
	g.distribute(k, nil)
	return nil
}

// Leave removes this node from the group. Its keys and history stay, read-only.
func (g *Group) Leave(ctx context.Context) error {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	g.mu.Lock()
	if g.left || !g.roster.IsMember(g.n.self) {
		g.mu.Unlock()
		return fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	op, err := roster.NewLeave(g.n.priv, g.id, capHeads(g.roster.Heads(), roster.MaxParents))
	t := g.topic
	g.mu.Unlock()
	if err != nil {
		return err
	}
	// Publish before applying: applying our own departure closes the topic.
	g.publishOpOn(ctx, t, op)
	g.mu.Lock()
	err = g.applyLocalLocked(op)
	g.mu.Unlock()
	if err != nil {
		return err
	}
	return g.n.syncDisk(ctx)
}

func (g *Group) requireAdminLocked() error {
	if g.left {
		return fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	role, ok := g.roster.RoleOf(g.n.self)
	if !ok {
		return fmt.Errorf("%w of group %s", ErrNotMember, g.id.ShortString())
	}
	if role != roster.RoleAdmin {
		return fmt.Errorf("%w of group %s", ErrNotAdmin, g.id.ShortString())
	}
	return nil
}

// applyLocalLocked inserts an op this node authored.
func (g *Group) applyLocalLocked(op *roster.Op) error {
	applied, err := g.roster.Insert(op)
	if err != nil {
		return err
	}
	return g.appliedLocked(applied)
}

func (g *Group) publishOp(ctx context.Context, op *roster.Op) {
	g.mu.Lock()
	t := g.topic
	g.mu.Unlock()
	g.publishOpOn(ctx, t, op)
}

func (g *Group) publishOpOn(ctx context.Context, t *gossip.Topic, op *roster.Op) {
	if t == nil {
		return
	}
	if err := t.Publish(ctx, &wire.TopicMessage{Payload: &wire.TopicMessage_RosterOp{RosterOp: op.Signed}}); err != nil {
		g.n.log.Warn("publish roster op failed", "group", g.id.ShortString(), "err", err)
	}
}

// appliedLocked persists newly applied roster ops and reacts to the change.
func (g *Group) appliedLocked(applied []*roster.Op) error {
	if len(applied) == 0 {
		return nil
	}
	ws := make([]store.Write, len(applied))
	for i, op := range applied {
		ws[i] = store.OpWrite(g.id, op.ID, op.Marshal())
	}
	g.n.disk.put(ws...)
	for _, op := range applied {
		if op.Kind == roster.KindAdd && len(op.ParentKeyID) == 32 {
			g.deriveLocked(op)
		}
	}
	g.rosterChangedLocked()
	return nil
}

// deriveLocked computes the epoch key of an add op from its parent key,
// when this node holds the parent and is entitled to the result.
func (g *Group) deriveLocked(op *roster.Op) *keyring.Key {
	parent, ok := g.ring.Get(keyring.ID(op.ParentKeyID))
	if !ok || !g.roster.Effective(op.ID) {
		return nil
	}
	st, err := g.roster.StateAt([]roster.OpID{op.ID})
	if err != nil || !st.IsMember(g.n.self) {
		return nil
	}
	k, err := keyring.Derive(parent, op.ID, op.Author, st.MemberIDs())
	if err != nil {
		return nil
	}
	if _, err := g.storeKeyLocked(k); err != nil {
		g.n.log.Warn("store derived key", "group", g.id.ShortString(), "err", err)
		return nil
	}
	g.keyArrivedLocked(k)
	return k
}

// derivedForLocked returns the key derived for add op id, if held.
func (g *Group) derivedForLocked(id roster.OpID) *keyring.Key {
	for _, k := range g.ring.Keys() {
		if k.Meta.AddOp == id && !k.Meta.DerivedFrom.IsZero() {
			return k
		}
	}
	return nil
}

// rosterChangedLocked reports membership changes, notices this node's own
// departure, and arranges a rotation when the roster shrank and nobody
// holds a qualifying key yet.
func (g *Group) rosterChangedLocked() {
	st := g.roster.State()
	now := st.MemberIDs()
	var added, removed []peer.ID
	for _, p := range now {
		if _, ok := slices.BinarySearch(g.members, p); !ok {
			added = append(added, p)
		}
	}
	for _, p := range g.members {
		if _, ok := slices.BinarySearch(now, p); !ok {
			removed = append(removed, p)
		}
	}
	g.members = now
	if len(added)+len(removed) > 0 {
		g.n.events.publish(Event{Kind: EventRoster, Group: g.id, Members: slices.Clone(st.Members), Added: added, Removed: removed})
	}
	if !st.IsMember(g.n.self) {
		if !g.left {
			g.left = true
			if err := g.persistRecord(); err != nil {
				g.n.log.Warn("persist group record", "group", g.id.ShortString(), "err", err)
			}
			g.n.events.publish(Event{Kind: EventGroupLeft, Group: g.id})
			if g.topic != nil && !g.stopped {
				// Closing the topic waits for the reader (which may be the
				// caller) and for pubsub's event loop: do it elsewhere.
				g.wg.Add(1)
				go func() {
					defer g.wg.Done()
					g.closeTopic()
				}()
			}
		}
		return
	}
	g.scheduleAckLocked(removed)
	g.recheckHeldLocked()
	if len(removed) > 0 && g.sendingKeyLocked() == nil && g.isDesignatedRotatorLocked(st) {
		g.rotateAt = time.Now().Add(g.n.params.RotationGrace)
		g.nudge()
	}
	g.noteSendingKeyLocked()
}

// isDesignatedRotatorLocked: after a shrink this node did not cause, the
// current admin with the lowest peer ID rotates if no qualifying key
// arrives within RotationGrace. Senders rotate lazily as a last resort.
func (g *Group) isDesignatedRotatorLocked(st *roster.State) bool {
	for _, m := range st.Members {
		if m.Role == roster.RoleAdmin {
			return m.ID == g.n.self
		}
	}
	return false
}

// noteSendingKeyLocked emits EventKeyRotated when the sending key changed.
func (g *Group) noteSendingKeyLocked() {
	k := g.sendingKeyLocked()
	if k == nil || k.ID() == g.sendKey {
		return
	}
	g.sendKey = k.ID()
	g.n.events.publish(Event{Kind: EventKeyRotated, Group: g.id, KeyID: k.ID()})
}

// rotateLocked generates a key for the current roster state and stores it.
// The caller distributes it.
func (g *Group) rotateLocked() (*keyring.Key, error) {
	g.mergeHeadsLocked()
	st := g.roster.State()
	k, err := keyring.Generate(g.n.rand, g.id, g.n.self, st.Heads, st.MemberIDs())
	if err != nil {
		return nil, err
	}
	if _, err := g.storeKeyLocked(k); err != nil {
		return nil, err
	}
	g.rotateAt = time.Time{}
	g.n.stats.keysGenerated.Add(1)
	g.n.log.Debug("rotated", "group", g.id.ShortString(), "key", k)
	return k, nil
}

func (g *Group) emitRotated(k *keyring.Key) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.keyArrivedLocked(k)
	g.noteSendingKeyLocked()
}

// signedMetaLocked returns this node's signature over k's metadata.
func (g *Group) signedMetaLocked(k *keyring.Key) (*wire.Signed, error) {
	if s, ok := g.signedMeta[k.ID()]; ok {
		return s, nil
	}
	s, err := gossip.SignKeyMeta(g.n.priv, &k.Meta)
	if err != nil {
		return nil, err
	}
	g.signedMeta[k.ID()] = s
	return s, nil
}

// distribute sends k pairwise to each of to (default: every recipient but
// this node), in parallel, in the background. It never sends to a peer the
// key's metadata does not entitle.
func (g *Group) distribute(k *keyring.Key, to []peer.ID) {
	g.sendKeyTo(k, to, nil)
}

// maxParallelTransfers bounds concurrent key-transfer streams.
const maxParallelTransfers = 32

func (g *Group) sendKeyTo(k *keyring.Key, to []peer.ID, requestNonce []byte) {
	if to == nil {
		to = k.Meta.Recipients
	}
	g.mu.Lock()
	meta, err := g.signedMetaLocked(k)
	g.mu.Unlock()
	if err != nil {
		g.n.log.Warn("sign key metadata", "err", err)
		return
	}
	t := &wire.KeyTransfer{Key: k.Secret(), Meta: meta, RequestNonce: requestNonce}
	g.mu.Lock()
	for _, h := range k.Meta.RosterHeads {
		if op, ok := g.roster.Op(h); ok && len(t.RosterOps) < roster.MaxParents {
			t.RosterOps = append(t.RosterOps, op.Signed)
		}
	}
	g.mu.Unlock()
	sem := make(chan struct{}, maxParallelTransfers)
	for _, p := range to {
		if p == g.n.self || !k.Meta.IsRecipient(p) {
			continue
		}
		g.goTracked(func() {
			select {
			case sem <- struct{}{}:
			case <-g.ctx.Done():
				return
			}
			defer func() { <-sem }()
			if err := g.n.streams.SendKey(g.ctx, p, t); err != nil {
				g.n.log.Debug("key transfer failed", "peer", p.ShortString(), "key", k, "err", err)
				return
			}
			g.n.stats.keyTransfersSent.Add(1)
		})
	}
}

// tokenBucket is a small rate limiter driven by the caller's clock.
type tokenBucket struct {
	tokens float64
	last   time.Time
}

func (b *tokenBucket) take(now time.Time, rate, burst float64) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

func comparePeers(a, b peer.ID) int { return bytes.Compare([]byte(a), []byte(b)) }
