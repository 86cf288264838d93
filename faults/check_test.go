package faults

// Groups, the ledger of accepted sends and the invariants checked against
// what each daemon shows.

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// formGroup: ds[0] founds a group and invites the others, who join with
// the code (the join dials the inviter); then everyone connects to everyone.
// It returns when all rosters and sending keys agree. (The other order,
// connect first, is TestConnectedBeforeJoining.)
func formGroup(t *testing.T, name string, ds ...*daemon) string {
	t.Helper()
	gid := createAndJoin(t, name, ds...)
	connectAll(ds...)
	waitRoster(t, 60*time.Second, gid, ds, ds)
	return gid
}

// formConnected is formGroup for daemons the caller connected already.
func formConnected(t *testing.T, name string, ds ...*daemon) string {
	t.Helper()
	gid := createAndJoin(t, name, ds...)
	waitRoster(t, 60*time.Second, gid, ds, ds)
	return gid
}

func createAndJoin(t *testing.T, name string, ds ...*daemon) string {
	t.Helper()
	a := ds[0]
	var out struct {
		GroupID string `json:"group_id"`
	}
	if err := json.Unmarshal([]byte(a.mustRun("group", "create", name, "--json")), &out); err != nil || len(out.GroupID) != 64 {
		t.Fatalf("group create: %v %q", err, out.GroupID)
	}
	gid := out.GroupID
	for _, d := range ds[1:] {
		var inv struct {
			Invite string `json:"invite"`
		}
		if err := json.Unmarshal([]byte(a.mustRun("group", "invite", gid, d.id.PeerID, "--json")), &inv); err != nil {
			t.Fatal(err)
		}
		d.mustRun("group", "join", inv.Invite)
	}
	return gid
}

// waitRoster waits until every daemon in readers lists exactly members and
// all send with one key; it returns that key and the time it took.
// Each roster read is shown to rms (see removal.watch).
func waitRoster(t *testing.T, timeout time.Duration, gid string, readers, members []*daemon, rms ...*removal) (string, time.Duration) {
	t.Helper()
	want := make([]string, 0, len(members))
	for _, m := range members {
		want = append(want, m.id.PeerID)
	}
	sort.Strings(want)
	var key string
	took := eventually(t, timeout, fmt.Sprintf("%d daemons agree on %d members and one key", len(readers), len(members)), func() (bool, string) {
		key = ""
		for _, d := range readers {
			g := d.groupInfo(gid)
			for _, rm := range rms {
				rm.watch(d, g)
			}
			var got []string
			for _, m := range g.Members {
				got = append(got, m.PeerID)
			}
			sort.Strings(got)
			if !slices.Equal(got, want) {
				return false, fmt.Sprintf("%s lists %d members %v, want %v", d.name, len(got), short(got), short(want))
			}
			if g.KeyID == "" || (key != "" && g.KeyID != key) {
				return false, fmt.Sprintf("%s sends with key %q, another with %q", d.name, g.KeyID, key)
			}
			key = g.KeyID
		}
		return true, ""
	})
	return key, took
}

func short(ids []string) []string {
	var out []string
	for _, s := range ids {
		if len(s) > 8 {
			s = "…" + s[len(s)-6:]
		}
		out = append(out, s)
	}
	return out
}

// sent is one send that returned success.
type sent struct {
	by         *daemon
	text       string
	start, end time.Time
}

// ledger records the sends that returned success (accepted) and those
// that failed (which may or may not exist anywhere).
type ledger struct {
	gid      string
	mu       sync.Mutex
	accepted []sent
	failed   int
}

// send runs `send` on d and records it if it succeeded.
func (l *ledger) send(d *daemon, text string) result {
	d.t.Helper()
	start := time.Now()
	r := d.run("send", l.gid, text)
	l.mu.Lock()
	defer l.mu.Unlock()
	if r.code == 0 {
		l.accepted = append(l.accepted, sent{by: d, text: text, start: start, end: time.Now()})
	} else {
		l.failed++
	}
	return r
}

func (l *ledger) snapshot() []sent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.accepted)
}

// rule says whether reader may (entitled) or must not (forbidden) read s.
type rule func(reader *daemon, s sent) bool

func everyone(*daemon, sent) bool { return true }
func nobody(*daemon, sent) bool   { return false }

// delivery counts, per reader, the accepted sends it is entitled to and
// shows readable.
func delivery(l *ledger, readers []*daemon, entitled rule) (want, got int, missing string) {
	acc := l.snapshot()
	for _, d := range readers {
		ok := make(map[string]bool)
		for _, m := range d.messages(l.gid) {
			if m.Status == "ok" {
				ok[m.Sender+"\x00"+m.Text] = true
			}
		}
		for _, s := range acc {
			if !entitled(d, s) {
				continue
			}
			want++
			if ok[s.by.id.PeerID+"\x00"+s.text] {
				got++
			} else if missing == "" {
				missing = fmt.Sprintf("%s lacks %q from %s", d.name, s.text, s.by.name)
			}
		}
	}
	return want, got, missing
}

// converge waits until every reader shows every accepted send it is
// entitled to; it returns the time it took and whether it got there.
func converge(t *testing.T, timeout time.Duration, l *ledger, readers []*daemon, entitled rule) (time.Duration, bool) {
	t.Helper()
	start := time.Now()
	for {
		want, got, missing := delivery(l, readers, entitled)
		if got == want {
			t.Logf("all %d deliveries to %d readers after %v", want, len(readers), time.Since(start).Round(time.Millisecond))
			return time.Since(start), true
		}
		if time.Since(start) > timeout {
			t.Errorf("not every accepted message arrived within %v: %d of %d deliveries; first missing: %s", timeout, got, want, missing)
			diagnose(t, l, readers, entitled)
			return time.Since(start), false
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// audit checks the invariants on what each reader shows and returns the
// scenario's row: delivered/lost over the entitled deliveries, duplicates
// (an id or a sender's text shown twice), out of order (a sender's seqs not
// increasing down the list, or not in the order the sends returned), and
// leaks (a forbidden message readable). Each violation fails t.
func audit(t *testing.T, name string, l *ledger, readers []*daemon, entitled, forbidden rule, took time.Duration) row {
	t.Helper()
	acc := l.snapshot()
	r := row{scenario: name, accepted: len(acc), converge: took}
	want, got, _ := delivery(l, readers, entitled)
	r.delivered, r.lost = got, want-got
	for _, d := range readers {
		msgs := d.messages(l.gid)
		ids := make(map[string]bool)
		texts := make(map[string]bool)
		last := make(map[string]uint64)
		seqOf := make(map[string]uint64)
		for _, m := range msgs {
			if ids[m.ID] {
				r.dup++
				t.Errorf("%s shows %s twice", d.name, m.ID)
			}
			ids[m.ID] = true
			if m.Status == "ok" {
				k := m.Sender + "\x00" + m.Text
				if texts[k] {
					r.dup++
					t.Errorf("%s shows %q from %s twice", d.name, m.Text, m.Sender)
				}
				texts[k] = true
				seqOf[k] = m.seq()
			}
			if s := m.seq(); s <= last[m.Sender] {
				r.misordered++
				t.Errorf("%s: %s comes after seq %d of its sender", d.name, m.ID, last[m.Sender])
			}
			last[m.Sender] = max(last[m.Sender], m.seq())
		}
		// The sends of one sender returned in order: their seqs increase.
		prev := make(map[*daemon]sent)
		for _, s := range acc {
			k := s.by.id.PeerID + "\x00" + s.text
			if _, shown := seqOf[k]; !shown {
				continue
			}
			if p, ok := prev[s.by]; ok && p.end.Before(s.start) && seqOf[p.by.id.PeerID+"\x00"+p.text] >= seqOf[k] {
				r.misordered++
				t.Errorf("%s: %q (seq %d) was sent before %q (seq %d) by %s", d.name, p.text, seqOf[p.by.id.PeerID+"\x00"+p.text], s.text, seqOf[k], s.by.name)
			}
			prev[s.by] = s
			if forbidden(d, s) && texts[k] {
				r.leaked++
				t.Errorf("%s was removed yet reads %q from %s, sent after that sender had applied the removal", d.name, s.text, s.by.name)
			}
		}
	}
	if r.lost > 0 {
		t.Errorf("%s: %d of %d deliveries lost", name, r.lost, want)
	}
	return r
}

// removal records, per sender, from when on a removed member is no longer
// entitled: when that sender was first seen to list it no more (for the
// remover, when `group remove` returned). Sends that start later are
// forbidden to the removed member.
type removal struct {
	mu      sync.Mutex
	removed *daemon
	cutoff  map[*daemon]time.Time
}

func newRemoval(removed *daemon) *removal {
	return &removal{removed: removed, cutoff: make(map[*daemon]time.Time)}
}

func (rm *removal) mark(sender *daemon, at time.Time) {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	if _, ok := rm.cutoff[sender]; !ok {
		rm.cutoff[sender] = at
	}
}

// watch marks each sender once its roster no longer lists the removed
// member; call it after every roster read.
func (rm *removal) watch(sender *daemon, g groupInfo) {
	if !slices.ContainsFunc(g.Members, func(m member) bool { return m.PeerID == rm.removed.id.PeerID }) {
		rm.mark(sender, time.Now())
	}
}

// removedSeen reports whether some sender was seen to drop the member.
func (rm *removal) removedSeen() bool {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	return len(rm.cutoff) > 0
}

// cutoffOf is sender's cutoff (the zero time if none yet).
func (rm *removal) cutoffOf(sender *daemon) time.Time {
	rm.mu.Lock()
	defer rm.mu.Unlock()
	return rm.cutoff[sender]
}

// forbids reports whether s is forbidden to reader under this removal.
func (rm *removal) forbids(reader *daemon, s sent) bool {
	if reader != rm.removed {
		return false
	}
	rm.mu.Lock()
	defer rm.mu.Unlock()
	c, ok := rm.cutoff[s.by]
	return ok && s.start.After(c)
}

// anyOf combines rules with or.
func anyOf(rules ...rule) rule {
	return func(d *daemon, s sent) bool {
		for _, r := range rules {
			if r(d, s) {
				return true
			}
		}
		return false
	}
}

// sentBefore: s finished before t0.
func sentBefore(t0 time.Time) func(s sent) bool {
	return func(s sent) bool { return s.end.Before(t0) }
}

// burst has each daemon in senders send n messages, in parallel, one after
// the other per sender; it returns when all are done.
func burst(l *ledger, tag string, n int, senders ...*daemon) {
	var wg sync.WaitGroup
	for _, d := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < n; i++ {
				l.send(d, fmt.Sprintf("%s %s %d", tag, d.name, i))
			}
		}()
	}
	wg.Wait()
}

func names(ds []*daemon) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.name)
	}
	return strings.Join(s, ",")
}

// paced has each sender send one message every gap until dur has passed.
func paced(l *ledger, tag string, dur, gap time.Duration, senders ...*daemon) {
	var wg sync.WaitGroup
	end := time.Now().Add(dur)
	for _, d := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				l.send(d, fmt.Sprintf("%s %s %d", tag, d.name, i))
				time.Sleep(gap)
			}
		}()
	}
	wg.Wait()
}

// diagnose logs, per reader, what it lacks from each sender and whom it is
// connected to.
func diagnose(t *testing.T, l *ledger, readers []*daemon, entitled rule) {
	t.Helper()
	acc := l.snapshot()
	for _, d := range readers {
		if !d.running() {
			t.Logf("%s: not running", d.name)
			continue
		}
		shown := make(map[string]string)
		for _, m := range d.messages(l.gid) {
			shown[m.Sender+"\x00"+m.Text] = m.Status
		}
		lack := make(map[string][]string)
		for _, s := range acc {
			if entitled(d, s) && shown[s.by.id.PeerID+"\x00"+s.text] != "ok" {
				lack[s.by.name] = append(lack[s.by.name], s.text)
			}
		}
		for from, texts := range lack {
			t.Logf("%s lacks %d from %s: first %q, last %q", d.name, len(texts), from, texts[0], texts[len(texts)-1])
		}
		var peers []identity
		_ = json.Unmarshal([]byte(d.run("peers", "--json").stdout), &peers)
		var ps []string
		for _, p := range peers {
			ps = append(ps, p.PeerID)
		}
		g := d.groupInfo(l.gid)
		t.Logf("%s: key %s, %d members, connected to %v", d.name, g.KeyID, len(g.Members), short(ps))
	}
	for _, d := range readers {
		t.Logf("%s is …%s", d.name, d.id.PeerID[len(d.id.PeerID)-6:])
	}
}
