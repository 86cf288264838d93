package node

import (
	"context"
	"crypto/rand"
	"slices"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// requestKey publishes, from the spy, a key request signed by priv.
func (s *spy) requestKey(priv crypto.PrivKey, gid roster.GroupID, id keyring.ID) {
	s.t.Helper()
	req, err := gossip.NewKeyRequest(rand.Reader, priv, gid, id, 0, time.Now().UnixMilli())
	if err != nil {
		s.t.Fatal(err)
	}
	s.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: req.Signed}})
}

func (s *spy) transferred(id keyring.ID) bool {
	for _, tr := range s.received() {
		meta, _, err := gossip.OpenKeyMeta(nil, tr.Meta)
		if err == nil && meta.KeyID == id {
			return true
		}
	}
	return false
}

// waitTopicPeer waits until every node lists p on the group topic.
func waitTopicPeer(t *testing.T, gid roster.GroupID, p peer.ID, nodes ...*testNode) {
	t.Helper()
	eventually(t, 10*time.Second, "topic peer "+p.ShortString(), func() bool {
		for _, n := range nodes {
			if !slices.Contains(n.mustGroup(gid).Peers(), p) {
				return false
			}
		}
		return true
	})
}

// TestKeyRequestRefused: a removed member, a never-member, and a new member
// asking for a key from before it joined all get nothing, while an entitled
// request through the same path is answered; unsolicited keys from peers
// not entitled to distribute them are refused.
func TestKeyRequestRefused(t *testing.T) {
	nodes := newTestNodes(t, 4)
	a, b, c, x := nodes[0], nodes[1], nodes[2], nodes[3]
	gid := formGroup(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	if err := a.mustGroup(gid).Remove(ctx, x.ID()); err != nil {
		t.Fatal(err)
	}
	preJoinKey := waitSameSendingKey(t, []*testNode{a, b, c}, gid)

	// n joins later; its epoch key is derived from preJoinKey.
	nPriv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	nID, _ := peer.IDFromPrivateKey(nPriv)
	if err := a.mustGroup(gid).Add(ctx, nID, roster.RoleMember); err != nil {
		t.Fatal(err)
	}
	nKey := waitSameSendingKey(t, []*testNode{a, b, c}, gid, preJoinKey)

	// Requests come from spies that speak the protocol with the real
	// identities: x's (its node closed), n's, and a stranger's.
	x.Close()
	xSpy := newSpy(t, x.priv)
	nSpy := newSpy(t, nPriv)
	rPriv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	rSpy := newSpy(t, rPriv)
	for _, s := range []*spy{xSpy, nSpy, rSpy} {
		s.connect(a, b, c)
		s.listen(gid)
		waitTopicPeer(t, gid, s.host.ID(), a, b, c)
	}

	xSpy.requestKey(x.priv, gid, preJoinKey) // removed: refused
	rSpy.requestKey(rPriv, gid, nKey)        // never a member: refused
	nSpy.requestKey(nPriv, gid, preJoinKey)  // from before n joined: refused
	nSpy.requestKey(nPriv, gid, nKey)        // entitled: answered (the control)
	eventually(t, 10*time.Second, "the entitled request is answered", func() bool { return nSpy.transferred(nKey) })
	time.Sleep(500 * time.Millisecond) // answers to the earlier requests would be in flight by now
	if xSpy.transferred(preJoinKey) || len(xSpy.received()) > 0 {
		t.Fatal("a removed member was sent a key")
	}
	if len(rSpy.received()) > 0 {
		t.Fatal("a never-member was sent a key")
	}
	if nSpy.transferred(preJoinKey) {
		t.Fatal("a new member was sent a key from before it joined")
	}

	// Unsolicited keys: from a stranger for the current state, and from the
	// removed member for a state it belonged to.
	bg := b.mustGroup(gid)
	before := bg.KeyIDs()
	st := bg.State()
	forgedNow, _ := keyring.Generate(rand.Reader, gid, rSpy.host.ID(), st.Heads, st.MemberIDs())
	if err := rSpy.sendKey(b, rPriv, forgedNow, nil); err == nil {
		t.Fatal("b accepted a key from a never-member")
	}
	oldState := xStateOf(t, bg, x.ID())
	forgedOld, _ := keyring.Generate(rand.Reader, gid, x.ID(), oldState.Heads, oldState.MemberIDs())
	if err := xSpy.sendKey(b, x.priv, forgedOld, nil); err == nil {
		t.Fatal("b accepted a key from a removed member")
	}
	if after := bg.KeyIDs(); !slices.Equal(before, after) {
		t.Fatalf("b's keys changed: %d -> %d", len(before), len(after))
	}
}

// xStateOf returns the newest roster state in which p was a member.
func xStateOf(t *testing.T, g *Group, p peer.ID) *roster.State {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	ops := g.roster.Ops()
	for i := len(ops) - 1; i >= 0; i-- {
		st, err := g.roster.StateAt([]roster.OpID{ops[i].ID})
		if err == nil && st.IsMember(p) {
			return st
		}
	}
	t.Fatalf("%s was never a member", p.ShortString())
	return nil
}

// sendKey pushes k to n over the key protocol, with metadata signed by priv.
func (s *spy) sendKey(n *testNode, priv crypto.PrivKey, k *keyring.Key, nonce []byte) error {
	meta, err := gossip.SignKeyMeta(priv, &k.Meta)
	if err != nil {
		s.t.Fatal(err)
	}
	return s.sendTransfer(n, &wire.KeyTransfer{Key: k.Secret(), Meta: meta, RequestNonce: nonce})
}

func (s *spy) sendTransfer(n *testNode, tr *wire.KeyTransfer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return s.streams.SendKey(ctx, n.ID(), tr)
}

// TestForgedInputRejected: forged, unsigned, unauthorized or malformed roster
// ops, envelopes, key transfers and key requests change no state.
func TestForgedInputRejected(t *testing.T) {
	nodes := newTestNodes(t, 3)
	a, b, c := nodes[0], nodes[1], nodes[2]
	gid := formGroup(t, nodes)
	a.send(gid, "hello")
	eventually(t, 10*time.Second, "b reads hello", func() bool { return len(b.rec.readable(gid)) == 1 })

	rPriv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	rID, _ := peer.IDFromPrivateKey(rPriv)
	sp := newSpy(t, rPriv)
	sp.connect(a, b, c)
	sp.listen(gid)
	waitTopicPeer(t, gid, sp.host.ID(), b)

	bg := b.mustGroup(gid)
	membersBefore := bg.Members()
	keysBefore := bg.KeyIDs()
	heads := bg.State().Heads
	events := len(b.rec.snapshot())

	publishOp := func(s *wire.Signed) {
		sp.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_RosterOp{RosterOp: s}})
	}
	publishEnv := func(s *wire.Signed) {
		sp.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_Envelope{Envelope: s}})
	}

	// Roster ops.
	addR, _ := roster.NewAdd(a.priv, gid, heads, rID, roster.RoleAdmin, nil)
	tampered := clone(addR.Signed)
	tampered.Body[len(tampered.Body)-1] ^= 1
	publishOp(tampered) // forged: body changed after signing
	unsigned := clone(addR.Signed)
	unsigned.Signature = nil
	publishOp(unsigned) // unsigned
	r2Priv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	r2ID, _ := peer.IDFromPrivateKey(r2Priv)
	selfAdd, err := roster.NewAdd(rPriv, gid, heads, r2ID, roster.RoleAdmin, nil)
	if err != nil {
		t.Fatal(err)
	}
	publishOp(selfAdd.Signed) // a stranger admits an accomplice
	memberAdd, _ := roster.NewAdd(c.priv, gid, heads, rID, roster.RoleMember, nil)
	publishOp(memberAdd.Signed) // a non-admin member admits the stranger
	sp.publishRaw([]byte("\x12\x05garbage that is not a roster op"))

	// Envelopes.
	key := keyOf(t, a, gid, bg.SendingKeyID())
	strangerEnv, _ := gossip.SealEnvelopeFrom(rand.Reader, rPriv, key, 1, 0, heads, &wire.Content{Text: "from a stranger"})
	publishEnv(strangerEnv.Signed) // signed by a non-member (who somehow has the key)
	forgedEnv, _ := gossip.SealEnvelopeFrom(rand.Reader, a.priv, key, 900, 0, heads, &wire.Content{Text: "forged"})
	fe := clone(forgedEnv.Signed)
	fe.Signature[0] ^= 1
	publishEnv(fe) // claims a's signature
	badCipher, _ := gossip.SealEnvelopeFrom(rand.Reader, c.priv, key, 901, 0, heads, &wire.Content{Text: "tampered"})
	badCipher.Ciphertext[0] ^= 1
	resigned, _ := wire.Sign(c.priv, wire.Kind_KIND_ENVELOPE, &wire.Envelope{GroupId: gid[:], KeyId: key.Meta.KeyID[:], Sender: []byte(c.ID()),
		Seq: 901, RosterHeads: [][]byte{heads[0][:]}, Nonce: badCipher.Nonce, Ciphertext: badCipher.Ciphertext})
	publishEnv(resigned) // a member's envelope whose ciphertext does not authenticate

	// Key requests.
	req, _ := gossip.NewKeyRequest(rand.Reader, c.priv, gid, key.ID(), 0, time.Now().UnixMilli())
	fr := clone(req.Signed)
	fr.Signature[3] ^= 1
	sp.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: fr}})

	// Key transfers.
	st := bg.State()
	k1, _ := keyring.Generate(rand.Reader, gid, a.ID(), st.Heads, st.MemberIDs())
	meta, _ := gossip.SignKeyMeta(a.priv, &k1.Meta)
	wrongKey := make([]byte, 32)
	if err := sp.sendTransfer(b, &wire.KeyTransfer{Key: wrongKey, Meta: meta}); err == nil {
		t.Fatal("b accepted a key that does not match its id")
	}
	if err := sp.sendTransfer(b, &wire.KeyTransfer{Key: k1.Secret(), Meta: meta}); err == nil {
		t.Fatal("b accepted key metadata signed by someone other than the sender")
	}
	k2, _ := keyring.Generate(rand.Reader, gid, a.ID(), st.Heads, []peer.ID{a.ID(), b.ID()})
	if err := sp.sendKey(b, rPriv, k2, nil); err == nil {
		t.Fatal("b accepted a key whose recipients are not the roster's members")
	}
	if err := sp.sendTransfer(b, &wire.KeyTransfer{Key: []byte("short"), Meta: &wire.Signed{Kind: wire.Kind_KIND_KEY_META, Body: []byte{0xff}}}); err == nil {
		t.Fatal("b accepted a malformed key transfer")
	}

	// A sentinel through the same path, so the forgeries above were seen.
	sentinel, _ := gossip.SealEnvelopeFrom(rand.Reader, a.priv, key, 1000, 0, heads, &wire.Content{Text: "sentinel"})
	publishEnv(sentinel.Signed)
	eventually(t, 10*time.Second, "b shows the sentinel", func() bool {
		return b.rec.readable(gid)[(&Message{Sender: a.ID(), Seq: 1000}).ID()] == "sentinel"
	})
	time.Sleep(200 * time.Millisecond)

	if got := bg.Members(); !slices.Equal(got, membersBefore) {
		t.Fatalf("membership changed: %v -> %v", membersBefore, got)
	}
	for _, op := range []*roster.Op{addR, selfAdd, memberAdd} {
		bg.mu.Lock()
		eff := bg.roster.Effective(op.ID)
		bg.mu.Unlock()
		if eff {
			t.Fatalf("forged or unauthorized op %s took effect", op.ID.ShortString())
		}
	}
	if got := bg.KeyIDs(); !slices.Equal(got, keysBefore) {
		t.Fatalf("keys changed: %d -> %d", len(keysBefore), len(got))
	}
	for _, e := range b.rec.snapshot()[events:] {
		if e.Message != nil && e.Message.Seq != 1000 {
			t.Fatalf("forged input produced an event: %v %s %q", e.Kind, e.Message.ID(), e.Message.Text)
		}
		if e.Kind == EventRoster || e.Kind == EventKeyRotated {
			t.Fatalf("forged input produced a %v event", e.Kind)
		}
	}
	hist, _ := bg.History()
	for _, m := range hist {
		if m.Text == "from a stranger" || m.Text == "forged" || m.Text == "tampered" {
			t.Fatalf("forged message in history: %q", m.Text)
		}
	}
	if len(hist) != 2 {
		t.Fatalf("history has %d messages, want hello and the sentinel", len(hist))
	}
}

func clone(s *wire.Signed) *wire.Signed {
	return &wire.Signed{Kind: s.Kind, Body: slices.Clone(s.Body), Signature: slices.Clone(s.Signature), Signer: slices.Clone(s.Signer)}
}

func keyOf(t *testing.T, n *testNode, gid roster.GroupID, id keyring.ID) *keyring.Key {
	t.Helper()
	for _, k := range n.keys(gid) {
		if k.ID() == id {
			return k
		}
	}
	t.Fatalf("%s lacks key %s", n.ID().ShortString(), id.Short())
	return nil
}
