package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWrite: the file holds the data with its permissions, an existing
// file is replaced whole, and no temporary file stays behind.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "identity.key")
	for _, data := range []string{"first", "second, longer than the first"} {
		if err := Write(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != data {
			t.Fatalf("read back %q, %v; want %q", got, err, data)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("mode %v, %v; want 0600", fi.Mode().Perm(), err)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d entries in the folder, want only the file", len(entries))
	}
}

// TestWriteFailsCleanly: in a folder that cannot be written (as when the
// home turned read-only) Write fails, the old content stays, and nothing
// else is left.
func TestWriteFailsCleanly(t *testing.T) {
	if os.Geteuid() == 0 {
		// root writes through permission bits; a missing folder fails for
		// everyone.
		path := filepath.Join(t.TempDir(), "missing", "token")
		if err := Write(path, []byte("x"), 0o600); err == nil {
			t.Fatal("Write into a missing folder succeeded")
		}
		return
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "token")
	if err := Write(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	if err := Write(path, []byte("new"), 0o600); err == nil {
		t.Fatal("Write into a read-only folder succeeded")
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Fatalf("old content lost: %q", got)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Fatalf("%d entries in the folder, want only the file", len(entries))
	}
}
