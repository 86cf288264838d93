package wire

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"
)

var (
	// ErrBadSignature means a signature did not verify, or the signer is not
	// an Ed25519 peer ID.
	ErrBadSignature = errors.New("bad signature")
	// ErrMalformed means bytes that do not decode to the expected message.
	ErrMalformed = errors.New("malformed message")
	// ErrSmallOrderKey means a peer ID whose Ed25519 key is not a point of
	// the prime-order subgroup (other than the identity): a small-order
	// point, or one with a small-order component. Such keys are refused
	// wherever a peer ID is parsed. Errors wrapping it also wrap
	// ErrBadSignature.
	ErrSmallOrderKey = errors.New("peer id key has a small-order component")
)

// MaxSignedBody bounds the body of any signed message. Envelopes are bounded
// more tightly by the gossip layer; this is the hard ceiling for everything.
const MaxSignedBody = 256 << 10

var kindNames = map[Kind]string{
	Kind_KIND_ROSTER_OP:   "roster-op",
	Kind_KIND_ENVELOPE:    "envelope",
	Kind_KIND_KEY_META:    "key-meta",
	Kind_KIND_KEY_REQUEST: "key-request",
}

// signingInput is the domain-separated byte string a signature covers, so a
// signature made for one kind can never be replayed as another.
func signingInput(kind Kind, body []byte) ([]byte, error) {
	name, ok := kindNames[kind]
	if !ok {
		return nil, fmt.Errorf("%w: unknown kind %d", ErrMalformed, kind)
	}
	in := make([]byte, 0, len("p2pchat/v1/")+len(name)+1+len(body))
	in = append(in, "p2pchat/v1/"...)
	in = append(in, name...)
	in = append(in, 0)
	return append(in, body...), nil
}

// Sign serializes body and signs it as kind with priv.
func Sign(priv crypto.PrivKey, kind Kind, body proto.Message) (*Signed, error) {
	b, err := proto.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("marshal body: %w", err)
	}
	if len(b) > MaxSignedBody {
		return nil, fmt.Errorf("%w: body of %d bytes exceeds %d", ErrMalformed, len(b), MaxSignedBody)
	}
	in, err := signingInput(kind, b)
	if err != nil {
		return nil, err
	}
	sig, err := signEd25519(priv, in)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	signer, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("signer id: %w", err)
	}
	return &Signed{Kind: kind, Body: b, Signature: sig, Signer: []byte(signer)}, nil
}

// Verify checks that s is of the given kind and that its signature verifies
// under the Ed25519 key embedded in s.Signer. Only then does it decode the
// body into into. It returns the authenticated signer. It remembers nothing:
// a node checking many messages uses a Verifier.
func Verify(s *Signed, kind Kind, into proto.Message) (peer.ID, error) {
	return (*Verifier)(nil).Verify(s, kind, into)
}

// Verify is the package's Verify, reusing the keys v has already checked.
func (v *Verifier) Verify(s *Signed, kind Kind, into proto.Message) (peer.ID, error) {
	if err := checkShape(s, kind); err != nil {
		return "", err
	}
	signer, pub, err := v.PeerKey(s.Signer)
	if err != nil {
		return "", err
	}
	in, err := signingInput(kind, s.Body)
	if err != nil {
		return "", err
	}
	if !v.verifyEd25519(signer, pub, in, s.Signature) {
		return "", ErrBadSignature
	}
	if err := proto.Unmarshal(s.Body, into); err != nil {
		return "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return signer, nil
}

// checkShape checks what can be checked of s before its signature: present,
// of the expected kind, and within the size bound.
func checkShape(s *Signed, kind Kind) error {
	if s == nil {
		return fmt.Errorf("%w: missing signed message", ErrMalformed)
	}
	if s.Kind != kind {
		return fmt.Errorf("%w: kind %v, want %v", ErrMalformed, s.Kind, kind)
	}
	if len(s.Body) > MaxSignedBody {
		return fmt.Errorf("%w: body of %d bytes exceeds %d", ErrMalformed, len(s.Body), MaxSignedBody)
	}
	return nil
}

// PeerKey parses b as a peer ID and extracts its embedded Ed25519 public key.
// Peer IDs of other key types are refused: p2pchat identities are Ed25519.
// So are keys that are not the canonical encoding of a point of the
// prime-order subgroup other than the identity (ErrSmallOrderKey for a
// small-order point or a point with a small-order component).
func PeerKey(b []byte) (peer.ID, crypto.PubKey, error) {
	return (*Verifier)(nil).PeerKey(b)
}

// PeerKey is the package's PeerKey, checking each identity's key once.
func (v *Verifier) PeerKey(b []byte) (peer.ID, crypto.PubKey, error) {
	id, err := peer.IDFromBytes(b)
	if err != nil {
		return "", nil, fmt.Errorf("%w: bad peer id", ErrBadSignature)
	}
	pub, err := id.ExtractPublicKey()
	if err != nil || pub.Type() != crypto.Ed25519 {
		return "", nil, fmt.Errorf("%w: peer id does not embed an Ed25519 key", ErrBadSignature)
	}
	if err := v.checkPeerKey(id, pub); err != nil {
		return "", nil, err
	}
	return id, pub, nil
}

// ParsePeerID parses b as an Ed25519 peer ID.
func ParsePeerID(b []byte) (peer.ID, error) {
	return (*Verifier)(nil).ParsePeerID(b)
}

// ParsePeerID is the package's ParsePeerID, checking each identity's key
// once.
func (v *Verifier) ParsePeerID(b []byte) (peer.ID, error) {
	id, _, err := v.PeerKey(b)
	if err != nil {
		if errors.Is(err, ErrSmallOrderKey) {
			return "", fmt.Errorf("%w: %w", ErrMalformed, ErrSmallOrderKey)
		}
		return "", fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return id, nil
}

// MaxBatch bounds the signed messages VerifyBatch checks at once.
const MaxBatch = 256

// VerifyBatch is Verify for several messages of one kind and one signer:
// the signatures are checked together (one batch equation), and only if
// every one verifies are the bodies decoded, body i into into(i). One bad
// signature fails the whole batch. It returns the authenticated signer.
func VerifyBatch(ss []*Signed, kind Kind, into func(i int) proto.Message) (peer.ID, error) {
	return (*Verifier)(nil).VerifyBatch(ss, kind, into)
}

// VerifyBatch is the package's VerifyBatch, reusing the keys v has already
// checked.
func (v *Verifier) VerifyBatch(ss []*Signed, kind Kind, into func(i int) proto.Message) (peer.ID, error) {
	if len(ss) == 0 || len(ss) > MaxBatch {
		return "", fmt.Errorf("%w: batch of %d signed messages", ErrMalformed, len(ss))
	}
	msgs := make([][]byte, len(ss))
	sigs := make([][]byte, len(ss))
	for i, s := range ss {
		if err := checkShape(s, kind); err != nil {
			return "", err
		}
		if !bytes.Equal(s.Signer, ss[0].Signer) {
			return "", fmt.Errorf("%w: batch of more than one signer", ErrMalformed)
		}
		in, err := signingInput(kind, s.Body)
		if err != nil {
			return "", err
		}
		msgs[i], sigs[i] = in, s.Signature
	}
	signer, pub, err := v.PeerKey(ss[0].Signer)
	if err != nil {
		return "", err
	}
	if !v.verifyEd25519Batch(signer, pub, msgs, sigs) {
		return "", ErrBadSignature
	}
	for i, s := range ss {
		if err := proto.Unmarshal(s.Body, into(i)); err != nil {
			return "", fmt.Errorf("%w: %v", ErrMalformed, err)
		}
	}
	return signer, nil
}
