package node

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestAnsweredRequests(t *testing.T) {
	var a answeredRequests
	now := time.Unix(1_700_000_000, 0)
	nonce := func(i int) []byte {
		b := make([]byte, 16)
		binary.BigEndian.PutUint64(b, uint64(i))
		return b
	}
	alice, bob := peer.ID("alice"), peer.ID("bob")
	exp := now.Add(time.Minute)

	if !a.first(alice, nonce(1), exp, now) {
		t.Fatal("a new request is not first")
	}
	if a.first(alice, nonce(1), exp, now.Add(time.Second)) {
		t.Fatal("a replay is first")
	}
	if a.first(alice, nonce(1), exp, exp) {
		t.Fatal("a replay at the expiry instant is first")
	}
	if !a.first(bob, nonce(1), exp, now) || !a.first(alice, nonce(2), exp, now) {
		t.Fatal("another requester or nonce is not first")
	}
	if !a.first(alice, nonce(1), exp.Add(time.Minute), exp.Add(time.Millisecond)) {
		t.Fatal("an expired request is not first")
	}
	if !a.first(alice, []byte("short"), exp, now) || !a.first(alice, []byte("short"), exp, now) {
		t.Fatal("a nonce of the wrong length is remembered")
	}
	if _, repeats := a.stats(); repeats != 2 {
		t.Fatalf("%d repeats counted, want 2", repeats)
	}

	// Full: expired entries go first; with none expired, the one closest to
	// expiry; never more than the bound.
	var b answeredRequests
	for i := range maxAnsweredRequests {
		b.first(alice, nonce(i), now.Add(time.Duration(i+1)*time.Second), now)
	}
	later := now.Add(10*time.Second + time.Millisecond) // entries 0..9 expired
	b.first(bob, nonce(0), later.Add(time.Hour), later)
	if n, _ := b.stats(); n != maxAnsweredRequests-10+1 {
		t.Fatalf("%d entries after pruning 10 expired, want %d", n, maxAnsweredRequests-9)
	}
	for i := range 20 {
		b.first(bob, nonce(i+1), later.Add(time.Hour), later)
	}
	if n, _ := b.stats(); n != maxAnsweredRequests {
		t.Fatalf("%d entries, want the bound %d", n, maxAnsweredRequests)
	}
	if !b.first(alice, nonce(10), later.Add(time.Hour), later) {
		t.Fatal("the entry closest to expiry was not the one evicted")
	}
	if b.first(alice, nonce(maxAnsweredRequests-1), later.Add(time.Hour), later) {
		t.Fatal("an entry far from expiry was evicted")
	}
}
