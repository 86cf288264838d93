package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func gid(b byte) [32]byte { return [32]byte{b} }

func open(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestPutMessageOnceAndArrivalOrder(t *testing.T) {
	s := open(t, "")
	defer s.Close()
	g := gid(1)
	alice, bob := []byte("alice"), []byte("bob")
	for i, m := range []struct {
		sender []byte
		seq    uint64
	}{{bob, 2}, {alice, 1}, {bob, 1}} {
		stored, existing, err := s.PutMessage(g, m.sender, m.seq, []byte(fmt.Sprintf("rec%d", i)))
		if err != nil || !stored || existing != nil {
			t.Fatalf("put %d: stored=%v existing=%q err=%v", i, stored, existing, err)
		}
	}
	stored, existing, err := s.PutMessage(g, bob, 2, []byte("other"))
	if err != nil || stored || string(existing) != "rec0" {
		t.Fatalf("second put into a taken slot: stored=%v existing=%q err=%v", stored, existing, err)
	}
	var order []string
	if err := s.Messages(g, func(r []byte) error { order = append(order, string(r)); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(order) != "[rec0 rec1 rec2]" {
		t.Fatalf("arrival order %v", order)
	}
	if err := s.UpdateMessage(g, bob, 2, []byte("updated")); err != nil {
		t.Fatal(err)
	}
	if b, _ := s.Message(g, bob, 2); string(b) != "updated" {
		t.Fatalf("update lost: %q", b)
	}
	if _, err := s.Message(g, alice, 9); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing message: %v", err)
	}
	// Another group sees none of it.
	n := 0
	_ = s.Messages(gid(2), func([]byte) error { n++; return nil })
	if n != 0 {
		t.Fatalf("group 2 sees %d messages", n)
	}
}

func TestPutMessagesBatchAndIndex(t *testing.T) {
	s := open(t, "")
	defer s.Close()
	g := gid(3)
	if _, _, err := s.PutMessage(g, []byte("a"), 2, []byte("pre")); err != nil {
		t.Fatal(err)
	}
	var batch []NewMessage
	for i := uint64(1); i <= 600; i++ { // more than one chunk
		batch = append(batch, NewMessage{Sender: []byte("a"), Seq: i, Record: []byte{byte(i)}})
	}
	batch = append(batch, NewMessage{Sender: []byte("a"), Seq: 5, Record: []byte("dup in batch")})
	stored, err := s.PutMessages(g, batch)
	if err != nil {
		t.Fatal(err)
	}
	count := 0
	for i, ok := range stored {
		if ok {
			count++
		}
		if (i == 1 || i == 600) && ok {
			t.Fatalf("slot %d stored twice", batch[i].Seq)
		}
	}
	if count != 599 {
		t.Fatalf("stored %d new, want 599", count)
	}
	var seqs []uint64
	if err := s.MessageIndex(g, func(sender []byte, seq uint64) error {
		if !bytes.Equal(sender, []byte("a")) {
			t.Fatalf("sender %q", sender)
		}
		seqs = append(seqs, seq)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(seqs) != 600 || seqs[0] != 1 || seqs[599] != 600 {
		t.Fatalf("index has %d entries, %v..%v", len(seqs), seqs[0], seqs[len(seqs)-1])
	}
	n := 0
	_ = s.Messages(g, func([]byte) error { n++; return nil })
	if n != 600 {
		t.Fatalf("arrival log has %d entries", n)
	}
}

func TestAppendOwnIsAtomic(t *testing.T) {
	s := open(t, "")
	defer s.Close()
	g := gid(4)
	var wg sync.WaitGroup
	seen := sync.Map{}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				v, err := s.AppendOwn(g, "seq", "", []byte("me"), func(seq, _ uint64) ([]byte, error) {
					return []byte(fmt.Sprint(seq)), nil
				})
				if err != nil {
					t.Error(err)
					return
				}
				if _, dup := seen.LoadOrStore(v, true); dup {
					t.Errorf("sequence number %d handed out twice", v)
				}
			}
		}()
	}
	wg.Wait()
	if v, _ := s.Counter(g, "seq"); v != 400 {
		t.Fatalf("counter %d, want 400", v)
	}
	for seq := uint64(1); seq <= 400; seq++ {
		if b, err := s.Message(g, []byte("me"), seq); err != nil || string(b) != fmt.Sprint(seq) {
			t.Fatalf("message %d: %q %v", seq, b, err)
		}
	}
	n := 0
	_ = s.Messages(g, func([]byte) error { n++; return nil })
	if n != 400 {
		t.Fatalf("arrival log has %d entries", n)
	}
	// A failing build stores nothing and hands out nothing.
	if _, err := s.AppendOwn(g, "seq", "", []byte("me"), func(uint64, uint64) ([]byte, error) { return nil, errors.New("no") }); err == nil {
		t.Fatal("a failing build was stored")
	}
	if v, _ := s.Counter(g, "seq"); v != 400 {
		t.Fatalf("a failed append moved the counter to %d", v)
	}
}

func TestPersistsAcrossReopenAndDeleteGroup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	s := open(t, dir)
	g := gid(5)
	must(t, s.PutGroup(g, []byte("group")))
	must(t, s.PutOp(g, gid(6), []byte("op")))
	must(t, s.PutKey(g, gid(7), []byte("key")))
	must(t, s.PutAddrs([]byte("peer"), []byte("addrs")))
	if _, _, err := s.PutMessage(g, []byte("a"), 1, []byte("m")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AppendOwn(g, "seq", "", []byte("me"), func(uint64, uint64) ([]byte, error) { return []byte("own"), nil }); err != nil {
		t.Fatal(err)
	}
	must(t, s.Close())

	s = open(t, dir)
	defer s.Close()
	var groups, ops, keys int
	must(t, s.Groups(func(id [32]byte, rec []byte) error {
		if id != g || string(rec) != "group" {
			t.Fatalf("group %x %q", id[:2], rec)
		}
		groups++
		return nil
	}))
	must(t, s.Ops(g, func([]byte) error { ops++; return nil }))
	must(t, s.Keys(g, func([]byte) error { keys++; return nil }))
	if groups != 1 || ops != 1 || keys != 1 {
		t.Fatalf("after reopen: %d groups, %d ops, %d keys", groups, ops, keys)
	}
	if b, err := s.Addrs([]byte("peer")); err != nil || string(b) != "addrs" {
		t.Fatalf("addrs %q %v", b, err)
	}
	if v, _ := s.Counter(g, "seq"); v != 1 {
		t.Fatalf("counter after reopen %d", v)
	}
	must(t, s.DeleteGroup(g))
	groups, ops = 0, 0
	must(t, s.Groups(func([32]byte, []byte) error { groups++; return nil }))
	must(t, s.Ops(g, func([]byte) error { ops++; return nil }))
	if _, err := s.Message(g, []byte("a"), 1); !errors.Is(err, ErrNotFound) || groups != 0 || ops != 0 {
		t.Fatalf("delete left data: groups=%d ops=%d msg err=%v", groups, ops, err)
	}
	if _, err := s.Addrs([]byte("peer")); err != nil {
		t.Fatal("deleting a group removed the address book")
	}
}

func TestSecondOpenOfSameDirFails(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir)
	defer s.Close()
	if s2, err := Open(dir); err == nil {
		s2.Close()
		t.Fatal("a second open of the same directory succeeded")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestCommitBatch: a batch of every kind of Write lands in one commit and
// survives a reopen; a later write to the same key wins; a batch far larger
// than one badger transaction is split and lands whole.
func TestCommitBatch(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	s := open(t, dir)
	g := gid(9)
	if _, _, err := s.PutMessage(g, []byte("a"), 1, []byte("waiting")); err != nil {
		t.Fatal(err)
	}
	must(t, s.Commit([]Write{
		GroupWrite(g, []byte("group")),
		OpWrite(g, gid(1), []byte("op1")),
		KeyWrite(g, gid(2), []byte("key")),
		MessageUpdate(g, []byte("a"), 1, []byte("decrypted")),
		OpWrite(g, gid(1), []byte("op1 again")),
	}))
	big := make([]Write, 0, 20000)
	for i := range 20000 {
		var id [32]byte
		id[0], id[1], id[2] = 2, byte(i>>8), byte(i)
		big = append(big, OpWrite(g, id, bytes.Repeat([]byte{byte(i)}, 1024)))
	}
	must(t, s.Commit(big))
	must(t, s.Close())

	s = open(t, dir)
	defer s.Close()
	var ops int
	var op1 string
	must(t, s.Ops(g, func(b []byte) error {
		ops++
		if bytes.HasPrefix(b, []byte("op1")) {
			op1 = string(b)
		}
		return nil
	}))
	if ops != 20001 || op1 != "op1 again" {
		t.Fatalf("after reopen: %d ops (want 20001), op1 %q", ops, op1)
	}
	if m, err := s.Message(g, []byte("a"), 1); err != nil || string(m) != "decrypted" {
		t.Fatalf("message %q %v", m, err)
	}
	var keys int
	must(t, s.Keys(g, func([]byte) error { keys++; return nil }))
	if keys != 1 {
		t.Fatalf("%d keys", keys)
	}
}

// TestCloseOnReadOnlyHome: when the database's folder turns read-only
// under it (a remount, as a failing disk does), Close still returns, with
// ErrCloseTimeout, instead of retrying the memtable flush for ever. It
// needs root (a read-only bind mount), as CI runs.
func TestCloseOnReadOnlyHome(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a read-only bind mount (CI runs as root)")
	}
	dir := filepath.Join(t.TempDir(), "db")
	s := open(t, dir)
	g := gid(3)
	for i := range 100 {
		must(t, s.PutOp(g, [32]byte{byte(i)}, bytes.Repeat([]byte{1}, 512)))
	}
	if out, err := exec.Command("mount", "--bind", dir, dir).CombinedOutput(); err != nil {
		t.Skipf("bind mount not available here: %v: %s", err, out)
	}
	mounted := true
	unmount := func() {
		if mounted {
			_ = exec.Command("umount", dir).Run()
			mounted = false
		}
	}
	defer unmount()
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", dir).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v: %s", err, out)
	}
	start := time.Now()
	err := s.Close()
	if took := time.Since(start); took > 3*CloseTimeout {
		t.Fatalf("Close took %v", took)
	}
	if !errors.Is(err, ErrCloseTimeout) {
		t.Fatalf("Close on a read-only home: %v, want ErrCloseTimeout", err)
	}
}
