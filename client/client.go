// Package client is the typed client of the p2pchat daemon's local API
// (docs/api.md). The CLI and the chat screen use it; so can other programs.
//
// It must never send the API token anywhere but the address the daemon
// wrote into its home directory, and never log it.
package client

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Files in the daemon's home directory that tell clients where it listens.
const (
	APIFile   = "api"       // the API address actually bound, host:port
	TokenFile = "api.token" // the bearer token, mode 0600
)

// ErrDaemonNotRunning means no daemon answers for the home directory.
var ErrDaemonNotRunning = errors.New("daemon not running")

// Error is an error the daemon answered with.
type Error struct {
	Status  int    // HTTP status code
	Message string // one line, lowercase, from the daemon
}

func (e *Error) Error() string { return e.Message }

// Identity is a node's peer ID and dialable addresses.
type Identity struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

// Peer is a connected peer.
type Peer struct {
	PeerID string   `json:"peer_id"`
	Addrs  []string `json:"addrs"`
}

// Member is one member of a group.
type Member struct {
	PeerID string `json:"peer_id"`
	Role   string `json:"role"` // "admin" or "member"
}

// Group describes a joined group.
type Group struct {
	GroupID string   `json:"group_id"`
	Name    string   `json:"name"`
	Members []Member `json:"members"`
	KeyID   string   `json:"key_id"`         // the key this node now sends with; empty if none yet
	Left    bool     `json:"left,omitempty"` // this node left or was removed
}

// Message is one chat message.
type Message struct {
	ID     string `json:"id"`
	Sender string `json:"sender"`
	SentAt string `json:"sent_at"` // RFC 3339; empty while waiting for the key
	Text   string `json:"text"`    // empty while waiting for the key
	Status string `json:"status"`  // "ok" or "waiting_for_key"
}

// Event is one event of the daemon's node. IDs increase by one; a jump
// means the client missed events and should re-read what it shows.
type Event struct {
	ID      uint64   `json:"id"`
	Kind    string   `json:"kind"` // message, message_decrypted, roster, key_rotated, group_joined, group_left
	GroupID string   `json:"group_id,omitempty"`
	Message *Message `json:"message,omitempty"`
	Members []Member `json:"members,omitempty"`
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
	KeyID   string   `json:"key_id,omitempty"`
	Time    string   `json:"time"`
}

// Client talks to one daemon.
type Client struct {
	base  string
	token string
	http  *http.Client
}

// New returns a client for the daemon whose home directory is home.
func New(home string) (*Client, error) {
	addr, err := os.ReadFile(filepath.Join(home, APIFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w (no %s in %s; start it with 'p2pchat daemon')", ErrDaemonNotRunning, APIFile, home)
	}
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(filepath.Join(home, TokenFile))
	if err != nil {
		return nil, fmt.Errorf("read api token: %w", err)
	}
	return NewWithToken(strings.TrimSpace(string(addr)), strings.TrimSpace(string(token))), nil
}

// NewWithToken returns a client for the daemon at addr (host:port).
func NewWithToken(addr, token string) *Client {
	return &Client{base: "http://" + addr, token: token, http: &http.Client{}}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return wrapDialError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("bad answer from daemon: %w", err)
	}
	return nil
}

func wrapDialError(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && (errors.Is(err, syscall.ECONNREFUSED) || op.Op == "dial") {
		return fmt.Errorf("%w (start it with 'p2pchat daemon')", ErrDaemonNotRunning)
	}
	return err
}

func decodeError(resp *http.Response) error {
	var e struct {
		Error string `json:"error"`
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(b, &e) != nil || e.Error == "" {
		e.Error = strings.ToLower(http.StatusText(resp.StatusCode))
	}
	return &Error{Status: resp.StatusCode, Message: e.Error}
}

// ID returns the daemon's identity.
func (c *Client) ID(ctx context.Context) (*Identity, error) {
	var out Identity
	return &out, c.do(ctx, http.MethodGet, "/v1/id", nil, &out)
}

// Connect dials a peer by multiaddr (with /p2p/ID).
func (c *Client) Connect(ctx context.Context, addr string) error {
	return c.do(ctx, http.MethodPost, "/v1/connect", map[string]string{"addr": addr}, nil)
}

// Peers lists connected peers.
func (c *Client) Peers(ctx context.Context) ([]Peer, error) {
	var out []Peer
	return out, c.do(ctx, http.MethodGet, "/v1/peers", nil, &out)
}

// CreateGroup founds a group and returns its ID.
func (c *Client) CreateGroup(ctx context.Context, name string) (string, error) {
	var out struct {
		GroupID string `json:"group_id"`
	}
	return out.GroupID, c.do(ctx, http.MethodPost, "/v1/groups", map[string]string{"name": name}, &out)
}

// Groups lists joined groups.
func (c *Client) Groups(ctx context.Context) ([]Group, error) {
	var out []Group
	return out, c.do(ctx, http.MethodGet, "/v1/groups", nil, &out)
}

// Group describes one group, named by ID or unambiguous name.
func (c *Client) Group(ctx context.Context, group string) (*Group, error) {
	var out Group
	return &out, c.do(ctx, http.MethodGet, "/v1/groups/"+url.PathEscape(group), nil, &out)
}

// Invite adds peerID to the group and returns the invite code.
func (c *Client) Invite(ctx context.Context, group, peerID string) (string, error) {
	var out struct {
		Invite string `json:"invite"`
	}
	return out.Invite, c.do(ctx, http.MethodPost, "/v1/groups/"+url.PathEscape(group)+"/invite", map[string]string{"peer_id": peerID}, &out)
}

// Join joins the group an invite code names.
func (c *Client) Join(ctx context.Context, code string) (*Group, error) {
	var out Group
	return &out, c.do(ctx, http.MethodPost, "/v1/join", map[string]string{"invite": code}, &out)
}

// Remove removes a member (admins only).
func (c *Client) Remove(ctx context.Context, group, peerID string) error {
	return c.do(ctx, http.MethodPost, "/v1/groups/"+url.PathEscape(group)+"/remove", map[string]string{"peer_id": peerID}, nil)
}

// Leave leaves a group.
func (c *Client) Leave(ctx context.Context, group string) error {
	return c.do(ctx, http.MethodPost, "/v1/groups/"+url.PathEscape(group)+"/leave", nil, nil)
}

// Send sends a message.
func (c *Client) Send(ctx context.Context, group, text string) (*Message, error) {
	var out Message
	return &out, c.do(ctx, http.MethodPost, "/v1/groups/"+url.PathEscape(group)+"/messages", map[string]string{"text": text}, &out)
}

// Messages returns a group's history, oldest first.
func (c *Client) Messages(ctx context.Context, group string) ([]Message, error) {
	var out struct {
		Messages []Message `json:"messages"`
	}
	return out.Messages, c.do(ctx, http.MethodGet, "/v1/groups/"+url.PathEscape(group)+"/messages", nil, &out)
}

// EventStream reads the daemon's event stream.
type EventStream struct {
	body io.ReadCloser
	sc   *bufio.Scanner
}

// Events opens the event stream, starting after event ID after (0: only new
// events). The daemon replays the recent events it still holds.
func (c *Client) Events(ctx context.Context, after uint64) (*EventStream, error) {
	path := "/v1/events" // without ?after the daemon starts with the next event
	if after > 0 {
		path += "?after=" + strconv.FormatUint(after, 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, wrapDialError(err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &EventStream{body: resp.Body, sc: sc}, nil
}

// Next returns the next event; io.EOF when the daemon ends the stream.
func (s *EventStream) Next() (*Event, error) {
	for s.sc.Scan() {
		line := bytes.TrimSpace(s.sc.Bytes())
		if len(line) == 0 {
			continue // keepalive
		}
		var e Event
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("bad event from daemon: %w", err)
		}
		return &e, nil
	}
	if err := s.sc.Err(); err != nil {
		return nil, err
	}
	return nil, io.EOF
}

// Close ends the stream.
func (s *EventStream) Close() error { return s.body.Close() }
