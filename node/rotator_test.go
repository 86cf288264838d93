package node

import (
	"bytes"
	"crypto/rand"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/store"
	"github.com/p2pchat/p2pchat/wire"
)

// TestDyingRotatorReplaced: the founder, the group's only admin, removes a
// member and dies before it makes or pushes the new key (its modified node
// only publishes the remove). The remaining plain members take over in
// turn: they converge on one new key, made by one of them, that the removed
// member never gets. With only admins as fallback rotators the group stayed
// without a key.
func TestDyingRotatorReplaced(t *testing.T) {
	nodes := newTestNodes(t, 4)
	x, a, b, r := nodes[0], nodes[1], nodes[2], nodes[3]
	gid := formGroup(t, nodes)
	before := a.mustGroup(gid).SendingKeyID()
	heads := x.rosterHeads(gid)
	remove := must(roster.NewRemove(x.Node.priv, gid, heads, r.ID()))
	sp := impersonate(t, x, gid, []*testNode{a, b, r})
	publishOp(sp, remove)

	k := waitSameSendingKey(t, []*testNode{a, b}, gid, before)
	key := keyByID(a.keys(gid), k)
	if key == nil {
		t.Fatal("a sends with a key it does not hold")
	}
	if c := key.Meta.Creator; c != a.ID() && c != b.ID() {
		t.Fatalf("the new key was made by %s, not by a remaining member", c.ShortString())
	}
	if key.Meta.IsRecipient(r.ID()) || r.mustGroup(gid).HasKey(k) {
		t.Fatal("the removed member got the new key")
	}
	if st := a.mustGroup(gid).State(); st.IsMember(r.ID()) || !st.IsMember(b.ID()) {
		t.Fatalf("membership after the removal: %v", st.MemberIDs())
	}
}

// TestDyingRotatorComesBack: after the remaining members replaced the dead
// remover's rotation, the remover starts again from its home: it learns
// the removal it published, takes the key the others converged on, and
// nobody — the remover included — makes another key. A second rotation
// here would split senders across two keys for nothing. Two deaths: before
// the remove reached its own store (the others had it from the topic), and
// after (it was durable before it was published, as Remove makes it).
func TestDyingRotatorComesBack(t *testing.T) {
	for _, home := range []struct {
		name                  string
		removeStored, keyMade bool
	}{
		{"remove not stored at home", false, false},
		{"remove stored at home", true, false},
		// It also made its key for the removal and died before sending it:
		// a key for the same membership, made with an ID below the one the
		// others converged on, so a tie of roster heights would switch
		// everyone to it.
		{"remove and the remover's own key stored at home", true, true},
	} {
		t.Run(home.name, func(t *testing.T) { testDyingRotatorComesBack(t, home.removeStored, home.keyMade) })
	}
}

func testDyingRotatorComesBack(t *testing.T, removeStored, keyMade bool) {
	xDir := t.TempDir()
	x := newTestNode(t, xDir)
	rest := []*testNode{newTestNode(t, ""), newTestNode(t, ""), newTestNode(t, "")}
	nodes := append([]*testNode{x}, rest...)
	connectAll(t, nodes)
	a, b, r := rest[0], rest[1], rest[2]
	gid := formGroup(t, nodes)
	before := a.mustGroup(gid).SendingKeyID()
	remove := must(roster.NewRemove(x.Node.priv, gid, x.rosterHeads(gid), r.ID()))
	sp := impersonate(t, x, gid, []*testNode{a, b, r})
	publishOp(sp, remove)
	k := waitSameSendingKey(t, []*testNode{a, b}, gid, before)
	generated := a.Stats().KeysGenerated + b.Stats().KeysGenerated
	if err := sp.host.Close(); err != nil {
		t.Fatal(err)
	}
	if removeStored {
		s, err := store.Open(filepath.Join(xDir, "data"))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.PutOp(gid, remove.ID, remove.Marshal()); err != nil {
			t.Fatal(err)
		}
		if keyMade {
			members := a.mustGroup(gid).State().MemberIDs()
			var own *keyring.Key
			for own == nil || bytes.Compare(own.Meta.KeyID[:], k[:]) >= 0 {
				var err error
				if own, err = keyring.Generate(rand.Reader, gid, x.ID(), []roster.OpID{remove.ID}, members); err != nil {
					t.Fatal(err)
				}
			}
			rec, err := proto.Marshal(&wire.KeyRecord{Secret: own.Secret(), Meta: own.Meta.ToWire()})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.PutKey(gid, own.ID(), rec); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}

	back := newTestNodeWith(t, xDir, x.Node.priv)
	connectAll(t, []*testNode{back, a, b})
	eventually(t, 15*time.Second, "the remover learns its removal and takes the group's key", func() bool {
		g := back.mustGroup(gid)
		return !g.State().IsMember(r.ID()) && g.SendingKeyID() == k
	})
	// Past every member's turn to rotate (RotationGrace per rank).
	time.Sleep(5 * testParams.RotationGrace)
	if got := a.Stats().KeysGenerated + b.Stats().KeysGenerated + back.Stats().KeysGenerated; got != generated {
		t.Fatalf("%d more keys made after the remover came back", got-generated)
	}
	for _, n := range []*testNode{back, a, b} {
		if got := n.mustGroup(gid).SendingKeyID(); got != k {
			t.Fatalf("%s sends with %s, want the converged key %s", n.ID().ShortString(), got, k)
		}
	}
	m := back.send(gid, "back")
	eventually(t, 10*time.Second, "the others read the remover's message", func() bool {
		return a.rec.readable(gid)[m.ID()] == "back" && b.rec.readable(gid)[m.ID()] == "back"
	})
}
