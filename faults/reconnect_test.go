package faults

import (
	"testing"
	"time"
)

// TestConnectedBeforeJoining: peers that connect (p2pchat connect) before
// the group exists, then form it, then all restart, find each other again
// and deliver what is sent after. This failed before commit 967fd03: the
// address book recorded a peer's listen addresses only when libp2p's
// identify completed while the peer was already a member of one of our
// groups, and identify had run at connect time, before any group; so no
// member's address was stored, the fresh peerstores after the restart were
// empty and the reconnect loop had nobody to dial (bug 1 in
// docs/reliability.md).
func TestConnectedBeforeJoining(t *testing.T) {
	gate(t)
	t.Parallel()
	tp := newTopo(t, 3)
	a := newDaemon(t, tp, 1, "A", "", nil)
	b := newDaemon(t, tp, 2, "B", "", nil)
	c := newDaemon(t, tp, 3, "C", "", nil)
	ds := []*daemon{a, b, c}
	connectAll(ds...) // before the group: the flow a user may well follow
	gid := formConnected(t, "connect-first", ds...)
	l := &ledger{gid: gid}
	burst(l, "before", 2, ds...)
	converge(t, 30*time.Second, l, ds, everyone)
	for _, d := range ds {
		d.stop()
	}
	for _, d := range ds {
		d.start()
	}
	burst(l, "after", 2, ds...)
	// Three reconnect intervals (15 s each).
	took, _ := converge(t, 50*time.Second, l, ds, everyone)
	report(t, audit(t, "connected before joining, all restart", l, ds, everyone, nobody, took))
}
