package wire

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/internal/testkeys"
)

// Our signatures are the ones crypto/ed25519 makes, byte for byte, and
// crypto/ed25519 accepts them.
func TestSignaturesMatchStdlib(t *testing.T) {
	priv, _ := testkeys.Peer(t, "ed25519", 1)
	raw, err := priv.Raw()
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range [][]byte{nil, []byte("p2pchat"), bytes.Repeat([]byte{0xa5}, 4096)} {
		got, err := signEd25519(priv, msg)
		if err != nil {
			t.Fatal(err)
		}
		want := ed25519.Sign(ed25519.PrivateKey(raw), msg)
		if !bytes.Equal(got, want) {
			t.Fatalf("signature over %d bytes differs from crypto/ed25519's", len(msg))
		}
		if !ed25519.Verify(ed25519.PrivateKey(raw).Public().(ed25519.PublicKey), msg, got) {
			t.Fatal("crypto/ed25519 refuses our signature")
		}
	}
}

func TestVerifyEd25519(t *testing.T) {
	priv, id := testkeys.Peer(t, "ed25519", 2)
	msg := []byte("hello")
	sig, err := signEd25519(priv, msg)
	if err != nil {
		t.Fatal(err)
	}
	// Twice: the first call expands and caches the key, the second uses it.
	var v Verifier
	for range 2 {
		if !v.verifyEd25519(id, priv.GetPublic(), msg, sig) {
			t.Fatal("valid signature refused")
		}
	}
	bad := bytes.Clone(sig)
	bad[10] ^= 1
	for _, c := range []struct {
		name     string
		msg, sig []byte
	}{
		{"flipped bit", msg, bad},
		{"other message", []byte("hellp"), sig},
		{"short", msg, sig[:63]},
		{"long", msg, append(bytes.Clone(sig), 0)},
		{"empty", msg, nil},
	} {
		if v.verifyEd25519(id, priv.GetPublic(), c.msg, c.sig) {
			t.Errorf("%s: accepted", c.name)
		}
	}
	// A signer whose key did not verify a signature is not cached.
	other, otherID := testkeys.Peer(t, "ed25519", 3)
	if v.verifyEd25519(otherID, other.GetPublic(), msg, sig) {
		t.Fatal("signature accepted under the wrong key")
	}
	if v.expandedFor(otherID) != nil {
		t.Fatal("a key that verified nothing was cached")
	}
}

// The verification equation is the cofactored one (FIPS 186-5), the one
// batch verification checks: case 4 of the ed25519-speccheck vectors
// (mixed-order R, accepted only by cofactored verification) verifies;
// case 10 (non-canonical A) does not. crypto/ed25519 is cofactorless and
// refuses case 4; every p2pchat node uses the rule below.
func TestVerifyEquationIsCofactored(t *testing.T) {
	cases := []struct {
		name          string
		pub, msg, sig string
		want          bool
	}{
		{"speccheck 4: mixed-order R", "cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d",
			"e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
			"160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09", true},
		{"speccheck 10: non-canonical A", "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
			"e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
			"a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04", false},
	}
	for _, c := range cases {
		pubRaw, _ := hex.DecodeString(c.pub)
		msg, _ := hex.DecodeString(c.msg)
		sig, _ := hex.DecodeString(c.sig)
		pub, err := crypto.UnmarshalEd25519PublicKey(pubRaw)
		if err != nil {
			t.Fatal(err)
		}
		id, err := peer.IDFromPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if got := (*Verifier)(nil).verifyEd25519(id, pub, msg, sig); got != c.want {
			t.Errorf("%s: verified %v, want %v", c.name, got, c.want)
		}
	}
}
