package node

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
)

// Status is what a node knows of a message's content.
type Status int

const (
	// StatusOK means the message is decrypted and verified.
	StatusOK Status = iota + 1
	// StatusWaitingForKey means the message is held until its key arrives.
	StatusWaitingForKey
)

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusWaitingForKey:
		return "waiting_for_key"
	}
	return "unknown"
}

// Message is one chat message as a member sees it.
type Message struct {
	Group  roster.GroupID
	Sender peer.ID
	Seq    uint64
	KeyID  keyring.ID
	Status Status
	// Text and SentAt are set when Status is StatusOK. SentAt is the
	// sender's clock, authenticated but not trusted for ordering.
	Text       string
	SentAt     time.Time
	ReceivedAt time.Time
}

// ID names a message uniquely within its group: sender and sequence number.
func (m *Message) ID() string { return m.Sender.String() + "/" + strconv.FormatUint(m.Seq, 10) }

// EventKind says what an Event reports.
type EventKind int

const (
	// EventMessage: a new message, decrypted or waiting for its key.
	EventMessage EventKind = iota + 1
	// EventMessageDecrypted: a message that was waiting is now readable.
	EventMessageDecrypted
	// EventRoster: the group's membership changed.
	EventRoster
	// EventKeyRotated: the key this node sends with changed.
	EventKeyRotated
	// EventGroupJoined: this node joined or created a group.
	EventGroupJoined
	// EventGroupLeft: this node left the group or was removed from it.
	EventGroupLeft
)

func (k EventKind) String() string {
	switch k {
	case EventMessage:
		return "message"
	case EventMessageDecrypted:
		return "message_decrypted"
	case EventRoster:
		return "roster"
	case EventKeyRotated:
		return "key_rotated"
	case EventGroupJoined:
		return "group_joined"
	case EventGroupLeft:
		return "group_left"
	}
	return "unknown"
}

// Event is one thing that happened on a node. Seq increases by one per
// event on a node, so a subscriber can tell whether it missed any.
type Event struct {
	Seq     uint64
	Time    time.Time // when the node emitted the event
	Kind    EventKind
	Group   roster.GroupID
	Message *Message        // EventMessage, EventMessageDecrypted
	Members []roster.Member // EventRoster: the new membership
	Added   []peer.ID       // EventRoster
	Removed []peer.ID       // EventRoster
	KeyID   keyring.ID      // EventKeyRotated: the new sending key
}

// maxQueuedEvents bounds a subscriber's backlog. Past it the oldest events
// are dropped; the gap in Event.Seq tells the subscriber.
const maxQueuedEvents = 1 << 16

// Subscription delivers a node's events in order. Close it when done.
type Subscription struct {
	c      chan Event
	hub    *hub
	mu     sync.Mutex
	queue  []Event
	wake   chan struct{}
	done   chan struct{}
	closed bool
	wg     sync.WaitGroup
}

// C returns the channel of events. It is closed when the subscription or
// the node closes.
func (s *Subscription) C() <-chan Event { return s.c }

// Close ends the subscription and stops its goroutine.
func (s *Subscription) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.hub.remove(s)
	s.wg.Wait()
}

func (s *Subscription) push(e Event) {
	s.mu.Lock()
	if !s.closed && len(s.queue) == 0 {
		// Nothing queued (so nothing in flight in pump): hand the event
		// over directly when the channel has room, saving pump a wake-up
		// per event. Close marks closed before pump can close s.c.
		select {
		case s.c <- e:
			s.mu.Unlock()
			return
		default:
		}
	}
	if !s.closed {
		if len(s.queue) >= maxQueuedEvents {
			s.queue = s.queue[1:]
		}
		s.queue = append(s.queue, e)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// pump moves queued events to the channel, so a slow subscriber never
// blocks the node.
func (s *Subscription) pump() {
	defer s.wg.Done()
	defer close(s.c)
	for {
		s.mu.Lock()
		var next Event
		have := len(s.queue) > 0
		if have {
			next = s.queue[0]
		}
		s.mu.Unlock()
		if !have {
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		select {
		case s.c <- next:
			s.mu.Lock()
			s.queue = s.queue[1:]
			s.mu.Unlock()
		case <-s.done:
			return
		}
	}
}

// maxEarlyEvents bounds the events kept for a first subscriber that has not
// come yet: enough for groups starting inside New, small enough that a
// program that never subscribes does not hold on to a history of messages.
const maxEarlyEvents = 1024

// hub fans events out to subscriptions.
type hub struct {
	mu   sync.Mutex
	seq  uint64
	subs map[*Subscription]struct{}
	// Events from before the first Subscribe (node.New starts groups, which
	// can already deliver messages), kept for the first subscriber.
	early      []Event
	subscribed bool
	closed     bool // after closeAll: new subscriptions start closed
}

func newHub() *hub { return &hub{subs: make(map[*Subscription]struct{})} }

func (h *hub) subscribe() *Subscription {
	s := &Subscription{c: make(chan Event, 64), hub: h, wake: make(chan struct{}, 1), done: make(chan struct{})}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		// The node is closed: a subscription whose channel is closed, with
		// no goroutine, so that ranging over it ends at once.
		s.closed = true
		close(s.done)
		close(s.c)
		return s
	}
	if !h.subscribed {
		h.subscribed = true
		s.queue, h.early = h.early, nil
	}
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	s.wg.Add(1)
	go s.pump()
	return s
}

func (h *hub) remove(s *Subscription) {
	h.mu.Lock()
	delete(h.subs, s)
	h.mu.Unlock()
}

// publish stamps e with the next sequence number and queues it for every
// subscriber. Holding the lock while pushing keeps every subscriber's events
// in Seq order.
func (h *hub) publish(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	e.Seq = h.seq
	e.Time = time.Now()
	if !h.subscribed {
		if len(h.early) >= maxEarlyEvents {
			h.early = h.early[1:]
		}
		h.early = append(h.early, e)
		return
	}
	for s := range h.subs {
		s.push(e)
	}
}

func (h *hub) closeAll() {
	h.mu.Lock()
	h.closed = true
	subs := make([]*Subscription, 0, len(h.subs))
	for s := range h.subs {
		subs = append(subs, s)
	}
	h.mu.Unlock()
	for _, s := range subs {
		s.Close()
	}
}

// Stats are counters of a node's protocol work since it started.
type Stats struct {
	KeyTransfersSent     uint64 // key transfer streams that delivered a key
	KeyTransfersAccepted uint64 // keys received from peers and accepted
	KeyRequestsSent      uint64 // key requests published
	KeysGenerated        uint64 // rotations: fresh random keys
	EnvelopesSynced      uint64 // envelopes stored from history sync
	EnvelopesPublished   uint64 // our envelopes published on group topics
	TopicMessagesSent    uint64 // topic messages that carried them (fewer when batched)
	OpsRefused           uint64 // roster ops of removed members refused (validator or admission)
	EnvelopesRefused     uint64 // envelopes refused by the sender rule, on any path
}

type stats struct {
	keyTransfersSent, keyTransfersAccepted, keyRequestsSent, keysGenerated, envelopesSynced atomic.Uint64
	envelopesPublished, topicMessagesSent                                                   atomic.Uint64
	opsRefused, envelopesRefused                                                            atomic.Uint64
}

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{
		KeyTransfersSent:     n.stats.keyTransfersSent.Load(),
		KeyTransfersAccepted: n.stats.keyTransfersAccepted.Load(),
		KeyRequestsSent:      n.stats.keyRequestsSent.Load(),
		KeysGenerated:        n.stats.keysGenerated.Load(),
		EnvelopesSynced:      n.stats.envelopesSynced.Load(),
		EnvelopesPublished:   n.stats.envelopesPublished.Load(),
		TopicMessagesSent:    n.stats.topicMessagesSent.Load(),
		OpsRefused:           n.stats.opsRefused.Load(),
		EnvelopesRefused:     n.stats.envelopesRefused.Load(),
	}
}
