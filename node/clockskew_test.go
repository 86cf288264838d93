package node

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// TestKeyRequestFromSkewedClock: a member whose clock is hours (or a month)
// off in either direction still gets the key it asks for — freshness does
// not rest on two machines' clocks agreeing — while a removed member asking
// with a skewed clock still gets nothing. (Replays are bounded by the
// answered memory, on the holder's clock alone: TestRewrappedReplayDeduplicated.)
func TestKeyRequestFromSkewedClock(t *testing.T) {
	nodes := newTestNodes(t, 3)
	a, b, x := nodes[0], nodes[1], nodes[2]
	gid := formGroup(t, nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nPriv, _, _ := crypto.GenerateEd25519Key(rand.Reader)
	nID, _ := peer.IDFromPrivateKey(nPriv)
	if err := a.mustGroup(gid).Add(ctx, nID, roster.RoleMember); err != nil {
		t.Fatal(err)
	}
	if err := a.mustGroup(gid).Remove(ctx, x.ID()); err != nil {
		t.Fatal(err)
	}
	key := waitSameSendingKey(t, []*testNode{a, b}, gid)
	x.Close()

	nSpy := newSpy(t, nPriv)
	xSpy := newSpy(t, x.priv)
	for _, s := range []*spy{nSpy, xSpy} {
		s.connect(a, b)
		s.listen(gid)
		waitTopicPeer(t, gid, s.host.ID(), a, b)
	}
	request := func(priv crypto.PrivKey, skew time.Duration) *gossip.KeyRequest {
		req, err := gossip.NewKeyRequest(rand.Reader, priv, gid, key, 0, time.Now().Add(skew).UnixMilli())
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	publish := func(s *spy, req *gossip.KeyRequest) {
		s.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: req.Signed}})
	}
	xSpy.publish(&wire.TopicMessage{Payload: &wire.TopicMessage_KeyRequest{KeyRequest: request(x.priv, -2*time.Hour).Signed}})

	for _, skew := range []time.Duration{-2 * time.Hour, 3 * time.Hour, -30 * 24 * time.Hour} {
		before := len(nSpy.received())
		publish(nSpy, request(nPriv, skew))
		eventually(t, 10*time.Second, "a request with the clock "+skew.String()+" off is answered", func() bool {
			return len(nSpy.received()) > before
		})
	}
	if !nSpy.transferred(key) {
		t.Fatal("the answers do not carry the asked-for key")
	}

	time.Sleep(300 * time.Millisecond) // an answer to x would be in flight by now
	if len(xSpy.received()) > 0 {
		t.Fatal("a removed member with a skewed clock was sent a key")
	}
}

// TestTCPUsesNoise: connections over TCP are secured with Noise, which
// checks no clock, rather than TLS, whose certificates are refused by a
// peer whose clock is more than an hour behind the one that made them.
func TestTCPUsesNoise(t *testing.T) {
	nodes := newTestNodes(t, 2)
	conns := nodes[0].Host().Network().ConnsToPeer(nodes[1].ID())
	if len(conns) == 0 {
		t.Fatal("not connected")
	}
	for _, c := range conns {
		if got := c.ConnState().Security; got != "/noise" {
			t.Fatalf("connection %s secured with %q, want /noise", c.RemoteMultiaddr(), got)
		}
	}
}
