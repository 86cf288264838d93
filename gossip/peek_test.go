package gossip_test

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/wire"
)

// TestPeekKeyID reads the key ID an envelope names, as OpenEnvelope does,
// and nothing from a signed message of another kind or a body that does not
// decode.
func TestPeekKeyID(t *testing.T) {
	f := newFixture(t)
	e, err := gossip.SealEnvelopeFrom(detRand(9), f.priv, f.key, 1, 0, f.heads, &wire.Content{Text: "peek"})
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := gossip.PeekKeyID(e.Signed); !ok || id != f.key.ID() {
		t.Fatalf("PeekKeyID = %v, %v; want %v", id, ok, f.key.ID())
	}
	other := proto.Clone(e.Signed).(*wire.Signed)
	other.Kind = wire.Kind_KIND_ROSTER_OP
	if _, ok := gossip.PeekKeyID(other); ok {
		t.Fatal("a key ID peeked from a roster op")
	}
	bad := proto.Clone(e.Signed).(*wire.Signed)
	bad.Body = []byte{0xff}
	if _, ok := gossip.PeekKeyID(bad); ok {
		t.Fatal("a key ID peeked from a body that does not decode")
	}
	if _, ok := gossip.PeekKeyID(nil); ok {
		t.Fatal("a key ID peeked from nothing")
	}
}
