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
	heads := []string{headStart, headChat, headJoin, headRemove, headHeal, headSummary}
	sections := make(map[string]string)
	rest := text
	for i, h := range heads {
		at := strings.Index(rest, h+":")
		if at < 0 {
			t.Fatalf("output lacks heading %q (or it is out of order)", h)
		}
		rest = rest[at:]
		end := len(rest)
		if i+1 < len(heads) {
			if n := strings.Index(rest, heads[i+1]+":"); n >= 0 {
				end = n
			}
		}
		sections[h] = rest[:end]
	}
	expect := func(h string, wants ...string) {
		t.Helper()
		for _, want := range wants {
			if !strings.Contains(sections[h], want) {
				t.Errorf("step %q lacks %q", h, want)
			}
		}
	}
	expect(headChat,
		"bob sees alice: hi, this is alice",
		"carol sees bob: hello from bob",
		"alice sees carol: carol here, hi all")
	expect(headJoin,
		"alice sends: welcome, dave",
		"dave sees alice: welcome, dave",
		"dave sees alice: you joined just now",
		"bob and carol see both lines too",
		"from bob, 0 from alice and carol")
	if !regexp.MustCompile(`dave got [0-9a-f]{8} from bob, (offered|asked for)`).MatchString(sections[headJoin]) {
		t.Error("step join does not say how dave got his key")
	}

	// The new key of the rotation is named, and named again as the key
	// carol lacks and dave waits for.
	rot := regexp.MustCompile(`old key ([0-9a-f]{8}) → new key ([0-9a-f]{8})`).FindStringSubmatch(sections[headRemove])
	if rot == nil {
		t.Fatal("output does not show the rotation old key → new key")
	}
	if rot[1] == rot[2] {
		t.Fatalf("rotation kept key %s", rot[1])
	}
	expect(headRemove,
		"it reaches bob (1 transfer), not dave",
		"bob sees alice: carol can't read this",
		"carol cannot read them",
		"does not hold "+rot[2],
		"capture the ciphertext")
	expect(headHeal,
		"[waiting for key "+rot[2]+"]",
		"dave publishes a key request for "+rot[2],
		"dave sees alice: nothing gets lost",
		"nothing lost")
	heal := sections[headHeal]
	if !regexp.MustCompile(`decrypted \d+ ms after it arrived`).MatchString(heal) {
		t.Error("output does not show the measured self-heal delay")
	}
	// Waiting lines come before the request, and the request before the
	// decrypted lines.
	w, req, dcr := strings.Index(heal, "waiting for key"), strings.Index(heal, "key request"), strings.Index(heal, "after it arrived")
	if w < 0 || req < w || dcr < req {
		t.Error("self-heal is not told in order: waiting, key request, decrypted")
	}
	expect(headSummary, "every check passed", "closed all 4 nodes")
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
