package cli

import (
	"context"
	"fmt"
	"io"
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
	return runChatScreen(e, m, stream, cancel)
}

// runChatScreen runs the screen until the user quits, feeding it the
// stream's events. When it returns, the stream is closed and no goroutine
// it started is left running.
func runChatScreen(e *env, m *chatModel, stream eventSource, cancel context.CancelFunc) error {
	opts := []tea.ProgramOption{tea.WithInput(e.stdin), tea.WithOutput(e.stdout)}
	if isTerminal(e.stdout) {
		opts = append(opts, tea.WithAltScreen())
	}
	p := tea.NewProgram(m, opts...)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pumpEvents(stream, p.Send)
	}()

	_, err := p.Run()
	cancel()           // aborts the stream read and calls in flight
	m.tasks.wait()     // calls in flight have returned
	_ = stream.Close() // unblocks Next for streams that ignore ctx
	wg.Wait()
	if err != nil {
		return fmt.Errorf("chat screen: %w", err)
	}
	return nil
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
