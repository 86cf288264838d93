package gossip

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// Envelope is a verified, decoded chat message. Its payload is still sealed.
type Envelope struct {
	Group       roster.GroupID
	KeyID       keyring.ID
	Sender      peer.ID
	Seq         uint64
	RosterHeads []roster.OpID
	Nonce       []byte
	Ciphertext  []byte
	KeyFirstSeq uint64       // the sender's first seq under KeyID; 0 if not stated
	Signed      *wire.Signed // the exact signed bytes, for storage and sync
}

// LogValue logs identifiers and sizes, never content.
func (e *Envelope) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("sender", e.Sender.ShortString()),
		slog.Uint64("seq", e.Seq),
		slog.String("key_id", e.KeyID.Short()),
		slog.Int("bytes", len(e.Ciphertext)))
}

// SealEnvelopeFrom encrypts content under key as message seq of the signer
// and signs the result: one signature per message. keyFirstSeq is the
// sender's first sequence number under key (at most seq; 0 states none).
func SealEnvelopeFrom(rand io.Reader, priv crypto.PrivKey, key *keyring.Key, seq, keyFirstSeq uint64, heads []roster.OpID, content *wire.Content) (*Envelope, error) {
	if keyFirstSeq > seq {
		return nil, fmt.Errorf("%w: first sequence number %d after %d", ErrMalformed, keyFirstSeq, seq)
	}
	if len(content.Text) > MaxTextSize {
		return nil, fmt.Errorf("%w: text of %d bytes exceeds %d", ErrTooLarge, len(content.Text), MaxTextSize)
	}
	sender, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	pt, err := proto.Marshal(content)
	if err != nil {
		return nil, err
	}
	nonce, ct, err := key.Seal(rand, sender, seq, pt)
	if err != nil {
		return nil, err
	}
	w := &wire.Envelope{
		GroupId:     key.Meta.Group[:],
		KeyId:       key.Meta.KeyID[:],
		Sender:      []byte(sender),
		Seq:         seq,
		Nonce:       nonce,
		Ciphertext:  ct,
		KeyFirstSeq: keyFirstSeq,
	}
	for _, h := range heads {
		w.RosterHeads = append(w.RosterHeads, h[:])
	}
	s, err := wire.Sign(priv, wire.Kind_KIND_ENVELOPE, w)
	if err != nil {
		return nil, err
	}
	return &Envelope{Group: key.Meta.Group, KeyID: key.Meta.KeyID, Sender: sender, Seq: seq, KeyFirstSeq: keyFirstSeq,
		RosterHeads: append([]roster.OpID(nil), heads...), Nonce: nonce, Ciphertext: ct, Signed: s}, nil
}

// OpenEnvelope verifies s with v (nil: a Verifier that remembers nothing)
// and decodes the envelope inside. It does not decrypt.
func OpenEnvelope(v *wire.Verifier, s *wire.Signed) (*Envelope, error) {
	if s != nil && len(s.Body) > MaxEnvelopeBody {
		return nil, fmt.Errorf("%w: envelope of %d bytes", ErrTooLarge, len(s.Body))
	}
	var w wire.Envelope
	signer, err := v.Verify(s, wire.Kind_KIND_ENVELOPE, &w)
	if err != nil {
		return nil, err
	}
	return envelopeFrom(signer, s, &w)
}

// PeekKeyID reads the key ID an envelope names without verifying it: only
// for deciding to skip an envelope before paying for its signature check
// (a stored one the reader is not entitled to), never for trusting it.
func PeekKeyID(s *wire.Signed) (keyring.ID, bool) {
	if s == nil || s.Kind != wire.Kind_KIND_ENVELOPE {
		return keyring.ID{}, false
	}
	var w wire.Envelope
	if proto.Unmarshal(s.Body, &w) != nil {
		return keyring.ID{}, false
	}
	id, err := keyring.ParseID(w.KeyId)
	return id, err == nil
}

// OpenEnvelopeBatch verifies a batch's signatures together and decodes its
// envelopes: 2 to MaxBatchEnvelopes of them, one sender, one group, in
// increasing sequence order. Any bad envelope fails the whole batch.
func OpenEnvelopeBatch(v *wire.Verifier, b *wire.EnvelopeBatch) ([]*Envelope, error) {
	if b == nil || len(b.Envelopes) < 2 || len(b.Envelopes) > MaxBatchEnvelopes {
		return nil, fmt.Errorf("%w: batch of %d envelopes", ErrMalformed, len(b.GetEnvelopes()))
	}
	for _, s := range b.Envelopes {
		if s != nil && len(s.Body) > MaxEnvelopeBody {
			return nil, fmt.Errorf("%w: envelope of %d bytes", ErrTooLarge, len(s.Body))
		}
	}
	ws := make([]wire.Envelope, len(b.Envelopes))
	signer, err := v.VerifyBatch(b.Envelopes, wire.Kind_KIND_ENVELOPE, func(i int) proto.Message { return &ws[i] })
	if err != nil {
		return nil, err
	}
	out := make([]*Envelope, len(ws))
	for i := range ws {
		e, err := envelopeFrom(signer, b.Envelopes[i], &ws[i])
		if err != nil {
			return nil, err
		}
		if i > 0 && (e.Group != out[0].Group || e.Seq <= out[i-1].Seq) {
			return nil, fmt.Errorf("%w: batch mixes groups or is out of sequence order", ErrMalformed)
		}
		out[i] = e
	}
	return out, nil
}

// OpenEnvelopes verifies and decodes many envelopes (a history answer, a
// stored history), checking each signer's signatures as batches. For each
// i exactly one of out[i] and errs[i] is set; a failed batch is checked
// envelope by envelope, so one bad envelope costs only itself.
func OpenEnvelopes(v *wire.Verifier, ss []*wire.Signed) (out []*Envelope, errs []error) {
	out = make([]*Envelope, len(ss))
	errs = make([]error, len(ss))
	bySigner := make(map[string][]int)
	var order []string
	for i, s := range ss {
		if s == nil || len(s.Body) > MaxEnvelopeBody {
			out[i], errs[i] = OpenEnvelope(v, s)
			continue
		}
		k := string(s.Signer)
		if _, ok := bySigner[k]; !ok {
			order = append(order, k)
		}
		bySigner[k] = append(bySigner[k], i)
	}
	for _, k := range order {
		idx := bySigner[k]
		for len(idx) > 0 {
			chunk := idx[:min(len(idx), wire.MaxBatch)]
			idx = idx[len(chunk):]
			batch := make([]*wire.Signed, len(chunk))
			for j, i := range chunk {
				batch[j] = ss[i]
			}
			ws := make([]wire.Envelope, len(chunk))
			signer, err := v.VerifyBatch(batch, wire.Kind_KIND_ENVELOPE, func(j int) proto.Message { return &ws[j] })
			for j, i := range chunk {
				if err != nil {
					out[i], errs[i] = OpenEnvelope(v, ss[i])
				} else {
					out[i], errs[i] = envelopeFrom(signer, ss[i], &ws[j])
				}
			}
		}
	}
	return out, errs
}

// envelopeFrom checks and converts an envelope whose signature by signer
// has been verified.
func envelopeFrom(signer peer.ID, s *wire.Signed, w *wire.Envelope) (*Envelope, error) {
	if string(w.Sender) != string(signer) {
		return nil, fmt.Errorf("%w: envelope sender is not its signer", ErrMalformed)
	}
	var err error
	e := &Envelope{Sender: signer, Seq: w.Seq, KeyFirstSeq: w.KeyFirstSeq, Nonce: w.Nonce, Ciphertext: w.Ciphertext, Signed: s}
	if e.Group, err = roster.ParseOpID(w.GroupId); err != nil {
		return nil, fmt.Errorf("%w: group id", ErrMalformed)
	}
	if e.KeyID, err = keyring.ParseID(w.KeyId); err != nil {
		return nil, fmt.Errorf("%w: key id", ErrMalformed)
	}
	if e.Seq == 0 {
		return nil, fmt.Errorf("%w: sequence number 0", ErrMalformed)
	}
	if e.KeyFirstSeq > e.Seq {
		return nil, fmt.Errorf("%w: first sequence number %d after %d", ErrMalformed, e.KeyFirstSeq, e.Seq)
	}
	if len(w.Ciphertext) > MaxCiphertextSize {
		return nil, fmt.Errorf("%w: ciphertext of %d bytes", ErrTooLarge, len(w.Ciphertext))
	}
	if len(w.Nonce) != 24 {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrMalformed, len(w.Nonce))
	}
	if len(w.RosterHeads) == 0 || len(w.RosterHeads) > MaxRosterHeads {
		return nil, fmt.Errorf("%w: %d roster heads", ErrMalformed, len(w.RosterHeads))
	}
	for _, h := range w.RosterHeads {
		id, err := roster.ParseOpID(h)
		if err != nil {
			return nil, fmt.Errorf("%w: roster head", ErrMalformed)
		}
		e.RosterHeads = append(e.RosterHeads, id)
	}
	return e, nil
}

// Open decrypts the envelope's content with key.
func (e *Envelope) Open(key *keyring.Key) (*wire.Content, error) {
	pt, err := key.Open(e.Sender, e.Seq, e.Nonce, e.Ciphertext)
	if err != nil {
		return nil, err
	}
	var c wire.Content
	if err := proto.Unmarshal(pt, &c); err != nil {
		return nil, fmt.Errorf("%w: content: %v", ErrMalformed, err)
	}
	return &c, nil
}

// KeyRequest is a verified request for a key, published on the group topic.
type KeyRequest struct {
	Group     roster.GroupID
	KeyID     keyring.ID
	Requester peer.ID
	Nonce     []byte
	SentAtMs  int64
	Attempt   uint32 // earlier requests for this key by the requester
	Signed    *wire.Signed
}

// NewKeyRequest signs a request for key id in group.
func NewKeyRequest(rand io.Reader, priv crypto.PrivKey, group roster.GroupID, id keyring.ID, attempt uint32, nowMs int64) (*KeyRequest, error) {
	me, err := peer.IDFromPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, 16)
	if _, err := io.ReadFull(rand, nonce); err != nil {
		return nil, err
	}
	s, err := wire.Sign(priv, wire.Kind_KIND_KEY_REQUEST, &wire.KeyRequest{
		GroupId: group[:], KeyId: id[:], Requester: []byte(me), Nonce: nonce, SentAtMs: nowMs, Attempt: attempt})
	if err != nil {
		return nil, err
	}
	return &KeyRequest{Group: group, KeyID: id, Requester: me, Nonce: nonce, SentAtMs: nowMs, Attempt: attempt, Signed: s}, nil
}

// OpenKeyRequest verifies and decodes a key request.
func OpenKeyRequest(v *wire.Verifier, s *wire.Signed) (*KeyRequest, error) {
	var w wire.KeyRequest
	signer, err := v.Verify(s, wire.Kind_KIND_KEY_REQUEST, &w)
	if err != nil {
		return nil, err
	}
	if string(w.Requester) != string(signer) {
		return nil, fmt.Errorf("%w: key request requester is not its signer", ErrMalformed)
	}
	r := &KeyRequest{Requester: signer, Nonce: w.Nonce, SentAtMs: w.SentAtMs, Attempt: w.Attempt, Signed: s}
	if r.Group, err = roster.ParseOpID(w.GroupId); err != nil {
		return nil, fmt.Errorf("%w: group id", ErrMalformed)
	}
	if r.KeyID, err = keyring.ParseID(w.KeyId); err != nil {
		return nil, fmt.Errorf("%w: key id", ErrMalformed)
	}
	if len(w.Nonce) != 16 {
		return nil, fmt.Errorf("%w: nonce of %d bytes", ErrMalformed, len(w.Nonce))
	}
	return r, nil
}

// SignKeyMeta signs key metadata as its sender.
func SignKeyMeta(priv crypto.PrivKey, m *keyring.Meta) (*wire.Signed, error) {
	return wire.Sign(priv, wire.Kind_KIND_KEY_META, m.ToWire())
}

// OpenKeyMeta verifies signed key metadata and returns it with its signer.
func OpenKeyMeta(v *wire.Verifier, s *wire.Signed) (keyring.Meta, peer.ID, error) {
	var w wire.KeyMeta
	signer, err := v.Verify(s, wire.Kind_KIND_KEY_META, &w)
	if err != nil {
		return keyring.Meta{}, "", err
	}
	m, err := keyring.MetaFromWire(v, &w)
	return m, signer, err
}
