package store

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// TestDiskFullRefusesEveryWriteAndResumes: below the floor every write is
// refused with the figures and nothing is written (no sequence number
// taken); reads go on; once space returns, writes resume by themselves, and
// each transition is reported once.
func TestDiskFullRefusesEveryWriteAndResumes(t *testing.T) {
	var free atomic.Uint64
	free.Store(1 << 30)
	var transitions []bool
	s, err := OpenWith(t.TempDir(), Options{MinFree: 64 << 20, OnSpace: func(low bool, _ uint64) { transitions = append(transitions, low) }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.space.free = func(string) (uint64, error) { return free.Load(), nil }
	g := gid(1)
	me := []byte("me")
	build := func(seq, _ uint64) ([]byte, error) { return []byte{byte(seq)}, nil }
	if seq, err := s.AppendOwn(g, "seq", "", me, build); err != nil || seq != 1 {
		t.Fatalf("append with room: seq %d, %v", seq, err)
	}

	free.Store(10 << 20)
	writes := map[string]func() error{
		"AppendOwn":  func() error { _, err := s.AppendOwn(g, "seq", "", me, build); return err },
		"PutMessage": func() error { _, _, err := s.PutMessage(g, []byte("bob"), 1, []byte("x")); return err },
		"PutMessages": func() error {
			_, err := s.PutMessages(g, []NewMessage{{Sender: []byte("bob"), Seq: 2, Record: []byte("y")}})
			return err
		},
		"UpdateMessage": func() error { return s.UpdateMessage(g, me, 1, []byte("z")) },
		"Commit":        func() error { return s.Commit([]Write{OpWrite(g, gid(2), []byte("op"))}) },
		"PutGroup":      func() error { return s.PutGroup(g, []byte("rec")) },
		"PutOp":         func() error { return s.PutOp(g, gid(3), []byte("op")) },
		"PutKey":        func() error { return s.PutKey(g, gid(4), []byte("key")) },
		"PutAddrs":      func() error { return s.PutAddrs([]byte("peer"), []byte("addrs")) },
		"DeleteGroup":   func() error { return s.DeleteGroup(g) },
	}
	for name, write := range writes {
		err := write()
		var full *DiskFullError
		if !errors.Is(err, ErrDiskFull) || !errors.As(err, &full) || full.Free != 10<<20 || full.Need != 64<<20 {
			t.Fatalf("%s below the floor: %v", name, err)
		}
	}
	err = s.PutOp(g, gid(3), []byte("op"))
	if want := "disk full: 10 MiB free in " + s.space.dir + ", the store keeps at least 64 MiB free; nothing was written"; err == nil || err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
	// Reads go on, and nothing of the refused writes is there.
	if rec, err := s.Message(g, me, 1); err != nil || !bytes.Equal(rec, []byte{1}) {
		t.Fatalf("read below the floor: %q, %v", rec, err)
	}
	if _, err := s.Message(g, []byte("bob"), 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a refused message was stored: %v", err)
	}
	if c, err := s.Counter(g, "seq"); err != nil || c != 1 {
		t.Fatalf("refused appends moved the counter to %d (%v)", c, err)
	}

	free.Store(1 << 30)
	if seq, err := s.AppendOwn(g, "seq", "", me, build); err != nil || seq != 2 {
		t.Fatalf("append once space is back: seq %d, %v", seq, err)
	}
	if len(transitions) != 2 || !transitions[0] || transitions[1] {
		t.Fatalf("transitions %v, want [low, resumed]", transitions)
	}
}

// TestDiskFullOnRealFilesystem fills a small tmpfs for real: the store
// refuses writes before badger can fault on a page with no block behind it
// (the process would die with SIGBUS), every write it accepted is readable,
// it opens again while the disk is still full, and writes resume when
// space is freed. Needs root for the mount, as CI runs.
func TestDiskFullOnRealFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=192m,mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	}()
	db := filepath.Join(dir, "db")
	const floor = 64 << 20
	s, err := OpenWith(db, Options{MinFree: floor})
	if err != nil {
		t.Fatal(err)
	}
	// Leave the store about 40 MiB above its floor, then write until it
	// refuses.
	free, err := freeBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(dir, "filler")
	if err := fill(filler, free-floor-40<<20); err != nil {
		t.Fatal(err)
	}
	g := gid(7)
	me := []byte("me")
	// Message records are ciphertext: incompressible, as these are.
	record := func(seq uint64) []byte {
		b := make([]byte, 16<<10)
		rand.NewChaCha8([32]byte{byte(seq), byte(seq >> 8), byte(seq >> 16)}).Read(b)
		return b
	}
	var accepted uint64
	for i := 0; ; i++ {
		if i > 20_000 {
			t.Fatal("the store never refused a write on a filling disk")
		}
		seq, err := s.AppendOwn(g, "seq", "", me, func(seq uint64, _ uint64) ([]byte, error) { return record(seq), nil })
		if errors.Is(err, ErrDiskFull) {
			break
		}
		if err != nil {
			t.Fatalf("write %d: %v (want success or ErrDiskFull)", i, err)
		}
		accepted = seq
	}
	if accepted == 0 {
		t.Fatal("nothing accepted before the floor")
	}
	check := func(s *Store) {
		t.Helper()
		for seq := uint64(1); seq <= accepted; seq++ {
			if rec, err := s.Message(g, me, seq); err != nil || !bytes.Equal(rec, record(seq)) {
				t.Fatalf("accepted message %d: %d bytes, %v", seq, len(rec), err)
			}
		}
	}
	check(s)
	if err := s.Close(); err != nil && !errors.Is(err, ErrCloseTimeout) {
		t.Fatalf("close on a full disk: %v", err)
	}
	// Started again while still full: it opens, reads, refuses writes.
	s, err = OpenWith(db, Options{MinFree: floor})
	if err != nil {
		t.Fatalf("open on a full disk: %v", err)
	}
	defer s.Close()
	check(s)
	// Closing gave back what badger had allocated ahead (its memtable
	// logs); take it again, so the disk is as full as it was.
	if free, err := freeBytes(dir); err != nil {
		t.Fatal(err)
	} else if free >= floor {
		if err := fill(filler+"2", free-floor+1<<20); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.AppendOwn(g, "seq", "", me, func(seq uint64, _ uint64) ([]byte, error) { return record(seq), nil }); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("write after a restart on a full disk: %v", err)
	}
	for _, f := range []string{filler, filler + "2"} {
		if err := os.Remove(f); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	seq, err := s.AppendOwn(g, "seq", "", me, func(seq uint64, _ uint64) ([]byte, error) { return record(seq), nil })
	if err != nil || seq != accepted+1 {
		t.Fatalf("write once space is back: seq %d (want %d), %v", seq, accepted+1, err)
	}
}

// fill writes n bytes to path (real blocks, not a hole) and syncs them.
func fill(path string, n uint64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	for n > 0 {
		k := min(n, uint64(len(buf)))
		if _, err := f.Write(buf[:k]); err != nil {
			f.Close()
			return err
		}
		n -= k
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
