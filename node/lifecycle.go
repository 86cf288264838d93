package node

import (
	"context"
	"sync"
)

// lifecycle admits calls into a Node until Close begins and lets Close wait
// for every call it admitted before it stops goroutines and closes the
// store: a call never finds the store closed under it, and Close never
// returns while a call still runs. Every public method of Node and Group
// that touches the store, the network or a goroutine enters it first.
type lifecycle struct {
	mu      sync.Mutex
	closing bool
	calls   sync.WaitGroup
	// ctx is cancelled when Close begins, so that calls waiting on the
	// network end instead of holding Close up until their caller's
	// deadline.
	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when Close has finished
}

func newLifecycle() *lifecycle {
	l := &lifecycle{done: make(chan struct{})}
	l.ctx, l.cancel = context.WithCancel(context.Background())
	return l
}

// enter admits a call, or returns ErrClosed once Close has begun. The
// caller calls leave exactly once when the call returns.
func (l *lifecycle) enter() (leave func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return nil, ErrClosed
	}
	l.calls.Add(1) // under mu: never after shut has started waiting
	return l.calls.Done, nil
}

// call is enter for a method that takes a context: the context it returns
// also ends when Close begins. finish leaves and releases the context.
func (l *lifecycle) call(ctx context.Context) (_ context.Context, finish func(), err error) {
	leave, err := l.enter()
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(l.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
		leave()
	}, nil
}

// shut begins Close: no call is admitted any more, the contexts of the
// calls in flight are cancelled, and shut returns once they have all
// returned. It reports false, after the first Close has finished, when
// Close had begun already.
func (l *lifecycle) shut() bool {
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		<-l.done
		return false
	}
	l.closing = true
	l.mu.Unlock()
	l.cancel()
	l.calls.Wait()
	return true
}

// isClosing reports whether Close has begun.
func (l *lifecycle) isClosing() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closing
}

// finished marks the end of Close, releasing concurrent Close calls.
func (l *lifecycle) finished() { close(l.done) }
