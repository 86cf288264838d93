package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"go.uber.org/goleak"

	"github.com/p2pchat/p2pchat/roster"
)

// TestCloseRacesEveryCall closes a disk-backed node at a random moment
// while goroutines call every public method of Node and Group in a loop
// (and a peer keeps syncing with it). Nothing may panic or hang; a call
// that starts after Close has begun returns ErrClosed (or, for a method
// without an error, returns at once); Close returns the same result however
// often and from however many goroutines it is called; and no goroutine is
// left running afterwards.
func TestCloseRacesEveryCall(t *testing.T) {
	// libp2p starts a few process-wide goroutines with its first host.
	warm := newTestNode(t, t.TempDir())
	warm.Close()
	// Registered first, so it runs after every node's own cleanup.
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })

	peerPriv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	peerID, _ := peer.IDFromPrivateKey(peerPriv)
	const rounds = 25
	for round := range rounds {
		n := newTestNodeParams(t, t.TempDir(), nil, testParams)
		other := newTestNode(t, "")
		connectAll(t, []*testNode{n, other})
		g, err := n.CreateGroup(context.Background(), "close race")
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Add(context.Background(), other.ID(), roster.RoleMember); err != nil {
			t.Fatal(err)
		}
		if _, err := other.JoinGroup(context.Background(), g.ID(), addrInfo(n.Node)); err != nil {
			t.Fatal(err)
		}

		var wrong sync.Mutex
		var wrongs []string
		// check records an error returned by a call that began after Close
		// had begun and is not ErrClosed.
		check := func(name string, began bool, err error) {
			if began && !errors.Is(err, ErrClosed) {
				wrong.Lock()
				wrongs = append(wrongs, fmt.Sprintf("%s after Close: %v", name, err))
				wrong.Unlock()
			}
		}
		calls := []func(ctx context.Context) (string, error){
			func(ctx context.Context) (string, error) {
				_, err := n.CreateGroup(ctx, "more")
				return "CreateGroup", err
			},
			func(ctx context.Context) (string, error) {
				_, err := g.Send(ctx, "hello")
				return "Send", err
			},
			func(ctx context.Context) (string, error) {
				_, err := g.History()
				return "History", err
			},
			func(ctx context.Context) (string, error) {
				err := g.Add(ctx, peerID, roster.RoleMember)
				return "Add", err
			},
			func(ctx context.Context) (string, error) {
				err := g.Remove(ctx, peerID)
				return "Remove", err
			},
			func(ctx context.Context) (string, error) {
				_, err := g.Invite(ctx, other.ID())
				return "Invite", err
			},
			func(ctx context.Context) (string, error) {
				ctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
				defer cancel()
				err := g.WaitPeers(ctx, 1)
				return "WaitPeers", err
			},
			func(ctx context.Context) (string, error) {
				err := n.Connect(ctx, addrInfo(other.Node))
				return "Connect", err
			},
			func(ctx context.Context) (string, error) {
				ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				defer cancel()
				_, err := n.JoinGroup(ctx, roster.GroupID{1}, addrInfo(other.Node))
				return "JoinGroup", err
			},
			func(ctx context.Context) (string, error) {
				s := n.Subscribe()
				s.Close()
				_ = n.Groups()
				_ = g.Members()
				_ = g.State()
				_ = g.KeyIDs()
				_ = g.Peers()
				_ = n.Stats()
				return "", nil
			},
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var panicked atomic.Value
		for _, call := range calls {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					if p := recover(); p != nil {
						panicked.Store(fmt.Sprintf("%v\n%s", p, debug.Stack()))
					}
				}()
				for {
					select {
					case <-stop:
						return
					default:
					}
					began := n.life.isClosing()
					name, err := call(context.Background())
					if name != "" {
						check(name, began, err)
					}
				}
			}()
		}
		// The peer syncs with n and sends to it while it closes.
		og := other.mustGroup(g.ID())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = og.Send(context.Background(), fmt.Sprint("from the peer ", i))
				time.Sleep(time.Millisecond)
			}
		}()

		time.Sleep(time.Duration(round%5) * 20 * time.Millisecond)
		closed := make(chan error, 3)
		for range 3 {
			go func() { closed <- n.Close() }()
		}
		var first error
		for i := range 3 {
			select {
			case err := <-closed:
				if i == 0 {
					first = err
				} else if fmt.Sprint(err) != fmt.Sprint(first) {
					t.Fatalf("round %d: Close returned %v and %v", round, first, err)
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("round %d: Close did not return within 30 s", round)
			}
		}
		if first != nil {
			t.Fatalf("round %d: Close: %v", round, first)
		}
		// Calls made after Close has returned.
		if _, err := g.Send(context.Background(), "late"); !errors.Is(err, ErrClosed) {
			t.Fatalf("round %d: Send after Close: %v, want ErrClosed", round, err)
		}
		s := n.Subscribe()
		select {
		case _, ok := <-s.C():
			if ok {
				t.Fatalf("round %d: a subscription made after Close delivered an event", round)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: a subscription made after Close is not closed", round)
		}
		s.Close()
		close(stop)
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: calls still running 30 s after Close", round)
		}
		if p := panicked.Load(); p != nil {
			t.Fatalf("round %d: a call panicked: %v", round, p)
		}
		if len(wrongs) > 0 {
			t.Fatalf("round %d: %d calls after Close did not return ErrClosed, e.g. %s", round, len(wrongs), wrongs[0])
		}
		other.Close()
	}
}
