package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// microBenchArgs is the `go test` invocation of the micro scenario, less
// its -benchtime.
var microBenchArgs = []string{"test", "-run", "^$", "-bench", "PerMessage", "-count", "1"}

// microPackages hold the PerMessage benchmarks.
var microPackages = []string{"./gossip", "./node"}

// microBenchtime is the fixed iteration count per benchmark.
func microBenchtime(cfg *config) string {
	if cfg.quick {
		return "300x"
	}
	return "2000x"
}

// microCommand is the command line the micro scenario runs, for notes and
// the docs.
func microCommand(cfg *config) string {
	return "go test -run '^$' -bench PerMessage -benchtime " + microBenchtime(cfg) + " -count 1 " + strings.Join(microPackages, " ")
}

// benchStat is one line of `go test -bench` output.
type benchStat struct {
	nsOp, bytesOp, allocsOp float64
}

// procSuffix is the -GOMAXPROCS suffix go test appends to benchmark names.
var procSuffix = regexp.MustCompile(`-\d+$`)

// parseBenchOutput reads `BenchmarkName/sub-N  iters  V ns/op  V MB/s  V
// B/op  V allocs/op` lines, keyed by name without the GOMAXPROCS suffix.
func parseBenchOutput(out []byte) map[string]benchStat {
	got := make(map[string]benchStat)
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		if _, err := strconv.Atoi(f[1]); err != nil {
			continue
		}
		s := benchStat{nsOp: math.NaN(), bytesOp: math.NaN(), allocsOp: math.NaN()}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				break
			}
			switch f[i+1] {
			case "ns/op":
				s.nsOp = v
			case "B/op":
				s.bytesOp = v
			case "allocs/op":
				s.allocsOp = v
			}
		}
		if !math.IsNaN(s.nsOp) {
			got[procSuffix.ReplaceAllString(f[0], "")] = s
		}
	}
	return got
}

// outputTail is the last lines of go test output that are not benchmark
// results, for an error note.
func outputTail(out []byte, n int) string {
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "Benchmark") || strings.HasPrefix(l, "goos:") || strings.HasPrefix(l, "goarch:") || strings.HasPrefix(l, "cpu:") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "; ")
}

// runMicro runs the per-message Go benchmarks of gossip and node (issue #5)
// with `go test` and reports each of p2pchat's per-message costs beside the
// raw cryptographic floor: the "raw" column of these rows is the baseline
// named in the note, and the ratio is p2pchat ÷ baseline.
func runMicro(cfg *config, res *results, _ *plotData) {
	const sec = "Per-message CPU cost (go test -bench; the raw column is the baseline in the note)"
	nan := math.NaN()
	args := append(append(append([]string(nil), microBenchArgs...), "-benchtime", microBenchtime(cfg)), microPackages...)
	logf("micro: %s", microCommand(cfg))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = cfg.root
	t0 := time.Now()
	out, runErr := cmd.CombinedOutput()
	took := time.Since(t0)
	got := parseBenchOutput(out)
	if runErr != nil {
		runErr = fmt.Errorf("`%s`: %v: %s", microCommand(cfg), runErr, outputTail(out, 12))
		logf("micro: %v", runErr)
		if len(got) == 0 {
			res.fail(sec, "go test -bench PerMessage", runErr)
			return
		}
	}

	const (
		stdSend = "baseline: crypto/ed25519 Sign + XChaCha20-Poly1305 Seal with a random 24-byte nonce (BenchmarkPerMessageFloorSignSeal)"
		voiSend = "baseline: curve25519-voi Sign (the signer p2pchat uses) + XChaCha20-Poly1305 Seal with a random 24-byte nonce (BenchmarkPerMessageFloorSignSealVoi), the fastest single-signature floor"
		stdRecv = "baseline: crypto/ed25519 Verify + XChaCha20-Poly1305 Open (BenchmarkPerMessageFloorVerifyOpen)"
		voiRecv = "baseline: curve25519-voi VerifyExpandedWithOptions, pre-expanded key, FIPS 186-5 + XChaCha20-Poly1305 Open (BenchmarkPerMessageFloorVerifyVoi), the fastest single-signature floor"
	)
	specs := []struct {
		metric, bench, base, note string
	}{
		{"seal + sign vs stdlib floor", "BenchmarkPerMessageSealSign", "BenchmarkPerMessageFloorSignSeal",
			stdSend + "; p2pchat: gossip.SealEnvelopeFrom (protobuf content and envelope, associated data, signs with curve25519-voi)"},
		{"seal + sign vs voi floor", "BenchmarkPerMessageSealSign", "BenchmarkPerMessageFloorSignSealVoi",
			voiSend + "; p2pchat: gossip.SealEnvelopeFrom"},
		{"verify + open vs stdlib floor", "BenchmarkPerMessageVerifyOpen", "BenchmarkPerMessageFloorVerifyOpen",
			stdRecv + "; p2pchat: gossip.OpenEnvelope then Envelope.Open"},
		{"verify + open vs voi floor", "BenchmarkPerMessageVerifyOpen", "BenchmarkPerMessageFloorVerifyVoi",
			voiRecv + "; p2pchat: gossip.OpenEnvelope then Envelope.Open"},
		{"verify + open, envelopes of a batch, vs voi floor", "BenchmarkPerMessageVerifyOpenBatch", "BenchmarkPerMessageFloorVerifyVoi",
			voiRecv + "; p2pchat: one topic message carrying a sender's batch (64 × 256 B, or as many 4 KiB as fit), signatures verified as one batch, then each decrypted; per envelope"},
		{"topic decode + verify (gossip.DecodeInbound)", "BenchmarkPerMessageDecodeInbound", "BenchmarkPerMessageFloorVerifyOpen",
			stdRecv + "; p2pchat: the validator's decode step on the topic message bytes, no decryption"},
		{"validator (decode + verify + policy)", "BenchmarkPerMessageValidator", "BenchmarkPerMessageFloorVerifyOpen",
			stdRecv + "; p2pchat: on a real node, gossip.DecodeInbound then the group policy (membership, replay lookup in the store), every message accepted; no decryption"},
	}
	sizes := []struct{ sub, label string }{{"256B", "256 B"}, {"4KiB", "4 KiB"}}
	for _, sz := range sizes {
		for _, s := range specs {
			metric := fmt.Sprintf("%s, %s", s.metric, sz.label)
			ours, ok := got[s.bench+"/"+sz.sub]
			if !ok {
				err := runErr
				if err == nil {
					err = fmt.Errorf("%s/%s missing from the output of `%s`", s.bench, sz.sub, microCommand(cfg))
				}
				res.fail(sec, metric, err)
				continue
			}
			r := row{Section: sec, Metric: metric, Unit: "µs/msg", Raw: nan, P2P: ours.nsOp / 1e3}
			note := s.note + fmt.Sprintf("; p2pchat %s", allocNote(ours))
			if base, ok := got[s.base+"/"+sz.sub]; ok {
				r.Raw = base.nsOp / 1e3
				note += fmt.Sprintf(", baseline %s", allocNote(base))
			} else {
				note += fmt.Sprintf("; baseline %s/%s not measured", s.base, sz.sub)
			}
			r.Note = note
			res.add(r)
		}
	}
	note := fmt.Sprintf("`%s` took %v (build included); GOMAXPROCS %s", microCommand(cfg), took.Round(100*time.Millisecond), gomaxprocsOf(out))
	if runErr != nil {
		note += "; go test failed: " + runErr.Error()
	}
	res.add(row{Section: sec, Metric: "benchmark run time (not a per-message cost)", Unit: "s", Raw: nan, P2P: took.Seconds(), Note: note})
}

// allocNote is "N allocs, B B per message".
func allocNote(s benchStat) string {
	if math.IsNaN(s.allocsOp) || math.IsNaN(s.bytesOp) {
		return "allocations not reported"
	}
	return fmt.Sprintf("%.0f allocs, %.0f B per message", s.allocsOp, s.bytesOp)
}

// gomaxprocsOf reads the -N suffix of the first benchmark line ("1" when
// go test printed none).
func gomaxprocsOf(out []byte) string {
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && strings.HasPrefix(f[0], "Benchmark") {
			if m := procSuffix.FindString(f[0]); m != "" {
				return m[1:]
			}
			return "1"
		}
	}
	return "unknown"
}

// microMethodology is the micro scenario's paragraph of "How each number
// is measured".
func microMethodology(cfg *config) string {
	return `
**Per-message CPU cost (micro).** Go ` + "`testing.B`" + ` benchmarks, run by the harness as
` + "`" + microCommand(cfg) + "`" + ` from the module root (the same command reproduces them;
` + "`-benchmem`" + ` is not needed, the benchmarks report allocations). Each runs at 256 B and 4 KiB of
message text (or plaintext, for the floors), a fixed number of iterations, and checks every result
(a failed verification or decryption, or a validator verdict other than accept, fails the run).
*p2pchat*: ` + "`BenchmarkPerMessageSealSign`" + ` = ` + "`gossip.SealEnvelopeFrom`" + ` (protobuf content,
XChaCha20-Poly1305 with a random nonce and the sender/sequence associated data, protobuf envelope,
Ed25519 signature over the domain-separated body); ` + "`BenchmarkPerMessageVerifyOpen`" + ` =
` + "`gossip.OpenEnvelope`" + ` (signature check, envelope decode) then ` + "`Envelope.Open`" + ` (decrypt, decode
content); ` + "`BenchmarkPerMessageDecodeInbound`" + ` = ` + "`gossip.DecodeInbound`" + ` on the marshalled topic
message, the validator's decode step; ` + "`BenchmarkPerMessageValidator`" + ` (node/bench_test.go) = exactly
what the topic validator runs for a message from another member, on a real node of a two-member group
(in-memory store): ` + "`gossip.DecodeInbound`" + ` then the group's policy (membership, the replay lookup
in the store), over 512 pre-built envelopes with distinct unstored sequence numbers, so every
message is accepted as a new one would be. Signing and verification in p2pchat use curve25519-voi
(verification with a cached expanded key and the FIPS 186-5 equation). *Baselines* (the "raw
GossipSub" column of these rows; the note says which; ratio = p2pchat ÷ baseline): the raw
floor with the standard library, ` + "`crypto/ed25519`" + ` Sign/Verify over the ciphertext plus
` + "`golang.org/x/crypto/chacha20poly1305`" + ` XChaCha20-Poly1305 Seal (24-byte nonce from crypto/rand,
generation included) / Open, no framing or associated data (` + "`BenchmarkPerMessageFloorSignSeal`" + `,
` + "`BenchmarkPerMessageFloorVerifyOpen`" + `); and the fastest single-signature floor, the same with
curve25519-voi's ` + "`Sign`" + ` and ` + "`VerifyExpandedWithOptions`" + ` with a pre-expanded key and
FIPS 186-5 options (` + "`BenchmarkPerMessageFloorSignSealVoi`" + `, ` + "`BenchmarkPerMessageFloorVerifyVoi`" + `).
The validator rows are compared with the verify + open floor although the validator does not decrypt.
No targets: these rows show where the per-message time goes.
`
}
