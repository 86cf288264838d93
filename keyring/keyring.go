// Package keyring holds a group's symmetric keys: generation, derivation on
// add, the key ID commitment, sealing and opening of message payloads, and
// the deterministic choice of the key to send with.
//
// It is pure logic: no network, no goroutines, no clock, no persistence. It
// must never expose a key's secret except through Secret (for transfer to an
// entitled peer and for the store), never log a secret (Key implements
// slog.LogValuer with IDs only), and never pick a sending key that a peer
// outside the current membership could hold.
package keyring

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
	"golang.org/x/crypto/chacha20poly1305"

	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// SecretSize is the size of a group key.
const SecretSize = 32

var (
	// ErrIDMismatch means a key's bytes do not match the ID they claim.
	ErrIDMismatch = errors.New("key does not match its id")
	// ErrDecrypt means a payload did not authenticate under the key.
	ErrDecrypt = errors.New("message does not decrypt")
	// ErrMalformedMeta means key metadata that does not decode.
	ErrMalformedMeta = errors.New("malformed key metadata")
)

// ID identifies a key: SHA-256("p2pchat/v1/key-id" 0x00 group secret). It is
// a commitment: a receiver checks a key against the ID messages carry.
type ID [32]byte

func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Short is the first 8 hex digits, for logs and screens.
func (id ID) Short() string { return hex.EncodeToString(id[:4]) }

// IsZero reports whether id is unset.
func (id ID) IsZero() bool { return id == ID{} }

// ParseID parses 32 raw bytes.
func ParseID(b []byte) (ID, error) {
	var id ID
	if len(b) != len(id) {
		return id, fmt.Errorf("%w: key id of %d bytes", ErrMalformedMeta, len(b))
	}
	copy(id[:], b)
	return id, nil
}

// ComputeID returns the ID of secret in group.
func ComputeID(group roster.GroupID, secret []byte) ID {
	h := sha256.New()
	h.Write([]byte("p2pchat/v1/key-id\x00"))
	h.Write(group[:])
	h.Write(secret)
	var id ID
	h.Sum(id[:0])
	return id
}

// Meta describes a key: who made it, for which roster state, and who is
// entitled to it. It never holds the secret.
type Meta struct {
	Group       roster.GroupID
	KeyID       ID
	Creator     peer.ID
	RosterHeads []roster.OpID // the roster state the key was made for, sorted
	Recipients  []peer.ID     // members of that state, sorted: the only peers entitled to the key
	DerivedFrom ID            // parent key for a key derived on add; zero otherwise
	AddOp       roster.OpID   // the add op a derived key belongs to; zero otherwise
}

// IsRecipient reports whether p is entitled to the key.
func (m *Meta) IsRecipient(p peer.ID) bool {
	_, ok := slices.BinarySearch(m.Recipients, p)
	return ok
}

// ToWire converts m to its wire form.
func (m *Meta) ToWire() *wire.KeyMeta {
	w := &wire.KeyMeta{
		GroupId: m.Group[:],
		KeyId:   m.KeyID[:],
		Creator: []byte(m.Creator),
	}
	for _, h := range m.RosterHeads {
		w.RosterHeads = append(w.RosterHeads, h[:])
	}
	for _, r := range m.Recipients {
		w.Recipients = append(w.Recipients, []byte(r))
	}
	if !m.DerivedFrom.IsZero() {
		w.DerivedFrom = m.DerivedFrom[:]
		w.AddOpId = m.AddOp[:]
	}
	return w
}

// maxRecipients bounds the recipients list read from the network.
const maxRecipients = 4096

// MetaFromWire validates and converts wire metadata, checking peer IDs with
// v (nil: a Verifier that remembers nothing).
func MetaFromWire(v *wire.Verifier, w *wire.KeyMeta) (Meta, error) {
	var m Meta
	var err error
	if m.Group, err = roster.ParseOpID(w.GroupId); err != nil {
		return m, fmt.Errorf("%w: group id", ErrMalformedMeta)
	}
	if m.KeyID, err = ParseID(w.KeyId); err != nil {
		return m, err
	}
	if m.Creator, err = v.ParsePeerID(w.Creator); err != nil {
		return m, fmt.Errorf("%w: creator", ErrMalformedMeta)
	}
	if len(w.RosterHeads) == 0 || len(w.RosterHeads) > roster.MaxParents {
		return m, fmt.Errorf("%w: %d roster heads", ErrMalformedMeta, len(w.RosterHeads))
	}
	for _, h := range w.RosterHeads {
		id, err := roster.ParseOpID(h)
		if err != nil {
			return m, fmt.Errorf("%w: roster head", ErrMalformedMeta)
		}
		m.RosterHeads = append(m.RosterHeads, id)
	}
	for i := 1; i < len(m.RosterHeads); i++ {
		if compareOpIDs(m.RosterHeads[i-1], m.RosterHeads[i]) >= 0 {
			return m, fmt.Errorf("%w: roster heads not sorted and unique", ErrMalformedMeta)
		}
	}
	if len(w.Recipients) == 0 || len(w.Recipients) > maxRecipients {
		return m, fmt.Errorf("%w: %d recipients", ErrMalformedMeta, len(w.Recipients))
	}
	for _, r := range w.Recipients {
		p, err := v.ParsePeerID(r)
		if err != nil {
			return m, fmt.Errorf("%w: recipient", ErrMalformedMeta)
		}
		m.Recipients = append(m.Recipients, p)
	}
	if !isStrictlySorted(m.Recipients) {
		return m, fmt.Errorf("%w: recipients not sorted and unique", ErrMalformedMeta)
	}
	if len(w.DerivedFrom) > 0 || len(w.AddOpId) > 0 {
		if m.DerivedFrom, err = ParseID(w.DerivedFrom); err != nil {
			return m, err
		}
		if m.DerivedFrom.IsZero() {
			// ToWire treats a zero parent as "not derived"; accepting it would
			// let the add op ID vanish on re-encoding.
			return m, fmt.Errorf("%w: zero parent key id", ErrMalformedMeta)
		}
		if m.AddOp, err = roster.ParseOpID(w.AddOpId); err != nil {
			return m, fmt.Errorf("%w: add op id", ErrMalformedMeta)
		}
	}
	return m, nil
}

func compareOpIDs(a, b roster.OpID) int { return bytes.Compare(a[:], b[:]) }

func isStrictlySorted(ps []peer.ID) bool {
	for i := 1; i < len(ps); i++ {
		if ps[i-1] >= ps[i] {
			return false
		}
	}
	return true
}

// SortedRecipients returns a sorted, deduplicated copy of members.
func SortedRecipients(members []peer.ID) []peer.ID {
	out := slices.Clone(members)
	slices.Sort(out)
	return slices.Compact(out)
}

// Key is a group key with its metadata.
type Key struct {
	Meta   Meta
	secret [SecretSize]byte
}

// ID returns the key's ID.
func (k *Key) ID() ID { return k.Meta.KeyID }

// Secret returns a copy of the key bytes, for an entitled peer or the store.
func (k *Key) Secret() []byte { return slices.Clone(k.secret[:]) }

// LogValue logs the key's ID and recipient count, never its bytes.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(slog.String("key_id", k.Meta.KeyID.Short()), slog.Int("recipients", len(k.Meta.Recipients)))
}

// String names the key by its ID, so fmt never prints the secret.
func (k Key) String() string { return "key:" + k.Meta.KeyID.Short() }

// GoString keeps %#v from printing the secret.
func (k Key) GoString() string { return k.String() }

// Generate makes a fresh random key for the roster state heads, entitled to
// recipients.
func Generate(rand io.Reader, group roster.GroupID, creator peer.ID, heads []roster.OpID, recipients []peer.ID) (*Key, error) {
	var secret [SecretSize]byte
	if _, err := io.ReadFull(rand, secret[:]); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	k := &Key{secret: secret, Meta: Meta{
		Group:       group,
		KeyID:       ComputeID(group, secret[:]),
		Creator:     creator,
		RosterHeads: sortedHeads(heads),
		Recipients:  SortedRecipients(recipients),
	}}
	return k, nil
}

// Derive computes the epoch key that follows parent when the add op addOp
// (authored by adder) admits a member. Everyone holding parent computes the
// same key; the new member receives it and cannot compute parent from it:
// HKDF-SHA256(parent, salt = add op ID, info = "p2pchat/v1/derive" 0x00 group).
func Derive(parent *Key, addOp roster.OpID, adder peer.ID, recipients []peer.ID) (*Key, error) {
	group := parent.Meta.Group
	info := append([]byte("p2pchat/v1/derive\x00"), group[:]...)
	out, err := hkdf.Key(sha256.New, parent.secret[:], addOp[:], string(info), SecretSize)
	if err != nil {
		return nil, fmt.Errorf("derive key: %w", err)
	}
	k := &Key{Meta: Meta{
		Group:       group,
		Creator:     adder,
		RosterHeads: []roster.OpID{addOp},
		Recipients:  SortedRecipients(recipients),
		DerivedFrom: parent.Meta.KeyID,
		AddOp:       addOp,
	}}
	copy(k.secret[:], out)
	k.Meta.KeyID = ComputeID(group, k.secret[:])
	return k, nil
}

// FromSecret rebuilds a key received from a peer or read from the store. It
// fails with ErrIDMismatch unless secret is the key meta.KeyID commits to.
func FromSecret(secret []byte, meta Meta) (*Key, error) {
	if len(secret) != SecretSize {
		return nil, fmt.Errorf("%w: key of %d bytes", ErrIDMismatch, len(secret))
	}
	want := ComputeID(meta.Group, secret)
	if subtle.ConstantTimeCompare(want[:], meta.KeyID[:]) != 1 {
		return nil, ErrIDMismatch
	}
	k := &Key{Meta: meta}
	copy(k.secret[:], secret)
	return k, nil
}

func sortedHeads(heads []roster.OpID) []roster.OpID {
	out := slices.Clone(heads)
	slices.SortFunc(out, compareOpIDs)
	return slices.CompactFunc(out, func(a, b roster.OpID) bool { return a == b })
}

// associatedData binds a ciphertext to its group, key, sender and sequence
// number, so an envelope cannot be replayed under another sender or slot.
func associatedData(group roster.GroupID, key ID, sender peer.ID, seq uint64) []byte {
	ad := make([]byte, 0, 15+32+32+1+len(sender)+8)
	ad = append(ad, "p2pchat/v1/msg\x00"...)
	ad = append(ad, group[:]...)
	ad = append(ad, key[:]...)
	ad = append(ad, byte(len(sender)))
	ad = append(ad, sender...)
	return binary.BigEndian.AppendUint64(ad, seq)
}

// Seal encrypts plaintext as message seq of sender, with a random 24-byte
// nonce (XChaCha20-Poly1305, so random nonces are safe).
func (k *Key) Seal(rand io.Reader, sender peer.ID, seq uint64, plaintext []byte) (nonce, ciphertext []byte, err error) {
	aead, err := chacha20poly1305.NewX(k.secret[:])
	if err != nil {
		return nil, nil, err
	}
	nonce = make([]byte, chacha20poly1305.NonceSizeX)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, nil, fmt.Errorf("nonce: %w", err)
	}
	ad := associatedData(k.Meta.Group, k.Meta.KeyID, sender, seq)
	return nonce, aead.Seal(nil, nonce, plaintext, ad), nil
}

// Open decrypts a payload sealed by Seal with the same sender and seq.
func (k *Key) Open(sender peer.ID, seq uint64, nonce, ciphertext []byte) ([]byte, error) {
	if len(nonce) != chacha20poly1305.NonceSizeX {
		return nil, ErrDecrypt
	}
	aead, err := chacha20poly1305.NewX(k.secret[:])
	if err != nil {
		return nil, err
	}
	pt, err := aead.Open(nil, nonce, ciphertext, associatedData(k.Meta.Group, k.Meta.KeyID, sender, seq))
	if err != nil {
		return nil, ErrDecrypt
	}
	return pt, nil
}

// Ring is one group's set of keys. Old keys stay for reading; SendingKey
// decides which one may be sent with. Not safe for concurrent use.
type Ring struct {
	group roster.GroupID
	keys  map[ID]*Key
	// outside caches outsiders per key (nil when none, the usual case).
	// A key's answer depends only on its ancestors in the ring, so an Add
	// drops the cache only when the new key is an ancestor of one held
	// (a parent that arrived after its child).
	outside map[ID][]peer.ID
}

// NewRing returns an empty ring for group.
func NewRing(group roster.GroupID) *Ring {
	return &Ring{group: group, keys: make(map[ID]*Key)}
}

// Add stores k and reports whether it was new. Keys of other groups are refused.
func (r *Ring) Add(k *Key) bool {
	if k.Meta.Group != r.group {
		return false
	}
	if _, ok := r.keys[k.Meta.KeyID]; ok {
		return false
	}
	for _, held := range r.keys {
		if held.Meta.DerivedFrom == k.Meta.KeyID {
			r.outside = nil
			break
		}
	}
	r.keys[k.Meta.KeyID] = k
	return true
}

// Get returns the key with id.
func (r *Ring) Get(id ID) (*Key, bool) {
	k, ok := r.keys[id]
	return k, ok
}

// Len is the number of keys held.
func (r *Ring) Len() int { return len(r.keys) }

// Keys returns every key, sorted by ID.
func (r *Ring) Keys() []*Key {
	out := make([]*Key, 0, len(r.keys))
	for _, k := range r.keys {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b *Key) int { return bytes.Compare(a.Meta.KeyID[:], b.Meta.KeyID[:]) })
	return out
}

// Height orders roster states: the number of ops in the causal closure of
// heads, or false when the heads are not known yet or the caller's policy
// rules the state out for sending (node/ rules out states that precede a
// removal).
type Height func(heads []roster.OpID) (int, bool)

// Qualifies reports whether k may be sent with when the membership is
// members (sorted): its recipients are exactly the members, so every member
// can read and nobody else holds it, and, for a derived key, every ancestor
// in the ring was entitled only to members too (its holders can derive k).
//
// Once k's recipients equal members, "every ancestor's recipients are
// members" is "no ancestor was entitled to anyone outside k's recipients",
// which does not depend on members. It is kept per key as the set of such
// outsiders, built from the parent's: outsiders(k) = (recipients(parent) ∪
// outsiders(parent)) \ recipients(k). So a new key costs one pass over its
// parent's recipients, not a walk down the whole derive chain, and a roster
// change costs nothing but the comparison.
func (r *Ring) Qualifies(k *Key, members []peer.ID) bool {
	return slices.Equal(k.Meta.Recipients, members) && len(r.outsiders(k, 0)) == 0
}

// outsiders returns the peers some ancestor of k in the ring (along
// DerivedFrom) was entitled to that k's recipients do not include, sorted.
// A chain longer than the ring (a cycle) counts k's recipients themselves
// as outsiders, so the key never qualifies.
func (r *Ring) outsiders(k *Key, depth int) []peer.ID {
	if out, known := r.outside[k.Meta.KeyID]; known {
		return out
	}
	if depth > len(r.keys) {
		return k.Meta.Recipients
	}
	var out []peer.ID
	if parent, held := r.keys[k.Meta.DerivedFrom]; held && !k.Meta.DerivedFrom.IsZero() {
		// Otherwise the parent predates our membership; its holders were
		// checked by the adder.
		for _, set := range [][]peer.ID{parent.Meta.Recipients, r.outsiders(parent, depth+1)} {
			for _, p := range set {
				if _, in := slices.BinarySearch(k.Meta.Recipients, p); !in {
					out = append(out, p)
				}
			}
		}
		out = SortedRecipients(out)
	}
	if r.outside == nil {
		r.outside = make(map[ID][]peer.ID)
	}
	r.outside[k.Meta.KeyID] = out
	return out
}

// SendingKey chooses the key to send with for the membership members: among
// qualifying keys, the one made for the highest roster state, then the lowest
// ID. Every member holding the same keys and roster picks the same key, so
// concurrent rotations converge without another rotation. It returns nil when
// no key qualifies: the caller must generate one.
func (r *Ring) SendingKey(members []peer.ID, height Height) *Key {
	if !isStrictlySorted(members) {
		members = SortedRecipients(members)
	}
	var best *Key
	bestHeight := -1
	for _, k := range r.keys {
		if !r.Qualifies(k, members) {
			continue
		}
		h, ok := height(k.Meta.RosterHeads)
		if !ok {
			continue
		}
		if best == nil || h > bestHeight || (h == bestHeight && bytes.Compare(k.Meta.KeyID[:], best.Meta.KeyID[:]) < 0) {
			best, bestHeight = k, h
		}
	}
	return best
}
