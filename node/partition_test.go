package node

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/roster"
)

// TestRemovedAcrossPartitionLearnsIt: a member removed while it was cut
// off learns its removal once it reaches a member again: a roster fetch
// from a member that counted it out returns the ops that removed it (and
// their causal past, nothing after), it applies them, counts itself out,
// and its sends fail with "not a member". What followed the removal is not
// served to it.
func TestRemovedAcrossPartitionLearnsIt(t *testing.T) {
	nodes := newTestNodes(t, 3)
	x, a, r := nodes[0], nodes[1], nodes[2]
	gid := formGroup(t, nodes)
	partition([]*testNode{x, a}, []*testNode{r})
	removeAndRekey(t, x, gid, r.ID(), []*testNode{x, a})
	// Something that follows the removal, which r must not be served.
	x.send(gid, "after the removal")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := x.mustGroup(gid).Add(ctx, a.ID(), roster.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	laterOp := x.rosterHeads(gid)[0]
	heal(t, nodes)

	// What x serves r now that it counts r out: the removal and its past,
	// nothing that followed.
	served, ok := x.Node.handleRosterRequest(r.ID(), gid, nil)
	if !ok {
		t.Fatal("x refused r's roster fetch: a member removed while away could never learn it")
	}
	removal := false
	for _, s := range served {
		op, err := roster.Decode(nil, s)
		if err != nil {
			t.Fatal(err)
		}
		if op.ID == laterOp {
			t.Fatal("x served r an op that followed its removal")
		}
		if op.Kind == roster.KindRemove && op.Member == r.ID() {
			removal = true
		}
	}
	if !removal {
		t.Fatal("x did not serve r the op that removed it")
	}
	// Once it reaches x again, r learns it (its own fetch on rejoining the
	// topic, or the ops gossip still carries), and its sends fail.
	rg := r.mustGroup(gid)
	eventually(t, 15*time.Second, "r counts itself out", func() bool { return rg.hasLeft() })
	if _, err := rg.Send(ctx, "am I still in?"); !errors.Is(err, ErrNotMember) {
		t.Fatalf("r's send after learning its removal: %v, want ErrNotMember", err)
	}
	if a.mustGroup(gid).State().IsMember(r.ID()) {
		t.Fatal("r is a member again")
	}
}
