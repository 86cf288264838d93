package node

import (
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// Sender and roster rules of the removal-finality design (docs/protocol.md
// §4.4, §4.5) that the attacks in finality_test.go do not reach: a peer
// named only by an add that took no effect, a departed sender's seq jump
// in the ack window, and a roster fetch from a removed member.

// fetchLog records the roster fetches and history syncs a spy is asked for.
type fetchLog struct {
	mu     sync.Mutex
	roster []peer.ID
	syncs  []peer.ID
}

func (l *fetchLog) rosterFrom(p peer.ID) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return countOf(l.roster, p)
}

func (l *fetchLog) syncsFrom(p peer.ID) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return countOf(l.syncs, p)
}

func countOf(ps []peer.ID, p peer.ID) int {
	n := 0
	for _, q := range ps {
		if q == p {
			n++
		}
	}
	return n
}

// impersonateServing is impersonate (finality_test.go) with a modified
// node that answers every roster fetch with serve() and every history sync
// with sp.answerSync (an empty answer when unset), recording who asked.
func impersonateServing(t *testing.T, n *testNode, gid roster.GroupID, others []*testNode, serve func() []*wire.Signed) (*spy, *fetchLog) {
	t.Helper()
	priv := n.Node.priv
	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	return spyServing(t, priv, gid, others, serve)
}

func spyServing(t *testing.T, priv crypto.PrivKey, gid roster.GroupID, others []*testNode, serve func() []*wire.Signed) (*spy, *fetchLog) {
	t.Helper()
	sp := newSpy(t, priv)
	log := &fetchLog{}
	sp.streams.Close() // the spy's own handlers refuse roster fetches
	sp.streams = gossip.NewStreams(sp.host, gossip.Handlers{
		Roster: func(from peer.ID, _ [32]byte, _ []roster.OpID) ([]*wire.Signed, bool) {
			log.mu.Lock()
			log.roster = append(log.roster, from)
			log.mu.Unlock()
			if serve == nil {
				return nil, false
			}
			return serve(), true
		},
		Sync: func(from peer.ID, req *wire.SyncRequest) (*wire.SyncResponse, bool) {
			log.mu.Lock()
			log.syncs = append(log.syncs, from)
			log.mu.Unlock()
			sp.mu.Lock()
			answer := sp.answerSync
			sp.mu.Unlock()
			if answer == nil {
				return &wire.SyncResponse{}, true
			}
			return answer(from, req)
		},
	})
	sp.connect(others...)
	sp.listen(gid)
	eventually(t, 15*time.Second, "the modified node is on the topic at every member", func() bool {
		for _, o := range others {
			if !slices.Contains(o.mustGroup(gid).Peers(), sp.host.ID()) {
				return false
			}
		}
		return true
	})
	return sp, log
}

func (n *testNode) applied(gid roster.GroupID, id roster.OpID) bool {
	g := n.mustGroup(gid)
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.roster.Has(id)
}

// heldOf counts the envelopes of sender in n's held queue.
func (n *testNode) heldOf(gid roster.GroupID, sender peer.ID) int {
	g := n.mustGroup(gid)
	g.mu.Lock()
	defer g.mu.Unlock()
	c := 0
	for _, h := range g.held {
		if h.env.Sender == sender {
			c++
		}
	}
	return c
}

// storedOf returns the seqs of sender that n stored.
func (n *testNode) storedOf(t *testing.T, gid roster.GroupID, sender peer.ID) []uint64 {
	t.Helper()
	hist, err := n.mustGroup(gid).History()
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, m := range hist {
		if m.Sender == sender {
			out = append(out, m.Seq)
		}
	}
	return out
}

// shownOf returns the seqs of sender that n showed.
func (n *testNode) shownOf(gid roster.GroupID, sender peer.ID) []uint64 {
	var out []uint64
	for _, m := range n.rec.shown(gid) {
		if m.Sender == sender {
			out = append(out, m.Seq)
		}
	}
	return out
}

func keyByID(keys []*keyring.Key, id keyring.ID) *keyring.Key {
	for _, k := range keys {
		if k.ID() == id {
			return k
		}
	}
	return nil
}

func sealAs(t *testing.T, priv crypto.PrivKey, key *keyring.Key, seq, keyFirstSeq uint64, heads []roster.OpID, text string) *gossip.Envelope {
	t.Helper()
	e, err := gossip.SealEnvelopeFrom(rand.Reader, priv, key, seq, keyFirstSeq, heads,
		&wire.Content{Text: text, SentAtMs: time.Now().UnixMilli()})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func publishEnvelope(sp *spy, e *gossip.Envelope) {
	sp.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: e.Signed}})
}

// syncUntil has n sync with p until cond holds: a sync already running
// (a join or settle sync the node started itself) makes syncWith a no-op,
// so it is asked again until one that sees the test's answer has run.
func syncUntil(t *testing.T, n *testNode, gid roster.GroupID, p peer.ID, what string, cond func() bool) {
	t.Helper()
	eventually(t, 15*time.Second, what, func() bool {
		if cond() {
			return true
		}
		n.mustGroup(gid).syncWith(p)
		return false
	})
}

// TestNeverEffectiveMemberRefused (§4.5 sender rule, step 3): M, a plain
// member running a modified node, adds Q. The add is authorized (M is a
// member) but has no effect (M is no admin), so the roster names Q although
// Q never was a member. Q then adds Q2 (authorized for the same reason, no
// effect either), and Q2 signs an ack that marks Q at seq 1,000,000: Q now
// has a bound, as a departed member would. Q signs envelopes under the
// group key M handed it and publishes them on the topic and serves them by
// history sync. The honest members X and A refuse every one on both paths,
// and never store, hold or show any.
func TestNeverEffectiveMemberRefused(t *testing.T) {
	nodes := newTestNodes(t, 3)
	X, A, M := nodes[0], nodes[1], nodes[2]
	gid := formGroup(t, nodes)
	honest := []*testNode{X, A}

	qPriv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	q2Priv, _, err := crypto.GenerateEd25519Key(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	qID, _ := peer.IDFromPrivateKey(qPriv)
	q2ID, _ := peer.IDFromPrivateKey(q2Priv)

	addQ := must(roster.NewAdd(M.Node.priv, gid, M.rosterHeads(gid), qID, roster.RoleMember, nil))
	addQ2 := must(roster.NewAdd(qPriv, gid, []roster.OpID{addQ.ID}, q2ID, roster.RoleMember, nil))
	vouch := must(roster.NewAck(q2Priv, gid, []roster.OpID{addQ2.ID}, []roster.Mark{{Peer: qID, Seq: 1_000_000}}))
	ops := []*roster.Op{addQ, addQ2, vouch}

	sp, _ := spyServing(t, qPriv, gid, honest, nil)
	for _, op := range ops {
		publishOp(sp, op)
	}
	for _, h := range honest {
		eventually(t, 10*time.Second, "the ops naming Q applied", func() bool {
			for _, op := range ops {
				if !h.applied(gid, op.ID) {
					return false
				}
			}
			return true
		})
		g := h.mustGroup(gid)
		g.mu.Lock()
		named, ever, member := g.roster.EverAdded(qID), g.roster.EverMember(qID), g.roster.IsMember(qID)
		bound, hasBound := g.roster.MarkBound(qID)
		g.mu.Unlock()
		if !named || ever || member || !hasBound || bound != 1_000_000 {
			t.Fatalf("%s: Q named %v, ever a member %v, member %v, bound %d (%v); want named only, bound 1000000",
				h.ID().ShortString(), named, ever, member, bound, hasBound)
		}
	}

	// The key M sends with, handed to Q.
	key := keyByID(M.keys(gid), M.mustGroup(gid).SendingKeyID())
	if key == nil {
		t.Fatal("M holds no sending key")
	}
	heads := X.rosterHeads(gid)
	var envs []*gossip.Envelope
	var signed []*wire.Signed
	for i := range 3 {
		e := sealAs(t, qPriv, key, uint64(i+1), 1, heads, fmt.Sprintf("from a never-member %d", i))
		envs = append(envs, e)
		signed = append(signed, e.Signed)
	}

	// On the topic.
	before := make([]uint64, len(honest))
	for i, h := range honest {
		before[i] = h.Stats().EnvelopesRefused
	}
	for _, e := range envs {
		publishEnvelope(sp, e)
	}
	for i, h := range honest {
		eventually(t, 10*time.Second, "Q's envelopes refused (or shown) on the topic", func() bool {
			return h.Stats().EnvelopesRefused >= before[i]+uint64(len(envs)) || len(h.shownOf(gid, qID)) > 0
		})
		if s := h.shownOf(gid, qID); len(s) > 0 {
			t.Fatalf("%s showed the never-member's envelopes %v from the topic", h.ID().ShortString(), s)
		}
	}

	// By history sync.
	sp.mu.Lock()
	sp.answerSync = func(peer.ID, *wire.SyncRequest) (*wire.SyncResponse, bool) {
		return &wire.SyncResponse{Envelopes: signed}, true
	}
	sp.mu.Unlock()
	for i, h := range honest {
		before[i] = h.Stats().EnvelopesRefused
		syncUntil(t, h, gid, qID, "Q's envelopes refused (or stored) by history sync", func() bool {
			return h.Stats().EnvelopesRefused >= before[i]+uint64(len(envs)) || len(h.storedOf(t, gid, qID)) > 0
		})
		if s := h.storedOf(t, gid, qID); len(s) > 0 {
			t.Fatalf("%s stored the never-member's envelopes %v", h.ID().ShortString(), s)
		}
	}

	for _, h := range honest {
		if s := h.storedOf(t, gid, qID); len(s) > 0 {
			t.Fatalf("%s stored Q's envelopes %v", h.ID().ShortString(), s)
		}
		if s := h.shownOf(gid, qID); len(s) > 0 {
			t.Fatalf("%s showed Q's envelopes %v", h.ID().ShortString(), s)
		}
		if n := h.heldOf(gid, qID); n > 0 {
			t.Fatalf("%s holds %d of Q's envelopes", h.ID().ShortString(), n)
		}
	}
}

// TestDepartedMarkIgnoresSeqJump (§4.5 ack marks): P sent 3 messages,
// then its node is replaced by a modified one and X removes it. In the
// AckDelay before the remaining members ack, P publishes seq last+1 and
// last+2, which continue its sequence, and seq last+1,000,000. Each member
// holds all three; its ack marks last+2 (the jump does not raise it), so
// the bound is last+2: the two are stored and shown, the jump is dropped
// from the held queue once both members have acked, and any envelope above
// the bound (topic or sync) is refused from then on.
func TestDepartedMarkIgnoresSeqJump(t *testing.T) {
	params := testParams
	params.AckDelay = 4 * time.Second // room to hold P's envelopes before the acks
	nodes := make([]*testNode, 3)
	for i := range nodes {
		nodes[i] = newTestNodeParams(t, "", nil, params)
	}
	connectAll(t, nodes)
	X, M, P := nodes[0], nodes[1], nodes[2]
	gid := formGroup(t, nodes)
	honest := []*testNode{X, M}

	var legit []*Message
	for i := range 3 {
		legit = append(legit, P.send(gid, fmt.Sprintf("before removal %d", i)))
	}
	for _, h := range honest {
		eventually(t, 10*time.Second, "P's messages delivered", func() bool {
			r := h.rec.readable(gid)
			for _, m := range legit {
				if r[m.ID()] != m.Text {
					return false
				}
			}
			return true
		})
	}
	last := legit[len(legit)-1]
	lastEnv := envelopesOf(t, X, gid, []*Message{last})[0]
	key := keyByID(P.keys(gid), last.KeyID)
	if key == nil {
		t.Fatal("P does not hold the key it sent with")
	}
	heads := P.rosterHeads(gid)
	pPriv := P.Node.priv
	pID := P.ID()
	seal := func(seq uint64, text string) *gossip.Envelope {
		return sealAs(t, pPriv, key, seq, lastEnv.KeyFirstSeq, heads, text)
	}
	cont1 := seal(last.Seq+1, "in flight 1")
	cont2 := seal(last.Seq+2, "in flight 2")
	jump := seal(last.Seq+1_000_000, "far ahead")
	above := seal(last.Seq+3, "after the acks")

	sp := impersonate(t, P, gid, honest)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := X.mustGroup(gid).Remove(ctx, pID); err != nil {
		t.Fatal(err)
	}
	for _, h := range honest {
		eventually(t, 10*time.Second, "P's removal applied", func() bool { return !h.mustGroup(gid).State().IsMember(pID) })
	}
	for _, e := range []*gossip.Envelope{jump, cont1, cont2} {
		publishEnvelope(sp, e)
	}
	for _, h := range honest {
		eventually(t, 10*time.Second, "P's three envelopes held", func() bool { return h.heldOf(gid, pID) == 3 })
	}
	for _, h := range honest {
		g := h.mustGroup(gid)
		g.mu.Lock()
		early := g.roster.MarkedBy(X.ID(), pID) || g.roster.MarkedBy(M.ID(), pID)
		g.mu.Unlock()
		if early {
			t.Fatalf("an ack of P's removal was applied at %s before P's envelopes were held: AckDelay too short here", h.ID().ShortString())
		}
	}

	want := last.Seq + 2
	for _, h := range honest {
		eventually(t, 15*time.Second, "both members' acks of P's removal applied", func() bool {
			g := h.mustGroup(gid)
			g.mu.Lock()
			defer g.mu.Unlock()
			return g.roster.MarkedBy(X.ID(), pID) && g.roster.MarkedBy(M.ID(), pID)
		})
		g := h.mustGroup(gid)
		g.mu.Lock()
		bound, ok := g.roster.MarkBound(pID)
		g.mu.Unlock()
		if !ok || bound != want {
			t.Fatalf("%s: P's bound is %d (%v), want %d: the held seq jump raised the mark", h.ID().ShortString(), bound, ok, want)
		}
	}
	for _, h := range honest {
		eventually(t, 10*time.Second, "P's envelopes within the bound shown, the jump dropped", func() bool {
			r := h.rec.readable(gid)
			return r[P.ID().String()+"/"+strconv.FormatUint(cont1.Seq, 10)] == "in flight 1" &&
				r[P.ID().String()+"/"+strconv.FormatUint(cont2.Seq, 10)] == "in flight 2" &&
				h.heldOf(gid, pID) == 0
		})
	}

	// Above the bound, now final: refused on the topic and by sync.
	before := make([]uint64, len(honest))
	for i, h := range honest {
		before[i] = h.Stats().EnvelopesRefused
	}
	publishEnvelope(sp, above)
	for i, h := range honest {
		eventually(t, 10*time.Second, "an envelope above the bound refused on the topic", func() bool {
			return h.Stats().EnvelopesRefused >= before[i]+1
		})
	}
	sp.mu.Lock()
	sp.answerSync = func(peer.ID, *wire.SyncRequest) (*wire.SyncResponse, bool) {
		return &wire.SyncResponse{Envelopes: []*wire.Signed{above.Signed, jump.Signed}}, true
	}
	sp.mu.Unlock()
	for i, h := range honest {
		before[i] = h.Stats().EnvelopesRefused
		syncUntil(t, h, gid, pID, "envelopes above the bound refused by history sync", func() bool {
			return h.Stats().EnvelopesRefused >= before[i]+2
		})
	}
	for _, h := range honest {
		for _, s := range h.storedOf(t, gid, pID) {
			if s > want {
				t.Fatalf("%s stored P's seq %d above the bound %d", h.ID().ShortString(), s, want)
			}
		}
		for _, s := range h.shownOf(gid, pID) {
			if s > want {
				t.Fatalf("%s showed P's seq %d above the bound %d", h.ID().ShortString(), s, want)
			}
		}
		if n := h.heldOf(gid, pID); n > 0 {
			t.Fatalf("%s still holds %d of P's envelopes", h.ID().ShortString(), n)
		}
	}
}

// TestNoRosterFetchFromDepartedPeer (§4.4, §8.2): founder X adds M, P
// (admin) and C. P notes its heads, is removed, and its node is replaced by
// a modified one that serves, to every roster fetch, the honest roster
// without its removal plus forgeries signed by itself and backdated to the
// noted heads (remove X, remove M). It publishes an ack naming the
// forgeries, so the remaining members hold it pending with P as its only
// forwarder, and it answers their history syncs. Neither X nor M ever
// fetches the roster from P — neither for the pending op nor at the start
// of a sync — and neither holds a forgery. C, a current member on a
// modified node, forwards an op whose parent only it has: both fetch from
// C and apply it.
func TestNoRosterFetchFromDepartedPeer(t *testing.T) {
	nodes := newTestNodes(t, 4)
	X, M, P, C := nodes[0], nodes[1], nodes[2], nodes[3]
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	g, err := X.CreateGroup(ctx, "no fetch from the departed")
	if err != nil {
		t.Fatal(err)
	}
	gid := g.ID()
	addAs(t, X, M, gid, roster.RoleMember)
	addAs(t, X, P, gid, roster.RoleAdmin)
	eventually(t, 10*time.Second, "P applied its own add", func() bool { return P.mustGroup(gid).State().IsMember(P.ID()) })
	noted := P.rosterHeads(gid)
	addAs(t, X, C, gid, roster.RoleMember)
	waitMesh(t, nodes, gid)
	honest := []*testNode{X, M}
	removeAndRekey(t, X, gid, P.ID(), []*testNode{X, M, C})
	want := map[peer.ID]roster.Role{X.ID(): roster.RoleAdmin, M.ID(): roster.RoleMember, C.ID(): roster.RoleMember}

	pPriv := P.Node.priv
	pID := P.ID()
	forged := []*roster.Op{
		must(roster.NewRemove(pPriv, gid, noted, X.ID())),
		must(roster.NewRemove(pPriv, gid, noted, M.ID())),
	}
	trigger := must(roster.NewAck(pPriv, gid, []roster.OpID{forged[0].ID, forged[1].ID}, nil))
	var pServes []*wire.Signed
	{
		g := P.mustGroup(gid)
		g.mu.Lock()
		for _, op := range g.roster.Ops() {
			if op.Kind == roster.KindRemove && op.Member == pID {
				continue // the history without its removal
			}
			pServes = append(pServes, op.Signed)
		}
		g.mu.Unlock()
	}
	for _, op := range append(forged, trigger) {
		pServes = append(pServes, op.Signed)
	}
	spP, pLog := impersonateServing(t, P, gid, honest, func() []*wire.Signed { return pServes })

	publishOp(spP, trigger)
	for _, h := range honest {
		eventually(t, 10*time.Second, "the op naming the forgeries pending", func() bool { return h.hasOp(gid, trigger.ID) })
		// A history sync with P: its request reaches P only after the roster
		// fetch that opens the sync would have.
		syncUntil(t, h, gid, pID, "a history sync with P", func() bool { return pLog.syncsFrom(h.ID()) > 0 })
	}

	// A key transfer from P naming heads that only P's forgeries lead to
	// (its op naming them is pending here): the receiver must not fetch
	// P's roster to learn them, and so cannot accept the key.
	fk, err := keyring.Generate(rand.Reader, gid, pID, []roster.OpID{trigger.ID}, []peer.ID{X.ID(), M.ID(), C.ID(), pID})
	if err != nil {
		t.Fatal(err)
	}
	if err := spP.sendKey(X, pPriv, fk, nil); err == nil {
		t.Fatal("X accepted a key from the removed member for heads only its forgeries lead to")
	}
	if keyByID(X.keys(gid), fk.ID()) != nil {
		t.Fatal("X holds the removed member's key")
	}

	// A current member's forwarded op is fetched for.
	cPriv := C.Node.priv
	cHeads := X.rosterHeads(gid)
	cOnly := must(roster.NewAck(cPriv, gid, cHeads, nil))
	cForward := must(roster.NewAck(cPriv, gid, []roster.OpID{cOnly.ID}, nil))
	var cServes []*wire.Signed
	{
		g := X.mustGroup(gid)
		g.mu.Lock()
		for _, op := range g.roster.Ops() {
			cServes = append(cServes, op.Signed)
		}
		g.mu.Unlock()
	}
	cServes = append(cServes, cOnly.Signed, cForward.Signed)
	spC, cLog := impersonateServing(t, C, gid, honest, func() []*wire.Signed { return cServes })
	publishOp(spC, cForward)
	for _, h := range honest {
		eventually(t, 10*time.Second, "the op only C held fetched from C and applied", func() bool {
			return h.applied(gid, cOnly.ID) && h.applied(gid, cForward.ID) && cLog.rosterFrom(h.ID()) > 0
		})
	}

	for _, h := range honest {
		if n := pLog.rosterFrom(h.ID()); n > 0 {
			t.Fatalf("%s fetched the roster from the removed member %d times", h.ID().ShortString(), n)
		}
		for _, op := range forged {
			if h.hasOp(gid, op.ID) {
				t.Fatalf("%s holds the forged op %v", h.ID().ShortString(), op)
			}
		}
		if h.applied(gid, trigger.ID) {
			t.Fatalf("%s applied the removed member's op naming its forgeries", h.ID().ShortString())
		}
		if got := membersOf(h, gid); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s resolves members %v, want %v", h.ID().ShortString(), got, want)
		}
	}
}
