package node

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/internal/testkeys"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
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
// catch up on 10,000 to 40,000 messages (two senders) when it comes back:
// from its restart to all of them shown decrypted. Its store is on disk.
// Linear catch-up keeps ms/catch-up proportional to the messages missed.
//
//	go test -run '^$' -bench BenchmarkCatchUp -benchtime 3x ./node
func BenchmarkCatchUp(b *testing.B) {
	for _, missed := range []int{10000, 20000, 40000} {
		b.Run(fmt.Sprintf("missed=%d", missed), func(b *testing.B) { benchCatchUp(b, missed) })
	}
}

func benchCatchUp(b *testing.B, missed int) {
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
		eventually(b, 300*time.Second, "catch-up", func() bool { return c2.rec.readableCount(gid) == missed })
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

// BenchmarkPerMessageValidator is the full topic validator on a real node,
// per message from another member: exactly what gossip.JoinTopic's
// validator runs for a message it did not publish itself, that is
// gossip.DecodeInbound (decode the topic message, verify the signature,
// decode the envelope) then the group's policy (membership, the store
// lookup of the replay check). Every iteration must be accepted: the
// envelopes have distinct sequence numbers none of which is stored (the
// validator only reads; the reader loop stores), so the replay check
// always misses as it does for a new message.
//
//	go test -run '^$' -bench BenchmarkPerMessageValidator -benchtime 2000x ./node
func BenchmarkPerMessageValidator(b *testing.B) {
	verifier := new(wire.Verifier) // as a node has: each signer checked and expanded once
	memberKey, _ := testkeys.Peer(b, "p2pchat node bench", 1)
	a := newTestNode(b, "")
	m := newTestNodeWith(b, "", memberKey)
	connectAll(b, []*testNode{a, m})
	gid := formGroup(b, []*testNode{a, m})
	// A first message makes the member's sending key; once a shows it, a
	// is in its steady state (the member's key expanded and cached).
	first := m.send(gid, "warm-up")
	eventually(b, 10*time.Second, "a shows the warm-up message", func() bool {
		return a.rec.readable(gid)[first.ID()] == first.Text
	})
	var key *keyring.Key
	for _, k := range m.keys(gid) {
		if k.ID() == first.KeyID {
			key = k
		}
	}
	if key == nil {
		b.Fatal("the member does not hold its sending key")
	}
	ag := a.mustGroup(gid)
	heads := ag.State().Heads

	// pool distinct envelopes per size, used round-robin: enough that the
	// loop does not just re-read one cached record.
	const pool = 512
	for _, sz := range []struct {
		name string
		size int
	}{{"256B", 256}, {"4KiB", 4 << 10}} {
		b.Run(sz.name, func(b *testing.B) {
			text := strings.Repeat("m", sz.size)
			msgs := make([][]byte, pool)
			for i := range msgs {
				seq := uint64(1_000_000 + sz.size*pool + i) // far from anything m sent
				e, err := gossip.SealEnvelopeFrom(rand.Reader, memberKey, key, seq, first.Seq, heads, &wire.Content{Text: text, SentAtMs: time.Now().UnixMilli()})
				if err != nil {
					b.Fatal(err)
				}
				if msgs[i], err = gossip.EncodeTopicMessage(&wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: e.Signed}}); err != nil {
					b.Fatal(err)
				}
			}
			from := m.ID()
			b.SetBytes(int64(sz.size))
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				in, err := gossip.DecodeInbound(verifier, msgs[i%pool])
				if err != nil {
					b.Fatalf("DecodeInbound: %v", err)
				}
				if res := ag.policy(from, in); res != pubsub.ValidationAccept {
					b.Fatalf("validator returned %v, want accept", res)
				}
				i++
			}
		})
	}
}
