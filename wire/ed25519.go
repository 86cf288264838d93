package wire

import (
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/oasisprotocol/curve25519-voi/curve"
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

// checkPeerKey refuses an Ed25519 key unless it is the canonical encoding
// of a point A of the prime-order subgroup other than the identity:
// [L]A = identity and A != identity. A small-order key, or one with a
// small-order component, makes signatures that the cofactored and the
// cofactorless equations judge differently (and a small-order key signs
// every message at once), so it is no identity at all.
func (v *Verifier) checkPeerKey(id peer.ID, pub crypto.PubKey) error {
	if v.knowsGoodKey(id) {
		return nil
	}
	raw, err := pub.Raw()
	if err != nil || len(raw) != curve.CompressedPointSize {
		return fmt.Errorf("%w: peer id does not embed an Ed25519 key", ErrBadSignature)
	}
	var c curve.CompressedEdwardsY
	if _, err := c.SetBytes(raw); err != nil || !c.IsCanonicalVartime() {
		return fmt.Errorf("%w: peer id key is not a canonical point encoding", ErrBadSignature)
	}
	var a curve.EdwardsPoint
	if _, err := a.SetCompressedY(&c); err != nil {
		return fmt.Errorf("%w: peer id key is not a curve point", ErrBadSignature)
	}
	if a.IsSmallOrder() || !a.IsTorsionFree() {
		return fmt.Errorf("%w: %w", ErrBadSignature, ErrSmallOrderKey)
	}
	v.rememberGoodKey(id)
	return nil
}

// expandedKey returns signer's expanded key: from v's cache, or expanded
// from pub (cached reports which; the caller caches it once it verified).
func (v *Verifier) expandedKey(signer peer.ID, pub crypto.PubKey) (k *voi.ExpandedPublicKey, cached bool) {
	if k := v.expandedFor(signer); k != nil {
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
func (v *Verifier) verifyEd25519(signer peer.ID, pub crypto.PubKey, msg, sig []byte) bool {
	k, cached := v.expandedKey(signer, pub)
	if k == nil || !voi.VerifyExpandedWithOptions(k, msg, sig, verifyOptions) {
		return false
	}
	if !cached {
		v.rememberExpanded(signer, k)
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
func (v *Verifier) verifyEd25519Batch(signer peer.ID, pub crypto.PubKey, msgs, sigs [][]byte) bool {
	if len(msgs) == 0 || len(msgs) != len(sigs) {
		return false
	}
	if len(msgs) == 1 {
		return v.verifyEd25519(signer, pub, msgs[0], sigs[0])
	}
	k, cached := v.expandedKey(signer, pub)
	if k == nil {
		return false
	}
	batch := voi.NewBatchVerifier()
	for i := range msgs {
		batch.AddExpandedWithOptions(k, msgs[i], sigs[i], verifyOptions)
	}
	if !batch.VerifyBatchOnly(nil) { // nil: weights from crypto/rand
		return false
	}
	if !cached {
		v.rememberExpanded(signer, k)
	}
	return true
}
