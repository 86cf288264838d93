package node

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/wire"
)

// maxOutbox bounds the envelopes waiting to be published. They are stored
// already, so dropping the oldest (when the topic cannot keep up) loses
// nothing: history sync delivers them.
const maxOutbox = 4096

// outbox holds our own envelopes, stored already, until they are published,
// and publishes them in the order they were pushed (Send pushes under
// Group.mu, so that is sequence order). A push after a quiet spell leaves at
// once; pushes that follow within linger wait for it and leave together, up
// to batch per topic message, which is what makes a burst cheap for
// GossipSub and for every receiver. It owns no goroutine of its own: run is
// the publisher and its caller owns it.
type outbox struct {
	publish func(ctx context.Context, m *wire.TopicMessage) error
	batch   int           // envelopes per topic message (≤ 1: one each, no linger)
	linger  time.Duration // how long a push after a publish waits for company
	max     int           // envelopes kept; beyond it the oldest is dropped
	clock   clock
	log     *slog.Logger
	sent    func(topicMessages, envelopes uint64) // counts what was published

	mu   sync.Mutex
	q    []*wire.Signed
	wake chan struct{}
}

// clock is the time an owner of timed work sees; tests drive their own.
type clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

func newOutbox(publish func(context.Context, *wire.TopicMessage) error, p Params, log *slog.Logger, sent func(uint64, uint64)) *outbox {
	linger := p.PublishInterval
	if p.PublishBatch <= 1 {
		linger = 0
	}
	return &outbox{publish: publish, batch: p.PublishBatch, linger: linger, max: maxOutbox,
		clock: wallClock{}, log: log, sent: sent, wake: make(chan struct{}, 1)}
}

// push queues s for publishing. It never blocks.
func (o *outbox) push(s *wire.Signed) {
	o.mu.Lock()
	if len(o.q) >= o.max {
		o.q = o.q[1:]
		o.log.Debug("outbox full: oldest envelope left to history sync")
	}
	o.q = append(o.q, s)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

func (o *outbox) empty() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.q) == 0
}

func (o *outbox) take() []*wire.Signed {
	o.mu.Lock()
	defer o.mu.Unlock()
	q := o.q
	o.q = nil
	return q
}

// publishQueued publishes what is queued now (what queues meanwhile has
// woken run and waits for the next round) and reports whether there was any.
// A failed publish is logged and skipped: the envelope is stored, and
// history sync delivers it.
func (o *outbox) publishQueued(ctx context.Context) bool {
	envs := o.take()
	for _, m := range gossip.PackEnvelopes(envs, o.batch) {
		if err := o.publish(ctx, m); err != nil {
			o.log.Warn("publish failed", "err", err)
			if ctx.Err() != nil {
				return false
			}
			continue
		}
		n := uint64(1)
		if b := m.GetEnvelopeBatch(); b != nil {
			n = uint64(len(b.Envelopes))
		}
		if o.sent != nil {
			o.sent(1, n)
		}
	}
	return len(envs) > 0
}

// run publishes until ctx ends, then publishes what is left, for at most
// flushTimeout: what it cannot, history sync delivers.
func (o *outbox) run(ctx context.Context) {
	var last time.Time
	for {
		select {
		case <-o.wake:
		case <-ctx.Done():
			o.flush()
			return
		}
		if o.empty() {
			continue // a wake left over from pushes already published
		}
		if !last.IsZero() {
			if wait := o.linger - o.clock.Now().Sub(last); wait > 0 {
				select {
				case <-o.clock.After(wait):
				case <-ctx.Done():
					o.flush()
					return
				}
			}
		}
		started := o.clock.Now()
		if o.publishQueued(ctx) {
			last = started
		}
	}
}

// flushTimeout bounds how long a stopping outbox keeps publishing.
const flushTimeout = time.Second

func (o *outbox) flush() {
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	for ctx.Err() == nil && o.publishQueued(ctx) {
	}
}
