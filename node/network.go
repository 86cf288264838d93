package node

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	ma "github.com/multiformats/go-multiaddr"
	manet "github.com/multiformats/go-multiaddr/net"
	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/roster"
	"github.com/p2pchat/p2pchat/wire"
)

// MDNSService is the mDNS service name p2pchat nodes announce on a LAN.
const MDNSService = "p2pchat"

// maxStoredAddrs bounds the addresses remembered per member.
const maxStoredAddrs = 16

// ErrBadInvite means an invite code that does not parse.
var ErrBadInvite = errors.New("malformed invite code")

// invitePrefix starts every invite code, so a pasted code is recognisable.
const invitePrefix = "p2pchat:"

// Invite tells an invitee which group to join and where to fetch it. It
// admits nobody: only the roster does, and JoinGroup checks it.
type Invite struct {
	Group   roster.GroupID
	Name    string
	Inviter peer.AddrInfo
}

// String encodes the invite as one pasteable line.
func (i Invite) String() string {
	w := &wire.Invite{GroupId: i.Group[:], Name: i.Name, Inviter: []byte(i.Inviter.ID)}
	for _, a := range i.Inviter.Addrs {
		w.Addrs = append(w.Addrs, a.Bytes())
	}
	b, _ := proto.Marshal(w)
	return invitePrefix + base64.RawURLEncoding.EncodeToString(b)
}

// ParseInvite decodes an invite code.
func ParseInvite(code string) (Invite, error) {
	code = strings.TrimSpace(code)
	if !strings.HasPrefix(code, invitePrefix) || len(code) > 8<<10 {
		return Invite{}, fmt.Errorf("%w: it should start with %q", ErrBadInvite, invitePrefix)
	}
	b, err := base64.RawURLEncoding.DecodeString(code[len(invitePrefix):])
	if err != nil {
		return Invite{}, fmt.Errorf("%w: %v", ErrBadInvite, err)
	}
	var w wire.Invite
	if err := proto.Unmarshal(b, &w); err != nil {
		return Invite{}, fmt.Errorf("%w: %v", ErrBadInvite, err)
	}
	var inv Invite
	if inv.Group, err = roster.ParseOpID(w.GroupId); err != nil {
		return Invite{}, fmt.Errorf("%w: group id", ErrBadInvite)
	}
	if inv.Inviter.ID, err = wire.ParsePeerID(w.Inviter); err != nil {
		return Invite{}, fmt.Errorf("%w: inviter", ErrBadInvite)
	}
	if len(w.Name) > roster.MaxNameLen || len(w.Addrs) > 64 {
		return Invite{}, fmt.Errorf("%w: too long", ErrBadInvite)
	}
	inv.Name = w.Name
	for _, a := range w.Addrs {
		m, err := ma.NewMultiaddrBytes(a)
		if err != nil {
			return Invite{}, fmt.Errorf("%w: address", ErrBadInvite)
		}
		inv.Inviter.Addrs = append(inv.Inviter.Addrs, m)
	}
	return inv, nil
}

// Invite adds p to the group as a member (if it is not one yet) and returns
// the invite code p uses to join. Re-inviting a member just returns a code.
func (g *Group) Invite(ctx context.Context, p peer.ID) (Invite, error) {
	ctx, finish, err := g.n.life.call(ctx)
	if err != nil {
		return Invite{}, err
	}
	defer finish()
	if !g.isMember(p) {
		if err := g.Add(ctx, p, roster.RoleMember); err != nil {
			return Invite{}, err
		}
	}
	return Invite{Group: g.id, Name: g.Name(), Inviter: peer.AddrInfo{ID: g.n.self, Addrs: dialableAddrs(g.n.host.Addrs())}}, nil
}

// Join joins the group an invite names, through the inviter.
func (n *Node) Join(ctx context.Context, inv Invite) (*Group, error) {
	return n.JoinGroup(ctx, inv.Group, inv.Inviter)
}

// dialableAddrs orders addresses LAN and public first, loopback last, and
// drops unspecified ones.
func dialableAddrs(addrs []ma.Multiaddr) []ma.Multiaddr {
	var out, loop []ma.Multiaddr
	for _, a := range addrs {
		ip, err := manet.ToIP(a)
		if err != nil {
			out = append(out, a)
			continue
		}
		switch {
		case ip.IsUnspecified():
		case ip.IsLoopback():
			loop = append(loop, a)
		default:
			out = append(out, a)
		}
	}
	return append(out, loop...)
}

// Connect dials a peer. Its addresses are remembered only once it is a
// member of one of our groups (addressBookLoop), so that the node can
// reach members again after a restart; a peer that is no member is not
// remembered.
func (n *Node) Connect(ctx context.Context, ai peer.AddrInfo) error {
	ctx, finish, err := n.life.call(ctx)
	if err != nil {
		return err
	}
	defer finish()
	if ai.ID == n.self {
		return errors.New("cannot connect to self")
	}
	if err := n.host.Connect(ctx, ai); err != nil {
		return err
	}
	return nil
}

// startNetworking starts the address book, the reconnect loop, mDNS and the
// bootstrap dials. Every goroutine it starts is tracked by n.wg.
func (n *Node) startNetworking(cfg Config) error {
	sub, err := n.host.EventBus().Subscribe(new(event.EvtPeerIdentificationCompleted))
	if err != nil {
		return fmt.Errorf("node: subscribe to identify events: %w", err)
	}
	n.wg.Add(2)
	go n.addressBookLoop(sub)
	go n.reconnectLoop(cfg.Bootstrap)
	if cfg.MDNS {
		svc := mdns.NewMdnsService(n.host, MDNSService, mdnsNotifee{n})
		if err := svc.Start(); err != nil {
			return fmt.Errorf("node: start mDNS: %w", err)
		}
		n.mdns = svc
	}
	return nil
}

// addressBookLoop records where members of our groups listen, so the node
// can find them again after a restart.
func (n *Node) addressBookLoop(sub event.Subscription) {
	defer n.wg.Done()
	defer sub.Close()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.addrBookWake:
			n.rememberConnectedMembers()
		case ev, ok := <-sub.Out():
			if !ok {
				return
			}
			id := ev.(event.EvtPeerIdentificationCompleted)
			if !n.isKnownMember(id.Peer) || len(id.ListenAddrs) == 0 {
				continue
			}
			n.rememberAddrs(id.Peer, id.ListenAddrs)
		}
	}
}

// rememberAddrs stores where p listens.
func (n *Node) rememberAddrs(p peer.ID, listen []ma.Multiaddr) {
	rec := &wire.AddrRecord{SeenAtMs: time.Now().UnixMilli()}
	for _, a := range dialableAddrs(listen) {
		if len(rec.Addrs) < maxStoredAddrs {
			rec.Addrs = append(rec.Addrs, a.Bytes())
		}
	}
	if len(rec.Addrs) == 0 {
		return
	}
	if b, err := proto.Marshal(rec); err == nil {
		_ = n.store.PutAddrs([]byte(p), b)
	}
}

// rememberConnectedMembers stores the addresses of members we are connected
// to and have none stored for: peers identified before they became members
// (connected first, then invited) are otherwise never written down, and
// once every member has restarted nobody could find anybody.
func (n *Node) rememberConnectedMembers() {
	seen := map[peer.ID]bool{n.self: true}
	for _, g := range n.Groups() {
		if g.hasLeft() {
			continue
		}
		for _, m := range g.Members() {
			if seen[m.ID] {
				continue
			}
			seen[m.ID] = true
			if n.host.Network().Connectedness(m.ID) != network.Connected || len(n.storedAddrs(m.ID)) > 0 {
				continue
			}
			n.rememberAddrs(m.ID, n.host.Peerstore().Addrs(m.ID))
		}
	}
}

// rememberAddrsSoon asks the address book to note the addresses of members
// it has none for (a roster gained members). It never blocks.
func (n *Node) rememberAddrsSoon() {
	select {
	case n.addrBookWake <- struct{}{}:
	default:
	}
}

// isKnownMember reports whether p is a current member of any joined group.
func (n *Node) isKnownMember(p peer.ID) bool {
	for _, g := range n.Groups() {
		if g.isMember(p) {
			return true
		}
	}
	return false
}

// storedAddrs returns the remembered addresses of p.
func (n *Node) storedAddrs(p peer.ID) []ma.Multiaddr {
	b, err := n.store.Addrs([]byte(p))
	if err != nil {
		return nil
	}
	var rec wire.AddrRecord
	if proto.Unmarshal(b, &rec) != nil {
		return nil
	}
	var out []ma.Multiaddr
	for _, a := range rec.Addrs {
		if m, err := ma.NewMultiaddrBytes(a); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// reconnectLoop keeps the node connected to the bootstrap peers and to the
// members of its groups, dialing those it is not connected to at start and
// then every Params.ReconnectInterval.
func (n *Node) reconnectLoop(bootstrap []peer.AddrInfo) {
	defer n.wg.Done()
	tick := time.NewTicker(n.params.ReconnectInterval)
	defer tick.Stop()
	for {
		n.reconnect(bootstrap)
		select {
		case <-n.ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (n *Node) reconnect(bootstrap []peer.AddrInfo) {
	n.rememberAddrsSoon()
	targets := slices.Clone(bootstrap)
	seen := map[peer.ID]bool{n.self: true}
	for _, ai := range bootstrap {
		seen[ai.ID] = true
	}
	for _, g := range n.Groups() {
		if g.hasLeft() {
			continue
		}
		for _, m := range g.Members() {
			if seen[m.ID] {
				continue
			}
			seen[m.ID] = true
			addrs := n.storedAddrs(m.ID)
			if len(addrs) == 0 && len(n.host.Peerstore().Addrs(m.ID)) == 0 {
				continue
			}
			targets = append(targets, peer.AddrInfo{ID: m.ID, Addrs: addrs})
		}
	}
	for _, ai := range targets {
		if n.ctx.Err() != nil {
			return
		}
		if n.host.Network().Connectedness(ai.ID) == network.Connected {
			continue
		}
		ctx, cancel := context.WithTimeout(n.ctx, n.params.DialTimeout)
		if err := n.host.Connect(ctx, ai); err != nil {
			n.log.Debug("reconnect failed", "peer", ai.ID.ShortString(), "err", err)
		}
		cancel()
	}
}

// mdnsNotifee connects to p2pchat peers found on the LAN. mDNS calls it on a
// goroutine of its own; the dial is bounded and tracked so Close waits.
type mdnsNotifee struct{ n *Node }

func (m mdnsNotifee) HandlePeerFound(ai peer.AddrInfo) {
	n := m.n
	if ai.ID == n.self || n.host.Network().Connectedness(ai.ID) == network.Connected {
		return
	}
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return
	}
	n.wg.Add(1)
	n.mu.Unlock()
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(n.ctx, n.params.DialTimeout)
	defer cancel()
	if err := n.host.Connect(ctx, ai); err != nil {
		n.log.Debug("mDNS peer dial failed", "peer", ai.ID.ShortString(), "err", err)
	}
}
