package main

import (
	"fmt"
	"html"
	"math"
	"strings"
	"time"
)

// plotData is what the scenarios leave for the plots.
type plotData struct {
	latency  []latencySeries
	rotation []rotationPoint
	selfHeal []time.Duration
}

const (
	colRaw    = "#1f77b4"
	colP2P    = "#d95f02"
	colLoop   = "#2ca02c"
	colGrid   = "#dddddd"
	colText   = "#222222"
	colSigned = "#7f7f7f"
)

type svgDoc struct {
	b    strings.Builder
	w, h int
}

func newSVG(w, h int) *svgDoc {
	s := &svgDoc{w: w, h: h}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&s.b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	return s
}

func (s *svgDoc) line(x1, y1, x2, y2 float64, color string, width float64, dash string) {
	d := ""
	if dash != "" {
		d = fmt.Sprintf(` stroke-dasharray="%s"`, dash)
	}
	fmt.Fprintf(&s.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"%s/>`+"\n", x1, y1, x2, y2, color, width, d)
}

func (s *svgDoc) text(x, y float64, anchor, color string, size int, t string) {
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" text-anchor="%s" fill="%s" font-size="%d">%s</text>`+"\n", x, y, anchor, color, size, html.EscapeString(t))
}

func (s *svgDoc) polyline(pts [][2]float64, color string, width float64) {
	s.polylineDash(pts, color, width, "")
}

func (s *svgDoc) polylineDash(pts [][2]float64, color string, width float64, dash string) {
	if len(pts) == 0 {
		return
	}
	d := ""
	if dash != "" {
		d = fmt.Sprintf(` stroke-dasharray="%s"`, dash)
	}
	var b strings.Builder
	for _, p := range pts {
		fmt.Fprintf(&b, "%.1f,%.1f ", p[0], p[1])
	}
	fmt.Fprintf(&s.b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="%.1f"%s/>`+"\n", strings.TrimSpace(b.String()), color, width, d)
}

func (s *svgDoc) circle(x, y, r float64, color string) {
	fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>`+"\n", x, y, r, color)
}

func (s *svgDoc) rect(x, y, w, h float64, stroke string) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="%s"/>`+"\n", x, y, w, h, stroke)
}

func (s *svgDoc) String() string { return s.b.String() + "</svg>\n" }

// latencySVG draws, per configuration, the CDF of end-to-end latency (log
// x axis) for raw GossipSub and p2pchat.
func latencySVG(series []latencySeries) string {
	if len(series) == 0 {
		return ""
	}
	cols := 2
	rows := (len(series) + cols - 1) / cols
	pw, ph := 420.0, 260.0
	s := newSVG(int(pw)*cols+20, int(ph)*rows+70)
	s.text(float64(s.w)/2, 22, "middle", colText, 15, "End-to-end latency CDF: Send/Publish → delivered event (paced stream, loopback TCP)")
	// legend, laid out left to right (about 6.3 px per character at 12 px)
	items := []struct{ col, dash, name string }{
		{colRaw, "", "raw GossipSub (same options as p2pchat)"},
		{colP2P, "", "p2pchat"},
		{colSigned, "5,3", "raw GossipSub + StrictSign (reference)"},
	}
	width := 0.0
	for _, it := range items {
		width += 30 + 6.3*float64(len(it.name)) + 25
	}
	x := (float64(s.w) - width) / 2
	for _, it := range items {
		s.line(x, 42, x+25, 42, it.col, 2.5, it.dash)
		s.text(x+30, 46, "start", colText, 12, it.name)
		x += 30 + 6.3*float64(len(it.name)) + 25
	}
	// common x range
	lo, hi := math.Inf(1), 0.0
	for _, sr := range series {
		for _, d := range [][]time.Duration{sr.raw, sr.p2p, sr.rawSigned} {
			if len(d) > 0 {
				lo = math.Min(lo, math.Max(ms(d[0]), 0.01))
				hi = math.Max(hi, ms(d[len(d)-1]))
			}
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 0.1, 100
	}
	lx0, lx1 := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if lx1 <= lx0 {
		lx1 = lx0 + 1
	}
	for i, sr := range series {
		ox := 10 + float64(i%cols)*pw
		oy := 60 + float64(i/cols)*ph
		l, r, t, b := ox+50, ox+pw-15, oy+25, oy+ph-40
		xOf := func(v float64) float64 {
			v = math.Max(v, math.Pow(10, lx0))
			return l + (math.Log10(v)-lx0)/(lx1-lx0)*(r-l)
		}
		yOf := func(f float64) float64 { return b - f*(b-t) }
		for e := lx0; e <= lx1; e++ {
			x := xOf(math.Pow(10, e))
			s.line(x, t, x, b, colGrid, 1, "")
			s.text(x, b+15, "middle", colText, 11, fmtTick(math.Pow(10, e)))
		}
		for _, f := range []float64{0, .25, .5, .75, .99} {
			y := yOf(f)
			dash := ""
			if f == .99 || f == .5 {
				dash = "4,3"
			}
			s.line(l, y, r, y, colGrid, 1, dash)
			s.text(l-5, y+4, "end", colText, 10, fmt.Sprintf("%g", f))
		}
		s.rect(l, t, r-l, b-t, "#999999")
		title := sr.label
		if sr.p2pOnDisk {
			title = strings.TrimSuffix(title, ", disk") + ", p2pchat on disk"
		}
		s.text((l+r)/2, t-8, "middle", colText, 11, fmt.Sprintf("%s: p99 raw %.2f ms, p2pchat %.2f ms", title, ms(pct(sr.raw, .99)), ms(pct(sr.p2p, .99))))
		s.text((l+r)/2, b+32, "middle", colText, 11, "latency (ms, log scale)")
		for k, d := range [][]time.Duration{sr.raw, sr.p2p} {
			col := colRaw
			if k == 1 {
				col = colP2P
			}
			s.polyline(cdfPoints(d, xOf, yOf), col, 2)
		}
		if len(sr.rawSigned) > 0 {
			s.polylineDash(cdfPoints(sr.rawSigned, xOf, yOf), colSigned, 1.8, "5,3")
		}
	}
	return s.String()
}

// cdfPoints is a step CDF, thinned to at most ~400 points.
func cdfPoints(d []time.Duration, xOf, yOf func(float64) float64) [][2]float64 {
	n := len(d)
	if n == 0 {
		return nil
	}
	step := max(1, n/400)
	var pts [][2]float64
	prevY := yOf(0)
	for i := 0; i < n; i += step {
		x := xOf(ms(d[i]))
		pts = append(pts, [2]float64{x, prevY})
		prevY = yOf(float64(i+1) / float64(n))
		pts = append(pts, [2]float64{x, prevY})
	}
	x := xOf(ms(d[n-1]))
	pts = append(pts, [2]float64{x, prevY}, [2]float64{x, yOf(1)})
	return pts
}

func fmtTick(v float64) string {
	switch {
	case v >= 1000:
		return fmt.Sprintf("%gs", v/1000)
	case v >= 1:
		return fmt.Sprintf("%g", v)
	default:
		return fmt.Sprintf("%g", v)
	}
}

// rotationSVG draws rotation time (p50 with min–max bars) against group
// size, per transport, with the 1 s target and the transfers per rotation.
func rotationSVG(points []rotationPoint) string {
	var ok []rotationPoint
	for _, p := range points {
		if len(p.took) > 0 {
			ok = append(ok, p)
		}
	}
	if len(ok) == 0 {
		return ""
	}
	W, H := 720.0, 440.0
	s := newSVG(int(W), int(H))
	s.text(W/2, 24, "middle", colText, 15, "Removal → every remaining member holds the new key")
	l, r, t, b := 70.0, W-30, 60.0, H-60
	minX, maxX, minY, maxY := math.Inf(1), 0.0, math.Inf(1), 1000.0
	for _, p := range ok {
		minX = math.Min(minX, float64(p.size))
		maxX = math.Max(maxX, float64(p.size))
		minY = math.Min(minY, ms(p.took[0]))
		maxY = math.Max(maxY, ms(p.took[len(p.took)-1]))
	}
	// log–log axes: sizes span 10–200, times a few ms to a second.
	lx0, lx1 := math.Log10(minX)-0.12, math.Log10(maxX)+0.12
	ly0, ly1 := math.Floor(math.Log10(math.Max(minY, 0.1))), math.Log10(maxY*1.6)
	xOf := func(v float64) float64 { return l + (math.Log10(v)-lx0)/(lx1-lx0)*(r-l) }
	yOf := func(v float64) float64 { return b - (math.Log10(math.Max(v, 1e-3))-ly0)/(ly1-ly0)*(b-t) }
	var xt []float64
	for _, v := range []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000} {
		if math.Log10(v) >= lx0 && math.Log10(v) <= lx1 {
			xt = append(xt, v)
		}
	}
	for _, v := range xt {
		s.line(xOf(v), t, xOf(v), b, colGrid, 1, "")
		s.text(xOf(v), b+16, "middle", colText, 11, fmt.Sprintf("%g", v))
	}
	for e := ly0; e <= ly1; e++ {
		for _, m := range []float64{1, 2, 5} {
			v := m * math.Pow(10, e)
			if math.Log10(v) > ly1+1e-9 {
				continue
			}
			s.line(l, yOf(v), r, yOf(v), colGrid, 1, "")
			s.text(l-6, yOf(v)+4, "end", colText, 11, fmtTick(v))
		}
	}
	s.rect(l, t, r-l, b-t, "#999999")
	s.line(l, yOf(1000), r, yOf(1000), "#cc0000", 1.5, "6,4")
	s.text(r-4, yOf(1000)-5, "end", "#cc0000", 11, "target for 100 members: 1 s")
	s.text((l+r)/2, H-20, "middle", colText, 12, "group size n, log scale (members holding the new key; n−1 key transfers needed)")
	fmt.Fprintf(&s.b, `<text x="18" y="%.1f" text-anchor="middle" fill="%s" font-size="12" transform="rotate(-90 18 %.1f)">time (ms, log scale): p50, bar = min–max</text>`+"\n", (t+b)/2, colText, (t+b)/2)
	legendY := 44.0
	for k, tr := range []string{"mocknet", "loopback"} {
		col := colP2P
		if tr == "loopback" {
			col = colLoop
		}
		var pts [][2]float64
		any := false
		for _, p := range ok {
			if p.transport != tr {
				continue
			}
			any = true
			x := xOf(float64(p.size))
			if tr == "loopback" {
				x += 8 // beside, not on top of, the mocknet point of the same size
			}
			p50 := ms(pct(p.took, .5))
			lo, hi := ms(p.took[0]), ms(p.took[len(p.took)-1])
			s.line(x, yOf(lo), x, yOf(hi), col, 1.5, "")
			s.line(x-4, yOf(lo), x+4, yOf(lo), col, 1.5, "")
			s.line(x-4, yOf(hi), x+4, yOf(hi), col, 1.5, "")
			s.circle(x, yOf(p50), 4, col)
			pts = append(pts, [2]float64{x, yOf(p50)})
			lbl := fmt.Sprintf("%s ms, %.0f transfers", fmtMs(p50), mean(p.transfers))
			switch {
			case tr == "loopback":
				s.text(x+7, yOf(p50)-8, "start", col, 10, lbl)
			case x > r-170:
				s.text(x-8, yOf(p50)+16, "end", col, 10, lbl)
			default:
				s.text(x+8, yOf(p50)+16, "start", col, 10, lbl)
			}
		}
		if !any {
			continue
		}
		s.polyline(pts, col, 1.5)
		lx := l + 10 + float64(k)*330
		s.circle(lx, legendY-4, 4, col)
		name := "mocknet (sparse: admin + 6 random peers each)"
		if tr == "loopback" {
			name = "loopback TCP (full mesh)"
		}
		s.text(lx+8, legendY, "start", colText, 11, name)
	}
	return s.String()
}

func fmtMs(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}
