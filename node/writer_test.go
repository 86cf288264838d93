package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/store"
)

// TestWriterDurableInOrder: writes handed over by many goroutines are
// durable once sync returns for their ticket (they survive a reopen), a
// later write to a key wins over an earlier one, and close commits what is
// still queued.
func TestWriterDurableInOrder(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	w := newWriter(s, slog.New(slog.DiscardHandler))
	g := [32]byte{1}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for worker := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				var id [32]byte
				id[0], id[1] = byte(worker), byte(i)
				tk := w.put(store.OpWrite(g, id, []byte(fmt.Sprint(worker, i))))
				if i%10 == 9 {
					if err := w.sync(context.Background(), tk); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// The same key twice: the later write wins.
	w.put(store.KeyWrite(g, [32]byte{9}, []byte("first")))
	w.put(store.KeyWrite(g, [32]byte{9}, []byte("second")))
	w.close() // commits what is queued
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s, err = store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ops := 0
	if err := s.Ops(g, func([]byte) error { ops++; return nil }); err != nil {
		t.Fatal(err)
	}
	var key string
	if err := s.Keys(g, func(b []byte) error { key = string(b); return nil }); err != nil {
		t.Fatal(err)
	}
	if ops != 400 || key != "second" {
		t.Fatalf("after reopen: %d ops (want 400), key %q (want second)", ops, key)
	}
}

// TestWriterReportsFailure: a commit that fails is reported to the waiters
// of its writes (and the writer keeps going); sync ends with the context.
func TestWriterReportsFailure(t *testing.T) {
	s, err := store.Open("")
	if err != nil {
		t.Fatal(err)
	}
	w := newWriter(s, slog.New(slog.DiscardHandler))
	g := [32]byte{2}
	if err := w.sync(context.Background(), w.put(store.OpWrite(g, [32]byte{1}, []byte("ok")))); err != nil {
		t.Fatal(err)
	}
	// Nothing will make ticket+10 durable: sync waits for the context.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.sync(ctx, w.ticket()+10); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("sync on a ticket never handed over: %v", err)
	}
	// A closed database fails every commit.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	tk := w.put(store.OpWrite(g, [32]byte{2}, []byte("lost")))
	if err := w.sync(context.Background(), tk); err == nil {
		t.Fatal("a failed commit was reported as durable")
	}
	w.close()
}

// TestStalledDiskLeavesReceivePathFree: while this node's disk writes are
// stalled (the writer holds its commit), a Send of its own waits for them,
// yet the group lock stays free: messages from a peer are validated, stored
// and shown, in this group and in another, and the group's state can be
// read. When the disk comes back the Send completes and its message
// arrives.
func TestStalledDiskLeavesReceivePathFree(t *testing.T) {
	a := newTestNode(t, t.TempDir())
	b := newTestNode(t, "")
	connectAll(t, []*testNode{a, b})
	g1 := formGroup(t, []*testNode{a, b})
	g2 := formGroup(t, []*testNode{a, b})

	stall := make(chan struct{})
	stalled := make(chan struct{}, 1)
	a.disk.mu.Lock()
	a.disk.beforeCommit = func() {
		select {
		case stalled <- struct{}{}:
		default:
		}
		<-stall
	}
	a.disk.mu.Unlock()
	resume := sync.OnceFunc(func() {
		a.disk.mu.Lock()
		a.disk.beforeCommit = nil
		a.disk.mu.Unlock()
		close(stall)
	})
	defer resume()
	// Something for the writer to commit: a's Send then waits for it.
	a.disk.put(store.GroupWrite([32]byte{0xee}, []byte("pending")))
	<-stalled

	sent := make(chan error, 1)
	go func() {
		_, err := a.mustGroup(g1).Send(context.Background(), "from a, while its disk is stalled")
		sent <- err
	}()
	for i, gid := range []roster.GroupID{g1, g2} {
		text := fmt.Sprint("from b to group ", i)
		b.send(gid, text)
		eventually(t, 10*time.Second, "a shows b's message while its disk is stalled", func() bool {
			for _, m := range a.rec.shown(gid) {
				if m.Text == text && m.Sender == b.ID() {
					return true
				}
			}
			return false
		})
	}
	done := make(chan struct{})
	go func() { _ = a.mustGroup(g1).Members(); _ = a.mustGroup(g1).State(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("reading the group's state waited for the disk")
	}
	select {
	case err := <-sent:
		t.Fatalf("Send returned (%v) before its writes were durable", err)
	default:
	}

	resume()
	select {
	case err := <-sent:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Send did not complete once the disk came back")
	}
	eventually(t, 10*time.Second, "b reads a's message", func() bool {
		for _, m := range b.rec.shown(g1) {
			if m.Sender == a.ID() && m.Text == "from a, while its disk is stalled" {
				return true
			}
		}
		return false
	})
}
