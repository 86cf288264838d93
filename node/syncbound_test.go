package node

import (
	"context"
	"crypto/rand"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// hostileResponder is a peer outside p2pchat that subscribes to a group's
// topic (so members sync with it) and answers every history request with
// validly signed envelopes of its own, always claiming there are more.
type hostileResponder struct {
	id                      peer.ID
	rosterServed, syncRound atomic.Int64

	mu     sync.Mutex
	rounds map[peer.ID]int // history rounds served, by requester
}

func (hr *hostileResponder) roundsFrom(p peer.ID) int {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return hr.rounds[p]
}

func newHostileResponder(t *testing.T, identity crypto.PrivKey, gid roster.GroupID, members ...*testNode) *hostileResponder {
	t.Helper()
	h, err := libp2p.New(libp2p.Identity(identity), libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ps, err := pubsub.NewGossipSub(ctx, h, gossip.PubSubOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	hr := &hostileResponder{id: h.ID(), rounds: make(map[peer.ID]int)}
	key, err := keyring.Generate(rand.Reader, gid, h.ID(), []roster.OpID{gid}, []peer.ID{h.ID()})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seq := uint64(0)
	streams := gossip.NewStreams(h, gossip.Handlers{
		Roster: func(peer.ID, [32]byte, []roster.OpID) ([]*wire.Signed, bool) {
			hr.rosterServed.Add(1)
			return nil, false
		},
		Sync: func(from peer.ID, _ *wire.SyncRequest) (*wire.SyncResponse, bool) {
			hr.syncRound.Add(1)
			hr.mu.Lock()
			hr.rounds[from]++
			hr.mu.Unlock()
			mu.Lock()
			defer mu.Unlock()
			resp := &wire.SyncResponse{More: true}
			for range 64 {
				seq++
				e, err := gossip.SealEnvelopeFrom(rand.Reader, identity, key, seq, 0, []roster.OpID{gid}, &wire.Content{Text: "junk", SentAtMs: time.Now().UnixMilli()})
				if err != nil {
					return nil, false
				}
				resp.Envelopes = append(resp.Envelopes, e.Signed)
			}
			return resp, true
		},
	})
	topic, err := ps.Join(gossip.TopicName(gid))
	if err != nil {
		t.Fatal(err)
	}
	sub, err := topic.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sub.Cancel()
		_ = topic.Close()
		streams.Close()
		cancel()
		_ = h.Close()
	})
	cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer ccancel()
	for _, m := range members {
		if err := h.Connect(cctx, addrInfo(m.Node)); err != nil {
			t.Fatal(err)
		}
	}
	return hr
}

// syncDone reports whether member has no history sync with p running.
func syncDone(g *Group, p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.syncing[p]
}

// TestStrangerSyncAnswersBounded: a peer that was never a member subscribes
// to the topic and answers every sync with its own envelopes marked "more".
// The member fetches its roster (which could have named it) and then asks it
// for no history at all. Before: up to 1000 rounds (2.6 GB in 15 s).
func TestStrangerSyncAnswersBounded(t *testing.T) {
	nodes := newTestNodes(t, 2)
	gid := formGroup(t, nodes)
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hr := newHostileResponder(t, priv, gid, nodes...)
	g := nodes[0].mustGroup(gid)
	eventually(t, 10*time.Second, "a roster fetch from the stranger, then the sync over", func() bool {
		return hr.rosterServed.Load() > 0 && syncDone(g, hr.id)
	})
	if n := hr.syncRound.Load(); n != 0 {
		t.Fatalf("member asked a never-member for history %d times, want 0", n)
	}
}

// TestRemovedMemberSyncAnswersBounded: a removed member (named by the
// roster, so it is synced from) answers with envelopes it signed after its
// removal, always marked "more". None is storable, so the sync ends after
// one round.
func TestRemovedMemberSyncAnswersBounded(t *testing.T) {
	priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	admin := newTestNode(t, "")
	other := newTestNode(t, "")
	victim := newTestNodeWith(t, "", priv)
	nodes := []*testNode{admin, other, victim}
	connectAll(t, nodes)
	gid := formGroup(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := admin.mustGroup(gid).Remove(ctx, victim.ID()); err != nil {
		t.Fatal(err)
	}
	g := other.mustGroup(gid)
	eventually(t, 10*time.Second, "the removal at the other member", func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return !g.roster.IsMember(victim.ID())
	})
	victim.Close()
	hr := newHostileResponder(t, priv, gid, admin, other)
	// Before: the sync went on for up to 1000 rounds or a minute, so it
	// was still running when this deadline passed.
	eventually(t, 10*time.Second, "a history round with the removed member, then the sync over", func() bool {
		return hr.roundsFrom(other.ID()) > 0 && syncDone(g, hr.id)
	})
	// A later sync (MeshSettle, periodic) may start another one-round sync.
	if n := hr.roundsFrom(other.ID()); n > 2 {
		t.Fatalf("removed member was asked for history %d times by one member, want one round per sync", n)
	}
	for _, e := range other.rec.shown(gid) {
		if e.Sender == victim.ID() && e.Text == "junk" {
			t.Fatalf("a removed member's post-removal envelope was shown: %+v", e)
		}
	}
}
