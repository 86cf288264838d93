// Package store is p2pchat's persistence: the one place that knows how
// groups, roster ops, keys and messages are laid out in badger.
//
// It stores bytes and knows no protocol rules: callers verify everything
// before they write it. Every write is synced to disk before it returns
// (SyncWrites), so what a caller acted on survives a crash. Below a floor
// of free space every write is refused (ErrDiskFull) rather than let badger
// fault on a full disk. It must never log stored values: they include key
// material.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	badger "github.com/dgraph-io/badger/v4"
)

// ErrNotFound means the requested record does not exist.
var ErrNotFound = errors.New("not found")

// Store is a badger database. It is safe for concurrent use.
type Store struct {
	db    *badger.DB
	space *spaceGuard // nil for a store in memory
}

// Options tunes a Store opened with OpenWith.
type Options struct {
	// MinFree is the free space, in bytes, below which every write is
	// refused with a *DiskFullError (see DefaultMinFree; 0 means it).
	MinFree uint64
	// OnSpace, when set, is told each time writes stop for lack of space
	// (low) and each time they resume, with the free bytes then.
	OnSpace func(low bool, free uint64)
}

// Open opens (creating if needed) the database in dir with default
// Options. An empty dir keeps everything in memory, for tests and
// throwaway nodes.
func Open(dir string) (*Store, error) { return OpenWith(dir, Options{}) }

// OpenWith is Open with options.
func OpenWith(dir string, o Options) (*Store, error) {
	opts := badger.DefaultOptions(dir).
		WithLogger(nil).
		WithSyncWrites(true).
		WithMetricsEnabled(false).
		// Desktop-sized: the defaults are sized for servers.
		WithMemTableSize(8 << 20).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(4).
		WithNumCompactors(2)
	if dir == "" {
		opts = opts.WithInMemory(true)
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create store dir: %w", err)
	}
	db, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	st := &Store{db: db}
	if dir != "" {
		if o.MinFree == 0 {
			o.MinFree = DefaultMinFree
		}
		st.space = &spaceGuard{dir: dir, minFree: o.MinFree, free: freeBytes, onChange: o.OnSpace}
	}
	return st, nil
}

// CloseTimeout bounds Close. Badger's Close flushes the memtable and
// retries a failed flush for ever, so on a home that turned read-only (or
// a full disk) it would never return; every write was synced when it was
// made, so nothing is lost when Close gives up.
const CloseTimeout = 3 * time.Second

// ErrCloseTimeout means the database could not be flushed and closed in
// time; what was written before is on disk.
var ErrCloseTimeout = errors.New("store: the database did not close in time (is the home read-only or the disk full?); every write made before was synced")

// Close flushes and closes the database, giving up after CloseTimeout
// (ErrCloseTimeout; badger's own goroutines are then left to the exiting
// process). Call it once, after all other calls have returned.
func (s *Store) Close() error {
	done := make(chan error, 1)
	go func() { done <- s.db.Close() }()
	select {
	case err := <-done:
		return err
	case <-time.After(CloseTimeout):
		return ErrCloseTimeout
	}
}

// Key layout. Every key starts with a one-byte table tag; group-scoped keys
// continue with the 32-byte group ID.
const (
	tagGroup   byte = 'g' // g gid -> group record
	tagOp      byte = 'o' // o gid opid -> signed op
	tagKey     byte = 'k' // k gid keyid -> key record
	tagMsg     byte = 'm' // m gid sender-len sender seq(8) -> message record
	tagLog     byte = 'l' // l gid index(8) -> m-key suffix (sender-len sender seq)
	tagCounter byte = 'c' // c gid name -> uint64
)

func groupKey(tag byte, gid [32]byte, rest ...[]byte) []byte {
	k := make([]byte, 0, 33+64)
	k = append(k, tag)
	k = append(k, gid[:]...)
	for _, r := range rest {
		k = append(k, r...)
	}
	return k
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func senderSeq(sender []byte, seq uint64) []byte {
	b := make([]byte, 0, 1+len(sender)+8)
	b = append(b, byte(len(sender)))
	b = append(b, sender...)
	return binary.BigEndian.AppendUint64(b, seq)
}

func (s *Store) put(k, v []byte) error {
	if err := s.space.check(); err != nil {
		return err
	}
	return s.db.Update(func(txn *badger.Txn) error { return txn.Set(k, v) })
}

func (s *Store) get(k []byte) ([]byte, error) {
	var v []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(k)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		v, err = item.ValueCopy(nil)
		return err
	})
	return v, err
}

// scan calls fn for every key with prefix, in key order, with the key's
// suffix after the prefix and a copy of the value.
func (s *Store) scan(prefix []byte, fn func(suffix, value []byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true, PrefetchSize: 64})
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			item := it.Item()
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := fn(item.KeyCopy(nil)[len(prefix):], v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Write is one write of a batch (see Commit), made by OpWrite, KeyWrite,
// GroupWrite or MessageUpdate.
type Write struct{ key, value []byte }

// OpWrite is PutOp as a Write.
func OpWrite(gid, opID [32]byte, signed []byte) Write {
	return Write{groupKey(tagOp, gid, opID[:]), signed}
}

// KeyWrite is PutKey as a Write.
func KeyWrite(gid, keyID [32]byte, record []byte) Write {
	return Write{groupKey(tagKey, gid, keyID[:]), record}
}

// GroupWrite is PutGroup as a Write.
func GroupWrite(gid [32]byte, record []byte) Write {
	return Write{groupKey(tagGroup, gid), record}
}

// MessageUpdate is UpdateMessage as a Write.
func MessageUpdate(gid [32]byte, sender []byte, seq uint64, record []byte) Write {
	return Write{groupKey(tagMsg, gid, senderSeq(sender, seq)), record}
}

// Commit writes the batch in order and syncs it once: a group commit. Should
// the batch be too large for one transaction, it is split, each part synced
// before the next is written, so a crash keeps a prefix of the batch.
func (s *Store) Commit(ws []Write) error {
	if err := s.space.check(); err != nil {
		return err
	}
	for len(ws) > 0 {
		txn := s.db.NewTransaction(true)
		n := 0
		for ; n < len(ws); n++ {
			err := txn.Set(ws[n].key, ws[n].value)
			if errors.Is(err, badger.ErrTxnTooBig) && n > 0 {
				break
			}
			if err != nil {
				txn.Discard()
				return err
			}
		}
		if err := txn.Commit(); err != nil {
			return err
		}
		ws = ws[n:]
	}
	return nil
}

// PutGroup writes a group's record (an encoding chosen by the caller).
func (s *Store) PutGroup(gid [32]byte, record []byte) error {
	return s.put(groupKey(tagGroup, gid), record)
}

// DeleteGroup removes a group and everything stored under it.
func (s *Store) DeleteGroup(gid [32]byte) error {
	if err := s.space.check(); err != nil {
		return err // dropping a prefix flushes and rewrites tables
	}
	for _, tag := range []byte{tagGroup, tagOp, tagKey, tagMsg, tagLog, tagCounter} {
		if err := s.db.DropPrefix(groupKey(tag, gid)); err != nil {
			return fmt.Errorf("delete group: %w", err)
		}
	}
	return nil
}

// Groups calls fn for every group record.
func (s *Store) Groups(fn func(gid [32]byte, record []byte) error) error {
	return s.scan([]byte{tagGroup}, func(suffix, v []byte) error {
		if len(suffix) != 32 {
			return nil
		}
		return fn([32]byte(suffix), v)
	})
}

// PutOp writes a signed roster op.
func (s *Store) PutOp(gid, opID [32]byte, signed []byte) error {
	return s.put(groupKey(tagOp, gid, opID[:]), signed)
}

// Ops calls fn for every stored roster op of a group.
func (s *Store) Ops(gid [32]byte, fn func(signed []byte) error) error {
	return s.scan(groupKey(tagOp, gid), func(_, v []byte) error { return fn(v) })
}

// PutKey writes a key record (secret and metadata, encoded by the caller).
func (s *Store) PutKey(gid, keyID [32]byte, record []byte) error {
	return s.put(groupKey(tagKey, gid, keyID[:]), record)
}

// Keys calls fn for every key record of a group.
func (s *Store) Keys(gid [32]byte, fn func(record []byte) error) error {
	return s.scan(groupKey(tagKey, gid), func(_, v []byte) error { return fn(v) })
}

// PutMessage writes the record of message seq from sender, once: it reports
// false, writing nothing, when that slot is already taken, and returns the
// stored record so the caller can tell a duplicate from an equivocation. New
// messages also get the next position in the group's arrival log.
func (s *Store) PutMessage(gid [32]byte, sender []byte, seq uint64, record []byte) (stored bool, existing []byte, err error) {
	if err := s.space.check(); err != nil {
		return false, nil, err
	}
	ss := senderSeq(sender, seq)
	mk := groupKey(tagMsg, gid, ss)
	ck := groupKey(tagCounter, gid, []byte("log"))
	for {
		err = s.db.Update(func(txn *badger.Txn) error {
			item, err := txn.Get(mk)
			if err == nil {
				existing, err = item.ValueCopy(nil)
				return err
			}
			if !errors.Is(err, badger.ErrKeyNotFound) {
				return err
			}
			next, err := counterIn(txn, ck)
			if err != nil {
				return err
			}
			if err := txn.Set(ck, u64(next+1)); err != nil {
				return err
			}
			if err := txn.Set(groupKey(tagLog, gid, u64(next)), ss); err != nil {
				return err
			}
			stored = true
			return txn.Set(mk, record)
		})
		if !errors.Is(err, badger.ErrConflict) {
			return stored, existing, err
		}
		stored, existing = false, nil
	}
}

// UpdateMessage replaces the record of an existing message (its status
// changed); the arrival position stays.
func (s *Store) UpdateMessage(gid [32]byte, sender []byte, seq uint64, record []byte) error {
	return s.put(groupKey(tagMsg, gid, senderSeq(sender, seq)), record)
}

// Message returns the record of message seq from sender.
func (s *Store) Message(gid [32]byte, sender []byte, seq uint64) ([]byte, error) {
	return s.get(groupKey(tagMsg, gid, senderSeq(sender, seq)))
}

// Messages calls fn for every message of a group in arrival order.
func (s *Store) Messages(gid [32]byte, fn func(record []byte) error) error {
	return s.db.View(func(txn *badger.Txn) error {
		prefix := groupKey(tagLog, gid)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			ss, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			item, err := txn.Get(append(groupKey(tagMsg, gid), ss...))
			if err != nil {
				return fmt.Errorf("message log points at a missing message: %w", err)
			}
			v, err := item.ValueCopy(nil)
			if err != nil {
				return err
			}
			if err := fn(v); err != nil {
				return err
			}
		}
		return nil
	})
}

// SenderMessages calls fn for every message from sender, in sequence order.
func (s *Store) SenderMessages(gid [32]byte, sender []byte, fn func(seq uint64, record []byte) error) error {
	prefix := groupKey(tagMsg, gid, []byte{byte(len(sender))}, sender)
	return s.scan(prefix, func(suffix, v []byte) error {
		if len(suffix) != 8 {
			return nil
		}
		return fn(binary.BigEndian.Uint64(suffix), v)
	})
}

func counterIn(txn *badger.Txn, k []byte) (uint64, error) {
	item, err := txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	var v uint64
	err = item.Value(func(b []byte) error {
		if len(b) != 8 {
			return errors.New("corrupt counter")
		}
		v = binary.BigEndian.Uint64(b)
		return nil
	})
	return v, err
}

// Counter returns the named per-group counter's value (0 if never set).
func (s *Store) Counter(gid [32]byte, name string) (uint64, error) {
	var v uint64
	err := s.db.View(func(txn *badger.Txn) error {
		var err error
		v, err = counterIn(txn, groupKey(tagCounter, gid, []byte(name)))
		return err
	})
	return v, err
}

// MessageIndex calls fn for every stored message of a group, ordered by
// sender then sequence number, reading keys only.
func (s *Store) MessageIndex(gid [32]byte, fn func(sender []byte, seq uint64) error) error {
	prefix := groupKey(tagMsg, gid)
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			k := it.Item().Key()[len(prefix):]
			if len(k) < 1 || len(k) != 1+int(k[0])+8 {
				continue
			}
			sender := k[1 : 1+int(k[0])]
			if err := fn(sender, binary.BigEndian.Uint64(k[1+int(k[0]):])); err != nil {
				return err
			}
		}
		return nil
	})
}

// NewMessage is one message for PutMessages.
type NewMessage struct {
	Sender []byte
	Seq    uint64
	Record []byte
}

// PutMessages stores a batch of messages in one synced transaction, each
// only if its slot is free, and reports which were stored. It is how
// history sync lands thousands of messages without one disk flush each.
func (s *Store) PutMessages(gid [32]byte, msgs []NewMessage) ([]bool, error) {
	if err := s.space.check(); err != nil {
		return nil, err
	}
	stored := make([]bool, len(msgs))
	const chunk = 256
	for start := 0; start < len(msgs); start += chunk {
		part := msgs[start:min(start+chunk, len(msgs))]
		for {
			res := make([]bool, len(part))
			err := s.db.Update(func(txn *badger.Txn) error {
				ck := groupKey(tagCounter, gid, []byte("log"))
				next, err := counterIn(txn, ck)
				if err != nil {
					return err
				}
				seen := make(map[string]bool, len(part))
				for i, m := range part {
					ss := senderSeq(m.Sender, m.Seq)
					if seen[string(ss)] {
						continue
					}
					seen[string(ss)] = true
					mk := groupKey(tagMsg, gid, ss)
					if _, err := txn.Get(mk); err == nil {
						continue
					} else if !errors.Is(err, badger.ErrKeyNotFound) {
						return err
					}
					if err := txn.Set(groupKey(tagLog, gid, u64(next)), ss); err != nil {
						return err
					}
					next++
					if err := txn.Set(mk, m.Record); err != nil {
						return err
					}
					res[i] = true
				}
				return txn.Set(ck, u64(next))
			})
			if errors.Is(err, badger.ErrConflict) {
				continue
			}
			if err != nil {
				return stored, err
			}
			copy(stored[start:], res)
			break
		}
	}
	return stored, nil
}

// tagAddr keys the address book: a peer ID -> an address record. It is not
// group-scoped: one peer may be in several groups.
const tagAddr byte = 'a'

// PutAddrs writes a peer's address record.
func (s *Store) PutAddrs(peerID []byte, record []byte) error {
	return s.put(append([]byte{tagAddr}, peerID...), record)
}

// Addrs returns a peer's address record.
func (s *Store) Addrs(peerID []byte) ([]byte, error) {
	return s.get(append([]byte{tagAddr}, peerID...))
}

// AppendOwn stores a message this node composes, under the next value of
// the named per-group counter, in one synced transaction: build receives
// the sequence number and returns the record. A crash never leaves a
// sequence number handed out without its message, or the reverse.
//
// firstMark, if not empty, names a counter that remembers the first
// sequence number appended under it (for example, per key): it is set to
// seq the first time and passed to build as first.
func (s *Store) AppendOwn(gid [32]byte, counter, firstMark string, sender []byte, build func(seq, first uint64) ([]byte, error)) (uint64, error) {
	seqs, err := s.AppendOwnBatch(gid, counter, firstMark, sender, 1, func(_ int, seq, first uint64) ([]byte, error) { return build(seq, first) })
	if err != nil {
		return 0, err
	}
	return seqs[0], nil
}

// MaxAppendBatch bounds the messages one AppendOwnBatch stores.
const MaxAppendBatch = 256

// AppendOwnBatch is AppendOwn for n messages in one synced transaction (a
// group commit): message i gets the i-th next sequence number, and build
// is called for each in order (again, should the transaction be retried).
// All or none are stored.
func (s *Store) AppendOwnBatch(gid [32]byte, counter, firstMark string, sender []byte, n int, build func(i int, seq, first uint64) ([]byte, error)) ([]uint64, error) {
	if n < 1 || n > MaxAppendBatch {
		return nil, fmt.Errorf("store: batch of %d messages, want 1 to %d", n, MaxAppendBatch)
	}
	if err := s.space.check(); err != nil {
		return nil, err // before a sequence number is taken
	}
	ck := groupKey(tagCounter, gid, []byte(counter))
	lk := groupKey(tagCounter, gid, []byte("log"))
	for {
		seqs := make([]uint64, n)
		err := s.db.Update(func(txn *badger.Txn) error {
			cur, err := counterIn(txn, ck)
			if err != nil {
				return err
			}
			next, err := counterIn(txn, lk)
			if err != nil {
				return err
			}
			first := cur + 1
			if firstMark != "" {
				fk := groupKey(tagCounter, gid, []byte(firstMark))
				f, err := counterIn(txn, fk)
				if err != nil {
					return err
				}
				if f != 0 {
					first = f
				} else if err := txn.Set(fk, u64(first)); err != nil {
					return err
				}
			}
			for i := range n {
				seq := cur + 1 + uint64(i)
				seqs[i] = seq
				rec, err := build(i, seq, first)
				if err != nil {
					return err
				}
				ss := senderSeq(sender, seq)
				mk := groupKey(tagMsg, gid, ss)
				if _, err := txn.Get(mk); err == nil {
					return fmt.Errorf("message slot %d already taken", seq)
				} else if !errors.Is(err, badger.ErrKeyNotFound) {
					return err
				}
				for _, kv := range [][2][]byte{{groupKey(tagLog, gid, u64(next)), ss}, {mk, rec}} {
					if err := txn.Set(kv[0], kv[1]); err != nil {
						return err
					}
				}
				next++
			}
			if err := txn.Set(ck, u64(cur+uint64(n))); err != nil {
				return err
			}
			return txn.Set(lk, u64(next))
		})
		if !errors.Is(err, badger.ErrConflict) {
			if err != nil {
				return nil, err
			}
			return seqs, nil
		}
	}
}
