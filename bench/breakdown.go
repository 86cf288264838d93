package main

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"

	"google.golang.org/protobuf/proto"

	"github.com/p2pchat/p2pchat/gossip"
	"github.com/p2pchat/p2pchat/wire"
)

// The latency breakdown: where a paced message's time goes, stage by stage,
// for raw GossipSub and for p2pchat, read off a GossipSub tracer on every
// node. It runs each side once more (10 nodes, 256 B, the paced stream), so
// the tracer's own cost never touches the numbers with targets.

// tracerFactory, when set, gives every router the harness or a node creates
// a tracer (node creation order = tracer order). Only runBreakdown sets it.
var tracerFactory func() pubsub.RawTracer

func tracing() []pubsub.Option {
	if tracerFactory == nil {
		return nil
	}
	return []pubsub.Option{pubsub.WithRawTracer(tracerFactory())}
}

// traceLog collects, per node and message ID, when the message was first
// received, entered validation and was delivered to subscribers; and when
// any node first handed it to a peer's queue (the origin's publish).
type traceLog struct {
	mu        sync.Mutex
	on        bool
	nodes     []map[string]*stageStamps
	firstSent map[string]time.Time
	data      map[string][]byte // a published message's bytes, by ID
}

type stageStamps struct{ recv, validate, deliver time.Time }

func (l *traceLog) newTracer() pubsub.RawTracer {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.nodes = append(l.nodes, make(map[string]*stageStamps))
	return &stageTracer{log: l, node: len(l.nodes) - 1}
}

func (l *traceLog) stamp(node int, data []byte, set func(*stageStamps, time.Time)) {
	now := time.Now()
	id := gossip.MessageID(data)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.on {
		return
	}
	st := l.nodes[node][id]
	if st == nil {
		st = &stageStamps{}
		l.nodes[node][id] = st
	}
	set(st, now)
}

// stageTracer is one node's tracer; it records only first occurrences.
type stageTracer struct {
	log  *traceLog
	node int
}

func first(t *time.Time, now time.Time) {
	if t.IsZero() {
		*t = now
	}
}

func (t *stageTracer) RecvRPC(rpc *pubsub.RPC) {
	for _, m := range rpc.Publish {
		t.log.stamp(t.node, m.Data, func(s *stageStamps, now time.Time) { first(&s.recv, now) })
	}
}
func (t *stageTracer) ValidateMessage(m *pubsub.Message) {
	t.log.stamp(t.node, m.Data, func(s *stageStamps, now time.Time) { first(&s.validate, now) })
}
func (t *stageTracer) DeliverMessage(m *pubsub.Message) {
	t.log.stamp(t.node, m.Data, func(s *stageStamps, now time.Time) { first(&s.deliver, now) })
}
func (t *stageTracer) SendRPC(rpc *pubsub.RPC, _ peer.ID) {
	now := time.Now()
	t.log.mu.Lock()
	defer t.log.mu.Unlock()
	if !t.log.on {
		return
	}
	for _, m := range rpc.Publish {
		id := gossip.MessageID(m.Data)
		if _, ok := t.log.firstSent[id]; !ok {
			t.log.firstSent[id] = now
			t.log.data[id] = m.Data
		}
	}
}
func (t *stageTracer) OnNewOutboundStream(peer.ID, protocol.ID)             {}
func (t *stageTracer) OnClosedOutboundStream(peer.ID)                       {}
func (t *stageTracer) Join(string)                                          {}
func (t *stageTracer) Leave(string)                                         {}
func (t *stageTracer) Graft(peer.ID, string)                                {}
func (t *stageTracer) Prune(peer.ID, string)                                {}
func (t *stageTracer) RejectMessage(*pubsub.Message, string)                {}
func (t *stageTracer) DuplicateMessage(*pubsub.Message)                     {}
func (t *stageTracer) ThrottlePeer(peer.ID)                                 {}
func (t *stageTracer) SendRPCCompleted(*pubsub.RPC, peer.ID, time.Duration) {}
func (t *stageTracer) DropRPC(*pubsub.RPC, peer.ID)                         {}
func (t *stageTracer) UndeliverableMessage(*pubsub.Message)                 {}

// stages are the breakdown's intervals, per (receiver, message).
type stages struct {
	sendCall, transport, gossipsub, shown, total []time.Duration
}

// traceRun runs one side's paced stream with tracers on and splits every
// delivery's latency into stages.
func traceRun(cfg *config, kind string, n int) (*stages, error) {
	const settle = 3 * time.Second
	log := &traceLog{firstSent: make(map[string]time.Time), data: make(map[string][]byte)}
	tracerFactory = log.newTracer
	var s side
	var err error
	switch kind {
	case "raw":
		s, err = newRawSide(n, settle)
	default:
		s, err = newP2PSide(n, false, settle)
	}
	tracerFactory = nil
	if err != nil {
		return nil, err
	}
	defer s.close()
	interval := time.Second / time.Duration(cfg.pacedRate)
	deliver(s, 1, cfg.warmup, 256, interval, 5*time.Second)
	log.mu.Lock()
	log.on = true
	log.mu.Unlock()
	d := deliver(s, 2, cfg.pacedMsgs, 256, interval, 10*time.Second)
	log.mu.Lock()
	log.on = false
	defer log.mu.Unlock()

	if len(log.nodes) != n {
		return nil, fmt.Errorf("%d tracers for %d nodes", len(log.nodes), n)
	}
	// Which paced message(s) each published message carries: raw payloads
	// name their index; p2pchat envelopes their sequence number, the first
	// paced one being the lowest traced (a batch carries several).
	ids := make([]string, d.msgs)
	seqs := make(map[string][]uint64)
	minSeq := uint64(math.MaxUint64)
	for id, data := range log.data {
		if kind == "raw" {
			if run, idx, ok := parsePayload(string(data)); ok && run == 2 && idx < d.msgs {
				ids[idx] = id
			}
			continue
		}
		for _, seq := range envelopeSeqs(data) {
			seqs[id] = append(seqs[id], seq)
			minSeq = min(minSeq, seq)
		}
	}
	for id, ss := range seqs {
		for _, seq := range ss {
			if i := seq - minSeq; i < uint64(d.msgs) {
				ids[i] = id
			}
		}
	}
	st := &stages{}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, id := range ids {
		sentAt, ok := log.firstSent[id]
		if id == "" || !ok {
			continue
		}
		st.sendCall = append(st.sendCall, sentAt.Sub(d.sendAt[i]))
		for r := range d.recv {
			shown := d.recv[r][i]
			ss := log.nodes[r+1][id] // receiver r is node r+1
			if shown.IsZero() || ss == nil || ss.recv.IsZero() || ss.deliver.IsZero() {
				continue
			}
			st.transport = append(st.transport, ss.recv.Sub(sentAt))
			st.gossipsub = append(st.gossipsub, ss.deliver.Sub(ss.recv))
			st.shown = append(st.shown, shown.Sub(ss.deliver))
			st.total = append(st.total, shown.Sub(d.sendAt[i]))
		}
	}
	for _, v := range [][]time.Duration{st.sendCall, st.transport, st.gossipsub, st.shown, st.total} {
		slices.Sort(v)
	}
	return st, nil
}

// envelopeSeqs reads the sequence numbers of the envelopes in a topic
// message, without verifying them: the harness only labels its own traffic.
func envelopeSeqs(data []byte) []uint64 {
	var m wire.TopicMessage
	if proto.Unmarshal(data, &m) != nil {
		return nil
	}
	signed := m.GetEnvelopeBatch().GetEnvelopes()
	if e := m.GetEnvelope(); e != nil {
		signed = append(signed, e)
	}
	var out []uint64
	for _, s := range signed {
		var e wire.Envelope
		if proto.Unmarshal(s.GetBody(), &e) == nil && e.Seq > 0 {
			out = append(out, e.Seq)
		}
	}
	return out
}

func runBreakdown(cfg *config, res *results, _ *plotData) {
	const sec = "Latency breakdown (paced stream, 10 nodes, 256 B, GossipSub tracer)"
	const n = 10
	var raw, p2p *stages
	for _, kind := range []string{"raw", "p2pchat"} {
		logf("breakdown: %s", kind)
		st, err := traceRun(cfg, kind, n)
		if err != nil {
			res.fail(sec, kind, err)
			return
		}
		if kind == "raw" {
			raw = st
		} else {
			p2p = st
		}
	}
	rows := []struct {
		name, note string
		raw, p2p   []time.Duration
	}{
		{"Send/Publish call → first copy queued to a peer", "p2pchat: seal, sign, store (one transaction), hand to GossipSub", raw.sendCall, p2p.sendCall},
		{"→ received by a member", "transport: queues, yamux, loopback TCP (p2pchat's message is larger by its envelope)", raw.transport, p2p.transport},
		{"→ delivered by GossipSub", "p2pchat: the validator (decode, Ed25519 verify, membership and replay checks) and the hop back to GossipSub's loop; raw has no validator", raw.gossipsub, p2p.gossipsub},
		{"→ shown", "raw: the subscriber reads it; p2pchat: reader, store (one transaction), decrypt, ordering, event", raw.shown, p2p.shown},
		{"total", "percentiles of stages do not add up to the total's", raw.total, p2p.total},
	}
	for _, r := range rows {
		for _, q := range []struct {
			label string
			p     float64
		}{{"p50", .5}, {"p99", .99}} {
			row := row{Section: sec, Metric: fmt.Sprintf("%s, %s", r.name, q.label), Unit: "ms", Raw: ms(pct(r.raw, q.p)), P2P: ms(pct(r.p2p, q.p))}
			if q.p == .5 {
				row.Note = r.note
			}
			if len(r.raw) == 0 || len(r.p2p) == 0 {
				row.Raw, row.P2P = math.NaN(), math.NaN()
			}
			res.add(row)
		}
	}
}
