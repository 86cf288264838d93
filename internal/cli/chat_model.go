package cli

import (
	"context"
	"slices"
	"strings"
	"time"

	"github.com/charmbracelet/bubbles/cursor"
	"github.com/charmbracelet/bubbles/textinput"
	"github.com/charmbracelet/bubbles/viewport"
	tea "github.com/charmbracelet/bubbletea"

	"github.com/p2pchat/p2pchat/client"
)

// Messages the chat screen receives besides keys and window sizes.
type (
	// eventMsg is one event from the daemon's stream.
	eventMsg struct{ ev *client.Event }
	// streamEndedMsg: the event stream ended (daemon stopped, or quitting).
	streamEndedMsg struct{ err error }
	// reconnectedMsg: a new stream is open to a daemon that has the group;
	// api talks to that daemon. Its events follow this message.
	reconnectedMsg struct {
		api   chatAPI
		since time.Time // when the new stream was asked for
	}
	// groupGoneMsg: the daemon reconnected to has no such group any more;
	// reconnecting stopped.
	groupGoneMsg struct{ err error }
	// historyMsg is the answer to a re-read of the group and its history.
	historyMsg struct {
		group *client.Group
		msgs  []client.Message
		gen   uint64 // chatModel.gen when the re-read was asked for
		conn  uint64 // chatModel.conn when the re-read was asked for
		quiet bool   // a re-read after reconnecting: "reconnected" said it
		err   error
	}
	// sentMsg is the answer to sending text.
	sentMsg struct {
		text string
		msg  *client.Message
		err  error
	}
)

// Message statuses the daemon reports.
const statusOK = "ok"

// chatEntry is one item of the screen: a message or a system line.
type chatEntry struct {
	msg *client.Message // nil for a system line

	sys     string    // system line text
	sysTime time.Time // when the system line happened
	isErr   bool      // the system line reports a failure

	rendered string // cached rendering at renderedW; "" when stale
}

// chatModel is the chat screen. It renders from its own state, so tests
// can drive it with Update and read View without a terminal or daemon.
type chatModel struct {
	ctx   context.Context // the screen's lifetime
	api   chatAPI
	tasks *chatTasks
	st    chatStyles

	self  string       // this node's peer ID
	group client.Group // header state: name, members, key, left
	since time.Time    // events from before this are replays of the past

	entries []chatEntry
	index   map[string]int // message id -> index in entries

	// lastEvent is the ID of the last event seen on the current stream,
	// 0 before its first. IDs restart with each daemon, so it restarts
	// with each stream; messages are told apart by their IDs instead.
	lastEvent    uint64
	gen          uint64 // bumped when an event changes group state
	conn         uint64 // bumped at each reconnect
	refetching   bool   // a re-read is in flight
	refetchAgain bool   // another re-read is wanted when it answers
	againLoud    bool   // that one is for missed events, not a reconnect
	connLost     bool   // the stream ended; reconnecting
	gone         bool   // the daemon no longer has the group; not reconnecting

	vp        viewport.Model
	input     textinput.Model
	width     int
	height    int
	renderedW int // width the cached entry renderings are for
}

const (
	defaultChatWidth  = 80
	defaultChatHeight = 24
	chatChrome        = 3 // header, rule and input lines
)

func newChatModel(ctx context.Context, api chatAPI, self string, g *client.Group, history []client.Message, st chatStyles) *chatModel {
	m := &chatModel{
		ctx:   ctx,
		api:   api,
		tasks: newChatTasks(),
		st:    st,
		self:  self,
		group: *g,
		index: make(map[string]int),
	}
	m.group.Members = slices.Clone(g.Members)
	m.input = textinput.New()
	m.input.Prompt = "> "
	m.input.Placeholder = "Message " + sanitizeLine(g.Name) + " (Enter sends, Esc quits, PgUp/PgDn scroll)"
	// A steady cursor: a blinking one redraws the screen twice a second
	// and leaves a timer goroutine behind for a moment after quitting.
	m.input.Cursor.SetMode(cursor.CursorStatic)
	m.input.Focus()
	m.vp = viewport.New(defaultChatWidth, defaultChatHeight-chatChrome)
	for _, msg := range history {
		m.upsert(msg)
	}
	m.resize(defaultChatWidth, defaultChatHeight)
	m.vp.GotoBottom()
	return m
}

// Init has nothing to start: events arrive through tea.Program.Send.
func (m *chatModel) Init() tea.Cmd { return nil }

// Update handles one message.
func (m *chatModel) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.WindowSizeMsg:
		m.resize(msg.Width, msg.Height)
		return m, nil
	case tea.KeyMsg:
		switch msg.Type {
		case tea.KeyCtrlC, tea.KeyEsc:
			return m, tea.Quit
		case tea.KeyEnter:
			return m, m.submit()
		case tea.KeyPgUp:
			m.vp.PageUp()
			return m, nil
		case tea.KeyPgDown:
			m.vp.PageDown()
			return m, nil
		case tea.KeyUp, tea.KeyShiftUp:
			m.vp.ScrollUp(1)
			return m, nil
		case tea.KeyDown, tea.KeyShiftDown:
			m.vp.ScrollDown(1)
			return m, nil
		case tea.KeyCtrlHome:
			m.vp.GotoTop()
			return m, nil
		case tea.KeyCtrlEnd:
			m.vp.GotoBottom()
			return m, nil
		}
	case eventMsg:
		return m, m.applyEvent(msg.ev)
	case streamEndedMsg:
		m.streamEnded()
		return m, nil
	case reconnectedMsg:
		return m, m.reconnected(msg)
	case groupGoneMsg:
		m.groupGone(msg.err)
		return m, nil
	case historyMsg:
		return m, m.applyHistory(msg)
	case sentMsg:
		m.sent(msg)
		return m, nil
	}
	var cmd tea.Cmd
	m.input, cmd = m.input.Update(msg)
	return m, cmd
}

// View renders the screen.
func (m *chatModel) View() string {
	return m.headerView() + "\n" + m.vp.View() + "\n" + m.st.rule.Render(strings.Repeat("─", max(m.width, 1))) + "\n" + m.input.View()
}

func (m *chatModel) resize(w, h int) {
	follow := m.vp.AtBottom()
	m.width, m.height = max(w, 1), max(h, chatChrome+1)
	m.vp.Width = m.width
	m.vp.Height = m.height - chatChrome
	m.input.Width = max(m.width-len(m.input.Prompt)-1, 1)
	m.refresh(follow)
}

// submit sends what was typed; the input clears at once and gets the text
// back if sending fails. Without a daemon to send to, the text stays.
func (m *chatModel) submit() tea.Cmd {
	text := strings.TrimSpace(m.input.Value())
	if text == "" {
		m.input.Reset()
		return nil
	}
	if m.gone || m.connLost {
		why := "not sent: no connection to the daemon; reconnecting… (your text is kept)"
		if m.gone {
			why = "not sent: the daemon no longer has this group"
		}
		m.addSystem(why, time.Now(), true)
		m.refresh(true)
		return nil
	}
	m.input.Reset()
	m.vp.GotoBottom()
	api, ctx, gid := m.api, m.ctx, m.group.GroupID
	return m.tasks.cmd(func() tea.Msg {
		ctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		msg, err := api.Send(ctx, gid, text)
		return sentMsg{text: text, msg: msg, err: err}
	})
}

func (m *chatModel) sent(s sentMsg) {
	if s.err != nil {
		if m.ctx.Err() != nil {
			return // quitting
		}
		m.addSystem("not sent: "+oneLine(s.err), time.Now(), true)
		// Give the text back, before anything typed since.
		v := s.text
		if cur := m.input.Value(); cur != "" {
			v += " " + cur
		}
		m.input.SetValue(v)
		m.input.CursorEnd()
		m.refresh(false)
		return
	}
	if s.msg != nil && s.msg.ID != "" {
		m.upsert(*s.msg)
	}
	m.refresh(true)
}

// applyEvent applies one event from the stream and returns the command to
// re-read history when the event IDs show a gap.
func (m *chatModel) applyEvent(ev *client.Event) tea.Cmd {
	if ev == nil {
		return nil
	}
	var cmd tea.Cmd
	if m.lastEvent != 0 && ev.ID != m.lastEvent+1 {
		cmd = m.requestRefetch(false)
	}
	m.lastEvent = ev.ID
	if ev.GroupID != m.group.GroupID {
		return cmd
	}
	at := parseTime(ev.Time)
	// The daemon may replay events from before the screen opened; what
	// they say is already in the group and history read after them.
	replay := !m.since.IsZero() && !at.IsZero() && at.Before(m.since)
	switch ev.Kind {
	case "message", "message_decrypted":
		if ev.Message != nil {
			m.upsert(*ev.Message)
		}
	case "roster":
		if replay {
			break
		}
		m.gen++
		m.group.Members = slices.Clone(ev.Members)
		for _, p := range ev.Added {
			if p == m.self {
				m.addSystem("+ you joined", at, false)
				m.group.Left = false
			} else {
				m.addSystem("+ "+shortID(p)+" joined", at, false)
			}
		}
		for _, p := range ev.Removed {
			if p == m.self {
				m.markLeft(at)
			} else {
				m.addSystem("- "+shortID(p)+" left or was removed", at, false)
			}
		}
	case "key_rotated":
		if replay || ev.KeyID == "" {
			break
		}
		m.gen++
		if ev.KeyID != m.group.KeyID {
			m.group.KeyID = ev.KeyID
			m.addSystem("key rotated → "+shortKey(ev.KeyID), at, false)
		}
	case "group_joined":
		if replay {
			break
		}
		m.gen++
		if len(ev.Members) > 0 {
			m.group.Members = slices.Clone(ev.Members)
		}
		if m.group.Left {
			m.group.Left = false
			m.addSystem("you are a member again", at, false)
		}
	case "group_left":
		if replay {
			break
		}
		m.gen++
		m.markLeft(at)
	}
	m.refresh(false)
	return cmd
}

// markLeft notes that this node is no longer a member, once.
func (m *chatModel) markLeft(at time.Time) {
	if m.group.Left {
		return
	}
	m.group.Left = true
	m.addSystem("you are no longer a member; history stays readable", at, false)
}

// streamEnded notes that the event stream ended; chatConn reconnects.
// It says so once per outage, however many attempts it takes.
func (m *chatModel) streamEnded() {
	if m.ctx.Err() != nil || m.connLost || m.gone {
		return // quitting, or already said
	}
	m.connLost = true
	m.addSystem("daemon connection lost — reconnecting…", time.Now(), true)
	m.refresh(false)
}

// reconnected switches to the daemon reconnected to and re-reads the
// group and its history: messages that arrived meanwhile appear, those
// already shown are merged by ID.
func (m *chatModel) reconnected(r reconnectedMsg) tea.Cmd {
	if m.ctx.Err() != nil || m.gone {
		return nil
	}
	m.api = r.api
	m.since = r.since
	// The new stream's IDs start again (from 1 if the daemon restarted):
	// its first event is no gap, and none of it is a repeat by ID.
	m.lastEvent = 0
	// Re-reads still in flight went to the old connection; forget them.
	m.conn++
	m.refetching, m.refetchAgain, m.againLoud = false, false, false
	if m.connLost {
		m.connLost = false
		m.addSystem("reconnected", time.Now(), false)
		m.refresh(false)
	}
	return m.requestRefetch(true)
}

// groupGone notes that the daemon no longer has the group, once.
func (m *chatModel) groupGone(err error) {
	if m.ctx.Err() != nil || m.gone {
		return
	}
	m.gone = true
	m.connLost = false
	line := "the daemon no longer has this group; not reconnecting (Esc quits)"
	if err != nil {
		line += ": " + oneLine(err)
	}
	m.addSystem(line, time.Now(), true)
	m.refresh(false)
}

// requestRefetch asks for the group and its history to be read again;
// quiet when reconnecting, which the screen already said.
func (m *chatModel) requestRefetch(quiet bool) tea.Cmd {
	if m.refetching {
		m.refetchAgain = true
		m.againLoud = m.againLoud || !quiet
		return nil
	}
	m.refetching = true
	api, ctx, gid, gen, conn := m.api, m.ctx, m.group.GroupID, m.gen, m.conn
	return m.tasks.cmd(func() tea.Msg {
		ctx, cancel := context.WithTimeout(ctx, apiTimeout)
		defer cancel()
		g, err := api.Group(ctx, gid)
		if err != nil {
			return historyMsg{err: err, gen: gen, conn: conn, quiet: quiet}
		}
		msgs, err := api.Messages(ctx, gid)
		return historyMsg{group: g, msgs: msgs, gen: gen, conn: conn, quiet: quiet, err: err}
	})
}

// applyHistory merges a re-read group and history into the screen.
func (m *chatModel) applyHistory(h historyMsg) tea.Cmd {
	if h.conn != m.conn {
		return nil // asked of a connection since replaced
	}
	m.refetching = false
	if h.err != nil {
		m.refetchAgain, m.againLoud = false, false
		switch {
		case m.ctx.Err() != nil, m.gone:
		case m.connLost:
			// The daemon went away meanwhile; reconnecting re-reads.
		case isNotFound(h.err):
			m.groupGone(h.err)
		case h.quiet:
			m.addSystem("history could not be re-read after reconnecting: "+oneLine(h.err), time.Now(), true)
			m.refresh(false)
		default:
			m.addSystem("some events were missed and history could not be re-read: "+oneLine(h.err), time.Now(), true)
			m.refresh(false)
		}
		return nil
	}
	now := time.Now()
	if h.group != nil && h.gen == m.gen {
		m.applyGroup(h.group, now)
	} else if h.group != nil {
		// Group events arrived while reading: what was read may be older
		// than what they said. Read again.
		m.refetchAgain = true
		m.againLoud = m.againLoud || !h.quiet
	}
	m.mergeHistory(h.msgs)
	if !h.quiet {
		m.addSystem("some events were missed; history re-read", now, false)
	}
	m.refresh(false)
	if m.refetchAgain {
		quiet := !m.againLoud
		m.refetchAgain, m.againLoud = false, false
		return m.requestRefetch(quiet)
	}
	return nil
}

// applyGroup takes a re-read group's state, telling what changed.
func (m *chatModel) applyGroup(g *client.Group, at time.Time) {
	had := make(map[string]bool, len(m.group.Members))
	for _, mb := range m.group.Members {
		had[mb.PeerID] = true
	}
	has := make(map[string]bool, len(g.Members))
	for _, mb := range g.Members {
		has[mb.PeerID] = true
		if !had[mb.PeerID] && mb.PeerID != m.self {
			m.addSystem("+ "+shortID(mb.PeerID)+" joined", at, false)
		}
	}
	for _, mb := range m.group.Members {
		if !has[mb.PeerID] && mb.PeerID != m.self {
			m.addSystem("- "+shortID(mb.PeerID)+" left or was removed", at, false)
		}
	}
	if g.KeyID != "" && g.KeyID != m.group.KeyID {
		m.addSystem("key rotated → "+shortKey(g.KeyID), at, false)
	}
	wasLeft := m.group.Left
	m.group.Members = slices.Clone(g.Members)
	m.group.KeyID = g.KeyID
	m.group.Name = g.Name
	m.group.Left = wasLeft
	switch {
	case g.Left:
		m.markLeft(at)
	case wasLeft:
		m.group.Left = false
		m.addSystem("you are a member again", at, false)
	}
}

// mergeHistory makes the daemon's history the order of messages, keeping
// system lines after the message they followed and messages the history
// did not have yet at the end.
func (m *chatModel) mergeHistory(hist []client.Message) {
	inHist := make(map[string]bool, len(hist))
	for _, h := range hist {
		inHist[h.ID] = true
	}
	after := make(map[string][]chatEntry) // message id ("" for the top) -> system lines
	var extra []chatEntry                 // messages not in hist
	prev := ""
	for _, e := range m.entries {
		switch {
		case e.msg == nil:
			after[prev] = append(after[prev], e)
		default:
			prev = e.msg.ID
			if !inHist[e.msg.ID] {
				extra = append(extra, e)
			}
		}
	}
	old := m.entries
	oldIndex := m.index
	m.entries = make([]chatEntry, 0, len(hist)+len(extra)+len(after))
	m.index = make(map[string]int, len(hist)+len(extra))
	m.entries = append(m.entries, after[""]...)
	for _, h := range hist {
		if _, dup := m.index[h.ID]; dup {
			continue
		}
		if i, ok := oldIndex[h.ID]; ok {
			m.index[h.ID] = len(m.entries)
			m.entries = append(m.entries, old[i])
			m.upsert(h)
		} else {
			m.upsert(h)
		}
		m.entries = append(m.entries, after[h.ID]...)
	}
	for _, e := range extra {
		m.index[e.msg.ID] = len(m.entries)
		m.entries = append(m.entries, e)
		m.entries = append(m.entries, after[e.msg.ID]...)
	}
}

// upsert adds a message, or updates the one with its ID in place. A
// readable message never goes back to waiting.
func (m *chatModel) upsert(msg client.Message) {
	if msg.ID == "" {
		return
	}
	if i, ok := m.index[msg.ID]; ok {
		if old := m.entries[i].msg; old.Status == statusOK && msg.Status != statusOK {
			return
		}
		m.entries[i].msg = &msg
		m.entries[i].rendered = ""
		return
	}
	m.index[msg.ID] = len(m.entries)
	m.entries = append(m.entries, chatEntry{msg: &msg})
}

func (m *chatModel) addSystem(text string, at time.Time, isErr bool) {
	if at.IsZero() {
		at = time.Now()
	}
	m.entries = append(m.entries, chatEntry{sys: text, sysTime: at, isErr: isErr})
}

// refresh re-renders the message area, following new lines when it was
// scrolled to the bottom (or always when toBottom).
func (m *chatModel) refresh(toBottom bool) {
	follow := toBottom || m.vp.AtBottom()
	m.vp.SetContent(m.content())
	if follow {
		m.vp.GotoBottom()
	}
}

func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// shortKey abbreviates a key or group ID for display.
func shortKey(id string) string {
	if len(id) <= 8 {
		return id
	}
	return id[:8]
}
