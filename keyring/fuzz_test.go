package keyring_test

import (
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// FuzzMetaFromWire decodes arbitrary key metadata. Whatever MetaFromWire
// accepts must survive ToWire → marshal → unmarshal → MetaFromWire unchanged,
// and must satisfy the invariants callers rely on.
func FuzzMetaFromWire(f *testing.F) {
	ps := testPeers(f, 3)
	gen := mustGenerate(f, 100, groupID("fuzz"), ps[0], []roster.OpID{opID("a"), opID("b")}, ps)
	derived, err := keyring.Derive(gen, opID("add"), ps[1], ps)
	if err != nil {
		f.Fatal(err)
	}
	w, _ := validWireMeta(f)
	// A zero parent with a non-zero add op: ToWire drops both fields.
	zeroParent := proto.Clone(w).(*wire.KeyMeta)
	zeroParent.DerivedFrom = make([]byte, 32)
	for _, m := range []*wire.KeyMeta{gen.Meta.ToWire(), derived.Meta.ToWire(), w, zeroParent} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})

	f.Fuzz(func(t *testing.T, data []byte) {
		var w wire.KeyMeta
		if err := proto.Unmarshal(data, &w); err != nil {
			return
		}
		m, err := keyring.MetaFromWire(nil, &w)
		if err != nil {
			return
		}
		if len(m.RosterHeads) == 0 || len(m.Recipients) == 0 {
			t.Fatal("accepted meta without heads or recipients")
		}
		for i := 1; i < len(m.Recipients); i++ {
			if m.Recipients[i-1] >= m.Recipients[i] {
				t.Fatal("accepted recipients that are not strictly sorted")
			}
		}
		for _, r := range append([]peer.ID{m.Creator}, m.Recipients...) {
			if _, err := wire.ParsePeerID([]byte(r)); err != nil {
				t.Fatalf("accepted a peer ID that does not parse: %v", err)
			}
		}
		for _, r := range m.Recipients {
			if !m.IsRecipient(r) {
				t.Fatal("IsRecipient false for a listed recipient")
			}
		}
		b, err := proto.Marshal(m.ToWire())
		if err != nil {
			t.Fatal(err)
		}
		var w2 wire.KeyMeta
		if err := proto.Unmarshal(b, &w2); err != nil {
			t.Fatal(err)
		}
		m2, err := keyring.MetaFromWire(nil, &w2)
		if err != nil {
			t.Fatalf("re-encoded meta refused: %v", err)
		}
		if !metaEqual(m, m2) {
			t.Fatalf("round trip changed the meta:\n got %+v\nwant %+v", m2, m)
		}
	})
}
