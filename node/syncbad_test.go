package node

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/wire"
)

// TestSyncBatchWithOneBadEnvelope: a history answer that carries one
// envelope whose signature does not verify still stores the others of the
// batch, and the sync with that responder ends after that round: it is not
// asked again, although it claims there is more.
func TestSyncBatchWithOneBadEnvelope(t *testing.T) {
	a, b := newTestNode(t, ""), newTestNode(t, "")
	connectAll(t, []*testNode{a, b})
	gid := formGroup(t, []*testNode{a, b})
	partition([]*testNode{a}, []*testNode{b})
	eventually(t, 10*time.Second, "a has no topic peers", func() bool { return len(a.mustGroup(gid).Peers()) == 0 })
	var sent []*Message
	for i := range 3 {
		sent = append(sent, a.send(gid, fmt.Sprintf("while apart %d", i)))
	}
	var batch []*wire.Signed
	for _, m := range sent {
		e, err := a.mustGroup(gid).storedEnvelope(m.Sender, m.Seq)
		if err != nil {
			t.Fatal(err)
		}
		batch = append(batch, proto.Clone(e.Signed).(*wire.Signed))
	}
	bad := sent[1]
	batch[1].Signature[7] ^= 1 // the middle one no longer verifies

	// The responder is a bare host that answers every history request with
	// the batch, always claiming more.
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	var requests atomic.Int64
	streams := gossip.NewStreams(h, gossip.Handlers{
		Sync: func(peer.ID, *wire.SyncRequest) (*wire.SyncResponse, bool) {
			requests.Add(1)
			return &wire.SyncResponse{Envelopes: batch, More: true}, true
		},
	})
	t.Cleanup(func() {
		streams.Close()
		_ = h.Close()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.Connect(ctx, addrInfo(b.Node)); err != nil {
		t.Fatal(err)
	}

	bg := b.mustGroup(gid)
	if err := bg.syncHistory(ctx, h.ID()); err == nil {
		t.Fatal("syncHistory reported no error for a batch with a forged envelope")
	}
	if n := requests.Load(); n != 1 {
		t.Fatalf("the responder was asked %d times in one sync, want 1", n)
	}
	for _, m := range sent {
		_, err := bg.n.store.Message(bg.id, []byte(m.Sender), m.Seq)
		if got, want := err == nil, m.Seq != bad.Seq; got != want {
			t.Errorf("message %d stored = %v, want %v", m.Seq, got, want)
		}
	}
	eventually(t, 10*time.Second, "b shows the good envelopes", func() bool {
		got := b.rec.readable(gid)
		return got[sent[0].ID()] == sent[0].Text && got[sent[2].ID()] == sent[2].Text
	})
	if slices.ContainsFunc(b.rec.shown(gid), func(m *Message) bool { return m.ID() == bad.ID() }) {
		t.Fatal("b shows the forged envelope")
	}
}
