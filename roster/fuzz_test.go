package roster

import (
	"bytes"
	"errors"
	"testing"

	"github.com/p2pchat/p2pchat/wire"
)

func fuzzSeedOps(t testing.TB) []*Op {
	d := newDAG(t, alice)
	d.add("a1", alice, bob, RoleAdmin, "c")
	k, _ := NewAdd(testPrivs[bob], d.r.ID(), []OpID{d.ops["a1"].ID, d.ops["c"].ID}, testIDs[carol], RoleMember, bytes.Repeat([]byte{1}, KeyIDLen))
	return []*Op{
		d.ops["c"], d.ops["a1"], k,
		d.mk("r", KindRemove, bob, alice, 0, "a1"),
		d.mk("l", KindLeave, bob, 0, 0, "a1", "c"),
	}
}

// checkParsed asserts the invariants of a successfully decoded op.
func checkParsed(t *testing.T, op *Op) {
	again, err := Parse(op.Marshal())
	if err != nil {
		t.Fatalf("re-parse of a parsed op failed: %v", err)
	}
	if again.ID != op.ID || again.Kind != op.Kind || again.Author != op.Author || again.Group != op.Group ||
		again.Member != op.Member || again.Role != op.Role || !sameIDs(again.Parents, op.Parents) {
		t.Fatalf("round trip changed the op: %+v vs %+v", again, op)
	}
	if op.ID != opIDOf(op.Signed.Body) || string(op.Signed.Signer) != string(op.Author) {
		t.Fatal("ID or author not bound to the signed bytes")
	}
	if op.Kind < KindCreate || op.Kind > KindLeave {
		t.Fatalf("kind %v", op.Kind)
	}
	if op.Kind == KindCreate {
		if op.Group != op.ID || len(op.Parents) != 0 {
			t.Fatal("create op structure")
		}
	} else if len(op.Parents) == 0 || len(op.Parents) > MaxParents {
		t.Fatal("parents count")
	}
	for i := 1; i < len(op.Parents); i++ {
		if op.Parents[i-1].Compare(op.Parents[i]) >= 0 {
			t.Fatal("parents not strictly sorted")
		}
	}
	if (op.Kind == KindAdd || op.Kind == KindRemove) && (op.Member == "" || op.Member == op.Author) {
		t.Fatal("member")
	}
	if op.Kind == KindAdd && !op.Role.Valid() {
		t.Fatal("role")
	}
}

func FuzzParseOp(f *testing.F) {
	for _, op := range fuzzSeedOps(f) {
		f.Add(op.Marshal())
	}
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x01, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		op, err := Parse(b)
		if err != nil {
			if op != nil {
				t.Fatal("op and error")
			}
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, wire.ErrBadSignature) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		checkParsed(t, op)
	})
}

// FuzzDecodeBody signs arbitrary bodies with a valid key, so the structure
// checks behind the signature are fuzzed too (FuzzParseOp rarely gets past
// the signature).
func FuzzDecodeBody(f *testing.F) {
	seeds := fuzzSeedOps(f)
	for _, op := range seeds {
		f.Add(op.Signed.Body, uint8(idIndex[op.Author]))
	}
	f.Fuzz(func(t *testing.T, body []byte, signer uint8) {
		priv := testPrivs[int(signer)%numTestKeys]
		op, err := Decode(nil, signOp(t, priv, body))
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, wire.ErrBadSignature) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		checkParsed(t, op)
		// Any decoded op can be offered to a roster without panicking.
		if op.Kind != KindCreate {
			r, err := New(seeds[0])
			if err != nil {
				t.Fatal(err)
			}
			_, _ = r.Insert(op)
			_ = r.Missing()
			_ = r.State()
		}
	})
}
