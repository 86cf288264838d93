package node

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// BenchmarkServeSyncToLateJoiner: a member with a long history answers the
// first history sync of a member that joined after all of it and is
// entitled to none of it — what every responder paid at each join, again
// 2 s later and every 30 s.
func BenchmarkServeSyncToLateJoiner(b *testing.B) {
	for _, n := range []int{2000, 10000} {
		b.Run(fmt.Sprintf("history=%d", n), func(b *testing.B) {
			a, g, late := groupWithHistory(b, n)
			req := &wire.SyncRequest{GroupId: g.id[:]}
			b.ResetTimer()
			for b.Loop() {
				resp, ok := a.handleSyncRequest(late.ID(), req)
				if !ok || len(resp.Envelopes) != 0 || resp.More {
					b.Fatalf("served %d envelopes (ok %v, more %v) to a member entitled to none", len(resp.GetEnvelopes()), ok, resp.GetMore())
				}
			}
		})
	}
}

// BenchmarkServeSyncUpToDate: a member with a long history answers the
// periodic sync of a member that holds all of it — what every pair of
// members pays every 30 s and at every re-subscribe.
func BenchmarkServeSyncUpToDate(b *testing.B) {
	for _, n := range []int{2000, 10000} {
		b.Run(fmt.Sprintf("history=%d", n), func(b *testing.B) {
			a, g, peer := groupWithHistory(b, n)
			have, err := g.haveSummary()
			if err != nil {
				b.Fatal(err)
			}
			req := &wire.SyncRequest{GroupId: g.id[:], Have: have}
			b.ResetTimer()
			for b.Loop() {
				resp, ok := a.handleSyncRequest(peer.ID(), req)
				if !ok || len(resp.Envelopes) != 0 || resp.More {
					b.Fatalf("served %d envelopes to a member that holds them all", len(resp.GetEnvelopes()))
				}
			}
		})
	}
}

// groupWithHistory is a node on an on-disk store (the daemon's
// configuration) with a group holding n of its messages, and a member added
// after all of them.
func groupWithHistory(b *testing.B, n int) (*testNode, *Group, *testNode) {
	b.Helper()
	a := newTestNode(b, b.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	g, err := a.CreateGroup(ctx, "long history")
	if err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if _, err := g.Send(ctx, fmt.Sprint("message ", i)); err != nil {
			b.Fatal(err)
		}
	}
	later := newTestNode(b, "")
	if err := g.Add(ctx, later.ID(), roster.RoleMember); err != nil {
		b.Fatal(err)
	}
	return a, g, later
}
