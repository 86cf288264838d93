package faults

import (
	"testing"
	"time"
)

// TestConnectedBeforeJoining: peers that connect (p2pchat connect) before
// the group exists, then form it, then all restart, find each other again
// and deliver what is sent after. This FAILS against the product as it is:
// the address book records a peer's listen addresses only when libp2p's
// identify completes while the peer is already a member of one of our
// groups (node/network.go addressBookLoop), and identify ran at connect
// time, before any group; so no member's address is ever stored, the fresh
// peerstores after the restart are empty, and the reconnect loop has nobody
// to dial. It runs only with -soak (outside CI) until that is fixed; see
// docs/reliability.md.
func TestConnectedBeforeJoining(t *testing.T) {
	gate(t)
	if !*soak {
		t.Skip("known product bug (addresses of peers connected before they were members are never stored, so they do not reconnect after a restart): run with -soak to see it fail")
	}
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
