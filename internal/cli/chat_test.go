package cli

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	tea "github.com/charmbracelet/bubbletea"
	"github.com/charmbracelet/lipgloss"
	"go.uber.org/goleak"

	"github.com/p2pchat/p2pchat/client"
)

const (
	testGroupID = "1a2b3c4d5e6f70818293a4b5c6d7e8f90112233445566778899aabbccddeeff0"
	selfID      = "12D3KooWSelfSelfSelfSelfSelfSelfSelfSelfSelf00self1"
	aliceID     = "12D3KooWAliceAliceAliceAliceAliceAliceAlice0alice1"
	bobID       = "12D3KooWBobBobBobBobBobBobBobBobBobBobBobBo00bob001"
	keyA        = "aaaa1111bbbb2222cccc3333dddd4444eeee5555ffff6666aaaa1111bbbb2222"
	keyB        = "bbbb9999cccc8888dddd7777eeee6666ffff5555aaaa4444bbbb3333cccc2222"
)

// fakeAPI is a fake of the screen's chatAPI: it counts calls and answers
// with what the test set.
type fakeAPI struct {
	mu       sync.Mutex
	group    client.Group
	history  []client.Message
	sendErr  error
	groupErr error // answered by Group when set
	groups   int
	messages int
	sent     []string
}

func (f *fakeAPI) Group(ctx context.Context, group string) (*client.Group, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.groups++
	if f.groupErr != nil {
		return nil, f.groupErr
	}
	g := f.group
	return &g, nil
}

func (f *fakeAPI) Messages(ctx context.Context, group string) ([]client.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.messages++
	return append([]client.Message(nil), f.history...), nil
}

func (f *fakeAPI) Send(ctx context.Context, group, text string) (*client.Message, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, text)
	if f.sendErr != nil {
		return nil, f.sendErr
	}
	return &client.Message{ID: selfID + "/" + text, Sender: selfID, Text: text, Status: "ok",
		SentAt: time.Now().UTC().Format(time.RFC3339Nano)}, nil
}

func (f *fakeAPI) sends() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sent)
}

func (f *fakeAPI) counts() (groups, messages int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.groups, f.messages
}

func testGroup() client.Group {
	return client.Group{GroupID: testGroupID, Name: "friends", KeyID: keyA, Members: []client.Member{
		{PeerID: selfID, Role: "admin"}, {PeerID: aliceID, Role: "member"}, {PeerID: bobID, Role: "member"},
	}}
}

func okMsg(id, sender, text string, at time.Time) client.Message {
	return client.Message{ID: id, Sender: sender, Text: text, Status: "ok", SentAt: at.UTC().Format(time.RFC3339Nano)}
}

func waitingMsg(id, sender string) client.Message {
	return client.Message{ID: id, Sender: sender, Status: "waiting_for_key"}
}

func newTestModel(t *testing.T, api *fakeAPI, history []client.Message) *chatModel {
	t.Helper()
	g := testGroup()
	api.group = g
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m := newChatModel(ctx, api, selfID, &g, history, newChatStyles(lipgloss.NewRenderer(io.Discard)))
	m.Update(tea.WindowSizeMsg{Width: 100, Height: 30})
	return m
}

var ansiRE = regexp.MustCompile(`\x1b\[[0-9;?]*[ -/]*[@-~]`)

// screen is the model's view without styling, trailing spaces trimmed.
func screen(m *chatModel) string {
	lines := strings.Split(ansiRE.ReplaceAllString(m.View(), ""), "\n")
	for i := range lines {
		lines[i] = strings.TrimRight(lines[i], " ")
	}
	return strings.Join(lines, "\n")
}

// lineWith returns the index of the screen line containing s, or -1.
func lineWith(view, s string) int {
	for i, l := range strings.Split(view, "\n") {
		if strings.Contains(l, s) {
			return i
		}
	}
	return -1
}

// assertOrder checks that each string is on a screen line below the last.
func assertOrder(t *testing.T, view string, want ...string) {
	t.Helper()
	last := -1
	for _, s := range want {
		i := lineWith(view, s)
		if i < 0 {
			t.Fatalf("%q not on screen:\n%s", s, view)
		}
		if i <= last {
			t.Fatalf("%q (line %d) not below %q (line %d):\n%s", s, i, want[0], last, view)
		}
		last = i
	}
}

// run runs cmd and any commands it batches, returning their messages
// (cursor blinks excluded).
func run(cmd tea.Cmd) []tea.Msg {
	if cmd == nil {
		return nil
	}
	switch msg := cmd().(type) {
	case nil:
		return nil
	case tea.BatchMsg:
		var out []tea.Msg
		for _, c := range msg {
			out = append(out, run(c)...)
		}
		return out
	default:
		return []tea.Msg{msg}
	}
}

func typeText(m *chatModel, s string) {
	m.Update(tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune(s)})
}

func TestChatHistoryInOrder(t *testing.T) {
	now := time.Now()
	m := newTestModel(t, &fakeAPI{}, []client.Message{
		okMsg("a1", aliceID, "first from alice", now.Add(-3*time.Minute)),
		okMsg("s1", selfID, "my reply", now.Add(-2*time.Minute)),
		okMsg("b1", bobID, "bob here", now.Add(-time.Minute)),
	})
	v := screen(m)
	assertOrder(t, v, "first from alice", "my reply", "bob here")

	if l := strings.Split(v, "\n")[lineWith(v, "first from alice")]; !strings.Contains(l, shortID(aliceID)) {
		t.Errorf("alice's line does not name her: %q", l)
	}
	if l := strings.Split(v, "\n")[lineWith(v, "my reply")]; !strings.Contains(l, "you") || strings.Contains(l, shortID(selfID)) {
		t.Errorf("own message not shown as you: %q", l)
	}
	if l := strings.Split(v, "\n")[lineWith(v, "my reply")]; !strings.Contains(l, now.Add(-2*time.Minute).Format("15:04")) {
		t.Errorf("own message without its time: %q", l)
	}
	header := strings.Split(v, "\n")[0]
	for _, want := range []string{"friends", "#1a2b3c4d", "3 members", "key aaaa1111"} {
		if !strings.Contains(header, want) {
			t.Errorf("header %q lacks %q", header, want)
		}
	}
	if strings.Contains(header, testGroupID) || strings.Contains(header, keyA) {
		t.Errorf("header should show short ids: %q", header)
	}
}

func TestChatWaitingMessageFilledInPlace(t *testing.T) {
	now := time.Now()
	m := newTestModel(t, &fakeAPI{}, []client.Message{
		okMsg("a1", aliceID, "before", now.Add(-3*time.Minute)),
		waitingMsg("b1", bobID),
		okMsg("a2", aliceID, "after", now.Add(-time.Minute)),
	})
	v := screen(m)
	assertOrder(t, v, "before", "(waiting for key…)", "after")
	if l := strings.Split(v, "\n")[lineWith(v, "(waiting for key…)")]; !strings.Contains(l, shortID(bobID)) {
		t.Errorf("placeholder line does not name the sender: %q", l)
	}
	lines := len(strings.Split(v, "\n"))
	waitLine := lineWith(v, "(waiting for key…)")

	dec := okMsg("b1", bobID, "the secret", now.Add(-2*time.Minute))
	if cmd := m.applyEvent(&client.Event{ID: 7, Kind: "message_decrypted", GroupID: testGroupID, Message: &dec}); cmd != nil {
		t.Errorf("first event asked for a refetch")
	}
	v = screen(m)
	if strings.Contains(v, "waiting for key") {
		t.Errorf("placeholder still shown after decryption:\n%s", v)
	}
	assertOrder(t, v, "before", "the secret", "after")
	if got := lineWith(v, "the secret"); got != waitLine {
		t.Errorf("decrypted text on line %d, placeholder was on %d", got, waitLine)
	}
	if got := len(strings.Split(v, "\n")); got != lines {
		t.Errorf("screen has %d lines, had %d: the message was added, not filled in", got, lines)
	}
	if n := strings.Count(v, shortID(bobID)); n != 1 {
		t.Errorf("bob appears %d times, want 1:\n%s", n, v)
	}

	// A replayed "message" event that still says waiting must not undo it.
	m.applyEvent(&client.Event{ID: 8, Kind: "message", GroupID: testGroupID, Message: &client.Message{ID: "b1", Sender: bobID, Status: "waiting_for_key"}})
	if v := screen(m); !strings.Contains(v, "the secret") || strings.Contains(v, "waiting for key") {
		t.Errorf("readable message went back to waiting:\n%s", v)
	}
}

func TestChatNewMessageEventAppendsOnce(t *testing.T) {
	now := time.Now()
	m := newTestModel(t, &fakeAPI{}, []client.Message{okMsg("a1", aliceID, "old", now.Add(-time.Minute))})
	msg := okMsg("b1", bobID, "new one", now)
	m.applyEvent(&client.Event{ID: 1, Kind: "message", GroupID: testGroupID, Message: &msg})
	m.applyEvent(&client.Event{ID: 2, Kind: "message", GroupID: "other", Message: &client.Message{ID: "x", Sender: bobID, Text: "elsewhere", Status: "ok"}})
	v := screen(m)
	assertOrder(t, v, "old", "new one")
	if strings.Contains(v, "elsewhere") {
		t.Errorf("message of another group shown:\n%s", v)
	}
	// The stream may repeat what history already had.
	m.applyEvent(&client.Event{ID: 3, Kind: "message", GroupID: testGroupID, Message: &msg})
	if n := strings.Count(screen(m), "new one"); n != 1 {
		t.Errorf("message shown %d times", n)
	}
}

func TestChatRosterAndKeyEvents(t *testing.T) {
	m := newTestModel(t, &fakeAPI{}, nil)
	carol := "12D3KooWCarolCarolCarolCarolCarolCarolCarol0carol9"
	now := time.Now().UTC().Format(time.RFC3339Nano)
	m.applyEvent(&client.Event{ID: 1, Kind: "roster", GroupID: testGroupID, Time: now,
		Members: []client.Member{{PeerID: selfID}, {PeerID: aliceID}, {PeerID: bobID}, {PeerID: carol}}, Added: []string{carol}})
	v := screen(m)
	if !strings.Contains(v, "+ "+shortID(carol)+" joined") {
		t.Errorf("no join line:\n%s", v)
	}
	if !strings.Contains(strings.Split(v, "\n")[0], "4 members") {
		t.Errorf("header not updated: %q", strings.Split(v, "\n")[0])
	}

	m.applyEvent(&client.Event{ID: 2, Kind: "roster", GroupID: testGroupID, Time: now,
		Members: []client.Member{{PeerID: selfID}, {PeerID: aliceID}, {PeerID: carol}}, Removed: []string{bobID}})
	m.applyEvent(&client.Event{ID: 3, Kind: "key_rotated", GroupID: testGroupID, Time: now, KeyID: keyB})
	v = screen(m)
	assertOrder(t, v, "+ "+shortID(carol)+" joined", "- "+shortID(bobID)+" left or was removed", "key rotated → bbbb9999")
	header := strings.Split(v, "\n")[0]
	if !strings.Contains(header, "3 members") || !strings.Contains(header, "key bbbb9999") {
		t.Errorf("header not updated: %q", header)
	}

	// This node removed: the roster event and group_left say it once.
	m.applyEvent(&client.Event{ID: 4, Kind: "roster", GroupID: testGroupID, Time: now,
		Members: []client.Member{{PeerID: aliceID}, {PeerID: carol}}, Removed: []string{selfID}})
	m.applyEvent(&client.Event{ID: 5, Kind: "group_left", GroupID: testGroupID, Time: now})
	v = screen(m)
	if n := strings.Count(v, "you are no longer a member; history stays readable"); n != 1 {
		t.Errorf("left line shown %d times:\n%s", n, v)
	}
	if !strings.Contains(strings.Split(v, "\n")[0], "not a member") {
		t.Errorf("header does not say we left: %q", strings.Split(v, "\n")[0])
	}
}

func TestChatIgnoresReplayedGroupEvents(t *testing.T) {
	m := newTestModel(t, &fakeAPI{}, nil)
	m.since = time.Now()
	old := m.since.Add(-time.Hour).UTC().Format(time.RFC3339Nano)
	m.applyEvent(&client.Event{ID: 10, Kind: "roster", GroupID: testGroupID, Time: old,
		Members: []client.Member{{PeerID: selfID}}, Removed: []string{aliceID, bobID}})
	m.applyEvent(&client.Event{ID: 11, Kind: "key_rotated", GroupID: testGroupID, Time: old, KeyID: keyB})
	v := screen(m)
	if strings.Contains(v, "removed") || strings.Contains(v, "rotated") {
		t.Errorf("replayed events shown as news:\n%s", v)
	}
	if h := strings.Split(v, "\n")[0]; !strings.Contains(h, "3 members") || !strings.Contains(h, "key aaaa1111") {
		t.Errorf("replayed events changed the header: %q", h)
	}
}

func TestChatSend(t *testing.T) {
	api := &fakeAPI{}
	m := newTestModel(t, api, nil)

	// Empty or blank input sends nothing.
	typeText(m, "   ")
	if _, cmd := m.Update(tea.KeyMsg{Type: tea.KeyEnter}); cmd != nil {
		run(cmd)
	}
	if len(api.sent) != 0 {
		t.Fatalf("blank input was sent: %q", api.sent)
	}

	typeText(m, "  hello world ")
	_, cmd := m.Update(tea.KeyMsg{Type: tea.KeyEnter})
	if m.input.Value() != "" {
		t.Errorf("input not cleared on Enter: %q", m.input.Value())
	}
	for _, msg := range run(cmd) {
		m.Update(msg)
	}
	if len(api.sent) != 1 || api.sent[0] != "hello world" {
		t.Fatalf("sent %q, want [hello world]", api.sent)
	}
	v := screen(m)
	l := lineWith(v, "hello world")
	if l < 0 || !strings.Contains(strings.Split(v, "\n")[l], "you") {
		t.Errorf("sent message not shown as ours:\n%s", v)
	}
}

func TestChatSendErrorRestoresInput(t *testing.T) {
	api := &fakeAPI{sendErr: &client.Error{Status: 403, Message: "not a member of the group"}}
	m := newTestModel(t, api, nil)
	typeText(m, "important words")
	_, cmd := m.Update(tea.KeyMsg{Type: tea.KeyEnter})
	if m.input.Value() != "" {
		t.Errorf("input not cleared while sending: %q", m.input.Value())
	}
	msgs := run(cmd)
	if len(msgs) != 1 {
		t.Fatalf("send gave %d messages, want 1", len(msgs))
	}
	m.Update(msgs[0])
	if got := m.input.Value(); got != "important words" {
		t.Errorf("input after failed send = %q, want the text back", got)
	}
	v := screen(m)
	if !strings.Contains(v, "not sent: not a member of the group") {
		t.Errorf("no error line:\n%s", v)
	}
	if lineWith(v, "important words") != len(strings.Split(v, "\n"))-1 {
		t.Errorf("failed text shown as a message, not in the input:\n%s", v)
	}

	// Text typed while the send was in flight is kept too.
	typeText(m, "x")
	m.input.Reset()
	typeText(m, "second")
	_, cmd = m.Update(tea.KeyMsg{Type: tea.KeyEnter})
	typeText(m, "third")
	for _, msg := range run(cmd) {
		m.Update(msg)
	}
	if got := m.input.Value(); got != "second third" {
		t.Errorf("input = %q, want both texts", got)
	}
}

func TestChatEventGapRefetchesHistory(t *testing.T) {
	now := time.Now()
	api := &fakeAPI{}
	m := newTestModel(t, api, []client.Message{okMsg("a1", aliceID, "one", now.Add(-3*time.Minute))})
	two := okMsg("a2", aliceID, "two", now.Add(-2*time.Minute))
	for id := uint64(1); id <= 3; id++ {
		var cmd tea.Cmd
		if id == 2 {
			cmd = m.applyEvent(&client.Event{ID: id, Kind: "message", GroupID: testGroupID, Message: &two})
		} else {
			cmd = m.applyEvent(&client.Event{ID: id, Kind: "key_rotated", GroupID: "another group", KeyID: keyB})
		}
		if cmd != nil {
			t.Fatalf("event %d without a gap asked for a refetch", id)
		}
	}
	if _, n := api.counts(); n != 0 {
		t.Fatalf("history read %d times without a gap", n)
	}

	// Events 4 to 6 are lost: one was a message, one a roster change.
	missed := okMsg("b1", bobID, "missed message", now.Add(-time.Minute))
	api.history = []client.Message{okMsg("a1", aliceID, "one", now.Add(-3*time.Minute)), two, missed}
	api.group.Members = api.group.Members[:2] // bob left
	five := okMsg("a3", aliceID, "after the gap", now)
	cmd := m.applyEvent(&client.Event{ID: 7, Kind: "message", GroupID: testGroupID, Message: &five})
	if cmd == nil {
		t.Fatal("gap from 3 to 7 did not ask for a refetch")
	}
	// A second gap while the first refetch is in flight does not start
	// another one at once.
	if cmd2 := m.applyEvent(&client.Event{ID: 9, Kind: "message", GroupID: "another group"}); cmd2 != nil {
		t.Error("second refetch started while one is in flight")
	}
	msgs := run(cmd)
	if g, n := api.counts(); n != 1 || g != 1 {
		t.Fatalf("refetch read history %d times and group %d times, want 1 and 1", n, g)
	}
	if len(msgs) != 1 {
		t.Fatalf("refetch gave %d messages", len(msgs))
	}
	_, again := m.Update(msgs[0])
	v := screen(m)
	assertOrder(t, v, "one", "two", "missed message")
	if !strings.Contains(v, "after the gap") {
		t.Errorf("message from after the gap lost on re-read:\n%s", v)
	}
	if n := strings.Count(v, "two"); n != 1 {
		t.Errorf("message shown %d times after re-read", n)
	}
	if !strings.Contains(v, "- "+shortID(bobID)+" left or was removed") {
		t.Errorf("missed roster change not told:\n%s", v)
	}
	if !strings.Contains(strings.Split(v, "\n")[0], "2 members") {
		t.Errorf("header not updated from re-read group: %q", strings.Split(v, "\n")[0])
	}
	// The gap seen during the first refetch gets its own.
	if again == nil {
		t.Fatal("gap seen during a refetch was dropped")
	}
	for _, msg := range run(again) {
		m.Update(msg)
	}
	if _, n := api.counts(); n != 2 {
		t.Errorf("history read %d times, want 2", n)
	}
}

func TestChatStreamEnded(t *testing.T) {
	var hist []client.Message
	for i := range 60 {
		hist = append(hist, okMsg("m"+strconv.Itoa(i), aliceID, "line "+strconv.Itoa(i), time.Now()))
	}
	m := newTestModel(t, &fakeAPI{}, hist)
	m.Update(streamEndedMsg{err: io.EOF})
	// Each failed attempt ends no stream, but a stream that ends again
	// before the reconnect is announced must not repeat the line.
	m.Update(streamEndedMsg{err: io.ErrUnexpectedEOF})
	v := screen(m)
	if n := strings.Count(v, "daemon connection lost — reconnecting…"); n != 1 {
		t.Errorf("connection-lost line shown %d times, want 1:\n%s", n, v)
	}
	if h := strings.Split(v, "\n")[0]; !strings.Contains(h, "offline") {
		t.Errorf("header does not say offline: %q", h)
	}
	// The screen stays usable: scrolling and typing.
	m.Update(tea.KeyMsg{Type: tea.KeyPgUp})
	if v := screen(m); strings.Contains(v, "reconnecting…") || !strings.Contains(v, "line 3") {
		t.Errorf("PgUp did not scroll while disconnected:\n%s", v)
	}
	m.Update(tea.KeyMsg{Type: tea.KeyCtrlEnd})
	typeText(m, "draft")
	if got := m.input.Value(); got != "draft" {
		t.Errorf("input = %q while disconnected, want the typed text", got)
	}
	if _, cmd := m.Update(tea.KeyMsg{Type: tea.KeyEsc}); cmd == nil || cmd() != tea.Quit() {
		t.Error("Esc does not quit after the connection is lost")
	}
}

func TestChatSendWhileDisconnected(t *testing.T) {
	api := &fakeAPI{}
	m := newTestModel(t, api, nil)
	m.Update(streamEndedMsg{err: io.EOF})
	typeText(m, "do not lose me")
	_, cmd := m.Update(tea.KeyMsg{Type: tea.KeyEnter})
	for _, msg := range run(cmd) {
		m.Update(msg)
	}
	if n := api.sends(); n != 0 {
		t.Errorf("sent %d times while disconnected", n)
	}
	if got := m.input.Value(); got != "do not lose me" {
		t.Errorf("input after a send while disconnected = %q, want the text kept", got)
	}
	v := screen(m)
	i := lineWith(v, "not sent: no connection to the daemon")
	if i < 0 {
		t.Fatalf("no error line for the send:\n%s", v)
	}
	if lineWith(v, "do not lose me") != len(strings.Split(v, "\n"))-1 {
		t.Errorf("text shown as a message, not kept in the input:\n%s", v)
	}
	// Once reconnected, Enter sends it.
	m.Update(reconnectedMsg{api: api, since: time.Now()})
	_, cmd = m.Update(tea.KeyMsg{Type: tea.KeyEnter})
	for _, msg := range run(cmd) {
		m.Update(msg)
	}
	if api.sends() != 1 || api.sent[0] != "do not lose me" {
		t.Errorf("sent %q after reconnecting, want the kept text", api.sent)
	}
}

func TestChatReconnect(t *testing.T) {
	now := time.Now()
	a1 := okMsg(aliceID+"/1", aliceID, "before the restart", now.Add(-3*time.Minute))
	s1 := okMsg(selfID+"/1", selfID, "my old words", now.Add(-2*time.Minute))
	old := &fakeAPI{}
	m := newTestModel(t, old, []client.Message{a1, s1})
	// The first daemon's events: IDs well past 1.
	b1 := okMsg(bobID+"/1", bobID, "live before", now.Add(-time.Minute))
	m.applyEvent(&client.Event{ID: 41, Kind: "message", GroupID: testGroupID, Message: &b1})
	m.applyEvent(&client.Event{ID: 42, Kind: "key_rotated", GroupID: "another group", KeyID: keyB})
	// A gap re-read is in flight when the daemon goes away.
	stale := m.applyEvent(&client.Event{ID: 44, Kind: "key_rotated", GroupID: "another group", KeyID: keyB})
	if stale == nil {
		t.Fatal("gap did not ask for a re-read")
	}
	m.Update(streamEndedMsg{err: io.EOF})

	// The restarted daemon has what arrived meanwhile, and the carol
	// join; its token and port differ, so it is another client.
	carol := "12D3KooWCarolCarolCarolCarolCarolCarolCarol0carol9"
	away := okMsg(bobID+"/2", bobID, "sent while you were away", now.Add(-30*time.Second))
	restarted := &fakeAPI{history: []client.Message{a1, s1, b1, away}}
	restarted.group = testGroup()
	restarted.group.Members = append(restarted.group.Members, client.Member{PeerID: carol, Role: "member"})
	_, cmd := m.Update(reconnectedMsg{api: restarted, since: time.Now()})
	if cmd == nil {
		t.Fatal("reconnecting does not re-read the history")
	}
	v := screen(m)
	assertOrder(t, v, "daemon connection lost — reconnecting…", "reconnected")
	if h := strings.Split(v, "\n")[0]; strings.Contains(h, "offline") {
		t.Errorf("header still offline: %q", h)
	}

	// The old connection's answer comes late and is ignored.
	for _, msg := range run(stale) {
		if _, again := m.Update(msg); again != nil {
			t.Error("stale re-read asked for another")
		}
	}
	for _, msg := range run(cmd) {
		if _, again := m.Update(msg); again != nil {
			t.Error("re-read after reconnecting asked for another")
		}
	}
	if g, n := restarted.counts(); g != 1 || n != 1 {
		t.Errorf("restarted daemon asked for the group %d and history %d times, want 1 and 1", g, n)
	}
	v = screen(m)
	assertOrder(t, v, "before the restart", "my old words", "live before", "sent while you were away")
	for _, text := range []string{"before the restart", "my old words", "live before", "sent while you were away"} {
		if n := strings.Count(v, text); n != 1 {
			t.Errorf("%q shown %d times:\n%s", text, n, v)
		}
	}
	if !strings.Contains(v, "+ "+shortID(carol)+" joined") {
		t.Errorf("join that happened while away not told:\n%s", v)
	}
	if strings.Contains(v, "missed") {
		t.Errorf("reconnect reported as missed events:\n%s", v)
	}

	// The restarted daemon numbers its events from 1 again: they apply,
	// and the first is no gap.
	live := okMsg(bobID+"/3", bobID, "live after the restart", time.Now())
	if cmd := m.applyEvent(&client.Event{ID: 1, Kind: "message", GroupID: testGroupID, Message: &live}); cmd != nil {
		t.Error("first event of the new stream taken for a gap")
	}
	now2 := time.Now().UTC().Format(time.RFC3339Nano)
	if cmd := m.applyEvent(&client.Event{ID: 2, Kind: "key_rotated", GroupID: testGroupID, KeyID: keyB, Time: now2}); cmd != nil {
		t.Error("second event of the new stream taken for a gap")
	}
	// A repeat of a message already shown is merged by its ID.
	m.applyEvent(&client.Event{ID: 3, Kind: "message", GroupID: testGroupID, Message: &away})
	v = screen(m)
	if n := strings.Count(v, "live after the restart"); n != 1 {
		t.Errorf("new daemon's message shown %d times:\n%s", n, v)
	}
	if n := strings.Count(v, "sent while you were away"); n != 1 {
		t.Errorf("repeated message shown %d times:\n%s", n, v)
	}
	if !strings.Contains(v, "key rotated → bbbb9999") {
		t.Errorf("new daemon's key event not applied:\n%s", v)
	}
	if g, n := old.counts(); g != 1 || n != 1 {
		t.Errorf("old connection read group %d and history %d times, want once each (the stale re-read)", g, n)
	}

	// A second outage is told again, once.
	m.Update(streamEndedMsg{err: io.EOF})
	m.Update(streamEndedMsg{err: io.EOF})
	if n := strings.Count(screen(m), "daemon connection lost — reconnecting…"); n != 2 {
		t.Errorf("connection-lost line shown %d times after two outages, want 2", n)
	}
}

func TestChatReconnectGroupGone(t *testing.T) {
	api := &fakeAPI{}
	m := newTestModel(t, api, nil)
	m.Update(streamEndedMsg{err: io.EOF})
	m.Update(groupGoneMsg{err: &client.Error{Status: 404, Message: "unknown group " + testGroupID}})
	m.Update(streamEndedMsg{err: io.EOF})
	v := screen(m)
	if n := strings.Count(v, "the daemon no longer has this group; not reconnecting"); n != 1 {
		t.Errorf("group-gone line shown %d times:\n%s", n, v)
	}
	if n := strings.Count(v, "connection lost"); n != 1 {
		t.Errorf("connection-lost line shown %d times:\n%s", n, v)
	}
	if h := strings.Split(v, "\n")[0]; !strings.Contains(h, "group gone") || strings.Contains(h, "reconnecting") {
		t.Errorf("header = %q, want it to say the group is gone", h)
	}
	typeText(m, "hello?")
	_, cmd := m.Update(tea.KeyMsg{Type: tea.KeyEnter})
	run(cmd)
	if api.sends() != 0 || m.input.Value() != "hello?" {
		t.Errorf("send with the group gone: sent %q, input %q", api.sent, m.input.Value())
	}
	if !strings.Contains(screen(m), "not sent: the daemon no longer has this group") {
		t.Errorf("no error line for the send:\n%s", screen(m))
	}

	// The same, found by the re-read after reconnecting.
	m = newTestModel(t, &fakeAPI{}, nil)
	m.Update(streamEndedMsg{err: io.EOF})
	gone := &fakeAPI{groupErr: &client.Error{Status: 404, Message: "unknown group " + testGroupID}}
	_, cmd = m.Update(reconnectedMsg{api: gone, since: time.Now()})
	for _, msg := range run(cmd) {
		m.Update(msg)
	}
	if v := screen(m); !strings.Contains(v, "the daemon no longer has this group") {
		t.Errorf("404 on the re-read after reconnecting not told as the group gone:\n%s", v)
	}
}

func TestChatQuitKeys(t *testing.T) {
	m := newTestModel(t, &fakeAPI{}, nil)
	for _, k := range []tea.KeyType{tea.KeyCtrlC, tea.KeyEsc} {
		_, cmd := m.Update(tea.KeyMsg{Type: k})
		if cmd == nil {
			t.Fatalf("%v gives no command", k)
		}
		if _, ok := cmd().(tea.QuitMsg); !ok {
			t.Errorf("%v does not quit", k)
		}
	}
}

func TestChatScrollAndResize(t *testing.T) {
	var hist []client.Message
	now := time.Now()
	for i := range 100 {
		hist = append(hist, okMsg("m"+strconv.Itoa(i), aliceID, "line "+strings.Repeat("#", i%5)+strconv.Itoa(i), now))
	}
	m := newTestModel(t, &fakeAPI{}, hist)
	m.Update(tea.WindowSizeMsg{Width: 60, Height: 20})
	v := screen(m)
	if n := len(strings.Split(v, "\n")); n != 20 {
		t.Errorf("view has %d lines at height 20", n)
	}
	if !strings.Contains(v, "line ####99") {
		t.Errorf("does not start at the bottom:\n%s", v)
	}
	m.Update(tea.KeyMsg{Type: tea.KeyPgUp})
	v = screen(m)
	if strings.Contains(v, "line ####99") {
		t.Errorf("PgUp did not scroll:\n%s", v)
	}
	// New messages do not yank a reader who scrolled up.
	msg := okMsg("new", bobID, "brand new", now)
	m.applyEvent(&client.Event{ID: 1, Kind: "message", GroupID: testGroupID, Message: &msg})
	if strings.Contains(screen(m), "brand new") {
		t.Error("scrolled-up view jumped to a new message")
	}
	m.Update(tea.KeyMsg{Type: tea.KeyPgDown})
	m.Update(tea.KeyMsg{Type: tea.KeyPgDown})
	if !strings.Contains(screen(m), "brand new") {
		t.Errorf("PgDn did not come back:\n%s", screen(m))
	}

	// Long text wraps within the width, under the text column.
	long := okMsg("long", bobID, strings.Repeat("word ", 30), now)
	m.applyEvent(&client.Event{ID: 2, Kind: "message", GroupID: testGroupID, Message: &long})
	for _, l := range strings.Split(screen(m), "\n") {
		if w := lipgloss.Width(l); w > 60 {
			t.Errorf("line of width %d at width 60: %q", w, l)
		}
	}
	v = screen(m)
	if i := lineWith(v, "word word"); i < 0 || !strings.HasPrefix(strings.Split(v, "\n")[i+1], strings.Repeat(" ", textIndent)+"word") {
		t.Errorf("wrapped text not indented under the text column:\n%s", v)
	}
}

func TestChatSanitizesText(t *testing.T) {
	now := time.Now()
	m := newTestModel(t, &fakeAPI{}, []client.Message{
		okMsg("a1", aliceID, "evil\x1b[2J\x1b]0;title\x07text\u202eafter", now),
	})
	v := m.View()
	if strings.Contains(v, "\x1b[2J") || strings.Contains(v, "\x1b]0;") || strings.Contains(v, "\x07") || strings.Contains(v, "\u202e") {
		t.Errorf("control sequences from a message reach the terminal: %q", v)
	}
	if !strings.Contains(screen(m), "evil") || !strings.Contains(screen(m), "after") {
		t.Errorf("text lost in sanitizing:\n%s", screen(m))
	}
}

// fakeStream is an event stream fed by a channel; Close ends it.
type fakeStream struct {
	c      chan *client.Event
	done   chan struct{}
	once   sync.Once
	closed chan struct{}
}

func newFakeStream() *fakeStream {
	return &fakeStream{c: make(chan *client.Event), done: make(chan struct{}), closed: make(chan struct{})}
}

func (s *fakeStream) Next() (*client.Event, error) {
	select {
	case ev := <-s.c:
		return ev, nil
	case <-s.done:
		return nil, io.EOF
	}
}

func (s *fakeStream) Close() error {
	s.once.Do(func() { close(s.done); close(s.closed) })
	return nil
}

// syncBuffer is an output the test can read while the program writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestChatScreenRuns drives the real tea program through pipes: typed text
// is sent, stream events show, Ctrl+C quits, and nothing is left running.
func TestChatScreenRuns(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	api := &fakeAPI{}
	g := testGroup()
	api.group = g
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &syncBuffer{}
	m := newChatModel(ctx, api, selfID, &g, []client.Message{okMsg("a1", aliceID, "hi from history", time.Now())},
		newChatStyles(lipgloss.NewRenderer(out)))
	stream := newFakeStream()
	inR, inW := io.Pipe()
	e := &env{stdin: inR, stdout: out, stderr: io.Discard}

	done := make(chan error, 1)
	dialer := &fakeDialer{}
	go func() { done <- runChatScreen(e, m, stream, dialer.dial, cancel) }()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; output:\n%s", what, ansiRE.ReplaceAllString(out.String(), ""))
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor("history", func() bool { return strings.Contains(out.String(), "hi from history") })

	if _, err := inW.Write([]byte("typed line\r")); err != nil {
		t.Fatal(err)
	}
	waitFor("send", func() bool {
		api.mu.Lock()
		defer api.mu.Unlock()
		return len(api.sent) == 1 && api.sent[0] == "typed line"
	})
	ev := okMsg("b1", bobID, "live from bob", time.Now())
	stream.c <- &client.Event{ID: 1, Kind: "message", GroupID: testGroupID, Message: &ev}
	waitFor("live event", func() bool { return strings.Contains(out.String(), "live from bob") })

	if _, err := inW.Write([]byte{0x03}); err != nil { // Ctrl+C
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("screen: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Ctrl+C did not end the screen")
	}
	select {
	case <-stream.closed:
	default:
		t.Error("stream not closed after the screen quit")
	}
	if ctx.Err() == nil {
		t.Error("context not cancelled after the screen quit")
	}
	inW.Close()
	if n := dialer.count(); n != 0 {
		t.Errorf("reconnected %d times without the stream ending", n)
	}
}

// fakeDialer is a chatDialer that records its calls and answers with fn
// (n counts calls from 1); without fn it fails like a stopped daemon.
type fakeDialer struct {
	mu    sync.Mutex
	calls []time.Time
	fn    func(n int) (chatAPI, eventSource, error)
}

func (d *fakeDialer) dial(ctx context.Context) (chatAPI, eventSource, error) {
	d.mu.Lock()
	d.calls = append(d.calls, time.Now())
	n := len(d.calls)
	d.mu.Unlock()
	if d.fn == nil {
		return nil, nil, client.ErrDaemonNotRunning
	}
	return d.fn(n)
}

func (d *fakeDialer) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.calls)
}

func (d *fakeDialer) gaps() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []time.Duration
	for i := 1; i < len(d.calls); i++ {
		out = append(out, d.calls[i].Sub(d.calls[i-1]))
	}
	return out
}

// waitUntil polls cond every 5 ms until it holds or 5 s pass.
func waitUntil(t *testing.T, what string, cond func() bool, detail func() string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; %s", what, detail())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// startScreen runs runChatScreen on m in the background, with pipes.
func startScreen(t *testing.T, m *chatModel, stream eventSource, d *fakeDialer, cancel context.CancelFunc) (out *syncBuffer, quit func() error) {
	t.Helper()
	out = &syncBuffer{}
	m.st = newChatStyles(lipgloss.NewRenderer(out))
	inR, inW := io.Pipe()
	t.Cleanup(func() { inW.Close() })
	done := make(chan error, 1)
	go func() {
		done <- runChatScreen(&env{stdin: inR, stdout: out, stderr: io.Discard}, m, stream, d.dial, cancel)
	}()
	return out, func() error {
		t.Helper()
		if _, err := inW.Write([]byte{0x03}); err != nil { // Ctrl+C
			t.Fatal(err)
		}
		select {
		case err := <-done:
			// bubbletea's reader of a pipe ends when the pipe does.
			inW.Close()
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("Ctrl+C did not end the screen")
			return nil
		}
	}
}

func plain(b *syncBuffer) func() string {
	return func() string { return "output:\n" + ansiRE.ReplaceAllString(b.String(), "") }
}

// sysLines counts the system lines of m whose text contains s.
func sysLines(m *chatModel, s string) int {
	n := 0
	for _, e := range m.entries {
		if e.msg == nil && strings.Contains(e.sys, s) {
			n++
		}
	}
	return n
}

// TestChatScreenReconnects runs the real screen: the stream ends, two
// attempts fail, the third reaches a "restarted" daemon whose history has
// a message sent meanwhile and whose events start again at 1.
func TestChatScreenReconnects(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	g := testGroup()
	old := &fakeAPI{group: g}
	hist := okMsg(aliceID+"/1", aliceID, "hi from history", time.Now().Add(-time.Minute))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := newChatModel(ctx, old, selfID, &g, []client.Message{hist}, newChatStyles(lipgloss.NewRenderer(io.Discard)))
	stream1, stream2 := newFakeStream(), newFakeStream()
	restarted := &fakeAPI{group: g, history: []client.Message{hist, okMsg(bobID+"/1", bobID, "sent while away", time.Now())}}
	d := &fakeDialer{fn: func(n int) (chatAPI, eventSource, error) {
		if n < 3 {
			return nil, nil, client.ErrDaemonNotRunning
		}
		return restarted, stream2, nil
	}}
	out, quit := startScreen(t, m, stream1, d, cancel)
	waitUntil(t, "history", func() bool { return strings.Contains(out.String(), "hi from history") }, plain(out))

	start := time.Now()
	stream1.Close() // the daemon stopped
	waitUntil(t, "connection-lost line", func() bool { return strings.Contains(out.String(), "daemon connection lost — reconnecting…") }, plain(out))
	waitUntil(t, "reconnected", func() bool {
		s := out.String()
		return strings.Contains(s, "reconnected") && strings.Contains(s, "sent while away")
	}, plain(out))
	t.Logf("reconnected after %v and %d attempts", time.Since(start).Round(time.Millisecond), d.count())

	live := okMsg(bobID+"/2", bobID, "live from the new daemon", time.Now())
	select {
	case stream2.c <- &client.Event{ID: 1, Kind: "message", GroupID: testGroupID, Message: &live}:
	case <-time.After(5 * time.Second):
		t.Fatal("the new stream is not read")
	}
	waitUntil(t, "live event", func() bool { return strings.Contains(out.String(), "live from the new daemon") }, plain(out))

	if err := quit(); err != nil {
		t.Fatalf("screen: %v", err)
	}
	select {
	case <-stream2.closed:
	default:
		t.Error("new stream not closed after the screen quit")
	}
	// The program has returned: its model can be read.
	if n := sysLines(m, "daemon connection lost"); n != 1 {
		t.Errorf("connection-lost line shown %d times over %d attempts, want 1", n, d.count())
	}
	if n := sysLines(m, "reconnected"); n != 1 {
		t.Errorf("reconnected line shown %d times, want 1", n)
	}
	if d.count() != 3 {
		t.Errorf("dialed %d times, want 3", d.count())
	}
	gaps := d.gaps()
	if len(gaps) == 2 && (gaps[0] < reconnectMinWait*2 || gaps[1] < reconnectMinWait*4) {
		t.Errorf("waits between attempts %v, want at least %v and %v", gaps, reconnectMinWait*2, reconnectMinWait*4)
	}
	if n := strings.Count(screen(m), "sent while away"); n != 1 {
		t.Errorf("message from the re-read shown %d times", n)
	}
}

// TestChatScreenQuitWhileReconnecting: quitting during the retries ends
// them; nothing is left running.
func TestChatScreenQuitWhileReconnecting(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	g := testGroup()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := newChatModel(ctx, &fakeAPI{group: g}, selfID, &g, nil, newChatStyles(lipgloss.NewRenderer(io.Discard)))
	stream := newFakeStream()
	d := &fakeDialer{}
	out, quit := startScreen(t, m, stream, d, cancel)
	stream.Close()
	waitUntil(t, "two failed attempts", func() bool { return d.count() >= 2 }, plain(out))
	if !strings.Contains(out.String(), "daemon connection lost — reconnecting…") {
		t.Errorf("no connection-lost line; %s", plain(out)())
	}
	start := time.Now()
	if err := quit(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("quitting while reconnecting took %v", took)
	}
	if n := sysLines(m, "daemon connection lost"); n != 1 {
		t.Errorf("connection-lost line shown %d times over %d attempts, want 1", n, d.count())
	}
}

// TestChatConnBackoffAndGiveUp runs the reconnect loop alone: the waits
// double up to the cap, a reconnect is announced before the new stream's
// events, and a daemon without the group ends the loop.
func TestChatConnBackoffAndGiveUp(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const minWait, maxWait = 25 * time.Millisecond, 100 * time.Millisecond
	stream1, stream2, stream3 := newFakeStream(), newFakeStream(), newFakeStream()
	up := &fakeAPI{group: testGroup()}
	gone := &fakeAPI{groupErr: &client.Error{Status: 404, Message: "unknown group " + testGroupID}}
	d := &fakeDialer{fn: func(n int) (chatAPI, eventSource, error) {
		switch {
		case n < 6:
			return nil, nil, client.ErrDaemonNotRunning
		case n == 6:
			return up, stream2, nil
		default:
			return gone, stream3, nil
		}
	}}
	var mu sync.Mutex
	var got []tea.Msg
	msgs := func() []tea.Msg {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	c := &chatConn{ctx: ctx, dial: d.dial, group: testGroupID, minWait: minWait, maxWait: maxWait,
		send: func(msg tea.Msg) { mu.Lock(); got = append(got, msg); mu.Unlock() }}
	done := make(chan struct{})
	go func() { defer close(done); c.run(stream1) }()

	stream1.Close()
	waitUntil(t, "reconnect", func() bool { return d.count() >= 6 }, func() string { return "" })
	ev := &client.Event{ID: 1, Kind: "message", GroupID: testGroupID}
	select {
	case stream2.c <- ev:
	case <-time.After(5 * time.Second):
		t.Fatal("new stream not read")
	}
	stream2.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("loop still running after the group was found gone; dialed %d times", d.count())
	}
	select {
	case <-stream3.closed:
	default:
		t.Error("stream into the daemon without the group left open")
	}
	if n := d.count(); n != 7 {
		t.Errorf("dialed %d times, want 7", n)
	}
	// Waits: 25, 50, 100, 100, 100 ms (capped), then, the new stream
	// having ended at once, the cap again.
	want := []time.Duration{2 * minWait, 4 * minWait, maxWait, maxWait, maxWait}
	gaps := d.gaps()
	for i, w := range want {
		if gaps[i] < w {
			t.Errorf("wait before attempt %d was %v, want at least %v (all: %v)", i+2, gaps[i], w, gaps)
		}
	}
	if gaps[3] > 3*maxWait || gaps[4] > 3*maxWait {
		t.Errorf("waits not capped at %v: %v", maxWait, gaps)
	}
	var kinds []string
	for _, msg := range msgs() {
		switch msg := msg.(type) {
		case streamEndedMsg:
			kinds = append(kinds, "ended")
		case reconnectedMsg:
			if msg.api != up {
				t.Errorf("reconnected with api %p, want the new daemon's", msg.api)
			}
			kinds = append(kinds, "reconnected")
		case eventMsg:
			kinds = append(kinds, "event")
		case groupGoneMsg:
			kinds = append(kinds, "gone")
		default:
			kinds = append(kinds, fmt.Sprintf("%T", msg))
		}
	}
	if got, want := strings.Join(kinds, " "), "ended reconnected event ended gone"; got != want {
		t.Errorf("loop told the screen %q, want %q", got, want)
	}
}

func TestChatWithoutDaemon(t *testing.T) {
	var stdout, stderr strings.Builder
	code := Main([]string{"chat", "friends", "--home", t.TempDir()}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if got := stderr.String(); !strings.Contains(got, "daemon not running") || strings.Count(got, "\n") != 1 {
		t.Errorf("stderr = %q, want one line saying the daemon is not running", got)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout = %q, want nothing", stdout.String())
	}
	code = Main([]string{"chat"}, strings.NewReader(""), &stdout, &stderr)
	if code != 2 {
		t.Errorf("chat without GROUP: exit code %d, want 2", code)
	}
}
