package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPowerCut (e): A's home is on an ext4 filesystem on a loop device.
// While A sends in a loop it is SIGKILLed and, at once, the loop device's
// backing image is copied as it stands: what ext4 and the kernel still hold
// in memory (not yet written to the device) is not in the copy, as after a
// power cut. A restarts on the copy (ext4 replays its journal), cut off from
// the network: every send that returned success is there, and its identity
// is the same. Then it reconnects and everyone converges. (No dm-flakey
// here: the kernel has no device-mapper; the copy is the device at the cut.)
func TestPowerCut(t *testing.T) {
	gate(t)
	t.Parallel()
	cuts := 1
	if *soak {
		cuts = 5
	}
	tp := newTopo(t, 2)
	dir := t.TempDir()
	img := filepath.Join(dir, "disk0.img")
	sh(t, "truncate", "-s", "512M", img)
	sh(t, "mkfs.ext4", "-q", "-F", img)
	mnt := mountImage(t, img, filepath.Join(dir, "mnt0"))

	a := newDaemon(t, tp, 1, "A", filepath.Join(mnt, "home"), nil, "--min-free-disk", "16")
	b := newDaemon(t, tp, 2, "B", "", nil)
	gid := formGroup(t, "powercut", a, b)
	l := &ledger{gid: gid}
	var lostTotal int
	for k := 0; k < cuts; k++ {
		var stop atomic.Bool
		var aSends atomic.Int64
		var wg sync.WaitGroup
		for _, d := range []*daemon{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					if r := l.send(d, fmt.Sprintf("cut%d %s %d", k, d.name, i)); r.code == 0 && d == a {
						aSends.Add(1)
					} else if r.code != 0 {
						time.Sleep(50 * time.Millisecond)
					}
				}
			}()
		}
		eventually(t, 60*time.Second, "A accepts 30 sends", func() (bool, string) { return aSends.Load() >= 30, "" })

		// The cut: kill, then copy the device as it is, unsynced.
		a.kill()
		img2 := filepath.Join(dir, fmt.Sprintf("disk%d.img", k+1))
		sh(t, "cp", "--sparse=always", img, img2)
		stop.Store(true)
		wg.Wait()
		unmount(t, mnt)
		os.Remove(img)
		img = img2
		mnt = mountImage(t, img, filepath.Join(dir, fmt.Sprintf("mnt%d", k+1)))

		tp.setLink(1, false)
		a.home = filepath.Join(mnt, "home")
		a.start() // waitReady checks the peer id is the same
		own := make(map[string]bool)
		for _, m := range a.messages(gid) {
			if m.Sender == a.id.PeerID && m.Status == "ok" {
				own[m.Text] = true
			}
		}
		lost := 0
		for _, s := range l.snapshot() {
			if s.by == a && !own[s.text] {
				lost++
				if lost <= 5 {
					t.Errorf("cut %d: A accepted %q but does not have it after the power cut", k+1, s.text)
				}
			}
		}
		lostTotal += lost
		t.Logf("cut %d: A restarted on the cut image shows %d messages of its own; %d accepted sends missing", k+1, len(own), lost)
		tp.setLink(1, true)
	}
	took, _ := converge(t, 90*time.Second, l, []*daemon{a, b}, everyone)
	r := audit(t, fmt.Sprintf("(e) power cut ×%d (loop ext4)", cuts), l, []*daemon{a, b}, everyone, nobody, took)
	r.note = fmt.Sprintf("%d of A's accepted sends missing right after restart (before resync); identity kept", lostTotal)
	report(t, r)
}

// mountImage loop-mounts the ext4 image at dir; t.Cleanup unmounts it.
func mountImage(t *testing.T, img, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	// commit=60: ext4 commits its journal every 60 s, not 5, so what was
	// not synced really is still only in memory at the cut.
	sh(t, "mount", "-o", "loop,commit=60", img, dir)
	t.Cleanup(func() { unmount(t, dir) })
	return dir
}

func unmount(t *testing.T, dir string) {
	out, err := exec.Command("umount", dir).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "not mounted") {
		t.Errorf("umount %s: %v: %s", dir, err, out)
	}
}
