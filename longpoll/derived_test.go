// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

type keyA struct{}
type keyB struct{}

// What a delivery derives from a snapshot (a header, an event's bytes) is
// made once per snapshot and key, however many clients ask at once, and
// shared: the release of thousands of clients must not make it thousands of
// times.
func TestDerivedOncePerKey(t *testing.T) {
	t.Parallel()
	s := mustSnapshot(t, "body")
	var madeA, madeB atomic.Int64
	makeA := func(s *longpoll.Snapshot) any { madeA.Add(1); return "a:" + string(s.Body) }
	makeB := func(*longpoll.Snapshot) any { madeB.Add(1); return 42 }
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() {
			if i%2 == 0 {
				if got := s.Derived(keyA{}, makeA); got != "a:body" {
					t.Errorf("Derived(keyA) = %v, want a:body", got)
				}
			} else if got := s.Derived(keyB{}, makeB); got != 42 {
				t.Errorf("Derived(keyB) = %v, want 42", got)
			}
		})
	}
	wg.Wait()
	if madeA.Load() != 1 || madeB.Load() != 1 {
		t.Errorf("made %d and %d times, want once each", madeA.Load(), madeB.Load())
	}
	other := mustSnapshot(t, "other")
	if got := other.Derived(keyA{}, makeA); got != "a:other" || madeA.Load() != 2 {
		t.Errorf("another snapshot: got %v (%d made), want its own value", got, madeA.Load())
	}
}

// A release asks every client's snapshot value: after the first, no
// allocation.
func TestDerivedDoesNotAllocate(t *testing.T) {
	s := mustSnapshot(t, "body")
	mk := func(*longpoll.Snapshot) any { return new(int) }
	s.Derived(keyA{}, mk)
	if n := testing.AllocsPerRun(100, func() { s.Derived(keyA{}, mk) }); n != 0 {
		t.Errorf("Derived of a made value: %v allocations, want 0", n)
	}
}
