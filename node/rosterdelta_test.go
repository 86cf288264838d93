package node

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/roster"
)

// TestRosterFetchSendsOnlyWhatIsMissing: a member that names its roster
// heads is served only the ops after them — nothing when it is up to date,
// the one new op after one change — instead of the whole roster at every
// join (what made a join cost megabytes in a large group); a member naming
// a head the responder lacks, or none, is served everything.
func TestRosterFetchSendsOnlyWhatIsMissing(t *testing.T) {
	nodes := newTestNodes(t, 2)
	a, b := nodes[0], nodes[1]
	gid := formGroup(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ag, bg := a.mustGroup(gid), b.mustGroup(gid)
	for range 10 { // a roster worth skipping
		priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
		id, _ := peer.IDFromPrivateKey(priv)
		if err := ag.Add(ctx, id, roster.RoleMember); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "b has a's roster", func() bool { return bg.State().Digest == ag.State().Digest })
	bg.mu.Lock()
	heads, total := bg.roster.Heads(), bg.roster.Len()
	bg.mu.Unlock()

	served, err := b.streams.FetchRoster(ctx, a.ID(), gid, heads)
	if err != nil || len(served) != 0 {
		t.Fatalf("an up-to-date member was served %d ops (%v)", len(served), err)
	}
	priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	id, _ := peer.IDFromPrivateKey(priv)
	if err := ag.Add(ctx, id, roster.RoleMember); err != nil {
		t.Fatal(err)
	}
	served, err = b.streams.FetchRoster(ctx, a.ID(), gid, heads)
	if err != nil || len(served) != 1 {
		t.Fatalf("one change later, served %d ops (%v), want the 1 new op", len(served), err)
	}
	if op, err := roster.Decode(nil, served[0]); err != nil || op.Member != id {
		t.Fatalf("served %v (%v), want the new add", op, err)
	}
	unknown := roster.OpID{1, 2, 3}
	for name, known := range map[string][]roster.OpID{"no heads": nil, "a head a lacks": append(heads, unknown)} {
		served, err := b.streams.FetchRoster(ctx, a.ID(), gid, known)
		if err != nil || len(served) != total+1 {
			t.Fatalf("%s: served %d ops (%v), want all %d", name, len(served), err, total+1)
		}
	}
}
