package node

import (
	"crypto/rand"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"

	"github.com/p2pchat/p2pchat/roster"
)

// TestMixedIngestBatchFetchesFromEachForwarder: envelopes forwarded by
// different peers that the ingest loop takes in one batch are stored
// together, but a stale-roster fetch goes to the forwarder of the envelope
// that named the unknown heads, not to whoever forwarded the batch's first
// envelope.
func TestMixedIngestBatchFetchesFromEachForwarder(t *testing.T) {
	// x syncs with a peer (and so fetches its roster) when it joins the
	// topic, and not again during the test.
	params := testParams
	params.MeshSettle, params.SyncInterval = time.Hour, time.Hour
	x := newTestNodeParams(t, "", nil, params)
	m := newTestNode(t, "")
	nodes := []*testNode{x, m}
	connectAll(t, nodes)
	gid := formGroup(t, nodes)
	privA, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	privB, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	spA, logA := spyServing(t, privA, gid, []*testNode{x}, nil)
	spB, logB := spyServing(t, privB, gid, []*testNode{x}, nil)
	eventually(t, 10*time.Second, "x's join syncs with A and B fetched their rosters", func() bool {
		return logA.rosterFrom(x.ID()) > 0 && logB.rosterFrom(x.ID()) > 0
	})
	baseA, baseB := logA.rosterFrom(x.ID()), logB.rosterFrom(x.ID())

	mg := m.mustGroup(gid)
	key := keyByID(m.keys(gid), mg.SendingKeyID())
	if key == nil {
		t.Fatal("m holds no sending key")
	}
	heads := m.rosterHeads(gid)
	unknown := []roster.OpID{{0xde, 0xad}}
	e1 := sealAs(t, m.Node.priv, key, 1001, 0, heads, "first batch")
	e2 := sealAs(t, m.Node.priv, key, 1002, 0, heads, "second batch, from A")
	e3 := sealAs(t, m.Node.priv, key, 1003, 0, unknown, "second batch, from B, naming unknown heads")

	// Hold ingest so that e2 and e3 queue up behind e1 and are taken in
	// one batch.
	xg := x.mustGroup(gid)
	xg.ingestMu.Lock()
	xg.ingestQ <- heldEnvelope{from: spA.host.ID(), env: e1}
	eventually(t, 10*time.Second, "the ingest loop took the first envelope", func() bool { return len(xg.ingestQ) == 0 })
	xg.ingestQ <- heldEnvelope{from: spA.host.ID(), env: e2}
	xg.ingestQ <- heldEnvelope{from: spB.host.ID(), env: e3}
	xg.ingestMu.Unlock()

	eventually(t, 10*time.Second, "x stored the three envelopes", func() bool {
		xg.mu.Lock()
		defer xg.mu.Unlock()
		return xg.hasMessageLocked(m.ID(), 1001) && xg.hasMessageLocked(m.ID(), 1002) && xg.hasMessageLocked(m.ID(), 1003)
	})
	eventually(t, 10*time.Second, "x asked B, the forwarder of the envelope with unknown heads, for the roster", func() bool {
		return logB.rosterFrom(x.ID()) > baseB
	})
	if n := logA.rosterFrom(x.ID()) - baseA; n > 0 {
		t.Fatalf("x asked A, whose envelopes named known heads, for the roster %d times", n)
	}
}

// TestHistoryShowsSenderOrderAfterDisorder: a member's messages stored out
// of order (seq 3, then 1, then 2) come back from History, and again after
// a restart, in sequence order.
func TestHistoryShowsSenderOrderAfterDisorder(t *testing.T) {
	x := newTestNode(t, t.TempDir())
	m := newTestNode(t, "")
	nodes := []*testNode{x, m}
	connectAll(t, nodes)
	gid := formGroup(t, nodes)
	mg := m.mustGroup(gid)
	key := keyByID(m.keys(gid), mg.SendingKeyID())
	heads := m.rosterHeads(gid)
	xg := x.mustGroup(gid)
	for _, seq := range []uint64{3, 1, 2} {
		xg.onEnvelope(m.ID(), sealAs(t, m.Node.priv, key, seq, 1, heads, fmt.Sprint("message ", seq)))
	}
	order := func(g *Group) []uint64 {
		h, err := g.History()
		if err != nil {
			t.Fatal(err)
		}
		var seqs []uint64
		for _, msg := range h {
			if msg.Sender == m.ID() {
				seqs = append(seqs, msg.Seq)
			}
		}
		return seqs
	}
	if got := order(xg); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("history lists m's messages as %v, want [1 2 3]", got)
	}
	dir := x.dir
	if err := x.Close(); err != nil {
		t.Fatal(err)
	}
	x2 := newTestNode(t, dir)
	if got := order(x2.mustGroup(gid)); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Fatalf("after a restart, history lists m's messages as %v, want [1 2 3]", got)
	}
}
