package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/oasisprotocol/curve25519-voi/curve"
	"github.com/oasisprotocol/curve25519-voi/curve/scalar"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/internal/testkeys"
)

// rawPeerID is the peer ID embedding raw as its Ed25519 key, whatever the
// bytes are (libp2p does not check the point).
func rawPeerID(t *testing.T, raw []byte) peer.ID {
	t.Helper()
	pub, err := crypto.UnmarshalEd25519PublicKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func compress(p *curve.EdwardsPoint) []byte {
	var c curve.CompressedEdwardsY
	c.SetEdwardsPoint(p)
	return c[:]
}

func decompress(t *testing.T, raw []byte) *curve.EdwardsPoint {
	t.Helper()
	var c curve.CompressedEdwardsY
	if _, err := c.SetBytes(raw); err != nil {
		t.Fatal(err)
	}
	var p curve.EdwardsPoint
	if _, err := p.SetCompressedY(&c); err != nil {
		t.Fatal(err)
	}
	return &p
}

// TestPeerKeyRefusesSmallOrder: a peer ID whose key is a small-order point,
// or a prime-order point plus a torsion point, is refused by PeerKey (and
// so by every path that parses a peer ID) with ErrSmallOrderKey.
func TestPeerKeyRefusesSmallOrder(t *testing.T) {
	identity, _ := hex.DecodeString("0100000000000000000000000000000000000000000000000000000000000000")
	honest, _ := testkeys.Peer(t, "ed25519", 40)
	honestRaw, err := honest.GetPublic().Raw()
	if err != nil {
		t.Fatal(err)
	}
	a := decompress(t, honestRaw)
	// Speccheck cases 3 and 4 sign under this mixed-order key.
	speccheckA, _ := hex.DecodeString("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d")

	cases := map[string][]byte{
		"identity 0100..00": identity,
		"speccheck mixed A": speccheckA,
	}
	for i, tp := range curve.EIGHT_TORSION {
		cases[fmt.Sprintf("torsion point %d", i)] = compress(tp)
		if i == 0 {
			continue // the identity: a + identity is a itself
		}
		var mixed curve.EdwardsPoint
		mixed.Add(a, tp)
		cases[fmt.Sprintf("prime-order point + torsion point %d", i)] = compress(&mixed)
	}
	if !bytes.Equal(cases["torsion point 0"], identity) {
		t.Fatal("setup: torsion point 0 is not the identity")
	}
	for name, raw := range cases {
		id := rawPeerID(t, raw)
		if _, _, err := PeerKey([]byte(id)); !errors.Is(err, ErrSmallOrderKey) || !errors.Is(err, ErrBadSignature) {
			t.Errorf("PeerKey(%s) = %v, want ErrSmallOrderKey and ErrBadSignature", name, err)
		}
		if _, err := ParsePeerID([]byte(id)); !errors.Is(err, ErrSmallOrderKey) || !errors.Is(err, ErrMalformed) {
			t.Errorf("ParsePeerID(%s) = %v, want ErrSmallOrderKey and ErrMalformed", name, err)
		}
	}
	if _, _, err := PeerKey([]byte(rawPeerID(t, honestRaw))); err != nil {
		t.Fatalf("the honest key itself: %v", err)
	}
}

// TestPeerKeyRefusesNonPoints: bytes that are not the canonical encoding
// of a curve point are refused too (not with ErrSmallOrderKey).
func TestPeerKeyRefusesNonPoints(t *testing.T) {
	// (0, -1) with the sign bit set: speccheck case 10's non-canonical A.
	nonCanonical, _ := hex.DecodeString("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff")
	var notOnCurve []byte
	for y := byte(2); notOnCurve == nil; y++ {
		raw := make([]byte, 32)
		raw[0] = y
		var c curve.CompressedEdwardsY
		_, _ = c.SetBytes(raw)
		var p curve.EdwardsPoint
		if _, err := p.SetCompressedY(&c); err != nil {
			notOnCurve = raw
		}
	}
	for name, raw := range map[string][]byte{"non-canonical": nonCanonical, "not on the curve": notOnCurve} {
		_, _, err := PeerKey([]byte(rawPeerID(t, raw)))
		if !errors.Is(err, ErrBadSignature) || errors.Is(err, ErrSmallOrderKey) {
			t.Errorf("PeerKey(%s) = %v, want ErrBadSignature only", name, err)
		}
	}
}

// TestPeerKeyAcceptsGeneratedKeys: every key an honest node generates
// passes, checked afresh (not from the cache) for 1000 of them.
func TestPeerKeyAcceptsGeneratedKeys(t *testing.T) {
	rng := testkeys.Reader("p2pchat wire peer keys", 1)
	var v Verifier
	for i := range 1000 {
		priv, _, err := crypto.GenerateEd25519Key(rng)
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		if v.knowsGoodKey(id) {
			t.Fatalf("key %d already cached", i)
		}
		got, pub, err := v.PeerKey([]byte(id))
		if err != nil || got != id || !pub.Equals(priv.GetPublic()) {
			t.Fatalf("key %d (%s) refused: %v", i, id, err)
		}
		if !v.knowsGoodKey(id) {
			t.Fatalf("key %d not cached after passing", i)
		}
	}
}

// TestVerifyRefusesSmallOrderSigner: under the identity key, the
// "signature" R = identity, S = 0 satisfies both equations for every
// message. Verify refuses it because of the signer, before any equation.
func TestVerifyRefusesSmallOrderSigner(t *testing.T) {
	identity, _ := hex.DecodeString("0100000000000000000000000000000000000000000000000000000000000000")
	id := rawPeerID(t, identity)
	pub, err := id.ExtractPublicKey()
	if err != nil {
		t.Fatal(err)
	}
	sig := append(bytes.Clone(identity), make([]byte, 32)...)
	if !(*Verifier)(nil).verifyEd25519(id, pub, []byte("anything"), sig) {
		t.Fatal("setup: the equation does not accept the universal forgery")
	}
	s := &Signed{Kind: Kind_KIND_ENVELOPE, Body: []byte{0x18, 0x01}, Signature: sig, Signer: []byte(id)}
	if _, err := Verify(s, Kind_KIND_ENVELOPE, &Envelope{}); !errors.Is(err, ErrSmallOrderKey) {
		t.Fatalf("Verify = %v, want ErrSmallOrderKey", err)
	}
	if _, err := VerifyBatch([]*Signed{s, s}, Kind_KIND_ENVELOPE, func(int) proto.Message { return &Envelope{} }); !errors.Is(err, ErrSmallOrderKey) {
		t.Fatalf("VerifyBatch = %v, want ErrSmallOrderKey", err)
	}
}

// TestMixedOrderRStillSplitsEquations: the key rule does not make the two
// equations agree on everything. Under an honest (prime-order) key, the
// signer can put a torsion component in R: cofactored verification (ours)
// accepts, cofactorless crypto/ed25519 refuses. This is why §2 requires the
// cofactored equation of every node.
func TestMixedOrderRStillSplitsEquations(t *testing.T) {
	priv, id := testkeys.Peer(t, "ed25519", 41)
	raw, err := priv.Raw()
	if err != nil {
		t.Fatal(err)
	}
	seed, pubRaw := raw[:32], raw[32:]
	h := sha512.Sum512(seed)
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	var a, r, k, s scalar.Scalar
	if _, err := a.SetBytesModOrder(h[:32]); err != nil {
		t.Fatal(err)
	}
	wide := make([]byte, 64)
	if _, err := io.ReadFull(testkeys.Reader("mixed R", 1), wide); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SetBytesModOrderWide(wide); err != nil {
		t.Fatal(err)
	}
	var R curve.EdwardsPoint
	R.MulBasepoint(curve.ED25519_BASEPOINT_TABLE, &r)
	R.Add(&R, curve.EIGHT_TORSION[1])
	rc := compress(&R)
	msg := []byte("split")
	kh := sha512.New()
	kh.Write(rc)
	kh.Write(pubRaw)
	kh.Write(msg)
	if _, err := k.SetBytesModOrderWide(kh.Sum(nil)); err != nil {
		t.Fatal(err)
	}
	s.Mul(&k, &a)
	s.Add(&s, &r)
	sig := make([]byte, 64)
	copy(sig, rc)
	if err := s.ToBytes(sig[32:]); err != nil {
		t.Fatal(err)
	}
	if _, _, err := PeerKey([]byte(id)); err != nil {
		t.Fatalf("the key is honest: %v", err)
	}
	if !(*Verifier)(nil).verifyEd25519(id, priv.GetPublic(), msg, sig) {
		t.Fatal("cofactored verification refuses the mixed-order-R signature")
	}
	if ed25519.Verify(ed25519.PublicKey(pubRaw), msg, sig) {
		t.Fatal("cofactorless crypto/ed25519 accepts it: the cases do not differ")
	}
}
