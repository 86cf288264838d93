package wire

import (
	"encoding/hex"
	"errors"
	"testing"

	"github.com/p2pchat/p2pchat/internal/testkeys"
)

// TestVerifiersShareNothing: what one Verifier learned, another does not
// know — two nodes in one process keep separate tables — and a nil
// Verifier (the package functions) remembers nothing.
func TestVerifiersShareNothing(t *testing.T) {
	priv, id := testkeys.Peer(t, "ed25519", 7)
	s, err := Sign(priv, Kind_KIND_ENVELOPE, &Envelope{Seq: 1})
	if err != nil {
		t.Fatal(err)
	}
	var a, b Verifier
	if _, err := a.Verify(s, Kind_KIND_ENVELOPE, &Envelope{}); err != nil {
		t.Fatal(err)
	}
	if !a.knowsGoodKey(id) || a.expandedFor(id) == nil {
		t.Fatal("a Verifier did not remember a signer that verified")
	}
	if b.knowsGoodKey(id) || b.expandedFor(id) != nil {
		t.Fatal("a second Verifier knows what the first learned")
	}
	var none *Verifier
	if _, err := none.Verify(s, Kind_KIND_ENVELOPE, &Envelope{}); err != nil {
		t.Fatal(err)
	}
	if none.knowsGoodKey(id) || none.expandedFor(id) != nil {
		t.Fatal("a nil Verifier remembered a key")
	}
	// Remembering changes nothing about what is refused: a tampered
	// body still fails under the Verifier that knows its signer.
	s.Body = append(s.Body, 0)
	if _, err := a.Verify(s, Kind_KIND_ENVELOPE, &Envelope{}); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered body under a warm Verifier: %v", err)
	}
}

// TestVerifierRemembersNoBadKey: a small-order identity is refused every
// time and never enters the table of checked keys.
func TestVerifierRemembersNoBadKey(t *testing.T) {
	identity, _ := hex.DecodeString("0100000000000000000000000000000000000000000000000000000000000000")
	id := rawPeerID(t, identity)
	var v Verifier
	for range 2 {
		if _, err := v.ParsePeerID([]byte(id)); !errors.Is(err, ErrSmallOrderKey) {
			t.Fatalf("small-order identity: %v", err)
		}
	}
	if v.knowsGoodKey(id) {
		t.Fatal("a refused identity was remembered")
	}
}
