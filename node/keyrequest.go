package node

// Key requests: asking for a key a message waits for (backoff, nonces),
// and answering others' requests (ranking of holders, a token bucket per
// requester).

import (
	"bytes"
	"crypto/sha256"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
)

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
