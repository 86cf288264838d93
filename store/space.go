package store

import (
	"errors"
	"fmt"
	"sync"
)

// ErrDiskFull means the filesystem holding the store has less free space
// than the floor the store keeps: the write was refused and nothing was
// written. Reads still work, and writes resume by themselves once space
// returns.
var ErrDiskFull = errors.New("disk full")

// DefaultMinFree is the free space below which the store refuses writes.
//
// Badger writes through memory-mapped files that it creates sparse (a
// memtable's log, the next level-0 table, compaction output); when the
// filesystem has no block left for a page it touches, the kernel kills the
// process with SIGBUS — no error, no recovery, and the same again on the
// next start. With this store's sizes (8 MiB memtables, two of them, 2 MiB
// tables, level-0 compaction at two tables) the most one allowed write can
// make badger allocate is about 60 MiB (a memtable flush, the fresh
// memtable log and the compaction it triggers); the floor leaves twice that.
const DefaultMinFree = 128 << 20

// DiskFullError is ErrDiskFull with the figures: what is free in Dir and
// the floor the store keeps.
type DiskFullError struct {
	Dir        string
	Free, Need uint64
}

func (e *DiskFullError) Error() string {
	return fmt.Sprintf("disk full: %d MiB free in %s, the store keeps at least %d MiB free; nothing was written",
		e.Free>>20, e.Dir, e.Need>>20)
}

func (e *DiskFullError) Unwrap() error { return ErrDiskFull }

// spaceGuard refuses writes while the store's filesystem is below the floor.
type spaceGuard struct {
	dir     string
	minFree uint64
	// free reports the bytes an unprivileged writer may still use in dir;
	// tests replace it.
	free func(dir string) (uint64, error)

	mu  sync.Mutex
	low bool // the last check was below the floor (logged transitions)
	// onChange, when set, is told when writes stop or resume.
	onChange func(low bool, free uint64)
}

// check returns a *DiskFullError when dir's filesystem is below the floor.
// A filesystem whose free space cannot be read is not refused: the check
// guards against a crash, it must not invent one.
func (g *spaceGuard) check() error {
	if g == nil || g.minFree == 0 {
		return nil
	}
	free, err := g.free(g.dir)
	if err != nil {
		return nil
	}
	low := free < g.minFree
	g.mu.Lock()
	changed := low != g.low
	g.low = low
	notify := g.onChange
	g.mu.Unlock()
	if changed && notify != nil {
		notify(low, free)
	}
	if low {
		return &DiskFullError{Dir: g.dir, Free: free, Need: g.minFree}
	}
	return nil
}

// CheckSpace reports, as a write would, whether the store is below its
// floor of free space now (a *DiskFullError) or has room (nil).
func (s *Store) CheckSpace() error { return s.space.check() }
