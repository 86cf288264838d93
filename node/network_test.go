package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
)

// TestMDNSDiscovery: two nodes with mDNS on find and connect to each other
// with no configuration.
func TestMDNSDiscovery(t *testing.T) {
	start := func() *Node {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, err := New(ctx, Config{MDNS: true, ListenAddrs: []string{"/ip4/0.0.0.0/tcp/0"}, Params: testParams})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	a, b := start(), start()
	eventually(t, 20*time.Second, "mDNS connects the two nodes", func() bool {
		return a.Host().Network().Connectedness(b.ID()) == network.Connected
	})
}

// TestInviteRoundTrip: an invite code carries the group, its name and the
// inviter's addresses; joining with it works; garbage is refused clearly.
func TestInviteRoundTrip(t *testing.T) {
	a, b := newTestNode(t, ""), newTestNode(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	g, err := a.CreateGroup(ctx, "book club")
	if err != nil {
		t.Fatal(err)
	}
	inv, err := g.Invite(ctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	code := inv.String()
	parsed, err := ParseInvite(code)
	if err != nil {
		t.Fatal(err)
	}
	if parsed.Group != g.ID() || parsed.Name != "book club" || parsed.Inviter.ID != a.ID() || len(parsed.Inviter.Addrs) == 0 {
		t.Fatalf("invite round trip lost data: %+v", parsed)
	}
	if _, err := b.Join(ctx, parsed); err != nil {
		t.Fatal(err)
	}
	if !b.mustGroup(g.ID()).IsMember(b.ID()) {
		t.Fatal("joined but not a member")
	}
	// Re-inviting a member just returns a code; it adds nothing.
	before := g.State().Digest
	if _, err := g.Invite(ctx, b.ID()); err != nil || g.State().Digest != before {
		t.Fatalf("re-invite changed the roster (err %v)", err)
	}
	for _, bad := range []string{"", "hello", "p2pchat:", "p2pchat:!!!", "p2pchat:" + strings.Repeat("A", 9000), code[:len(code)-5]} {
		if _, err := ParseInvite(bad); err == nil {
			t.Fatalf("ParseInvite(%.20q) succeeded", bad)
		}
	}
	// A code admits no one the roster does not name.
	c := newTestNode(t, "")
	if _, err := c.Join(ctx, parsed); err == nil {
		t.Fatal("a peer the roster does not name joined with someone else's code")
	}
}
