// Package demo is `p2pchat demo`: four real p2pchat nodes on loopback TCP in
// one process, narrated step by step — chat, removal with key rotation, and
// the self-healing key request when a new member misses its key. Every claim
// the narration makes is checked against the nodes; a failed check makes Run
// return an error.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/roster"
)

// Step headings; the test looks for them.
const (
	headStart   = "1. Start"
	headChat    = "2. Chat"
	headRemove  = "3. Remove"
	headHeal    = "4. Self-heal"
	headSummary = "5. Summary"
)

const (
	overallTimeout = 25 * time.Second // the whole demo, whatever the caller's ctx allows
	waitTimeout    = 10 * time.Second // any one wait or network operation
	pollInterval   = 5 * time.Millisecond
)

// member is one demo node with its event recorder and connection gater.
type member struct {
	name  string
	node  *node.Node
	gater *gater
	rec   *recorder
}

func (m *member) ID() peer.ID { return m.node.ID() }

type demo struct {
	ctx   context.Context
	out   io.Writer
	werr  error
	start time.Time

	names                   map[peer.ID]string
	all                     []*member
	alice, bob, carol, dave *member
	gid                     roster.GroupID

	keyChain    []keyring.ID // alice's sending keys, in order
	sentCount   int
	removedKey  keyring.ID // the key made when carol was removed
	daveKey     keyring.ID // the key derived when dave was added
	removedText []string   // texts carol must never read
	healDelays  []time.Duration
	closed      bool
}

// Run runs the whole demo and narrates it to out. It closes every node it
// started before it returns. A nil error means every claim it printed was
// checked and held.
func Run(ctx context.Context, out io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(ctx, overallTimeout)
	defer cancel()
	d := &demo{ctx: ctx, out: out, start: time.Now(), names: make(map[peer.ID]string)}
	defer func() {
		if cerr := d.close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("demo: close nodes: %w", cerr))
		}
	}()
	steps := []struct {
		name string
		run  func() error
	}{
		{"start", d.stepStart},
		{"chat", d.stepChat},
		{"remove", d.stepRemove},
		{"self-heal", d.stepHeal},
		{"summary", d.stepSummary},
	}
	for _, s := range steps {
		if err := s.run(); err != nil {
			d.printf("   FAILED: %v\n", err)
			return fmt.Errorf("demo step %s: %w", s.name, err)
		}
	}
	if err := d.close(); err != nil {
		return fmt.Errorf("demo: close nodes: %w", err)
	}
	d.printf("   closed all %d nodes.\n", len(d.all))
	return d.werr
}

// ---- step 1 ----

func (d *demo) stepStart() error {
	d.printf("%s: 4 nodes on 127.0.0.1; alice creates group \"demo\" and adds bob and carol\n", headStart)
	for _, name := range []string{"alice", "bob", "carol", "dave"} {
		m, err := d.newMember(name)
		if err != nil {
			return err
		}
		d.all = append(d.all, m)
		d.names[m.ID()] = name
		addr := ""
		if as := m.node.Host().Addrs(); len(as) > 0 {
			addr = as[0].String()
		}
		d.printf("   %-5s %s  %s\n", name, shortPeer(m.ID()), addr)
	}
	d.alice, d.bob, d.carol, d.dave = d.all[0], d.all[1], d.all[2], d.all[3]

	// alice and dave refuse each other; dave reaches the group only via bob.
	d.alice.gater.block(d.dave.ID())
	d.dave.gater.block(d.alice.ID())
	links := [][2]*member{{d.alice, d.bob}, {d.alice, d.carol}, {d.bob, d.carol}, {d.bob, d.dave}}
	var linkNames []string
	for _, l := range links {
		if err := d.connect(l[0], l[1]); err != nil {
			return err
		}
		linkNames = append(linkNames, l[0].name+"–"+l[1].name)
	}
	for _, p := range [][2]*member{{d.alice, d.dave}, {d.dave, d.alice}} {
		octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
		err := p[0].node.Host().Connect(octx, addrInfo(p[1].node))
		cancel()
		if err == nil {
			return fmt.Errorf("%s connected to %s despite the connection gater", p[0].name, p[1].name)
		}
	}
	if d.connected(d.alice, d.dave) {
		return errors.New("alice and dave are connected despite the connection gater")
	}
	d.printf("   connected %s; alice and dave refuse each other (connection gater): their dials to each other fail\n",
		strings.Join(linkNames, ", "))

	octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	g, err := d.alice.node.CreateGroup(octx, "demo")
	if err != nil {
		return fmt.Errorf("create group: %w", err)
	}
	d.gid = g.ID()
	k0 := g.SendingKeyID()
	if k0.IsZero() {
		return errors.New("alice holds no sending key after creating the group")
	}
	d.keyChain = append(d.keyChain, k0)
	d.printf("   alice creates group %q (id %s) with key %s\n", g.Name(), d.gid.ShortString(), k0.Short())

	for _, m := range []*member{d.bob, d.carol} {
		if err := g.Add(octx, m.ID(), roster.RoleMember); err != nil {
			return fmt.Errorf("add %s: %w", m.name, err)
		}
		k := g.SendingKeyID()
		if k.IsZero() || slices.Contains(d.keyChain, k) {
			return fmt.Errorf("alice's sending key did not move to a new epoch key on adding %s", m.name)
		}
		d.keyChain = append(d.keyChain, k)
		if _, err := m.node.JoinGroup(octx, d.gid, addrInfo(d.alice.node)); err != nil {
			return fmt.Errorf("%s joins: %w", m.name, err)
		}
		d.printf("   alice adds %s (key %s → %s); %s joins through alice\n", m.name, d.keyChain[len(d.keyChain)-2].Short(), k.Short(), m.name)
	}
	if n := d.alice.node.Stats().KeysGenerated; n != 1 {
		return fmt.Errorf("alice generated %d random keys, want 1 (the adds must derive theirs)", n)
	}

	trio := []*member{d.alice, d.bob, d.carol}
	k2 := d.keyChain[len(d.keyChain)-1]
	if err := d.waitFor("alice, bob and carol to see each other on the group topic, agree on the roster and send with "+k2.Short(), func() bool {
		want := d.group(d.alice).State().Digest
		for _, m := range trio {
			g := d.group(m)
			if g == nil || len(g.Peers()) < len(trio)-1 || g.State().Digest != want || g.SendingKeyID() != k2 {
				return false
			}
		}
		return true
	}); err != nil {
		return err
	}
	if err := d.checkMembers(trio, []*member{d.alice, d.bob, d.carol}); err != nil {
		return err
	}
	var ms []string
	st := d.group(d.alice).State()
	for _, m := range trio {
		role, _ := st.RoleOf(m.ID())
		ms = append(ms, fmt.Sprintf("%s (%s)", m.name, role))
	}
	d.printf("   members, the same on all three nodes: %s\n", strings.Join(ms, ", "))
	cg := d.group(d.carol)
	for _, k := range d.keyChain[:len(d.keyChain)-1] {
		if cg.HasKey(k) {
			return fmt.Errorf("carol holds %s, a key from before she joined", k.Short())
		}
	}
	d.printf("   each add derived the next key one-way from the last (alice generated only %s); all three send with %s,\n", k0.Short(), k2.Short())
	d.printf("   and carol, added last, holds neither %s nor %s\n", d.keyChain[0].Short(), d.keyChain[1].Short())
	return nil
}

// ---- step 2 ----

func (d *demo) stepChat() error {
	d.printf("\n%s: alice, bob and carol each send a line\n", headChat)
	trio := []*member{d.alice, d.bob, d.carol}
	key := d.group(d.alice).SendingKeyID()
	lines := []struct {
		from *member
		text string
	}{
		{d.alice, "hi, this is alice"},
		{d.bob, "hello from bob"},
		{d.carol, "carol here, hi all"},
	}
	var sent []*node.Message
	for _, l := range lines {
		m, err := d.send(l.from, l.text)
		if err != nil {
			return err
		}
		if m.KeyID != key {
			return fmt.Errorf("%s sent with %s, not the shared key %s", l.from.name, m.KeyID.Short(), key.Short())
		}
		sent = append(sent, m)
		d.printf("   %s sends: %s\n", l.from.name, l.text)
	}
	for i, m := range sent {
		for _, r := range trio {
			if r == lines[i].from {
				continue
			}
			if err := d.waitReads(r, m); err != nil {
				return err
			}
			d.printf("   %s sees %s: %s\n", r.name, lines[i].from.name, m.Text)
		}
	}
	d.printf("   every line reached both other members, all under key %s\n", key.Short())
	return nil
}

// ---- step 3 ----

func (d *demo) stepRemove() error {
	d.printf("\n%s: alice removes carol; the key rotates\n", headRemove)
	ag, bg, cg := d.group(d.alice), d.group(d.bob), d.group(d.carol)
	oldKey := ag.SendingKeyID()
	pushed := d.alice.node.Stats().KeyTransfersSent
	octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	if err := ag.Remove(octx, d.carol.ID()); err != nil {
		return fmt.Errorf("remove carol: %w", err)
	}
	newKey := ag.SendingKeyID()
	if newKey.IsZero() || newKey == oldKey {
		return fmt.Errorf("alice's sending key is %s after the removal, want a new key (was %s)", newKey.Short(), oldKey.Short())
	}
	d.removedKey = newKey
	d.keyChain = append(d.keyChain, newKey)
	d.printf("   rotation: old key %s → new key %s (fresh random key, made by alice)\n", oldKey.Short(), newKey.Short())

	if err := d.waitFor("bob to send with "+newKey.Short(), func() bool { return bg.SendingKeyID() == newKey }); err != nil {
		return err
	}
	if err := d.waitFor("alice's transfer of the new key to be acknowledged", func() bool {
		return d.alice.node.Stats().KeyTransfersSent > pushed
	}); err != nil {
		return err
	}
	if n := d.alice.node.Stats().KeyTransfersSent - pushed; n != 1 {
		return fmt.Errorf("alice delivered %d key transfers for the rotation, want 1 (bob only)", n)
	}
	d.printf("   alice sent %s pairwise to bob (1 transfer, none to carol); alice and bob both send with %s now\n", newKey.Short(), newKey.Short())
	if err := d.waitFor("carol's node to apply her removal", func() bool { return !cg.IsMember(d.carol.ID()) }); err != nil {
		return err
	}
	if err := d.checkMembers([]*member{d.alice, d.bob}, []*member{d.alice, d.bob}); err != nil {
		return err
	}
	d.printf("   members now: alice, bob (carol's own node agrees she is out)\n")

	text := "carol can't read this"
	m, err := d.send(d.alice, text)
	if err != nil {
		return err
	}
	if m.KeyID != newKey {
		return fmt.Errorf("alice sent with %s after the rotation, want %s", m.KeyID.Short(), newKey.Short())
	}
	d.removedText = append(d.removedText, text)
	d.printf("   alice sends under %s: %s\n", m.KeyID.Short(), text)
	if err := d.waitReads(d.bob, m); err != nil {
		return err
	}
	d.printf("   bob sees alice: %s\n", text)

	held, total, err := d.checkCarol()
	if err != nil {
		return err
	}
	if !d.connected(d.carol, d.alice) || !d.connected(d.carol, d.bob) {
		return errors.New("carol is no longer connected to alice and bob")
	}
	d.printf("   carol cannot read it: her node does not hold %s (it holds %s, from before her removal)\n", newKey.Short(), held)
	d.printf("   and none of the %d messages in her history contains the text.\n", total)
	d.printf("   (carol is still connected to alice and bob. In a real network a removed member can still\n")
	d.printf("   capture the ciphertext; what she lacks is the key.)\n")
	return nil
}

// checkCarol checks that carol holds none of the keys made after her
// removal and has read none of the texts sent since; it returns the keys
// she does hold and the size of her history.
func (d *demo) checkCarol() (string, int, error) {
	cg := d.group(d.carol)
	for _, k := range []keyring.ID{d.removedKey, d.daveKey} {
		if !k.IsZero() && cg.HasKey(k) {
			return "", 0, fmt.Errorf("carol holds %s, a key made after her removal", k.Short())
		}
	}
	hist, err := cg.History()
	if err != nil {
		return "", 0, fmt.Errorf("carol's history: %w", err)
	}
	for _, t := range d.removedText {
		for _, m := range hist {
			if strings.Contains(m.Text, t) {
				return "", 0, fmt.Errorf("carol's history contains %q", t)
			}
		}
		for _, e := range d.carol.rec.snapshot() {
			if e.Message != nil && strings.Contains(e.Message.Text, t) {
				return "", 0, fmt.Errorf("carol's node showed %q", t)
			}
		}
	}
	var ks []string
	for _, k := range cg.KeyIDs() {
		ks = append(ks, k.Short())
	}
	slices.Sort(ks)
	return strings.Join(ks, ", "), len(hist), nil
}

// ---- step 4 ----

func (d *demo) stepHeal() error {
	d.printf("\n%s: alice adds dave, whom she cannot reach; dave joins through bob\n", headHeal)
	ag, bg := d.group(d.alice), d.group(d.bob)
	aBase, bBase, dBase := d.alice.node.Stats(), d.bob.node.Stats(), d.dave.node.Stats()
	prevKey := ag.SendingKeyID()
	octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	if err := ag.Add(octx, d.dave.ID(), roster.RoleMember); err != nil {
		return fmt.Errorf("add dave: %w", err)
	}
	key := ag.SendingKeyID()
	if key.IsZero() || key == prevKey {
		return fmt.Errorf("alice's sending key is %s after adding dave, want a new epoch key", key.Short())
	}
	if d.alice.node.Stats().KeysGenerated != aBase.KeysGenerated {
		return errors.New("alice generated a random key on adding dave; the add should derive it")
	}
	d.daveKey = key
	d.keyChain = append(d.keyChain, key)
	d.printf("   alice adds dave: key %s → %s, derived one-way from %s; alice's pairwise push of it to dave fails: she cannot reach him\n",
		prevKey.Short(), key.Short(), prevKey.Short())
	if err := d.waitFor("bob to apply the add and derive "+key.Short(), func() bool {
		return bg.IsMember(d.dave.ID()) && bg.HasKey(key)
	}); err != nil {
		return err
	}
	d.printf("   bob applies the add and derives %s himself\n", key.Short())
	if _, err := d.dave.node.JoinGroup(octx, d.gid, addrInfo(d.bob.node)); err != nil {
		return fmt.Errorf("dave joins through bob: %w", err)
	}
	dg := d.group(d.dave)
	if err := d.waitFor("dave and bob to see each other on the group topic", func() bool {
		return len(dg.Peers()) >= 1 && slices.Contains(bg.Peers(), d.dave.ID())
	}); err != nil {
		return err
	}
	if dg.HasKey(key) {
		return fmt.Errorf("dave already holds %s: nothing to heal", key.Short())
	}
	d.printf("   dave joins through bob; he does not hold %s\n", key.Short())

	texts := []string{"welcome, dave", "this left before your key did", "nothing gets lost"}
	var sent []*node.Message
	for _, t := range texts {
		m, err := d.send(d.alice, t)
		if err != nil {
			return err
		}
		if m.KeyID != key {
			return fmt.Errorf("alice sent with %s, want %s", m.KeyID.Short(), key.Short())
		}
		sent = append(sent, m)
	}
	d.printf("   alice sends %d messages at once under %s\n", len(sent), key.Short())
	for _, m := range sent {
		if err := d.waitReads(d.dave, m); err != nil {
			return err
		}
		if err := d.waitReads(d.bob, m); err != nil {
			return err
		}
	}
	if err := d.waitFor("bob's answer to be acknowledged", func() bool {
		return d.bob.node.Stats().KeyTransfersSent > bBase.KeyTransfersSent
	}); err != nil {
		return err
	}
	dStats := d.dave.node.Stats()
	if dStats.KeyRequestsSent == dBase.KeyRequestsSent {
		return errors.New("dave decrypted without publishing a key request")
	}
	if dStats.KeyTransfersAccepted == dBase.KeyTransfersAccepted {
		return errors.New("dave accepted no key transfer")
	}
	if n := d.alice.node.Stats().KeyTransfersSent - aBase.KeyTransfersSent; n != 0 {
		return fmt.Errorf("alice delivered %d key transfers, but she cannot reach dave", n)
	}
	if d.connected(d.alice, d.dave) {
		return errors.New("alice and dave are connected")
	}

	// What dave's node showed, in the order it showed it.
	type shown struct{ waiting, decrypted *node.Event }
	views := make(map[string]*shown)
	for _, m := range sent {
		views[m.ID()] = &shown{}
	}
	var order []node.Event
	for _, e := range d.dave.rec.snapshot() {
		if e.Group != d.gid || e.Message == nil {
			continue
		}
		v, ok := views[e.Message.ID()]
		if !ok {
			continue
		}
		switch {
		case e.Kind == node.EventMessage && e.Message.Status == node.StatusWaitingForKey && v.waiting == nil:
			if e.Message.Text != "" {
				return errors.New("a message waiting for its key carries text")
			}
			v.waiting = &e
		case e.Message.Status == node.StatusOK && v.decrypted == nil:
			v.decrypted = &e
		default:
			continue
		}
		order = append(order, e)
	}
	waited := 0
	for _, v := range views {
		if v.waiting != nil {
			waited++
			if v.decrypted == nil || v.decrypted.Kind != node.EventMessageDecrypted || v.decrypted.Seq < v.waiting.Seq {
				return errors.New("a waiting message was not later shown decrypted")
			}
		}
	}
	if waited == 0 {
		return errors.New("no message was shown waiting for its key: the race did not happen")
	}
	announced := false
	for _, e := range order {
		m := e.Message
		switch {
		case m.Status == node.StatusWaitingForKey:
			d.printf("   dave sees alice: [waiting for key %s]   (alice's message #%d)\n", m.KeyID.Short(), m.Seq)
		default:
			if !announced {
				d.printf("   dave publishes a key request for %s (%d sent); bob answers pairwise (key transfers: %d from bob, 0 from alice)\n",
					key.Short(), dStats.KeyRequestsSent-dBase.KeyRequestsSent,
					d.bob.node.Stats().KeyTransfersSent-bBase.KeyTransfersSent)
				announced = true
			}
			if v := views[m.ID()]; v.waiting != nil {
				delay := e.Time.Sub(v.waiting.Message.ReceivedAt)
				d.healDelays = append(d.healDelays, delay)
				d.printf("   dave sees alice: %s   (#%d, decrypted %d ms after it arrived)\n", m.Text, m.Seq, delay.Milliseconds())
			} else {
				d.printf("   dave sees alice: %s   (#%d arrived after the key: decrypted at once)\n", m.Text, m.Seq)
			}
		}
	}

	hist, err := dg.History()
	if err != nil {
		return fmt.Errorf("dave's history: %w", err)
	}
	for _, m := range sent {
		if !slices.ContainsFunc(hist, func(h node.Message) bool {
			return h.ID() == m.ID() && h.Status == node.StatusOK && h.Text == m.Text
		}) {
			return fmt.Errorf("dave's history lacks %q", m.Text)
		}
	}
	if err := d.waitFor("alice, bob and dave to send with "+key.Short(), func() bool {
		return ag.SendingKeyID() == key && bg.SendingKeyID() == key && dg.SendingKeyID() == key
	}); err != nil {
		return err
	}
	d.printf("   nothing lost: dave's history holds all %d of alice's messages, decrypted; %d of them were shown waiting first.\n", len(sent), waited)
	d.printf("   alice, bob and dave now all send with %s\n", key.Short())
	return nil
}

// ---- step 5 ----

func (d *demo) stepSummary() error {
	if _, _, err := d.checkCarol(); err != nil {
		return err
	}
	var chain []string
	for _, k := range d.keyChain {
		chain = append(chain, k.Short())
	}
	var worst time.Duration
	for _, t := range d.healDelays {
		worst = max(worst, t)
	}
	d.printf("\n%s: %d nodes, %d messages, each read by every member entitled to it; keys %s;\n",
		headSummary, len(d.all), d.sentCount, strings.Join(chain, " → "))
	d.printf("   carol still cannot read anything sent after her removal; dave healed in at most %d ms with nothing lost.\n",
		worst.Milliseconds())
	d.printf("   every check passed in %.1f s.\n", time.Since(d.start).Seconds())
	return nil
}

// ---- helpers ----

func (d *demo) newMember(name string) (*member, error) {
	octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	gt := newGater()
	n, err := node.New(octx, node.Config{
		ListenAddrs: []string{"/ip4/127.0.0.1/tcp/0"},
		HostOptions: []libp2p.Option{libp2p.ConnectionGater(gt)},
	})
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &member{name: name, node: n, gater: gt, rec: newRecorder(n)}, nil
}

// connect dials b from a, retrying: two hosts dialing each other at once can
// fail the handshake on both sides.
func (d *demo) connect(a, b *member) error {
	var err error
	for try := 0; try < 5; try++ {
		octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
		dctx := octx
		if try > 0 {
			dctx = network.WithForceDirectDial(octx, "demo retry")
		}
		err = a.node.Host().Connect(dctx, addrInfo(b.node))
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-d.ctx.Done():
			return fmt.Errorf("connect %s to %s: %w", a.name, b.name, d.ctx.Err())
		case <-time.After(time.Duration(10*(try+1)) * time.Millisecond):
		}
	}
	return fmt.Errorf("connect %s to %s: %w", a.name, b.name, err)
}

func (d *demo) connected(a, b *member) bool {
	return a.node.Host().Network().Connectedness(b.ID()) == network.Connected ||
		b.node.Host().Network().Connectedness(a.ID()) == network.Connected
}

func (d *demo) group(m *member) *node.Group {
	g, _ := m.node.Group(d.gid)
	return g
}

func (d *demo) send(m *member, text string) (*node.Message, error) {
	octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	g := d.group(m)
	if g == nil {
		return nil, fmt.Errorf("%s has not joined the group", m.name)
	}
	msg, err := g.Send(octx, text)
	if err != nil {
		return nil, fmt.Errorf("%s sends: %w", m.name, err)
	}
	d.sentCount++
	return msg, nil
}

// waitReads waits until r's node has shown msg decrypted with its text.
func (d *demo) waitReads(r *member, msg *node.Message) error {
	return d.waitFor(fmt.Sprintf("%s to read %q", r.name, msg.Text), func() bool {
		return r.rec.read(d.gid, msg.ID()) == msg.Text
	})
}

// checkMembers checks that every node in on sees exactly want as members.
func (d *demo) checkMembers(on, want []*member) error {
	var ids []peer.ID
	for _, m := range want {
		ids = append(ids, m.ID())
	}
	slices.Sort(ids)
	for _, m := range on {
		var got []peer.ID
		for _, mb := range d.group(m).Members() {
			got = append(got, mb.ID)
		}
		slices.Sort(got)
		if !slices.Equal(got, ids) {
			return fmt.Errorf("%s sees members %v, want %v", m.name, d.labels(got), d.labels(ids))
		}
	}
	return nil
}

// waitFor polls cond until it holds, for at most waitTimeout.
func (d *demo) waitFor(what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

func (d *demo) label(p peer.ID) string {
	if n, ok := d.names[p]; ok {
		return n
	}
	return shortPeer(p)
}

func (d *demo) labels(ps []peer.ID) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = d.label(p)
	}
	return out
}

func (d *demo) printf(format string, args ...any) {
	if _, err := fmt.Fprintf(d.out, format, args...); err != nil && d.werr == nil {
		d.werr = fmt.Errorf("demo: write output: %w", err)
	}
}

// close stops every recorder and closes every node; it is idempotent.
func (d *demo) close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for _, m := range d.all {
		m.rec.stop()
		errs = append(errs, m.node.Close())
	}
	return errors.Join(errs...)
}

func addrInfo(n *node.Node) peer.AddrInfo {
	return peer.AddrInfo{ID: n.ID(), Addrs: n.Host().Addrs()}
}

// shortPeer abbreviates a peer ID as "12D3…" plus its last six characters.
func shortPeer(p peer.ID) string {
	s := p.String()
	if len(s) <= 10 {
		return s
	}
	return s[:4] + "…" + s[len(s)-6:]
}

// recorder keeps every event of one node.
type recorder struct {
	sub  *node.Subscription
	done chan struct{}

	mu     sync.Mutex
	events []node.Event
}

func newRecorder(n *node.Node) *recorder {
	r := &recorder{sub: n.Subscribe(), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for e := range r.sub.C() {
			r.mu.Lock()
			r.events = append(r.events, e)
			r.mu.Unlock()
		}
	}()
	return r
}

func (r *recorder) snapshot() []node.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// read returns the text of message id of group as this node showed it
// decrypted, or "".
func (r *recorder) read(group roster.GroupID, id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.events {
		if e.Group == group && e.Message != nil && e.Message.Status == node.StatusOK && e.Message.ID() == id &&
			(e.Kind == node.EventMessage || e.Kind == node.EventMessageDecrypted) {
			return e.Message.Text
		}
	}
	return ""
}

func (r *recorder) stop() {
	r.sub.Close()
	<-r.done
}
