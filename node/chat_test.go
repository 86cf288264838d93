package node

import (
	"fmt"
	"testing"
	"time"
)

// TestGroupChat: five members each send; every member reads every message,
// shown in each sender's order.
func TestGroupChat(t *testing.T) {
	nodes := newTestNodes(t, 5)
	gid := formGroup(t, nodes)

	const perSender = 20
	want := make(map[string]string)
	for i := 0; i < perSender; i++ {
		for j, n := range nodes {
			text := fmt.Sprintf("%s says %d", label(j), i)
			m := n.send(gid, text)
			want[m.ID()] = text
		}
	}
	for i, n := range nodes {
		eventually(t, 20*time.Second, fmt.Sprintf("%s reads all %d messages", label(i), len(want)), func() bool {
			return len(n.rec.readable(gid)) == len(want)
		})
		got := n.rec.readable(gid)
		for id, text := range want {
			if got[id] != text {
				t.Fatalf("%s: message %s = %q, want %q", label(i), id, got[id], text)
			}
		}
		last := make(map[string]uint64)
		for _, m := range n.rec.shown(gid) {
			s := m.Sender.String()
			if m.Seq <= last[s] {
				t.Fatalf("%s: message %d of %s shown after %d", label(i), m.Seq, m.Sender.ShortString(), last[s])
			}
			last[s] = m.Seq
		}
		hist, err := n.mustGroup(gid).History()
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != len(want) {
			t.Fatalf("%s: history has %d messages, want %d", label(i), len(hist), len(want))
		}
	}
}
