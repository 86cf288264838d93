package wire

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/peer"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// Verifier checks signatures and peer IDs like the package's functions of
// the same names, and remembers the identities that passed: a member's key
// is checked for small-order components and expanded once, not for every
// message. Only keys that passed (and, for expanded keys, produced a valid
// signature) are remembered, so a flood of forged or bad identities cannot
// push members' keys out; when a table is full it is emptied.
//
// Each node owns one; nothing is shared between Verifiers. The zero value
// is ready to use; a nil *Verifier remembers nothing. Safe for concurrent
// use.
type Verifier struct {
	mu       sync.Mutex
	expanded map[peer.ID]*voi.ExpandedPublicKey
	good     map[peer.ID]struct{}
}

const (
	// maxExpandedKeys bounds the expanded keys a Verifier keeps (≈200 B
	// each): the active signers of a node's groups.
	maxExpandedKeys = 1024
	// maxGoodKeys bounds the identities a Verifier remembers as checked
	// (≈40 B each): every member named in a node's rosters and key lists.
	maxGoodKeys = 1 << 14
)

func (v *Verifier) expandedFor(id peer.ID) *voi.ExpandedPublicKey {
	if v == nil {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.expanded[id]
}

func (v *Verifier) rememberExpanded(id peer.ID, k *voi.ExpandedPublicKey) {
	if v == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.expanded == nil || len(v.expanded) >= maxExpandedKeys {
		v.expanded = make(map[peer.ID]*voi.ExpandedPublicKey)
	}
	v.expanded[id] = k
}

func (v *Verifier) knowsGoodKey(id peer.ID) bool {
	if v == nil {
		return false
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.good[id]
	return ok
}

func (v *Verifier) rememberGoodKey(id peer.ID) {
	if v == nil {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.good == nil || len(v.good) >= maxGoodKeys {
		v.good = make(map[peer.ID]struct{})
	}
	v.good[id] = struct{}{}
}
