// Package node is p2pchat's embeddable API: one Node per libp2p host, one
// Group per joined group. It is the only package that wires host, pubsub,
// store, roster, keyring and gossip together, and it owns every goroutine it
// starts: Close stops them all.
//
// It holds the policy the other packages leave open: who may send, which key
// to send with, when to rotate, whom to answer. It must never send a group key
// to a peer the key's metadata does not entitle, never accept a key that does
// not match its ID, never show a message whose signature it has not verified,
// and never log message text or key bytes.
//
// Who owns what. node.go: Config, New, Close and the Node's group table;
// lifecycle.go: admission of public calls and Close's wait for them;
// writer.go: the one background writer (group commits; callers sync on it
// outside every lock); network.go: addresses, reconnects, mDNS, invites;
// embed.go: the peer filter for programs that bring their own router;
// events.go: the event hub. Per group: group.go holds the Group's state and
// its goroutines' lifecycle; validate.go the topic validator; inbound.go the
// topic reader, ingest and the timer loop; order.go per-sender delivery
// order; send.go the send path; outbox.go our envelopes until published; history.go reading stored
// messages; membership.go Add, Remove, Leave and roster ops from peers;
// finality.go acks and the departed-sender rule; rotation.go our keys and
// their distribution; keys.go keys received from peers; keyrequest.go key
// requests; answered.go the requests already answered; sync.go history
// sync.
//
// Locks, in the order they may be taken: Group.sendMu, Group.ingestMu,
// Group.mu, outbox.mu. Group.mu is never held across disk or network I/O
// or a call into pubsub; the validator takes it only briefly.
package node

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/internal/atomicfile"
	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/store"
	"github.com/p2pchat/p2pchat/wire"
)

var (
	// ErrClosed means the node has been closed.
	ErrClosed = errors.New("node is closed")
	// ErrUnknownGroup means this node has not joined the group. Node's own
	// methods take a *Group and never return it; programs that look groups
	// up by ID or name (the local API) do.
	ErrUnknownGroup = errors.New("unknown group")
	// ErrNotMember means this node (or the named peer) is not a member.
	ErrNotMember = errors.New("not a member")
	// ErrNotAdmin means the operation needs the admin role.
	ErrNotAdmin = errors.New("not an admin")
	// ErrAlreadyMember means the peer is already a member.
	ErrAlreadyMember = errors.New("already a member")
	// ErrTooLarge means a message over the size limit.
	ErrTooLarge = gossip.ErrTooLarge
	// ErrDiskFull means the home's filesystem is below Config.MinFreeDisk:
	// the write was refused and nothing was lost (a send that returns it
	// sent nothing). Reads go on, and writes resume by themselves when
	// space returns. Errors wrapping it are *store.DiskFullError, with the
	// figures.
	ErrDiskFull = store.ErrDiskFull
)

// Config configures a Node. The zero value works: a fresh in-memory node on
// its own host listening on all interfaces.
type Config struct {
	// Dir holds the identity and the database. Empty keeps everything in
	// memory (state is lost on Close).
	Dir string
	// MinFreeDisk is the free space, in bytes, that the node keeps on Dir's
	// filesystem: below it every write (a send, a received message, a key)
	// is refused with ErrDiskFull rather than crash the database on a full
	// disk. Zero means store.DefaultMinFree.
	MinFreeDisk uint64
	// Identity overrides the identity stored in Dir. It must be Ed25519.
	Identity crypto.PrivKey
	// Host and PubSub let an embedding program supply its own. Both or
	// neither, and then PeerFilter too. The host's identity must be
	// Ed25519, and Identity must be empty (the host's key is the node's).
	// Create the pubsub with PeerFilter.PubSubOptions(): every member's
	// router must use the same signature policy (a StrictSign router and a
	// StrictNoSign router reject each other's messages) and message IDs,
	// p2pchat signs each message itself, and the filter keeps peers the
	// roster does not name out of a group's mesh. Policies the program's
	// own host and router must keep: do not add a topic validator or a
	// message ID function for p2pchat topics (the node installs its own),
	// do not change the router's signature policy, and keep the node's
	// stream protocols (/p2pchat/...) free for it.
	Host       host.Host
	PubSub     *pubsub.PubSub
	PeerFilter *PeerFilter
	// ListenAddrs for a node-created host. Default: TCP and QUIC on all
	// interfaces, any port.
	ListenAddrs []string
	// HostOptions are extra options for a node-created host. The node sets
	// the security transports itself (Noise, then TLS); do not add any.
	HostOptions []libp2p.Option
	// PubSubOptions are extra options for a node-created GossipSub router
	// (a tracer, for instance), applied after gossip.PubSubOptions(). They
	// must not change its signature policy or message IDs.
	PubSubOptions []pubsub.Option
	// Logger receives diagnostics; nil discards them. Nothing secret is logged.
	Logger *slog.Logger
	// Params tunes timing; zero fields take DefaultParams values.
	Params Params
	// Rand is the source of randomness; nil means crypto/rand.
	Rand io.Reader
	// MDNS announces the node on the LAN and connects to p2pchat peers found
	// there.
	MDNS bool
	// Bootstrap peers are dialed at start and whenever disconnected.
	Bootstrap []peer.AddrInfo
	// ClockOffset shifts every wall-clock time this node writes on the wire
	// (a message's and a key request's sent_at_ms), as a machine whose
	// clock is off by that much would. For tests of skewed clocks; no
	// protocol rule may depend on it.
	ClockOffset time.Duration
}

// Params are the node's timing knobs.
type Params struct {
	// KeyRequestDelay is how long a message may wait for a pushed key before
	// the node asks the group for it.
	KeyRequestDelay time.Duration
	// KeyRequestMaxBackoff caps the doubling delay between repeated requests.
	KeyRequestMaxBackoff time.Duration
	// RotationGrace is how long, per rank, a member waits for a
	// qualifying key after someone else's removal before it rotates itself:
	// the member at rank r by peer ID waits r+1 times this (§5.5).
	RotationGrace time.Duration
	// ReorderWindow is how long a message waits for an earlier message of
	// the same sender before it is shown anyway.
	ReorderWindow time.Duration
	// MeshSettle is how long after a peer joins a group's topic the node
	// syncs history with it a second time, to pick up messages GossipSub
	// lost while the mesh formed.
	MeshSettle time.Duration
	// SyncInterval is how often the node syncs history with a random member.
	SyncInterval time.Duration
	// PublishBatch is the most envelopes one topic message carries. Sends
	// queued behind a publish in progress go out together (up to this many
	// and gossip.MaxTopicMessageSize), so a burst costs GossipSub and the
	// receivers' signature checks once per batch rather than per message; a
	// send that finds nothing queued goes alone, at once. 1 sends every
	// envelope alone.
	PublishBatch int
	// PublishInterval is the least time between two of our topic messages on
	// a group while sends keep coming: a send that finds the previous
	// message younger than this waits for it, with whatever else queues up
	// meanwhile. A send after a quiet interval leaves at once, so
	// conversation is not delayed; a burst leaves in batches. Ignored when
	// PublishBatch is 1.
	PublishInterval time.Duration
	// AckDelay is how long after applying someone's removal or leave the
	// node waits before it signs an ack of it (docs/protocol.md §4.5): long
	// enough for the departed member's messages that were in flight to
	// arrive, so that the ack's mark covers them. Many heads are merged
	// with an ack after a random delay of up to AckDelay.
	AckDelay time.Duration
	// FirstContactWindow is how long the first message seen from a sender
	// waits for earlier ones: enough for messages racing through pubsub's
	// parallel validation, short enough not to be noticed.
	FirstContactWindow time.Duration
	// GapSyncWait is how long messages after a gap stay back while a
	// history sync fetches the missing ones, before they are shown anyway.
	GapSyncWait time.Duration
	// ExpectedKeyWait bounds how long a new member's first send waits for
	// the epoch key its adder derived for it.
	ExpectedKeyWait time.Duration
	// SyncTimeout bounds one history sync with one peer, every round of it.
	SyncTimeout time.Duration
	// ReconnectInterval is how often the node dials bootstrap peers and
	// members it is not connected to; DialTimeout bounds each dial.
	ReconnectInterval, DialTimeout time.Duration
}

// DefaultParams returns the defaults.
func DefaultParams() Params {
	return Params{
		KeyRequestDelay:      150 * time.Millisecond,
		KeyRequestMaxBackoff: 30 * time.Second,
		RotationGrace:        time.Second,
		ReorderWindow:        500 * time.Millisecond,
		MeshSettle:           2 * time.Second,
		SyncInterval:         30 * time.Second,
		PublishBatch:         gossip.MaxBatchEnvelopes,
		PublishInterval:      2 * time.Millisecond,
		AckDelay:             time.Second,
		FirstContactWindow:   50 * time.Millisecond,
		GapSyncWait:          3 * time.Second,
		ExpectedKeyWait:      3 * time.Second,
		SyncTimeout:          time.Minute,
		ReconnectInterval:    15 * time.Second,
		DialTimeout:          10 * time.Second,
	}
}

func (p Params) withDefaults() Params {
	d := DefaultParams()
	orDefault(&p.KeyRequestDelay, d.KeyRequestDelay)
	orDefault(&p.KeyRequestMaxBackoff, d.KeyRequestMaxBackoff)
	orDefault(&p.RotationGrace, d.RotationGrace)
	orDefault(&p.ReorderWindow, d.ReorderWindow)
	orDefault(&p.MeshSettle, d.MeshSettle)
	orDefault(&p.SyncInterval, d.SyncInterval)
	orDefault(&p.PublishBatch, d.PublishBatch)
	orDefault(&p.PublishInterval, d.PublishInterval)
	orDefault(&p.FirstContactWindow, d.FirstContactWindow)
	orDefault(&p.GapSyncWait, d.GapSyncWait)
	orDefault(&p.ExpectedKeyWait, d.ExpectedKeyWait)
	orDefault(&p.SyncTimeout, d.SyncTimeout)
	orDefault(&p.ReconnectInterval, d.ReconnectInterval)
	orDefault(&p.DialTimeout, d.DialTimeout)
	orDefault(&p.AckDelay, d.AckDelay)
	return p
}

// orDefault sets *v to d unless *v is positive.
func orDefault[T time.Duration | int](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// Node is a p2pchat peer. It is safe for concurrent use.
type Node struct {
	priv    crypto.PrivKey
	self    peer.ID
	host    host.Host
	ps      *pubsub.PubSub
	store   *store.Store
	disk    *writer // the one way state is written while the node runs
	streams *gossip.Streams
	log     *slog.Logger
	params  Params
	rand    io.Reader
	events  *hub
	stats   stats

	clockOffset time.Duration // Config.ClockOffset

	addrBookWake chan struct{} // asks addressBookLoop to note members' addresses

	// verifier checks every signature and peer ID this node reads, and
	// remembers the identities that passed (the node's own table; nothing
	// is shared with another node in the process).
	verifier *wire.Verifier

	ownsHost bool
	ctx      context.Context // cancelled by Close; parent of every goroutine
	cancel   context.CancelFunc
	wg       sync.WaitGroup // node-level goroutines (address book, reconnect, mDNS dials)
	mdns     interface{ Close() error }

	// life admits public calls until Close begins; Close waits for them.
	life *lifecycle

	mu       sync.Mutex
	groups   map[roster.GroupID]*Group
	byTopic  map[string]*Group
	orphans  []orphanKey // key transfers for groups not joined yet
	closed   bool
	closeErr error // set by the first Close, read after life.done
}

// New starts a node. ctx bounds start-up only; the node runs until Close.
func New(ctx context.Context, cfg Config) (*Node, error) {
	if (cfg.Host == nil) != (cfg.PubSub == nil) {
		return nil, errors.New("node: Config.Host and Config.PubSub go together")
	}
	if cfg.PubSub != nil && cfg.PeerFilter == nil {
		return nil, errors.New("node: Config.PubSub needs Config.PeerFilter (create the router with NewPeerFilter().PubSubOptions())")
	}
	if cfg.Host != nil && cfg.Identity != nil {
		return nil, errors.New("node: Config.Identity and Config.Host exclude each other: the node takes the host's identity")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n := &Node{
		log:          cfg.Logger,
		params:       cfg.Params.withDefaults(),
		rand:         cfg.Rand,
		events:       newHub(),
		life:         newLifecycle(),
		verifier:     new(wire.Verifier),
		clockOffset:  cfg.ClockOffset,
		addrBookWake: make(chan struct{}, 1),
		groups:       make(map[roster.GroupID]*Group),
		byTopic:      make(map[string]*Group),
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	if n.rand == nil {
		n.rand = rand.Reader
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			n.cancel()
			if n.mdns != nil {
				_ = n.mdns.Close()
			}
			n.wg.Wait()
			if n.streams != nil {
				n.streams.Close()
			}
			if n.ownsHost && n.host != nil {
				_ = n.host.Close()
			}
			if n.disk != nil {
				n.disk.close()
			}
			if n.store != nil {
				_ = n.store.Close()
			}
		}
	}()

	var err error
	switch {
	case cfg.Host != nil:
		if err := cfg.PeerFilter.bind(n); err != nil {
			return nil, err
		}
		n.host, n.ps = cfg.Host, cfg.PubSub
		n.priv = cfg.Host.Peerstore().PrivKey(cfg.Host.ID())
		if n.priv == nil {
			return nil, errors.New("node: the supplied host's private key is not in its peerstore")
		}
	case cfg.Identity != nil:
		n.priv = cfg.Identity
	case cfg.Dir != "":
		if n.priv, err = loadOrCreateIdentity(filepath.Join(cfg.Dir, "identity.key"), n.rand); err != nil {
			return nil, err
		}
	default:
		if n.priv, _, err = crypto.GenerateEd25519Key(n.rand); err != nil {
			return nil, fmt.Errorf("node: generate identity: %w", err)
		}
	}
	if n.priv.Type() != crypto.Ed25519 {
		return nil, errors.New("node: identity must be an Ed25519 key")
	}
	if n.self, err = peer.IDFromPrivateKey(n.priv); err != nil {
		return nil, fmt.Errorf("node: identity: %w", err)
	}

	dbDir := ""
	if cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("node: create home: %w", err)
		}
		dbDir = filepath.Join(cfg.Dir, "data")
	}
	storeOpts := store.Options{MinFree: cfg.MinFreeDisk, OnSpace: func(low bool, free uint64) {
		if low {
			n.log.Warn("disk almost full: writes refused until space returns", "free_mib", free>>20)
		} else {
			n.log.Info("disk space back: writes resume", "free_mib", free>>20)
		}
	}}
	if n.store, err = store.OpenWith(dbDir, storeOpts); err != nil {
		return nil, fmt.Errorf("node: %w", err)
	}
	n.disk = newWriter(n.store, n.log)

	if n.host == nil {
		listen := cfg.ListenAddrs
		if len(listen) == 0 {
			listen = []string{"/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1", "/ip6/::/tcp/0", "/ip6/::/udp/0/quic-v1"}
		}
		opts := append([]libp2p.Option{libp2p.Identity(n.priv), libp2p.ListenAddrStrings(listen...),
			// Noise first: libp2p's TLS certificates are valid from an hour
			// before their creation, so two machines whose clocks differ by
			// more refuse each other's TLS handshake; Noise checks no time.
			// TLS stays second for peers that offer only it (and QUIC,
			// which has only TLS; a dial falls back to TCP when it fails).
			libp2p.Security(noise.ID, noise.New), libp2p.Security(libp2ptls.ID, libp2ptls.New),
		}, cfg.HostOptions...)
		if n.host, err = libp2p.New(opts...); err != nil {
			return nil, fmt.Errorf("node: start host: %w", err)
		}
		n.ownsHost = true
		filter := NewPeerFilter()
		if err := filter.bind(n); err != nil {
			return nil, err
		}
		psOpts := append(filter.PubSubOptions(), cfg.PubSubOptions...)
		if n.ps, err = pubsub.NewGossipSub(n.ctx, n.host, psOpts...); err != nil {
			return nil, fmt.Errorf("node: start pubsub: %w", err)
		}
	}
	n.streams = gossip.NewStreams(n.host, gossip.Handlers{Key: n.handleKeyTransfer, Roster: n.handleRosterRequest, Sync: n.handleSyncRequest})

	if err := n.loadGroups(); err != nil {
		return nil, err
	}
	if err := n.startNetworking(cfg); err != nil {
		return nil, err
	}
	ok = true
	return n, nil
}

// loadOrCreateIdentity reads the identity file, or creates it (mode 0600).
func loadOrCreateIdentity(path string, rnd io.Reader) (crypto.PrivKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		k, err := crypto.UnmarshalPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("node: identity file %s is corrupt: %w", path, err)
		}
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("node: read identity: %w", err)
	}
	priv, _, err := crypto.GenerateEd25519Key(rnd)
	if err != nil {
		return nil, fmt.Errorf("node: generate identity: %w", err)
	}
	b, err = crypto.MarshalPrivateKey(priv)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("node: create home: %w", err)
	}
	// Synced, renamed into place, folder synced: a power cut right after
	// the first start must not leave an empty identity behind (issue #11).
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return nil, fmt.Errorf("node: identity: %w", err)
	}
	return priv, nil
}

// ID is this node's peer ID: its member identity.
func (n *Node) ID() peer.ID { return n.self }

// Host is the libp2p host the node runs on.
func (n *Node) Host() host.Host { return n.host }

// Subscribe returns a subscription to every event of this node from now
// on. The first subscription also gets the events emitted before it (up to
// the latest 1024), so a program that subscribes right after New misses
// nothing its groups did while starting.
// After Close it returns a subscription whose channel is closed.
func (n *Node) Subscribe() *Subscription { return n.events.subscribe() }

// Close stops every group, the protocol handlers and, when the node created
// them, pubsub and the host; then closes the store. Calls in flight are
// cancelled and waited for first; from the moment Close begins, every
// method that can fail returns ErrClosed. Close may be called at any moment,
// from any goroutine and more than once: later calls wait for the first and
// return its result.
func (n *Node) Close() error {
	if !n.life.shut() {
		return n.closeErr
	}
	defer n.life.finished()
	n.mu.Lock()
	n.closed = true
	groups := make([]*Group, 0, len(n.groups))
	for _, g := range n.groups {
		groups = append(groups, g)
	}
	n.mu.Unlock()

	if n.mdns != nil {
		_ = n.mdns.Close()
	}
	n.streams.Close()
	for _, g := range groups {
		g.stop()
	}
	n.cancel()
	n.wg.Wait()
	var errs []error
	if n.ownsHost {
		errs = append(errs, n.host.Close())
	}
	n.events.closeAll()
	n.disk.close() // after every goroutine that writes has stopped
	errs = append(errs, n.store.Close())
	n.closeErr = errors.Join(errs...)
	return n.closeErr
}

// Group returns a joined group.
func (n *Node) Group(id roster.GroupID) (*Group, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	g, ok := n.groups[id]
	return g, ok
}

// Groups returns every joined group, including ones this node has left
// (kept for reading their history).
func (n *Node) Groups() []*Group {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make([]*Group, 0, len(n.groups))
	for _, g := range n.groups {
		out = append(out, g)
	}
	return out
}

// peerFilter lets GossipSub exchange a group's topic only with peers the
// group's roster names. Secrecy does not depend on it.
func (n *Node) peerFilter(p peer.ID, topic string) bool {
	n.mu.Lock()
	g, ok := n.byTopic[topic]
	n.mu.Unlock()
	if !ok {
		return true
	}
	return g.isMember(p)
}

// CreateGroup founds a new group with this node as its admin.
func (n *Node) CreateGroup(ctx context.Context, name string) (*Group, error) {
	leave, err := n.life.enter()
	if err != nil {
		return nil, err
	}
	defer leave()
	nonce := make([]byte, 16)
	if _, err := io.ReadFull(n.rand, nonce); err != nil {
		return nil, err
	}
	op, err := roster.NewCreate(n.priv, name, nonce)
	if err != nil {
		return nil, err
	}
	r, err := roster.New(op)
	if err != nil {
		return nil, err
	}
	if err := n.store.PutOp(op.ID, op.ID, op.Marshal()); err != nil {
		return nil, err
	}
	g, err := n.startGroup(r, false, true)
	if err != nil {
		return nil, err
	}
	g.mu.Lock()
	k, err := g.rotateLocked()
	g.mu.Unlock()
	if err != nil {
		return nil, err
	}
	if err := n.syncDisk(ctx); err != nil {
		return nil, err
	}
	g.emitRotated(k)
	return g, nil
}

// syncDisk waits until every write handed to the writer so far is
// durable. Call it with no lock held.
func (n *Node) syncDisk(ctx context.Context) error { return n.disk.sync(ctx, n.disk.ticket()) }

// JoinGroup joins a group this node has been added to: it connects to via,
// fetches the roster, checks that this node is a member and subscribes.
func (n *Node) JoinGroup(ctx context.Context, id roster.GroupID, via peer.AddrInfo) (*Group, error) {
	ctx, finish, err := n.life.call(ctx)
	if err != nil {
		return nil, err
	}
	defer finish()
	if g, ok := n.Group(id); ok && !g.hasLeft() {
		return g, nil
	}
	if err := n.host.Connect(ctx, via); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", via.ID.String(), err)
	}
	signed, err := n.streams.FetchRoster(ctx, via.ID, id, nil) // joining: we have nothing
	if err != nil {
		return nil, fmt.Errorf("fetch roster from %s: %w", via.ID.String(), err)
	}
	r, err := n.rosterFromSigned(id, signed)
	if err != nil {
		return nil, fmt.Errorf("roster from %s: %w", via.ID.String(), err)
	}
	if !r.IsMember(n.self) {
		return nil, fmt.Errorf("%w of group %s", ErrNotMember, id.ShortString())
	}
	for _, op := range r.Ops() {
		if err := n.store.PutOp(id, op.ID, op.Marshal()); err != nil {
			return nil, err
		}
	}
	if old, ok := n.Group(id); ok {
		old.stop()
	}
	g, err := n.startGroup(r, false, true)
	if err != nil {
		return nil, err
	}
	n.adoptOrphanKeys(g)
	if err := n.syncDisk(ctx); err != nil {
		return nil, err
	}
	return g, nil
}

// rosterFromSigned builds a roster from signed ops (verifying each).
func (n *Node) rosterFromSigned(id roster.GroupID, signed []*wire.Signed) (*roster.Roster, error) {
	var r *roster.Roster
	var rest []*roster.Op
	for _, s := range signed {
		op, err := roster.Decode(n.verifier, s)
		if err != nil {
			return nil, err
		}
		if op.Kind == roster.KindCreate {
			if op.ID != id || r != nil {
				continue
			}
			if r, err = roster.New(op); err != nil {
				return nil, err
			}
			continue
		}
		rest = append(rest, op)
	}
	if r == nil {
		return nil, fmt.Errorf("%w: no create op for the group", roster.ErrMalformed)
	}
	for _, op := range rest {
		if _, err := r.Insert(op); err != nil && !errors.Is(err, roster.ErrNotAuthorized) {
			return nil, err
		}
	}
	return r, nil
}

// loadGroups restores every stored group at start.
func (n *Node) loadGroups() error {
	type stored struct {
		id  roster.GroupID
		rec *wire.GroupRecord
	}
	var list []stored
	err := n.store.Groups(func(gid [32]byte, b []byte) error {
		var rec wire.GroupRecord
		if err := proto.Unmarshal(b, &rec); err != nil {
			return fmt.Errorf("group record %x: %w", gid[:4], err)
		}
		list = append(list, stored{roster.GroupID(gid), &rec})
		return nil
	})
	if err != nil {
		return fmt.Errorf("node: load groups: %w", err)
	}
	for _, s := range list {
		var signed []*wire.Signed
		err := n.store.Ops(s.id, func(b []byte) error {
			var sg wire.Signed
			if err := proto.Unmarshal(b, &sg); err != nil {
				return err
			}
			signed = append(signed, &sg)
			return nil
		})
		if err != nil {
			return fmt.Errorf("node: load roster: %w", err)
		}
		r, err := n.rosterFromSigned(s.id, signed)
		if err != nil {
			return fmt.Errorf("node: load roster of %s: %w", s.id.ShortString(), err)
		}
		if _, err := n.startGroup(r, s.rec.Left, false); err != nil {
			return err
		}
	}
	return nil
}

// wallNow is the wall-clock time this node stamps on what it sends: the
// local clock, shifted by Config.ClockOffset.
func (n *Node) wallNow() time.Time { return time.Now().Add(n.clockOffset) }
