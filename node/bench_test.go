package node

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/roster"
)

// BenchmarkRemovalRotation measures, for a group of 20 remaining members on
// loopback TCP, the time from an admin's Remove call to every remaining
// member holding the new key, and the key transfers it took.
//
//	go test -run '^$' -bench BenchmarkRemovalRotation -benchtime 10x ./node
func BenchmarkRemovalRotation(b *testing.B) {
	bt := b
	nodes := make([]*testNode, 21)
	for i := range nodes {
		nodes[i] = newTestNodeParams(b, "", nil, DefaultParams())
	}
	connectAll(b, nodes)
	gid := formGroup(bt, nodes)
	admin, spare, rest := nodes[0], nodes[20], nodes[1:20]
	remaining := append([]*testNode{admin}, rest...)
	ctx := context.Background()
	var transfers uint64
	var took []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := admin.Stats().KeyTransfersSent
		start := time.Now()
		if err := admin.mustGroup(gid).Remove(ctx, spare.ID()); err != nil {
			b.Fatal(err)
		}
		newKey := admin.mustGroup(gid).SendingKeyID()
		eventually(bt, 20*time.Second, "all remaining hold the new key", func() bool {
			for _, n := range remaining {
				if !n.mustGroup(gid).HasKey(newKey) {
					return false
				}
			}
			return true
		})
		took = append(took, time.Since(start))
		eventually(bt, 10*time.Second, "transfers acknowledged", func() bool {
			return admin.Stats().KeyTransfersSent-before >= uint64(len(rest))
		})
		transfers += admin.Stats().KeyTransfersSent - before

		b.StopTimer()
		if err := admin.mustGroup(gid).Add(ctx, spare.ID(), roster.RoleMember); err != nil {
			b.Fatal(err)
		}
		if _, err := spare.JoinGroup(ctx, gid, addrInfo(admin.Node)); err != nil {
			b.Fatal(err)
		}
		waitMesh(bt, nodes, gid)
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(took[(len(took)*99)/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(transfers)/float64(b.N), "transfers/rotation")
}

// BenchmarkSelfHeal measures the time from a message arriving under a key
// the node lacks (shown as waiting) to it being shown decrypted: the
// key-request path, with the pushed key lost because the rotating admin
// cannot reach the receiver directly.
//
//	go test -run '^$' -bench BenchmarkSelfHeal -benchtime 20x ./node
func BenchmarkSelfHeal(b *testing.B) {
	// Product defaults, not the shortened test timings: the request delay
	// is part of what is measured.
	nn := func() *testNode { return newTestNodeParams(b, "", nil, DefaultParams()) }
	a, relay, spare, n := nn(), nn(), nn(), nn()
	connectAll(b, []*testNode{a, relay, spare})
	connectAll(b, []*testNode{relay, n})
	gid := formGroup(b, []*testNode{a, relay, spare})
	ctx := context.Background()
	if err := a.mustGroup(gid).Add(ctx, n.ID(), roster.RoleMember); err != nil {
		b.Fatal(err)
	}
	eventually(b, 10*time.Second, "relay applies the add", func() bool { return relay.mustGroup(gid).IsMember(n.ID()) })
	if _, err := n.JoinGroup(ctx, gid, addrInfo(relay.Node)); err != nil {
		b.Fatal(err)
	}
	partition([]*testNode{a, spare}, []*testNode{n})
	time.Sleep(2 * time.Second) // let the mesh settle: gossip loss is not what this measures

	var heal []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// The removal rotates; a's push reaches the relay, never n.
		if err := a.mustGroup(gid).Remove(ctx, spare.ID()); err != nil {
			b.Fatal(err)
		}
		key := a.mustGroup(gid).SendingKeyID()
		eventually(b, 10*time.Second, "relay holds the key", func() bool { return relay.mustGroup(gid).HasKey(key) })
		m := a.send(gid, fmt.Sprintf("heal %d", i))
		var waiting, decrypted time.Time
		eventually(b, 10*time.Second, "n decrypts the message", func() bool {
			for _, e := range n.rec.snapshot() {
				if e.Message == nil || e.Message.ID() != m.ID() {
					continue
				}
				if e.Kind == EventMessage && e.Message.Status == StatusWaitingForKey {
					waiting = e.Time
				}
				if e.Message.Status == StatusOK {
					decrypted = e.Time
				}
			}
			return !decrypted.IsZero()
		})
		if waiting.IsZero() {
			b.Fatal("the message was never shown waiting: no race")
		}
		heal = append(heal, decrypted.Sub(waiting))

		b.StopTimer()
		if err := a.mustGroup(gid).Add(ctx, spare.ID(), roster.RoleMember); err != nil {
			b.Fatal(err)
		}
		if _, err := spare.JoinGroup(ctx, gid, addrInfo(a.Node)); err != nil {
			b.Fatal(err)
		}
		eventually(b, 10*time.Second, "everyone sees the re-add", func() bool {
			return n.mustGroup(gid).IsMember(spare.ID()) && relay.mustGroup(gid).IsMember(spare.ID())
		})
		b.StartTimer()
	}
	b.StopTimer()
	slices.Sort(heal)
	b.ReportMetric(float64(heal[len(heal)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(heal[(len(heal)*99)/100].Microseconds())/1000, "p99-ms")
}

// BenchmarkCatchUp measures how long a member that was offline takes to
// catch up on 10,000 messages (two senders) when it comes back: from its
// restart to all of them shown decrypted. Its store is on disk.
//
//	go test -run '^$' -bench BenchmarkCatchUp -benchtime 3x ./node
func BenchmarkCatchUp(b *testing.B) {
	const missed = 10000
	var took []time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dir := b.TempDir()
		nn := func(d string) *testNode { return newTestNodeParams(b, d, nil, DefaultParams()) }
		a, s, c := nn(""), nn(""), nn(dir)
		nodes := []*testNode{a, s, c}
		connectAll(b, nodes)
		gid := formGroup(b, nodes)
		if err := c.Close(); err != nil {
			b.Fatal(err)
		}
		for j := 0; j < missed/2; j++ {
			a.send(gid, fmt.Sprintf("a %d", j))
			s.send(gid, fmt.Sprintf("s %d", j))
		}
		b.StartTimer()
		start := time.Now()
		c2 := nn(dir)
		connectAll(b, []*testNode{a, s, c2})
		eventually(b, 120*time.Second, "catch-up", func() bool { return len(c2.rec.readable(gid)) == missed })
		took = append(took, time.Since(start))
		b.StopTimer()
		for _, n := range []*testNode{a, s, c2} {
			n.Close()
		}
		b.StartTimer()
	}
	slices.Sort(took)
	b.ReportMetric(float64(took[len(took)/2].Milliseconds()), "ms/catch-up")
}
