package roster

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/wire"
)

// signRaw signs arbitrary body bytes as a roster op, bypassing every check,
// the way an attacker with a valid key could.
func signRaw(t testing.TB, priv crypto.PrivKey, kindName string, kind wire.Kind, body []byte) *wire.Signed {
	t.Helper()
	in := append([]byte("p2pchat/v1/"+kindName+"\x00"), body...)
	sig, err := priv.Sign(in)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return &wire.Signed{Kind: kind, Body: body, Signature: sig, Signer: []byte(signer)}
}

func signOp(t testing.TB, priv crypto.PrivKey, body []byte) *wire.Signed {
	return signRaw(t, priv, "roster-op", wire.Kind_KIND_ROSTER_OP, body)
}

func marshal(t testing.TB, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func appendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

func TestGoldenVector(t *testing.T) {
	seed := make([]byte, ed25519.SeedSize)
	for i := range seed {
		seed[i] = byte(i)
	}
	priv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	nonce := []byte{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf}
	c, err := NewCreate(priv, "golden group", nonce)
	if err != nil {
		t.Fatal(err)
	}
	// Cross-checked independently (Python: hashlib + cryptography).
	const wantCreate = "583fe1791cf46d875bfaa3daa5be91286e06222e14a03dfb895052cbd6e99ffa"
	if got := c.ID.String(); got != wantCreate {
		t.Errorf("create op ID = %s, want %s (wire format changed?)", got, wantCreate)
	}
	for i := range seed {
		seed[i] = byte(32 + i)
	}
	bobPriv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed))
	if err != nil {
		t.Fatal(err)
	}
	bobID, _ := peer.IDFromPrivateKey(bobPriv)
	add, err := NewAdd(priv, c.ID, []OpID{c.ID}, bobID, RoleAdmin, bytes.Repeat([]byte{7}, KeyIDLen))
	if err != nil {
		t.Fatal(err)
	}
	const wantAdd = "637732aa67c2bf3de825178deafe4712ff9ba7b04733fd6a801f6e4f634d7dd1"
	if got := add.ID.String(); got != wantAdd {
		t.Errorf("add op ID = %s, want %s", got, wantAdd)
	}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Insert(add); err != nil {
		t.Fatal(err)
	}
	const wantDigest = "4b33bf9510f045ae319bf3022edde02a8686845c38d987316297b5bb4bd3e5ff"
	if got := OpID(r.State().Digest).String(); got != wantDigest {
		t.Errorf("state digest = %s, want %s", got, wantDigest)
	}
	// The ID is the domain-separated hash of the exact body.
	h := sha256.Sum256(append([]byte("p2pchat/v1/op-id\x00"), c.Signed.Body...))
	if h != c.ID {
		t.Error("op ID is not SHA-256(domain || 0 || body)")
	}
}

func TestParseRoundTrip(t *testing.T) {
	d := newDAG(t, alice)
	d.add("a1", alice, bob, RoleMember, "c")
	ops := []*Op{
		d.ops["c"],
		d.mk("add", KindAdd, alice, carol, RoleAdmin, "c", "a1"),
		d.mk("rm", KindRemove, alice, bob, 0, "a1"),
		d.mk("lv", KindLeave, bob, 0, 0, "a1"),
	}
	for _, op := range ops {
		got, err := Parse(op.Marshal())
		if err != nil {
			t.Fatalf("%v: %v", op, err)
		}
		if got.ID != op.ID || got.Group != op.Group || got.Author != op.Author || got.Kind != op.Kind ||
			got.Member != op.Member || got.Role != op.Role || got.Name != op.Name ||
			!sameIDs(got.Parents, op.Parents) || !bytes.Equal(got.Nonce, op.Nonce) {
			t.Fatalf("round trip: got %+v, want %+v", got, op)
		}
		if _, err := Decode(nil, op.Signed); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUnsortedParentsAccepted(t *testing.T) {
	d := newDAG(t, alice)
	d.add("a1", alice, bob, RoleAdmin, "c")
	d.add("a2", bob, carol, RoleMember, "a1")
	d.add("a3", alice, dave, RoleMember, "a1")
	p := []OpID{d.ops["a2"].ID, d.ops["a3"].ID}
	if p[0].Compare(p[1]) < 0 {
		p[0], p[1] = p[1], p[0]
	}
	body := marshal(t, &wire.Op{
		GroupId: d.r.ID().Bytes(),
		Author:  []byte(testIDs[alice]),
		Parents: [][]byte{p[0][:], p[1][:]},
		Action:  &wire.Op_Leave{Leave: &wire.Leave{}},
	})
	op, err := Decode(nil, signOp(t, testPrivs[alice], body))
	if err != nil {
		t.Fatal(err)
	}
	if op.Parents[0] != p[1] || op.Parents[1] != p[0] {
		t.Fatal("parents not stored sorted")
	}
	if op.ID != opIDOf(body) {
		t.Fatal("ID is not the hash of the exact body")
	}
	d.insert(op)
	if !d.r.Effective(op.ID) {
		t.Fatal("leave not effective")
	}
}

func TestForgedOpRejected(t *testing.T) {
	d := newDAG(t, alice)
	a1 := d.add("a1", alice, bob, RoleMember, "c")
	group := d.r.ID().Bytes()
	parent := d.ops["c"].ID.Bytes()
	author := []byte(testIDs[alice])
	member := []byte(testIDs[bob])

	secpPriv, _, err := crypto.GenerateSecp256k1Key(bytes.NewReader(bytes.Repeat([]byte{1}, 64)))
	if err != nil {
		t.Fatal(err)
	}
	secpID, _ := peer.IDFromPrivateKey(secpPriv)

	validAddBody := marshal(t, &wire.Op{GroupId: group, Author: author, Parents: [][]byte{parent},
		Action: &wire.Op_Add{Add: &wire.Add{Member: member, Role: wire.Role_ROLE_MEMBER}}})
	validCreateBody := d.ops["c"].Signed.Body

	addBody := func(mut func(o *wire.Op, a *wire.Add)) []byte {
		a := &wire.Add{Member: member, Role: wire.Role_ROLE_MEMBER}
		o := &wire.Op{GroupId: group, Author: author, Parents: [][]byte{parent}, Action: &wire.Op_Add{Add: a}}
		mut(o, a)
		return marshal(t, o)
	}
	createBody := func(mut func(o *wire.Op, c *wire.Create)) []byte {
		c := &wire.Create{Name: "x", Nonce: make([]byte, NonceLen)}
		o := &wire.Op{Author: author, Action: &wire.Op_Create{Create: c}}
		mut(o, c)
		return marshal(t, o)
	}
	parents := func(n int) [][]byte {
		out := make([][]byte, n)
		for i := range out {
			id := sha256.Sum256([]byte{byte(i)})
			out[i] = id[:]
		}
		return out
	}

	malformed := map[string]*wire.Signed{
		"nil":        nil,
		"wrong kind": signRaw(t, testPrivs[alice], "envelope", wire.Kind_KIND_ENVELOPE, validAddBody),
		"unspecified kind": func() *wire.Signed {
			s := signOp(t, testPrivs[alice], validAddBody)
			s.Kind = wire.Kind_KIND_UNSPECIFIED
			return s
		}(),
		"body not a proto":     signOp(t, testPrivs[alice], []byte{0xff, 0xff, 0xff}),
		"truncated body":       signOp(t, testPrivs[alice], validAddBody[:len(validAddBody)-3]),
		"empty body":           signOp(t, testPrivs[alice], nil),
		"create with group id": signOp(t, testPrivs[alice], createBody(func(o *wire.Op, c *wire.Create) { o.GroupId = group })),
		"create with parents":  signOp(t, testPrivs[alice], createBody(func(o *wire.Op, c *wire.Create) { o.Parents = [][]byte{parent} })),
		"create short nonce":   signOp(t, testPrivs[alice], createBody(func(o *wire.Op, c *wire.Create) { c.Nonce = c.Nonce[:15] })),
		"create no nonce":      signOp(t, testPrivs[alice], createBody(func(o *wire.Op, c *wire.Create) { c.Nonce = nil })),
		"create long name":     signOp(t, testPrivs[alice], createBody(func(o *wire.Op, c *wire.Create) { c.Name = strings.Repeat("x", MaxNameLen+1) })),
		"create invalid utf8 name": signOp(t, testPrivs[alice], func() []byte {
			c := appendBytesField(nil, 1, []byte{0xff, 0xfe})
			c = appendBytesField(c, 2, make([]byte, NonceLen))
			b := appendBytesField(nil, 2, author)
			return appendBytesField(b, 10, c)
		}()),
		"no parents":         signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { o.Parents = nil })),
		"65 parents":         signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { o.Parents = parents(65) })),
		"short parent":       signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { o.Parents = [][]byte{parent[:31]} })),
		"duplicate parents":  signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { o.Parents = [][]byte{parent, parent} })),
		"no group id":        signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { o.GroupId = nil })),
		"short group id":     signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { o.GroupId = group[:31] })),
		"no action":          signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { o.Action = nil })),
		"member garbage":     signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { a.Member = []byte("nope") })),
		"member empty":       signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { a.Member = nil })),
		"member secp256k1":   signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { a.Member = []byte(secpID) })),
		"role unspecified":   signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { a.Role = wire.Role_ROLE_UNSPECIFIED })),
		"role out of range":  signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { a.Role = 3 })),
		"parent key id size": signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { a.ParentKeyId = []byte{1, 2, 3, 4, 5} })),
		"add self":           signOp(t, testPrivs[alice], addBody(func(o *wire.Op, a *wire.Add) { a.Member = author })),
		"remove self": signOp(t, testPrivs[alice], marshal(t, &wire.Op{GroupId: group, Author: author, Parents: [][]byte{parent},
			Action: &wire.Op_Remove{Remove: &wire.Remove{Member: author}}})),
		"remove garbage member": signOp(t, testPrivs[alice], marshal(t, &wire.Op{GroupId: group, Author: author, Parents: [][]byte{parent},
			Action: &wire.Op_Remove{Remove: &wire.Remove{Member: []byte{0, 1, 2}}}})),
		"unknown top-level field": signOp(t, testPrivs[alice], appendBytesField(bytes.Clone(validAddBody), 14, nil)),
		"unknown nested field": signOp(t, testPrivs[alice], func() []byte {
			a := appendBytesField(nil, 1, member)
			a = protowire.AppendTag(a, 2, protowire.VarintType)
			a = protowire.AppendVarint(a, 1)
			a = appendBytesField(a, 9, []byte("extra"))
			b := appendBytesField(nil, 1, group)
			b = appendBytesField(b, 2, author)
			b = appendBytesField(b, 3, parent)
			return appendBytesField(b, 11, a)
		}()),
		"unknown field in leave": signOp(t, testPrivs[alice], func() []byte {
			b := appendBytesField(nil, 1, group)
			b = appendBytesField(b, 2, author)
			b = appendBytesField(b, 3, parent)
			return appendBytesField(b, 13, appendBytesField(nil, 1, []byte("x")))
		}()),
		"two actions":         signOp(t, testPrivs[alice], appendBytesField(bytes.Clone(validAddBody), 13, nil)),
		"same action twice":   signOp(t, testPrivs[alice], appendBytesField(bytes.Clone(validAddBody), 11, appendBytesField(nil, 1, member))),
		"create and leave":    signOp(t, testPrivs[alice], appendBytesField(bytes.Clone(validCreateBody), 13, nil)),
		"duplicate author":    signOp(t, testPrivs[alice], appendBytesField(bytes.Clone(validAddBody), 2, author)),
		"duplicate group id":  signOp(t, testPrivs[alice], appendBytesField(bytes.Clone(validAddBody), 1, group)),
		"group id wrong type": signOp(t, testPrivs[alice], protowire.AppendVarint(protowire.AppendTag(bytes.Clone(validAddBody), 1, protowire.VarintType), 5)),
	}
	for name, s := range malformed {
		t.Run("malformed/"+name, func(t *testing.T) {
			op, err := Decode(nil, s)
			if op != nil || !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode = %v, %v; want ErrMalformed", op, err)
			}
			if s != nil {
				b, merr := proto.Marshal(s)
				if merr != nil {
					t.Fatal(merr)
				}
				if _, err := Parse(b); !errors.Is(err, ErrMalformed) {
					t.Fatalf("Parse: %v, want ErrMalformed", err)
				}
			}
		})
	}

	good := a1.Signed
	clone := func() *wire.Signed { return proto.Clone(good).(*wire.Signed) }
	badSig := map[string]*wire.Signed{
		"flipped signature bit": func() *wire.Signed { s := clone(); s.Signature[5] ^= 1; return s }(),
		"empty signature":       func() *wire.Signed { s := clone(); s.Signature = nil; return s }(),
		"tampered body":         func() *wire.Signed { s := clone(); s.Body[len(s.Body)-1] ^= 1; return s }(),
		"tampered role": func() *wire.Signed {
			s := clone()
			s.Body = addBody(func(o *wire.Op, a *wire.Add) { a.Role = wire.Role_ROLE_ADMIN })
			return s
		}(),
		"signer swapped": func() *wire.Signed { s := clone(); s.Signer = []byte(testIDs[bob]); return s }(),
		"signer garbage": func() *wire.Signed { s := clone(); s.Signer = []byte("garbage"); return s }(),
		"signer missing": func() *wire.Signed { s := clone(); s.Signer = nil; return s }(),
		// carol signs an op that claims alice as its author.
		"signer is not author": signOp(t, testPrivs[carol], validAddBody),
		// A correctly signed op under a non-Ed25519 identity.
		"secp256k1 signer": signOp(t, secpPriv, marshal(t, &wire.Op{GroupId: group, Author: []byte(secpID), Parents: [][]byte{parent},
			Action: &wire.Op_Leave{Leave: &wire.Leave{}}})),
		"signature for another kind": func() *wire.Signed {
			s := signRaw(t, testPrivs[alice], "envelope", wire.Kind_KIND_ENVELOPE, validAddBody)
			s.Kind = wire.Kind_KIND_ROSTER_OP
			return s
		}(),
	}
	for name, s := range badSig {
		t.Run("badsig/"+name, func(t *testing.T) {
			op, err := Decode(nil, s)
			if op != nil || !errors.Is(err, wire.ErrBadSignature) {
				t.Fatalf("Decode = %v, %v; want ErrBadSignature", op, err)
			}
			if _, err := Parse(marshal(t, s)); !errors.Is(err, wire.ErrBadSignature) {
				t.Fatalf("Parse: %v, want ErrBadSignature", err)
			}
		})
	}

	t.Run("parse garbage", func(t *testing.T) {
		for _, b := range [][]byte{nil, {0xff}, {0x12, 0x05, 0x01}, bytes.Repeat([]byte{0x0a}, 100)} {
			if _, err := Parse(b); !errors.Is(err, ErrMalformed) && !errors.Is(err, wire.ErrBadSignature) {
				t.Fatalf("Parse(%x) = %v", b, err)
			}
		}
	})
	t.Run("parse oversized", func(t *testing.T) {
		s := signOp(t, testPrivs[alice], make([]byte, wire.MaxSignedBody+1))
		_, err := Parse(marshal(t, s))
		mustErrIs(t, err, ErrMalformed)
		_, err = Decode(nil, s)
		mustErrIs(t, err, ErrMalformed)
	})
	t.Run("constructors refuse bad input", func(t *testing.T) {
		if _, err := NewCreate(testPrivs[alice], "x", make([]byte, 15)); !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if _, err := NewCreate(testPrivs[alice], strings.Repeat("é", 65), make([]byte, 16)); !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if _, err := NewAdd(testPrivs[alice], d.r.ID(), nil, testIDs[bob], RoleMember, nil); !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if _, err := NewAdd(testPrivs[alice], d.r.ID(), []OpID{a1.ID, a1.ID}, testIDs[bob], RoleMember, nil); !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if _, err := NewAdd(testPrivs[alice], d.r.ID(), []OpID{a1.ID}, testIDs[bob], Role(0), nil); !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if _, err := NewAdd(testPrivs[alice], d.r.ID(), []OpID{a1.ID}, testIDs[alice], RoleMember, nil); !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if _, err := NewRemove(testPrivs[alice], d.r.ID(), []OpID{a1.ID}, testIDs[alice]); !errors.Is(err, ErrMalformed) {
			t.Fatal(err)
		}
		if _, err := NewLeave(secpPriv, d.r.ID(), []OpID{a1.ID}); err == nil {
			t.Fatal("non-Ed25519 key accepted")
		}
		if _, err := NewLeave(nil, d.r.ID(), []OpID{a1.ID}); err == nil {
			t.Fatal("nil key accepted")
		}
	})
}

// TestAckRoundTrip: an ack's marks survive encoding sorted by peer, and an
// ack with two marks for one peer or more than MaxMarks marks is malformed.
func TestAckRoundTrip(t *testing.T) {
	create, err := NewCreate(testPrivs[0], "g", make([]byte, NonceLen))
	if err != nil {
		t.Fatal(err)
	}
	marks := []Mark{{Peer: testIDs[2], Seq: 7}, {Peer: testIDs[1], Seq: 3}}
	ack, err := NewAck(testPrivs[0], create.ID, []OpID{create.ID}, marks)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(ack.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	if back.Kind != KindAck || len(back.Marks) != 2 || back.ID != ack.ID {
		t.Fatalf("round trip: %+v", back)
	}
	if string(back.Marks[0].Peer) > string(back.Marks[1].Peer) {
		t.Fatalf("marks not sorted: %v", back.Marks)
	}
	for _, bad := range [][]Mark{
		{{Peer: testIDs[1], Seq: 1}, {Peer: testIDs[1], Seq: 2}},
		slices.Repeat([]Mark{{Peer: testIDs[1], Seq: 1}}, MaxMarks+1),
	} {
		op, err := NewAck(testPrivs[0], create.ID, []OpID{create.ID}, bad)
		if err != nil {
			continue // refused at signing is fine too
		}
		if _, err := Parse(op.Marshal()); !errors.Is(err, ErrMalformed) {
			t.Fatalf("ack with %d marks (duplicates): %v, want ErrMalformed", len(bad), err)
		}
	}
}
