// Package roster is the membership layer of p2pchat: a signed, hash-linked
// DAG of membership operations (create, add, remove, leave, ack) and its
// deterministic resolution into a member list ("strong removal", in the
// style of p2panda-auth).
//
// The package is pure. It never touches the network, starts goroutines,
// reads the clock, logs, or does file I/O; it is not safe for concurrent use,
// read methods included, since they fill caches (the caller locks). Everything it computes is a function of the set of ops
// it holds, never of the order in which they arrived.
//
// # What it must never do
//
//   - Never trust an op whose signature it has not verified. Ops are built
//     only by Decode/Parse (which verify the signature before decoding the
//     body) or by the New* constructors (which sign); Insert refuses any *Op
//     that did not come from them.
//   - Never drop an op for arriving early. An op whose parents are not all
//     present is kept as pending and applied as soon as they arrive.
//   - Never let arrival order influence the result. Two rosters holding the
//     same applied ops have the same Heads, Ops order, members, roles,
//     Digest and per-op Effective answers.
//   - Never re-encode before verifying: the op ID is the hash of the exact
//     signed body bytes.
//
// # Ops
//
// An op ID is SHA-256("p2pchat/v1/op-id" || 0x00 || body) where body is the
// exact serialized wire.Op inside the wire.Signed. A group's ID is the ID of
// its create op. Every other op names the group, 1..64 parents (the heads its
// author had applied) and one action. Decode enforces the structure: the
// signer must equal the author; exactly one action; create has no group ID,
// no parents, a 16-byte nonce and a name of at most 128 bytes of UTF-8; the
// others have a 32-byte group ID and distinct 32-byte parents (any order is
// accepted, Op.Parents is sorted); add/remove name an Ed25519 peer ID other
// than the author (an author removes itself with leave); add's role is member
// or admin and its parent key ID is empty or 32 bytes. Unknown fields,
// repeated singular fields and more than one action are malformed.
//
// # Admission (Insert)
//
// An op of another group is refused (ErrWrongGroup). An op waits (pending)
// until all of its parents are applied. Once they are, it is applied unless
// its author is neither the founder nor the target of some add op in the op's
// causal past (ErrNotAuthorized): such an op, and every pending op that
// depends on it, is discarded, and its ID is remembered so that later
// descendants are discarded too. Everything else is applied and kept in the
// DAG even if it turns out to have no effect (a removed member acting
// concurrently with its removal, a member trying to add someone, ...):
// descendants may reference it.
//
// An ack changes no membership: its author states, through its parents,
// what it has applied (it merges heads), and through marks, for each peer
// that stopped being a member since its previous ack, the highest envelope
// seq of that peer it holds. At most MaxMarks marks, distinct peers, sorted.
// In resolution an ack is effective iff its author is a member, like a
// leave, and it is filtered like any other op of a removed member.
//
// # Admission of a removed member's ops (Admit)
//
// Resolution alone cannot tell a removed member's backdated op from an
// honest op concurrent with its removal (docs/protocol.md §4.4), so a node
// also refuses, before applying, every op whose author its current state
// has removed: an effective removal of the author exists, and the author is
// no member of the effective ops of the op's causal past together with all
// effective removals of it. Such an op is refused (ErrNotMember) and not
// remembered, unless a pending op that admission would take needs it as an
// ancestor: an honest node applied it before the removal reached it and
// built on it, and then every node applies it, so that rosters converge.
// A batch is judged against the state held before it. This is local policy
// and order-dependent by design; resolution of whatever is applied stays a
// function of the applied ops alone.
//
// # Resolution
//
// Let V be the applied ops (a causally closed DAG rooted at the create op).
// past(o) is the set of strict ancestors of o; a ∥ b (concurrent) means
// neither is an ancestor of the other. Per-op ancestor bitsets make both O(1).
//
// membersOf(E), for a set E of effective ops:
//
//   - the create op counts as add(founder, admin);
//   - the removals of X are the remove ops targeting X and the leave ops
//     authored by X;
//   - an add a of X is live iff every removal of X in E is a strict ancestor
//     of a (a re-add is valid only causally after the removal; a removal
//     concurrent with an add wins);
//   - X is a member iff X has a live add; its role is that of its maximal
//     live adds (those not an ancestor of another live add of X), and if
//     those disagree the lower role (member) wins.
//
// Membership ops are every kind but the ack. A cut is a membership op
// comparable (ancestor or descendant) to every other membership op; the
// membership ops split into segments: each cut alone, and the ops between
// two consecutive cuts. Every membership op before a segment is an
// ancestor of every op in it, so segments are decided one after the other,
// each over the verdicts of those before it. Within a segment,
// effectiveness is decided over a filter set F, starting empty:
//
//  1. Authority pass, in a topological order. With S = membersOf(effective
//     ops in past(o)), op o ∉ F is effective iff
//     create: always;
//     add: its author is an admin in S (re-adding a current member, with the
//     same or another role, is effective; with the same role it changes
//     nothing);
//     remove: its author is an admin in S and its target is a member in S;
//     leave: its author is a member in S.
//     Ops in F are not effective. Since o's verdict depends only on F and on
//     the verdicts of past(o), every topological order gives the same result;
//     the implementation uses local insertion order, which is one.
//  2. Strong-removal pass: for every effective remove R (author A, target
//     M), every op o of the segment authored by M with o ∥ R joins F,
//     except a remove o (of Y) that lies on a removal cycle with R: A is
//     reachable from Y (Y == A included) in the graph whose edges are the
//     effective removes (author → target) concurrent with o (a removal o's
//     author had already seen is history, one made after o is not a duel
//     o took part in). Leave ops filter nothing.
//  3. If F grew, repeat from 1; otherwise stop. F only grows, so a segment
//     takes at most |segment|+1 rounds and never oscillates.
//
// An ack is decided after every membership op: it is effective iff its
// author is a member in S and no effective remove of its author is
// concurrent with it. No other verdict reads an ack's.
//
// The members are membersOf(all effective ops). Consequences: in a mutual
// removal (A removes B ∥ B removes A) both are removed, likewise around a
// longer removal cycle; a removed member's ops concurrent with its removal
// have no effect; an add by an admin who is concurrently removed is
// filtered, so the added member's own later ops have no effect either.
//
// Because F only grows, a remove that is effective in one round and void
// in a later one still filters: in A removes B ∥ B removes C ∥ C removes D,
// B's removal of C is void (B was removed concurrently), so C stays an
// admin, but C's removal of D was filtered in the first round and D stays.
// A duel of three or more concurrent removals errs towards fewer changes.
//
// Resolution is incremental (Roster.advance): an ack is decided alone; a
// membership op that is a cut is decided by the authority rule; one after
// the last cut it descends from, where no round filtered anything, is
// decided alone too (one round still decides that part, and nothing
// descends from it); otherwise the segment after that cut is resolved again.
//
// State.Digest is SHA-256 over "p2pchat/v1/roster-state" 0x00, the group ID,
// the sorted heads and the sorted (member, role) pairs, each list and each
// peer ID length-prefixed (4 bytes, big endian). Equal digests mean equal
// heads and equal membership.
package roster
