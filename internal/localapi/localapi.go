// Package localapi is the daemon's HTTP+JSON API on loopback: a thin layer
// over node/ that the CLI and chat screen reach through package client.
// docs/api.md documents it.
//
// Every request must carry the token (compared in constant time); errors map
// to status codes in one place (statusOf). It must never log message text,
// keys or the token.
package localapi

import (
	"context"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/p2pchat/p2pchat/client"
	"github.com/p2pchat/p2pchat/node"
	"github.com/p2pchat/p2pchat/roster"
)

// Errors the API answers with besides node's.
var (
	errBadRequest    = errors.New("bad request")
	errAmbiguous     = errors.New("ambiguous group name")
	errUnauthorized  = errors.New("missing or wrong api token")
	errNotFound      = errors.New("no such endpoint")
	errMethodNotAllo = errors.New("method not allowed")
)

// inputError is a bad-request error whose message stands on its own.
type inputError struct{ msg string }

func (e *inputError) Error() string        { return e.msg }
func (e *inputError) Is(target error) bool { return target == errBadRequest }

func badInput(format string, args ...any) error {
	return &inputError{msg: fmt.Sprintf(format, args...)}
}

// maxBody bounds a request body.
const maxBody = 64 << 10

// replayEvents is how many recent events the server keeps for clients that
// reconnect with ?after=N.
const replayEvents = 4096

// Server serves the local API for one node.
type Server struct {
	n     *node.Node
	token string
	log   *slog.Logger
	mux   *http.ServeMux

	sub  *node.Subscription
	done chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	recent  []client.Event // ring of the last replayEvents events
	waiters map[chan struct{}]struct{}
	closed  bool
}

// New returns a server for n that requires token on every request. It
// subscribes to n's events at once; Close stops it.
func New(n *node.Node, token string, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{n: n, token: token, log: log, mux: http.NewServeMux(), sub: n.Subscribe(),
		done: make(chan struct{}), waiters: make(map[chan struct{}]struct{})}
	s.routes()
	s.wg.Add(1)
	go s.collect()
	return s
}

// Close stops the event collector and ends every event stream.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.done)
	s.mu.Unlock()
	s.sub.Close()
	s.wg.Wait()
}

func (s *Server) routes() {
	h := func(pattern string, fn func(r *http.Request) (any, error)) {
		s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			v, err := fn(r)
			if err != nil {
				writeError(w, err)
				return
			}
			writeJSON(w, http.StatusOK, v)
		})
	}
	h("GET /v1/id", s.id)
	h("POST /v1/connect", s.connect)
	h("GET /v1/peers", s.peers)
	h("GET /v1/groups", s.groups)
	h("POST /v1/groups", s.createGroup)
	h("GET /v1/groups/{group}", s.group)
	h("POST /v1/groups/{group}/invite", s.invite)
	h("POST /v1/join", s.join)
	h("POST /v1/groups/{group}/remove", s.remove)
	h("POST /v1/groups/{group}/leave", s.leave)
	h("POST /v1/groups/{group}/messages", s.send)
	h("GET /v1/groups/{group}/messages", s.messages)
	s.mux.HandleFunc("GET /v1/events", s.events)
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { writeError(w, errNotFound) })
}

// ServeHTTP checks the token, then routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.token)) != 1 {
		writeError(w, errUnauthorized)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	s.mux.ServeHTTP(w, r)
}

// statusOf maps an error to its HTTP status: the one place that does.
func statusOf(err error) int {
	var mbe *http.MaxBytesError
	switch {
	case errors.Is(err, errUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, errNotFound), errors.Is(err, node.ErrUnknownGroup):
		return http.StatusNotFound
	case errors.Is(err, errMethodNotAllo):
		return http.StatusMethodNotAllowed
	case errors.Is(err, node.ErrNotMember), errors.Is(err, node.ErrNotAdmin):
		return http.StatusForbidden
	case errors.Is(err, node.ErrAlreadyMember), errors.Is(err, errAmbiguous):
		return http.StatusConflict
	case errors.As(err, &mbe), errors.Is(err, node.ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errBadRequest), errors.Is(err, node.ErrBadInvite):
		return http.StatusBadRequest
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	case errors.Is(err, node.ErrClosed):
		return http.StatusServiceUnavailable // the daemon is stopping
	case errors.Is(err, node.ErrDiskFull):
		return http.StatusInsufficientStorage
	}
	return http.StatusInternalServerError
}

func writeError(w http.ResponseWriter, err error) {
	writeJSON(w, statusOf(err), map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func decode(r *http.Request, into any) error {
	if err := json.NewDecoder(r.Body).Decode(into); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return fmt.Errorf("%w: request body over %d bytes", node.ErrTooLarge, maxBody)
		}
		if errors.Is(err, io.EOF) {
			return badInput("empty request body")
		}
		return badInput("malformed request body: %v", err)
	}
	return nil
}

// requestTimeout bounds operations that touch the network.
const requestTimeout = 30 * time.Second

func (s *Server) id(r *http.Request) (any, error) {
	return identity(s.n), nil
}

func identity(n *node.Node) client.Identity {
	id := client.Identity{PeerID: n.ID().String(), Addrs: []string{}}
	for _, a := range n.Host().Addrs() {
		id.Addrs = append(id.Addrs, a.String()+"/p2p/"+n.ID().String())
	}
	return id
}

func (s *Server) connect(r *http.Request) (any, error) {
	var in struct {
		Addr string `json:"addr"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	m, err := ma.NewMultiaddr(strings.TrimSpace(in.Addr))
	if err != nil {
		return nil, badInput("malformed multiaddr %q", in.Addr)
	}
	ai, err := peer.AddrInfoFromP2pAddr(m)
	if err != nil {
		return nil, badInput("multiaddr %q has no /p2p/ peer id", in.Addr)
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if err := s.n.Connect(ctx, *ai); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", ai.ID.ShortString(), err)
	}
	return struct{}{}, nil
}

func (s *Server) peers(r *http.Request) (any, error) {
	out := []client.Peer{}
	h := s.n.Host()
	for _, p := range h.Network().Peers() {
		cp := client.Peer{PeerID: p.String(), Addrs: []string{}}
		for _, c := range h.Network().ConnsToPeer(p) {
			cp.Addrs = append(cp.Addrs, c.RemoteMultiaddr().String())
		}
		out = append(out, cp)
	}
	return out, nil
}

func (s *Server) createGroup(r *http.Request) (any, error) {
	var in struct {
		Name string `json:"name"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	name := strings.TrimSpace(in.Name)
	if name == "" {
		return nil, badInput("group name is empty")
	}
	if len(name) > roster.MaxNameLen {
		return nil, badInput("group name over %d bytes", roster.MaxNameLen)
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	g, err := s.n.CreateGroup(ctx, name)
	if err != nil {
		return nil, err
	}
	return map[string]string{"group_id": g.ID().String()}, nil
}

// lookup resolves a group ID (hex) or an unambiguous group name.
func (s *Server) lookup(ref string) (*node.Group, error) {
	ref = strings.TrimSpace(ref)
	if b, err := hex.DecodeString(ref); err == nil && len(b) == 32 {
		if g, ok := s.n.Group(roster.GroupID(b)); ok {
			return g, nil
		}
		return nil, fmt.Errorf("%w %s", node.ErrUnknownGroup, ref)
	}
	var found []*node.Group
	for _, g := range s.n.Groups() {
		if g.Name() == ref {
			found = append(found, g)
		}
	}
	switch len(found) {
	case 0:
		return nil, fmt.Errorf("%w %q", node.ErrUnknownGroup, ref)
	case 1:
		return found[0], nil
	}
	return nil, fmt.Errorf("%w %q: %d groups have it; use the group id", errAmbiguous, ref, len(found))
}

func groupInfo(g *node.Group) client.Group {
	out := client.Group{GroupID: g.ID().String(), Name: g.Name(), Members: []client.Member{}, Left: !g.IsMember(g.Node().ID())}
	for _, m := range g.Members() {
		out.Members = append(out.Members, client.Member{PeerID: m.ID.String(), Role: m.Role.String()})
	}
	if k := g.SendingKeyID(); !k.IsZero() {
		out.KeyID = k.String()
	}
	return out
}

func (s *Server) groups(r *http.Request) (any, error) {
	out := []client.Group{}
	for _, g := range s.n.Groups() {
		out = append(out, groupInfo(g))
	}
	return out, nil
}

func (s *Server) group(r *http.Request) (any, error) {
	g, err := s.lookup(r.PathValue("group"))
	if err != nil {
		return nil, err
	}
	return groupInfo(g), nil
}

func parsePeer(s string) (peer.ID, error) {
	p, err := peer.Decode(strings.TrimSpace(s))
	if err != nil {
		return "", badInput("malformed peer id %q", s)
	}
	if pub, err := p.ExtractPublicKey(); err != nil || pub.Type() != crypto.Ed25519 {
		return "", badInput("peer id %q is not a p2pchat identity (Ed25519)", s)
	}
	return p, nil
}

// groupAndPeer resolves the {group} in the path and the peer_id in the body.
func (s *Server) groupAndPeer(r *http.Request) (*node.Group, peer.ID, error) {
	g, err := s.lookup(r.PathValue("group"))
	if err != nil {
		return nil, "", err
	}
	var in struct {
		PeerID string `json:"peer_id"`
	}
	if err := decode(r, &in); err != nil {
		return nil, "", err
	}
	p, err := parsePeer(in.PeerID)
	if err != nil {
		return nil, "", err
	}
	return g, p, nil
}

func (s *Server) invite(r *http.Request) (any, error) {
	g, p, err := s.groupAndPeer(r)
	if err != nil {
		return nil, err
	}
	if p == s.n.ID() {
		return nil, badInput("cannot invite yourself")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	inv, err := g.Invite(ctx, p)
	if err != nil {
		return nil, err
	}
	return map[string]string{"invite": inv.String()}, nil
}

func (s *Server) join(r *http.Request) (any, error) {
	var in struct {
		Invite string `json:"invite"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	inv, err := node.ParseInvite(in.Invite)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	g, err := s.n.Join(ctx, inv)
	if err != nil {
		return nil, err
	}
	return groupInfo(g), nil
}

func (s *Server) remove(r *http.Request) (any, error) {
	g, p, err := s.groupAndPeer(r)
	if err != nil {
		return nil, err
	}
	if p == s.n.ID() {
		return nil, badInput("cannot remove yourself; use 'p2pchat group leave'")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if err := g.Remove(ctx, p); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) leave(r *http.Request) (any, error) {
	g, err := s.lookup(r.PathValue("group"))
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if err := g.Leave(ctx); err != nil {
		return nil, err
	}
	return struct{}{}, nil
}

func (s *Server) send(r *http.Request) (any, error) {
	g, err := s.lookup(r.PathValue("group"))
	if err != nil {
		return nil, err
	}
	var in struct {
		Text string `json:"text"`
	}
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	if strings.TrimSpace(in.Text) == "" {
		return nil, badInput("message is empty")
	}
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	m, err := g.Send(ctx, in.Text)
	if err != nil {
		return nil, err
	}
	return messageJSON(m), nil
}

func (s *Server) messages(r *http.Request) (any, error) {
	g, err := s.lookup(r.PathValue("group"))
	if err != nil {
		return nil, err
	}
	hist, err := g.History()
	if err != nil {
		return nil, err
	}
	out := struct {
		Messages []client.Message `json:"messages"`
	}{Messages: []client.Message{}}
	for i := range hist {
		out.Messages = append(out.Messages, messageJSON(&hist[i]))
	}
	return out, nil
}

func messageJSON(m *node.Message) client.Message {
	out := client.Message{ID: m.ID(), Sender: m.Sender.String(), Status: m.Status.String()}
	if m.Status == node.StatusOK {
		out.Text = m.Text
		out.SentAt = m.SentAt.UTC().Format(time.RFC3339Nano)
	}
	return out
}

func eventJSON(e node.Event) client.Event {
	out := client.Event{ID: e.Seq, Kind: e.Kind.String(), Time: e.Time.UTC().Format(time.RFC3339Nano)}
	if e.Group != (roster.GroupID{}) {
		out.GroupID = e.Group.String()
	}
	if e.Message != nil {
		m := messageJSON(e.Message)
		out.Message = &m
	}
	for _, m := range e.Members {
		out.Members = append(out.Members, client.Member{PeerID: m.ID.String(), Role: m.Role.String()})
	}
	for _, p := range e.Added {
		out.Added = append(out.Added, p.String())
	}
	for _, p := range e.Removed {
		out.Removed = append(out.Removed, p.String())
	}
	if !e.KeyID.IsZero() {
		out.KeyID = e.KeyID.String()
	}
	return out
}

// collect keeps the recent events and wakes event streams.
func (s *Server) collect() {
	defer s.wg.Done()
	for e := range s.sub.C() {
		ev := eventJSON(e)
		s.mu.Lock()
		s.recent = append(s.recent, ev)
		if len(s.recent) > replayEvents {
			s.recent = s.recent[len(s.recent)-replayEvents:]
		}
		for w := range s.waiters {
			select {
			case w <- struct{}{}:
			default:
			}
		}
		s.mu.Unlock()
	}
}

// eventsAfter returns the kept events with ID > after.
func (s *Server) eventsAfter(after uint64) []client.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := len(s.recent)
	for i > 0 && s.recent[i-1].ID > after {
		i--
	}
	return append([]client.Event(nil), s.recent[i:]...)
}

// events streams events as JSON lines until the client goes away or the
// server closes. ?after=N replays kept events with larger IDs first; without
// it the stream starts with the next event.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	var after uint64
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, badInput("after=%q is not a number", v))
			return
		}
		after = n
	} else {
		s.mu.Lock()
		if len(s.recent) > 0 {
			after = s.recent[len(s.recent)-1].ID
		}
		s.mu.Unlock()
	}
	wake := make(chan struct{}, 1)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeError(w, errors.New("daemon is shutting down"))
		return
	}
	s.waiters[wake] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.waiters, wake)
		s.mu.Unlock()
	}()

	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	keepalive := time.NewTicker(15 * time.Second)
	defer keepalive.Stop()
	for {
		for _, e := range s.eventsAfter(after) {
			if err := enc.Encode(e); err != nil {
				return
			}
			after = e.ID
		}
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-wake:
		case <-keepalive.C:
			if _, err := w.Write([]byte("\n")); err != nil {
				return
			}
		case <-r.Context().Done():
			return
		case <-s.done:
			return
		}
	}
}
