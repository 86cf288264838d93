package gossip_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/wire"
)

func batchMessage(envs ...*gossip.Envelope) *wire.TopicMessage {
	b := &wire.EnvelopeBatch{}
	for _, e := range envs {
		b.Envelopes = append(b.Envelopes, e.Signed)
	}
	return &wire.TopicMessage{Payload: &wire.TopicMessage_EnvelopeBatch{EnvelopeBatch: b}}
}

func TestEnvelopeBatchRoundTrip(t *testing.T) {
	f := newFixture(t)
	envs := []*gossip.Envelope{f.seal(t, 3, "a"), f.seal(t, 4, "b"), f.seal(t, 9, "c")}
	in, err := gossip.DecodeInbound(nil, encodeTopic(t, batchMessage(envs...)))
	if err != nil {
		t.Fatal(err)
	}
	if in.Envelope != nil || in.Op != nil || in.KeyRequest != nil || len(in.Envelopes) != 3 {
		t.Fatalf("decoded %+v", in)
	}
	for i, e := range in.Envelopes {
		if e.Seq != envs[i].Seq || e.Sender != f.self || !proto.Equal(e.Signed, envs[i].Signed) {
			t.Fatalf("envelope %d: seq %d sender %v", i, e.Seq, e.Sender)
		}
		c, err := e.Open(f.key)
		if err != nil || c.Text != []string{"a", "b", "c"}[i] {
			t.Fatalf("envelope %d opens to %v, %v", i, c, err)
		}
		// Each envelope of a batch stands alone: stored and synced as is.
		if _, err := gossip.OpenEnvelope(nil, e.Signed); err != nil {
			t.Fatalf("envelope %d alone: %v", i, err)
		}
	}
}

func TestEnvelopeBatchRejects(t *testing.T) {
	f := newFixture(t)
	other := newFixture(t)
	otherPriv, _ := testPeer(t, 9)
	other.priv = otherPriv
	a, b, c := f.seal(t, 1, "a"), f.seal(t, 2, "b"), f.seal(t, 3, "c")
	forged := f.seal(t, 4, "d")
	forged.Signed = proto.Clone(forged.Signed).(*wire.Signed)
	forged.Signed.Signature[0] ^= 1
	many := make([]*gossip.Envelope, gossip.MaxBatchEnvelopes+1)
	for i := range many {
		many[i] = f.seal(t, uint64(i+1), "x")
	}
	cases := map[string]*wire.TopicMessage{
		"one envelope":            batchMessage(a),
		"empty":                   batchMessage(),
		"too many":                batchMessage(many...),
		"one forged signature":    batchMessage(a, b, forged),
		"out of sequence order":   batchMessage(b, a),
		"repeated sequence":       batchMessage(a, a),
		"two senders":             batchMessage(a, other.seal(t, 2, "z")),
		"roster op in the batch":  {Payload: &wire.TopicMessage_EnvelopeBatch{EnvelopeBatch: &wire.EnvelopeBatch{Envelopes: []*wire.Signed{a.Signed, f.create.Signed}}}},
		"nil envelope":            {Payload: &wire.TopicMessage_EnvelopeBatch{EnvelopeBatch: &wire.EnvelopeBatch{Envelopes: []*wire.Signed{a.Signed, nil}}}},
		"nil batch":               {Payload: &wire.TopicMessage_EnvelopeBatch{}},
		"valid then out of order": batchMessage(a, c, b),
	}
	for name, m := range cases {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		in, err := gossip.DecodeInbound(nil, data)
		if err == nil || in != nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !errors.Is(err, gossip.ErrMalformed) && !errors.Is(err, wire.ErrBadSignature) && !errors.Is(err, gossip.ErrTooLarge) {
			t.Errorf("%s: err %v is neither malformed nor a bad signature", name, err)
		}
	}
}

func TestPackEnvelopes(t *testing.T) {
	f := newFixture(t)
	small := make([]*wire.Signed, 70)
	for i := range small {
		small[i] = f.seal(t, uint64(i+1), "hi").Signed
	}
	big := make([]*wire.Signed, 8)
	for i := range big {
		big[i] = f.seal(t, uint64(i+1), strings.Repeat("x", gossip.MaxTextSize)).Signed
	}
	count := func(m *wire.TopicMessage) int {
		if m.GetEnvelope() != nil {
			return 1
		}
		return len(m.GetEnvelopeBatch().GetEnvelopes())
	}
	for _, c := range []struct {
		name   string
		envs   []*wire.Signed
		maxPer int
		want   []int
	}{
		{"none", nil, 64, nil},
		{"one is a plain envelope", small[:1], 64, []int{1}},
		{"up to the count bound", small, 64, []int{64, 6}},
		{"a smaller bound", small[:10], 4, []int{4, 4, 2}},
		{"bound of one: never batched", small[:3], 1, []int{1, 1, 1}},
		{"above MaxBatchEnvelopes", small, 1000, []int{64, 6}},
		{"by size", big, 64, []int{3, 3, 2}},
	} {
		msgs := gossip.PackEnvelopes(c.envs, c.maxPer)
		var got []int
		next := 0
		for _, m := range msgs {
			got = append(got, count(m))
			data, err := gossip.EncodeTopicMessage(m)
			if err != nil {
				t.Fatalf("%s: message does not encode: %v", c.name, err)
			}
			in, err := gossip.DecodeInbound(nil, data)
			if err != nil {
				t.Fatalf("%s: message does not decode: %v", c.name, err)
			}
			envs := in.Envelopes
			if in.Envelope != nil {
				envs = append(envs, in.Envelope)
			}
			for _, e := range envs {
				if !proto.Equal(e.Signed, c.envs[next]) {
					t.Fatalf("%s: envelope %d out of order", c.name, next)
				}
				next++
			}
		}
		if next != len(c.envs) || len(got) != len(c.want) {
			t.Fatalf("%s: packed %v, want %v", c.name, got, c.want)
		}
		for i := range got {
			if got[i] != c.want[i] {
				t.Fatalf("%s: packed %v, want %v", c.name, got, c.want)
			}
		}
	}
}

func TestOpenEnvelopes(t *testing.T) {
	f := newFixture(t)
	other := newFixture(t)
	other.priv, _ = testPeer(t, 9)
	var ss []*wire.Signed
	for seq := uint64(1); seq <= 300; seq++ { // more than one batch of one signer
		ss = append(ss, f.seal(t, seq, "m").Signed)
		if seq%7 == 0 {
			ss = append(ss, other.seal(t, seq, "o").Signed)
		}
	}
	out, errs := gossip.OpenEnvelopes(nil, ss)
	for i := range ss {
		if errs[i] != nil || out[i] == nil || !proto.Equal(out[i].Signed, ss[i]) {
			t.Fatalf("envelope %d: %v", i, errs[i])
		}
	}

	// One forged envelope fails alone; its batch-mates still open.
	bad := proto.Clone(ss[5]).(*wire.Signed)
	bad.Signature[1] ^= 1
	ss[5] = bad
	ss[9] = nil
	out, errs = gossip.OpenEnvelopes(nil, ss)
	for i := range ss {
		failed := i == 5 || i == 9
		if failed != (errs[i] != nil) || failed != (out[i] == nil) {
			t.Fatalf("envelope %d: out %v, err %v", i, out[i] != nil, errs[i])
		}
	}
	if !errors.Is(errs[5], wire.ErrBadSignature) || !errors.Is(errs[9], wire.ErrMalformed) {
		t.Fatalf("errors: %v, %v", errs[5], errs[9])
	}
}
