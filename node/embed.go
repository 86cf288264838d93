package node

import (
	"errors"
	"sync/atomic"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/gossip"
)

// PeerFilter is the GossipSub peer filter of a node: on a group's topic it
// lets the router exchange messages only with peers the group's roster
// names (secrecy does not depend on it; it keeps strangers out of the mesh
// and its gossip). A program that brings its own Host and PubSub creates
// one, builds its router with its PubSubOptions, and passes the same filter
// in Config.PeerFilter. Until the node starts, and on topics that are not a
// joined group's, it lets every peer through.
type PeerFilter struct {
	n atomic.Pointer[Node]
}

// NewPeerFilter returns a filter to pass to both the router and the node.
func NewPeerFilter() *PeerFilter { return &PeerFilter{} }

// PubSubOptions are the options an embedder's GossipSub router must be
// created with: gossip's signature policy and message IDs (every member's
// router must agree on them) and this filter.
func (f *PeerFilter) PubSubOptions() []pubsub.Option {
	return append(gossip.PubSubOptions(), pubsub.WithPeerFilter(f.allow))
}

func (f *PeerFilter) allow(p peer.ID, topic string) bool {
	if n := f.n.Load(); n != nil {
		return n.peerFilter(p, topic)
	}
	return true
}

// bind attaches the filter to its node, once.
func (f *PeerFilter) bind(n *Node) error {
	if !f.n.CompareAndSwap(nil, n) {
		return errors.New("node: Config.PeerFilter belongs to another node")
	}
	return nil
}
