package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/client"
)

// TestCrashRecovery: a daemon killed with SIGKILL in the middle of traffic
// restarts with everything it had accepted (shown, or acknowledged as sent)
// intact, its store readable, and then catches up on what it missed.
func TestCrashRecovery(t *testing.T) {
	t.Parallel()
	ds := startDaemons(t, "A", "B")
	a, b := ds[0], ds[1]
	createGroup(t, a, "crash")
	b.mustRun(t, "group", "join", invite(t, a, "crash", b.id.PeerID))
	eventually(t, 20*time.Second, "both see two members", func() (bool, string) {
		ga, gb := a.groupInfo(t, "crash"), b.groupInfo(t, "crash")
		return len(ga.Members) == 2 && len(gb.Members) == 2 && ga.KeyID != "" && ga.KeyID == gb.KeyID, ""
	})

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ac, err := client.New(a.home)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := client.New(b.home)
	if err != nil {
		t.Fatal(err)
	}

	// What a showed: every message event it emitted with status ok.
	stream, err := ac.Events(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	shown := make(map[string]string)
	streamDone := make(chan struct{})
	go func() {
		defer close(streamDone)
		for {
			ev, err := stream.Next()
			if err != nil {
				return // the kill ends the stream
			}
			if ev.Message != nil && ev.Message.Status == "ok" {
				mu.Lock()
				shown[ev.Message.ID] = ev.Message.Text
				mu.Unlock()
			}
		}
	}()

	// Traffic both ways; a's acknowledged sends are accepted too.
	const fromB, fromA = 400, 150
	var wg sync.WaitGroup
	bSent := make(map[string]string)
	acked := make(map[string]string)
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := 0; i < fromB; i++ {
			text := fmt.Sprintf("b %d", i)
			m, err := bc.Send(ctx, "crash", text)
			if err != nil {
				t.Errorf("b send: %v", err)
				return
			}
			mu.Lock()
			bSent[m.ID] = text
			mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for i := 0; i < fromA; i++ {
			m, err := ac.Send(ctx, "crash", fmt.Sprintf("a %d", i))
			if err != nil {
				return // the kill: this send was never acknowledged
			}
			mu.Lock()
			acked[m.ID] = m.Text
			mu.Unlock()
		}
	}()
	eventually(t, 30*time.Second, "a has shown a good part of the traffic", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(shown) >= 150, fmt.Sprintf("%d shown", len(shown))
	})
	a.kill(t) // SIGKILL, mid-traffic
	<-streamDone
	wg.Wait()
	mu.Lock()
	accepted := make(map[string]string, len(shown)+len(acked))
	for id, text := range shown {
		accepted[id] = text
	}
	for id, text := range acked {
		accepted[id] = text
	}
	mu.Unlock()
	if len(acked) == fromA {
		t.Log("note: all of a's sends finished before the kill")
	}

	a2 := startDaemon(t, "A (after SIGKILL)", a.home)
	msgs := a2.messages(t, "crash")
	have := make(map[string]message, len(msgs))
	for _, m := range msgs {
		if _, dup := have[m.ID]; dup {
			t.Fatalf("message %s stored twice", m.ID)
		}
		have[m.ID] = m
	}
	for id, text := range accepted {
		if m, ok := have[id]; !ok || m.Status != "ok" || m.Text != text {
			t.Fatalf("after the crash, accepted message %s is %+v (want %q)", id, m, text)
		}
	}
	t.Logf("killed after %d shown and %d acknowledged sends; all %d present after restart", len(shown), len(acked), len(accepted))

	// It reconnects and catches up on what b sent while it was down.
	eventually(t, 60*time.Second, "a catches up on everything b sent", func() (bool, string) {
		got := make(map[string]bool)
		for _, m := range a2.messages(t, "crash") {
			if m.Status == "ok" {
				got[m.ID] = true
			}
		}
		missing := 0
		for id := range bSent {
			if !got[id] {
				missing++
			}
		}
		return missing == 0, fmt.Sprintf("%d of %d missing", missing, len(bSent))
	})
	// And it sends on, with sequence numbers that do not collide.
	a2.mustRun(t, "send", "crash", "back after the crash")
	eventually(t, 20*time.Second, "b reads a's message after the restart", func() (bool, string) {
		return readable(b.messages(t, "crash"), a.id.PeerID, "back after the crash"), ""
	})
}
