package gossip_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/wire"
)

// FuzzDecodeInbound feeds arbitrary topic bytes to the validator's decoder.
// It must not panic, and whatever it accepts must be exactly one verified,
// well-formed payload.
func FuzzDecodeInbound(f *testing.F) {
	fx := newFixture(f)
	req, err := gossip.NewKeyRequest(detRand(1), fx.priv, fx.group, fx.key.ID(), 3, 42)
	if err != nil {
		f.Fatal(err)
	}
	for _, m := range []*wire.TopicMessage{
		{Payload: &wire.TopicMessage_Envelope{Envelope: fx.seal(f, 1, "seed").Signed}},
		{Payload: &wire.TopicMessage_RosterOp{RosterOp: fx.create.Signed}},
		{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: req.Signed}},
		batchMessage(fx.seal(f, 2, "one"), fx.seal(f, 3, "two")),
	} {
		f.Add(encodeTopic(f, m))
	}
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x00})

	f.Fuzz(func(t *testing.T, data []byte) {
		in, err := gossip.DecodeInbound(nil, data)
		if err != nil {
			if in != nil {
				t.Fatal("a value was returned with the error")
			}
			return
		}
		if len(data) > gossip.MaxTopicMessageSize {
			t.Fatalf("accepted %d bytes", len(data))
		}
		set := 0
		if e := in.Envelope; e != nil {
			set++
			if e.Seq == 0 || len(e.Nonce) != 24 || len(e.RosterHeads) == 0 || len(e.RosterHeads) > gossip.MaxRosterHeads {
				t.Fatalf("accepted a malformed envelope: %+v", e)
			}
			if _, err := wire.ParsePeerID([]byte(e.Sender)); err != nil {
				t.Fatalf("accepted an envelope whose sender does not parse: %v", err)
			}
		}
		if len(in.Envelopes) > 0 {
			set++
			if len(in.Envelopes) < 2 || len(in.Envelopes) > gossip.MaxBatchEnvelopes {
				t.Fatalf("accepted a batch of %d", len(in.Envelopes))
			}
			for i, e := range in.Envelopes {
				if e.Sender != in.Envelopes[0].Sender || e.Group != in.Envelopes[0].Group || (i > 0 && e.Seq <= in.Envelopes[i-1].Seq) {
					t.Fatalf("accepted a batch that mixes senders or groups or is out of order")
				}
			}
		}
		if in.Op != nil {
			set++
		}
		if r := in.KeyRequest; r != nil {
			set++
			if len(r.Nonce) != 16 {
				t.Fatalf("accepted a key request with a %d-byte nonce", len(r.Nonce))
			}
		}
		if set != 1 {
			t.Fatalf("%d payloads set, want 1", set)
		}
	})
}

// FuzzOpenKeyMeta feeds arbitrary signed messages to OpenKeyMeta. It must not
// panic, and accepted metadata must be signed by the peer it reports and
// decode to metadata that survives re-encoding.
func FuzzOpenKeyMeta(f *testing.F) {
	fx := newFixture(f)
	s, err := gossip.SignKeyMeta(fx.priv, &fx.key.Meta)
	if err != nil {
		f.Fatal(err)
	}
	b, err := proto.Marshal(s)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		var s wire.Signed
		if err := proto.Unmarshal(data, &s); err != nil {
			return
		}
		m, signer, err := gossip.OpenKeyMeta(nil, &s)
		if err != nil {
			return
		}
		if s.Kind != wire.Kind_KIND_KEY_META || string(signer) != string(s.Signer) {
			t.Fatalf("accepted kind %v, signer %v for %x", s.Kind, signer, s.Signer)
		}
		m2, err := keyring.MetaFromWire(nil, m.ToWire())
		if err != nil {
			t.Fatalf("accepted meta does not re-encode: %v", err)
		}
		if m2.KeyID != m.KeyID || m2.Group != m.Group || m2.Creator != m.Creator || len(m2.Recipients) != len(m.Recipients) {
			t.Fatal("accepted meta changes on re-encoding")
		}
	})
}
