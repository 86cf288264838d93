package roster

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Deterministic test identities: key i is Ed25519 from seed
// SHA-256("p2pchat roster test key" || i).
const numTestKeys = 10

var (
	testPrivs [numTestKeys]crypto.PrivKey
	testIDs   [numTestKeys]peer.ID
	idIndex   = map[peer.ID]int{}
)

// Names for the table tests.
const (
	alice = iota
	bob
	carol
	dave
	erin
	frank
	grace
	heidi
)

var keyNames = []string{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"}

func init() {
	for i := range numTestKeys {
		seed := sha256.Sum256(fmt.Appendf(nil, "p2pchat roster test key%d", i))
		priv, err := crypto.UnmarshalEd25519PrivateKey(ed25519.NewKeyFromSeed(seed[:]))
		if err != nil {
			panic(err)
		}
		id, err := peer.IDFromPrivateKey(priv)
		if err != nil {
			panic(err)
		}
		testPrivs[i], testIDs[i] = priv, id
		idIndex[id] = i
	}
}

func nameOf(p peer.ID) string {
	if i, ok := idIndex[p]; ok {
		return keyNames[i]
	}
	return p.String()
}

// dag builds a named op DAG and feeds it to a reference roster.
type dag struct {
	t   testing.TB
	r   *Roster
	ops map[string]*Op
}

func newDAG(t testing.TB, founder int) *dag {
	t.Helper()
	c, err := NewCreate(testPrivs[founder], "test group", make([]byte, NonceLen))
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return &dag{t: t, r: r, ops: map[string]*Op{"c": c}}
}

func (d *dag) ids(parents []string) []OpID {
	d.t.Helper()
	out := make([]OpID, len(parents))
	for i, p := range parents {
		op, ok := d.ops[p]
		if !ok {
			d.t.Fatalf("unknown op %q", p)
		}
		out[i] = op.ID
	}
	return out
}

// mk builds an op without inserting it.
func (d *dag) mk(name string, kind Kind, author, member int, role Role, parents ...string) *Op {
	d.t.Helper()
	var (
		op  *Op
		err error
	)
	ps := d.ids(parents)
	switch kind {
	case KindAdd:
		op, err = NewAdd(testPrivs[author], d.r.ID(), ps, testIDs[member], role, nil)
	case KindRemove:
		op, err = NewRemove(testPrivs[author], d.r.ID(), ps, testIDs[member])
	case KindLeave:
		op, err = NewLeave(testPrivs[author], d.r.ID(), ps)
	default:
		d.t.Fatalf("mk: kind %v", kind)
	}
	if err != nil {
		d.t.Fatalf("mk %s: %v", name, err)
	}
	if _, dup := d.ops[name]; dup {
		d.t.Fatalf("duplicate op name %q", name)
	}
	d.ops[name] = op
	return op
}

func (d *dag) insert(op *Op) {
	d.t.Helper()
	if _, err := d.r.Insert(op); err != nil {
		d.t.Fatalf("insert %v: %v", op, err)
	}
}

func (d *dag) add(name string, author, member int, role Role, parents ...string) *Op {
	d.t.Helper()
	op := d.mk(name, KindAdd, author, member, role, parents...)
	d.insert(op)
	return op
}

func (d *dag) remove(name string, author, member int, parents ...string) *Op {
	d.t.Helper()
	op := d.mk(name, KindRemove, author, member, 0, parents...)
	d.insert(op)
	return op
}

// wantMembers asserts the exact member set of st, as "name:role" pairs.
func wantMembers(t testing.TB, st *State, want map[int]Role) {
	t.Helper()
	got := map[string]Role{}
	for _, m := range st.Members {
		got[nameOf(m.ID)] = m.Role
	}
	w := map[string]Role{}
	for i, r := range want {
		w[keyNames[i]] = r
	}
	if fmt.Sprint(got) != fmt.Sprint(w) {
		t.Fatalf("members = %v, want %v", got, w)
	}
	for i, r := range want {
		if got, ok := st.RoleOf(testIDs[i]); !ok || got != r {
			t.Fatalf("RoleOf(%s) = %v, %v; want %v", keyNames[i], got, ok, r)
		}
	}
}

func (d *dag) wantEffective(names map[string]bool) {
	d.t.Helper()
	for name, want := range names {
		if got := d.r.Effective(d.ops[name].ID); got != want {
			d.t.Errorf("Effective(%s) = %v, want %v", name, got, want)
		}
	}
}

func mustErrIs(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want %v", err, target)
	}
}

func opIDs(ops []*Op) []OpID {
	out := make([]OpID, len(ops))
	for i, o := range ops {
		out[i] = o.ID
	}
	return out
}

func sameIDs(a, b []OpID) bool { return slices.Equal(a, b) }
