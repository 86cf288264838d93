package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"

	"github.com/p2pchat/p2pchat/client"
)

// chatAPI is what the chat screen asks the daemon while it runs;
// *client.Client has it. Tests give the model a fake.
type chatAPI interface {
	Group(ctx context.Context, group string) (*client.Group, error)
	Messages(ctx context.Context, group string) ([]client.Message, error)
	Send(ctx context.Context, group, text string) (*client.Message, error)
}

// eventSource is an open event stream; *client.EventStream is one.
type eventSource interface {
	Next() (*client.Event, error)
	Close() error
}

// chatDialer connects to the daemon anew: it reads the API address and
// token from the home directory, as chat does when it starts (both change
// at every daemon start), and opens the event stream. The stream lives as
// long as ctx.
type chatDialer func(ctx context.Context) (chatAPI, eventSource, error)

// homeDialer is the chatDialer for the daemon whose home is home.
func homeDialer(home string) chatDialer {
	return func(ctx context.Context) (chatAPI, eventSource, error) {
		c, err := dial(home)
		if err != nil {
			return nil, nil, err
		}
		// Without after: the stream starts with the daemon's next event.
		// Event IDs restart with each daemon, so an ID from before would
		// be meaningless; what happened meanwhile is re-read instead.
		s, err := c.Events(ctx, 0)
		if err != nil {
			return nil, nil, err
		}
		return c, s, nil
	}
}

// runChat opens the interactive chat screen for one group. Everything that
// can fail before the screen opens (no daemon, unknown group) is returned
// as an error; after that, failures show inside the screen.
func runChat(e *env, args []string) error {
	f := newFlags(e, "chat", true)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: chat takes one GROUP", errUsage)
	}
	c, err := dial(*f.home)
	if err != nil {
		return err
	}
	// ctx lives as long as the screen: cancelling it ends the event
	// stream and any call still in flight.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	setup, cancelSetup := context.WithTimeout(ctx, apiTimeout)
	defer cancelSetup()

	// Open the stream before reading the group and its history so that
	// nothing falls between. Events the daemon replays from before this
	// moment are already reflected in what we read next.
	since := time.Now()
	stream, err := c.Events(ctx, 0)
	if err != nil {
		return err
	}
	closeStream := true
	defer func() {
		if closeStream {
			stream.Close()
		}
	}()
	g, err := c.Group(setup, pos[0])
	if err != nil {
		return err
	}
	self, err := c.ID(setup)
	if err != nil {
		return err
	}
	msgs, err := c.Messages(setup, g.GroupID)
	if err != nil {
		return err
	}
	cancelSetup()

	m := newChatModel(ctx, c, self.PeerID, g, msgs, newChatStyles(lipgloss.NewRenderer(e.stdout)))
	m.since = since
	closeStream = false
	return runChatScreen(e, m, stream, homeDialer(*f.home), cancel)
}

// Reconnecting waits reconnectMinWait before the first attempt and doubles
// the wait after each failed one, up to reconnectMaxWait.
const (
	reconnectMinWait = 100 * time.Millisecond
	reconnectMaxWait = 2 * time.Second
)

// runChatScreen runs the screen until the user quits, feeding it the
// stream's events and, when the stream ends, reconnecting with redial.
// When it returns, every stream is closed and no goroutine it started is
// left running.
func runChatScreen(e *env, m *chatModel, stream eventSource, redial chatDialer, cancel context.CancelFunc) error {
	opts := []tea.ProgramOption{tea.WithInput(e.stdin), tea.WithOutput(e.stdout)}
	if isTerminal(e.stdout) {
		opts = append(opts, tea.WithAltScreen())
	}
	p := tea.NewProgram(m, opts...)
	conn := &chatConn{
		ctx:     m.ctx,
		dial:    redial,
		group:   m.group.GroupID,
		send:    p.Send,
		minWait: reconnectMinWait,
		maxWait: reconnectMaxWait,
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		conn.run(stream)
	}()

	_, err := p.Run()
	cancel()       // aborts the stream read, a reconnect and calls in flight
	conn.stop()    // closes the open stream for streams that ignore ctx
	m.tasks.wait() // calls in flight have returned
	wg.Wait()
	if err != nil {
		return fmt.Errorf("chat screen: %w", err)
	}
	return nil
}

// chatConn keeps the screen connected to the daemon: it pumps the events
// of the open stream to the screen and, when the stream ends, reconnects
// with capped exponential backoff until it succeeds, the group turns out
// to be gone, or ctx ends. Its one goroutine is run's caller.
type chatConn struct {
	ctx              context.Context
	dial             chatDialer
	group            string // the group's ID
	send             func(tea.Msg)
	minWait, maxWait time.Duration

	mu     sync.Mutex
	cur    eventSource // the stream being read; nil between streams
	closed bool        // stop was called
}

// run reads stream, then each stream reconnecting opens, until there is
// none. It tells the screen when a stream ends (streamEndedMsg), when it
// reconnected (reconnectedMsg) and when it gave up (groupGoneMsg).
func (c *chatConn) run(stream eventSource) {
	wait := c.minWait
	for stream != nil {
		if !c.setCurrent(stream) {
			return
		}
		opened := time.Now()
		pumpEvents(stream, c.send)
		c.setCurrent(nil)
		_ = stream.Close()
		if c.dial == nil {
			return
		}
		// A stream that stayed up a while ends a run of failures; one
		// that ended at once does not reset the backoff, so a daemon
		// that keeps dropping streams is not hammered.
		if time.Since(opened) >= c.maxWait {
			wait = c.minWait
		}
		stream, wait = c.reconnect(wait)
	}
}

// reconnect retries until it has a stream into a daemon that has the
// group. It returns nil when ctx ends or the group is gone, and the wait
// to start from after the next failure.
func (c *chatConn) reconnect(wait time.Duration) (eventSource, time.Duration) {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return nil, wait
		case <-timer.C:
		}
		wait = min(2*wait, c.maxWait)
		since := time.Now()
		api, stream, err := c.dial(c.ctx)
		if err == nil {
			ctx, cancel := context.WithTimeout(c.ctx, apiTimeout)
			_, err = api.Group(ctx, c.group)
			cancel()
			if err == nil {
				c.send(reconnectedMsg{api: api, since: since})
				return stream, wait
			}
			_ = stream.Close()
			if isNotFound(err) && c.ctx.Err() == nil {
				c.send(groupGoneMsg{err: err})
				return nil, wait
			}
		}
		timer.Reset(wait)
	}
}

// setCurrent records the stream being read; after stop it closes s and
// reports false.
func (c *chatConn) setCurrent(s eventSource) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed && s != nil {
		_ = s.Close()
		return false
	}
	c.cur = s
	return true
}

// stop closes the stream being read and any opened later. Call it after
// cancelling ctx.
func (c *chatConn) stop() {
	c.mu.Lock()
	c.closed = true
	s := c.cur
	c.mu.Unlock()
	if s != nil {
		_ = s.Close()
	}
}

// isNotFound reports whether the daemon answered 404: for a group, that it
// has no such group.
func isNotFound(err error) bool {
	var ae *client.Error
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// pumpEvents sends each event of stream to the screen until the stream
// ends, then reports the end. send must not block once the screen quit
// (tea.Program.Send does not).
func pumpEvents(stream eventSource, send func(tea.Msg)) {
	for {
		ev, err := stream.Next()
		if err != nil {
			send(streamEndedMsg{err: err})
			return
		}
		send(eventMsg{ev: ev})
	}
}

// isTerminal reports whether w is a character device such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// chatTasks tracks the daemon calls the screen runs as tea commands so the
// screen can wait for them to return after it quits.
type chatTasks struct {
	mu     sync.Mutex
	n      int
	closed bool
	idle   sync.Cond
}

func newChatTasks() *chatTasks {
	t := &chatTasks{}
	t.idle.L = &t.mu
	return t
}

// cmd wraps fn as a tracked command; after wait it does nothing.
func (t *chatTasks) cmd(fn func() tea.Msg) tea.Cmd {
	return func() tea.Msg {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return nil
		}
		t.n++
		t.mu.Unlock()
		defer func() {
			t.mu.Lock()
			t.n--
			if t.n == 0 {
				t.idle.Broadcast()
			}
			t.mu.Unlock()
		}()
		return fn()
	}
}

// wait stops new commands from starting and waits for running ones.
func (t *chatTasks) wait() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	for t.n > 0 {
		t.idle.Wait()
	}
}
