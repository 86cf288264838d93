package faults

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDiskFull (f): A's home is on a 160 MiB tmpfs and A keeps 48 MiB free
// (--min-free-disk 48). The disk is filled to 8 MiB under that floor: each
// send on A fails with exactly one line starting "p2pchat: error: disk
// full:", A keeps running and reading, B goes on sending to it. The filler
// is removed: A's next send succeeds with no restart, and every accepted
// message (B's sent while A was full included) is on both; no refused send
// shows anywhere.
func TestDiskFull(t *testing.T) {
	gate(t)
	t.Parallel()
	rounds := 1
	if *soak {
		rounds = 4
	}
	tp := newTopo(t, 2)
	mnt := t.TempDir()
	sh(t, "mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "tmpfs", mnt)
	t.Cleanup(func() { unmount(t, mnt) })
	const floorMiB = 48
	a := newDaemon(t, tp, 1, "A", filepath.Join(mnt, "home"), nil, "--min-free-disk", fmt.Sprint(floorMiB))
	b := newDaemon(t, tp, 2, "B", "", nil)
	gid := formGroup(t, "diskfull", a, b)
	l := &ledger{gid: gid}
	burst(l, "before", 5, a, b)
	var refused []string
	var resumed time.Duration
	for k := 0; k < rounds; k++ {
		var st unix.Statfs_t
		if err := unix.Statfs(mnt, &st); err != nil {
			t.Fatal(err)
		}
		free := st.Bavail * uint64(st.Bsize)
		if free < (floorMiB-8)<<20 {
			t.Fatalf("the tmpfs has only %d MiB free", free>>20)
		}
		filler := filepath.Join(mnt, "filler")
		writeZeros(t, filler, free-(floorMiB-8)<<20)
		for i := 0; i < 5; i++ {
			text := fmt.Sprintf("full%d A %d", k, i)
			r := l.send(a, text)
			lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
			if r.code == 0 || len(lines) != 1 || !strings.HasPrefix(lines[0], "p2pchat: error: disk full:") {
				t.Fatalf("send on a full disk: want one line starting %q and a failure: %s", "p2pchat: error: disk full:", r)
			}
			refused = append(refused, text)
			l.send(b, fmt.Sprintf("full%d B %d", k, i))
		}
		if !a.running() {
			t.Fatalf("A stopped on a full disk\nstderr:\n%s", a.stderr())
		}
		a.messages(gid) // reads go on
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
		freed := time.Now()
		if r := l.send(a, fmt.Sprintf("freed%d A", k)); r.code != 0 {
			t.Fatalf("A's first send after space came back: %s", r)
		}
		resumed = max(resumed, time.Since(freed))
		burst(l, fmt.Sprintf("after%d", k), 5, a, b)
	}
	took, _ := converge(t, 90*time.Second, l, []*daemon{a, b}, everyone)
	for _, d := range []*daemon{a, b} {
		for _, m := range d.messages(gid) {
			for _, x := range refused {
				if m.Text == x {
					t.Errorf("%s shows %q, a send that was refused", d.name, x)
				}
			}
		}
	}
	r := audit(t, fmt.Sprintf("(f) disk full ×%d (tmpfs)", rounds), l, []*daemon{a, b}, everyone, nobody, took)
	r.note = fmt.Sprintf("%d sends refused with one disk-full line, none shown; A resumed with its next send", len(refused))
	report(t, r)
}

// writeZeros writes n bytes of real blocks to path.
func writeZeros(t *testing.T, path string, n uint64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, uint64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			t.Fatalf("fill: %v", err)
		}
		n -= k
	}
}
