package node

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/wire"
)

// manualClock is a clock the test moves: After hands the wait to the test
// (on waits) and fires only when the test says so.
type manualClock struct {
	mu    sync.Mutex
	now   time.Time
	waits chan manualWait
}

type manualWait struct {
	d  time.Duration
	ch chan time.Time
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Unix(1_700_000_000, 0), waits: make(chan manualWait, 16)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.waits <- manualWait{d, ch}
	return ch
}

func (c *manualClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// recordingTopic is the publish side of an outbox under test: it records
// the sequence numbers of every topic message, one slice per message.
type recordingTopic struct {
	mu   sync.Mutex
	msgs [][]uint64
	fail int // fail this many publishes first
	got  chan struct{}
}

func (r *recordingTopic) publish(_ context.Context, m *wire.TopicMessage) error {
	r.mu.Lock()
	defer func() { r.mu.Unlock(); r.got <- struct{}{} }()
	if r.fail > 0 {
		r.fail--
		return errors.New("topic refused")
	}
	var seqs []uint64
	if b := m.GetEnvelopeBatch(); b != nil {
		for _, s := range b.Envelopes {
			seqs = append(seqs, seqOf(s))
		}
	} else {
		seqs = append(seqs, seqOf(m.GetEnvelope()))
	}
	r.msgs = append(r.msgs, seqs)
	return nil
}

func (r *recordingTopic) published() [][]uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]uint64(nil), r.msgs...)
}

// seqOf reads the sequence number the test stored in the signature field
// (the outbox never looks inside an envelope).
func seqOf(s *wire.Signed) uint64 { return uint64(s.Signature[0]) }

func fakeEnvelope(seq uint64) *wire.Signed {
	return &wire.Signed{Kind: wire.Kind_KIND_ENVELOPE, Body: []byte{1}, Signature: []byte{byte(seq)}}
}

func newTestOutbox(t *testing.T, batch int, linger time.Duration) (*outbox, *recordingTopic, *manualClock) {
	rec := &recordingTopic{got: make(chan struct{}, 64)}
	clk := newManualClock()
	var p Params
	p.PublishBatch, p.PublishInterval = batch, linger
	o := newOutbox(rec.publish, p, slog.New(slog.DiscardHandler), nil)
	o.clock = clk
	return o, rec, clk
}

func runOutbox(t *testing.T, o *outbox) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); o.run(ctx) }()
	return func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("outbox did not stop")
		}
	}
}

func waitFor[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func equalBatches(a, b [][]uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if len(a[i]) != len(b[i]) {
			return false
		}
		for j := range a[i] {
			if a[i][j] != b[i][j] {
				return false
			}
		}
	}
	return true
}

// A push after a quiet spell leaves at once, alone; pushes within the
// linger that follows wait for it and leave together, in push order; after
// another quiet spell the next push leaves at once again.
func TestOutboxLingersAfterAPublish(t *testing.T) {
	o, rec, clk := newTestOutbox(t, 64, 20*time.Millisecond)
	stop := runOutbox(t, o)
	defer stop()

	o.push(fakeEnvelope(1))
	waitFor(t, rec.got, "the first envelope")
	o.push(fakeEnvelope(2))
	o.push(fakeEnvelope(3))
	o.push(fakeEnvelope(4))
	w := waitFor(t, clk.waits, "the linger")
	if w.d != 20*time.Millisecond {
		t.Fatalf("lingered %v, want the full 20ms (no time passed)", w.d)
	}
	clk.advance(w.d)
	w.ch <- clk.Now()
	waitFor(t, rec.got, "the batch")
	clk.advance(time.Second) // quiet spell
	o.push(fakeEnvelope(5))
	waitFor(t, rec.got, "the envelope after a quiet spell")
	want := [][]uint64{{1}, {2, 3, 4}, {5}}
	if got := rec.published(); !equalBatches(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
	select {
	case w := <-clk.waits:
		t.Fatalf("lingered %v after a quiet spell", w.d)
	default:
	}
}

// Batches never exceed the batch size, and sequence order survives the
// split.
func TestOutboxSplitsAtTheBatchSize(t *testing.T) {
	o, rec, _ := newTestOutbox(t, 3, 20*time.Millisecond)
	for seq := uint64(1); seq <= 7; seq++ {
		o.push(fakeEnvelope(seq))
	}
	stop := runOutbox(t, o)
	defer stop()
	for range 3 {
		waitFor(t, rec.got, "a batch")
	}
	want := [][]uint64{{1, 2, 3}, {4, 5, 6}, {7}}
	if got := rec.published(); !equalBatches(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
}

// Beyond max the oldest envelopes are dropped (they are stored; history
// sync delivers them), never the newest, and push never blocks.
func TestOutboxDropsTheOldestWhenFull(t *testing.T) {
	o, rec, _ := newTestOutbox(t, 64, 0)
	o.max = 3
	for seq := uint64(1); seq <= 5; seq++ {
		o.push(fakeEnvelope(seq))
	}
	stop := runOutbox(t, o)
	defer stop()
	waitFor(t, rec.got, "the batch")
	if got, want := rec.published(), [][]uint64{{3, 4, 5}}; !equalBatches(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
}

// A refused publish is skipped, not retried for ever and not a stall: the
// next envelopes still leave.
func TestOutboxSurvivesAFailedPublish(t *testing.T) {
	o, rec, _ := newTestOutbox(t, 1, 0)
	rec.fail = 1
	o.push(fakeEnvelope(1))
	o.push(fakeEnvelope(2))
	stop := runOutbox(t, o)
	defer stop()
	waitFor(t, rec.got, "the refused publish")
	waitFor(t, rec.got, "the next publish")
	if got, want := rec.published(), [][]uint64{{2}}; !equalBatches(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
}

// Stopping while envelopes linger publishes them before run returns.
func TestOutboxFlushesOnStop(t *testing.T) {
	o, rec, clk := newTestOutbox(t, 64, time.Hour)
	stop := runOutbox(t, o)
	o.push(fakeEnvelope(1))
	waitFor(t, rec.got, "the first envelope")
	o.push(fakeEnvelope(2))
	o.push(fakeEnvelope(3))
	waitFor(t, clk.waits, "the linger") // never fired
	stop()
	if got, want := rec.published(), [][]uint64{{1}, {2, 3}}; !equalBatches(got, want) {
		t.Fatalf("published %v, want %v", got, want)
	}
}
