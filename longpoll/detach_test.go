// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// subscribeGen subscribes with generation gen and counts the calls of
// newFetcher in made.
func subscribeGen(tb testing.TB, e *longpoll.Engine, key longpoll.Key, gen uint64, f *fakeFetcher, made *atomic.Int64) *longpoll.Subscription {
	tb.Helper()
	sub, err := e.Subscribe(key, "t", gen, func() longpoll.Fetcher { made.Add(1); return f.New() })
	if err != nil {
		tb.Fatalf("Subscribe(%s, gen %d) = %v, want no error", key.Short(), gen, err)
	}
	return sub
}

// After a reload retires a config, no poll may go through its route any
// more, and the requests held on it must be answered now rather than wait
// for a change that will not come.
func TestDetachWakesAndStopsPolling(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var made atomic.Int64
		oldF, newF := newFake(serve("v1")), newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		oldKey, newKey := longpoll.KeyOf("old"), longpoll.KeyOf("new")
		a := subscribeGen(t, e, oldKey, 1, oldF, &made)
		defer a.Close()
		st := fresh(t, a)
		b := subscribeGen(t, e, newKey, 2, newF, &made)
		defer b.Close()
		fresh(t, b)

		if n := e.Detach(1); n != 1 {
			t.Errorf("Detach(1) with watches of gen 1 and 2 = %d, want 1", n)
		}
		within(t, st.Changed(), time.Second, "Changed after Detach")
		now := a.State()
		if !now.Detached || now.Pending() || now.Snapshot != st.Snapshot {
			t.Errorf("after Detach: state %+v, want Detached with the last snapshot kept and not Pending", now)
		}
		if st := b.State(); st.Detached {
			t.Errorf("watch of gen 2 after Detach(1): state %+v, want not Detached", st)
		}
		oldCalls, newCalls := oldF.calls.Load(), newF.calls.Load()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := oldF.calls.Load(); got != oldCalls {
			t.Errorf("10s after Detach: the detached watch fetched %d times, want 0", got-oldCalls)
		}
		if got := newF.calls.Load(); got != newCalls+10 {
			t.Errorf("10s after Detach(1): the gen 2 watch fetched %d times, want 10", got-newCalls)
		}
		if n := e.Detach(1); n != 0 {
			t.Errorf("Detach(1) again = %d, want 0", n)
		}
		if got := e.Len(); got != 2 {
			t.Errorf("Len() after Detach = %d, want 2 (detached watches keep their state)", got)
		}
	})
}

// A subscriber of the new config puts a detached watch back in service
// with its own Fetcher, whether or not old subscribers still hold it.
func TestDetachedWatchResumesWithNewerGen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		oldStays bool // a subscriber of the old config is still subscribed
	}{
		{name: "old subscriber left", oldStays: false},
		{name: "old subscriber stays", oldStays: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var made atomic.Int64
				oldF, newF := newFake(serve("v1")), newFake(serve("v2"))
				e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: time.Minute})
				defer e.Close()
				old := subscribeGen(t, e, testKey, 1, oldF, &made)
				fresh(t, old)
				e.Detach(1)
				if tt.oldStays {
					defer old.Close()
				} else {
					old.Close()
				}
				time.Sleep(500 * time.Millisecond)

				sub := subscribeGen(t, e, testKey, 2, newF, &made)
				defer sub.Close()
				if got := made.Load(); got != 2 {
					t.Errorf("Subscribe(gen 2) on a detached gen 1 watch: %d newFetcher calls, want 2", got)
				}
				if st := sub.State(); st.Detached {
					t.Errorf("after Subscribe(gen 2): state %+v, want not Detached", st)
				}
				time.Sleep(3 * time.Second)
				synctest.Wait()
				if got := newF.calls.Load(); got < 3 {
					t.Errorf("3s after Subscribe(gen 2): the new Fetcher polled %d times, want at least 3", got)
				}
				if got := oldF.calls.Load(); got != 1 {
					t.Errorf("after Detach: the old Fetcher polled %d times, want 1", got)
				}
				if got := bodyOf(sub.State()); got != "v2" {
					t.Errorf("after the new Fetcher polled: body %s, want v2", got)
				}
			})
		})
	}
}

// Detach is documented to put a watch back in service only for a newer
// generation: a late subscriber of the retired config must not re-attach
// the retired route's Fetcher, which Detach exists to stop using.
func TestDetachedWatchIgnoresOlderGen(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var made atomic.Int64
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		held := subscribeGen(t, e, testKey, 1, f, &made)
		defer held.Close()
		fresh(t, held)
		e.Detach(1)
		late := subscribeGen(t, e, testKey, 1, f, &made)
		defer late.Close()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if got := made.Load(); got != 1 {
			t.Errorf("Subscribe(gen 1) after Detach(1): %d newFetcher calls, want 1 (only the first Subscribe)", got)
		}
		if st := late.State(); !st.Detached {
			t.Errorf("Subscribe(gen 1) after Detach(1): state %+v, want Detached", st)
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("5s after Detach(1) and a gen 1 Subscribe: %d fetches, want 1", got)
		}
	})
}

// A poll in flight when the watch is detached must not undo the detach:
// its result must keep Detached set (the watch has no Fetcher, so nothing
// would wake held subscribers again), and a subscriber of the new config
// must still restart polling.
func TestDetachDuringPoll(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var made atomic.Int64
		gate := make(chan struct{})
		oldF := newFake(gated(gate, 2, serve("v2")))
		newF := newFake(serve("v3"))
		e := newEngine(t, longpoll.Config{Interval: time.Second, PollTimeout: time.Minute})
		defer e.Close()
		held := subscribeGen(t, e, testKey, 1, oldF, &made)
		defer held.Close()
		fresh(t, held)
		time.Sleep(time.Second) // poll 2 starts and blocks at the gate
		synctest.Wait()
		e.Detach(1)
		gate <- struct{}{} // poll 2 ends well, after the detach
		synctest.Wait()
		if st := held.State(); !st.Detached {
			t.Errorf("a poll ended after Detach: state %+v (body %s), want Detached", st, bodyOf(st))
		}

		sub := subscribeGen(t, e, testKey, 2, newF, &made)
		defer sub.Close()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := newF.calls.Load(); got < 3 {
			t.Errorf("3s after Subscribe(gen 2) joined a held watch detached during a poll: %d fetches with the new Fetcher, want at least 3", got)
		}
	})
}

// A detached watch is still forgotten IdleTTL after its last subscriber
// left, so that retired configs leave nothing behind.
func TestDetachedWatchIsForgotten(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		leaveBefore bool // the last subscriber leaves before Detach
	}{
		{name: "left before Detach", leaveBefore: true},
		{name: "left after Detach", leaveBefore: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				var made atomic.Int64
				f := newFake(serve("v1"))
				e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 30 * time.Second})
				defer e.Close()
				sub := subscribeGen(t, e, testKey, 1, f, &made)
				fresh(t, sub)
				if tt.leaveBefore {
					sub.Close()
				}
				time.Sleep(10 * time.Second)
				e.Detach(1)
				sub.Close()
				time.Sleep(31 * time.Second)
				synctest.Wait()
				if got := e.Len(); got != 0 {
					t.Errorf("31s after detaching and leaving (IdleTTL 30s): Len() = %d, want 0", got)
				}
			})
		})
	}
}

// Detaching a watch whose upstream is failing keeps the failure for the
// subscribers to report, and it is woken like any other.
func TestDetachKeepsFailure(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var made atomic.Int64
		f := newFake(fail(&longpoll.UpstreamError{Status: http.StatusBadGateway}))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribeGen(t, e, testKey, 1, f, &made)
		defer sub.Close()
		st, err := sub.Fresh(context.Background())
		if err != nil || st.Failure == nil {
			t.Fatalf("Fresh() = %+v, %v, want a Failure", st, err)
		}
		e.Detach(1)
		within(t, st.Changed(), time.Second, "Changed after Detach")
		if now := sub.State(); !now.Detached || now.Failure == nil {
			t.Errorf("after Detach of a failing watch: state %+v, want Detached with the Failure kept", now)
		}
	})
}

// A trigger still waiting for the back-off to end when the watch is
// detached must not keep the watch alive: a detached watch cannot poll, and
// must be forgotten IdleTTL after its last subscriber left.
func TestDetachWithPendingTriggerIsForgotten(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		var made atomic.Int64
		f := newFake(fail(&longpoll.UpstreamError{Status: http.StatusServiceUnavailable, RetryAfter: 20 * time.Second}))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 30 * time.Second})
		defer e.Close()
		sub := subscribeGen(t, e, testKey, 1, f, &made)
		synctest.Wait()
		sub.Trigger() // waits for the 20s back-off
		e.Detach(1)
		sub.Close()
		time.Sleep(time.Hour)
		synctest.Wait()
		if got := e.Len(); got != 0 {
			t.Errorf("an hour after the last subscriber left a detached watch (IdleTTL 30s): Len() = %d, want 0", got)
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("after Detach: %d fetches, want 1", got)
		}
	})
}
