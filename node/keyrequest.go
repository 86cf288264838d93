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
	// nothing while the pair is remembered, by this node's clock alone.
	now := time.Now()
	if !g.answered.first(r.Requester, r.Nonce, now.Add(answeredFor), now) {
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

// keyRequestSchedule decides when this node asks for each key a message
// of its waits for: first KeyRequestDelay after the key is wanted (a key
// pushed to us may land first), then with a doubling delay capped at
// KeyRequestMaxBackoff, until the key arrives. It remembers the nonces of
// the latest requests, so that an answer can be told from an unsolicited
// push. Pure bookkeeping, driven by the caller's clock (keyrequest_test.go);
// the group holds it under its lock and signs and publishes the requests.
type keyRequestSchedule struct {
	delay, maxBackoff time.Duration
	reqs              map[keyring.ID]*keyRequest
}

func newKeyRequestSchedule(p Params) *keyRequestSchedule {
	return &keyRequestSchedule{delay: p.KeyRequestDelay, maxBackoff: p.KeyRequestMaxBackoff, reqs: make(map[keyring.ID]*keyRequest)}
}

// want schedules requests for id, once; it reports whether id is new.
func (s *keyRequestSchedule) want(id keyring.ID, now time.Time) bool {
	if _, ok := s.reqs[id]; ok {
		return false
	}
	s.reqs[id] = &keyRequest{due: now.Add(s.delay)}
	return true
}

// done forgets id: its key arrived.
func (s *keyRequestSchedule) done(id keyring.ID) { delete(s.reqs, id) }

// attempts returns how many requests for id were sent.
func (s *keyRequestSchedule) attempts(id keyring.ID) uint32 {
	if r := s.reqs[id]; r != nil {
		return r.attempts
	}
	return 0
}

// due returns the keys to ask for now, with the attempt number each
// request carries, and the next time one falls due (zero if none). Keys
// held meanwhile are forgotten.
func (s *keyRequestSchedule) due(now time.Time, held func(keyring.ID) bool) (ids []keyring.ID, attempts []uint32, next time.Time) {
	for id, r := range s.reqs {
		if held(id) {
			delete(s.reqs, id)
			continue
		}
		if now.Before(r.due) {
			if next.IsZero() || r.due.Before(next) {
				next = r.due
			}
			continue
		}
		ids, attempts = append(ids, id), append(attempts, r.attempts)
	}
	return ids, attempts, next
}

// sent records a request for id with nonce, made at now, and returns when
// the next one is due.
func (s *keyRequestSchedule) sent(id keyring.ID, nonce []byte, now time.Time) time.Time {
	r := s.reqs[id]
	if r == nil {
		return time.Time{}
	}
	r.nonces = append(r.nonces, nonce)
	if len(r.nonces) > maxRememberedNonces {
		r.nonces = r.nonces[1:]
	}
	backoff := s.delay << min(r.attempts+1, 16)
	r.attempts++
	r.due = now.Add(min(backoff, s.maxBackoff))
	return r.due
}

// isAnswer reports whether nonce belongs to one of our requests for id.
func (s *keyRequestSchedule) isAnswer(id keyring.ID, nonce []byte) bool {
	r, ok := s.reqs[id]
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

// wantKeyLocked schedules a request for a missing key, once per key ID; the
// first waits KeyRequestDelay so a key already on its way can land first.
func (g *Group) wantKeyLocked(id keyring.ID) {
	if g.keyReqs.want(id, time.Now()) {
		g.nudge()
	}
}

// answeredRequestLocked reports whether nonce belongs to one of our
// requests for key id.
func (g *Group) answeredRequestLocked(id keyring.ID, nonce []byte) bool {
	return g.keyReqs.isAnswer(id, nonce)
}
