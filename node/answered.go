package node

import (
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

// answeredFor is how long an answered request is remembered, from when
// this node answered it (its own clock: the requester's send time is not
// trusted, and clocks need not agree). A replay after that draws one more
// answer, to the member that asked, within its rate limit.
const answeredFor = 30 * time.Minute

// maxAnsweredRequests bounds the key requests a group remembers having
// answered. Accepted requests are rate-limited per member (keyRequestRate,
// keyRequestBurst) and each is kept answeredFor, so honest traffic stays
// far below it; past it the entry closest to expiry goes first.
const maxAnsweredRequests = 4096

// answeredRequests remembers the key requests a group answered, by
// requester and nonce, for answeredFor: a request captured off the topic
// and replayed after GossipSub's seen cache has forgotten it (120 s) must
// not draw another key transfer. It has its own lock and its own clock
// (passed in); the zero value is ready.
type answeredRequests struct {
	mu      sync.Mutex
	expires map[answeredRequest]time.Time
	repeats int // requests found already answered, for tests
}

type answeredRequest struct {
	requester peer.ID
	nonce     [16]byte
}

// first records the request (requester, nonce), kept through expires, and
// reports whether it was not recorded already. Nonces of another length
// are never recorded (the validator refuses them).
func (a *answeredRequests) first(requester peer.ID, nonce []byte, expires, now time.Time) bool {
	k := answeredRequest{requester: requester}
	if len(nonce) != len(k.nonce) {
		return true
	}
	copy(k.nonce[:], nonce)
	a.mu.Lock()
	defer a.mu.Unlock()
	if at, ok := a.expires[k]; ok && !now.After(at) {
		a.repeats++
		return false
	}
	if a.expires == nil {
		a.expires = make(map[answeredRequest]time.Time)
	}
	if len(a.expires) >= maxAnsweredRequests {
		a.pruneLocked(now)
	}
	a.expires[k] = expires
	return true
}

// pruneLocked drops expired entries and, if none had expired, the one
// closest to expiry. It runs only when the memory is full, so it costs one
// pass over maxAnsweredRequests entries per answered request at worst.
func (a *answeredRequests) pruneLocked(now time.Time) {
	var soonest answeredRequest
	var soonestAt time.Time
	dropped := false
	for k, at := range a.expires {
		if now.After(at) {
			delete(a.expires, k)
			dropped = true
			continue
		}
		if soonestAt.IsZero() || at.Before(soonestAt) {
			soonest, soonestAt = k, at
		}
	}
	if !dropped && !soonestAt.IsZero() {
		delete(a.expires, soonest)
	}
}

func (a *answeredRequests) stats() (entries, repeats int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.expires), a.repeats
}
