package node

import (
	"testing"

	"github.com/p2pchat/p2pchat/roster"
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
