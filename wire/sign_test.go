package wire_test

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/internal/testkeys"
	"github.com/p2pchat/p2pchat/wire"
)

// detRand is this package's deterministic byte stream.
func detRand(seed uint64) io.Reader { return testkeys.Reader("p2pchat wire test", seed) }

func testKey(t *testing.T, seed uint64) (crypto.PrivKey, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(detRand(seed))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, id
}

var allKinds = []wire.Kind{
	wire.Kind_KIND_ROSTER_OP,
	wire.Kind_KIND_ENVELOPE,
	wire.Kind_KIND_KEY_META,
	wire.Kind_KIND_KEY_REQUEST,
}

var kindNames = map[wire.Kind]string{
	wire.Kind_KIND_ROSTER_OP:   "roster-op",
	wire.Kind_KIND_ENVELOPE:    "envelope",
	wire.Kind_KIND_KEY_META:    "key-meta",
	wire.Kind_KIND_KEY_REQUEST: "key-request",
}

func sampleBody() *wire.Envelope {
	return &wire.Envelope{
		GroupId:     bytes.Repeat([]byte{1}, 32),
		KeyId:       bytes.Repeat([]byte{2}, 32),
		Sender:      []byte("sender"),
		Seq:         9,
		RosterHeads: [][]byte{bytes.Repeat([]byte{3}, 32)},
		Nonce:       bytes.Repeat([]byte{4}, 24),
		Ciphertext:  []byte("ciphertext"),
	}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	priv, id := testKey(t, 1)
	for _, kind := range allKinds {
		t.Run(kind.String(), func(t *testing.T) {
			body := sampleBody()
			s, err := wire.Sign(priv, kind, body)
			if err != nil {
				t.Fatal(err)
			}
			if s.Kind != kind || peer.ID(s.Signer) != id {
				t.Fatalf("signed kind %v signer %v", s.Kind, peer.ID(s.Signer))
			}
			// Through the wire and back.
			b, err := proto.Marshal(s)
			if err != nil {
				t.Fatal(err)
			}
			var s2 wire.Signed
			if err := proto.Unmarshal(b, &s2); err != nil {
				t.Fatal(err)
			}
			var got wire.Envelope
			signer, err := wire.Verify(&s2, kind, &got)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if signer != id {
				t.Fatalf("signer %v, want %v", signer, id)
			}
			if !proto.Equal(&got, body) {
				t.Fatal("decoded body differs")
			}
		})
	}
}

// TestSigningInputFormat pins the documented signature input:
// "p2pchat/v1/" + kind-name + 0x00 + body.
func TestSigningInputFormat(t *testing.T) {
	priv, _ := testKey(t, 2)
	for _, kind := range allKinds {
		s, err := wire.Sign(priv, kind, sampleBody())
		if err != nil {
			t.Fatal(err)
		}
		in := append([]byte("p2pchat/v1/"+kindNames[kind]+"\x00"), s.Body...)
		ok, err := priv.GetPublic().Verify(in, s.Signature)
		if err != nil || !ok {
			t.Errorf("%v: signature does not cover the documented input", kind)
		}
		if ok, _ := priv.GetPublic().Verify(s.Body, s.Signature); ok {
			t.Errorf("%v: signature covers the bare body", kind)
		}
	}
}

func TestVerifyDomainSeparation(t *testing.T) {
	priv, _ := testKey(t, 3)
	for _, signedAs := range allKinds {
		s, err := wire.Sign(priv, signedAs, sampleBody())
		if err != nil {
			t.Fatal(err)
		}
		for _, other := range allKinds {
			if other == signedAs {
				continue
			}
			// Relabel the message as another kind: the signature must not carry over.
			relabelled := proto.Clone(s).(*wire.Signed)
			relabelled.Kind = other
			var into wire.Envelope
			if _, err := wire.Verify(relabelled, other, &into); !errors.Is(err, wire.ErrBadSignature) {
				t.Errorf("signed as %v, verified as %v: err = %v, want ErrBadSignature", signedAs, other, err)
			}
			// Asking for another kind without relabelling is refused too.
			if _, err := wire.Verify(s, other, &into); err == nil {
				t.Errorf("signed as %v accepted when %v was asked for", signedAs, other)
			}
		}
	}
}

// signRaw signs body as kind without going through Sign, so tests can build
// messages Sign would refuse.
func signRaw(t *testing.T, priv crypto.PrivKey, kind wire.Kind, body []byte) *wire.Signed {
	t.Helper()
	sig, err := priv.Sign(append([]byte("p2pchat/v1/"+kindNames[kind]+"\x00"), body...))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return &wire.Signed{Kind: kind, Body: body, Signature: sig, Signer: []byte(id)}
}

func TestVerifyRejects(t *testing.T) {
	priv, _ := testKey(t, 4)
	_, other := testKey(t, 5)
	secp, _, err := crypto.GenerateSecp256k1Key(detRand(6))
	if err != nil {
		t.Fatal(err)
	}
	ecdsa, _, err := crypto.GenerateECDSAKeyPair(detRand(7))
	if err != nil {
		t.Fatal(err)
	}
	good, err := wire.Sign(priv, wire.Kind_KIND_ENVELOPE, sampleBody())
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(s *wire.Signed)) *wire.Signed {
		c := proto.Clone(good).(*wire.Signed)
		f(c)
		return c
	}
	signedBy := func(k crypto.PrivKey) *wire.Signed {
		s, err := wire.Sign(k, wire.Kind_KIND_ENVELOPE, sampleBody())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Oversized body with a valid signature: the size bound applies first.
	bigBody, err := proto.Marshal(&wire.Content{Text: strings.Repeat("x", wire.MaxSignedBody)})
	if err != nil {
		t.Fatal(err)
	}
	oversized := signRaw(t, priv, wire.Kind_KIND_ENVELOPE, bigBody)
	// Valid signature over bytes that are not a protobuf message.
	garbage := signRaw(t, priv, wire.Kind_KIND_ENVELOPE, []byte{0xff, 0xff, 0xff})

	cases := []struct {
		name string
		s    *wire.Signed
		want error
	}{
		{"nil", nil, wire.ErrMalformed},
		{"wrong kind", mod(func(s *wire.Signed) { s.Kind = wire.Kind_KIND_KEY_META }), wire.ErrMalformed},
		{"unspecified kind", mod(func(s *wire.Signed) { s.Kind = wire.Kind_KIND_UNSPECIFIED }), wire.ErrMalformed},
		{"tampered body", mod(func(s *wire.Signed) { s.Body[len(s.Body)-1] ^= 1 }), wire.ErrBadSignature},
		{"appended body", mod(func(s *wire.Signed) { s.Body = append(s.Body, 0x08, 0x01) }), wire.ErrBadSignature},
		{"tampered signature", mod(func(s *wire.Signed) { s.Signature[0] ^= 1 }), wire.ErrBadSignature},
		{"short signature", mod(func(s *wire.Signed) { s.Signature = s.Signature[:63] }), wire.ErrBadSignature},
		{"no signature", mod(func(s *wire.Signed) { s.Signature = nil }), wire.ErrBadSignature},
		{"signer swapped", mod(func(s *wire.Signed) { s.Signer = []byte(other) }), wire.ErrBadSignature},
		{"no signer", mod(func(s *wire.Signed) { s.Signer = nil }), wire.ErrBadSignature},
		{"garbage signer", mod(func(s *wire.Signed) { s.Signer = []byte("garbage") }), wire.ErrBadSignature},
		{"secp256k1 signer", signedBy(secp), wire.ErrBadSignature},
		{"ecdsa signer", signedBy(ecdsa), wire.ErrBadSignature},
		{"oversized body", oversized, wire.ErrMalformed},
		{"body not protobuf", garbage, wire.ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var into wire.Envelope
			signer, err := wire.Verify(c.s, wire.Kind_KIND_ENVELOPE, &into)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if signer != "" {
				t.Fatalf("signer %v returned with the error", signer)
			}
			if c.want == wire.ErrBadSignature && !proto.Equal(&into, &wire.Envelope{}) {
				t.Fatal("body decoded before the signature was checked")
			}
		})
	}

	// The secp256k1 signature is itself valid: only the key type is refused.
	s := signedBy(secp)
	in := append([]byte("p2pchat/v1/envelope\x00"), s.Body...)
	if ok, err := secp.GetPublic().Verify(in, s.Signature); err != nil || !ok {
		t.Fatal("control: the secp256k1 signature does not verify under its own key")
	}
}

func TestSizeBound(t *testing.T) {
	priv, id := testKey(t, 8)
	// A body of exactly MaxSignedBody: 1 tag byte + 3 length bytes + text.
	atMax := &wire.Content{Text: strings.Repeat("y", wire.MaxSignedBody-4)}
	if n := proto.Size(atMax); n != wire.MaxSignedBody {
		t.Fatalf("test body is %d bytes, want %d", n, wire.MaxSignedBody)
	}
	s, err := wire.Sign(priv, wire.Kind_KIND_ENVELOPE, atMax)
	if err != nil {
		t.Fatalf("Sign at the bound: %v", err)
	}
	var got wire.Content
	if signer, err := wire.Verify(s, wire.Kind_KIND_ENVELOPE, &got); err != nil || signer != id {
		t.Fatalf("Verify at the bound: %v", err)
	}

	over := &wire.Content{Text: strings.Repeat("y", wire.MaxSignedBody-3)}
	if _, err := wire.Sign(priv, wire.Kind_KIND_ENVELOPE, over); !errors.Is(err, wire.ErrMalformed) {
		t.Fatalf("Sign over the bound: err = %v, want ErrMalformed", err)
	}
}

func TestSignRejectsUnknownKind(t *testing.T) {
	priv, _ := testKey(t, 9)
	for _, k := range []wire.Kind{wire.Kind_KIND_UNSPECIFIED, wire.Kind(99)} {
		if _, err := wire.Sign(priv, k, sampleBody()); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("Sign(%v): err = %v, want ErrMalformed", k, err)
		}
		s := signRaw(t, priv, wire.Kind_KIND_ENVELOPE, []byte{})
		s.Kind = k
		if _, err := wire.Verify(s, k, &wire.Envelope{}); err == nil {
			t.Errorf("Verify accepted kind %v", k)
		}
	}
}

func TestPeerKeyAndParsePeerID(t *testing.T) {
	priv, id := testKey(t, 10)
	gotID, pub, err := wire.PeerKey([]byte(id))
	if err != nil || gotID != id || !pub.Equals(priv.GetPublic()) {
		t.Fatalf("PeerKey(ed25519) = %v, %v", gotID, err)
	}
	if p, err := wire.ParsePeerID([]byte(id)); err != nil || p != id {
		t.Fatalf("ParsePeerID(ed25519) = %v, %v", p, err)
	}
	secp, _, _ := crypto.GenerateSecp256k1Key(detRand(11))
	secpID, _ := peer.IDFromPrivateKey(secp)
	ecdsa, _, _ := crypto.GenerateECDSAKeyPair(detRand(12))
	ecdsaID, _ := peer.IDFromPrivateKey(ecdsa)
	bad := map[string][]byte{
		"empty":      nil,
		"garbage":    []byte("hello"),
		"truncated":  []byte(id)[:len(id)-1],
		"extended":   append(slices.Clone([]byte(id)), 0),
		"secp256k1":  []byte(secpID),
		"ecdsa hash": []byte(ecdsaID),
	}
	for name, b := range bad {
		if _, _, err := wire.PeerKey(b); !errors.Is(err, wire.ErrBadSignature) {
			t.Errorf("PeerKey(%s): err = %v, want ErrBadSignature", name, err)
		}
		if _, err := wire.ParsePeerID(b); !errors.Is(err, wire.ErrMalformed) {
			t.Errorf("ParsePeerID(%s): err = %v, want ErrMalformed", name, err)
		}
	}
}

func signedBatch(t *testing.T, priv crypto.PrivKey, n int) []*wire.Signed {
	t.Helper()
	out := make([]*wire.Signed, n)
	for i := range out {
		body := sampleBody()
		body.Seq = uint64(i + 1)
		s, err := wire.Sign(priv, wire.Kind_KIND_ENVELOPE, body)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = s
	}
	return out
}

func TestVerifyBatch(t *testing.T) {
	priv, id := testKey(t, 1)
	other, _ := testKey(t, 2)
	decode := func(got []*wire.Envelope) func(int) proto.Message {
		return func(i int) proto.Message { got[i] = &wire.Envelope{}; return got[i] }
	}
	for _, n := range []int{1, 2, 17} {
		ss := signedBatch(t, priv, n)
		got := make([]*wire.Envelope, n)
		signer, err := wire.VerifyBatch(ss, wire.Kind_KIND_ENVELOPE, decode(got))
		if err != nil || signer != id {
			t.Fatalf("batch of %d: signer %v, err %v", n, signer, err)
		}
		for i, e := range got {
			if e.Seq != uint64(i+1) {
				t.Fatalf("batch of %d: body %d decoded as seq %d", n, i, e.Seq)
			}
		}
	}

	cases := []struct {
		name  string
		batch func() []*wire.Signed
		want  error
	}{
		{"one bad signature", func() []*wire.Signed {
			ss := signedBatch(t, priv, 5)
			ss[3].Signature = bytes.Clone(ss[3].Signature)
			ss[3].Signature[5] ^= 1
			return ss
		}, wire.ErrBadSignature},
		{"signatures swapped", func() []*wire.Signed {
			ss := signedBatch(t, priv, 3)
			ss[0].Signature, ss[1].Signature = ss[1].Signature, ss[0].Signature
			return ss
		}, wire.ErrBadSignature},
		{"two signers", func() []*wire.Signed {
			return append(signedBatch(t, priv, 2), signedBatch(t, other, 1)...)
		}, wire.ErrMalformed},
		{"signer field changed", func() []*wire.Signed {
			ss := append(signedBatch(t, priv, 2), signedBatch(t, other, 1)...)
			ss[2].Signer = ss[0].Signer // other's signature claimed as priv's
			return ss
		}, wire.ErrBadSignature},
		{"other kind", func() []*wire.Signed {
			ss := signedBatch(t, priv, 2)
			ss[1].Kind = wire.Kind_KIND_KEY_META
			return ss
		}, wire.ErrMalformed},
		{"nil entry", func() []*wire.Signed { return append(signedBatch(t, priv, 1), nil) }, wire.ErrMalformed},
		{"empty", func() []*wire.Signed { return nil }, wire.ErrMalformed},
		{"too many", func() []*wire.Signed { return make([]*wire.Signed, wire.MaxBatch+1) }, wire.ErrMalformed},
	}
	for _, c := range cases {
		ss := c.batch()
		decoded := 0
		_, err := wire.VerifyBatch(ss, wire.Kind_KIND_ENVELOPE, func(int) proto.Message { decoded++; return &wire.Envelope{} })
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
		if decoded != 0 {
			t.Errorf("%s: %d bodies decoded from a batch that failed", c.name, decoded)
		}
	}
}
