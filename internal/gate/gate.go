// Package gate is a libp2p connection gater that refuses connections to
// and from the peers it blocks, whichever side dials. The demo, the
// benchmarks and the tests use it to make peers unreachable from each other
// (partitions, a key push that cannot land). It must never be wired into a
// production node by default.
package gate

import (
	"sync"

	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"
)

// Gater blocks peers. Pass it with libp2p.ConnectionGater. Safe for
// concurrent use.
type Gater struct {
	mu      sync.Mutex
	blocked map[peer.ID]bool
}

// New returns a gater that blocks nobody.
func New() *Gater { return &Gater{blocked: make(map[peer.ID]bool)} }

// Block refuses every later connection to and from p. Existing connections
// stay: close them with the host's Network().ClosePeer.
func (g *Gater) Block(p peer.ID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.blocked[p] = true
}

// Clear lifts every block.
func (g *Gater) Clear() {
	g.mu.Lock()
	defer g.mu.Unlock()
	clear(g.blocked)
}

// Allowed reports whether p may connect.
func (g *Gater) Allowed(p peer.ID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return !g.blocked[p]
}

func (g *Gater) InterceptPeerDial(p peer.ID) bool                 { return g.Allowed(p) }
func (g *Gater) InterceptAddrDial(p peer.ID, _ ma.Multiaddr) bool { return g.Allowed(p) }
func (g *Gater) InterceptAccept(network.ConnMultiaddrs) bool      { return true }
func (g *Gater) InterceptSecured(_ network.Direction, p peer.ID, _ network.ConnMultiaddrs) bool {
	return g.Allowed(p)
}
func (g *Gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }
