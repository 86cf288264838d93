package node

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"

	"github.com/p2pchat/p2pchat/internal/gate"
)

// freePort returns a TCP port on loopback nobody listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newTestNodeAt(t *testing.T, dir string, port int) *testNode {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	gater := gate.New()
	n, err := New(ctx, Config{Dir: dir, ListenAddrs: []string{fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", port)}, Params: testParams,
		HostOptions: []libp2p.Option{libp2p.ConnectionGater(gater)}})
	if err != nil {
		t.Fatal(err)
	}
	tn := &testNode{Node: n, t: t, rec: newRecorder(n), dir: dir, gater: gater}
	t.Cleanup(func() { tn.Close() })
	return tn
}

// TestConnectedBeforeMembersReconnectAfterRestart: peers that connected
// before they shared a group (identified while nobody was a member, so no
// address was written down) still find each other after both restart.
// Found by the fault-injection suite (faults: TestConnectedBeforeJoining).
func TestConnectedBeforeMembersReconnectAfterRestart(t *testing.T) {
	aDir, bDir := t.TempDir(), t.TempDir()
	aPort, bPort := freePort(t), freePort(t)
	a, b := newTestNodeAt(t, aDir, aPort), newTestNodeAt(t, bDir, bPort)
	connectAll(t, []*testNode{a, b}) // first connected, then a group
	gid := formGroup(t, []*testNode{a, b})
	eventually(t, 10*time.Second, "each has the other's address stored", func() bool {
		return len(a.storedAddrs(b.ID())) > 0 && len(b.storedAddrs(a.ID())) > 0
	})
	a.Close()
	b.Close()
	a2, b2 := newTestNodeAt(t, aDir, aPort), newTestNodeAt(t, bDir, bPort)
	eventually(t, 20*time.Second, "the restarted members reconnect by themselves", func() bool {
		return len(a2.Host().Network().ConnsToPeer(b2.ID())) > 0
	})
	m := a2.send(gid, "after both restarted")
	eventually(t, 10*time.Second, "b reads a's message", func() bool { return b2.rec.readable(gid)[m.ID()] == m.Text })
}
