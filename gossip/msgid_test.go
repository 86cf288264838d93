package gossip_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/wire"
)

// ---- message IDs ----

// oracleID is MessageID the slow, obvious way (docs/protocol.md §3): decode
// with proto.Unmarshal, then hash the decoded fields.
func oracleID(data []byte) string {
	raw := func() string {
		h := sha256.Sum256(append([]byte("p2pchat/v1/msg-id-raw\x00"), data...))
		return string(h[:])
	}
	one := func(slot byte, s *wire.Signed) []byte {
		b := append([]byte("p2pchat/v1/msg-id\x00"), slot)
		b = binary.BigEndian.AppendUint32(b, uint32(len(s.GetSigner())))
		b = append(b, s.GetSigner()...)
		b = binary.BigEndian.AppendUint32(b, uint32(s.GetKind()))
		b = binary.BigEndian.AppendUint32(b, uint32(len(s.GetBody())))
		b = append(b, s.GetBody()...)
		b = append(b, s.GetSignature()...)
		h := sha256.Sum256(b)
		return h[:]
	}
	var m wire.TopicMessage
	if len(data) > gossip.MaxTopicMessageSize || proto.Unmarshal(data, &m) != nil {
		return raw()
	}
	switch p := m.Payload.(type) {
	case *wire.TopicMessage_Envelope:
		return string(one(1, p.Envelope))
	case *wire.TopicMessage_RosterOp:
		return string(one(2, p.RosterOp))
	case *wire.TopicMessage_KeyRequest:
		return string(one(3, p.KeyRequest))
	case *wire.TopicMessage_EnvelopeBatch:
		envs := p.EnvelopeBatch.GetEnvelopes()
		if len(envs) > gossip.MaxBatchEnvelopes {
			return raw()
		}
		b := append([]byte("p2pchat/v1/msg-id\x00"), 4)
		for _, e := range envs {
			b = append(b, one(1, e)...)
		}
		h := sha256.Sum256(b)
		return string(h[:])
	}
	return raw()
}

// field encodes one length-delimited field.
func field(num protowire.Number, v []byte) []byte {
	return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
}

// varintField encodes one varint field.
func varintField(num protowire.Number, v uint64) []byte {
	return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// reencodings returns encodings of the topic message that carries s in
// slot: each decodes to the same payload, none is byte-identical to another.
func reencodings(t testing.TB, slot protowire.Number, s *wire.Signed) map[string][]byte {
	t.Helper()
	sb := marshal(t, s)
	kind := varintField(1, uint64(s.Kind))
	body, sig, signer := field(2, s.Body), field(3, s.Signature), field(4, s.Signer)
	unknown := cat(varintField(99, 7), field(1000, []byte("x")))
	return map[string][]byte{
		"canonical":                         field(slot, sb),
		"unknown field in TopicMessage":     cat(field(slot, sb), varintField(15, 1)),
		"unknown field before the payload":  cat(field(77, []byte("pad")), field(slot, sb)),
		"unknown fields in Signed":          field(slot, cat(sb, unknown)),
		"Signed fields in reverse order":    field(slot, cat(signer, sig, body, kind)),
		"Signed split over two wrappers":    cat(field(slot, cat(kind, body)), field(slot, cat(sig, signer))),
		"a field overwritten":               field(slot, cat(field(2, []byte("stale")), kind, body, sig, signer)),
		"payload of another slot replaced":  cat(field(slot%3+1, sb), field(slot, sb)),
		"known field with wrong wire type":  field(slot, cat(sb, varintField(2, 5))),
		"overlong tag":                      cat([]byte{byte(slot<<3|2) | 0x80, 0x00}, protowire.AppendBytes(nil, sb)),
		"overlong kind":                     field(slot, cat([]byte{0x08, byte(s.Kind) | 0x80, 0x80, 0x00}, body, sig, signer)),
		"kind with high bits past 32":       field(slot, cat(varintField(1, uint64(s.Kind)|1<<40), body, sig, signer)),
		"unknown group in Signed":           field(slot, cat(sb, protowire.AppendTag(nil, 50, protowire.StartGroupType), varintField(1, 1), protowire.AppendTag(nil, 50, protowire.EndGroupType))),
		"unknown fixed32 and fixed64":       cat(protowire.AppendFixed32(protowire.AppendTag(nil, 20, protowire.Fixed32Type), 1), protowire.AppendFixed64(protowire.AppendTag(nil, 21, protowire.Fixed64Type), 2), field(slot, sb)),
		"repeated wrapper, same content":    cat(field(slot, sb), field(slot, sb)),
		"TopicMessage and Signed re-wraped": cat(varintField(1000, 3), field(slot, cat(unknown, sb, unknown))),
	}
}

func TestMessageIDReencodings(t *testing.T) {
	f := newFixture(t)
	req, err := gossip.NewKeyRequest(detRand(1), f.priv, f.group, f.key.ID(), 0, 42)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		slot protowire.Number
		s    *wire.Signed
	}{
		{"envelope", 1, f.seal(t, 1, "hello").Signed},
		{"roster op", 2, f.create.Signed},
		{"key request", 3, req.Signed},
	} {
		t.Run(c.name, func(t *testing.T) {
			encs := reencodings(t, c.slot, c.s)
			want := gossip.MessageID(encs["canonical"])
			seen := make(map[string]string)
			for name, data := range encs {
				if other, ok := seen[string(data)]; ok {
					t.Fatalf("%q and %q are the same bytes", name, other)
				}
				seen[string(data)] = name
				// Each is a message the validator accepts as the same payload.
				in, err := gossip.DecodeInbound(nil, data)
				if err != nil {
					t.Fatalf("%s: does not decode: %v", name, err)
				}
				if got := signedOf(in); !proto.Equal(stripUnknown(got), stripUnknown(c.s)) {
					t.Fatalf("%s: decodes to another payload", name)
				}
				if got := gossip.MessageID(data); got != want {
					t.Errorf("%s: ID %x, want %x", name, got, want)
				}
			}
		})
	}
}

func signedOf(in *gossip.Inbound) *wire.Signed {
	switch {
	case in.Envelope != nil:
		return in.Envelope.Signed
	case in.Op != nil:
		return in.Op.Signed
	case in.KeyRequest != nil:
		return in.KeyRequest.Signed
	}
	return nil
}

func stripUnknown(s *wire.Signed) *wire.Signed {
	c := proto.Clone(s).(*wire.Signed)
	c.ProtoReflect().SetUnknown(nil)
	return c
}

func TestMessageIDDistinct(t *testing.T) {
	f := newFixture(t)
	r1, err := gossip.NewKeyRequest(detRand(1), f.priv, f.group, f.key.ID(), 0, 42)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := gossip.NewKeyRequest(detRand(2), f.priv, f.group, f.key.ID(), 0, 42) // another nonce
	if err != nil {
		t.Fatal(err)
	}
	e1, e2, e3 := f.seal(t, 1, "one"), f.seal(t, 2, "two"), f.seal(t, 3, "three")
	forged := proto.Clone(r1.Signed).(*wire.Signed)
	forged.Signature[0] ^= 1
	otherKind := proto.Clone(r1.Signed).(*wire.Signed)
	otherKind.Kind = wire.Kind_KIND_ENVELOPE
	moved := proto.Clone(r1.Signed).(*wire.Signed) // a byte moved from body to signature
	moved.Signature = append([]byte{moved.Body[len(moved.Body)-1]}, moved.Signature...)
	moved.Body = moved.Body[:len(moved.Body)-1]

	ids := map[string][]byte{
		"request":                    field(3, marshal(t, r1.Signed)),
		"request, another nonce":     field(3, marshal(t, r2.Signed)),
		"request, forged signature":  field(3, marshal(t, forged)),
		"request, another kind":      field(3, marshal(t, otherKind)),
		"request, body byte moved":   field(3, marshal(t, moved)),
		"request in envelope slot":   field(1, marshal(t, r1.Signed)),
		"envelope 1":                 field(1, marshal(t, e1.Signed)),
		"envelope 2":                 field(1, marshal(t, e2.Signed)),
		"batch 1,2":                  encodeTopic(t, batchMessage(e1, e2)),
		"batch 2,1":                  encodeTopic(t, batchMessage(e2, e1)),
		"batch 1,2,3":                encodeTopic(t, batchMessage(e1, e2, e3)),
		"batch 1":                    field(4, field(1, marshal(t, e1.Signed))),
		"empty batch":                field(4, nil),
		"empty envelope":             field(1, nil),
		"does not decode":            []byte{0x0a, 0x05, 0x00},
		"raw bytes of the request":   marshal(t, r1.Signed), // a Signed, not a TopicMessage
		"no payload":                 varintField(9, 1),
		"oversized, valid otherwise": cat(field(3, marshal(t, r1.Signed)), field(99, make([]byte, gossip.MaxTopicMessageSize))),
	}
	byID := make(map[string]string)
	for name, data := range ids {
		id := gossip.MessageID(data)
		if len(id) != 32 {
			t.Fatalf("%s: ID of %d bytes", name, len(id))
		}
		if other, ok := byID[id]; ok {
			t.Errorf("%q and %q share an ID", name, other)
		}
		byID[id] = name
	}
	// A batch's envelopes keep their order in its ID, and so do
	// re-encodings of a batch: a batch field repeated appends envelopes.
	split := cat(field(4, field(1, marshal(t, e1.Signed))), field(4, field(1, marshal(t, e2.Signed))))
	if gossip.MessageID(split) != gossip.MessageID(ids["batch 1,2"]) {
		t.Error("a batch split over two wrappers has another ID")
	}
	// Data that does not decode is hashed raw under its own domain.
	bad := ids["does not decode"]
	raw := sha256.Sum256(append([]byte("p2pchat/v1/msg-id-raw\x00"), bad...))
	if gossip.MessageID(bad) != string(raw[:]) {
		t.Error("undecodable data: not the raw-domain hash")
	}
}

// TestMessageIDGolden pins the formula (docs/protocol.md §3) with vectors
// re-checked by an independent Python computation.
func TestMessageIDGolden(t *testing.T) {
	signer, _ := hex.DecodeString("00240801122003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
	sig := make([]byte, 64)
	for i := range sig {
		sig[i] = byte(i)
	}
	s := &wire.Signed{Kind: wire.Kind_KIND_KEY_REQUEST, Body: []byte{1, 2, 3}, Signature: sig, Signer: signer}
	e := &wire.Signed{Kind: wire.Kind_KIND_ENVELOPE, Body: []byte{4, 5}, Signature: sig, Signer: signer}
	e2 := &wire.Signed{Kind: wire.Kind_KIND_ENVELOPE, Body: []byte{6}, Signature: sig, Signer: signer}
	for _, c := range []struct {
		name string
		data []byte
		want string
	}{
		{"key request", field(3, marshal(t, s)), "40a1b3288a1c52a8f65a0a1629bc35a0b5f7778f79652fb6cb4cb54daefa470d"},
		{"envelope", field(1, marshal(t, e)), "1ffb1c007f0df6238b17131a9f0b0138b67dee163d499382205f49e84d748867"},
		{"batch", field(4, cat(field(1, marshal(t, e)), field(1, marshal(t, e2)))), "2279a802835950910e13a537f539dbc1c3ab6d0c557a77397d6732a3c89518d8"},
		{"raw", []byte{0xff}, "a94d3b06f9fad943c354b88ae3f36f7717b9326dbd5623f6da9acf38b217c83c"},
	} {
		if got := hex.EncodeToString([]byte(gossip.MessageID(c.data))); got != c.want {
			t.Errorf("%s: ID %s, want %s", c.name, got, c.want)
		}
	}
}

// TestMessageIDMatchesOracle compares MessageID with oracleID on random
// encodings built to hit the decoder's corners: fields repeated, merged and
// overwritten, wrong wire types, unknown fields and groups, oneof cases
// switched, truncations and stray bytes.
func TestMessageIDMatchesOracle(t *testing.T) {
	seed := uint64(rand.Int64())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	f := newFixture(t)
	base := [][]byte{
		field(1, marshal(t, f.seal(t, 1, "x").Signed)),
		encodeTopic(t, batchMessage(f.seal(t, 2, "a"), f.seal(t, 3, "b"))),
	}
	n := 20000
	if testing.Short() {
		n = 2000
	}
	for i := range n {
		var data []byte
		switch i % 3 {
		case 0:
			data = randMessage(r, 0)
		case 1:
			data = mutate(r, bytes.Clone(base[r.IntN(len(base))]))
		default:
			data = cat(randMessage(r, 0), base[r.IntN(len(base))], randMessage(r, 0))
		}
		if got, want := gossip.MessageID(data), oracleID(data); got != want {
			t.Fatalf("seed %d case %d: MessageID differs from the oracle on %x", seed, i, data)
		}
	}
}

// randMessage builds a random protobuf-like message whose field numbers
// and wire types are those of TopicMessage, EnvelopeBatch and Signed, give
// or take.
func randMessage(r *rand.Rand, depth int) []byte {
	var b []byte
	for range r.IntN(6) {
		num := protowire.Number([]int{1, 2, 3, 4, 5, 1, 2, 3, 4, 17, 1 << 20}[r.IntN(11)])
		switch r.IntN(10) {
		case 0:
			b = append(b, varintField(num, r.Uint64()>>r.IntN(64))...)
		case 1:
			b = protowire.AppendFixed32(protowire.AppendTag(b, num, protowire.Fixed32Type), r.Uint32())
		case 2:
			b = protowire.AppendFixed64(protowire.AppendTag(b, num, protowire.Fixed64Type), r.Uint64())
		case 3:
			b = protowire.AppendTag(b, num, protowire.StartGroupType)
			if depth < 3 {
				b = append(b, randMessage(r, depth+1)...)
			}
			if r.IntN(8) > 0 {
				b = protowire.AppendTag(b, num, protowire.EndGroupType)
			}
		case 4:
			b = append(b, byte(r.IntN(256))) // a stray byte
		case 5, 6:
			v := make([]byte, r.IntN(8))
			for i := range v {
				v[i] = byte(r.IntN(256))
			}
			b = append(b, field(num, v)...)
		default:
			if depth < 3 {
				b = append(b, field(num, randMessage(r, depth+1))...)
			} else {
				b = append(b, field(num, nil)...)
			}
		}
	}
	return b
}

func mutate(r *rand.Rand, b []byte) []byte {
	for range 1 + r.IntN(3) {
		if len(b) == 0 {
			return b
		}
		i := r.IntN(len(b))
		switch r.IntN(4) {
		case 0:
			b[i] ^= byte(1 << r.IntN(8))
		case 1:
			b = b[:i]
		case 2:
			b = append(b[:i], append(randMessage(r, 2), b[i:]...)...)
		default:
			b[i] = byte(r.IntN(256))
		}
	}
	return b
}

// FuzzMessageID checks MessageID against the oracle on any input.
func FuzzMessageID(f *testing.F) {
	fx := newFixture(f)
	f.Add(field(1, marshal(f, fx.seal(f, 1, "x").Signed)))
	f.Add(encodeTopic(f, batchMessage(fx.seal(f, 2, "a"), fx.seal(f, 3, "b"))))
	f.Add(field(3, cat(varintField(1, 4), field(2, []byte{1}), varintField(2, 1))))
	f.Add([]byte{0x0a, 0x00, 0x22, 0x00, 0x0a, 0x02, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		if gossip.MessageID(data) != oracleID(data) {
			t.Fatalf("MessageID differs from the oracle on %x", data)
		}
	})
}

var idSink string

func BenchmarkMessageID(b *testing.B) {
	f := newFixture(b)
	for _, c := range []struct {
		name string
		data []byte
	}{
		{"envelope", field(1, marshal(b, f.seal(b, 1, string(bytes.Repeat([]byte("x"), 200))).Signed))},
		{"batch-64", encodeTopic(b, batchMessage(func() []*gossip.Envelope {
			var envs []*gossip.Envelope
			for i := range 64 {
				envs = append(envs, f.seal(b, uint64(i+1), "burst"))
			}
			return envs
		}()...))},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.data)))
			b.ReportAllocs()
			for b.Loop() {
				idSink = gossip.MessageID(c.data)
			}
		})
		b.Run(c.name+"-hash-of-bytes", func(b *testing.B) { // the ID before canonical content
			b.SetBytes(int64(len(c.data)))
			b.ReportAllocs()
			for b.Loop() {
				h := sha256.Sum256(c.data)
				idSink = string(h[:])
			}
		})
	}
}
