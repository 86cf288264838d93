package cli

import (
	"fmt"
	"hash/fnv"
	"strings"
	"time"
	"unicode"

	"github.com/charmbracelet/lipgloss"
)

// chatStyles are the screen's styles, made with the renderer of the output
// so that colours appear only where the output understands them.
type chatStyles struct {
	r       *lipgloss.Renderer
	header  lipgloss.Style
	time    lipgloss.Style
	self    lipgloss.Style
	peers   []lipgloss.Style
	waiting lipgloss.Style
	system  lipgloss.Style
	errLine lipgloss.Style
	day     lipgloss.Style
	rule    lipgloss.Style
}

func newChatStyles(r *lipgloss.Renderer) chatStyles {
	st := chatStyles{
		r:       r,
		header:  r.NewStyle().Bold(true).Reverse(true),
		time:    r.NewStyle().Faint(true),
		self:    r.NewStyle().Bold(true),
		waiting: r.NewStyle().Faint(true).Italic(true),
		system:  r.NewStyle().Faint(true).Italic(true),
		errLine: r.NewStyle().Italic(true).Foreground(lipgloss.Color("9")),
		day:     r.NewStyle().Faint(true),
		rule:    r.NewStyle().Faint(true),
	}
	for _, c := range []string{"33", "36", "70", "99", "133", "166", "172", "203"} {
		st.peers = append(st.peers, r.NewStyle().Foreground(lipgloss.Color(c)))
	}
	return st
}

func (st chatStyles) peer(id string) lipgloss.Style {
	h := fnv.New32a()
	h.Write([]byte(id))
	return st.peers[h.Sum32()%uint32(len(st.peers))]
}

// Columns of a message line: time, sender, text.
const (
	timeCol    = 5  // "15:04"
	senderCol  = 13 // shortID's length
	textIndent = timeCol + 1 + senderCol + 2
)

// headerView is the top line: group name, short id, members, key.
func (m *chatModel) headerView() string {
	n := len(m.group.Members)
	members := fmt.Sprintf("%d members", n)
	if n == 1 {
		members = "1 member"
	}
	key := "key " + shortKey(m.group.KeyID)
	if m.group.KeyID == "" {
		key = "no key yet"
	}
	// What is wrong comes first so that a narrow window still shows it.
	parts := []string{sanitizeLine(m.group.Name)}
	switch {
	case m.gone:
		parts = append(parts, "group gone")
	case m.connLost:
		parts = append(parts, "offline, reconnecting")
	}
	if m.group.Left {
		parts = append(parts, "not a member")
	}
	parts = append(parts, "#"+shortKey(m.group.GroupID), members, key)
	line := " " + strings.Join(parts, " · ")
	line = m.st.r.NewStyle().Inline(true).MaxWidth(m.width).Render(line)
	if pad := m.width - lipgloss.Width(line); pad > 0 {
		line += strings.Repeat(" ", pad)
	}
	return m.st.header.Render(line)
}

// content renders every entry, with a line where the day changes.
func (m *chatModel) content() string {
	if m.renderedW != m.vp.Width {
		for i := range m.entries {
			m.entries[i].rendered = ""
		}
		m.renderedW = m.vp.Width
	}
	var b strings.Builder
	var lastDay string
	for i := range m.entries {
		e := &m.entries[i]
		if t := e.when(); !t.IsZero() {
			if day := t.Format("Mon 2 Jan 2006"); day != lastDay {
				b.WriteString(m.st.day.Render("── "+day+" ──") + "\n")
				lastDay = day
			}
		}
		if e.rendered == "" {
			e.rendered = m.renderEntry(e)
		}
		b.WriteString(e.rendered)
		if i < len(m.entries)-1 {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// when is the local time an entry happened; zero if unknown.
func (e *chatEntry) when() time.Time {
	if e.msg == nil {
		return e.sysTime.Local()
	}
	if e.msg.Status != statusOK {
		return time.Time{}
	}
	t := parseTime(e.msg.SentAt)
	if t.IsZero() {
		return t
	}
	return t.Local()
}

func (m *chatModel) renderEntry(e *chatEntry) string {
	ts := strings.Repeat(" ", timeCol)
	if t := e.when(); !t.IsZero() {
		ts = t.Format("15:04")
	}
	ts = m.st.time.Render(ts)
	if e.msg == nil {
		style := m.st.system
		if e.isErr {
			style = m.st.errLine
		}
		lines := wrapText(m.st.r, sanitize(e.sys), m.vp.Width-timeCol-1)
		for i := range lines {
			lines[i] = style.Render(lines[i])
		}
		return joinHanging(ts+" ", lines, timeCol+1)
	}
	msg := e.msg
	var sender string
	if msg.Sender == m.self {
		sender = m.st.self.Render(padRight("you", senderCol))
	} else {
		sender = m.st.peer(msg.Sender).Render(padRight(shortID(sanitizeLine(msg.Sender)), senderCol))
	}
	prefix := ts + " " + sender + "  "
	if msg.Status != statusOK {
		return prefix + m.st.waiting.Render("(waiting for key…)")
	}
	return joinHanging(prefix, wrapText(m.st.r, sanitize(msg.Text), m.vp.Width-textIndent), textIndent)
}

// joinHanging puts prefix before the first line and indents the others.
func joinHanging(prefix string, lines []string, indent int) string {
	if len(lines) == 0 {
		return prefix
	}
	pad := strings.Repeat(" ", indent)
	var b strings.Builder
	for i, l := range lines {
		if i == 0 {
			b.WriteString(prefix)
		} else {
			b.WriteString("\n" + pad)
		}
		b.WriteString(l)
	}
	return b.String()
}

// wrapText splits text into lines of at most width cells.
func wrapText(r *lipgloss.Renderer, text string, width int) []string {
	if width < 10 {
		width = 10
	}
	var out []string
	for _, para := range strings.Split(text, "\n") {
		if lipgloss.Width(para) <= width {
			out = append(out, para)
			continue
		}
		for _, l := range strings.Split(r.NewStyle().Width(width).Render(para), "\n") {
			out = append(out, strings.TrimRight(l, " "))
		}
	}
	return out
}

func padRight(s string, w int) string {
	if n := lipgloss.Width(s); n < w {
		return s + strings.Repeat(" ", w-n)
	}
	return s
}

// sanitize makes text from the network safe to print on a terminal: no
// escape sequences or other control characters, no bidi overrides. It
// keeps newlines and turns tabs into spaces.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n':
			return r
		case r == '\t':
			return ' '
		case r == '\r':
			return -1
		case unicode.IsControl(r):
			return '�'
		case r >= 0x202A && r <= 0x202E, r >= 0x2066 && r <= 0x2069:
			return -1
		}
		return r
	}, s)
}

// sanitizeLine is sanitize for text that must stay on one line.
func sanitizeLine(s string) string {
	return strings.ReplaceAll(sanitize(s), "\n", " ")
}
