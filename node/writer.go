package node

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/p2pchat/p2pchat/store"
)

// writer persists state changes in the background, in the order they were
// handed over, in group commits (one synced transaction for everything
// queued). Code that holds a group's lock hands it writes and never waits
// for the disk, so the receive path (the topic validator takes that lock)
// never queues behind an fsync. Code that must know its writes are durable
// (before Send returns, before a peer is told a key was accepted, before an
// op of ours is published) waits with sync, outside every lock.
//
// What the writer takes is what the node has already applied in memory: a
// crash loses at most the writes not yet synced, and each of them can be
// had again from peers (roster ops, keys by key request, message status by
// decrypting again), except where a sync made it durable first.
type writer struct {
	store *store.Store
	log   *slog.Logger

	mu      sync.Mutex
	queue   []store.Write
	queued  uint64 // ticket of the last write handed over
	durable uint64 // every write up to this ticket is synced
	failed  []failedRange
	wake    chan struct{}
	synced  *sync.Cond // broadcast when durable or failed changes
	closing bool
	closed  chan struct{} // closed by close: a writer waiting for space stops waiting
	// retryNow cuts a wait for space short (a waiter saw space return).
	retryNow chan struct{}
	done     chan struct{}
	// full is the error of the last commit, refused for lack of space
	// (store.ErrDiskFull); nil once a commit succeeds. Its writes stay
	// queued and are committed when space returns.
	full error
	// beforeCommit, when set (by tests, under mu), runs before each commit:
	// a stalled disk.
	beforeCommit func()
}

// failedRange records writes (from, to] whose commit failed.
type failedRange struct {
	from, to uint64
	err      error
}

// diskFullRetry is how often a writer holding writes refused for lack of
// space tries again.
const diskFullRetry = 500 * time.Millisecond

// maxFailedRanges bounds the failures remembered for late waiters.
const maxFailedRanges = 64

func newWriter(s *store.Store, log *slog.Logger) *writer {
	w := &writer{store: s, log: log, wake: make(chan struct{}, 1), closed: make(chan struct{}), retryNow: make(chan struct{}, 1), done: make(chan struct{})}
	w.synced = sync.NewCond(&w.mu)
	go w.run()
	return w
}

// put hands writes over and returns the ticket to sync on. It never blocks
// on the disk.
func (w *writer) put(ws ...store.Write) uint64 {
	w.mu.Lock()
	w.queue = append(w.queue, ws...)
	w.queued++
	t := w.queued
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return t
}

// ticket returns the ticket of the last write handed over: syncing on it
// waits for everything put so far.
func (w *writer) ticket() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.queued
}

// sync waits until the writes up to ticket t are durable and returns the
// error of the commit that carried t, if it failed. It never holds a lock
// of the caller's: call it with none held.
func (w *writer) sync(ctx context.Context, t uint64) error {
	stop := context.AfterFunc(ctx, func() {
		w.mu.Lock()
		w.synced.Broadcast()
		w.mu.Unlock()
	})
	defer stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.durable < t {
		if err := w.failedFor(t); err != nil {
			return err
		}
		if w.full != nil {
			// A statfs under w.mu, only while the disk is full: cheap
			// metadata, never a write or a sync.
			if err := w.store.CheckSpace(); err != nil {
				return err // kept for a retry, but not durable now: say so at once
			}
			// Space is back: have the writer try now rather than at its
			// next retry, and wait for it.
			select {
			case w.retryNow <- struct{}{}:
			default:
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		w.synced.Wait()
	}
	return w.failedFor(t)
}

func (w *writer) failedFor(t uint64) error {
	for _, f := range w.failed {
		if f.from < t && t <= f.to {
			return f.err
		}
	}
	return nil
}

// run commits what is queued, all of it at once, until close.
func (w *writer) run() {
	defer close(w.done)
	for {
		w.mu.Lock()
		for len(w.queue) == 0 && !w.closing {
			w.mu.Unlock()
			<-w.wake
			w.mu.Lock()
		}
		if len(w.queue) == 0 && w.closing {
			w.mu.Unlock()
			return
		}
		batch, upTo, from := w.queue, w.queued, w.durable
		w.queue = nil
		hold := w.beforeCommit
		w.mu.Unlock()
		if hold != nil {
			hold()
		}

		err := w.store.Commit(batch)

		w.mu.Lock()
		if errors.Is(err, store.ErrDiskFull) && !w.closing {
			// Nothing of the batch was written. Keep it, ahead of what was
			// queued since, and try again when there may be room: a full
			// disk loses no write the node has acted on.
			if w.full == nil {
				w.log.Warn("writes wait for disk space", "err", err)
			}
			w.full = err
			w.queue = append(batch, w.queue...)
			w.synced.Broadcast()
			w.mu.Unlock()
			select {
			case <-time.After(diskFullRetry):
			case <-w.retryNow:
			case <-w.closed:
			}
			continue
		}
		if w.full != nil && err == nil {
			w.log.Info("disk space back: queued writes committed")
		}
		w.full = nil
		if err != nil {
			w.log.Warn("write to the store failed", "writes", len(batch), "err", err)
			if len(w.failed) == maxFailedRanges {
				w.failed = w.failed[1:]
			}
			w.failed = append(w.failed, failedRange{from, upTo, err})
		}
		w.durable = upTo
		w.synced.Broadcast()
		w.mu.Unlock()
	}
}

// close commits what is queued and stops. Call it after the last put and
// before the store closes.
func (w *writer) close() {
	w.mu.Lock()
	w.closing = true
	w.mu.Unlock()
	close(w.closed)
	select {
	case w.wake <- struct{}{}:
	default:
	}
	<-w.done
}
