package node

import (
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/keyring"
)

// TestKeyRequestSchedule drives the request schedule with a made-up clock:
// the first request waits KeyRequestDelay, later ones double up to
// KeyRequestMaxBackoff; wanting a key twice schedules it once; an answer is
// recognised by the nonce of one of the latest requests only; a key that
// arrived is asked for no more.
func TestKeyRequestSchedule(t *testing.T) {
	p := DefaultParams()
	s := newKeyRequestSchedule(p)
	t0 := time.Unix(1000, 0)
	id := keyring.ID{1}
	notHeld := func(keyring.ID) bool { return false }
	if !s.want(id, t0) || s.want(id, t0.Add(time.Millisecond)) {
		t.Fatal("want: a key must be scheduled once")
	}
	ids, _, next := s.due(t0.Add(p.KeyRequestDelay-time.Millisecond), notHeld)
	if len(ids) != 0 || !next.Equal(t0.Add(p.KeyRequestDelay)) {
		t.Fatalf("before KeyRequestDelay: due %v, next %v", ids, next)
	}
	now := t0.Add(p.KeyRequestDelay)
	var gaps []time.Duration
	for i := range 12 {
		ids, attempts, _ := s.due(now, notHeld)
		if len(ids) != 1 || attempts[0] != uint32(i) {
			t.Fatalf("request %d: due %v attempts %v", i, ids, attempts)
		}
		nextAt := s.sent(id, []byte{byte(i)}, now)
		gaps = append(gaps, nextAt.Sub(now))
		if again, _, _ := s.due(now, notHeld); len(again) != 0 {
			t.Fatalf("request %d due again at once", i)
		}
		now = nextAt
	}
	for i, g := range gaps {
		want := min(p.KeyRequestDelay<<(i+1), p.KeyRequestMaxBackoff)
		if g != want {
			t.Fatalf("gap after request %d: %v, want %v (all: %v)", i, g, want, gaps)
		}
	}
	// Nonces: the latest maxRememberedNonces count as answers, older do not.
	if !s.isAnswer(id, []byte{11}) || !s.isAnswer(id, []byte{byte(12 - maxRememberedNonces)}) {
		t.Fatal("an answer to a recent request was not recognised")
	}
	if s.isAnswer(id, []byte{byte(11 - maxRememberedNonces)}) || s.isAnswer(id, nil) || s.isAnswer(keyring.ID{2}, []byte{11}) {
		t.Fatal("a nonce of no recent request of ours, or of another key, counted as an answer")
	}
	// The key arrives: no more requests.
	ids, _, _ = s.due(now, func(keyring.ID) bool { return true })
	if len(ids) != 0 || s.attempts(id) != 0 {
		t.Fatalf("a held key is still asked for: %v", ids)
	}
	s.want(id, now)
	s.done(id)
	if ids, _, _ := s.due(now.Add(time.Hour), notHeld); len(ids) != 0 {
		t.Fatal("a key marked done is still asked for")
	}
}
