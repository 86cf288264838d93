package node

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
)

// TestRemovedMemberCannotDecrypt: a removed member that keeps its keys,
// stays subscribed and stays connected reads nothing sent after its removal
// reached the sender; the others still read everything, old messages too.
func TestRemovedMemberCannotDecrypt(t *testing.T) {
	nodes := newTestNodes(t, 4)
	a, b, c, x := nodes[0], nodes[1], nodes[2], nodes[3]
	gid := formGroup(t, nodes)

	// The malicious side of x: a listener on the topic, connected to all,
	// holding every key x's node ever had.
	sp := newSpy(t, nil)
	sp.connect(a, b, c)
	sp.listen(gid)
	eventually(t, 10*time.Second, "spy subscribed at every member", func() bool {
		for _, n := range []*testNode{a, b, c} {
			if !slices.Contains(n.mustGroup(gid).Peers(), sp.host.ID()) {
				return false
			}
		}
		return true
	})

	before := make(map[string]string)
	for i := 0; i < 3; i++ {
		for _, n := range []*testNode{a, b} {
			m := n.send(gid, fmt.Sprintf("before %d from %s", i, n.ID().ShortString()))
			before[m.ID()] = m.Text
		}
	}
	for _, n := range nodes {
		eventually(t, 10*time.Second, "everyone reads the messages before the removal", func() bool {
			return len(n.rec.readable(gid)) >= len(before)
		})
	}
	oldKey := a.mustGroup(gid).SendingKeyID()
	xKeysAtRemoval := x.keys(gid)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.mustGroup(gid).Remove(ctx, x.ID()); err != nil {
		t.Fatal(err)
	}
	remaining := []*testNode{a, b, c}
	newKey := waitSameSendingKey(t, remaining, gid, oldKey)
	eventually(t, 10*time.Second, "x sees its removal", func() bool { return x.mustGroup(gid).hasLeft() })

	after := make(map[string]string)
	afterIDs := make(map[string]bool)
	for i := 0; i < 3; i++ {
		for _, n := range remaining {
			m := n.send(gid, fmt.Sprintf("after %d from %s", i, n.ID().ShortString()))
			after[m.ID()] = m.Text
			afterIDs[m.ID()] = true
			if m.KeyID != newKey {
				t.Fatalf("%s sent with key %s after the rotation to %s", n.ID().ShortString(), m.KeyID.Short(), newKey.Short())
			}
		}
	}
	for _, n := range remaining {
		eventually(t, 10*time.Second, "remaining members read everything", func() bool {
			return len(n.rec.readable(gid)) >= len(before)+len(after)
		})
	}
	eventually(t, 10*time.Second, "the spy captured the ciphertext sent after the removal", func() bool {
		got := 0
		for _, e := range sp.seen() {
			if afterIDs[(&Message{Sender: e.Sender, Seq: e.Seq}).ID()] {
				got++
			}
		}
		return got == len(after)
	})

	xKeys := append(x.keys(gid), xKeysAtRemoval...)
	for _, k := range xKeys {
		if k.ID() == newKey {
			t.Fatalf("removed member holds the new key %s", newKey.Short())
		}
	}
	readBefore := 0
	for _, e := range sp.seen() {
		id := (&Message{Sender: e.Sender, Seq: e.Seq}).ID()
		if afterIDs[id] && canRead(e, xKeys) {
			t.Fatalf("removed member decrypted message %s sent after its removal", id)
		}
		if _, ok := before[id]; ok && canRead(e, xKeys) {
			readBefore++
		}
	}
	if readBefore != len(before) {
		t.Fatalf("control: the removed member's keys opened %d of %d earlier messages", readBefore, len(before))
	}
	hist, err := b.mustGroup(gid).History()
	if err != nil {
		t.Fatal(err)
	}
	okOld := 0
	for _, m := range hist {
		if _, ok := before[m.ID()]; ok && m.Status == StatusOK && m.Text == before[m.ID()] {
			okOld++
		}
	}
	if okOld != len(before) {
		t.Fatalf("remaining member reads %d of %d older messages", okOld, len(before))
	}
}

// TestConcurrentRotationConverges: two admins, cut off from each other,
// each remove a different member; once the partition heals every remaining
// member sends with one key, nobody rotates again, and every message is
// readable by every remaining member.
func TestConcurrentRotationConverges(t *testing.T) {
	nodes := newTestNodes(t, 6)
	a, b, c, d, x, y := nodes[0], nodes[1], nodes[2], nodes[3], nodes[4], nodes[5]
	gid := formGroup(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.mustGroup(gid).Add(ctx, b.ID(), roster.RoleAdmin); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b is an admin everywhere", func() bool {
		for _, n := range nodes {
			if r, _ := n.mustGroup(gid).State().RoleOf(b.ID()); r != roster.RoleAdmin {
				return false
			}
		}
		return true
	})

	// Both removals are authored while a and b cannot hear each other, so
	// they are concurrent in the roster DAG.
	var keysBefore []keyring.ID
	for _, n := range nodes {
		keysBefore = append(keysBefore, n.mustGroup(gid).KeyIDs()...)
	}
	partition([]*testNode{a, c, x}, []*testNode{b, d, y})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); check(t, a.mustGroup(gid).Remove(ctx, x.ID())) }()
	go func() { defer wg.Done(); check(t, b.mustGroup(gid).Remove(ctx, y.ID())) }()
	wg.Wait()
	var rotatedApart []keyring.ID // the two keys made while partitioned
	rotatedApart = append(rotatedApart, a.mustGroup(gid).SendingKeyID(), b.mustGroup(gid).SendingKeyID())
	heal(t, nodes)

	remaining := []*testNode{a, b, c, d}
	eventually(t, 20*time.Second, "rosters converge without x and y", func() bool {
		want := a.mustGroup(gid).State()
		if want.IsMember(x.ID()) || want.IsMember(y.ID()) || len(want.Members) != 4 {
			return false
		}
		for _, n := range remaining {
			if n.mustGroup(gid).State().Digest != want.Digest {
				return false
			}
		}
		return true
	})
	key := waitSameSendingKey(t, remaining, gid)
	keysHeld := len(a.keys(gid))
	// Neither partition's key excludes both removed members, and no key from
	// before the removals may be sent with again: the converged key is new.
	if slices.Contains(keysBefore, key) || slices.Contains(rotatedApart, key) {
		t.Fatalf("converged on key %s, which predates the merged roster", key.Short())
	}
	if got := keyOf(t, a, gid, key).Meta.Recipients; !slices.Equal(got, a.mustGroup(gid).State().MemberIDs()) {
		t.Fatalf("converged key's recipients %v are not the members", got)
	}

	sent := make(map[string]string)
	for i := 0; i < 3; i++ {
		for _, n := range remaining {
			m := n.send(gid, fmt.Sprintf("converged %d from %s", i, n.ID().ShortString()))
			sent[m.ID()] = m.Text
			if m.KeyID != key {
				t.Fatalf("%s sent with %s, not the converged key %s", n.ID().ShortString(), m.KeyID.Short(), key.Short())
			}
		}
	}
	for _, n := range remaining {
		eventually(t, 10*time.Second, "every remaining member reads every message", func() bool {
			got := n.rec.readable(gid)
			for id, text := range sent {
				if got[id] != text {
					return false
				}
			}
			return true
		})
	}
	for _, n := range remaining {
		if k := n.mustGroup(gid).SendingKeyID(); k != key {
			t.Fatalf("%s rotated again: %s", n.ID().ShortString(), k.Short())
		}
	}
	if n := len(a.keys(gid)); n != keysHeld {
		t.Fatalf("a key was generated after convergence: %d keys, had %d", n, keysHeld)
	}
	for _, n := range []*testNode{x, y} {
		for _, k := range n.keys(gid) {
			if k.ID() == key {
				t.Fatalf("removed member %s holds the converged key", n.ID().ShortString())
			}
		}
	}
}

func check(t *testing.T, err error) {
	if err != nil {
		t.Error(err)
	}
}

// TestRaceJoinSelfHeal: a new member that cannot be reached by the member
// who added it joins while messages are being sent, and reads them all; then
// a key is still in flight to it when messages under that key arrive: they
// are shown as waiting, then decrypted through a key request, in order, with
// none lost.
func TestRaceJoinSelfHeal(t *testing.T) {
	a, b, spare := newTestNode(t, ""), newTestNode(t, ""), newTestNode(t, "")
	connectAll(t, []*testNode{a, b, spare})
	gid := formGroup(t, []*testNode{a, b, spare})

	// n is reachable only through b: a's key pushes to n fail.
	n := newTestNode(t, "")
	partition([]*testNode{a}, []*testNode{n})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := a.mustGroup(gid).Add(ctx, n.ID(), roster.RoleMember); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "b applies the add", func() bool { return b.mustGroup(gid).IsMember(n.ID()) })
	if _, err := n.JoinGroup(ctx, gid, addrInfo(b.Node)); err != nil {
		t.Fatal(err)
	}
	// Phase 1, the join race: a writes at once. n gets its epoch key from
	// b (offered when n appears on the topic, or asked for); nothing is lost.
	welcome := []*Message{a.send(gid, "welcome 1"), a.send(gid, "welcome 2")}
	eventually(t, 10*time.Second, "n reads what was sent as it joined", func() bool {
		got := n.rec.readable(gid)
		return got[welcome[0].ID()] == "welcome 1" && got[welcome[1].ID()] == "welcome 2"
	})

	// Phase 2, a key still in flight: a removes spare and rotates; its push
	// reaches b but not n, so a's next messages reach n before their key.
	if err := a.mustGroup(gid).Remove(ctx, spare.ID()); err != nil {
		t.Fatal(err)
	}
	raced := a.mustGroup(gid).SendingKeyID()
	eventually(t, 10*time.Second, "b holds the new key", func() bool { return b.mustGroup(gid).HasKey(raced) })
	if n.mustGroup(gid).HasKey(raced) {
		t.Fatal("setup: n already holds the key, nothing races")
	}
	requestsBefore := n.Stats().KeyRequestsSent
	n.rec.mu.Lock()
	n.rec.events = nil // phase 2's events only
	n.rec.mu.Unlock()

	const count = 5
	var sent []*Message
	for i := 0; i < count; i++ {
		sent = append(sent, a.send(gid, fmt.Sprintf("raced %d", i)))
	}
	// The messages are stored and surfaced as waiting while the key is
	// missing (History is what a screen shows on open)...
	ng := n.mustGroup(gid)
	eventually(t, 10*time.Second, "a raced message shows as waiting for its key", func() bool {
		hist, err := ng.History()
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range hist {
			if m.Status == StatusWaitingForKey {
				if m.Text != "" {
					t.Fatal("a waiting message carries text")
				}
				return true
			}
		}
		return false
	})
	// ...then decrypted through a key request, none lost.
	eventually(t, 10*time.Second, "n decrypts every raced message", func() bool {
		return len(n.rec.readable(gid)) == count
	})
	got := n.rec.readable(gid)
	for _, m := range sent {
		if got[m.ID()] != m.Text {
			t.Fatalf("n reads %q for %s, want %q", got[m.ID()], m.ID(), m.Text)
		}
	}
	if st := n.Stats(); st.KeyRequestsSent == requestsBefore {
		t.Fatalf("the key did not come through the request path: %+v", st)
	}
	// Events: a message shown waiting is later shown decrypted, in
	// per-sender order; one still in the reorder window when its key came is
	// shown decrypted straight away.
	waiting := make(map[string]bool)
	var decryptedOrder []uint64
	for _, e := range n.rec.snapshot() {
		if e.Message == nil || e.Group != gid {
			continue
		}
		switch {
		case e.Kind == EventMessage && e.Message.Status == StatusWaitingForKey:
			waiting[e.Message.ID()] = true
		case e.Kind == EventMessageDecrypted:
			if !waiting[e.Message.ID()] {
				t.Fatalf("message %s decrypted without having been shown waiting", e.Message.ID())
			}
			delete(waiting, e.Message.ID())
			decryptedOrder = append(decryptedOrder, e.Message.Seq)
		}
	}
	if len(waiting) > 0 {
		t.Fatalf("%d messages shown waiting were never shown decrypted", len(waiting))
	}
	if !slices.IsSorted(decryptedOrder) {
		t.Fatalf("waiting messages decrypted out of order: %v", decryptedOrder)
	}
	t.Logf("raced messages decrypted after waiting, in order %v", decryptedOrder)
}

// TestNewMemberCannotReadEarlierMessages: a member added later, handed the
// ciphertext of messages sent before it joined, cannot decrypt them (its
// requests for the old key are refused); it reads everything sent after.
func TestNewMemberCannotReadEarlierMessages(t *testing.T) {
	a := newTestNode(t, "")
	b := newTestNode(t, "")
	connectAll(t, []*testNode{a, b})
	gid := formGroup(t, []*testNode{a, b})
	var early []*Message
	for i := 0; i < 3; i++ {
		early = append(early, a.send(gid, fmt.Sprintf("early %d", i)), b.send(gid, fmt.Sprintf("early b %d", i)))
	}
	oldKey := a.mustGroup(gid).SendingKeyID()

	n := newTestNode(t, "")
	connectAll(t, []*testNode{a, b, n})
	addAndJoin(t, a, n, gid, a)
	waitMesh(t, []*testNode{a, b, n}, gid)

	// Hand n the early envelopes, as a sync or a replaying peer would.
	envs := envelopesOf(t, a, gid, early)
	ng := n.mustGroup(gid)
	for _, e := range envs {
		ng.onEnvelope(a.ID(), e)
	}
	eventually(t, 10*time.Second, "n has asked for the old key several times", func() bool {
		ng.mu.Lock()
		defer ng.mu.Unlock()
		return ng.keyReqs.attempts(oldKey) >= 3
	})
	if ng.HasKey(oldKey) {
		t.Fatal("new member obtained the key of messages sent before it joined")
	}
	nKeys := n.keys(gid)
	for _, e := range envs {
		if canRead(e, nKeys) {
			t.Fatalf("new member decrypted early message %d", e.Seq)
		}
	}
	hist, err := ng.History()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range hist {
		if m.Status != StatusWaitingForKey {
			t.Fatalf("early message %s is %v for the new member", m.ID(), m.Status)
		}
	}

	var late []*Message
	for i := 0; i < 3; i++ {
		late = append(late, a.send(gid, fmt.Sprintf("late %d", i)), b.send(gid, fmt.Sprintf("late b %d", i)))
	}
	eventually(t, 10*time.Second, "new member reads everything sent after it joined", func() bool {
		got := n.rec.readable(gid)
		for _, m := range late {
			if got[m.ID()] != m.Text {
				return false
			}
		}
		return true
	})
}

// envelopesOf reads the stored envelopes of msgs from n's store.
func envelopesOf(t *testing.T, n *testNode, gid roster.GroupID, msgs []*Message) []*gossip.Envelope {
	t.Helper()
	var out []*gossip.Envelope
	for _, m := range msgs {
		e, err := n.mustGroup(gid).storedEnvelope(m.Sender, m.Seq)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

// TestHeldUntilRosterArrives: a message from a member whose add this node
// has not seen yet is held, not dropped, and shown once the roster arrives.
func TestHeldUntilRosterArrives(t *testing.T) {
	a, b := newTestNode(t, ""), newTestNode(t, "")
	connectAll(t, []*testNode{a, b})
	gid := formGroup(t, []*testNode{a, b})
	n := newTestNode(t, "")
	connectAll(t, []*testNode{a, n})
	// b must not hear of n's add by gossip: cut it off from a for now.
	partition([]*testNode{b}, []*testNode{a, n})
	addAndJoin(t, a, n, gid, a)
	eventually(t, 10*time.Second, "n holds its epoch key", func() bool { return !n.mustGroup(gid).SendingKeyID().IsZero() })
	m := n.send(gid, "hello from the new member")
	env, err := n.mustGroup(gid).storedEnvelope(n.ID(), m.Seq)
	if err != nil {
		t.Fatal(err)
	}
	bg := b.mustGroup(gid)
	if bg.IsMember(n.ID()) {
		t.Fatal("setup: b already knows n")
	}
	// The envelope reaches b (as if relayed) before the add op does.
	if res := bg.policy(a.ID(), &gossip.Inbound{Envelope: env}); res != pubsub.ValidationIgnore {
		t.Fatalf("validator said %v for a message from a member b cannot place yet", res)
	}
	bg.mu.Lock()
	held := len(bg.held)
	bg.mu.Unlock()
	if held != 1 {
		t.Fatalf("%d envelopes held, want 1", held)
	}
	heal(t, []*testNode{a, b, n})
	eventually(t, 20*time.Second, "b shows the held message once it has the roster", func() bool {
		return b.rec.readable(gid)[m.ID()] == m.Text
	})
}
