package keyring_test

import (
	"fmt"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
)

// BenchmarkSendingKeyAfterJoins: a group grown one add at a time, each add
// deriving the next key from the last (what every member holds after n
// joins), then one SendingKey call — what each member pays after every
// roster or key change.
func BenchmarkSendingKeyAfterJoins(b *testing.B) {
	for _, n := range []int{100, 500, 1000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			ps := testPeers(b, n)
			group := groupID("bench")
			r := keyring.NewRing(group)
			k := mustGenerate(b, 1, group, ps[0], []roster.OpID{opID("create")}, ps[:1])
			r.Add(k)
			for i := 1; i < n; i++ {
				var err error
				k, err = keyring.Derive(k, opID(fmt.Sprint("add ", i)), ps[0], ps[:i+1])
				if err != nil {
					b.Fatal(err)
				}
				r.Add(k)
			}
			members := keyring.SortedRecipients(ps)
			height := func([]roster.OpID) (int, bool) { return 1, true }
			if got := r.SendingKey(members, height); got != k {
				b.Fatal("the last derived key is not the sending key")
			}
			b.ReportAllocs()
			for b.Loop() {
				if r.SendingKey(slicesClone(members), height) == nil {
					b.Fatal("no sending key")
				}
			}
		})
	}
}

func slicesClone(ps []peer.ID) []peer.ID { return append([]peer.ID(nil), ps...) }

// BenchmarkGrowGroup: a ring grown from 1 to n members, one add (one
// derived key) at a time, choosing the sending key after each — the key
// work one member does while a group of n forms.
func BenchmarkGrowGroup(b *testing.B) {
	for _, n := range []int{100, 500, 1000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			ps := testPeers(b, n)
			group := groupID("bench")
			first := mustGenerate(b, 1, group, ps[0], []roster.OpID{opID("create")}, ps[:1])
			chain := []*keyring.Key{first}
			for i := 1; i < n; i++ {
				k, err := keyring.Derive(chain[i-1], opID(fmt.Sprint("add ", i)), ps[0], ps[:i+1])
				if err != nil {
					b.Fatal(err)
				}
				chain = append(chain, k)
			}
			members := make([][]peer.ID, n)
			for i := range members {
				members[i] = keyring.SortedRecipients(ps[:i+1])
			}
			height := func([]roster.OpID) (int, bool) { return 1, true }
			b.ReportAllocs()
			for b.Loop() {
				r := keyring.NewRing(group)
				for i, k := range chain {
					r.Add(k)
					if r.SendingKey(members[i], height) != k {
						b.Fatal("the newest key is not the sending key")
					}
				}
			}
		})
	}
}
