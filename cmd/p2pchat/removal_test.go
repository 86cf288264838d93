package main

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/p2pchat/p2pchat/client"
)

// TestMessagesBeforeRemovalDelivered (issue #9, case 7): eight real daemons;
// the founder adds the seven others; the seven send 20 messages each, all at
// once, and the founder removes each the instant its last send returned
// success. Every message whose send succeeded — it was stored and queued
// before the removal existed anywhere — must reach the founder, the one
// member left, readable; no daemon may show a message of a member that the
// test did not send.
//
// The rule that makes this hold (node/finality.go, docs/protocol.md §4.5):
// the remaining members sign an ack AckDelay after the removal, marking the
// highest seq of the departed sender they hold; its envelopes up to the
// highest mark are accepted, on the topic and through sync, and held until
// every current member has marked it.
//
// The members removed after member k were members while k sent and when k
// was removed, but they may be removed themselves before k's bound is final
// at them (it takes AckDelay), so what they lack of k's messages is reported
// in the log, not failed; only the founder stays a member to the end.
func TestMessagesBeforeRemovalDelivered(t *testing.T) {
	t.Parallel()
	const (
		members = 7
		perSend = 20
	)
	start := time.Now()
	names := []string{"admin"}
	for i := 1; i <= members; i++ {
		names = append(names, fmt.Sprintf("m%d", i))
	}
	ds := startDaemons(t, names...)
	admin, ms := ds[0], ds[1:]
	name := map[string]string{} // peer ID -> daemon name, for the reports
	for _, d := range ds {
		name[d.id.PeerID] = d.name
	}

	gid := createGroup(t, admin, "removal")
	for _, m := range ms {
		m.mustRun(t, "group", "join", invite(t, admin, gid, m.id.PeerID))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	clients := make([]*client.Client, len(ds))
	for i, d := range ds {
		c, err := client.New(d.home)
		if err != nil {
			t.Fatal(err)
		}
		clients[i] = c
	}
	ac := clients[0]

	// Everyone agrees on the eight members and reads the founder's first
	// message, so every member holds the key and is on the topic before the
	// members send.
	want := map[string]string{admin.id.PeerID: "admin"}
	for _, m := range ms {
		want[m.id.PeerID] = "member"
	}
	eventually(t, 30*time.Second, "all eight agree on the members", func() (bool, string) {
		for i, c := range clients {
			g, err := c.Group(ctx, gid)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", ds[i].name, err)
			}
			got := map[string]string{}
			for _, x := range g.Members {
				got[x.PeerID] = x.Role
			}
			if !sameRoles(got, want) || g.Left {
				return false, fmt.Sprintf("%s: %+v", ds[i].name, g)
			}
		}
		return true, ""
	})
	const hello = "hello from the founder"
	if _, err := ac.Send(ctx, gid, hello); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "every member reads the founder's message and sends with its key", func() (bool, string) {
		g, err := ac.Group(ctx, gid)
		if err != nil || g.KeyID == "" {
			return false, fmt.Sprintf("admin: %+v %v", g, err)
		}
		for i, c := range clients[1:] {
			msgs, err := c.Messages(ctx, gid)
			if err != nil {
				return false, fmt.Sprintf("%s: %v", ms[i].name, err)
			}
			if !slices.ContainsFunc(msgs, func(m client.Message) bool { return m.Status == "ok" && m.Text == hello }) {
				return false, fmt.Sprintf("%s: %+v", ms[i].name, msgs)
			}
			mg, err := c.Group(ctx, gid)
			if err != nil || mg.KeyID != g.KeyID {
				return false, fmt.Sprintf("%s sends with key %q, the founder with %q (%v)", ms[i].name, mg.KeyID, g.KeyID, err)
			}
		}
		return true, ""
	})

	// The seven send at once; each is removed the moment its 20th send
	// returned.
	type removal struct {
		order      int       // 0 for the first of the founder's removes to return
		at, doneAt time.Time // its last send returned; the remove returned
	}
	var (
		mu       sync.Mutex
		sent     = map[string]string{}  // message ID -> text, every send that returned success
		removed  = map[string]removal{} // member -> its removal
		failures []string
		order    int
		wg       sync.WaitGroup
	)
	go1 := make(chan struct{})
	sendStart := time.Now()
	for i, m := range ms {
		mc := clients[i+1]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-go1
			for s := 1; s <= perSend; s++ {
				text := fmt.Sprintf("%s message %02d", m.name, s)
				msg, err := mc.Send(ctx, gid, text)
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s send %d: %v", m.name, s, err))
					mu.Unlock()
					return // it is not removed: the test fails anyway
				}
				if msg.Sender != m.id.PeerID || msg.Text != text || msg.Status != "ok" || !strings.HasPrefix(msg.ID, m.id.PeerID+"/") {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("%s send %d returned %+v", m.name, s, msg))
					mu.Unlock()
				}
				mu.Lock()
				sent[msg.ID] = text
				mu.Unlock()
			}
			last := time.Now()
			err := ac.Remove(ctx, gid, m.id.PeerID)
			done := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failures = append(failures, fmt.Sprintf("remove %s: %v", m.name, err))
				return
			}
			removed[m.id.PeerID] = removal{order: order, at: last, doneAt: done}
			order++
		}()
	}
	close(go1)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("sending or removing failed:\n%s", strings.Join(failures, "\n"))
	}
	if len(sent) != members*perSend {
		t.Fatalf("%d distinct message IDs for %d sends", len(sent), members*perSend)
	}
	var orderNames []string
	byOrder := make([]string, members)
	for p, r := range removed {
		byOrder[r.order] = p
	}
	for _, p := range byOrder {
		r := removed[p]
		orderNames = append(orderNames, fmt.Sprintf("%s (remove took %v)", name[p], r.doneAt.Sub(r.at).Round(time.Millisecond)))
	}
	t.Logf("%d messages sent and 7 members removed in %v; removal order: %s",
		len(sent), time.Since(sendStart).Round(time.Millisecond), strings.Join(orderNames, ", "))

	// The founder is alone in the group, and every removed member knows it
	// is out.
	eventually(t, 30*time.Second, "the founder is the only member and every member knows it is out", func() (bool, string) {
		g, err := ac.Group(ctx, gid)
		if err != nil || len(g.Members) != 1 || g.Members[0].PeerID != admin.id.PeerID {
			return false, fmt.Sprintf("admin: %+v %v", g, err)
		}
		for i, c := range clients[1:] {
			g, err := c.Group(ctx, gid)
			if err != nil || !g.Left {
				return false, fmt.Sprintf("%s: %+v %v", ms[i].name, g, err)
			}
		}
		return true, ""
	})

	// missing lists, by sender, the seqs of the accepted messages of the
	// given senders that msgs does not hold readable with the text sent.
	missing := func(msgs []message, senders map[string]bool) map[string][]uint64 {
		ok := map[string]bool{}
		for _, m := range msgs {
			if m.Status == "ok" && sent[m.ID] == m.Text {
				ok[m.ID] = true
			}
		}
		out := map[string][]uint64{}
		for id := range sent {
			sender, seq := splitID(t, id)
			if senders[sender] && !ok[id] {
				out[sender] = append(out[sender], seq)
			}
		}
		for _, s := range out {
			slices.Sort(s)
		}
		return out
	}
	count := func(miss map[string][]uint64) (n int) {
		for _, s := range miss {
			n += len(s)
		}
		return n
	}
	report := func(miss map[string][]uint64) string {
		var parts []string
		for sender, seqs := range miss {
			parts = append(parts, fmt.Sprintf("%s seq %v", name[sender], seqs))
		}
		slices.Sort(parts)
		return strings.Join(parts, "; ")
	}
	history := func(i int) []message {
		msgs, err := clients[i].Messages(ctx, gid)
		if err != nil {
			t.Fatalf("%s: messages: %v", ds[i].name, err)
		}
		out := make([]message, len(msgs))
		for j, m := range msgs {
			out[j] = message{ID: m.ID, Sender: m.Sender, SentAt: m.SentAt, Text: m.Text, Status: m.Status}
		}
		return out
	}
	everyMember := map[string]bool{}
	for _, m := range ms {
		everyMember[m.id.PeerID] = true
	}

	// Every accepted message reaches the founder, readable.
	waitStart := time.Now()
	deadline := waitStart.Add(30 * time.Second)
	for {
		miss := missing(history(0), everyMember)
		if len(miss) == 0 {
			t.Logf("the founder reads all %d accepted messages %v after the last removal", len(sent), time.Since(waitStart).Round(time.Millisecond))
			break
		}
		if time.Now().After(deadline) {
			// Where each missing one is: its status on every daemon that
			// stores it (the founder included).
			hist := make([]map[string]string, len(ds))
			for i := range ds {
				hist[i] = map[string]string{}
				for _, m := range history(i) {
					hist[i][m.ID] = m.Status
				}
			}
			var where []string
			for sender, seqs := range miss {
				for _, seq := range seqs {
					id := sender + "/" + strconv.FormatUint(seq, 10)
					var on []string
					for i, d := range ds {
						if st, ok := hist[i][id]; ok {
							on = append(on, d.name+" "+st)
						}
					}
					where = append(where, fmt.Sprintf("(%s, %d): %s", name[sender], seq, strings.Join(on, ", ")))
				}
			}
			slices.Sort(where)
			t.Errorf("the founder lacks %d of %d accepted messages %v after the last removal: %s\nwhere each is stored, with its status:\n  %s",
				count(miss), len(sent), time.Since(waitStart).Round(time.Millisecond), report(miss), strings.Join(where, "\n  "))
			break
		}
		time.Sleep(150 * time.Millisecond)
	}

	// Each member removed after others: what it lacks of theirs is logged
	// (it may be removed before their bound was final at it).
	for i, m := range ms {
		earlier := map[string]bool{}
		for q, r := range removed {
			if r.order < removed[m.id.PeerID].order {
				earlier[q] = true
			}
		}
		msgs := history(i + 1)
		if miss := missing(msgs, earlier); len(miss) > 0 {
			waiting := map[string][]uint64{}
			for _, x := range msgs {
				if x.Status == "waiting_for_key" && earlier[x.Sender] {
					_, seq := splitID(t, x.ID)
					waiting[x.Sender] = append(waiting[x.Sender], seq)
				}
			}
			for _, s := range waiting {
				slices.Sort(s)
			}
			t.Logf("%s (removal %d of 7) lacks %d messages of members removed before it: %s (of which stored, waiting for the key: %s)",
				m.name, removed[m.id.PeerID].order+1, count(miss), report(miss), report(waiting))
		}
	}

	// No daemon shows a member's message the test did not send, or with
	// other text, and none shows one twice.
	for i, d := range ds {
		seen := map[string]bool{}
		for _, m := range history(i) {
			if seen[m.ID] {
				t.Errorf("%s shows message %s twice", d.name, m.ID)
			}
			seen[m.ID] = true
			if !everyMember[m.Sender] {
				continue
			}
			text, ok := sent[m.ID]
			switch {
			case !ok:
				t.Errorf("%s shows a message of %s that the test did not send: %+v", d.name, name[m.Sender], m)
			case m.Status == "ok" && m.Text != text:
				t.Errorf("%s shows message %s as %q; it was sent as %q", d.name, m.ID, m.Text, text)
			}
		}
	}
	// The CLI shows the founder the same (parseMessages checks each line).
	if !t.Failed() {
		if miss := missing(admin.messages(t, gid), everyMember); len(miss) > 0 {
			t.Errorf("messages --json on the founder lacks %d accepted messages: %s", count(miss), report(miss))
		}
	}
	t.Logf("test took %v", time.Since(start).Round(time.Millisecond))
}

// splitID splits a message ID, SENDER/SEQ.
func splitID(t *testing.T, id string) (string, uint64) {
	t.Helper()
	i := strings.LastIndex(id, "/")
	seq, err := strconv.ParseUint(id[i+1:], 10, 64)
	if i < 0 || err != nil {
		t.Fatalf("message ID %q is not SENDER/SEQ", id)
	}
	return id[:i], seq
}
