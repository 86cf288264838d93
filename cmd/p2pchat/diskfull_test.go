package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDaemonOnFullDisk: a daemon whose home fills up (a small tmpfs, for
// real) keeps running: its sends fail with one clear line and send nothing,
// reads go on, and once space is freed it sends again by itself and catches
// up what it could not store meanwhile; every send that succeeded reaches
// the other member. Without the free-space floor badger dies with SIGBUS
// on the first page it cannot back. Needs root for the mount, as CI runs.
func TestDaemonOnFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs (CI runs as root)")
	}
	t.Parallel()
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { // after the daemons stopped (cleanups run last-in first)
		if out, err := exec.Command("umount", "-l", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	const floorMiB = 48
	a := startDaemon(t, "A", filepath.Join(mnt, "home"), "--min-free-disk", fmt.Sprint(floorMiB))
	b := startDaemon(t, "B", newHome(t, "B"))
	gid := createGroup(t, a, "full")
	b.mustRun(t, "group", "join", invite(t, a, gid, b.id.PeerID))
	eventually(t, 20*time.Second, "both see two members", func() (bool, string) {
		ga, gb := a.groupInfo(t, gid), b.groupInfo(t, gid)
		return len(ga.Members) == 2 && len(gb.Members) == 2, fmt.Sprintf("%d and %d members", len(ga.Members), len(gb.Members))
	})
	a.mustRun(t, "send", gid, "before")

	// Fill the disk to 8 MiB under the floor.
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	free := st.Bavail * uint64(st.Bsize)
	filler := filepath.Join(mnt, "filler")
	if free < (floorMiB-8)<<20 {
		t.Fatalf("tmpfs has only %d MiB free", free>>20)
	}
	writeZeros(t, filler, free-(floorMiB-8)<<20)

	r := a.run(t, "send", gid, "while full")
	wantErrorPrefix(t, r, "p2pchat: error: disk full: ")
	if line := r.stderrLines()[0]; !strings.Contains(line, "MiB free") || !strings.Contains(line, "nothing was written") {
		t.Fatalf("error line %q does not give the free space and say nothing was sent", line)
	}
	b.mustRun(t, "send", gid, "to a full disk") // A cannot store it now
	// A keeps running and serving reads.
	if msgs := a.messages(t, gid); !readable(msgs, a.id.PeerID, "before") {
		t.Fatalf("reads on a full disk: %v", msgs)
	}
	select {
	case <-a.done:
		t.Fatalf("the daemon stopped on a full disk\nstderr:\n%s", a.stderr)
	default:
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	a.mustRun(t, "send", gid, "after") // no restart, no retry
	b.mustRun(t, "send", gid, "after too")
	for _, d := range []*daemon{a, b} {
		eventually(t, 30*time.Second, d.name+" has every accepted message", func() (bool, string) {
			msgs := d.messages(t, gid)
			for _, m := range []struct{ from, text string }{
				{a.id.PeerID, "before"}, {a.id.PeerID, "after"},
				{b.id.PeerID, "to a full disk"}, {b.id.PeerID, "after too"},
			} {
				if !readable(msgs, m.from, m.text) {
					return false, fmt.Sprintf("%q missing", m.text)
				}
			}
			return true, ""
		})
		for _, m := range d.messages(t, gid) {
			if m.Text == "while full" {
				t.Fatalf("%s shows the refused send", d.name)
			}
		}
	}
	checkNoCrash(t, "daemon A stderr", a.stderr.String())
}

// writeZeros writes n bytes of real blocks (not a hole) to path.
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
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
