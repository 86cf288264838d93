package main

import (
	"fmt"
	"math"
	"strings"
	"sync"
)

// row is one line of the results table.
type row struct {
	Section string
	Metric  string
	Unit    string
	Raw     float64 // NaN when the metric has no raw GossipSub counterpart
	P2P     float64 // NaN when not measured
	Target  string  // human-readable target, "" when none
	// Verdict is MET, MISSED, ERROR or "" (informational).
	Verdict string
	Note    string
}

func (r row) ratio() float64 {
	if math.IsNaN(r.Raw) || math.IsNaN(r.P2P) || r.Raw == 0 {
		return math.NaN()
	}
	return r.P2P / r.Raw
}

type results struct {
	mu   sync.Mutex
	rows []row
}

func (rs *results) add(r row) {
	rs.mu.Lock()
	rs.rows = append(rs.rows, r)
	rs.mu.Unlock()
	logf("%s | %s: raw %s, p2pchat %s %s %s", r.Section, r.Metric, fmtVal(r.Raw, r.Unit), fmtVal(r.P2P, r.Unit), r.Verdict, r.Note)
}

func (rs *results) fail(section, metric string, err error) {
	rs.add(row{Section: section, Metric: metric, Raw: math.NaN(), P2P: math.NaN(), Verdict: "ERROR", Note: err.Error()})
}

func (rs *results) snapshot() []row {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	return append([]row(nil), rs.rows...)
}

func verdict(ok bool) string {
	if ok {
		return "MET"
	}
	return "MISSED"
}

func fmtVal(v float64, unit string) string {
	if math.IsNaN(v) {
		return "—"
	}
	var s string
	switch {
	case unit == "%":
		s = fmt.Sprintf("%.1f", v)
	case math.Abs(v) >= 1000:
		s = fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		s = fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		s = fmt.Sprintf("%.1f", v)
	default:
		s = fmt.Sprintf("%.2f", v)
	}
	if unit == "" {
		return s
	}
	if unit == "%" {
		return s + " %"
	}
	return s + " " + unit
}

func fmtRatio(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	return fmt.Sprintf("%.2f×", v)
}

// table renders rows as an aligned plain-text table, grouped by section.
func table(rows []row) string {
	head := []string{"metric", "raw gossipsub", "p2pchat", "ratio", "target", "verdict"}
	var cells [][]string
	var sections []string
	for _, r := range rows {
		cells = append(cells, []string{r.Metric, fmtVal(r.Raw, r.Unit), fmtVal(r.P2P, r.Unit), fmtRatio(r.ratio()), r.Target, r.Verdict})
		sections = append(sections, r.Section)
	}
	w := make([]int, len(head))
	for i, h := range head {
		w[i] = len([]rune(h))
	}
	for _, c := range cells {
		for i, v := range c {
			w[i] = max(w[i], len([]rune(v)))
		}
	}
	pad := func(s string, n int) string { return s + strings.Repeat(" ", max(0, n-len([]rune(s)))) }
	line := func(c []string) string {
		var b strings.Builder
		for i, v := range c {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(pad(v, w[i]))
		}
		return strings.TrimRight(b.String(), " ") + "\n"
	}
	var b strings.Builder
	b.WriteString(line(head))
	total := 0
	for _, x := range w {
		total += x + 2
	}
	b.WriteString(strings.Repeat("-", total-2) + "\n")
	prev := ""
	for i, c := range cells {
		if sections[i] != prev {
			b.WriteString("[" + sections[i] + "]\n")
			prev = sections[i]
		}
		b.WriteString(line(c))
		if rows[i].Note != "" && (rows[i].Verdict == "ERROR" || rows[i].Verdict == "MISSED") {
			b.WriteString("    note: " + rows[i].Note + "\n")
		}
	}
	return b.String()
}

// markdownTable renders rows as a Markdown table with a notes column.
func markdownTable(rows []row) string {
	var b strings.Builder
	prev := ""
	for _, r := range rows {
		if r.Section != prev {
			if prev != "" {
				b.WriteString("\n")
			}
			fmt.Fprintf(&b, "**%s**\n\n", r.Section)
			b.WriteString("| metric | raw GossipSub | p2pchat | ratio | target | verdict | notes |\n")
			b.WriteString("|---|---:|---:|---:|---|---|---|\n")
			prev = r.Section
		}
		v := r.Verdict
		if v == "MET" || v == "MISSED" || v == "ERROR" {
			v = "**" + v + "**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", md(r.Metric), fmtVal(r.Raw, r.Unit), fmtVal(r.P2P, r.Unit),
			fmtRatio(r.ratio()), md(r.Target), v, md(r.Note))
	}
	return b.String()
}

func md(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
