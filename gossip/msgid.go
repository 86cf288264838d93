package gossip

import (
	"crypto/sha256"
	"encoding/binary"
	"hash"

	"google.golang.org/protobuf/encoding/protowire"
)

// Message IDs.
//
// GossipSub marks a message ID seen before our validator runs, so the ID
// decides what is a duplicate. A hash of the raw topic message would let
// anyone who re-encodes a captured message (an unknown field added to the
// TopicMessage or to the Signed, fields in another order, a wrapper repeated
// so the decoder merges it) mint a fresh ID for the same signed content, and
// replay a key request or an envelope as often as they like. So the ID is a
// hash of what the validator will act on: the payload's slot and the signer,
// kind, body and signature of each Signed, as the protobuf decoder yields
// them. Every byte string that decodes to the same content gets the same ID,
// and different content gets different IDs.
//
// Nobody but the signer can make another valid form of a signed content
// either. Ed25519 signatures are not malleable under the verification every
// node uses (wire, FIPS 186-5): S must be canonical (S < L), so
// S+L is refused; R and A must be canonical encodings; and R's bytes are
// hashed into the challenge, so changing R, even by a torsion point the
// cofactored equation would absorb, breaks the signature. The author rule
// ties the signer to a field inside the signed body. One signed content
// therefore has one ID. (A signer can sign its own body again with another
// R; that is no more than sending a new message, and key requests are
// answered once per nonce whatever their signature: node/answered.go.)
//
// The ID is computed before validation, for every received message, so it
// reads the protobuf encoding directly: no signature check, no copies, the
// fields sliced out of the message bytes. It follows the Go protobuf
// decoder's rules exactly (last value wins, a repeated message field
// merges, a known field with the wrong wire type is an unknown field, the
// last oneof case wins): an input this parser read differently from
// proto.Unmarshal could give a rejected message the ID of a valid one, and
// GossipSub would then drop the valid one as seen. msgid_test.go checks the
// two against each other. Input that does not decode, is larger than
// MaxTopicMessageSize, has no payload or carries more than
// MaxBatchEnvelopes envelopes is refused by the validator whatever its
// encoding; it is hashed raw under its own domain, so it never shares an ID
// with a message that decodes, and a flood of tiny batch entries costs one
// hash pass, not one hash each.
//
// Our own signature authenticates the content, so the node's pubsub need
// not sign (StrictNoSign) and From+Seqno IDs do not exist.

const (
	msgIDDomain    = "p2pchat/v1/msg-id\x00"
	rawMsgIDDomain = "p2pchat/v1/msg-id-raw\x00"
)

// TopicMessage payload field numbers: the slot byte of the canonical form.
const (
	slotEnvelope      = 1
	slotRosterOp      = 2
	slotKeyRequest    = 3
	slotEnvelopeBatch = 4
)

// MessageID is the GossipSub message ID of a topic message (docs/protocol.md
// §3): a domain-separated SHA-256 of its canonical signed content, so every
// re-encoding of one signed payload has one ID. Data that does not decode
// is hashed raw, under another domain.
func MessageID(data []byte) string {
	var t topicView
	h := &idHasher{h: sha256.New()}
	if len(data) > MaxTopicMessageSize || !t.parse(data) || t.n > MaxBatchEnvelopes {
		h.h.Write(append(h.buf[:0], rawMsgIDDomain...))
		h.h.Write(data)
		return string(h.h.Sum(h.buf[:0]))
	}
	if t.slot != slotEnvelopeBatch {
		return string(h.sum(&t.one, t.slot))
	}
	// A batch: the hash of its envelopes' IDs, in order, each the ID the
	// envelope would have alone.
	ids := make([]byte, 0, len(msgIDDomain)+1+t.n*sha256.Size)
	ids = append(append(ids, msgIDDomain...), slotEnvelopeBatch)
	for i := range t.n {
		ids = append(ids, h.sum(&t.batch[i], slotEnvelope)...)
	}
	h.h.Reset()
	h.h.Write(ids)
	return string(h.h.Sum(h.buf[:0]))
}

// idHasher is a hash with room for the fixed-size parts it is fed: one
// allocation for both, since whatever goes through the hash.Hash interface
// escapes.
type idHasher struct {
	h   hash.Hash
	buf [len(msgIDDomain) + 1 + 4 + sha256.Size]byte
}

// sum returns the canonical digest of s in slot:
// SHA-256(domain || u8(slot) || u32be(len(signer)) || signer || u32be(kind)
// || u32be(len(body)) || body || signature). It stays valid until the next
// call.
func (h *idHasher) sum(s *signedView, slot byte) []byte {
	h.h.Reset()
	b := append(h.buf[:0], msgIDDomain...)
	b = append(b, slot)
	h.h.Write(binary.BigEndian.AppendUint32(b, uint32(len(s.signer))))
	h.h.Write(s.signer)
	b = binary.BigEndian.AppendUint32(h.buf[:0], s.kind)
	h.h.Write(binary.BigEndian.AppendUint32(b, uint32(len(s.body))))
	h.h.Write(s.body)
	h.h.Write(s.signature)
	return h.h.Sum(h.buf[:0])
}

// signedView is a Signed as the decoder would yield it; the byte fields
// alias the message.
type signedView struct {
	kind                    uint32
	body, signature, signer []byte
}

// merge decodes a Signed from b into s as proto.Unmarshal merges: each
// field's last occurrence wins, the enum keeps its low 32 bits, and a field
// of an unexpected wire type is skipped as unknown.
func (s *signedView) merge(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return false
			}
			s.kind, n = uint32(v), m
		case num >= 2 && num <= 4 && typ == protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return false
			}
			switch num {
			case 2:
				s.body = v
			case 3:
				s.signature = v
			case 4:
				s.signer = v
			}
			n = m
		default:
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return false
			}
		}
		b = b[n:]
	}
	return true
}

// topicView is a TopicMessage as the decoder would yield it.
type topicView struct {
	slot  byte // the oneof case set last; 0 for none
	one   signedView
	batch [MaxBatchEnvelopes]signedView
	n     int // envelopes in the batch, counted past MaxBatchEnvelopes
}

// parse decodes data as proto.Unmarshal decodes a TopicMessage and reports
// whether it succeeds with a payload set. A payload field repeated while its
// case is set merges into it; one of another case starts afresh.
func (t *topicView) parse(data []byte) bool {
	for b := data; len(b) > 0; {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num < slotEnvelope || num > slotEnvelopeBatch || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return false
		}
		if slot := byte(num); slot != t.slot {
			t.slot, t.one, t.n = slot, signedView{}, 0
		}
		if num == slotEnvelopeBatch {
			if !t.mergeBatch(v) {
				return false
			}
		} else if !t.one.merge(v) {
			return false
		}
		b = b[m:]
	}
	return t.slot != 0
}

// mergeBatch appends the envelopes of an EnvelopeBatch encoded in b. Past
// MaxBatchEnvelopes they are only checked and counted.
func (t *topicView) mergeBatch(b []byte) bool {
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num != 1 || typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return false
			}
			b = b[n:]
			continue
		}
		v, m := protowire.ConsumeBytes(b)
		if m < 0 {
			return false
		}
		var s signedView
		if !s.merge(v) {
			return false
		}
		if t.n < len(t.batch) {
			t.batch[t.n] = s
		}
		t.n++
		b = b[m:]
	}
	return true
}

// consumeTag reads a field tag as the Go protobuf decoder does: a field
// number outside 1..2^29-1 is an error, and so is an end-group tag, since
// none of our messages is a group.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	v, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return 0, 0, -1
	}
	num, typ := v>>3, protowire.Type(v&7)
	if num < uint64(protowire.MinValidNumber) || num > uint64(protowire.MaxValidNumber) || typ == protowire.EndGroupType {
		return 0, 0, -1
	}
	return protowire.Number(num), typ, n
}
