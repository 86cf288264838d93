// Package testkeys makes deterministic Ed25519 identities and byte streams
// for tests and golden vectors. It must never be used outside tests: its
// keys are reproducible by anyone.
package testkeys

import (
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Reader is a deterministic byte stream named by label and seed. The label
// (at most 24 bytes are used) keeps one package's vectors apart from
// another's.
func Reader(label string, seed uint64) io.Reader {
	var s [32]byte
	binary.LittleEndian.PutUint64(s[:], seed)
	copy(s[8:], label)
	return rand.NewChaCha8(s)
}

// Peer returns the Ed25519 identity generated from Reader(label, 1000+seed).
func Peer(t testing.TB, label string, seed uint64) (crypto.PrivKey, peer.ID) {
	t.Helper()
	priv, _, err := crypto.GenerateEd25519Key(Reader(label, 1000+seed))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return priv, id
}
