package demo

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestDemo runs the whole demo: it must pass every one of its own checks,
// narrate every step, and leave nothing running.
func TestDemo(t *testing.T) {
	defer goleak.VerifyNone(t)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out bytes.Buffer
	start := time.Now()
	err := Run(ctx, &out)
	took := time.Since(start)
	t.Logf("demo took %v; output:\n%s", took, out.String())
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	text := out.String()
	for _, want := range []string{
		headStart, headChat, headRemove, headHeal, headSummary,
		"bob sees alice: hi, this is alice",
		"carol sees bob: hello from bob",
		"alice sees carol: carol here, hi all",
		"bob sees alice: carol can't read this",
		"carol cannot read it",
		"waiting for key",
		"dave sees alice: nothing gets lost",
		"nothing lost",
		"closed all 4 nodes",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// The new key of the rotation is named, and named again as the key
	// carol lacks.
	rot := regexp.MustCompile(`old key ([0-9a-f]{8}) → new key ([0-9a-f]{8})`).FindStringSubmatch(text)
	if rot == nil {
		t.Fatal("output does not show the rotation old key → new key")
	}
	if rot[1] == rot[2] {
		t.Fatalf("rotation kept key %s", rot[1])
	}
	if !strings.Contains(text, "does not hold "+rot[2]) {
		t.Errorf("output does not say carol lacks the new key %s", rot[2])
	}
	if !regexp.MustCompile(`decrypted \d+ ms after it arrived`).MatchString(text) {
		t.Error("output does not show the measured self-heal delay")
	}
	// Waiting lines come before the decrypted ones.
	if w, dcr := strings.Index(text, "waiting for key"), strings.Index(text, "after it arrived"); w < 0 || dcr < w {
		t.Error("no waiting line before the decrypted line")
	}
	if took > 30*time.Second {
		t.Errorf("demo took %v, want well under 30 s", took)
	}
}

// TestDemoCancelled: a cancelled context makes Run fail cleanly, with every
// node closed.
func TestDemoCancelled(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out bytes.Buffer
	if err := Run(ctx, &out); err == nil {
		t.Fatalf("Run with a cancelled context succeeded:\n%s", out.String())
	}
}
