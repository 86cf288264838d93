package keyring_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/internal/testkeys"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// detRand is this package's deterministic byte stream.
func detRand(seed uint64) io.Reader { return testkeys.Reader("p2pchat keyring test", seed) }

// testPeer returns a deterministic Ed25519 identity.
func testPeer(t testing.TB, seed uint64) (crypto.PrivKey, peer.ID) {
	t.Helper()
	return testkeys.Peer(t, "p2pchat keyring test", seed)
}

// testPeers returns n distinct deterministic peer IDs, sorted.
func testPeers(t testing.TB, n int) []peer.ID {
	t.Helper()
	out := make([]peer.ID, n)
	for i := range out {
		_, out[i] = testPeer(t, uint64(i))
	}
	slices.Sort(out)
	return out
}

func opID(s string) roster.OpID { return roster.OpID(sha256.Sum256([]byte("op:" + s))) }

func groupID(s string) roster.GroupID { return roster.GroupID(sha256.Sum256([]byte("group:" + s))) }

func seqBytes(start byte, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func mustGenerate(t testing.TB, seed uint64, group roster.GroupID, creator peer.ID, heads []roster.OpID, recipients []peer.ID) *keyring.Key {
	t.Helper()
	k, err := keyring.Generate(detRand(seed), group, creator, heads, recipients)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func metaEqual(a, b keyring.Meta) bool {
	return a.Group == b.Group && a.KeyID == b.KeyID && a.Creator == b.Creator &&
		slices.Equal(a.RosterHeads, b.RosterHeads) && slices.Equal(a.Recipients, b.Recipients) &&
		a.DerivedFrom == b.DerivedFrom && a.AddOp == b.AddOp
}

func TestComputeIDIsCommitment(t *testing.T) {
	g1, g2 := groupID("a"), groupID("b")
	s1 := seqBytes(1, keyring.SecretSize)
	s2 := slices.Clone(s1)
	s2[31] ^= 1

	base := keyring.ComputeID(g1, s1)
	if base != keyring.ComputeID(g1, slices.Clone(s1)) {
		t.Fatal("ComputeID is not deterministic")
	}
	if base.IsZero() {
		t.Fatal("ComputeID returned the zero ID")
	}
	if keyring.ComputeID(g2, s1) == base {
		t.Error("changing the group does not change the ID")
	}
	if keyring.ComputeID(g1, s2) == base {
		t.Error("changing one bit of the secret does not change the ID")
	}

	// The documented construction: SHA-256("p2pchat/v1/key-id" 0x00 group secret).
	h := sha256.New()
	h.Write([]byte("p2pchat/v1/key-id"))
	h.Write([]byte{0})
	h.Write(g1[:])
	h.Write(s1)
	if !bytes.Equal(h.Sum(nil), base[:]) {
		t.Error("ComputeID does not follow the documented construction")
	}
}

// Golden vectors: fixed inputs, outputs frozen when the format was set (and
// checked against an independent Python hashlib/hmac computation of the
// documented formulas). A change here breaks every stored key and message.
const (
	goldenKeyID        = "9634d2442426177b704b48a1f353a39859fee81a7bb1efbb4d02757a0c521cad"
	goldenDerivedKey   = "0db006f3c25f18c40739bac58d2ab35f27da5610a1f0fa8f0af6282677d1d7e3"
	goldenDerivedKeyID = "6996d09be3dc7d4da4ab2876805f7766a0bf9cd07c5bf67144801a1e6409d2a2"
)

func goldenInputs() (roster.GroupID, []byte, roster.OpID) {
	return roster.GroupID(seqBytes(0x00, 32)), seqBytes(0xa0, 32), roster.OpID(seqBytes(0x40, 32))
}

func TestGoldenComputeID(t *testing.T) {
	group, secret, _ := goldenInputs()
	if got := keyring.ComputeID(group, secret).String(); got != goldenKeyID {
		t.Errorf("ComputeID = %s, want %s", got, goldenKeyID)
	}
}

func TestGoldenDerive(t *testing.T) {
	group, secret, addOp := goldenInputs()
	parent, err := keyring.FromSecret(secret, keyring.Meta{Group: group, KeyID: keyring.ComputeID(group, secret)})
	if err != nil {
		t.Fatal(err)
	}
	_, adder := testPeer(t, 1)
	child, err := keyring.Derive(parent, addOp, adder, []peer.ID{adder})
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(child.Secret()); got != goldenDerivedKey {
		t.Errorf("derived secret = %s, want %s", got, goldenDerivedKey)
	}
	if got := child.ID().String(); got != goldenDerivedKeyID {
		t.Errorf("derived id = %s, want %s", got, goldenDerivedKeyID)
	}
}

// goldenSealed is XChaCha20-Poly1305 of "golden" under the golden secret,
// nonce 0x60..0x77, sender goldenSender, seq 7, with the AD
// "p2pchat/v1/msg" 0x00 group key_id len(sender) sender seq(8, big endian),
// checked against an independent Python HChaCha20 + ChaCha20-Poly1305.
const goldenSealed = "24342f28dd3f85a34a02e42900b99d3b0672c7baec2c"

func goldenSender(t testing.TB) peer.ID {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(seqBytes(0x01, 32)))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestGoldenSeal(t *testing.T) {
	group, secret, _ := goldenInputs()
	k, err := keyring.FromSecret(secret, keyring.Meta{Group: group, KeyID: keyring.ComputeID(group, secret)})
	if err != nil {
		t.Fatal(err)
	}
	sender := goldenSender(t)
	nonce, ct, err := k.Seal(bytes.NewReader(seqBytes(0x60, 24)), sender, 7, []byte("golden"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(nonce, seqBytes(0x60, 24)) {
		t.Fatalf("nonce %x is not the first 24 random bytes", nonce)
	}
	if got := hex.EncodeToString(ct); got != goldenSealed {
		t.Errorf("sealed = %s, want %s (sender %x)", got, goldenSealed, []byte(sender))
	}
	if pt, err := k.Open(sender, 7, nonce, ct); err != nil || string(pt) != "golden" {
		t.Fatalf("golden ciphertext does not open: %v", err)
	}
}

func TestFromSecret(t *testing.T) {
	_, alice := testPeer(t, 1)
	group := groupID("g")
	k := mustGenerate(t, 1, group, alice, []roster.OpID{opID("h")}, []peer.ID{alice})
	secret := k.Secret()

	got, err := keyring.FromSecret(secret, k.Meta)
	if err != nil {
		t.Fatalf("FromSecret with the right secret: %v", err)
	}
	if !bytes.Equal(got.Secret(), secret) || got.ID() != k.ID() || !metaEqual(got.Meta, k.Meta) {
		t.Fatal("FromSecret did not rebuild the same key")
	}

	wrong := slices.Clone(secret)
	wrong[0] ^= 0x80
	otherGroup := k.Meta
	otherGroup.Group = groupID("other")
	cases := []struct {
		name   string
		secret []byte
		meta   keyring.Meta
	}{
		{"wrong secret", wrong, k.Meta},
		{"short secret", secret[:31], k.Meta},
		{"long secret", append(slices.Clone(secret), 0), k.Meta},
		{"empty secret", nil, k.Meta},
		{"meta of another group", secret, otherGroup},
		{"zero key id", secret, keyring.Meta{Group: group}},
		// The ID commits to 33 bytes: the key must still be 32 bytes.
		{"long secret matching its id", append(slices.Clone(secret), 1), keyring.Meta{Group: group, KeyID: keyring.ComputeID(group, append(slices.Clone(secret), 1))}},
		{"short secret matching its id", secret[:31], keyring.Meta{Group: group, KeyID: keyring.ComputeID(group, secret[:31])}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k, err := keyring.FromSecret(c.secret, c.meta)
			if !errors.Is(err, keyring.ErrIDMismatch) {
				t.Fatalf("err = %v, want ErrIDMismatch", err)
			}
			if k != nil {
				t.Fatal("a key was returned with the error")
			}
		})
	}
}

func TestSecretReturnsCopy(t *testing.T) {
	_, alice := testPeer(t, 1)
	k := mustGenerate(t, 2, groupID("g"), alice, []roster.OpID{opID("h")}, []peer.ID{alice})
	s := k.Secret()
	want := slices.Clone(s)
	s[0] ^= 0xff
	if !bytes.Equal(k.Secret(), want) {
		t.Fatal("mutating the result of Secret changed the key")
	}
}

func TestGenerate(t *testing.T) {
	_, alice := testPeer(t, 1)
	_, bob := testPeer(t, 2)
	group := groupID("g")
	h1, h2 := opID("1"), opID("2")
	k := mustGenerate(t, 3, group, alice, []roster.OpID{h2, h1, h2}, []peer.ID{bob, alice, bob})
	if k.Meta.Group != group || k.Meta.Creator != alice {
		t.Fatal("group or creator not recorded")
	}
	if k.ID() != keyring.ComputeID(group, k.Secret()) {
		t.Fatal("key ID does not commit to the secret")
	}
	wantHeads := []roster.OpID{h1, h2}
	slices.SortFunc(wantHeads, roster.OpID.Compare)
	if !slices.Equal(k.Meta.RosterHeads, wantHeads) {
		t.Errorf("heads %v, want sorted and unique %v", k.Meta.RosterHeads, wantHeads)
	}
	if !slices.Equal(k.Meta.Recipients, keyring.SortedRecipients([]peer.ID{alice, bob})) || len(k.Meta.Recipients) != 2 {
		t.Errorf("recipients %v not sorted and unique", k.Meta.Recipients)
	}
	if !k.Meta.DerivedFrom.IsZero() || k.Meta.AddOp != (roster.OpID{}) {
		t.Error("a generated key claims a parent")
	}
	if !k.Meta.IsRecipient(alice) || !k.Meta.IsRecipient(bob) {
		t.Error("IsRecipient false for a recipient")
	}
	_, carol := testPeer(t, 3)
	if k.Meta.IsRecipient(carol) {
		t.Error("IsRecipient true for a non-recipient")
	}
	k2 := mustGenerate(t, 4, group, alice, wantHeads, []peer.ID{alice, bob})
	if bytes.Equal(k.Secret(), k2.Secret()) || k.ID() == k2.ID() {
		t.Error("two keys from different randomness are equal")
	}
	if _, err := keyring.Generate(bytes.NewReader(make([]byte, 10)), group, alice, wantHeads, []peer.ID{alice}); err == nil {
		t.Error("Generate succeeded with a short random source")
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	_, alice := testPeer(t, 1)
	k := mustGenerate(t, 5, groupID("g"), alice, []roster.OpID{opID("h")}, []peer.ID{alice})
	for _, pt := range [][]byte{nil, []byte("hello"), bytes.Repeat([]byte{0xab}, 70000)} {
		nonce, ct, err := k.Seal(detRand(6), alice, 42, pt)
		if err != nil {
			t.Fatal(err)
		}
		if len(nonce) != 24 {
			t.Fatalf("nonce of %d bytes, want 24", len(nonce))
		}
		if len(pt) > 0 && bytes.Contains(ct, pt) {
			t.Fatal("ciphertext contains the plaintext")
		}
		got, err := k.Open(alice, 42, nonce, ct)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		if !bytes.Equal(got, pt) {
			t.Fatal("Open returned different plaintext")
		}
	}
	// Two seals of the same message use different nonces.
	r := detRand(7)
	n1, c1, _ := k.Seal(r, alice, 1, []byte("x"))
	n2, c2, _ := k.Seal(r, alice, 1, []byte("x"))
	if bytes.Equal(n1, n2) || bytes.Equal(c1, c2) {
		t.Error("two seals reused a nonce")
	}
	if _, _, err := k.Seal(bytes.NewReader(nil), alice, 1, []byte("x")); err == nil {
		t.Error("Seal succeeded without randomness for the nonce")
	}
}

func TestOpenBindsAssociatedData(t *testing.T) {
	_, alice := testPeer(t, 1)
	_, bob := testPeer(t, 2)
	group := groupID("g")
	k := mustGenerate(t, 8, group, alice, []roster.OpID{opID("h")}, []peer.ID{alice, bob})
	nonce, ct, err := k.Seal(detRand(9), alice, 7, []byte("attack at dawn"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.Open(alice, 7, nonce, ct); err != nil {
		t.Fatalf("control: %v", err)
	}

	// Same secret in another group: a different key ID and group in the AD.
	otherGroup := groupID("g2")
	sameSecretOtherGroup, err := keyring.FromSecret(k.Secret(), keyring.Meta{Group: otherGroup, KeyID: keyring.ComputeID(otherGroup, k.Secret())})
	if err != nil {
		t.Fatal(err)
	}
	otherKey := mustGenerate(t, 10, group, alice, []roster.OpID{opID("h")}, []peer.ID{alice, bob})

	flip := func(b []byte, i int) []byte { c := slices.Clone(b); c[i] ^= 1; return c }
	cases := []struct {
		name   string
		key    *keyring.Key
		sender peer.ID
		seq    uint64
		nonce  []byte
		ct     []byte
	}{
		{"other sender", k, bob, 7, nonce, ct},
		{"other seq", k, alice, 8, nonce, ct},
		{"seq high bit", k, alice, 7 | 1<<63, nonce, ct},
		{"other group", sameSecretOtherGroup, alice, 7, nonce, ct},
		{"other key", otherKey, alice, 7, nonce, ct},
		{"flipped nonce", k, alice, 7, flip(nonce, 0), ct},
		{"short nonce", k, alice, 7, nonce[:23], ct},
		{"long nonce", k, alice, 7, append(slices.Clone(nonce), 0), ct},
		{"no nonce", k, alice, 7, nil, ct},
		{"flipped ciphertext", k, alice, 7, nonce, flip(ct, 0)},
		{"flipped tag", k, alice, 7, nonce, flip(ct, len(ct)-1)},
		{"truncated ciphertext", k, alice, 7, nonce, ct[:len(ct)-1]},
		{"empty ciphertext", k, alice, 7, nonce, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pt, err := c.key.Open(c.sender, c.seq, c.nonce, c.ct)
			if !errors.Is(err, keyring.ErrDecrypt) {
				t.Fatalf("err = %v, want ErrDecrypt", err)
			}
			if pt != nil {
				t.Fatal("plaintext returned with the error")
			}
		})
	}
}

func TestDerive(t *testing.T) {
	_, alice := testPeer(t, 1)
	_, bob := testPeer(t, 2)
	_, carol := testPeer(t, 3)
	group := groupID("g")
	parent := mustGenerate(t, 11, group, alice, []roster.OpID{opID("h")}, []peer.ID{alice, bob})
	add := opID("add carol")

	c1, err := keyring.Derive(parent, add, bob, []peer.ID{carol, alice, bob})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := keyring.Derive(parent, add, bob, []peer.ID{alice, bob, carol})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(c1.Secret(), c2.Secret()) || c1.ID() != c2.ID() {
		t.Fatal("Derive is not deterministic")
	}
	// Another adder computes the same key: only parent and add op matter.
	c3, err := keyring.Derive(parent, add, alice, []peer.ID{alice, bob, carol})
	if err != nil {
		t.Fatal(err)
	}
	if c3.ID() != c1.ID() {
		t.Error("the derived key depends on who computes it")
	}

	m := c1.Meta
	if m.Group != group || m.Creator != bob || m.DerivedFrom != parent.ID() || m.AddOp != add {
		t.Errorf("derived meta %+v", m)
	}
	if !slices.Equal(m.RosterHeads, []roster.OpID{add}) {
		t.Errorf("derived heads %v, want the add op", m.RosterHeads)
	}
	if !slices.Equal(m.Recipients, keyring.SortedRecipients([]peer.ID{alice, bob, carol})) {
		t.Errorf("derived recipients %v not sorted", m.Recipients)
	}
	if c1.ID() != keyring.ComputeID(group, c1.Secret()) {
		t.Error("derived key ID does not commit to its secret")
	}

	// One-way: the child is not the parent and does not lead back to it.
	if bytes.Equal(c1.Secret(), parent.Secret()) || c1.ID() == parent.ID() {
		t.Fatal("derived key equals its parent")
	}
	back, err := keyring.Derive(c1, add, carol, []peer.ID{alice, bob, carol})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(back.Secret(), parent.Secret()) || back.ID() == parent.ID() || bytes.Equal(back.Secret(), c1.Secret()) {
		t.Fatal("deriving from the child gives the parent or the child")
	}

	// Different add ops or parents give unrelated keys.
	d, _ := keyring.Derive(parent, opID("add dave"), bob, []peer.ID{alice, bob, carol})
	if d.ID() == c1.ID() || bytes.Equal(d.Secret(), c1.Secret()) {
		t.Error("two add ops derive the same key")
	}
	other := mustGenerate(t, 12, group, alice, []roster.OpID{opID("h")}, []peer.ID{alice, bob})
	e, _ := keyring.Derive(other, add, bob, []peer.ID{alice, bob, carol})
	if e.ID() == c1.ID() {
		t.Error("two parents derive the same key")
	}
	// The child is usable: it seals and opens.
	n, ct, err := c1.Seal(detRand(13), carol, 1, []byte("hi"))
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := c2.Open(carol, 1, n, ct); err != nil || string(pt) != "hi" {
		t.Fatalf("derived key does not open its own seal: %v", err)
	}
	if _, err := parent.Open(carol, 1, n, ct); !errors.Is(err, keyring.ErrDecrypt) {
		t.Fatal("the parent opens a message sealed under the child")
	}
}

func TestParseID(t *testing.T) {
	b := seqBytes(9, 32)
	id, err := keyring.ParseID(b)
	if err != nil || !bytes.Equal(id[:], b) {
		t.Fatalf("ParseID(32 bytes) = %v, %v", id, err)
	}
	for _, n := range []int{0, 31, 33} {
		if _, err := keyring.ParseID(make([]byte, n)); !errors.Is(err, keyring.ErrMalformedMeta) {
			t.Errorf("ParseID(%d bytes) err = %v, want ErrMalformedMeta", n, err)
		}
	}
	if len(id.Short()) != 8 || !strings.HasPrefix(id.String(), id.Short()) {
		t.Errorf("Short %q is not the first 8 hex digits of %q", id.Short(), id.String())
	}
}

// validWireMeta returns a derived key's metadata in wire form with three
// recipients and two heads.
func validWireMeta(t testing.TB) (*wire.KeyMeta, keyring.Meta) {
	t.Helper()
	ps := testPeers(t, 3)
	group := groupID("g")
	parent := mustGenerate(t, 20, group, ps[0], []roster.OpID{opID("a"), opID("b")}, ps[:2])
	child, err := keyring.Derive(parent, opID("add"), ps[0], ps)
	if err != nil {
		t.Fatal(err)
	}
	m := child.Meta
	m.RosterHeads = []roster.OpID{opID("a"), opID("b")}
	slices.SortFunc(m.RosterHeads, roster.OpID.Compare)
	return m.ToWire(), m
}

func TestMetaWireRoundTrip(t *testing.T) {
	ps := testPeers(t, 4)
	gen := mustGenerate(t, 21, groupID("g"), ps[1], []roster.OpID{opID("x"), opID("y"), opID("z")}, ps)
	_, derived := validWireMeta(t)
	for name, m := range map[string]keyring.Meta{"generated": gen.Meta, "derived": derived} {
		t.Run(name, func(t *testing.T) {
			b, err := proto.Marshal(m.ToWire())
			if err != nil {
				t.Fatal(err)
			}
			var w wire.KeyMeta
			if err := proto.Unmarshal(b, &w); err != nil {
				t.Fatal(err)
			}
			got, err := keyring.MetaFromWire(nil, &w)
			if err != nil {
				t.Fatalf("MetaFromWire: %v", err)
			}
			if !metaEqual(got, m) {
				t.Fatalf("round trip changed the meta:\n got %+v\nwant %+v", got, m)
			}
		})
	}
	if w := gen.Meta.ToWire(); w.DerivedFrom != nil || w.AddOpId != nil {
		t.Error("a generated key's wire meta carries derivation fields")
	}
}

func TestMetaFromWireRejects(t *testing.T) {
	secpPriv, _, err := crypto.GenerateSecp256k1Key(detRand(30))
	if err != nil {
		t.Fatal(err)
	}
	secpID, _ := peer.IDFromPrivateKey(secpPriv)
	ecdsaPriv, _, err := crypto.GenerateECDSAKeyPair(detRand(31))
	if err != nil {
		t.Fatal(err)
	}
	ecdsaID, _ := peer.IDFromPrivateKey(ecdsaPriv)

	sorted := func(in ...[]byte) [][]byte {
		slices.SortFunc(in, bytes.Compare)
		return in
	}
	heads := func(n int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			h := opID(fmt.Sprint(i))
			out[i] = h[:]
		}
		return sorted(out...)
	}

	cases := []struct {
		name string
		mod  func(w *wire.KeyMeta)
	}{
		{"short group id", func(w *wire.KeyMeta) { w.GroupId = w.GroupId[:31] }},
		{"long group id", func(w *wire.KeyMeta) { w.GroupId = append(w.GroupId, 0) }},
		{"no group id", func(w *wire.KeyMeta) { w.GroupId = nil }},
		{"short key id", func(w *wire.KeyMeta) { w.KeyId = w.KeyId[:31] }},
		{"long key id", func(w *wire.KeyMeta) { w.KeyId = append(w.KeyId, 0) }},
		{"garbage creator", func(w *wire.KeyMeta) { w.Creator = []byte("not a peer id") }},
		{"secp256k1 creator", func(w *wire.KeyMeta) { w.Creator = []byte(secpID) }},
		{"no heads", func(w *wire.KeyMeta) { w.RosterHeads = nil }},
		{"65 heads", func(w *wire.KeyMeta) { w.RosterHeads = heads(65) }},
		{"short head", func(w *wire.KeyMeta) { w.RosterHeads[0] = w.RosterHeads[0][:31] }},
		{"unsorted heads", func(w *wire.KeyMeta) { slices.Reverse(w.RosterHeads) }},
		{"no recipients", func(w *wire.KeyMeta) { w.Recipients = nil }},
		{"unsorted recipients", func(w *wire.KeyMeta) { w.Recipients[0], w.Recipients[1] = w.Recipients[1], w.Recipients[0] }},
		{"duplicate recipient", func(w *wire.KeyMeta) { w.Recipients = sorted(w.Recipients[0], w.Recipients[0], w.Recipients[1]) }},
		{"garbage recipient", func(w *wire.KeyMeta) { w.Recipients = sorted(w.Recipients[0], []byte{0x00, 0x01}) }},
		{"empty recipient", func(w *wire.KeyMeta) { w.Recipients = sorted(w.Recipients[0], []byte{}) }},
		{"secp256k1 recipient", func(w *wire.KeyMeta) { w.Recipients = sorted(w.Recipients[0], []byte(secpID)) }},
		{"ecdsa recipient", func(w *wire.KeyMeta) { w.Recipients = sorted(w.Recipients[0], []byte(ecdsaID)) }},
		{"short derived_from", func(w *wire.KeyMeta) { w.DerivedFrom = w.DerivedFrom[:31] }},
		{"derived_from without add op", func(w *wire.KeyMeta) { w.AddOpId = nil }},
		{"add op without derived_from", func(w *wire.KeyMeta) { w.DerivedFrom = nil }},
		{"long add op", func(w *wire.KeyMeta) { w.AddOpId = append(w.AddOpId, 0) }},
		{"zero derived_from", func(w *wire.KeyMeta) { w.DerivedFrom = make([]byte, 32) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w, _ := validWireMeta(t)
			if _, err := keyring.MetaFromWire(nil, w); err != nil {
				t.Fatalf("control: %v", err)
			}
			c.mod(w)
			if _, err := keyring.MetaFromWire(nil, w); !errors.Is(err, keyring.ErrMalformedMeta) {
				t.Fatalf("err = %v, want ErrMalformedMeta", err)
			}
		})
	}
}

func TestMetaFromWireRecipientBound(t *testing.T) {
	const max = 4096
	ids := make([][]byte, max+1)
	for i := range ids {
		seed := sha256.Sum256(binary.BigEndian.AppendUint32([]byte("recipient"), uint32(i)))
		priv, _, err := crypto.GenerateEd25519Key(bytes.NewReader(seed[:]))
		if err != nil {
			t.Fatal(err)
		}
		id, _ := peer.IDFromPrivateKey(priv)
		ids[i] = []byte(id)
	}
	slices.SortFunc(ids, bytes.Compare)
	w, _ := validWireMeta(t)

	w.Recipients = ids[:max]
	m, err := keyring.MetaFromWire(nil, w)
	if err != nil {
		t.Fatalf("%d recipients refused: %v", max, err)
	}
	if len(m.Recipients) != max {
		t.Fatalf("got %d recipients", len(m.Recipients))
	}
	w.Recipients = ids
	if _, err := keyring.MetaFromWire(nil, w); !errors.Is(err, keyring.ErrMalformedMeta) {
		t.Fatalf("%d recipients: err = %v, want ErrMalformedMeta", max+1, err)
	}
}

func TestSortedRecipients(t *testing.T) {
	ps := testPeers(t, 3)
	in := []peer.ID{ps[2], ps[0], ps[2], ps[1], ps[0]}
	orig := slices.Clone(in)
	got := keyring.SortedRecipients(in)
	if !slices.Equal(got, ps) {
		t.Fatalf("SortedRecipients = %v, want %v", got, ps)
	}
	if !slices.Equal(in, orig) {
		t.Fatal("SortedRecipients modified its input")
	}
}

// heights is a Height function over single-op roster states.
func heights(m map[roster.OpID]int) keyring.Height {
	return func(heads []roster.OpID) (int, bool) {
		best, known := 0, false
		for _, h := range heads {
			v, ok := m[h]
			if !ok {
				return 0, false
			}
			best, known = max(best, v), true
		}
		return best, known
	}
}

func TestRingAddGet(t *testing.T) {
	ps := testPeers(t, 2)
	group := groupID("g")
	r := keyring.NewRing(group)
	k := mustGenerate(t, 40, group, ps[0], []roster.OpID{opID("h")}, ps)
	if !r.Add(k) {
		t.Fatal("Add of a new key returned false")
	}
	if r.Add(k) {
		t.Fatal("Add of a held key returned true")
	}
	if r.Add(mustGenerate(t, 41, groupID("other"), ps[0], []roster.OpID{opID("h")}, ps)) {
		t.Fatal("Add accepted a key of another group")
	}
	if got, ok := r.Get(k.ID()); !ok || got != k {
		t.Fatal("Get does not return the added key")
	}
	if _, ok := r.Get(keyring.ID{1}); ok {
		t.Fatal("Get found an unknown key")
	}
	for i := range 5 {
		r.Add(mustGenerate(t, uint64(50+i), group, ps[0], []roster.OpID{opID("h")}, ps))
	}
	if r.Len() != 6 {
		t.Fatalf("Len = %d, want 6", r.Len())
	}
	keys := r.Keys()
	if len(keys) != 6 || !slices.IsSortedFunc(keys, func(a, b *keyring.Key) int { return bytes.Compare(a.Meta.KeyID[:], b.Meta.KeyID[:]) }) {
		t.Fatal("Keys not sorted by ID")
	}
}

func TestSendingKeyExactMembership(t *testing.T) {
	ps := testPeers(t, 4)
	a, b, c, d := ps[0], ps[1], ps[2], ps[3]
	group := groupID("g")
	h := opID("h")
	hf := heights(map[roster.OpID]int{h: 1})
	r := keyring.NewRing(group)
	kab := mustGenerate(t, 60, group, a, []roster.OpID{h}, []peer.ID{a, b})
	kabc := mustGenerate(t, 61, group, a, []roster.OpID{h}, []peer.ID{a, b, c})
	r.Add(kab)
	r.Add(kabc)

	cases := []struct {
		name    string
		members []peer.ID
		want    *keyring.Key
	}{
		{"a b", []peer.ID{a, b}, kab},
		{"b a unsorted with duplicate", []peer.ID{b, a, b}, kab},
		{"a b c", []peer.ID{c, a, b}, kabc},
		{"a only", []peer.ID{a}, nil},
		{"a b c d", []peer.ID{a, b, c, d}, nil},
		{"a c", []peer.ID{a, c}, nil},
		{"none", nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := r.SendingKey(tc.members, hf); got != tc.want {
				t.Fatalf("SendingKey = %v, want %v", got, tc.want)
			}
		})
	}
	if got := keyring.NewRing(group).SendingKey([]peer.ID{a, b}, hf); got != nil {
		t.Fatal("empty ring returned a key")
	}
}

func TestSendingKeyPrefersHeightThenLowestID(t *testing.T) {
	ps := testPeers(t, 2)
	group := groupID("g")
	var keys []*keyring.Key
	for i := range 4 {
		keys = append(keys, mustGenerate(t, uint64(70+i), group, ps[0], []roster.OpID{opID(fmt.Sprint("h", i))}, ps))
	}
	slices.SortFunc(keys, func(a, b *keyring.Key) int { return bytes.Compare(a.Meta.KeyID[:], b.Meta.KeyID[:]) })
	lo, mid, mid2, hi := keys[0], keys[1], keys[2], keys[3]

	// Greater height wins even over a lower ID.
	hs := map[roster.OpID]int{
		lo.Meta.RosterHeads[0]:   3,
		mid.Meta.RosterHeads[0]:  5,
		mid2.Meta.RosterHeads[0]: 5,
		hi.Meta.RosterHeads[0]:   9,
	}
	// Insertion order must not matter: map iteration is random, so try many.
	for i := range 20 {
		r := keyring.NewRing(group)
		perm := rand.New(rand.NewPCG(uint64(i), 0)).Perm(len(keys))
		for _, j := range perm {
			r.Add(keys[j])
		}
		if got := r.SendingKey(ps, heights(hs)); got != hi {
			t.Fatalf("order %v: SendingKey = %v, want the highest key %v", perm, got, hi)
		}
	}

	// Equal height: lowest ID wins.
	hs[hi.Meta.RosterHeads[0]] = 5
	hs[lo.Meta.RosterHeads[0]] = 1
	for i := range 20 {
		r := keyring.NewRing(group)
		for _, j := range rand.New(rand.NewPCG(uint64(i), 1)).Perm(len(keys)) {
			r.Add(keys[j])
		}
		if got := r.SendingKey(ps, heights(hs)); got != mid {
			t.Fatalf("SendingKey = %v, want lowest-ID key among the highest %v", got, mid)
		}
	}

	// Keys whose heads the height function does not know are skipped.
	delete(hs, mid.Meta.RosterHeads[0])
	r := keyring.NewRing(group)
	for _, k := range keys {
		r.Add(k)
	}
	if got := r.SendingKey(ps, heights(hs)); got != mid2 {
		t.Fatalf("SendingKey = %v, want %v once %v's heads are unknown", got, mid2, mid)
	}
	if got := r.SendingKey(ps, heights(nil)); got != nil {
		t.Fatalf("SendingKey = %v with no known heads, want nil", got)
	}
}

func TestQualifiesDerivedKeyAncestry(t *testing.T) {
	ps := testPeers(t, 5)
	a, b, c, x, y := ps[0], ps[1], ps[2], ps[3], ps[4]
	group := groupID("g")
	hf := func([]roster.OpID) (int, bool) { return 1, true }
	members := keyring.SortedRecipients([]peer.ID{a, b, c})

	// x held the parent; c is added, concurrently x is removed: the child's
	// recipients are exactly the members, yet x can derive the child.
	parent := mustGenerate(t, 80, group, a, []roster.OpID{opID("p")}, []peer.ID{a, b, x})
	child, err := keyring.Derive(parent, opID("add c"), a, members)
	if err != nil {
		t.Fatal(err)
	}
	r := keyring.NewRing(group)
	r.Add(child)
	if !r.Qualifies(child, members) {
		t.Fatal("child without its parent in the ring does not qualify")
	}
	if got := r.SendingKey(members, hf); got != child {
		t.Fatal("child not chosen while its parent is unknown")
	}
	r.Add(parent)
	if r.Qualifies(child, members) {
		t.Fatal("child qualifies although its parent's recipient x is not a member")
	}
	if got := r.SendingKey(members, hf); got != nil {
		t.Fatalf("SendingKey = %v, want nil", got)
	}

	// A parent whose recipients are all members is fine.
	goodParent := mustGenerate(t, 81, group, a, []roster.OpID{opID("p2")}, []peer.ID{a, b})
	goodChild, _ := keyring.Derive(goodParent, opID("add c"), a, members)
	r2 := keyring.NewRing(group)
	r2.Add(goodParent)
	r2.Add(goodChild)
	if !r2.Qualifies(goodChild, members) {
		t.Fatal("child of a parent held only by members does not qualify")
	}

	// Two hops: the grandparent was held by y.
	gp := mustGenerate(t, 82, group, a, []roster.OpID{opID("gp")}, []peer.ID{a, y})
	p, _ := keyring.Derive(gp, opID("add b"), a, []peer.ID{a, b})
	ch, _ := keyring.Derive(p, opID("add c 2"), a, members)
	r3 := keyring.NewRing(group)
	r3.Add(p)
	r3.Add(ch)
	if !r3.Qualifies(ch, members) {
		t.Fatal("grandchild does not qualify with a clean parent")
	}
	r3.Add(gp)
	if r3.Qualifies(ch, members) {
		t.Fatal("grandchild qualifies although its grandparent was held by a non-member")
	}
	if r3.Qualifies(ch, []peer.ID{a, b}) {
		t.Fatal("key qualifies for a membership unequal to its recipients")
	}
}

func TestKeyLogValueHidesSecret(t *testing.T) {
	ps := testPeers(t, 2)
	k := mustGenerate(t, 90, groupID("g"), ps[0], []roster.OpID{opID("h")}, ps)
	secret := k.Secret()
	forbidden := map[string]string{
		"hex":            hex.EncodeToString(secret),
		"HEX":            strings.ToUpper(hex.EncodeToString(secret)),
		"base64":         base64.StdEncoding.EncodeToString(secret),
		"base64 raw":     base64.RawStdEncoding.EncodeToString(secret),
		"base64 url":     base64.URLEncoding.EncodeToString(secret),
		"base64 raw url": base64.RawURLEncoding.EncodeToString(secret),
		"raw":            string(secret),
		"decimal":        strings.Trim(fmt.Sprint(secret), "[]"),
		"hex prefix":     hex.EncodeToString(secret[:8]),
	}
	var buf bytes.Buffer
	handlers := []slog.Handler{
		slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}),
		slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}),
	}
	for _, h := range handlers {
		l := slog.New(h)
		l.Info("key", "key", k)
		l.Info("key", slog.Any("key", k))
		l.With("key", k).Debug("with")
		l.Info("group", slog.Group("g", "key", k))
	}
	out := buf.String()
	for name, s := range forbidden {
		if strings.Contains(out, s) {
			t.Errorf("log output contains the secret (%s):\n%s", name, out)
		}
	}
	// The value is logged through LogValue: its ID is there.
	if c := strings.Count(out, k.ID().Short()); c < 8 {
		t.Errorf("key ID appears %d times, want 8:\n%s", c, out)
	}
}

// TestQualifiesMatchesAFreshWalk: with keys arriving in any order (parents
// after children, chains that drop and re-add members), the cached answer
// of Qualifies after every Add equals a walk down the derive chain.
func TestQualifiesMatchesAFreshWalk(t *testing.T) {
	ps := testPeers(t, 6)
	group := groupID("walk")
	rng := detRand(7)
	pick := func() []peer.ID {
		var out []peer.ID
		for _, p := range ps {
			var b [1]byte
			rng.Read(b[:])
			if b[0]&1 == 1 {
				out = append(out, p)
			}
		}
		if len(out) == 0 {
			out = ps[:1]
		}
		return keyring.SortedRecipients(out)
	}
	walk := func(keys map[keyring.ID]*keyring.Key, k *keyring.Key) bool {
		for cur := k; !cur.Meta.DerivedFrom.IsZero(); {
			parent, ok := keys[cur.Meta.DerivedFrom]
			if !ok {
				return true
			}
			for _, p := range parent.Meta.Recipients {
				if !slicesContains(k.Meta.Recipients, p) {
					return false
				}
			}
			cur = parent
		}
		return true
	}
	for round := range 200 {
		var keys []*keyring.Key
		root := mustGenerate(t, uint64(round), group, ps[0], []roster.OpID{opID(fmt.Sprint("root", round))}, pick())
		keys = append(keys, root)
		for i := range 6 {
			var b [1]byte
			rng.Read(b[:])
			parent := keys[int(b[0])%len(keys)]
			k, err := keyring.Derive(parent, opID(fmt.Sprint(round, "add", i)), ps[0], pick())
			if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
		order := make([]int, len(keys))
		for i := range order {
			order[i] = i
		}
		for i := len(order) - 1; i > 0; i-- {
			var b [1]byte
			rng.Read(b[:])
			j := int(b[0]) % (i + 1)
			order[i], order[j] = order[j], order[i]
		}
		r := keyring.NewRing(group)
		held := map[keyring.ID]*keyring.Key{}
		for _, i := range order {
			r.Add(keys[i])
			held[keys[i].ID()] = keys[i]
			for _, k := range held {
				if got, want := r.Qualifies(k, k.Meta.Recipients), walk(held, k); got != want {
					t.Fatalf("round %d: Qualifies = %v, a fresh walk says %v", round, got, want)
				}
			}
		}
	}
}

func slicesContains(ps []peer.ID, p peer.ID) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}
