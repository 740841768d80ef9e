// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// closedAfter reports when ch closes, advancing the bubble's clock in
// steps of 1ms, at most limit.
func closedAfter(ch <-chan struct{}, limit time.Duration) (time.Duration, bool) {
	start := time.Now()
	for time.Since(start) <= limit {
		synctest.Wait() // let the timers that fired close their channels
		select {
		case <-ch:
			return time.Since(start), true
		default:
		}
		time.Sleep(time.Millisecond)
	}
	return 0, false
}

func TestDeadlinesEndWithinOneSlotEarly(t *testing.T) {
	for _, d := range []time.Duration{time.Millisecond, 50 * time.Millisecond, 250 * time.Millisecond, 999 * time.Millisecond, 30 * time.Second} {
		synctest.Test(t, func(t *testing.T) {
			var dl longpoll.Deadlines         // 100ms slots
			time.Sleep(37 * time.Millisecond) // not on a slot boundary
			got, ok := closedAfter(dl.After(d), d+time.Second)
			if !ok {
				t.Fatalf("After(%v): not closed within %v", d, d+time.Second)
			}
			if got > d || got < d-longpoll.DefaultGranularity {
				t.Errorf("After(%v) closed after %v, want within (%v, %v]", d, got, d-longpoll.DefaultGranularity, d)
			}
			if got <= 0 {
				t.Errorf("After(%v) closed at once, want later", d)
			}
		})
	}
}

func TestDeadlinesNowOrPast(t *testing.T) {
	var dl longpoll.Deadlines
	for _, d := range []time.Duration{0, -time.Second} {
		select {
		case <-dl.After(d):
		default:
			t.Errorf("After(%v) is not closed", d)
		}
	}
}

// Waits that end in the same slot share one channel (and one timer); the
// slots are forgotten once they have fired.
func TestDeadlinesShareSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		dl := longpoll.Deadlines{Granularity: time.Second}
		time.Sleep(100 * time.Millisecond)
		a := dl.After(5 * time.Second)
		b := dl.After(5*time.Second + 500*time.Millisecond) // same slot: [5s, 6s)
		c := dl.After(6 * time.Second)
		if a != b {
			t.Error("two waits ending in one slot got different channels")
		}
		if a == c {
			t.Error("waits ending in different slots got one channel")
		}
		if got := dl.Slots(); got != 2 {
			t.Errorf("slots: got %d, want 2", got)
		}
		time.Sleep(7 * time.Second)
		synctest.Wait()
		for name, ch := range map[string]<-chan struct{}{"a": a, "c": c} {
			select {
			case <-ch:
			default:
				t.Errorf("%s not closed after its deadline", name)
			}
		}
		if got := dl.Slots(); got != 0 {
			t.Errorf("slots after they fired: got %d, want 0", got)
		}
	})
}

// Ten thousand waits spread over 10s cost no more than one slot per tenth
// of a second.
func TestDeadlinesBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var dl longpoll.Deadlines
		for i := range 10000 {
			dl.After(20*time.Second + time.Duration(i)*time.Millisecond)
		}
		if got, max := dl.Slots(), 101; got > max {
			t.Errorf("slots: got %d, want at most %d", got, max)
		}
		time.Sleep(31 * time.Second)
		synctest.Wait()
		if got := dl.Slots(); got != 0 {
			t.Errorf("slots after they fired: got %d, want 0", got)
		}
	})
}

// BenchmarkDeadlinesAfter is the cost of a held request's deadline: a map
// lookup under a lock, no allocation once its slot exists.
func BenchmarkDeadlinesAfter(b *testing.B) {
	var dl longpoll.Deadlines
	b.ReportAllocs()
	for b.Loop() {
		dl.After(30 * time.Second)
	}
}
