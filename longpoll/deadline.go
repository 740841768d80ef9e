// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"sync"
	"time"
)

// Deadlines hands out shared expiry channels, so that held requests need no
// timer of their own: every wait that ends in the same slot of Granularity
// gets the same channel, closed by one timer when the slot begins. A wait
// therefore ends up to one Granularity early, never late, and never at
// once: a wait with no slot start before its end (one shorter than a slot)
// gets a timer of its own. Many thousands of waits cost at most one timer
// per slot that some wait ends in, and nothing per wait.
//
// The zero value is ready to use, with a granularity of 100ms.
type Deadlines struct {
	// Granularity is the length of a slot; it must not change once After
	// has been called.
	Granularity time.Duration

	mu    sync.Mutex
	base  time.Time               // slot 0 starts here; a monotonic reading
	slots map[int64]chan struct{} // by slot number, from base
}

// DefaultGranularity is the granularity of a Deadlines that sets none.
const DefaultGranularity = 100 * time.Millisecond

// After returns a channel that is closed when d has passed, up to one
// granularity early. A d of zero or less gives a channel already closed.
func (dl *Deadlines) After(d time.Duration) <-chan struct{} {
	if d <= 0 {
		return closedChan
	}
	g := dl.Granularity
	if g <= 0 {
		g = DefaultGranularity
	}
	dl.mu.Lock()
	defer dl.mu.Unlock()
	if dl.base.IsZero() {
		dl.base = time.Now()
	}
	// Slots count on the monotonic clock from base, so that a change of
	// the wall clock moves no deadline.
	now := time.Since(dl.base)
	slot := int64((now + d) / g) // the latest slot starting at or before now+d
	if time.Duration(slot)*g <= now {
		// a wait shorter than what is left of the current slot: rare
		// enough for a timer of its own
		ch := make(chan struct{})
		time.AfterFunc(d, func() { close(ch) })
		return ch
	}
	if ch, ok := dl.slots[slot]; ok {
		return ch
	}
	if dl.slots == nil {
		dl.slots = make(map[int64]chan struct{})
	}
	ch := make(chan struct{})
	dl.slots[slot] = ch
	time.AfterFunc(time.Duration(slot)*g-now, func() {
		dl.mu.Lock()
		if dl.slots[slot] == ch {
			delete(dl.slots, slot)
		}
		dl.mu.Unlock()
		close(ch)
	})
	return ch
}

// Slots returns the number of slots with a timer set: at most one per
// Granularity of the longest wait asked for.
func (dl *Deadlines) Slots() int {
	dl.mu.Lock()
	defer dl.mu.Unlock()
	return len(dl.slots)
}

var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()
