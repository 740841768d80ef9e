// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

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

// A value slow to make (a compressed body) holds up the callers that want
// it, not those that want another value of the same snapshot; and make may
// derive another value from the snapshot.
func TestDerivedSlowValueDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	s := mustSnapshot(t, "body")
	release := make(chan struct{})
	started := make(chan struct{})
	go s.Derived(keyA{}, func(*longpoll.Snapshot) any {
		close(started)
		<-release
		return "slow"
	})
	<-started
	done := make(chan any)
	go func() {
		done <- s.Derived(keyB{}, func(s *longpoll.Snapshot) any {
			return s.Derived(keyC{}, func(*longpoll.Snapshot) any { return "inner" }).(string) + "+b"
		})
	}()
	var got any
	select {
	case got = <-done:
	case <-time.After(time.Minute):
		t.Fatal("Derived(keyB) waited for keyA's value to be made")
	}
	if got != "inner+b" {
		t.Errorf("Derived(keyB) = %v while keyA is being made, want inner+b", got)
	}
	close(release)
	if got := s.Derived(keyA{}, func(*longpoll.Snapshot) any { return "again" }); got != "slow" {
		t.Errorf("Derived(keyA) = %v, want the value made first", got)
	}
}

type keyC struct{}

// A make that panics leaves no value behind: the next caller makes it.
func TestDerivedPanicIsRetried(t *testing.T) {
	s := mustSnapshot(t, "body")
	func() {
		defer func() { _ = recover() }()
		s.Derived(keyA{}, func(*longpoll.Snapshot) any { panic("make failed") })
	}()
	if got := s.Derived(keyA{}, func(*longpoll.Snapshot) any { return "made" }); got != "made" {
		t.Errorf("Derived after a make that panicked = %v, want the value made again", got)
	}
}
