package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/p2pchat/p2pchat/client"
)

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	return enc.Encode(v)
}

func runID(e *env, args []string) error {
	f := newFlags(e, "id", true)
	asJSON := f.Bool("json", false, "print JSON")
	c, _, err := f.dialWith(args, 0, "id takes no arguments")
	if err != nil {
		return err
	}
	ctx, cancel := commandContext(apiTimeout)
	defer cancel()
	id, err := c.ID(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e.stdout, id)
	}
	fmt.Fprintln(e.stdout, id.PeerID)
	for _, a := range id.Addrs {
		fmt.Fprintln(e.stdout, "  "+a)
	}
	return nil
}

func runConnect(e *env, args []string) error {
	f := newFlags(e, "connect", true)
	c, pos, err := f.dialWith(args, 1, "connect takes one MULTIADDR")
	if err != nil {
		return err
	}
	ctx, cancel := commandContext(apiTimeout)
	defer cancel()
	if err := c.Connect(ctx, pos[0]); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "connected")
	return nil
}

func runPeers(e *env, args []string) error {
	f := newFlags(e, "peers", true)
	asJSON := f.Bool("json", false, "print JSON")
	c, _, err := f.dialWith(args, 0, "peers takes no arguments")
	if err != nil {
		return err
	}
	ctx, cancel := commandContext(apiTimeout)
	defer cancel()
	peers, err := c.Peers(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(e.stdout, peers)
	}
	for _, p := range peers {
		fmt.Fprintf(e.stdout, "%s %s\n", p.PeerID, strings.Join(p.Addrs, " "))
	}
	return nil
}

func runGroup(e *env, args []string) error {
	if len(args) == 0 || args[0] == "help" {
		fmt.Fprint(e.stdout, `usage:
  p2pchat group create NAME [--json]         found a group; prints its id
  p2pchat group invite GROUP PEER_ID [--json] add a peer; prints the invite code it joins with
  p2pchat group join CODE                     join a group you were invited to
  p2pchat group remove GROUP PEER_ID          remove a member (admins); the key rotates
  p2pchat group leave GROUP                   leave a group
  p2pchat group list [--json]                 list your groups
  p2pchat group info GROUP [--json]           members, roles and the current key id
`)
		if len(args) == 0 {
			return fmt.Errorf("%w: group needs a subcommand", errUsage)
		}
		return nil
	}
	sub, args := args[0], args[1:]
	f := newFlags(e, "group "+sub, true)
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	want := map[string]int{"create": 1, "invite": 2, "join": 1, "remove": 2, "leave": 1, "list": 0, "info": 1}
	n, ok := want[sub]
	if !ok {
		return fmt.Errorf("%w: unknown group subcommand %q (see 'p2pchat group help')", errUsage, sub)
	}
	if sub == "create" && len(pos) > 1 {
		pos = []string{strings.Join(pos, " ")}
	}
	if len(pos) != n {
		return fmt.Errorf("%w: group %s takes %d argument(s), got %d", errUsage, sub, n, len(pos))
	}
	c, err := dial(*f.home)
	if err != nil {
		return err
	}
	ctx, cancel := commandContext(apiTimeout)
	defer cancel()
	switch sub {
	case "create":
		id, err := c.CreateGroup(ctx, pos[0])
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(e.stdout, map[string]string{"group_id": id})
		}
		fmt.Fprintln(e.stdout, id)
	case "invite":
		code, err := c.Invite(ctx, pos[0], pos[1])
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(e.stdout, map[string]string{"invite": code})
		}
		fmt.Fprintln(e.stdout, code)
	case "join":
		g, err := c.Join(ctx, pos[0])
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(e.stdout, g)
		}
		fmt.Fprintf(e.stdout, "joined %q (%s), %d members\n", g.Name, g.GroupID, len(g.Members))
	case "remove":
		if err := c.Remove(ctx, pos[0], pos[1]); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, "removed; the group key rotates")
	case "leave":
		if err := c.Leave(ctx, pos[0]); err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, "left")
	case "list":
		groups, err := c.Groups(ctx)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(e.stdout, groups)
		}
		tw := tabwriter.NewWriter(e.stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "GROUP ID\tNAME\tMEMBERS\tSTATUS")
		for _, g := range groups {
			status := "member"
			if g.Left {
				status = "left"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", g.GroupID, g.Name, len(g.Members), status)
		}
		return tw.Flush()
	case "info":
		g, err := c.Group(ctx, pos[0])
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(e.stdout, g)
		}
		fmt.Fprintf(e.stdout, "group   %s\nname    %s\nkey id  %s\nmembers\n", g.GroupID, g.Name, orNone(g.KeyID))
		for _, m := range g.Members {
			fmt.Fprintf(e.stdout, "  %s  %s\n", m.PeerID, m.Role)
		}
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "(none yet)"
	}
	return s
}

func runSend(e *env, args []string) error {
	f := newFlags(e, "send", true)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) < 2 {
		return fmt.Errorf("%w: send takes GROUP and TEXT", errUsage)
	}
	c, err := dial(*f.home)
	if err != nil {
		return err
	}
	ctx, cancel := commandContext(apiTimeout)
	defer cancel()
	_, err = c.Send(ctx, pos[0], strings.Join(pos[1:], " "))
	return err
}

func runMessages(e *env, args []string) error {
	f := newFlags(e, "messages", true)
	asJSON := f.Bool("json", false, "one JSON object per line")
	follow := f.Bool("follow", false, "keep printing new messages")
	c, pos, err := f.dialWith(args, 1, "messages takes one GROUP")
	if err != nil {
		return err
	}
	ctx, cancel := commandContext(0)
	defer cancel()
	g, err := c.Group(ctx, pos[0])
	if err != nil {
		return err
	}
	// Open the stream before reading history so nothing falls between.
	var stream *client.EventStream
	if *follow {
		if stream, err = c.Events(ctx, 0); err != nil {
			return err
		}
		defer stream.Close()
	}
	msgs, err := c.Messages(ctx, g.GroupID)
	if err != nil {
		return err
	}
	printed := make(map[string]string) // id -> status printed
	show := func(m *client.Message) error {
		if printed[m.ID] == m.Status {
			return nil
		}
		printed[m.ID] = m.Status
		if *asJSON {
			return printJSON(e.stdout, m)
		}
		fmt.Fprintln(e.stdout, formatMessage(m))
		return nil
	}
	for i := range msgs {
		if err := show(&msgs[i]); err != nil {
			return err
		}
	}
	if !*follow {
		return nil
	}
	for {
		ev, err := stream.Next()
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: a normal way to stop following
			}
			if errors.Is(err, io.EOF) {
				return errors.New("the daemon closed the event stream (it stopped)")
			}
			return fmt.Errorf("event stream: %w", err)
		}
		if ev.GroupID != g.GroupID || ev.Message == nil {
			continue
		}
		if err := show(ev.Message); err != nil {
			return err
		}
	}
}

// formatMessage renders a message for a terminal.
func formatMessage(m *client.Message) string {
	sender := shortID(m.Sender)
	if m.Status != "ok" {
		return fmt.Sprintf("%-8s %s: (waiting for key)", "", sender)
	}
	ts := m.SentAt
	if t, err := time.Parse(time.RFC3339Nano, m.SentAt); err == nil {
		ts = t.Local().Format("15:04:05")
	}
	return fmt.Sprintf("%-8s %s: %s", ts, sender, m.Text)
}

// shortID abbreviates a peer ID for display.
func shortID(id string) string {
	if len(id) <= 12 {
		return id
	}
	return id[:6] + "…" + id[len(id)-6:]
}
