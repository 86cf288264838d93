package roster

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"unicode/utf8"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/wire"
)

// Limits of the op format.
const (
	// MaxNameLen bounds a group name, in bytes.
	MaxNameLen = 128
	// MaxParents bounds the parents of one op.
	MaxParents = 64
	// NonceLen is the length of a create op's nonce.
	NonceLen = 16
	// KeyIDLen is the length of a non-empty add parent_key_id.
	KeyIDLen = 32
	// MaxMarks bounds the seq marks of one ack.
	MaxMarks = 64

	opIDDomain = "p2pchat/v1/op-id"
)

var (
	// ErrMalformed means an op that does not follow the op structure rules.
	ErrMalformed = errors.New("malformed roster op")
	// ErrWrongGroup means an op of another group.
	ErrWrongGroup = errors.New("roster op belongs to another group")
	// ErrNotAuthorized means an op whose author was never a member in its
	// causal past (nor the founder), or that descends from such an op.
	ErrNotAuthorized = errors.New("author was never a member")
	// ErrNotMember means an op refused by admission (Roster.Admit): its
	// author is not a member of the current state and no op by a current
	// member needs it as an ancestor. It is not remembered: should a
	// member's op name it later, it is applied then.
	ErrNotMember = errors.New("author is not a member")
	// ErrUnknownOp means an op ID that the roster has not applied.
	ErrUnknownOp = errors.New("unknown roster op")
)

// OpID identifies an op: SHA-256("p2pchat/v1/op-id" || 0x00 || signed body).
type OpID [32]byte

// GroupID is the ID of a group's create op.
type GroupID = OpID

// String returns the full lowercase hex form.
func (id OpID) String() string { return hex.EncodeToString(id[:]) }

// ShortString returns the first 8 hex characters, for logs.
func (id OpID) ShortString() string { return hex.EncodeToString(id[:4]) }

// Bytes returns a copy of the ID as a slice.
func (id OpID) Bytes() []byte { return bytes.Clone(id[:]) }

// Compare orders IDs by their bytes.
func (id OpID) Compare(o OpID) int { return bytes.Compare(id[:], o[:]) }

// ParseOpID parses exactly 32 bytes.
func ParseOpID(b []byte) (OpID, error) {
	var id OpID
	if len(b) != len(id) {
		return id, fmt.Errorf("%w: op id of %d bytes, want %d", ErrMalformed, len(b), len(id))
	}
	copy(id[:], b)
	return id, nil
}

// IDOf returns the ID an op with this signed body has. It verifies
// nothing: use it only to skip ops already held, before verifying the rest.
func IDOf(body []byte) OpID { return opIDOf(body) }

func opIDOf(body []byte) OpID {
	h := sha256.New()
	h.Write([]byte(opIDDomain))
	h.Write([]byte{0})
	h.Write(body)
	var id OpID
	h.Sum(id[:0])
	return id
}

// Role is a member's role.
type Role int

// Roles. The numeric order matters: a lower role is more conservative.
const (
	RoleMember Role = 1
	RoleAdmin  Role = 2
)

func (r Role) String() string {
	switch r {
	case RoleMember:
		return "member"
	case RoleAdmin:
		return "admin"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// Valid reports whether r is member or admin.
func (r Role) Valid() bool { return r == RoleMember || r == RoleAdmin }

func roleFromWire(w wire.Role) (Role, bool) {
	switch w {
	case wire.Role_ROLE_MEMBER:
		return RoleMember, true
	case wire.Role_ROLE_ADMIN:
		return RoleAdmin, true
	}
	return 0, false
}

func (r Role) toWire() wire.Role {
	switch r {
	case RoleMember:
		return wire.Role_ROLE_MEMBER
	case RoleAdmin:
		return wire.Role_ROLE_ADMIN
	}
	return wire.Role(r) // invalid; rejected when the op is checked
}

// Kind is the action of an op.
type Kind int

// Op kinds.
const (
	KindCreate Kind = iota + 1
	KindAdd
	KindRemove
	KindLeave
	KindAck
)

func (k Kind) String() string {
	switch k {
	case KindCreate:
		return "create"
	case KindAdd:
		return "add"
	case KindRemove:
		return "remove"
	case KindLeave:
		return "leave"
	case KindAck:
		return "ack"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Op is one verified membership operation. Treat it as read-only.
type Op struct {
	ID          OpID
	Group       GroupID // for a create op: its own ID
	Author      peer.ID
	Parents     []OpID // sorted ascending, no duplicates
	Kind        Kind
	Member      peer.ID // add, remove
	Role        Role    // add
	Name        string  // create
	Nonce       []byte  // create
	ParentKeyID []byte  // add: opaque to roster, carried for the keyring
	Marks       []Mark  // ack: sorted by peer ID, distinct peers
	Signed      *wire.Signed

	// verified is set only by the constructors in this file, so Insert can
	// refuse ops whose signature nobody checked.
	verified bool
}

func (o *Op) String() string {
	if o == nil {
		return "<nil op>"
	}
	switch o.Kind {
	case KindAdd:
		return fmt.Sprintf("%s %s(%s by %s: %s as %s)", o.ID.ShortString(), o.Kind, o.Group.ShortString(), o.Author, o.Member, o.Role)
	case KindRemove:
		return fmt.Sprintf("%s %s(%s by %s: %s)", o.ID.ShortString(), o.Kind, o.Group.ShortString(), o.Author, o.Member)
	}
	return fmt.Sprintf("%s %s(%s by %s)", o.ID.ShortString(), o.Kind, o.Group.ShortString(), o.Author)
}

// Mark is one entry of an ack: the highest envelope seq of Peer that the
// ack's author held when it acknowledged Peer's departure.
type Mark struct {
	Peer peer.ID
	Seq  uint64
}

// Marshal returns the proto-marshalled wire.Signed.
func (o *Op) Marshal() []byte {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(o.Signed)
	if err != nil {
		// A wire.Signed holds only bytes and an enum: marshalling cannot fail.
		panic(fmt.Sprintf("roster: marshal signed op: %v", err))
	}
	return b
}

// NewCreate signs a create op for a new group named name. nonce must be 16
// random bytes so that two groups never share an ID.
func NewCreate(priv crypto.PrivKey, name string, nonce []byte) (*Op, error) {
	author, err := authorOf(priv)
	if err != nil {
		return nil, err
	}
	return sign(priv, author, &wire.Op{
		Author: []byte(author),
		Action: &wire.Op_Create{Create: &wire.Create{Name: name, Nonce: bytes.Clone(nonce)}},
	})
}

// NewAdd signs an op adding member with role to group.
func NewAdd(priv crypto.PrivKey, group GroupID, parents []OpID, member peer.ID, role Role, parentKeyID []byte) (*Op, error) {
	author, err := authorOf(priv)
	if err != nil {
		return nil, err
	}
	return sign(priv, author, &wire.Op{
		GroupId: group.Bytes(),
		Author:  []byte(author),
		Parents: encodeParents(parents),
		Action: &wire.Op_Add{Add: &wire.Add{
			Member:      []byte(member),
			Role:        role.toWire(),
			ParentKeyId: bytes.Clone(parentKeyID),
		}},
	})
}

// NewRemove signs an op removing member from group.
func NewRemove(priv crypto.PrivKey, group GroupID, parents []OpID, member peer.ID) (*Op, error) {
	author, err := authorOf(priv)
	if err != nil {
		return nil, err
	}
	return sign(priv, author, &wire.Op{
		GroupId: group.Bytes(),
		Author:  []byte(author),
		Parents: encodeParents(parents),
		Action:  &wire.Op_Remove{Remove: &wire.Remove{Member: []byte(member)}},
	})
}

// NewLeave signs an op by which its author leaves group.
func NewLeave(priv crypto.PrivKey, group GroupID, parents []OpID) (*Op, error) {
	author, err := authorOf(priv)
	if err != nil {
		return nil, err
	}
	return sign(priv, author, &wire.Op{
		GroupId: group.Bytes(),
		Author:  []byte(author),
		Parents: encodeParents(parents),
		Action:  &wire.Op_Leave{Leave: &wire.Leave{}},
	})
}

// NewAck signs an ack: an op that changes no membership but records, through
// its parents, what its author has applied (it makes ops stable and merges
// heads), and through marks how far each departed peer's messages reached
// the author.
func NewAck(priv crypto.PrivKey, group GroupID, parents []OpID, marks []Mark) (*Op, error) {
	author, err := authorOf(priv)
	if err != nil {
		return nil, err
	}
	sorted := slices.Clone(marks)
	slices.SortFunc(sorted, func(a, b Mark) int { return bytes.Compare([]byte(a.Peer), []byte(b.Peer)) })
	pm := make([]*wire.SeqMark, len(sorted))
	for i, m := range sorted {
		pm[i] = &wire.SeqMark{Peer: []byte(m.Peer), Seq: m.Seq}
	}
	return sign(priv, author, &wire.Op{
		GroupId: group.Bytes(),
		Author:  []byte(author),
		Parents: encodeParents(parents),
		Action:  &wire.Op_Ack{Ack: &wire.Ack{Marks: pm}},
	})
}

func authorOf(priv crypto.PrivKey) (peer.ID, error) {
	if priv == nil {
		return "", errors.New("roster: nil private key")
	}
	if priv.Type() != crypto.Ed25519 {
		return "", fmt.Errorf("roster: identity key must be Ed25519, not %v", priv.Type())
	}
	return peer.IDFromPrivateKey(priv)
}

// encodeParents sorts the parents so encoders are canonical; duplicates are
// left in and rejected by the structure check.
func encodeParents(parents []OpID) [][]byte {
	sorted := slices.Clone(parents)
	slices.SortFunc(sorted, OpID.Compare)
	out := make([][]byte, len(sorted))
	for i, p := range sorted {
		out[i] = p.Bytes()
	}
	return out
}

// sign signs pb and checks the result with the same structure rules as
// Decode. It does not re-verify its own fresh signature.
func sign(priv crypto.PrivKey, author peer.ID, pb *wire.Op) (*Op, error) {
	s, err := wire.Sign(priv, wire.Kind_KIND_ROSTER_OP, pb)
	if err != nil {
		return nil, fmt.Errorf("roster: sign op: %w", err)
	}
	var back wire.Op
	if err := proto.Unmarshal(s.Body, &back); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return build(nil, author, s, &back)
}

// Decode verifies the signature of s with v (nil: a Verifier that remembers
// nothing) and only then decodes and checks the op it carries. Errors wrap
// ErrMalformed or wire.ErrBadSignature.
func Decode(v *wire.Verifier, s *wire.Signed) (*Op, error) {
	if s == nil {
		return nil, fmt.Errorf("%w: nil signed op", ErrMalformed)
	}
	var pb wire.Op
	signer, err := v.Verify(s, wire.Kind_KIND_ROSTER_OP, &pb)
	if err != nil {
		if errors.Is(err, wire.ErrBadSignature) {
			return nil, fmt.Errorf("roster op: %w", err)
		}
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return build(v, signer, s, &pb)
}

// build checks the structure of an authenticated op and converts it.
func build(v *wire.Verifier, signer peer.ID, s *wire.Signed, pb *wire.Op) (*Op, error) {
	if err := checkEncoding(s.Body); err != nil {
		return nil, err
	}
	if string(pb.Author) != string(signer) {
		return nil, fmt.Errorf("roster op: %w: author is not the signer", wire.ErrBadSignature)
	}
	op := &Op{
		ID:     opIDOf(s.Body),
		Author: signer,
		Signed: &wire.Signed{
			Kind:      s.Kind,
			Body:      bytes.Clone(s.Body),
			Signature: bytes.Clone(s.Signature),
			Signer:    bytes.Clone(s.Signer),
		},
		verified: true,
	}
	if c := pb.GetCreate(); c != nil {
		op.Kind = KindCreate
		if len(pb.GroupId) != 0 {
			return nil, fmt.Errorf("%w: create op with a group id", ErrMalformed)
		}
		if len(pb.Parents) != 0 {
			return nil, fmt.Errorf("%w: create op with parents", ErrMalformed)
		}
		if len(c.Nonce) != NonceLen {
			return nil, fmt.Errorf("%w: create nonce of %d bytes, want %d", ErrMalformed, len(c.Nonce), NonceLen)
		}
		if len(c.Name) > MaxNameLen || !utf8.ValidString(c.Name) {
			return nil, fmt.Errorf("%w: group name must be at most %d bytes of UTF-8", ErrMalformed, MaxNameLen)
		}
		op.Group = op.ID
		op.Name = c.Name
		op.Nonce = bytes.Clone(c.Nonce)
		return op, nil
	}

	group, err := ParseOpID(pb.GroupId)
	if err != nil {
		return nil, fmt.Errorf("%w: group id of %d bytes", ErrMalformed, len(pb.GroupId))
	}
	op.Group = group
	if len(pb.Parents) == 0 || len(pb.Parents) > MaxParents {
		return nil, fmt.Errorf("%w: %d parents, want 1..%d", ErrMalformed, len(pb.Parents), MaxParents)
	}
	op.Parents = make([]OpID, len(pb.Parents))
	for i, p := range pb.Parents {
		if op.Parents[i], err = ParseOpID(p); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(op.Parents, OpID.Compare)
	for i := 1; i < len(op.Parents); i++ {
		if op.Parents[i] == op.Parents[i-1] {
			return nil, fmt.Errorf("%w: duplicate parent %s", ErrMalformed, op.Parents[i].ShortString())
		}
	}

	switch a := pb.Action.(type) {
	case *wire.Op_Add:
		op.Kind = KindAdd
		if op.Member, err = parseMember(v, a.Add.GetMember(), signer); err != nil {
			return nil, err
		}
		role, ok := roleFromWire(a.Add.GetRole())
		if !ok {
			return nil, fmt.Errorf("%w: role %v", ErrMalformed, a.Add.GetRole())
		}
		op.Role = role
		if k := a.Add.GetParentKeyId(); len(k) != 0 && len(k) != KeyIDLen {
			return nil, fmt.Errorf("%w: parent key id of %d bytes", ErrMalformed, len(k))
		}
		op.ParentKeyID = bytes.Clone(a.Add.GetParentKeyId())
	case *wire.Op_Remove:
		op.Kind = KindRemove
		if op.Member, err = parseMember(v, a.Remove.GetMember(), signer); err != nil {
			return nil, err
		}
	case *wire.Op_Leave:
		op.Kind = KindLeave
	case *wire.Op_Ack:
		op.Kind = KindAck
		ms := a.Ack.GetMarks()
		if len(ms) > MaxMarks {
			return nil, fmt.Errorf("%w: %d marks, want at most %d", ErrMalformed, len(ms), MaxMarks)
		}
		op.Marks = make([]Mark, 0, len(ms))
		for _, m := range ms {
			p, err := v.ParsePeerID(m.GetPeer())
			if err != nil {
				return nil, fmt.Errorf("%w: mark: %w", ErrMalformed, err)
			}
			op.Marks = append(op.Marks, Mark{Peer: p, Seq: m.GetSeq()})
		}
		slices.SortFunc(op.Marks, func(a, b Mark) int { return bytes.Compare([]byte(a.Peer), []byte(b.Peer)) })
		for i := 1; i < len(op.Marks); i++ {
			if op.Marks[i].Peer == op.Marks[i-1].Peer {
				return nil, fmt.Errorf("%w: two marks for one peer", ErrMalformed)
			}
		}
	default:
		return nil, fmt.Errorf("%w: no action", ErrMalformed)
	}
	return op, nil
}

func parseMember(v *wire.Verifier, b []byte, author peer.ID) (peer.ID, error) {
	m, err := v.ParsePeerID(b)
	if err != nil {
		return "", fmt.Errorf("%w: member: %w", ErrMalformed, err)
	}
	if m == author {
		return "", fmt.Errorf("%w: an op may not add or remove its own author", ErrMalformed)
	}
	return m, nil
}

// fieldRule describes one allowed field of a message.
type fieldRule struct {
	typ      protowire.Type
	repeated bool
	nested   map[protowire.Number]fieldRule // for sub-messages
}

var (
	createRules = map[protowire.Number]fieldRule{
		1: {typ: protowire.BytesType}, // name
		2: {typ: protowire.BytesType}, // nonce
	}
	addRules = map[protowire.Number]fieldRule{
		1: {typ: protowire.BytesType},  // member
		2: {typ: protowire.VarintType}, // role
		3: {typ: protowire.BytesType},  // parent_key_id
	}
	removeRules = map[protowire.Number]fieldRule{
		1: {typ: protowire.BytesType}, // member
	}
	markRules = map[protowire.Number]fieldRule{
		1: {typ: protowire.BytesType},  // peer
		2: {typ: protowire.VarintType}, // seq
	}
	ackRules = map[protowire.Number]fieldRule{
		1: {typ: protowire.BytesType, repeated: true, nested: markRules}, // marks
	}
	opRules = map[protowire.Number]fieldRule{
		1:  {typ: protowire.BytesType},                 // group_id
		2:  {typ: protowire.BytesType},                 // author
		3:  {typ: protowire.BytesType, repeated: true}, // parents
		10: {typ: protowire.BytesType, nested: createRules},
		11: {typ: protowire.BytesType, nested: addRules},
		12: {typ: protowire.BytesType, nested: removeRules},
		13: {typ: protowire.BytesType, nested: map[protowire.Number]fieldRule{}},
		14: {typ: protowire.BytesType, nested: ackRules},
	}
)

// checkEncoding walks the raw body: only known fields with their wire types,
// singular fields at most once, exactly one action. proto.Unmarshal would
// silently keep unknown fields and let a later oneof member win; a signed op
// must mean exactly one thing.
func checkEncoding(body []byte) error {
	seen, err := scanStrict(body, opRules)
	if err != nil {
		return err
	}
	actions := seen[10] + seen[11] + seen[12] + seen[13] + seen[14]
	if actions != 1 {
		return fmt.Errorf("%w: %d actions, want exactly 1", ErrMalformed, actions)
	}
	return nil
}

func scanStrict(b []byte, rules map[protowire.Number]fieldRule) (map[protowire.Number]int, error) {
	seen := make(map[protowire.Number]int, 4)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, protowire.ParseError(n))
		}
		b = b[n:]
		rule, ok := rules[num]
		if !ok || rule.typ != typ {
			return nil, fmt.Errorf("%w: unexpected field %d (wire type %d)", ErrMalformed, num, typ)
		}
		if seen[num] > 0 && !rule.repeated {
			return nil, fmt.Errorf("%w: field %d repeated", ErrMalformed, num)
		}
		seen[num]++
		var v []byte
		switch typ {
		case protowire.BytesType:
			v, n = protowire.ConsumeBytes(b)
		case protowire.VarintType:
			_, n = protowire.ConsumeVarint(b)
		default:
			n = -1
		}
		if n < 0 {
			return nil, fmt.Errorf("%w: field %d: bad value", ErrMalformed, num)
		}
		b = b[n:]
		if rule.nested != nil {
			if _, err := scanStrict(v, rule.nested); err != nil {
				return nil, err
			}
		}
	}
	return seen, nil
}
