package roster

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// buildGroupDAG makes a DAG of about size ops shaped like a long-lived
// group: the founder adds admins and members; then members come and go
// (adds, leaves, removals, re-adds) and every change is acknowledged, with
// now and then two ops made concurrently on the same heads and merged by an
// ack. Ops are applied as made (so the tip ones resolve incrementally).
func buildGroupDAG(tb testing.TB, size int) *Roster {
	tb.Helper()
	rng := rand.New(rand.NewPCG(7, uint64(size)))
	create, err := NewCreate(testPrivs[0], "scale", make([]byte, NonceLen))
	if err != nil {
		tb.Fatal(err)
	}
	r, err := New(create)
	if err != nil {
		tb.Fatal(err)
	}
	apply := func(op *Op, err error) {
		if err != nil {
			tb.Fatal(err)
		}
		if _, err := r.Insert(op); err != nil {
			tb.Fatal(err)
		}
	}
	for x := 1; x < numTestKeys; x++ {
		role := RoleMember
		if x < 4 {
			role = RoleAdmin
		}
		apply(NewAdd(testPrivs[0], r.ID(), r.Heads(), testIDs[x], role, nil))
	}
	// The builder tracks membership itself (every op it makes is effective)
	// so that it never resolves while building.
	member := map[int]bool{}
	for x := 1; x < numTestKeys; x++ {
		member[x] = true
	}
	for r.Len() < size {
		admin := testPrivs[rng.IntN(4)]
		x := 4 + rng.IntN(numTestKeys-5) // the last key is added once, never churned
		switch {
		case rng.IntN(8) == 0:
			// Two admins act concurrently on the same heads; an ack merges.
			heads := r.Heads()
			apply(NewAck(testPrivs[1], r.ID(), heads, nil))
			apply(NewAck(testPrivs[2], r.ID(), heads, nil))
		case member[x] && rng.IntN(2) == 0:
			apply(NewRemove(admin, r.ID(), r.Heads(), testIDs[x]))
			member[x] = false
		case member[x]:
			apply(NewLeave(testPrivs[x], r.ID(), r.Heads()))
			member[x] = false
		default:
			apply(NewAdd(admin, r.ID(), r.Heads(), testIDs[x], RoleMember, nil))
			member[x] = true
		}
		apply(NewAck(testPrivs[rng.IntN(4)], r.ID(), r.Heads(), nil))
	}
	st := r.State()
	for x := 1; x < numTestKeys; x++ {
		if st.IsMember(testIDs[x]) != member[x] {
			tb.Fatalf("builder and resolution disagree on %s", nameOf(testIDs[x]))
		}
	}
	return r
}

var scaleSizes = []int{10_000, 100_000}

// BenchmarkResolveFull: one full resolution of the whole DAG (what every
// applied op cost before incremental resolution).
func BenchmarkResolveFull(b *testing.B) {
	for _, size := range scaleSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			r := buildGroupDAG(b, size)
			b.ResetTimer()
			for b.Loop() {
				r.res = nil
				_ = r.State()
			}
		})
	}
}

// BenchmarkApplyOne: applying one more op at the tip (an ack naming the
// heads) and reading the state — the common case, resolved incrementally.
func BenchmarkApplyOne(b *testing.B) {
	for _, size := range scaleSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			r := buildGroupDAG(b, size)
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				op, err := NewAck(testPrivs[1], r.ID(), r.Heads(), nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := r.Admit([]*Op{op}); err != 0 {
					b.Fatal("refused")
				}
				_ = r.State()
			}
		})
	}
}

// BenchmarkRefuseRemovedFlood: the cost to a member of one op from a
// removed member (validator check plus admission), on a large DAG. The
// flooder was added once at the start and is removed at the end; its ops
// name its own add as parent (backdated to the group's first minutes). The
// check walks the author's own adds and removals, so it grows with the
// flooder's history, not the DAG's.
func BenchmarkRefuseRemovedFlood(b *testing.B) {
	for _, size := range scaleSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			r := buildGroupDAG(b, size)
			// A peer removed for good: remove it now.
			x := testIDs[numTestKeys-1]
			if r.IsMember(x) {
				op, err := NewRemove(testPrivs[0], r.ID(), r.Heads(), x)
				if err != nil {
					b.Fatal(err)
				}
				r.Admit([]*Op{op})
			}
			old := r.Ops()[numTestKeys-1].ID // the add of x
			ops := make([]*Op, 512)
			for i := range ops {
				op, err := NewAck(testPrivs[numTestKeys-1], r.ID(), []OpID{old}, []Mark{{Peer: testIDs[1], Seq: uint64(i)}})
				if err != nil {
					b.Fatal(err)
				}
				ops[i] = op
			}
			b.ResetTimer()
			i := 0
			for b.Loop() {
				op := ops[i%len(ops)]
				i++
				if !r.WouldRefuse(op) {
					b.Fatal("not refused")
				}
				if _, k := r.Admit([]*Op{op}); k != 1 {
					b.Fatal("admitted")
				}
			}
		})
	}
}

// BenchmarkApplyConcurrentPair: two admins act on the same heads, and the
// next pair's first op merges them; each op is followed by reading the
// state. With acks, each is decided alone (no verdict reads an ack). With
// adds (of members already in, which is how a role is set), the second add
// is concurrent with the first and their segment is resolved again.
func BenchmarkApplyConcurrentPair(b *testing.B) {
	for _, kind := range []string{"acks", "adds"} {
		for _, size := range scaleSizes {
			b.Run(fmt.Sprintf("%s/%d", kind, size), func(b *testing.B) {
				r := buildGroupDAG(b, size)
				x := testIDs[numTestKeys-1] // added once by the builder, never churned
				b.ResetTimer()
				for b.Loop() {
					b.StopTimer()
					heads := r.Heads()
					var a1, a2 *Op
					var err1, err2 error
					if kind == "acks" {
						a1, err1 = NewAck(testPrivs[1], r.ID(), heads, nil)
						a2, err2 = NewAck(testPrivs[2], r.ID(), heads, nil)
					} else {
						a1, err1 = NewAdd(testPrivs[1], r.ID(), heads, x, RoleMember, nil)
						a2, err2 = NewAdd(testPrivs[2], r.ID(), heads, x, RoleMember, nil)
					}
					if err1 != nil || err2 != nil {
						b.Fatal(err1, err2)
					}
					b.StartTimer()
					for _, op := range []*Op{a1, a2} {
						if _, k := r.Admit([]*Op{op}); k != 0 {
							b.Fatal("refused")
						}
						_ = r.State()
					}
				}
			})
		}
	}
}

// BenchmarkApplyRemoveReadd: an admin removes a member at the tip and adds
// it back (two ops per iteration, each followed by reading the state).
func BenchmarkApplyRemoveReadd(b *testing.B) {
	for _, size := range scaleSizes {
		b.Run(fmt.Sprint(size), func(b *testing.B) {
			r := buildGroupDAG(b, size)
			x := testIDs[numTestKeys-1] // added once by the builder, never churned
			b.ResetTimer()
			for b.Loop() {
				b.StopTimer()
				rm, err := NewRemove(testPrivs[0], r.ID(), r.Heads(), x)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				r.Admit([]*Op{rm})
				if r.State().IsMember(x) {
					b.Fatal("still a member")
				}
				b.StopTimer()
				add, err := NewAdd(testPrivs[0], r.ID(), r.Heads(), x, RoleMember, nil)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				r.Admit([]*Op{add})
				if !r.State().IsMember(x) {
					b.Fatal("not back")
				}
			}
		})
	}
}
