package gossip_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/internal/testkeys"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// ---- fixtures ----

// detRand is this package's deterministic byte stream.
func detRand(seed uint64) io.Reader { return testkeys.Reader("p2pchat gossip test", seed) }

// testPeer returns a deterministic Ed25519 identity.
func testPeer(t testing.TB, seed uint64) (crypto.PrivKey, peer.ID) {
	t.Helper()
	return testkeys.Peer(t, "p2pchat gossip test", seed)
}

func opID(s string) roster.OpID { return roster.OpID(sha256.Sum256([]byte("op:" + s))) }

func testGroup(t testing.TB, priv crypto.PrivKey) *roster.Op {
	t.Helper()
	op, err := roster.NewCreate(priv, "test group", bytes.Repeat([]byte{7}, 16))
	if err != nil {
		t.Fatal(err)
	}
	return op
}

type fixture struct {
	priv   crypto.PrivKey
	self   peer.ID
	create *roster.Op
	group  roster.GroupID
	key    *keyring.Key
	heads  []roster.OpID
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	priv, self := testPeer(t, 1)
	create := testGroup(t, priv)
	_, bob := testPeer(t, 2)
	heads := []roster.OpID{create.ID}
	key, err := keyring.Generate(detRand(3), create.ID, self, heads, []peer.ID{self, bob})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{priv: priv, self: self, create: create, group: create.ID, key: key, heads: heads}
}

func (f *fixture) seal(t testing.TB, seq uint64, text string) *gossip.Envelope {
	t.Helper()
	e, err := gossip.SealEnvelopeFrom(detRand(seq+100), f.priv, f.key, seq, 0, f.heads, &wire.Content{Text: text, SentAtMs: 1234})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// wireEnvelope is a valid envelope body for tests that mutate then sign it.
func (f *fixture) wireEnvelope(t testing.TB) *wire.Envelope {
	t.Helper()
	e := f.seal(t, 5, "hello")
	var w wire.Envelope
	if err := proto.Unmarshal(e.Signed.Body, &w); err != nil {
		t.Fatal(err)
	}
	return &w
}

func mustSign(t testing.TB, priv crypto.PrivKey, kind wire.Kind, body proto.Message) *wire.Signed {
	t.Helper()
	s, err := wire.Sign(priv, kind, body)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func encodeTopic(t testing.TB, m *wire.TopicMessage) []byte {
	t.Helper()
	b, err := gossip.EncodeTopicMessage(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// ---- envelopes ----

func TestEnvelopeRoundTrip(t *testing.T) {
	f := newFixture(t)
	heads := []roster.OpID{opID("x"), f.create.ID}
	content := &wire.Content{Text: "hello, group", SentAtMs: 1700000000000}
	e, err := gossip.SealEnvelopeFrom(detRand(1), f.priv, f.key, 7, 0, heads, content)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(e.Signed.Body, []byte(content.Text)) {
		t.Fatal("the signed envelope carries the plaintext")
	}

	// Over the wire: marshal the signed message and open it on the other side.
	b, err := proto.Marshal(e.Signed)
	if err != nil {
		t.Fatal(err)
	}
	var s wire.Signed
	if err := proto.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	got, err := gossip.OpenEnvelope(nil, &s)
	if err != nil {
		t.Fatalf("OpenEnvelope: %v", err)
	}
	if got.Group != f.group || got.KeyID != f.key.ID() || got.Sender != f.self || got.Seq != 7 {
		t.Fatalf("header = %v %v %v %d", got.Group, got.KeyID, got.Sender, got.Seq)
	}
	if len(got.RosterHeads) != 2 || got.RosterHeads[0] != heads[0] || got.RosterHeads[1] != heads[1] {
		t.Fatalf("heads = %v, want %v", got.RosterHeads, heads)
	}
	if !bytes.Equal(got.Nonce, e.Nonce) || !bytes.Equal(got.Ciphertext, e.Ciphertext) || got.Signed != &s {
		t.Fatal("nonce, ciphertext or signed message not carried")
	}
	c, err := got.Open(f.key)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if !proto.Equal(c, content) {
		t.Fatalf("content = %v, want %v", c, content)
	}

	// Another key of the group does not open it.
	other, _ := keyring.Generate(detRand(2), f.group, f.self, f.heads, []peer.ID{f.self})
	if _, err := got.Open(other); !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatalf("Open with another key: err = %v, want ErrDecrypt", err)
	}
}

// A member who holds the group key cannot pass another member's ciphertext
// off as its own: the sender and sequence number are bound into the AEAD.
func TestEnvelopeCiphertextBoundToSenderAndSeq(t *testing.T) {
	f := newFixture(t)
	e := f.seal(t, 3, "from alice")
	bobPriv, bob := testPeer(t, 2)
	var w wire.Envelope
	if err := proto.Unmarshal(e.Signed.Body, &w); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*wire.Envelope){
		"re-signed by bob": func(w *wire.Envelope) { w.Sender = []byte(bob) },
		"other seq":        func(w *wire.Envelope) { w.Sender = []byte(bob); w.Seq = 4 },
	} {
		t.Run(name, func(t *testing.T) {
			c := proto.Clone(&w).(*wire.Envelope)
			mod(c)
			forged, err := gossip.OpenEnvelope(nil, mustSign(t, bobPriv, wire.Kind_KIND_ENVELOPE, c))
			if err != nil {
				t.Fatalf("control: a well-formed envelope by bob is refused: %v", err)
			}
			if _, err := forged.Open(f.key); !errors.Is(err, keyring.ErrDecrypt) {
				t.Fatalf("Open: err = %v, want ErrDecrypt", err)
			}
		})
	}
	// Same sender, other seq.
	c := proto.Clone(&w).(*wire.Envelope)
	c.Seq = 4
	replayed, err := gossip.OpenEnvelope(nil, mustSign(t, f.priv, wire.Kind_KIND_ENVELOPE, c))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := replayed.Open(f.key); !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatalf("ciphertext opened under another seq: err = %v", err)
	}
}

func TestOpenEnvelopeRejects(t *testing.T) {
	f := newFixture(t)
	bobPriv, bob := testPeer(t, 2)
	heads := func(n int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			h := opID(fmt.Sprint(i))
			out[i] = h[:]
		}
		return out
	}
	cases := []struct {
		name string
		priv crypto.PrivKey
		mod  func(*wire.Envelope)
		want error
	}{
		{"sender is not signer", bobPriv, func(*wire.Envelope) {}, gossip.ErrMalformed},
		{"sender bob signed by alice", f.priv, func(w *wire.Envelope) { w.Sender = []byte(bob) }, gossip.ErrMalformed},
		{"no sender", f.priv, func(w *wire.Envelope) { w.Sender = nil }, gossip.ErrMalformed},
		{"seq 0", f.priv, func(w *wire.Envelope) { w.Seq = 0 }, gossip.ErrMalformed},
		{"nonce 23 bytes", f.priv, func(w *wire.Envelope) { w.Nonce = w.Nonce[:23] }, gossip.ErrMalformed},
		{"nonce 25 bytes", f.priv, func(w *wire.Envelope) { w.Nonce = append(w.Nonce, 0) }, gossip.ErrMalformed},
		{"no nonce", f.priv, func(w *wire.Envelope) { w.Nonce = nil }, gossip.ErrMalformed},
		{"no heads", f.priv, func(w *wire.Envelope) { w.RosterHeads = nil }, gossip.ErrMalformed},
		{"too many heads", f.priv, func(w *wire.Envelope) { w.RosterHeads = heads(gossip.MaxRosterHeads + 1) }, gossip.ErrMalformed},
		{"short head", f.priv, func(w *wire.Envelope) { w.RosterHeads[0] = w.RosterHeads[0][:31] }, gossip.ErrMalformed},
		{"short group", f.priv, func(w *wire.Envelope) { w.GroupId = w.GroupId[:31] }, gossip.ErrMalformed},
		{"long key id", f.priv, func(w *wire.Envelope) { w.KeyId = append(w.KeyId, 0) }, gossip.ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := f.wireEnvelope(t)
			if _, err := gossip.OpenEnvelope(nil, mustSign(t, f.priv, wire.Kind_KIND_ENVELOPE, w)); err != nil {
				t.Fatalf("control: %v", err)
			}
			c.mod(w)
			e, err := gossip.OpenEnvelope(nil, mustSign(t, c.priv, wire.Kind_KIND_ENVELOPE, w))
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if e != nil {
				t.Fatal("an envelope was returned with the error")
			}
		})
	}

	// Exactly MaxRosterHeads is accepted.
	w := f.wireEnvelope(t)
	w.RosterHeads = heads(gossip.MaxRosterHeads)
	if e, err := gossip.OpenEnvelope(nil, mustSign(t, f.priv, wire.Kind_KIND_ENVELOPE, w)); err != nil || len(e.RosterHeads) != gossip.MaxRosterHeads {
		t.Fatalf("%d heads refused: %v", gossip.MaxRosterHeads, err)
	}

	// Tampering with the signed bytes.
	good := f.seal(t, 9, "x").Signed
	tamper := map[string]func(*wire.Signed){
		"body":      func(s *wire.Signed) { s.Body[len(s.Body)-1] ^= 1 },
		"signature": func(s *wire.Signed) { s.Signature[10] ^= 1 },
		"signer":    func(s *wire.Signed) { s.Signer = []byte(bob) },
	}
	for name, mod := range tamper {
		s := proto.Clone(good).(*wire.Signed)
		mod(s)
		if _, err := gossip.OpenEnvelope(nil, s); !errors.Is(err, wire.ErrBadSignature) {
			t.Errorf("tampered %s: err = %v, want ErrBadSignature", name, err)
		}
	}
	// A key request is not an envelope.
	req, err := gossip.NewKeyRequest(detRand(4), f.priv, f.group, f.key.ID(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gossip.OpenEnvelope(nil, req.Signed); err == nil {
		t.Error("OpenEnvelope accepted a key request")
	}
	if _, err := gossip.OpenEnvelope(nil, nil); err == nil {
		t.Error("OpenEnvelope accepted nil")
	}
}

func TestSealEnvelopeTextBound(t *testing.T) {
	f := newFixture(t)
	maxHeads := make([]roster.OpID, gossip.MaxRosterHeads)
	for i := range maxHeads {
		maxHeads[i] = opID(fmt.Sprint(i))
	}
	// The largest envelope SealEnvelopeFrom allows fits a topic message.
	e, err := gossip.SealEnvelopeFrom(detRand(1), f.priv, f.key, 1<<62, 0, maxHeads,
		&wire.Content{Text: strings.Repeat("é", gossip.MaxTextSize/2), SentAtMs: -1})
	if err != nil {
		t.Fatalf("text of MaxTextSize bytes refused: %v", err)
	}
	b, err := gossip.EncodeTopicMessage(&wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: e.Signed}})
	if err != nil {
		t.Fatalf("largest envelope does not fit a topic message: %v", err)
	}
	if _, err := gossip.DecodeInbound(nil, b); err != nil {
		t.Fatalf("largest envelope does not decode: %v", err)
	}

	_, err = gossip.SealEnvelopeFrom(detRand(1), f.priv, f.key, 1, 0, f.heads, &wire.Content{Text: strings.Repeat("a", gossip.MaxTextSize+1)})
	if !errors.Is(err, gossip.ErrTooLarge) {
		t.Fatalf("text of MaxTextSize+1 bytes: err = %v, want ErrTooLarge", err)
	}
}

func TestEnvelopeLogValue(t *testing.T) {
	f := newFixture(t)
	const text = "the secret plan"
	e := f.seal(t, 11, text)
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("msg", "env", e)
	out := buf.String()
	for _, s := range []string{text, hex.EncodeToString(e.Ciphertext[:8]), base64.StdEncoding.EncodeToString(e.Ciphertext[:9]), hex.EncodeToString(f.key.Secret()[:8])} {
		if strings.Contains(out, s) {
			t.Errorf("log contains %q:\n%s", s, out)
		}
	}
	if !strings.Contains(out, "seq=11") || !strings.Contains(out, f.key.ID().Short()) {
		t.Errorf("log lacks the envelope's identifiers:\n%s", out)
	}
}

// ---- topic messages ----

func TestTopicMessageBounds(t *testing.T) {
	big := &wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: &wire.Signed{
		Kind: wire.Kind_KIND_ENVELOPE, Body: make([]byte, gossip.MaxTopicMessageSize)}}}
	if _, err := gossip.EncodeTopicMessage(big); !errors.Is(err, gossip.ErrTooLarge) {
		t.Fatalf("EncodeTopicMessage over the bound: err = %v, want ErrTooLarge", err)
	}
	raw, err := proto.Marshal(big)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := gossip.DecodeTopicMessage(raw); !errors.Is(err, gossip.ErrTooLarge) {
		t.Fatalf("DecodeTopicMessage over the bound: err = %v, want ErrTooLarge", err)
	}
	if _, err := gossip.DecodeInbound(nil, raw); !errors.Is(err, gossip.ErrTooLarge) {
		t.Fatalf("DecodeInbound over the bound: err = %v, want ErrTooLarge", err)
	}

	// Exactly at the bound passes both ways. Envelope field: 1 tag byte +
	// 3 length bytes; inner Signed: kind (2 bytes) + body tag 1 + length 3.
	atMax := &wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: &wire.Signed{
		Kind: wire.Kind_KIND_ENVELOPE, Body: make([]byte, gossip.MaxTopicMessageSize-4-2-4)}}}
	if n := proto.Size(atMax); n != gossip.MaxTopicMessageSize {
		t.Fatalf("test message is %d bytes, want %d", n, gossip.MaxTopicMessageSize)
	}
	b, err := gossip.EncodeTopicMessage(atMax)
	if err != nil {
		t.Fatalf("EncodeTopicMessage at the bound: %v", err)
	}
	m, err := gossip.DecodeTopicMessage(b)
	if err != nil || !proto.Equal(m, atMax) {
		t.Fatalf("DecodeTopicMessage at the bound: %v", err)
	}
	// One byte over is refused both ways.
	overByOne := proto.Clone(atMax).(*wire.TopicMessage)
	overByOne.GetEnvelope().Body = append(overByOne.GetEnvelope().Body, 0)
	raw, err = proto.Marshal(overByOne)
	if err != nil || len(raw) != gossip.MaxTopicMessageSize+1 {
		t.Fatalf("test message is %d bytes: %v", len(raw), err)
	}
	if _, err := gossip.EncodeTopicMessage(overByOne); !errors.Is(err, gossip.ErrTooLarge) {
		t.Fatalf("EncodeTopicMessage one byte over: err = %v, want ErrTooLarge", err)
	}
	if _, err := gossip.DecodeTopicMessage(raw); !errors.Is(err, gossip.ErrTooLarge) {
		t.Fatalf("DecodeTopicMessage one byte over: err = %v, want ErrTooLarge", err)
	}

	for name, data := range map[string][]byte{
		"empty":          {},
		"nil":            nil,
		"unknown field":  {0x78, 0x01}, // field 15, varint 1
		"not protobuf":   {0xff, 0xff, 0xff, 0xff},
		"truncated":      b[:100],
		"empty envelope": {0x0a, 0x00}, // field 1 present, but with no bytes
	} {
		if name == "empty envelope" {
			// An envelope field present but empty decodes to a payload; the
			// signed message inside must then fail verification.
			if _, err := gossip.DecodeInbound(nil, data); err == nil {
				t.Errorf("DecodeInbound(%s) succeeded", name)
			}
			continue
		}
		if _, err := gossip.DecodeTopicMessage(data); !errors.Is(err, gossip.ErrMalformed) {
			t.Errorf("DecodeTopicMessage(%s): err = %v, want ErrMalformed", name, err)
		}
		if _, err := gossip.DecodeInbound(nil, data); err == nil {
			t.Errorf("DecodeInbound(%s) succeeded", name)
		}
	}
}

func TestDecodeInbound(t *testing.T) {
	f := newFixture(t)
	env := f.seal(t, 1, "hi")
	req, err := gossip.NewKeyRequest(detRand(5), f.priv, f.group, f.key.ID(), 2, 99)
	if err != nil {
		t.Fatal(err)
	}

	in, err := gossip.DecodeInbound(nil, encodeTopic(t, &wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: env.Signed}}))
	if err != nil || in.Envelope == nil || in.Op != nil || in.KeyRequest != nil {
		t.Fatalf("envelope: %+v, %v", in, err)
	}
	if in.Envelope.Seq != 1 || in.Envelope.Sender != f.self {
		t.Fatal("envelope fields lost")
	}

	in, err = gossip.DecodeInbound(nil, encodeTopic(t, &wire.TopicMessage{Payload: &wire.TopicMessage_RosterOp{RosterOp: f.create.Signed}}))
	if err != nil || in.Op == nil || in.Envelope != nil || in.KeyRequest != nil {
		t.Fatalf("roster op: %+v, %v", in, err)
	}
	if in.Op.ID != f.create.ID || in.Op.Author != f.self {
		t.Fatal("roster op fields lost")
	}

	in, err = gossip.DecodeInbound(nil, encodeTopic(t, &wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: req.Signed}}))
	if err != nil || in.KeyRequest == nil || in.Envelope != nil || in.Op != nil {
		t.Fatalf("key request: %+v, %v", in, err)
	}
	if in.KeyRequest.Attempt != 2 || in.KeyRequest.KeyID != f.key.ID() {
		t.Fatal("key request fields lost")
	}

	// A signed message in the wrong slot is refused: the kinds differ.
	for name, m := range map[string]*wire.TopicMessage{
		"envelope as roster op":    {Payload: &wire.TopicMessage_RosterOp{RosterOp: env.Signed}},
		"envelope as key request":  {Payload: &wire.TopicMessage_KeyRequest{KeyRequest: env.Signed}},
		"key request as envelope":  {Payload: &wire.TopicMessage_Envelope{Envelope: req.Signed}},
		"roster op as envelope":    {Payload: &wire.TopicMessage_Envelope{Envelope: f.create.Signed}},
		"roster op as key request": {Payload: &wire.TopicMessage_KeyRequest{KeyRequest: f.create.Signed}},
	} {
		if in, err := gossip.DecodeInbound(nil, encodeTopic(t, m)); err == nil || in != nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// ---- key requests and key metadata ----

func TestKeyRequestRoundTrip(t *testing.T) {
	f := newFixture(t)
	for _, attempt := range []uint32{0, 1, 7, 1<<32 - 1} {
		req, err := gossip.NewKeyRequest(detRand(uint64(attempt)), f.priv, f.group, f.key.ID(), attempt, 1700000000123)
		if err != nil {
			t.Fatal(err)
		}
		if len(req.Nonce) != 16 {
			t.Fatalf("nonce of %d bytes", len(req.Nonce))
		}
		b, _ := proto.Marshal(req.Signed)
		var s wire.Signed
		if err := proto.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		got, err := gossip.OpenKeyRequest(nil, &s)
		if err != nil {
			t.Fatalf("OpenKeyRequest: %v", err)
		}
		if got.Group != f.group || got.KeyID != f.key.ID() || got.Requester != f.self ||
			!bytes.Equal(got.Nonce, req.Nonce) || got.SentAtMs != 1700000000123 || got.Attempt != attempt {
			t.Fatalf("got %+v, want %+v", got, req)
		}
	}
	r1, _ := gossip.NewKeyRequest(detRand(1), f.priv, f.group, f.key.ID(), 0, 1)
	r2, _ := gossip.NewKeyRequest(detRand(2), f.priv, f.group, f.key.ID(), 0, 1)
	if bytes.Equal(r1.Nonce, r2.Nonce) {
		t.Error("two requests share a nonce")
	}
}

func TestOpenKeyRequestRejects(t *testing.T) {
	f := newFixture(t)
	bobPriv, bob := testPeer(t, 2)
	base := func() *wire.KeyRequest {
		return &wire.KeyRequest{GroupId: f.group[:], KeyId: f.key.Meta.KeyID[:], Requester: []byte(f.self),
			Nonce: bytes.Repeat([]byte{1}, 16), SentAtMs: 5, Attempt: 1}
	}
	if _, err := gossip.OpenKeyRequest(nil, mustSign(t, f.priv, wire.Kind_KIND_KEY_REQUEST, base())); err != nil {
		t.Fatalf("control: %v", err)
	}
	cases := []struct {
		name string
		priv crypto.PrivKey
		mod  func(*wire.KeyRequest)
	}{
		{"requester is not signer", bobPriv, func(*wire.KeyRequest) {}},
		{"requester bob signed by alice", f.priv, func(r *wire.KeyRequest) { r.Requester = []byte(bob) }},
		{"nonce 15 bytes", f.priv, func(r *wire.KeyRequest) { r.Nonce = r.Nonce[:15] }},
		{"nonce 17 bytes", f.priv, func(r *wire.KeyRequest) { r.Nonce = append(r.Nonce, 0) }},
		{"no nonce", f.priv, func(r *wire.KeyRequest) { r.Nonce = nil }},
		{"short group", f.priv, func(r *wire.KeyRequest) { r.GroupId = r.GroupId[:31] }},
		{"short key id", f.priv, func(r *wire.KeyRequest) { r.KeyId = r.KeyId[:31] }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := base()
			c.mod(r)
			got, err := gossip.OpenKeyRequest(nil, mustSign(t, c.priv, wire.Kind_KIND_KEY_REQUEST, r))
			if !errors.Is(err, gossip.ErrMalformed) || got != nil {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
	s := mustSign(t, f.priv, wire.Kind_KIND_KEY_REQUEST, base())
	s.Body[0] ^= 1
	if _, err := gossip.OpenKeyRequest(nil, s); !errors.Is(err, wire.ErrBadSignature) {
		t.Fatalf("tampered: err = %v, want ErrBadSignature", err)
	}
}

func TestKeyMetaRoundTrip(t *testing.T) {
	f := newFixture(t)
	// Bob forwards a key alice created: the signer is the sender, not the creator.
	bobPriv, bob := testPeer(t, 2)
	s, err := gossip.SignKeyMeta(bobPriv, &f.key.Meta)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := proto.Marshal(s)
	var s2 wire.Signed
	if err := proto.Unmarshal(b, &s2); err != nil {
		t.Fatal(err)
	}
	m, signer, err := gossip.OpenKeyMeta(nil, &s2)
	if err != nil {
		t.Fatalf("OpenKeyMeta: %v", err)
	}
	if signer != bob {
		t.Fatalf("signer = %v, want %v", signer, bob)
	}
	if m.Group != f.key.Meta.Group || m.KeyID != f.key.ID() || m.Creator != f.self ||
		len(m.Recipients) != 2 || !m.IsRecipient(bob) || !m.IsRecipient(f.self) || len(m.RosterHeads) != 1 || m.RosterHeads[0] != f.create.ID {
		t.Fatalf("meta = %+v, want %+v", m, f.key.Meta)
	}
	if _, err := keyring.FromSecret(f.key.Secret(), m); err != nil {
		t.Fatalf("received meta does not match its key: %v", err)
	}

	// Tampered, wrong kind, malformed content.
	tampered := proto.Clone(s).(*wire.Signed)
	tampered.Signature[0] ^= 1
	if _, signer, err := gossip.OpenKeyMeta(nil, tampered); !errors.Is(err, wire.ErrBadSignature) || signer != "" {
		t.Errorf("tampered: err = %v signer %q", err, signer)
	}
	if _, _, err := gossip.OpenKeyMeta(nil, f.seal(t, 1, "x").Signed); err == nil {
		t.Error("an envelope was accepted as key metadata")
	}
	bad := f.key.Meta.ToWire()
	bad.Recipients = [][]byte{bad.Recipients[1], bad.Recipients[0]}
	if _, _, err := gossip.OpenKeyMeta(nil, mustSign(t, f.priv, wire.Kind_KIND_KEY_META, bad)); !errors.Is(err, keyring.ErrMalformedMeta) {
		t.Errorf("unsorted recipients: err = %v, want ErrMalformedMeta", err)
	}
}

func TestTopicName(t *testing.T) {
	g1 := roster.GroupID(sha256.Sum256([]byte("g1")))
	g2 := g1
	g2[31] ^= 1
	n1 := gossip.TopicName(g1)
	if n1 != gossip.TopicName(g1) {
		t.Fatal("TopicName is not deterministic")
	}
	if n1 == gossip.TopicName(g2) {
		t.Fatal("two groups share a topic")
	}
	if !strings.HasPrefix(n1, "/p2pchat/1/") {
		t.Errorf("topic %q lacks its prefix", n1)
	}
	for _, g := range []roster.GroupID{g1, g2} {
		name := gossip.TopicName(g)
		for _, leak := range []string{
			hex.EncodeToString(g[:]), strings.ToUpper(hex.EncodeToString(g[:])),
			hex.EncodeToString(g[:8]), hex.EncodeToString(g[24:]),
			base64.StdEncoding.EncodeToString(g[:]), base64.RawURLEncoding.EncodeToString(g[:]),
		} {
			if strings.Contains(name, leak) {
				t.Errorf("topic %q reveals the group ID (%q)", name, leak)
			}
		}
	}
}

func TestMessageID(t *testing.T) {
	a, b := []byte("message a"), []byte("message b")
	if gossip.MessageID(a) != gossip.MessageID(bytes.Clone(a)) {
		t.Fatal("MessageID is not deterministic")
	}
	if gossip.MessageID(a) == gossip.MessageID(b) {
		t.Fatal("two messages share an ID")
	}
}

// ---- direct streams over real hosts ----

// leakCheck verifies, after every later cleanup (host and Streams closes)
// has run, that the test left no goroutine behind.
func leakCheck(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

func newHost(t *testing.T, seed uint64) host.Host {
	t.Helper()
	priv, _ := testPeer(t, seed)
	h, err := libp2p.New(libp2p.Identity(priv), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// hostPair returns two connected hosts.
func hostPair(t *testing.T) (host.Host, host.Host) {
	t.Helper()
	h1, h2 := newHost(t, 11), newHost(t, 12)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h1.Connect(ctx, peer.AddrInfo{ID: h2.ID(), Addrs: h2.Addrs()}); err != nil {
		t.Fatal(err)
	}
	return h1, h2
}

func newStreams(t *testing.T, h host.Host, hs gossip.Handlers) *gossip.Streams {
	t.Helper()
	s := gossip.NewStreams(h, hs)
	t.Cleanup(s.Close)
	return s
}

func refuseAll() gossip.Handlers {
	return gossip.Handlers{
		Key:    func(peer.ID, *wire.KeyTransfer) bool { return false },
		Roster: func(peer.ID, [32]byte, []roster.OpID) ([]*wire.Signed, bool) { return nil, false },
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func keyTransfer(t *testing.T, f *fixture) *wire.KeyTransfer {
	t.Helper()
	meta, err := gossip.SignKeyMeta(f.priv, &f.key.Meta)
	if err != nil {
		t.Fatal(err)
	}
	return &wire.KeyTransfer{Key: f.key.Secret(), Meta: meta, RequestNonce: []byte("nonce")}
}

func TestSendKey(t *testing.T) {
	leakCheck(t)
	h1, h2 := hostPair(t)
	f := newFixture(t)
	ctx := testCtx(t)

	type call struct {
		from peer.ID
		t    *wire.KeyTransfer
	}
	calls := make(chan call, 4)
	newStreams(t, h2, gossip.Handlers{
		Key: func(from peer.ID, tr *wire.KeyTransfer) bool {
			calls <- call{from, tr}
			return bytes.Equal(tr.RequestNonce, []byte("nonce"))
		},
		Roster: refuseAll().Roster,
	})
	s1 := newStreams(t, h1, refuseAll())

	tr := keyTransfer(t, f)
	if err := s1.SendKey(ctx, h2.ID(), tr); err != nil {
		t.Fatalf("accepted transfer: %v", err)
	}
	c := <-calls
	if c.from != h1.ID() {
		t.Fatalf("handler saw sender %v, want %v", c.from, h1.ID())
	}
	if !proto.Equal(c.t, tr) {
		t.Fatal("handler received a different transfer")
	}

	refused := proto.Clone(tr).(*wire.KeyTransfer)
	refused.RequestNonce = []byte("other")
	if err := s1.SendKey(ctx, h2.ID(), refused); !errors.Is(err, gossip.ErrRefused) {
		t.Fatalf("refused transfer: err = %v, want ErrRefused", err)
	}
	<-calls

	// A transfer over the frame bound is refused before it is sent.
	huge := proto.Clone(tr).(*wire.KeyTransfer)
	huge.Key = make([]byte, gossip.MaxKeyFrame)
	if err := s1.SendKey(ctx, h2.ID(), huge); !errors.Is(err, gossip.ErrTooLarge) {
		t.Fatalf("oversized transfer: err = %v, want ErrTooLarge", err)
	}
	select {
	case <-calls:
		t.Fatal("handler called for an oversized transfer")
	default:
	}
}

func TestFetchRoster(t *testing.T) {
	leakCheck(t)
	h1, h2 := hostPair(t)
	f := newFixture(t)
	ctx := testCtx(t)
	_, bob := testPeer(t, 2)
	add, err := roster.NewAdd(f.priv, f.group, []roster.OpID{f.create.ID}, bob, roster.RoleMember, nil)
	if err != nil {
		t.Fatal(err)
	}
	ops := []*wire.Signed{f.create.Signed, add.Signed}

	var froms sync.Map
	newStreams(t, h2, gossip.Handlers{
		Key: refuseAll().Key,
		Roster: func(from peer.ID, group [32]byte, _ []roster.OpID) ([]*wire.Signed, bool) {
			froms.Store(from, true)
			if group != f.group {
				return nil, false
			}
			return ops, true
		},
	})
	s1 := newStreams(t, h1, refuseAll())

	got, err := s1.FetchRoster(ctx, h2.ID(), f.group, nil)
	if err != nil {
		t.Fatalf("FetchRoster: %v", err)
	}
	if len(got) != len(ops) {
		t.Fatalf("got %d ops, want %d", len(got), len(ops))
	}
	for i := range ops {
		if !proto.Equal(got[i], ops[i]) {
			t.Fatalf("op %d differs", i)
		}
		op, err := roster.Decode(nil, got[i])
		if err != nil {
			t.Fatalf("op %d does not verify after transfer: %v", i, err)
		}
		if i == 1 && op.ID != add.ID {
			t.Fatal("add op ID changed in transfer")
		}
	}
	if _, ok := froms.Load(h1.ID()); !ok {
		t.Fatal("handler did not see the authenticated requester")
	}

	other := f.group
	other[0] ^= 1
	if got, err := s1.FetchRoster(ctx, h2.ID(), other, nil); err == nil || got != nil {
		t.Fatalf("refused fetch: ops %v, err %v", got, err)
	}
}

// A frame announcing more than MaxKeyFrame bytes is reset before the
// handler runs; a frame of exactly MaxKeyFrame bytes is served.
func TestKeyFrameBound(t *testing.T) {
	leakCheck(t)
	h1, h2 := hostPair(t)
	ctx := testCtx(t)
	var handled atomic.Int32
	var lastKeyLen atomic.Int64
	newStreams(t, h2, gossip.Handlers{
		Key: func(_ peer.ID, tr *wire.KeyTransfer) bool {
			handled.Add(1)
			lastKeyLen.Store(int64(len(tr.Key)))
			return true
		},
		Roster: refuseAll().Roster,
	})

	send := func(frame []byte) ([]byte, error) {
		st, err := h1.NewStream(ctx, h2.ID(), gossip.KeyProtocol)
		if err != nil {
			return nil, err
		}
		defer st.Reset()
		_ = st.SetDeadline(time.Now().Add(15 * time.Second))
		werr := make(chan error, 1)
		go func() {
			_, err := st.Write(frame)
			if err == nil {
				err = st.CloseWrite()
			}
			werr <- err
		}()
		resp, err := io.ReadAll(st)
		_ = st.Reset() // unblocks the writer if the peer stopped reading
		<-werr
		return resp, err
	}
	frame := func(payload []byte) []byte {
		return append(binary.AppendUvarint(nil, uint64(len(payload))), payload...)
	}

	// Exactly MaxKeyFrame: 1 tag byte + 3 length bytes + key.
	atMax, err := proto.Marshal(&wire.KeyTransfer{Key: make([]byte, gossip.MaxKeyFrame-4)})
	if err != nil || len(atMax) != gossip.MaxKeyFrame {
		t.Fatalf("test frame of %d bytes: %v", len(atMax), err)
	}
	resp, err := send(frame(atMax))
	if err != nil {
		t.Fatalf("frame at the bound: %v", err)
	}
	if handled.Load() != 1 || lastKeyLen.Load() != gossip.MaxKeyFrame-4 {
		t.Fatalf("handler calls %d, key %d bytes", handled.Load(), lastKeyLen.Load())
	}
	var ack wire.KeyTransferAck
	if err := proto.Unmarshal(resp[1:], &ack); err != nil || !ack.Accepted || int(resp[0]) != len(resp)-1 {
		t.Fatalf("answer %x is not an accepting ack: %v", resp, err)
	}

	// One byte over: the stream is reset, the handler never runs.
	over, _ := proto.Marshal(&wire.KeyTransfer{Key: make([]byte, gossip.MaxKeyFrame-3)})
	if len(over) != gossip.MaxKeyFrame+1 {
		t.Fatalf("test frame of %d bytes", len(over))
	}
	resp, err = send(frame(over))
	if err == nil {
		t.Fatalf("oversized frame answered with %x and no reset", resp)
	}
	// Only a length prefix announcing a huge frame.
	resp, err = send(binary.AppendUvarint(nil, 1<<40))
	if err == nil {
		t.Fatalf("huge length prefix answered with %x and no reset", resp)
	}
	if n := handled.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1 (only for the frame at the bound)", n)
	}
}

func TestStreamsCloseWaitsAndUnregisters(t *testing.T) {
	leakCheck(t)
	h1, h2 := hostPair(t)
	f := newFixture(t)
	ctx := testCtx(t)

	entered := make(chan struct{}, 8)
	release := make(chan struct{})
	var handled atomic.Int32
	s2 := gossip.NewStreams(h2, gossip.Handlers{
		Key: func(peer.ID, *wire.KeyTransfer) bool {
			handled.Add(1)
			entered <- struct{}{}
			<-release
			return true
		},
		Roster: func(peer.ID, [32]byte, []roster.OpID) ([]*wire.Signed, bool) { return nil, true },
	})
	released := false
	t.Cleanup(func() {
		if !released {
			close(release)
		}
		s2.Close()
	})
	s1 := newStreams(t, h1, refuseAll())

	tr := keyTransfer(t, f)
	sendErr := make(chan error, 1)
	go func() { sendErr <- s1.SendKey(ctx, h2.ID(), tr) }()
	select {
	case <-entered:
	case <-ctx.Done():
		t.Fatal("handler never ran")
	}

	closed := make(chan struct{})
	go func() { s2.Close(); close(closed) }()
	// Close must block while the handler runs. This is a negative check, so
	// it can only wait a bounded time for a wrong early return.
	select {
	case <-closed:
		t.Fatal("Close returned while a handler was running")
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	released = true
	select {
	case <-closed:
	case <-ctx.Done():
		t.Fatal("Close did not return after the handler did")
	}
	// The running exchange completed normally.
	select {
	case err := <-sendErr:
		if err != nil {
			t.Fatalf("SendKey in flight during Close: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("SendKey did not return")
	}

	// The handlers are gone: later requests fail and never reach them.
	if err := s1.SendKey(ctx, h2.ID(), tr); err == nil || errors.Is(err, gossip.ErrRefused) {
		t.Fatalf("SendKey after Close: err = %v, want a protocol failure", err)
	}
	if _, err := s1.FetchRoster(ctx, h2.ID(), f.group, nil); err == nil {
		t.Fatal("FetchRoster after Close succeeded")
	}
	if n := handled.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}
	for _, p := range h2.Mux().Protocols() {
		if p == gossip.KeyProtocol || p == gossip.RosterProtocol || p == gossip.SyncProtocol {
			t.Fatalf("protocol %s still registered after Close", p)
		}
	}
	s2.Close() // idempotent
}

// The requester's known heads reach the handler as op IDs; a request naming
// more than roster.MaxParents heads, or one that is not 32 bytes, is reset
// before the handler runs.
func TestFetchRosterKnownHeads(t *testing.T) {
	leakCheck(t)
	h1, h2 := hostPair(t)
	f := newFixture(t)
	ctx := testCtx(t)
	var seen atomic.Value
	var handled atomic.Int32
	newStreams(t, h2, gossip.Handlers{
		Key: refuseAll().Key,
		Roster: func(_ peer.ID, _ [32]byte, known []roster.OpID) ([]*wire.Signed, bool) {
			handled.Add(1)
			seen.Store(known)
			return nil, true
		},
	})
	s1 := newStreams(t, h1, refuseAll())
	heads := []roster.OpID{f.create.ID, {7}}
	if _, err := s1.FetchRoster(ctx, h2.ID(), f.group, heads); err != nil {
		t.Fatal(err)
	}
	if got, _ := seen.Load().([]roster.OpID); len(got) != 2 || got[0] != heads[0] || got[1] != heads[1] {
		t.Fatalf("handler saw known heads %v, want %v", got, heads)
	}

	raw := func(req *wire.RosterRequest) error {
		st, err := h1.NewStream(ctx, h2.ID(), gossip.RosterProtocol)
		if err != nil {
			return err
		}
		defer st.Reset()
		_ = st.SetDeadline(time.Now().Add(10 * time.Second))
		b, _ := proto.Marshal(req)
		if _, err := st.Write(append(binary.AppendUvarint(nil, uint64(len(b))), b...)); err != nil {
			return err
		}
		_ = st.CloseWrite()
		_, err = io.ReadAll(st)
		return err
	}
	before := handled.Load()
	tooMany := &wire.RosterRequest{GroupId: f.group[:]}
	for i := range roster.MaxParents + 1 {
		tooMany.KnownHeads = append(tooMany.KnownHeads, (&roster.OpID{byte(i), 1}).Bytes())
	}
	short := &wire.RosterRequest{GroupId: f.group[:], KnownHeads: [][]byte{make([]byte, 31)}}
	for name, req := range map[string]*wire.RosterRequest{"65 heads": tooMany, "a 31-byte head": short} {
		if err := raw(req); err == nil {
			t.Errorf("%s: answered, want a reset", name)
		}
	}
	if handled.Load() != before {
		t.Fatal("the handler ran for a request over its bounds")
	}
}
