// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"sync"
	"sync/atomic"
)

// A Snapshot is neutral: it holds the representation, not how any one
// delivery writes it. Each delivery derives what it writes from it (a
// long-poll's header, an event stream's event, a WebSocket's message) once
// per representation, with Derived, and every client of the watch shares
// that.

// derivedValues is what deliveries derived from one snapshot: a short
// list of entries, replaced (never changed) when an entry is added, so that
// readers take no lock. Each entry is made once, under its own lock: a
// value slow to make (a compressed body) holds up only the callers that
// want that value.
type derivedValues struct {
	mu     sync.Mutex // serialises the adding of entries
	values atomic.Pointer[[]*derivedValue]
	bytes  atomic.Int64          // what the values that are Sizers hold
	owner  atomic.Pointer[watch] // the watch that published the snapshot
}

// A Sizer is a derived value that holds memory of its own, in proportion
// to the representation (a compressed copy of the body, say): its Size
// counts in the snapshot's, and so against Config.MaxMemory, for as long
// as the snapshot is current.
type Sizer interface {
	Size() int64
}

type derivedValue struct {
	key   any
	mu    sync.Mutex // held while the value is made
	done  atomic.Bool
	value any
}

// Derived returns the value derived from the snapshot under key, made by
// make the first time it is asked for: every other caller, at once or
// later, gets that same value (one that comes while it is being made waits
// for it). key is a comparable value of the caller's own type, as for
// context keys. make is called once per key, with the snapshot (again
// only if it panicked: a make that panics leaves no value); it may call
// Derived for another key, never for its own. Values live and die with the
// snapshot.
func (s *Snapshot) Derived(key any, make func(*Snapshot) any) any {
	dv := s.derived.lookup(key)
	if dv == nil {
		dv = s.derived.add(key)
	}
	if dv.done.Load() {
		return dv.value
	}
	dv.make(s, make)
	return dv.value
}

// make makes dv's value, unless another caller did while this one waited.
// A make that panics leaves no value: the next caller makes it again.
func (dv *derivedValue) make(s *Snapshot, make func(*Snapshot) any) {
	dv.mu.Lock()
	defer dv.mu.Unlock()
	if dv.done.Load() {
		return
	}
	dv.value = make(s)
	dv.done.Store(true)
	if sz, ok := dv.value.(Sizer); ok && sz.Size() > 0 {
		s.derived.bytes.Add(sz.Size())
		if w := s.derived.owner.Load(); w != nil {
			w.grew(s)
		}
	}
}

// add returns the entry of key, adding it if it is not there yet.
func (d *derivedValues) add(key any) *derivedValue {
	d.mu.Lock()
	defer d.mu.Unlock()
	if dv := d.lookup(key); dv != nil {
		return dv
	}
	var list []*derivedValue
	if cur := d.values.Load(); cur != nil {
		list = append(list, *cur...)
	}
	dv := &derivedValue{key: key}
	list = append(list, dv)
	d.values.Store(&list)
	return dv
}

func (d *derivedValues) lookup(key any) *derivedValue {
	if list := d.values.Load(); list != nil {
		for _, dv := range *list {
			if dv.key == key {
				return dv
			}
		}
	}
	return nil
}
