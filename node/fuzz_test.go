package node

import (
	"crypto/rand"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// FuzzParseInvite: invite codes come from other people; parsing must never
// panic, and a code that parses re-encodes to one that parses the same.
func FuzzParseInvite(f *testing.F) {
	priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	id, _ := peer.IDFromPrivateKey(priv)
	inv := Invite{Group: roster.GroupID{1, 2, 3}, Name: "seed", Inviter: peer.AddrInfo{ID: id, Addrs: []ma.Multiaddr{ma.StringCast("/ip4/192.0.2.1/tcp/4001")}}}
	f.Add(inv.String())
	f.Add("p2pchat:")
	f.Add("p2pchat:AAAA")
	f.Fuzz(func(t *testing.T, code string) {
		got, err := ParseInvite(code)
		if err != nil {
			return
		}
		again, err := ParseInvite(got.String())
		if err != nil {
			t.Fatalf("re-encoded invite does not parse: %v", err)
		}
		if again.Group != got.Group || again.Name != got.Name || again.Inviter.ID != got.Inviter.ID || len(again.Inviter.Addrs) != len(got.Inviter.Addrs) {
			t.Fatalf("invite changed on re-encoding: %+v vs %+v", got, again)
		}
	})
}

// FuzzParseSummary: history-sync summaries come from peers; parsing must
// never panic, and an accepted summary's ranges are sorted and disjoint.
func FuzzParseSummary(f *testing.F) {
	seed, _ := proto.Marshal(&wire.SyncRequest{GroupId: make([]byte, 32), Have: []*wire.SeqRanges{{Sender: []byte("a"), Bounds: []uint64{1, 5, 7, 9}}}})
	f.Add(seed)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var req wire.SyncRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		have, ok := parseSummary(req.Have)
		if !ok {
			return
		}
		for sender, rs := range have {
			for i, r := range rs {
				if r[0] > r[1] || (i > 0 && r[0] <= rs[i-1][1]) {
					t.Fatalf("sender %q: ranges %v not sorted and disjoint", sender, rs)
				}
				if !rs.contains(r[0]) || !rs.contains(r[1]) {
					t.Fatalf("sender %q: %v does not contain its own bounds", sender, r)
				}
			}
		}
	})
}
