// Package demo is `p2pchat demo`: four real p2pchat nodes on loopback TCP in
// one process, narrated step by step — chat, a new member who joins through
// a third party while messages are being sent, removal with key rotation,
// and the self-healing key request when a key is still in flight. Every
// claim the narration makes is checked against the nodes; a failed check
// makes Run return an error.
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

	"github.com/p2pchat/p2pchat/internal/gate"
	"github.com/p2pchat/p2pchat/keyring"
	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/roster"
)

// Step headings; the test looks for them.
const (
	headStart   = "1. Start"
	headChat    = "2. Chat"
	headJoin    = "3. Join"
	headRemove  = "4. Remove"
	headHeal    = "5. Self-heal"
	headSummary = "6. Summary"
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
	gater *gate.Gater
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
	joinKey     keyring.ID             // the key derived when dave was added
	rotKey      keyring.ID             // the key made when carol was removed
	rotBase     map[*member]node.Stats // counters just before carol's removal
	raced       []*node.Message        // alice's messages under rotKey
	removedText []string               // texts carol must never read
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
		{"join", d.stepJoin},
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

	// dave and alice, and dave and carol, refuse each other: dave reaches
	// the group only through bob.
	for _, o := range []*member{d.alice, d.carol} {
		o.gater.Block(d.dave.ID())
		d.dave.gater.Block(o.ID())
	}
	links := [][2]*member{{d.alice, d.bob}, {d.alice, d.carol}, {d.bob, d.carol}, {d.bob, d.dave}}
	var linkNames []string
	for _, l := range links {
		if err := d.connect(l[0], l[1]); err != nil {
			return err
		}
		linkNames = append(linkNames, l[0].name+"–"+l[1].name)
	}
	for _, p := range [][2]*member{{d.alice, d.dave}, {d.dave, d.alice}, {d.carol, d.dave}, {d.dave, d.carol}} {
		octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
		err := p[0].node.Host().Connect(octx, addrInfo(p[1].node))
		cancel()
		if err == nil {
			return fmt.Errorf("%s connected to %s despite the connection gater", p[0].name, p[1].name)
		}
		if d.ctx.Err() != nil {
			return d.ctx.Err()
		}
	}
	if err := d.checkCutOff(); err != nil {
		return err
	}
	d.printf("   connected %s; dave and alice, and dave and carol, refuse each other\n", strings.Join(linkNames, ", "))
	d.printf("   (connection gater): their dials to each other fail, so dave can reach only bob\n")

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
	if err := d.checkMembers(trio, trio); err != nil {
		return err
	}
	d.printf("   members, the same on all three nodes: %s\n", d.memberList(d.alice, trio))
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

// stepJoin: alice adds dave, whom she cannot reach, and writes as he joins
// through bob. dave's key comes from bob: offered when dave appears on the
// group topic, or asked for when a message under it reaches dave first.
// Which of the two happened depends on a hash ranking; the narration reads
// it off the nodes' counters.
func (d *demo) stepJoin() error {
	d.printf("\n%s: alice adds dave, whom she cannot reach; dave joins through bob while alice writes\n", headJoin)
	ag, bg, cg := d.group(d.alice), d.group(d.bob), d.group(d.carol)
	base := d.stats()
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
	if d.alice.node.Stats().KeysGenerated != base[d.alice].KeysGenerated {
		return errors.New("alice generated a random key on adding dave; the add should derive it")
	}
	d.joinKey = key
	d.keyChain = append(d.keyChain, key)
	d.printf("   alice adds dave: key %s → %s, derived one-way from %s; her pairwise push of %s to dave fails:\n",
		prevKey.Short(), key.Short(), prevKey.Short(), key.Short())
	d.printf("   she cannot reach him\n")
	if err := d.waitFor("bob and carol to apply the add and send with "+key.Short(), func() bool {
		return bg.IsMember(d.dave.ID()) && cg.IsMember(d.dave.ID()) && bg.SendingKeyID() == key && cg.SendingKeyID() == key
	}); err != nil {
		return err
	}
	if n := d.bob.node.Stats().KeysGenerated + d.carol.node.Stats().KeysGenerated; n != base[d.bob].KeysGenerated+base[d.carol].KeysGenerated {
		return errors.New("bob or carol generated a key on the add; they should derive it")
	}
	d.printf("   bob and carol apply the add and derive %s themselves\n", key.Short())

	if _, err := d.dave.node.JoinGroup(octx, d.gid, addrInfo(d.bob.node)); err != nil {
		return fmt.Errorf("dave joins through bob: %w", err)
	}
	dg := d.group(d.dave)
	texts := []string{"welcome, dave", "you joined just now"}
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
	d.printf("   dave joins through bob, and alice writes at once, under %s:\n", key.Short())
	for _, m := range sent {
		d.printf("   alice sends: %s\n", m.Text)
	}
	for _, m := range sent {
		for _, r := range []*member{d.dave, d.bob, d.carol} {
			if err := d.waitReads(r, m); err != nil {
				return err
			}
		}
	}
	if err := d.waitFor("bob's key transfer to dave to be acknowledged", func() bool {
		return d.bob.node.Stats().KeyTransfersSent > base[d.bob].KeyTransfersSent
	}); err != nil {
		return err
	}
	if err := d.waitFor("alice, bob, carol and dave to send with "+key.Short(), func() bool {
		return ag.SendingKeyID() == key && bg.SendingKeyID() == key && cg.SendingKeyID() == key && dg.SendingKeyID() == key
	}); err != nil {
		return err
	}

	order, views, err := d.view(d.dave, sent)
	if err != nil {
		return err
	}
	for _, e := range order {
		m := e.Message
		v := views[m.ID()]
		switch {
		case m.Status == node.StatusWaitingForKey:
			d.printf("   dave sees alice: [waiting for its key]   (#%d reached him before %s)\n", m.Seq, key.Short())
		case v.waiting != nil:
			d.printf("   dave sees alice: %s   (#%d, decrypted %d ms after it reached him)\n",
				m.Text, m.Seq, e.Time.Sub(v.waiting.Message.ReceivedAt).Milliseconds())
		default:
			d.printf("   dave sees alice: %s   (#%d, shown decrypted)\n", m.Text, m.Seq)
		}
	}
	d.printf("   bob and carol see both lines too\n")

	now := d.stats()
	delta := func(m *member, f func(node.Stats) uint64) uint64 { return f(now[m]) - f(base[m]) }
	sentBy := func(s node.Stats) uint64 { return s.KeyTransfersSent }
	requests := delta(d.dave, func(s node.Stats) uint64 { return s.KeyRequestsSent })
	fromBob := delta(d.bob, sentBy)
	if n := delta(d.dave, func(s node.Stats) uint64 { return s.KeyTransfersAccepted }); n == 0 {
		return errors.New("dave holds the key but accepted no key transfer")
	}
	if n := delta(d.alice, sentBy) + delta(d.carol, sentBy); n != 0 {
		return fmt.Errorf("alice and carol delivered %d key transfers, but neither can reach dave", n)
	}
	if err := d.checkCutOff(); err != nil {
		return err
	}
	transfers := fmt.Sprintf("key transfers: %d from bob, 0 from alice and carol, who cannot reach him", fromBob)
	if requests == 0 {
		d.printf("   dave got %s from bob, offered: bob pushed it pairwise as dave appeared on the group topic,\n", key.Short())
		d.printf("   unasked (0 key requests from dave; %s)\n", transfers)
	} else {
		d.printf("   dave got %s from bob, asked for: a message under it reached him first, so he published\n", key.Short())
		d.printf("   %d key request(s); bob delivered it pairwise (%s)\n", requests, transfers)
	}
	if dg.HasKey(prevKey) {
		return fmt.Errorf("dave holds %s, the key from before his add", prevKey.Short())
	}
	four := []*member{d.alice, d.bob, d.carol, d.dave}
	if err := d.waitFor("all four nodes to agree on the roster", func() bool {
		return d.checkMembers(four, four) == nil
	}); err != nil {
		return errors.Join(err, d.checkMembers(four, four))
	}
	d.printf("   dave does not hold %s: the chat from before he joined stays closed to him\n", prevKey.Short())
	d.printf("   members, the same on all four nodes: %s; all four send with %s\n", d.memberList(d.alice, four), key.Short())
	return nil
}

// ---- step 4 ----

func (d *demo) stepRemove() error {
	d.printf("\n%s: alice removes carol; the key rotates\n", headRemove)
	ag, bg, cg, dg := d.group(d.alice), d.group(d.bob), d.group(d.carol), d.group(d.dave)
	d.rotBase = d.stats()
	base := d.rotBase
	oldKey := ag.SendingKeyID()
	octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	if err := ag.Remove(octx, d.carol.ID()); err != nil {
		return fmt.Errorf("remove carol: %w", err)
	}
	newKey := ag.SendingKeyID()
	if newKey.IsZero() || newKey == oldKey {
		return fmt.Errorf("alice's sending key is %s after the removal, want a new key (was %s)", newKey.Short(), oldKey.Short())
	}
	if n := d.alice.node.Stats().KeysGenerated - base[d.alice].KeysGenerated; n != 1 {
		return fmt.Errorf("alice generated %d random keys on the removal, want 1", n)
	}
	d.rotKey = newKey
	d.keyChain = append(d.keyChain, newKey)
	d.printf("   rotation: old key %s → new key %s (fresh random key, made by alice)\n", oldKey.Short(), newKey.Short())

	if err := d.waitFor("bob to send with "+newKey.Short(), func() bool { return bg.SendingKeyID() == newKey }); err != nil {
		return err
	}
	if err := d.waitFor("alice's transfer of the new key to be acknowledged", func() bool {
		return d.alice.node.Stats().KeyTransfersSent > base[d.alice].KeyTransfersSent
	}); err != nil {
		return err
	}
	if n := d.alice.node.Stats().KeyTransfersSent - base[d.alice].KeyTransfersSent; n != 1 {
		return fmt.Errorf("alice delivered %d key transfers for the rotation, want 1 (bob only)", n)
	}
	if n := d.bob.node.Stats().KeyTransfersAccepted - base[d.bob].KeyTransfersAccepted; n != 1 {
		return fmt.Errorf("bob accepted %d key transfers, want 1 (alice's push)", n)
	}
	if err := d.waitFor("dave's and carol's nodes to apply the removal", func() bool {
		return !dg.IsMember(d.carol.ID()) && !cg.IsMember(d.carol.ID())
	}); err != nil {
		return err
	}
	trio := []*member{d.alice, d.bob, d.dave}
	if err := d.checkMembers(trio, trio); err != nil {
		return err
	}
	if err := d.checkCutOff(); err != nil {
		return err
	}
	if dg.HasKey(newKey) {
		return fmt.Errorf("dave already holds %s: no key in flight, nothing to heal", newKey.Short())
	}
	if k := dg.SendingKeyID(); !k.IsZero() {
		return fmt.Errorf("dave still sends with %s after the removal", k.Short())
	}
	d.printf("   alice pushes %s pairwise: it reaches bob (1 transfer), not dave, whom she cannot reach; none goes to carol.\n", newKey.Short())
	d.printf("   alice and bob send with %s; dave does not hold it yet\n", newKey.Short())
	d.printf("   members now: %s, the same on their three nodes; carol's own node agrees she is out\n", d.memberList(d.alice, trio))

	texts := []string{"carol can't read this", "this left before your key did", "nothing gets lost"}
	for _, t := range texts {
		m, err := d.send(d.alice, t)
		if err != nil {
			return err
		}
		if m.KeyID != newKey {
			return fmt.Errorf("alice sent with %s after the rotation, want %s", m.KeyID.Short(), newKey.Short())
		}
		d.raced = append(d.raced, m)
		d.removedText = append(d.removedText, t)
	}
	d.printf("   alice sends %d lines at once under %s:\n", len(d.raced), newKey.Short())
	for _, m := range d.raced {
		d.printf("   alice sends: %s\n", m.Text)
	}
	for _, m := range d.raced {
		if err := d.waitReads(d.bob, m); err != nil {
			return err
		}
		d.printf("   bob sees alice: %s\n", m.Text)
	}

	held, total, err := d.checkCarol()
	if err != nil {
		return err
	}
	if !d.connected(d.carol, d.alice) || !d.connected(d.carol, d.bob) {
		return errors.New("carol is no longer connected to alice and bob")
	}
	d.printf("   carol cannot read them: her node does not hold %s (it holds %s, from before her removal),\n", newKey.Short(), held)
	d.printf("   and none of the %d messages in her history contains their text.\n", total)
	d.printf("   (carol is still connected to alice and bob. In a real network a removed member can still\n")
	d.printf("   capture the ciphertext; what she lacks is the key.)\n")
	return nil
}

// checkCarol checks that carol holds no key made after her removal and has
// read none of the texts sent since; it returns the keys she does hold and
// the size of her history.
func (d *demo) checkCarol() (string, int, error) {
	cg := d.group(d.carol)
	if cg.HasKey(d.rotKey) {
		return "", 0, fmt.Errorf("carol holds %s, the key made at her removal", d.rotKey.Short())
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

// ---- step 5 ----

// stepHeal: alice's lines under the new key reached dave (through bob)
// before the key could: dave shows them waiting, asks the group for the key,
// bob answers, and they appear decrypted.
func (d *demo) stepHeal() error {
	key := d.rotKey
	d.printf("\n%s: alice's lines under %s reach dave, through bob, before %s does\n", headHeal, key.Short(), key.Short())
	ag, bg, dg := d.group(d.alice), d.group(d.bob), d.group(d.dave)
	base := d.rotBase
	for _, m := range d.raced {
		if err := d.waitReads(d.dave, m); err != nil {
			return err
		}
	}
	if err := d.waitFor("bob's answer to be acknowledged", func() bool {
		return d.bob.node.Stats().KeyTransfersSent > base[d.bob].KeyTransfersSent
	}); err != nil {
		return err
	}
	now := d.stats()
	requests := now[d.dave].KeyRequestsSent - base[d.dave].KeyRequestsSent
	if requests == 0 {
		return errors.New("dave decrypted without publishing a key request")
	}
	if now[d.dave].KeyTransfersAccepted == base[d.dave].KeyTransfersAccepted {
		return errors.New("dave accepted no key transfer")
	}
	if n := now[d.alice].KeyTransfersSent - base[d.alice].KeyTransfersSent; n != 1 {
		return fmt.Errorf("alice delivered %d key transfers since the removal, want 1 (to bob); she cannot reach dave", n)
	}
	if n := now[d.carol].KeyTransfersSent - base[d.carol].KeyTransfersSent; n != 0 {
		return fmt.Errorf("carol delivered %d key transfers after her removal", n)
	}
	if err := d.checkCutOff(); err != nil {
		return err
	}

	order, views, err := d.view(d.dave, d.raced)
	if err != nil {
		return err
	}
	waited := 0
	for _, v := range views {
		if v.waiting != nil {
			waited++
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
				d.printf("   dave publishes a key request for %s (%d sent); bob answers pairwise\n", key.Short(), requests)
				d.printf("   (key transfers since the removal: %d from bob to dave, 1 from alice, to bob)\n",
					now[d.bob].KeyTransfersSent-base[d.bob].KeyTransfersSent)
				announced = true
			}
			if v := views[m.ID()]; v.waiting != nil {
				delay := e.Time.Sub(v.waiting.Message.ReceivedAt)
				d.healDelays = append(d.healDelays, delay)
				d.printf("   dave sees alice: %s   (#%d, decrypted %d ms after it arrived)\n", m.Text, m.Seq, delay.Milliseconds())
			} else {
				d.printf("   dave sees alice: %s   (#%d, shown decrypted: its key had come by then)\n", m.Text, m.Seq)
			}
		}
	}

	hist, err := dg.History()
	if err != nil {
		return fmt.Errorf("dave's history: %w", err)
	}
	for _, m := range d.raced {
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
	d.printf("   nothing lost: dave's history holds all %d lines, decrypted; %d of them were shown waiting first.\n", len(d.raced), waited)
	d.printf("   alice, bob and dave now all send with %s\n", key.Short())
	return nil
}

// ---- step 6 ----

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
	d.printf("   carol still cannot read anything sent after her removal; dave, reachable only through bob,\n")
	d.printf("   read everything sent since he joined, and healed the key in flight in at most %d ms.\n", worst.Milliseconds())
	d.printf("   every check passed in %.1f s.\n", time.Since(d.start).Seconds())
	return nil
}

// ---- helpers ----

func (d *demo) newMember(name string) (*member, error) {
	octx, cancel := context.WithTimeout(d.ctx, waitTimeout)
	defer cancel()
	gt := gate.New()
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

// stats reads every node's counters.
func (d *demo) stats() map[*member]node.Stats {
	out := make(map[*member]node.Stats, len(d.all))
	for _, m := range d.all {
		out[m] = m.node.Stats()
	}
	return out
}

// checkCutOff checks that dave is connected to neither alice nor carol.
func (d *demo) checkCutOff() error {
	for _, o := range []*member{d.alice, d.carol} {
		if d.connected(o, d.dave) {
			return fmt.Errorf("%s and dave are connected despite the connection gater", o.name)
		}
	}
	return nil
}

// memberList names the members in the order the node of on lists them,
// with their roles.
func (d *demo) memberList(on *member, want []*member) string {
	st := d.group(on).State()
	var ms []string
	for _, m := range want {
		role, _ := st.RoleOf(m.ID())
		ms = append(ms, fmt.Sprintf("%s (%s)", m.name, role))
	}
	return strings.Join(ms, ", ")
}

// shown is how one node showed one message: waiting for its key first (or
// not), then decrypted.
type shown struct{ waiting, decrypted *node.Event }

// view returns how r's node showed the messages sent, in the order it
// showed them: at most one waiting and one decrypted event per message. It
// checks that every message was shown decrypted, that one shown waiting
// carried no text and was shown decrypted later by an EventMessageDecrypted.
func (d *demo) view(r *member, sent []*node.Message) ([]node.Event, map[string]*shown, error) {
	views := make(map[string]*shown, len(sent))
	for _, m := range sent {
		views[m.ID()] = &shown{}
	}
	var order []node.Event
	for _, e := range r.rec.snapshot() {
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
				return nil, nil, fmt.Errorf("a message waiting for its key carries text on %s's node", r.name)
			}
			v.waiting = &e
		case e.Message.Status == node.StatusOK && v.decrypted == nil:
			v.decrypted = &e
		default:
			continue
		}
		order = append(order, e)
	}
	for _, m := range sent {
		v := views[m.ID()]
		switch {
		case v.decrypted == nil || v.decrypted.Message.Text != m.Text:
			return nil, nil, fmt.Errorf("%s's node never showed %q decrypted", r.name, m.Text)
		case v.waiting != nil && (v.decrypted.Kind != node.EventMessageDecrypted || v.decrypted.Seq < v.waiting.Seq):
			return nil, nil, fmt.Errorf("%q, shown waiting on %s's node, was not later shown decrypted", m.Text, r.name)
		}
	}
	return order, views, nil
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
