package gossip_test

// Per-message costs of the envelope path beside the raw cryptographic floor
// (issue #5). The bench harness (go run ./bench -only micro) runs these and
// reports the ratios:
//
//	go test -run '^$' -bench PerMessage -benchtime 2000x ./gossip ./node

import (
	"bytes"
	"crypto/cipher"
	stded25519 "crypto/ed25519"
	"crypto/rand"
	"io"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	voi "github.com/oasisprotocol/curve25519-voi/primitives/ed25519"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/internal/testkeys"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// benchSizes are the message sizes every per-message benchmark runs at:
// the text of a message, or the plaintext of the floor.
var benchSizes = []struct {
	name string
	size int
}{
	{"256B", 256},
	{"4KiB", 4 << 10},
}

// benchText is a message text of n bytes.
func benchText(n int) string { return string(bytes.Repeat([]byte{'m'}, n)) }

// benchSender is a member with a group key, as a sender or receiver sees it.
type benchSender struct {
	priv  crypto.PrivKey
	id    peer.ID
	key   *keyring.Key
	heads []roster.OpID
}

func newBenchSender(b *testing.B) *benchSender {
	b.Helper()
	const label = "p2pchat gossip bench"
	priv, self := testkeys.Peer(b, label, 1)
	_, other := testkeys.Peer(b, label, 2)
	create, err := roster.NewCreate(priv, "bench group", bytes.Repeat([]byte{9}, 16))
	if err != nil {
		b.Fatal(err)
	}
	heads := []roster.OpID{create.ID}
	key, err := keyring.Generate(testkeys.Reader(label, 3), create.ID, self, heads, []peer.ID{self, other})
	if err != nil {
		b.Fatal(err)
	}
	return &benchSender{priv: priv, id: self, key: key, heads: heads}
}

// seal makes the envelope of message seq with a text of size bytes, using
// the system random source as the node does.
func (s *benchSender) seal(b *testing.B, seq uint64, size int) *gossip.Envelope {
	b.Helper()
	e, err := gossip.SealEnvelopeFrom(rand.Reader, s.priv, s.key, seq, 1, s.heads, &wire.Content{Text: benchText(size), SentAtMs: 1700000000000})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// BenchmarkPerMessageSealSign is what a sender does per message: encrypt
// the content under the group key (XChaCha20-Poly1305, random nonce) and
// sign the envelope (Ed25519).
func BenchmarkPerMessageSealSign(b *testing.B) {
	s := newBenchSender(b)
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			content := &wire.Content{Text: benchText(sz.size), SentAtMs: 1700000000000}
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			seq := uint64(1)
			for b.Loop() {
				e, err := gossip.SealEnvelopeFrom(rand.Reader, s.priv, s.key, seq, 1, s.heads, content)
				if err != nil || e.Signed == nil || len(e.Ciphertext) < sz.size {
					b.Fatalf("seal: %v", err)
				}
				seq++
			}
		})
	}
}

// BenchmarkPerMessageVerifyOpen is what a receiver does per message: verify
// the signature and decode the envelope, then decrypt its content.
func BenchmarkPerMessageVerifyOpen(b *testing.B) {
	verifier := new(wire.Verifier) // as a node has: each signer checked and expanded once
	s := newBenchSender(b)
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			signed := s.seal(b, 7, sz.size).Signed
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			for b.Loop() {
				e, err := gossip.OpenEnvelope(verifier, signed)
				if err != nil {
					b.Fatalf("OpenEnvelope: %v", err)
				}
				c, err := e.Open(s.key)
				if err != nil || len(c.Text) != sz.size {
					b.Fatalf("Open: %v", err)
				}
			}
		})
	}
}

// BenchmarkPerMessageVerifyOpenBatch is BenchmarkPerMessageVerifyOpen for
// envelopes that arrive in a sender's batch (a burst): the topic message is
// decoded and its signatures verified as one batch, then each envelope is
// decrypted. One op is one envelope: each batch counts as as many ops as it
// carries (64 of 256 B, or as many 4 KiB ones as fit one topic message).
func BenchmarkPerMessageVerifyOpenBatch(b *testing.B) {
	verifier := new(wire.Verifier) // as a node has: each signer checked and expanded once
	s := newBenchSender(b)
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			var signed []*wire.Signed
			for seq := uint64(1); seq <= gossip.MaxBatchEnvelopes; seq++ {
				signed = append(signed, s.seal(b, seq, sz.size).Signed)
			}
			data, err := gossip.EncodeTopicMessage(gossip.PackEnvelopes(signed, gossip.MaxBatchEnvelopes)[0])
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			b.ResetTimer()
			for done := 0; done < b.N; {
				in, err := gossip.DecodeInbound(verifier, data)
				if err != nil || len(in.Envelopes) < 2 {
					b.Fatalf("DecodeInbound: %v", err)
				}
				for _, e := range in.Envelopes {
					c, err := e.Open(s.key)
					if err != nil || len(c.Text) != sz.size {
						b.Fatalf("Open: %v", err)
					}
				}
				done += len(in.Envelopes)
			}
		})
	}
}

// BenchmarkPerMessageDecodeInbound is the topic validator's decode step on
// the bytes GossipSub delivers: unmarshal the topic message, verify the
// signature and decode the envelope (no decryption: the validator does not
// decrypt).
func BenchmarkPerMessageDecodeInbound(b *testing.B) {
	verifier := new(wire.Verifier) // as a node has: each signer checked and expanded once
	s := newBenchSender(b)
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			e := s.seal(b, 7, sz.size)
			data, err := gossip.EncodeTopicMessage(&wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: e.Signed}})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			for b.Loop() {
				in, err := gossip.DecodeInbound(verifier, data)
				if err != nil || in.Envelope == nil || in.Envelope.Seq != 7 {
					b.Fatalf("DecodeInbound: %v", err)
				}
			}
		})
	}
}

// newFloor returns the raw floor's Ed25519 key pair and a plaintext of size
// bytes.
func newFloor(b *testing.B, size int) (stded25519.PublicKey, stded25519.PrivateKey, []byte) {
	b.Helper()
	pub, priv, err := stded25519.GenerateKey(testkeys.Reader("p2pchat gossip floor", 1))
	if err != nil {
		b.Fatal(err)
	}
	return pub, priv, bytes.Repeat([]byte{'m'}, size)
}

// newFloorAEAD returns an XChaCha20-Poly1305 AEAD under a fixed key, made
// once: the floor does not count key setup.
func newFloorAEAD(b *testing.B) cipher.AEAD {
	b.Helper()
	key := make([]byte, chacha20poly1305.KeySize)
	if _, err := io.ReadFull(testkeys.Reader("p2pchat gossip floor", 2), key); err != nil {
		b.Fatal(err)
	}
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		b.Fatal(err)
	}
	return aead
}

// BenchmarkPerMessageFloorSignSeal is the raw floor of sending: the
// standard library's crypto/ed25519 Sign over the ciphertext plus
// golang.org/x/crypto XChaCha20-Poly1305 Seal of the plaintext under a
// fresh random 24-byte nonce (nonce generation included, as in the real
// path). No framing, no associated data, no protobuf. The standard library
// is used on purpose: it is the reference everyone has; the project itself
// signs with curve25519-voi (wire/ed25519.go).
func BenchmarkPerMessageFloorSignSeal(b *testing.B) {
	benchFloorSignSeal(b, func(priv stded25519.PrivateKey, msg []byte) []byte { return stded25519.Sign(priv, msg) })
}

// BenchmarkPerMessageFloorSignSealVoi is BenchmarkPerMessageFloorSignSeal
// with curve25519-voi's Sign, the signer the project uses: the fastest
// single-signature floor of sending.
func BenchmarkPerMessageFloorSignSealVoi(b *testing.B) {
	benchFloorSignSeal(b, func(priv stded25519.PrivateKey, msg []byte) []byte { return voi.Sign(voi.PrivateKey(priv), msg) })
}

func benchFloorSignSeal(b *testing.B, sign func(stded25519.PrivateKey, []byte) []byte) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			pub, priv, plain := newFloor(b, sz.size)
			aead := newFloorAEAD(b)
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			var ct, sig []byte
			for b.Loop() {
				nonce := make([]byte, chacha20poly1305.NonceSizeX)
				if _, err := rand.Read(nonce); err != nil {
					b.Fatal(err)
				}
				ct = aead.Seal(nil, nonce, plain, nil)
				sig = sign(priv, ct)
			}
			if len(ct) != sz.size+aead.Overhead() || !stded25519.Verify(pub, ct, sig) {
				b.Fatal("floor seal + sign produced an invalid result")
			}
		})
	}
}

// floorSealed seals and signs one plaintext of size bytes for the receive
// floors.
func floorSealed(b *testing.B, size int) (pub stded25519.PublicKey, nonce, ct, sig []byte, aead cipher.AEAD) {
	b.Helper()
	pub, priv, plain := newFloor(b, size)
	a := newFloorAEAD(b)
	nonce = make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := rand.Read(nonce); err != nil {
		b.Fatal(err)
	}
	ct = a.Seal(nil, nonce, plain, nil)
	return pub, nonce, ct, stded25519.Sign(priv, ct), a
}

// BenchmarkPerMessageFloorVerifyOpen is the raw floor of receiving: the
// standard library's crypto/ed25519 Verify plus XChaCha20-Poly1305 Open.
func BenchmarkPerMessageFloorVerifyOpen(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			pub, nonce, ct, sig, aead := floorSealed(b, sz.size)
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			for b.Loop() {
				if !stded25519.Verify(pub, ct, sig) {
					b.Fatal("Verify failed")
				}
				pt, err := aead.Open(nil, nonce, ct, nil)
				if err != nil || len(pt) != sz.size {
					b.Fatalf("Open: %v", err)
				}
			}
		})
	}
}

// BenchmarkPerMessageFloorVerifyVoi is the fastest single-signature floor:
// curve25519-voi's VerifyExpandedWithOptions with a pre-expanded public key
// and the FIPS 186-5 (cofactored) equation, the library and options the
// project verifies with, plus XChaCha20-Poly1305 Open.
func BenchmarkPerMessageFloorVerifyVoi(b *testing.B) {
	opts := &voi.Options{Verify: voi.VerifyOptionsFIPS_186_5}
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			pub, nonce, ct, sig, aead := floorSealed(b, sz.size)
			xpub, err := voi.NewExpandedPublicKey(voi.PublicKey(pub))
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			for b.Loop() {
				if !voi.VerifyExpandedWithOptions(xpub, ct, sig, opts) {
					b.Fatal("VerifyExpandedWithOptions failed")
				}
				pt, err := aead.Open(nil, nonce, ct, nil)
				if err != nil || len(pt) != sz.size {
					b.Fatalf("Open: %v", err)
				}
			}
		})
	}
}
