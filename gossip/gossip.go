// Package gossip is p2pchat's wire layer on libp2p: the group topic and its
// validator, signed envelopes, and the direct-stream protocols for key
// transfer and roster fetch.
//
// It knows bytes and libp2p, not policy: who is a member, which key to use and
// whether to answer a peer are decided by the caller (node/) through
// callbacks. It must never accept a frame larger than its bound, never hand a
// caller a signed message whose signature it has not verified, and never keep
// a goroutine running after Close.
package gossip

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/protocol"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/wire"
)

// Protocol IDs of the direct streams.
const (
	KeyProtocol    protocol.ID = "/p2pchat/key/1.0.0"
	RosterProtocol protocol.ID = "/p2pchat/roster/1.0.0"
	SyncProtocol   protocol.ID = "/p2pchat/sync/1.0.0"
)

// Size bounds. Every length read from the network is checked against one.
const (
	// MaxTextSize bounds a message's text.
	MaxTextSize = 16 << 10
	// MaxCiphertextSize bounds an envelope's ciphertext: the text, the
	// content's other fields and the AEAD tag, with room to spare.
	MaxCiphertextSize = MaxTextSize + 1024
	// MaxEnvelopeBody bounds a whole envelope body: the ciphertext plus the
	// fields around it (64 roster heads at most), whatever path it came by.
	MaxEnvelopeBody = MaxCiphertextSize + 4096
	// MaxTopicMessageSize bounds one message on a group topic; the node's
	// pubsub uses it as its max message size too.
	MaxTopicMessageSize = 64 << 10
	// MaxKeyFrame bounds a key transfer or its answer.
	MaxKeyFrame = 512 << 10
	// MaxRosterFrame bounds a roster fetch answer.
	MaxRosterFrame = 8 << 20
	// MaxSyncRequestFrame bounds a history request (its summary of held
	// sequence numbers). Key transfers and roster requests are bounded by
	// MaxKeyFrame.
	MaxSyncRequestFrame = 1 << 20
	// MaxSyncFrame bounds a history answer; responders fill it up to
	// SyncBatchBytes so it never overflows.
	MaxSyncFrame = 8 << 20
	// SyncBatchBytes is how many envelope bytes a responder puts in one answer.
	SyncBatchBytes = 4 << 20
	// SyncBatchEnvelopes is the most envelopes in one answer.
	SyncBatchEnvelopes = 2048
	// MaxRosterHeads bounds the heads an envelope may name.
	MaxRosterHeads = 64
	// MaxBatchEnvelopes bounds the envelopes one topic message carries.
	MaxBatchEnvelopes = 64
)

var (
	// ErrTooLarge means a frame or message over its bound.
	ErrTooLarge = errors.New("message too large")
	// ErrMalformed means bytes that do not decode to a valid message.
	ErrMalformed = wire.ErrMalformed
)

// TopicName is the opaque GossipSub topic of a group: a hash of its ID, so the
// topic reveals neither the group's name nor its ID.
func TopicName(group [32]byte) string {
	h := sha256.Sum256(append([]byte("p2pchat/v1/topic\x00"), group[:]...))
	return "/p2pchat/1/" + hex.EncodeToString(h[:])
}

// DecodeTopicMessage decodes a group topic message, bounded in size. It does
// not verify signatures: the payload's Signed is verified by its own decoder.
func DecodeTopicMessage(data []byte) (*wire.TopicMessage, error) {
	if len(data) > MaxTopicMessageSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(data))
	}
	var m wire.TopicMessage
	if err := proto.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if m.Payload == nil {
		return nil, fmt.Errorf("%w: empty topic message", ErrMalformed)
	}
	return &m, nil
}

// EncodeTopicMessage serializes m and checks the size bound before it can
// reach GossipSub, which would drop an oversized message silently.
func EncodeTopicMessage(m *wire.TopicMessage) ([]byte, error) {
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxTopicMessageSize {
		return nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(b))
	}
	return b, nil
}
