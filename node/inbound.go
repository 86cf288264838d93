package node

import (
	"context"
	"math/rand/v2"
	"slices"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// Limits on what the node keeps for others.
const (
	maxHeldEnvelopes = 1024 // envelopes held for a roster we lack
	maxPendingOps    = 4096 // roster ops waiting for their parents
	// maxPendingPerAuthor bounds the pending ops of one author that is not
	// a member (a newcomer's first ops before its add arrives need few).
	maxPendingPerAuthor = 64

	keyRequestRate  = 1.0  // accepted key requests per second per requester
	keyRequestBurst = 20.0 // and in a burst
)

// heldEnvelope is a message whose author's roster op has not arrived yet.
type heldEnvelope struct {
	from peer.ID
	env  *gossip.Envelope
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
		ids, attempts, nextReq := g.keyReqs.due(now, func(id keyring.ID) bool {
			_, held := g.ring.Get(id)
			return held
		})
		earliest(nextReq)
		for i, id := range ids {
			req, err := gossip.NewKeyRequest(g.n.rand, g.n.priv, g.id, id, attempts[i], now.Add(g.n.clockOffset).UnixMilli())
			if err != nil {
				continue
			}
			earliest(g.keyReqs.sent(id, req.Nonce, now))
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
			switch {
			case now.Before(g.rotateAt):
				earliest(g.rotateAt)
			case g.sendingKeyLocked() != nil || !g.roster.IsMember(g.n.self):
				g.rotateAt = time.Time{} // a key came, or we are out
			case !g.ackAt.IsZero() || len(g.toMark) > 0:
				// Our ack of the departure first (rotationDelayLocked):
				// the ack branch above waits for it, and authorAck wakes
				// this loop once the ack is applied.
			default:
				if k, err := g.rotateLocked(); err == nil {
					rotated = k
				}
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
		// The key is durable before any member gets it.
		ctx, cancel := context.WithTimeout(g.ctx, gossip.StreamTimeout)
		err := g.n.syncDisk(ctx)
		cancel()
		if err != nil {
			// Members ask for it (§9) once its messages reach them.
			g.n.log.Warn("new key not durable; not pushed", "group", g.id.ShortString(), "err", err)
		} else {
			g.emitRotated(rotated)
			g.distribute(rotated, nil)
		}
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
