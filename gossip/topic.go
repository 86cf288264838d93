package gossip

import (
	"context"
	"fmt"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// Inbound is one verified topic message: exactly one field is set. The
// validator builds it once, and the subscriber receives the same value, so
// each message is decoded and verified once.
type Inbound struct {
	Envelope   *Envelope
	Envelopes  []*Envelope // an envelope batch: one sender, in sequence order
	Op         *roster.Op
	KeyRequest *KeyRequest
}

// Policy judges a verified topic message. It runs inline in the validator,
// so it must be cheap and must not block: it may hold a message for later
// (returning ValidationIgnore after keeping it) but never wait.
type Policy func(from peer.ID, in *Inbound) pubsub.ValidationResult

// Topic is a joined group topic with its subscription.
type Topic struct {
	ps   *pubsub.PubSub
	name string
	t    *pubsub.Topic
	sub  *pubsub.Subscription
}

// SubscriptionBuffer is how many delivered messages wait for the reader
// before GossipSub drops ("subscriber too slow"). The node reads promptly;
// the margin absorbs bursts.
const SubscriptionBuffer = 4096

// JoinTopic joins group's topic on ps with a validator that decodes and
// verifies every message, then asks policy.
func JoinTopic(ps *pubsub.PubSub, group [32]byte, v *wire.Verifier, policy Policy) (*Topic, error) {
	name := TopicName(group)
	validate := func(ctx context.Context, from peer.ID, m *pubsub.Message) pubsub.ValidationResult {
		if _, ok := m.ValidatorData.(localPublish); ok {
			// Our own message, built and signed by us a moment ago: checking
			// our own signature again would double the cost of every send.
			// Only a local Publish can set ValidatorData.
			return pubsub.ValidationAccept
		}
		in, err := DecodeInbound(v, m.Data)
		if err != nil {
			return pubsub.ValidationReject
		}
		res := policy(from, in)
		if res == pubsub.ValidationAccept {
			m.ValidatorData = in
		}
		return res
	}
	if err := ps.RegisterTopicValidator(name, validate, pubsub.WithValidatorInline(true)); err != nil {
		return nil, fmt.Errorf("register validator: %w", err)
	}
	t, err := ps.Join(name, pubsub.WithTopicMessageIdFn(func(m *pb.Message) string { return MessageID(m.Data) }))
	if err != nil {
		_ = ps.UnregisterTopicValidator(name)
		return nil, fmt.Errorf("join topic: %w", err)
	}
	sub, err := t.Subscribe(pubsub.WithBufferSize(SubscriptionBuffer))
	if err != nil {
		_ = t.Close()
		_ = ps.UnregisterTopicValidator(name)
		return nil, fmt.Errorf("subscribe: %w", err)
	}
	return &Topic{ps: ps, name: name, t: t, sub: sub}, nil
}

// DecodeInbound decodes a topic message and verifies it with v (nil: a
// Verifier that remembers nothing).
func DecodeInbound(v *wire.Verifier, data []byte) (*Inbound, error) {
	m, err := DecodeTopicMessage(data)
	if err != nil {
		return nil, err
	}
	var in Inbound
	switch p := m.Payload.(type) {
	case *wire.TopicMessage_Envelope:
		in.Envelope, err = OpenEnvelope(v, p.Envelope)
	case *wire.TopicMessage_EnvelopeBatch:
		in.Envelopes, err = OpenEnvelopeBatch(v, p.EnvelopeBatch)
	case *wire.TopicMessage_RosterOp:
		in.Op, err = roster.Decode(v, p.RosterOp)
	case *wire.TopicMessage_KeyRequest:
		in.KeyRequest, err = OpenKeyRequest(v, p.KeyRequest)
	default:
		err = fmt.Errorf("%w: unknown payload", ErrMalformed)
	}
	if err != nil {
		return nil, err
	}
	return &in, nil
}

// localPublish marks a message this node publishes itself.
type localPublish struct{}

// Publish sends a topic message this node built and signed. It is not
// verified again locally; size is checked before it can reach GossipSub.
func (t *Topic) Publish(ctx context.Context, m *wire.TopicMessage) error {
	b, err := EncodeTopicMessage(m)
	if err != nil {
		return err
	}
	return t.t.Publish(ctx, b, pubsub.WithValidatorData(localPublish{}))
}

// Next returns the next accepted message and the peer it came from. Messages
// we published ourselves are skipped: the publisher handles them directly.
func (t *Topic) Next(ctx context.Context, self peer.ID) (*Inbound, peer.ID, error) {
	for {
		m, err := t.sub.Next(ctx)
		if err != nil {
			return nil, "", err
		}
		if m.ReceivedFrom == self {
			continue
		}
		in, ok := m.ValidatorData.(*Inbound)
		if !ok {
			// Only a message our validator accepted carries its parse; one
			// without (pubsub delivered it unvalidated) is skipped, not
			// taken as the end of the subscription.
			continue
		}
		return in, m.ReceivedFrom, nil
	}
}

// batchOverhead is room left in a topic message for the batch framing:
// a few bytes per envelope, generously rounded.
const batchOverhead = 1 << 10

// PackEnvelopes groups a sender's signed envelopes, in order, into as few
// topic messages as fit: at most maxPer envelopes (and MaxBatchEnvelopes)
// and MaxTopicMessageSize bytes each. A group of one is sent as a plain
// envelope, so a sender that is not bursting sends what it always did.
func PackEnvelopes(envs []*wire.Signed, maxPer int) []*wire.TopicMessage {
	maxPer = max(1, min(maxPer, MaxBatchEnvelopes))
	var out []*wire.TopicMessage
	flush := func(group []*wire.Signed) {
		switch len(group) {
		case 0:
		case 1:
			out = append(out, &wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: group[0]}})
		default:
			out = append(out, &wire.TopicMessage{Payload: &wire.TopicMessage_EnvelopeBatch{
				EnvelopeBatch: &wire.EnvelopeBatch{Envelopes: group}}})
		}
	}
	var group []*wire.Signed
	size := 0
	for _, e := range envs {
		n := proto.Size(e) + 8
		if len(group) > 0 && (len(group) == maxPer || size+n > MaxTopicMessageSize-batchOverhead) {
			flush(group)
			group, size = nil, 0
		}
		group = append(group, e)
		size += n
	}
	flush(group)
	return out
}

// Peers lists the peers known to be subscribed to the topic.
func (t *Topic) Peers() []peer.ID { return t.t.ListPeers() }

// EventHandler reports peers joining and leaving the topic.
func (t *Topic) EventHandler() (*pubsub.TopicEventHandler, error) { return t.t.EventHandler() }

// Close cancels the subscription, leaves the topic and removes the validator.
func (t *Topic) Close() error {
	t.sub.Cancel()
	err := t.t.Close()
	_ = t.ps.UnregisterTopicValidator(t.name)
	return err
}

// PubSubOptions are the options the node uses when it creates its own
// GossipSub router: no pubsub signature (each message carries ours, so one
// signature and one verification per message), message IDs over the signed
// content so that re-encoded copies are duplicates (MessageID), a message
// size bound matching ours, flood publishing so a message reaches every
// connected member even before the mesh forms, and queues sized so bursts
// are not dropped.
func PubSubOptions() []pubsub.Option {
	return []pubsub.Option{
		pubsub.WithMessageSignaturePolicy(pubsub.StrictNoSign),
		pubsub.WithNoAuthor(),
		pubsub.WithMessageIdFn(func(m *pb.Message) string { return MessageID(m.Data) }),
		pubsub.WithMaxMessageSize(MaxTopicMessageSize + 4<<10),
		pubsub.WithFloodPublish(true),
		pubsub.WithPeerExchange(false),
		pubsub.WithValidateQueueSize(4096),
		pubsub.WithPeerOutboundQueueSize(4096),
	}
}
