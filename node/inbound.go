package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"math/rand/v2"
	"slices"
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

// Limits on what the node keeps for others.
const (
	maxHeldEnvelopes = 1024 // envelopes held for a roster we lack
	maxPendingOps    = 4096 // roster ops waiting for their parents
	// maxPendingPerAuthor bounds the pending ops of one author that is not
	// a member (a newcomer's first ops before its add arrives need few).
	maxPendingPerAuthor = 64

	// firstContactWindow is how long the first message seen from a sender
	// waits for earlier ones: enough for messages racing through pubsub's
	// parallel validation, short enough not to be noticed.
	firstContactWindow = 50 * time.Millisecond

	// gapSyncWait is how long messages after a gap stay back while a history
	// sync fetches the missing ones, before they are shown anyway.
	gapSyncWait      = 3 * time.Second
	keyRequestRate   = 1.0              // accepted key requests per second per requester
	keyRequestBurst  = 20.0             // and in a burst
	keyRequestMaxAge = 10 * time.Minute // older (or future) requests are ignored
)

// heldEnvelope is a message whose author's roster op has not arrived yet.
type heldEnvelope struct {
	from peer.ID
	env  *gossip.Envelope
}

// policy is the topic validator's judgement. It runs inline in pubsub, so it
// only reads state and the store; the reader loop does the work.
func (g *Group) policy(from peer.ID, in *gossip.Inbound) pubsub.ValidationResult {
	self := from == g.n.self
	switch {
	case in.Envelope != nil:
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeEnvelope(from, in.Envelope)
	case len(in.Envelopes) > 0:
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeBatch(from, in.Envelopes)
	case in.Op != nil:
		if in.Op.Group != g.id {
			return pubsub.ValidationReject
		}
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeOp(from, in.Op)
	case in.KeyRequest != nil:
		if self {
			return pubsub.ValidationAccept
		}
		return g.judgeKeyRequest(in.KeyRequest)
	}
	return pubsub.ValidationReject
}

// judgeOp passes only ops the DAG can use: new ones, by an author this
// roster names. An op whose parents are unknown may come from a member added
// in ops we lack: it goes to the reader, which fetches the roster from the
// forwarder, and Insert judges it then.
func (g *Group) judgeOp(from peer.ID, op *roster.Op) pubsub.ValidationResult {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case g.roster.Has(op.ID):
		return pubsub.ValidationIgnore
	case !g.roster.Knows(op.Parents):
		return pubsub.ValidationAccept
	case !g.roster.EverAdded(op.Author):
		return pubsub.ValidationReject
	case g.roster.WouldRefuse(op):
		// A removed member's op: not applied, not forwarded. Not rejected
		// either: an honest peer that has not seen the removal yet may
		// forward it in good faith.
		g.n.stats.opsRefused.Add(1)
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationAccept
}

func (g *Group) judgeEnvelope(from peer.ID, e *gossip.Envelope) pubsub.ValidationResult {
	if e.Group != g.id {
		return pubsub.ValidationReject
	}
	g.mu.Lock()
	member := g.roster.IsMember(e.Sender)
	if !member && !g.roster.Knows(e.RosterHeads) && !g.roster.EverAdded(e.Sender) {
		// The sender names roster ops we have not seen: perhaps its own add.
		// Keep the message and fetch the roster; do not forward what we
		// cannot vouch for.
		g.holdLocked(from, e)
		g.mu.Unlock()
		g.fetchRoster(from)
		return pubsub.ValidationIgnore
	}
	verdict := g.judgeSenderLocked(e.Sender, e.Seq)
	if verdict == senderHold {
		g.holdLocked(from, e)
	}
	g.mu.Unlock()
	switch verdict {
	case senderHold:
		return pubsub.ValidationIgnore
	case senderReject:
		g.n.stats.envelopesRefused.Add(1)
		return pubsub.ValidationReject
	}
	return g.judgeReplay(e)
}

// judgeBatch judges a sender's envelope batch as a whole: one refused
// envelope refuses the batch (an honest sender never makes one), envelopes
// already held are skipped by ingest, and the batch passes if any is new.
func (g *Group) judgeBatch(from peer.ID, envs []*gossip.Envelope) pubsub.ValidationResult {
	res := pubsub.ValidationIgnore
	for _, e := range envs {
		switch g.judgeEnvelope(from, e) {
		case pubsub.ValidationReject:
			return pubsub.ValidationReject
		case pubsub.ValidationAccept:
			res = pubsub.ValidationAccept
		}
	}
	return res
}

// judgeReplay refuses a second, different envelope for a taken slot
// (equivocation or replay under another nonce) and ignores exact duplicates.
func (g *Group) judgeReplay(e *gossip.Envelope) pubsub.ValidationResult {
	b, err := g.n.store.Message(g.id, []byte(e.Sender), e.Seq)
	if err != nil {
		return pubsub.ValidationAccept
	}
	var rec wire.MessageRecord
	if proto.Unmarshal(b, &rec) == nil && rec.Envelope != nil && bytes.Equal(rec.Envelope.Body, e.Signed.Body) {
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationReject
}

func (g *Group) judgeKeyRequest(r *gossip.KeyRequest) pubsub.ValidationResult {
	if r.Group != g.id {
		return pubsub.ValidationReject
	}
	now := time.Now()
	age := now.Sub(time.UnixMilli(r.SentAtMs))
	if age > keyRequestMaxAge || age < -keyRequestMaxAge {
		return pubsub.ValidationIgnore
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.roster.IsMember(r.Requester) {
		return pubsub.ValidationIgnore
	}
	b := g.reqBudget[r.Requester]
	if b == nil {
		b = &tokenBucket{}
		g.reqBudget[r.Requester] = b
	}
	if !b.take(now, keyRequestRate, keyRequestBurst) {
		return pubsub.ValidationIgnore
	}
	return pubsub.ValidationAccept
}

// readLoop handles accepted topic messages until the topic closes.
func (g *Group) readLoop(ctx context.Context, t *gossip.Topic) {
	defer g.topicWG.Done()
	for {
		in, from, err := t.Next(ctx, g.n.self)
		if err != nil {
			// Next fails only when the subscription has ended or ctx is
			// done; a message it cannot use is skipped inside it.
			return
		}
		switch {
		case in.Envelope != nil || len(in.Envelopes) > 0:
			envs := in.Envelopes
			if in.Envelope != nil {
				envs = []*gossip.Envelope{in.Envelope}
			}
			for _, e := range envs {
				select {
				case g.ingestQ <- heldEnvelope{from: from, env: e}:
				case <-ctx.Done():
					return
				}
			}
		case in.Op != nil:
			g.onOps(from, []*roster.Op{in.Op})
		case in.KeyRequest != nil:
			g.onKeyRequest(in.KeyRequest)
		}
	}
}

// onEnvelope stores a verified envelope, then shows it: decrypted, or
// waiting for its key (which it then asks for).
func (g *Group) onEnvelope(from peer.ID, e *gossip.Envelope) {
	g.ingest(from, []*gossip.Envelope{e})
}

// ingestBatch is the most envelopes stored in one disk transaction.
const ingestBatch = 256

// ingestLoop stores envelopes from the topic in batches: under load one
// synced write covers many messages instead of one each.
func (g *Group) ingestLoop(ctx context.Context) {
	defer g.topicWG.Done()
	for {
		var first heldEnvelope
		select {
		case first = <-g.ingestQ:
		case <-ctx.Done():
			return
		}
		batch := []heldEnvelope{first}
	drain:
		for len(batch) < ingestBatch {
			select {
			case h := <-g.ingestQ:
				batch = append(batch, h)
			default:
				break drain
			}
		}
		// One ingest per forwarder, so that a stale-roster fetch goes to the
		// peer that sent the envelope naming the heads.
		for len(batch) > 0 {
			from := batch[0].from
			var envs []*gossip.Envelope
			rest := batch[:0]
			for _, h := range batch {
				if h.from == from {
					envs = append(envs, h.env)
				} else {
					rest = append(rest, h)
				}
			}
			g.ingest(from, envs)
			batch = rest
		}
	}
}

// markUndecryptable keeps a member's envelope that fails authentication
// under a key we hold: it is never shown, but its slot stays taken.
func (g *Group) markUndecryptable(e *gossip.Envelope, now time.Time) {
	rec, _ := proto.Marshal(&wire.MessageRecord{Envelope: e.Signed, ReceivedAtMs: now.UnixMilli(), Undecryptable: true})
	g.n.disk.put(store.MessageUpdate(g.id, []byte(e.Sender), e.Seq, rec))
	g.n.log.Warn("message does not decrypt under its key", "group", g.id.ShortString(), "env", e)
}

// onOps inserts verified roster ops; ops whose parents are missing wait
// and trigger a roster fetch from the peer that sent them.
func (g *Group) onOps(from peer.ID, ops []*roster.Op) {
	g.mu.Lock()
	batch := ops[:0:0]
	for _, op := range ops {
		if !g.roster.Knows(op.Parents) && (g.roster.PendingCount() >= maxPendingOps ||
			(!g.roster.IsMember(op.Author) && g.roster.PendingBy(op.Author) >= maxPendingPerAuthor)) {
			// A flood of ops with invented parents (or naming ops refused
			// as a removed member's): a later sync brings real ones. A
			// non-member's share is capped so it cannot crowd out a new
			// member's ops that arrived before its add.
			continue
		}
		batch = append(batch, op)
	}
	// Admit refuses the ops of a member this node has counted out (§4.4):
	// a removed member's ops, backdated or not, add nothing here.
	applied, refused := g.roster.Admit(batch)
	if refused > 0 {
		g.n.stats.opsRefused.Add(uint64(refused))
		g.n.log.Debug("roster ops of removed members refused", "group", g.id.ShortString(), "count", refused)
	}
	if err := g.appliedLocked(applied); err != nil {
		g.n.log.Warn("apply roster ops", "group", g.id.ShortString(), "err", err)
	}
	missing := g.roster.PendingCount() > 0
	g.mu.Unlock()
	if missing && from != "" {
		g.fetchRoster(from)
	}
}

// fetchRoster asks from for the whole roster, once at a time per peer.
func (g *Group) fetchRoster(from peer.ID) {
	g.mu.Lock()
	if g.fetching[from] || from == g.n.self || from == "" || g.countedOutLocked(from) {
		g.mu.Unlock()
		return
	}
	g.fetching[from] = true
	g.mu.Unlock()
	g.goTracked(func() {
		defer func() {
			g.mu.Lock()
			delete(g.fetching, from)
			g.mu.Unlock()
		}()
		ops, err := g.fetchRosterOps(g.ctx, from)
		if err != nil {
			g.n.log.Debug("roster fetch failed", "peer", from.ShortString(), "err", err)
			return
		}
		g.onOps("", ops)
	})
}

// countedOutLocked reports whether the current state has counted p out
// (some add of it is effective, and it is not a member). No roster is
// fetched from such a peer, in the background or at the start of a sync: a
// removed member would serve its own forgeries (§4.4, §8.2). A peer the
// roster has not named yet may be a newcomer whose add is what we lack.
func (g *Group) countedOutLocked(p peer.ID) bool {
	return g.roster.EverMember(p) && !g.roster.IsMember(p)
}

func (g *Group) countedOut(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.countedOutLocked(p)
}

// errCountedOut refuses a roster fetch from a peer the current state has
// counted out: a removed member would serve its forgeries (§4.4, §8.2).
var errCountedOut = errors.New("no roster fetch from a peer that is no longer a member")

// fetchRosterOps fetches and decodes a peer's roster. It is the one way
// the node fetches a roster, so the rule that no fetch goes to a peer the
// current state has counted out holds on every path (topic, sync, key
// transfer).
func (g *Group) fetchRosterOps(ctx context.Context, from peer.ID) ([]*roster.Op, error) {
	if g.countedOut(from) {
		return nil, errCountedOut
	}
	signed, err := g.n.streams.FetchRoster(ctx, from, g.id)
	if err != nil {
		return nil, err
	}
	// Ops we already hold are skipped before their signatures are checked:
	// a roster sync with every joining peer must not re-verify the DAG.
	g.mu.Lock()
	fresh := signed[:0]
	for _, s := range signed {
		if s != nil && !g.roster.Has(roster.IDOf(s.Body)) {
			fresh = append(fresh, s)
		}
	}
	g.mu.Unlock()
	ops := make([]*roster.Op, 0, len(fresh))
	for _, s := range fresh {
		op, err := roster.Decode(s)
		if err != nil {
			return nil, err
		}
		if op.Group != g.id || op.Kind == roster.KindCreate {
			continue
		}
		ops = append(ops, op)
	}
	return ops, nil
}

// peerLoop syncs roster and history with every peer that joins the topic,
// and again once the mesh has had time to form: messages published in
// between are the ones GossipSub silently loses. (Roster ops
// from any peer are verified and must chain to our create op; a joining
// peer may not be a member in our view yet.)
func (g *Group) peerLoop(ctx context.Context, h *pubsub.TopicEventHandler) {
	defer g.topicWG.Done()
	defer h.Cancel()
	for {
		ev, err := h.NextPeerEvent(ctx)
		if err != nil {
			return
		}
		if ev.Type == pubsub.PeerJoin {
			g.offerKey(ev.Peer)
			g.syncWith(ev.Peer)
			g.scheduleResync(ev.Peer)
		}
	}
}

// recheckHeldLocked delivers held envelopes whose sender the roster now
// accepts (judgeSenderLocked), and drops those it now rules out.
func (g *Group) recheckHeldLocked() {
	if len(g.held) == 0 {
		return
	}
	var keep []heldEnvelope
	var ready []heldEnvelope
	for _, h := range g.held {
		switch g.judgeSenderLocked(h.env.Sender, h.env.Seq) {
		case senderAccept:
			ready = append(ready, h)
		case senderHold:
			keep = append(keep, h)
		default:
			if !g.roster.Knows(h.env.RosterHeads) && !g.roster.EverAdded(h.env.Sender) {
				keep = append(keep, h) // its add may still come
			}
		}
	}
	g.held = keep
	for _, h := range ready {
		g.goTrackedLocked(func() {
			if g.judgeReplay(h.env) == pubsub.ValidationAccept {
				g.onEnvelope(h.from, h.env)
			}
		})
	}
}

// onKeyRequest answers a member's request for a key it is entitled to. A
// few holders answer the first request, chosen by a hash of its nonce;
// retries widen the circle, so requests never draw a storm of answers.
func (g *Group) onKeyRequest(r *gossip.KeyRequest) {
	g.mu.Lock()
	k, ok := g.ring.Get(r.KeyID)
	if !ok || !k.Meta.IsRecipient(r.Requester) || !g.roster.IsMember(r.Requester) {
		g.mu.Unlock()
		return
	}
	var holders []peer.ID
	for _, p := range k.Meta.Recipients {
		if p != r.Requester && g.roster.IsMember(p) {
			holders = append(holders, p)
		}
	}
	g.mu.Unlock()
	if !answersRequest(g.n.self, holders, r, 2<<min(r.Attempt, 20)) {
		return
	}
	// Once per request: a replay the seen cache no longer catches gets
	// nothing. The validator takes a request until keyRequestMaxAge after
	// its send time.
	expires := time.UnixMilli(r.SentAtMs).Add(keyRequestMaxAge + answeredMargin)
	if !g.answered.first(r.Requester, r.Nonce, expires, time.Now()) {
		return
	}
	g.sendKeyTo(k, []peer.ID{r.Requester}, r.Nonce)
}

// answersRequest ranks holders by SHA-256(nonce || peer) and answers when
// self ranks below limit (2 << attempt for key requests).
func answersRequest(self peer.ID, holders []peer.ID, r *gossip.KeyRequest, limit int) bool {
	rank := func(p peer.ID) [32]byte { return sha256.Sum256(append(slices.Clone(r.Nonce), p...)) }
	mine := rank(self)
	below := 0
	for _, p := range holders {
		if p == self {
			continue
		}
		if h := rank(p); bytes.Compare(h[:], mine[:]) < 0 {
			below++
		}
	}
	return below < limit
}

// senderOrder keeps one sender's messages in sequence order for display.
type senderOrder struct {
	next      uint64              // next sequence number to show; 0 = not known yet
	buffered  map[uint64]*Message // arrived early, waiting for a gap to fill
	deadline  time.Time           // when buffered messages are shown anyway
	gapSynced bool                // a sync was asked for this gap
}

// deliverLocked shows m in its sender's sequence order. A message that
// arrives before an earlier one waits at most ReorderWindow; history sync
// fills real gaps later, and the late message is shown when it comes.
func (g *Group) deliverLocked(m *Message, keyFirstSeq uint64) {
	o := g.order[m.Sender]
	if o == nil {
		o = &senderOrder{buffered: make(map[uint64]*Message)}
		g.order[m.Sender] = o
	}
	// The first message seen from a sender this session: start there if it
	// is the sender's first ever, or if its predecessor is stored (shown
	// before a restart); else from the sender's first message under this
	// message's key, which we are entitled to; else wait, briefly, for
	// earlier ones.
	if o.next == 0 && len(o.buffered) == 0 {
		switch {
		case m.Seq == 1 || g.hasMessage(m.Sender, m.Seq-1):
			o.next = m.Seq
		case keyFirstSeq != 0:
			o.next = keyFirstSeq
		}
	}
	switch {
	case o.next != 0 && m.Seq < o.next:
		g.emitMessage(m) // late: its slot was given up
	case m.Seq == o.next:
		g.emitMessage(m)
		o.next++
		g.drainLocked(o)
		if len(o.buffered) == 0 {
			o.gapSynced = false
		}
	default:
		if len(o.buffered) == 0 {
			// A sender we have seen nothing from may well have sent messages
			// we are not entitled to (we joined later): wait only for
			// reordering in flight, not for history.
			wait := g.n.params.ReorderWindow
			if o.next == 0 {
				wait = min(wait, firstContactWindow)
			}
			o.deadline = time.Now().Add(wait)
			g.nudge()
		}
		o.buffered[m.Seq] = m
	}
}

func (g *Group) hasMessage(sender peer.ID, seq uint64) bool {
	_, err := g.n.store.Message(g.id, []byte(sender), seq)
	return err == nil
}

// noteDeliveredLocked records that seq of sender was shown (our own sends).
func (g *Group) noteDeliveredLocked(sender peer.ID, seq uint64) {
	o := g.order[sender]
	if o == nil {
		o = &senderOrder{buffered: make(map[uint64]*Message)}
		g.order[sender] = o
	}
	o.next = seq + 1
}

func (g *Group) drainLocked(o *senderOrder) {
	for {
		m, ok := o.buffered[o.next]
		if !ok {
			return
		}
		delete(o.buffered, o.next)
		g.emitMessage(m)
		o.next++
	}
}

// flushOrderLocked shows buffered messages whose wait has run out, from the
// lowest sequence number on.
func (g *Group) flushOrderLocked(now time.Time) (next time.Time) {
	for sender, o := range g.order {
		if len(o.buffered) == 0 {
			continue
		}
		if now.Before(o.deadline) {
			if next.IsZero() || o.deadline.Before(next) {
				next = o.deadline
			}
			continue
		}
		if o.next != 0 && !o.gapSynced {
			// A real gap: ask a peer for the missing messages and keep the
			// later ones back a little longer, so the gap usually fills in
			// order instead of showing up late.
			o.gapSynced = true
			g.gapSenders = append(g.gapSenders, sender)
			o.deadline = now.Add(gapSyncWait)
			if next.IsZero() || o.deadline.Before(next) {
				next = o.deadline
			}
			continue
		}
		seqs := make([]uint64, 0, len(o.buffered))
		for s := range o.buffered {
			seqs = append(seqs, s)
		}
		slices.Sort(seqs)
		o.next = seqs[0]
		o.gapSynced = false
		g.drainLocked(o)
		if len(o.buffered) > 0 {
			o.deadline = now.Add(g.n.params.ReorderWindow)
			if next.IsZero() || o.deadline.Before(next) {
				next = o.deadline
			}
		}
	}
	return next
}

func (g *Group) emitMessage(m *Message) {
	g.n.events.publish(Event{Kind: EventMessage, Group: g.id, Message: m})
}

// keyRequest tracks this node's requests for one missing key.
type keyRequest struct {
	attempts uint32
	due      time.Time
	nonces   [][]byte // nonces of requests sent, newest last
}

const maxRememberedNonces = 8

// wantKeyLocked schedules a request for a missing key, once per key ID; the
// first waits KeyRequestDelay so a key already on its way can land first.
func (g *Group) wantKeyLocked(id keyring.ID) {
	if _, ok := g.keyReqs[id]; ok {
		return
	}
	g.keyReqs[id] = &keyRequest{due: time.Now().Add(g.n.params.KeyRequestDelay)}
	g.nudge()
}

// answeredRequestLocked reports whether nonce belongs to one of our
// requests for key id.
func (g *Group) answeredRequestLocked(id keyring.ID, nonce []byte) bool {
	r, ok := g.keyReqs[id]
	if !ok || len(nonce) == 0 {
		return false
	}
	for _, n := range r.nonces {
		if bytes.Equal(n, nonce) {
			return true
		}
	}
	return false
}

// timerLoop runs the group's timed work: key requests with backoff, the
// designated rotation, and the reorder window.
func (g *Group) timerLoop() {
	defer g.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		next := g.tick(time.Now())
		wait := time.Hour
		if !next.IsZero() {
			wait = max(time.Until(next), time.Millisecond)
		}
		timer.Reset(wait)
		select {
		case <-g.ctx.Done():
			return
		case <-g.wake:
		case <-timer.C:
		}
	}
}

// tick does what is due at now and returns when to run next.
func (g *Group) tick(now time.Time) time.Time {
	type send struct {
		req *gossip.KeyRequest
	}
	var sends []send
	var rotated *keyring.Key

	g.mu.Lock()
	next := g.flushOrderLocked(now)
	earliest := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if !g.left {
		for id, r := range g.keyReqs {
			if _, held := g.ring.Get(id); held {
				delete(g.keyReqs, id)
				continue
			}
			if now.Before(r.due) {
				earliest(r.due)
				continue
			}
			req, err := gossip.NewKeyRequest(g.n.rand, g.n.priv, g.id, id, r.attempts, now.UnixMilli())
			if err != nil {
				continue
			}
			r.nonces = append(r.nonces, req.Nonce)
			if len(r.nonces) > maxRememberedNonces {
				r.nonces = r.nonces[1:]
			}
			backoff := g.n.params.KeyRequestDelay << min(r.attempts+1, 16)
			r.attempts++
			r.due = now.Add(min(backoff, g.n.params.KeyRequestMaxBackoff))
			earliest(r.due)
			sends = append(sends, send{req})
		}
		if !g.ackAt.IsZero() {
			if now.Before(g.ackAt) {
				earliest(g.ackAt)
			} else {
				g.ackAt = time.Time{}
				g.goTrackedLocked(g.authorAck)
			}
		}
		if !g.rotateAt.IsZero() {
			if now.Before(g.rotateAt) {
				earliest(g.rotateAt)
			} else if g.sendingKeyLocked() == nil && g.roster.IsMember(g.n.self) {
				k, err := g.rotateLocked()
				if err == nil {
					rotated = k
				}
			} else {
				g.rotateAt = time.Time{}
			}
		}
	}
	syncs, nextSync := g.dueSyncsLocked(now)
	earliest(nextSync)
	t := g.topic
	g.mu.Unlock()

	if len(syncs) > 0 {
		peers := g.Peers()
		for _, p := range syncs {
			if len(peers) == 0 {
				break
			}
			if p == "" || !slices.Contains(peers, p) {
				p = peers[rand.IntN(len(peers))]
			}
			g.syncWith(p)
		}
	}
	if rotated != nil {
		g.emitRotated(rotated)
		g.distribute(rotated, nil)
	}
	for _, s := range sends {
		if t == nil {
			break
		}
		ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
		err := t.Publish(ctx, &wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: s.req.Signed}})
		cancel()
		if err != nil {
			g.n.log.Debug("publish key request", "err", err)
			continue
		}
		g.n.stats.keyRequestsSent.Add(1)
	}
	return next
}
