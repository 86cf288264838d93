package wire

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
)

// Signatures are Ed25519 (RFC 8032) computed and checked with
// curve25519-voi rather than crypto/ed25519: the bytes signed are identical
// (signing is deterministic), verification is about twice as fast with a
// precomputed ("expanded") public key, and the same library verifies
// batches.
//
// Verification uses the cofactored equation [8][S]B = [8]R + [8][k]A with
// canonical encodings of A, R and S required (FIPS 186-5; RFC 8032 §5.1.7).
// That is the equation batch verification checks, so a signature is
// accepted or refused alike whether it is checked alone or in a batch, by
// every node. Signatures made by an honest signer verify under either
// equation; only deliberately malformed ones (small-order components) can
// tell them apart, and every p2pchat node treats those the same way.
var verifyOptions = &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5}

// expandedKeys caches expanded public keys of signers whose signatures
// verified, so a member's key is expanded once rather than per message.
// Only keys that produced a valid signature enter it, so a flood of forged
// signers cannot push members' keys out; when full it is emptied.
var expandedKeys = keyCache{max: 1024}

type keyCache struct {
	mu   sync.Mutex
	max  int
	keys map[peer.ID]*voi.ExpandedPublicKey
}

func (c *keyCache) get(id peer.ID) *voi.ExpandedPublicKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.keys[id]
}

func (c *keyCache) put(id peer.ID, k *voi.ExpandedPublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.keys == nil || len(c.keys) >= c.max {
		c.keys = make(map[peer.ID]*voi.ExpandedPublicKey)
	}
	c.keys[id] = k
}

// expandedKey returns signer's expanded key: from the cache, or expanded
// from pub (cached reports which; the caller caches it once it verified).
func expandedKey(signer peer.ID, pub crypto.PubKey) (k *voi.ExpandedPublicKey, cached bool) {
	if k := expandedKeys.get(signer); k != nil {
		return k, true
	}
	raw, err := pub.Raw()
	if err != nil || len(raw) != voi.PublicKeySize {
		return nil, false
	}
	k, err = voi.NewExpandedPublicKey(voi.PublicKey(raw))
	if err != nil {
		return nil, false
	}
	return k, false
}

// verifyEd25519 reports whether sig is signer's signature over msg.
func verifyEd25519(signer peer.ID, pub crypto.PubKey, msg, sig []byte) bool {
	k, cached := expandedKey(signer, pub)
	if k == nil || !voi.VerifyExpandedWithOptions(k, msg, sig, verifyOptions) {
		return false
	}
	if !cached {
		expandedKeys.put(signer, k)
	}
	return true
}

// signEd25519 signs msg with priv: voi for Ed25519 keys (the same
// deterministic signature crypto/ed25519 makes, faster), the key's own
// method otherwise.
func signEd25519(priv crypto.PrivKey, msg []byte) ([]byte, error) {
	if priv.Type() != crypto.Ed25519 {
		return priv.Sign(msg)
	}
	raw, err := priv.Raw() // a copy of the secret: wiped once used
	if err != nil || len(raw) != voi.PrivateKeySize {
		clear(raw)
		return priv.Sign(msg)
	}
	defer clear(raw)
	return voi.Sign(voi.PrivateKey(raw), msg), nil
}

// verifyEd25519Batch reports whether every sigs[i] is signer's signature
// over msgs[i], checking them as one batch: one multi-scalar equation with
// random weights, which no forged signature passes except with negligible
// probability, at about half the cost of checking each alone.
func verifyEd25519Batch(signer peer.ID, pub crypto.PubKey, msgs, sigs [][]byte) bool {
	if len(msgs) == 0 || len(msgs) != len(sigs) {
		return false
	}
	if len(msgs) == 1 {
		return verifyEd25519(signer, pub, msgs[0], sigs[0])
	}
	k, cached := expandedKey(signer, pub)
	if k == nil {
		return false
	}
	v := voi.NewBatchVerifier()
	for i := range msgs {
		v.AddExpandedWithOptions(k, msgs[i], sigs[i], verifyOptions)
	}
	if !v.VerifyBatchOnly(nil) { // nil: weights from crypto/rand
		return false
	}
	if !cached {
		expandedKeys.put(signer, k)
	}
	return true
}
