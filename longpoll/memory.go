// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"fmt"
	"slices"
	"time"
)

// An engine's watches hold their snapshots (bodies up to the adapter's size
// limit) for as long as they live, idle ones too, and anybody can make a
// watch with one request for a new key. Config.MaxMemory bounds what they
// hold: past it, idle watches are forgotten, the longest idle first; and a
// snapshot that the watches with subscribers alone leave no room for is not
// kept: the poll fails with ErrOverBudget, and the watch backs off as for
// any failure (its subscribers are to be refused, not passed through, which
// would send each of them to the upstream).

// watchOverhead is what a watch costs besides its snapshot: the watch, its
// state, timer and map entries. It is counted against Config.MaxMemory, so
// that many watches with tiny bodies are bounded too.
const watchOverhead = 1024

// Size returns the memory the snapshot holds, roughly: its body, its header
// fields, and the derived values that are Sizers.
func (s *Snapshot) Size() int64 {
	n := int64(len(s.Body)) + int64(len(s.ETag)+len(s.UpstreamETag)+len(s.LastModified)) + 128 + s.derived.bytes.Load()
	for k, vs := range s.Header {
		n += int64(len(k)) + 16
		for _, v := range vs {
			n += int64(len(v)) + 16
		}
	}
	for _, f := range s.Vary {
		n += int64(len(f.Name)) + 32
		for _, v := range f.Values {
			n += int64(len(v)) + 16
		}
	}
	return n
}

// stateSize is what a watch in state st holds.
func stateSize(st *State) int64 {
	if st.Snapshot == nil {
		return watchOverhead
	}
	return watchOverhead + st.Snapshot.Size()
}

// account records that the watch now holds size bytes. It must be called
// with w.mu held.
func (w *watch) account(size int64) {
	delta := size - w.size
	if delta == 0 {
		return
	}
	w.size = size
	e := w.e
	e.bytes.Add(delta)
	if w.subs > 0 {
		e.activeBytes.Add(delta)
	}
	if delta > 0 {
		e.kickEviction()
	}
}

// grew counts, in w's size, what a value derived from s added to it, if s
// is still w's current snapshot: once it is replaced, what it holds is
// the clients' being answered from it, and no longer the watch's.
func (w *watch) grew(s *Snapshot) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if st := w.state.Load(); !w.gone && st.Snapshot == s {
		w.account(stateSize(st))
	}
}

// unaccount gives back what a forgotten watch held. It must be called with
// w.mu held.
func (w *watch) unaccount() {
	w.e.bytes.Add(-w.size)
	if w.subs > 0 {
		w.e.activeBytes.Add(-w.size)
	}
	w.size = 0
}

// overBudget reports whether keeping snap would take the watches with
// subscribers past the budget, which no eviction can help. It must be
// called with w.mu held.
func (w *watch) overBudget(snap *Snapshot) error {
	limit := w.e.config().MaxMemory
	if limit <= 0 || w.subs == 0 {
		return nil
	}
	if w.e.activeBytes.Load()-w.size+watchOverhead+snap.Size() > limit {
		return &UpstreamError{Err: fmt.Errorf("%w (%d bytes)", ErrOverBudget, limit)}
	}
	return nil
}

// mustEvict reports whether the engine holds more than its budget, and
// idle watches hold some of it: evicting can help.
func (e *Engine) mustEvict() bool {
	limit := e.config().MaxMemory
	bytes := e.bytes.Load()
	return limit > 0 && bytes > limit && bytes > e.activeBytes.Load()
}

// kickEviction starts an eviction run if one is needed and none is under
// way.
func (e *Engine) kickEviction() {
	if e.mustEvict() && e.evicting.CompareAndSwap(false, true) {
		go e.evictRuns()
	}
}

// evictRuns evicts until no run is needed, or one finds nothing to evict
// (the idle watches all have a poll in flight; the poll's end kicks again).
// The flag is cleared before the last check, so that a kick that came
// during a run is never lost.
func (e *Engine) evictRuns() {
	for {
		n := e.evict()
		e.evicting.Store(false)
		if n == 0 || !e.mustEvict() || !e.evicting.CompareAndSwap(false, true) {
			return
		}
	}
}

// evict forgets idle watches, the longest idle first, until the engine
// holds at most nine tenths of its budget, or no idle watch is left. It
// returns how many it forgot.
func (e *Engine) evict() int {
	if e.closed.Load() || !e.mustEvict() {
		return 0
	}
	type candidate struct {
		w     *watch
		since time.Time
	}
	var idle []candidate
	for _, w := range e.list() {
		w.mu.Lock()
		if w.evictable() {
			idle = append(idle, candidate{w, w.idleSince})
		}
		w.mu.Unlock()
	}
	slices.SortFunc(idle, func(a, b candidate) int { return a.since.Compare(b.since) })
	target := e.config().MaxMemory / 10 * 9
	n := 0
	for _, c := range idle {
		if e.bytes.Load() <= target {
			break
		}
		if e.evictOne(c.w) {
			n++
		}
	}
	if n > 0 && e.observer != nil {
		e.observer.Evicted(n)
	}
	return n
}

// evictOne forgets w if it may still be evicted, taking its shard's lock,
// then its own.
func (e *Engine) evictOne(w *watch) bool {
	sh := e.shardOf(w.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if sh.closed || !w.evictable() {
		return false
	}
	w.leave()
	e.forget(sh, w)
	return true
}

// evictable reports whether w may be forgotten to make room: no
// subscriber, no poll in flight. It must be called with w.mu held.
func (w *watch) evictable() bool {
	return w.subs == 0 && !w.inflight && !w.again && !w.gone
}
