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
// list, replaced (never changed) when a value is added, so that readers
// take no lock.
type derivedValues struct {
	mu     sync.Mutex // serialises the making of values
	values atomic.Pointer[[]derivedValue]
}

type derivedValue struct {
	key   any
	value any
}

// Derived returns the value derived from the snapshot under key, made by
// make the first time it is asked for: every other caller, at once or
// later, gets that same value. key is a comparable value of the caller's
// own type, as for context keys. make is called at most once per key, with
// the snapshot, and must not call Derived on it. Values live and die with
// the snapshot.
func (s *Snapshot) Derived(key any, make func(*Snapshot) any) any {
	if v, ok := s.derived.lookup(key); ok {
		return v
	}
	s.derived.mu.Lock()
	defer s.derived.mu.Unlock()
	if v, ok := s.derived.lookup(key); ok {
		return v
	}
	v := make(s)
	var list []derivedValue
	if cur := s.derived.values.Load(); cur != nil {
		list = append(list, *cur...)
	}
	list = append(list, derivedValue{key, v})
	s.derived.values.Store(&list)
	return v
}

func (d *derivedValues) lookup(key any) (any, bool) {
	if list := d.values.Load(); list != nil {
		for _, dv := range *list {
			if dv.key == key {
				return dv.value, true
			}
		}
	}
	return nil, false
}
