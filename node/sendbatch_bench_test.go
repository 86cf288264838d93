package node

import (
	"context"
	"testing"
	"time"
)

// BenchmarkSendConcurrent: many goroutines sending into one group on an
// on-disk store (the daemon's configuration): several API clients, or a
// program embedding the node. Each Send returns only once its message is
// durable.
func BenchmarkSendConcurrent(b *testing.B) {
	for _, senders := range []int{1, 8} {
		b.Run(map[int]string{1: "senders=1", 8: "senders=8"}[senders], func(b *testing.B) {
			a := newTestNode(b, b.TempDir())
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			g, err := a.CreateGroup(ctx, "concurrent sends")
			if err != nil {
				b.Fatal(err)
			}
			b.SetParallelism(senders) // × GOMAXPROCS goroutines
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := g.Send(ctx, "a message of some thirty bytes"); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
