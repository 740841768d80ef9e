// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// script is what a fakeFetcher does on its call-th call (counting from 1).
type script func(ctx context.Context, prev *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error)

// fakeFetcher is a scripted upstream. It counts its calls, records when each
// one started, and tracks how many run at once.
type fakeFetcher struct {
	calls     atomic.Int64
	active    atomic.Int64
	maxActive atomic.Int64

	mu     sync.Mutex
	starts []time.Time
	routes []any // the route of each call
	script script
}

func newFake(s script) *fakeFetcher { return &fakeFetcher{script: s} }

// New is a newFetcher for Engine.Subscribe.
func (f *fakeFetcher) New() longpoll.Fetcher { return longpoll.FetcherFunc(f.fetch) }

func (f *fakeFetcher) fetch(ctx context.Context, route any, prev *longpoll.Snapshot) (*longpoll.Snapshot, error) {
	n := f.calls.Add(1)
	a := f.active.Add(1)
	defer f.active.Add(-1)
	for m := f.maxActive.Load(); a > m && !f.maxActive.CompareAndSwap(m, a); m = f.maxActive.Load() {
	}
	f.mu.Lock()
	f.starts = append(f.starts, time.Now())
	f.routes = append(f.routes, route)
	s := f.script
	f.mu.Unlock()
	return s(ctx, prev, n)
}

func (f *fakeFetcher) setScript(s script) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.script = s
}

// serve answers every poll with a new snapshot of body.
func serve(body string) script {
	return func(context.Context, *longpoll.Snapshot, int64) (*longpoll.Snapshot, error) {
		return snapshotOf(body)
	}
}

// fail answers every poll with err.
func fail(err error) script {
	return func(context.Context, *longpoll.Snapshot, int64) (*longpoll.Snapshot, error) {
		return nil, err
	}
}

// gated answers calls from the from-th on only when the test sends on gate
// (or ctx ends); earlier calls are answered at once.
func gated(gate <-chan struct{}, from int64, then script) script {
	return func(ctx context.Context, prev *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
		if call >= from {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, &longpoll.UpstreamError{Err: ctx.Err()}
			}
		}
		return then(ctx, prev, call)
	}
}

// gatedFirst answers the first call only when the test sends on gate (or
// ctx ends), so that the test can read the watch's Pending state before the
// first result replaces it; later calls are answered at once.
func gatedFirst(gate <-chan struct{}, then script) script {
	g := gated(gate, 1, then)
	return func(ctx context.Context, prev *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
		if call == 1 {
			return g(ctx, prev, call)
		}
		return then(ctx, prev, call)
	}
}

// pendingThenResult reads sub's Pending state while the watch's first
// poll is held at gate, releases it, and returns the Pending state and the
// one that replaced it, failing t unless Changed was closed in between.
func pendingThenResult(t *testing.T, sub *longpoll.Subscription, gate chan<- struct{}) (pending, result *longpoll.State) {
	t.Helper()
	pending = sub.State()
	if !pending.Pending() {
		t.Fatalf("new watch with its first poll held: state %+v, want Pending", pending)
	}
	gate <- struct{}{}
	within(t, pending.Changed(), time.Minute, "Changed after the first poll")
	return pending, sub.State()
}

func snapshotOf(body string) (*longpoll.Snapshot, error) {
	return longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, []byte(body), nil)
}

func mustSnapshot(tb testing.TB, body string) *longpoll.Snapshot {
	tb.Helper()
	s, err := snapshotOf(body)
	if err != nil {
		tb.Fatalf("NewSnapshot(%q) = %v, want no error", body, err)
	}
	return s
}

func newEngine(tb testing.TB, cfg longpoll.Config) *longpoll.Engine {
	tb.Helper()
	e, err := longpoll.New(cfg)
	if err != nil {
		tb.Fatalf("New(%+v) = %v, want no error", cfg, err)
	}
	return e
}

func subscribe(tb testing.TB, e *longpoll.Engine, key longpoll.Key, f *fakeFetcher) *longpoll.Subscription {
	tb.Helper()
	sub, err := e.Join(key, "t", f.New)
	if err != nil {
		tb.Fatalf("Subscribe(%s) = %v, want no error", key.Short(), err)
	}
	return sub
}

func fresh(t *testing.T, sub *longpoll.Subscription) *longpoll.State {
	t.Helper()
	st, err := sub.Fresh(t.Context())
	if err != nil {
		t.Fatalf("Fresh() = %v, want no error", err)
	}
	return st
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// within returns what ch gives, failing t if it gives nothing within d (of
// the bubble's fake clock), so that a missed wake fails fast instead of
// polling on forever.
func within[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("%s: nothing after %v, want it sooner", what, d)
		panic("unreachable")
	}
}

// done returns a channel closed when wg's count drops to zero.
func done(wg *sync.WaitGroup) <-chan struct{} {
	ch := make(chan struct{})
	go func() { wg.Wait(); close(ch) }()
	return ch
}

func bodyOf(st *longpoll.State) string {
	if st.Snapshot == nil {
		return "<no snapshot>"
	}
	return string(st.Snapshot.Body)
}

var testKey = longpoll.KeyOf("GET", "/resource")

// New applies the documented defaults and rejects configurations the poll
// loop cannot run with.
func TestNewConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cfg     longpoll.Config
		want    longpoll.Config
		wantErr string
	}{
		{
			name: "zero takes defaults",
			want: longpoll.Config{
				Interval: longpoll.DefaultInterval, IdleTTL: longpoll.DefaultIdleTTL,
				PollTimeout: longpoll.DefaultPollTimeout, MaxBackoff: longpoll.DefaultMaxBackoff,
				NotifyWindow: longpoll.DefaultNotifyWindow,
			},
		},
		{
			name: "max backoff defaults to at least the interval",
			cfg:  longpoll.Config{Interval: time.Minute},
			want: longpoll.Config{
				Interval: time.Minute, IdleTTL: longpoll.DefaultIdleTTL,
				PollTimeout: longpoll.DefaultPollTimeout, MaxBackoff: time.Minute,
				NotifyWindow: longpoll.DefaultNotifyWindow,
			},
		},
		{
			name: "explicit values kept",
			cfg:  longpoll.Config{Interval: 2 * time.Second, IdleTTL: time.Minute, PollTimeout: 3 * time.Second, MaxBackoff: 8 * time.Second, NotifyWindow: time.Second},
			want: longpoll.Config{Interval: 2 * time.Second, IdleTTL: time.Minute, PollTimeout: 3 * time.Second, MaxBackoff: 8 * time.Second, NotifyWindow: time.Second},
		},
		{name: "negative interval", cfg: longpoll.Config{Interval: -time.Second, MaxBackoff: time.Second}, wantErr: "interval must not be negative"},
		{name: "negative idle TTL", cfg: longpoll.Config{IdleTTL: -time.Second}, wantErr: "idle TTL must not be negative"},
		{name: "negative poll timeout", cfg: longpoll.Config{PollTimeout: -time.Second}, wantErr: "poll timeout must not be negative"},
		{name: "max backoff below interval", cfg: longpoll.Config{Interval: time.Minute, MaxBackoff: time.Second}, wantErr: "max backoff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := longpoll.New(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("New(%+v) error = %v, want one containing %q", tt.cfg, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%+v) = %v, want no error", tt.cfg, err)
			}
			defer e.Close()
			if got := e.Config(); got != tt.want {
				t.Errorf("New(%+v).Config() = %+v, want %+v", tt.cfg, got, tt.want)
			}
		})
	}
}

// The point of the module: however many clients wait on a key, the upstream
// sees one request per interval, never one per client.
func TestOneFetchPerIntervalForManySubscribers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const n = 1000
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		ctx, cancel := context.WithCancel(t.Context())
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				sub, err := e.Join(testKey, "t", f.New)
				if err != nil {
					t.Errorf("Subscribe() = %v, want no error", err)
					return
				}
				defer sub.Close()
				for st := sub.State(); !st.Closed; st = sub.State() {
					select {
					case <-st.Changed():
					case <-ctx.Done():
						return
					}
				}
			})
		}
		// Polls start at 0s, 1s, ..., 10s: eleven in 10.5 intervals.
		time.Sleep(10*time.Second + 500*time.Millisecond)
		cancel()
		wg.Wait()
		if got := f.calls.Load(); got != 11 {
			t.Errorf("%d subscribers over 10.5 intervals of 1s: got %d fetches, want 11", n, got)
		}
		if got := f.maxActive.Load(); got != 1 {
			t.Errorf("got %d polls in flight at once, want 1", got)
		}
	})
}

// The interval is a period, counted from the start of each poll, so that
// the upstream sees a steady rate however long a poll takes.
func TestIntervalCountsFromPollStart(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(func(ctx context.Context, _ *longpoll.Snapshot, _ int64) (*longpoll.Snapshot, error) {
			time.Sleep(300 * time.Millisecond) // a slow upstream
			return snapshotOf("v1")
		})
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		time.Sleep(5*time.Second + 500*time.Millisecond)
		sub.Close()
		synctest.Wait()
		f.mu.Lock()
		starts := f.starts
		f.mu.Unlock()
		if len(starts) != 6 {
			t.Fatalf("5.5 intervals with 300ms polls: got %d fetches, want 6", len(starts))
		}
		for i := 1; i < len(starts); i++ {
			if gap := starts[i].Sub(starts[i-1]); gap != time.Second {
				t.Errorf("gap between poll %d and %d: got %v, want 1s", i, i+1, gap)
			}
		}
	})
}

// Clients arriving together on a cold key must not each fetch: they share
// the watch's first poll and all see its result.
func TestColdKeySharesFirstFetch(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const n = 1000
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		want := mustSnapshot(t, "v1").ETag
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				sub, err := e.Join(testKey, "t", f.New)
				if err != nil {
					t.Errorf("Subscribe() = %v, want no error", err)
					return
				}
				defer sub.Close()
				st, err := sub.Fresh(t.Context())
				if err != nil || st.Snapshot == nil || st.Snapshot.ETag != want {
					t.Errorf("Fresh() = %+v, %v, want snapshot with ETag %s", st, err, want)
				}
			})
		}
		wg.Wait()
		if got := f.calls.Load(); got != 1 {
			t.Errorf("%d concurrent first subscribers: got %d fetches, want 1", n, got)
		}
		if got := e.Len(); got != 1 {
			t.Errorf("Len() = %d, want 1 watch", got)
		}
	})
}

// A change must release every waiting client with the new representation,
// through one close of one channel (no per-subscriber work, no stragglers).
func TestChangeWakesAllSubscribersInOneBroadcast(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const n = 1000
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		first := subscribe(t, e, testKey, f)
		defer first.Close()
		st0 := fresh(t, first)
		oldETag := st0.Snapshot.ETag

		var ready, woken sync.WaitGroup
		ready.Add(n)
		waitedOn := make([]<-chan struct{}, n)
		got := make([]*longpoll.State, n)
		for i := range n {
			woken.Go(func() {
				sub, err := e.Join(testKey, "t", f.New)
				if err != nil {
					t.Errorf("Subscribe() = %v, want no error", err)
					ready.Done()
					return
				}
				defer sub.Close()
				st := sub.State()
				waitedOn[i] = st.Changed()
				ready.Done()
				<-st.Changed()
				got[i] = sub.State()
			})
		}
		ready.Wait()
		synctest.Wait()
		if c := f.calls.Load(); c != 1 {
			t.Fatalf("before the change: got %d fetches, want 1", c)
		}

		f.setScript(serve("v2"))
		time.Sleep(time.Second) // the next poll sees v2
		within(t, done(&woken), time.Second, "subscribers woken by the change")

		if c := f.calls.Load(); c != 2 {
			t.Errorf("after one interval: got %d fetches, want 2", c)
		}
		wantETag := mustSnapshot(t, "v2").ETag
		if wantETag == oldETag {
			t.Fatalf("ETag of v2 = ETag of v1 = %s, want them different", oldETag)
		}
		for i := range n {
			if waitedOn[i] != st0.Changed() {
				t.Fatalf("subscriber %d waited on a different channel from the first subscriber's: want one channel for all", i)
			}
			if got[i] == nil || got[i].Snapshot == nil {
				t.Fatalf("subscriber %d: got state %+v after the wake, want the v2 snapshot", i, got[i])
			}
			if got[i].Snapshot.ETag != wantETag || string(got[i].Snapshot.Body) != "v2" {
				t.Errorf("subscriber %d: got ETag %s body %q, want %s %q", i, got[i].Snapshot.ETag, got[i].Snapshot.Body, wantETag, "v2")
			}
			if got[i] != got[0] {
				t.Errorf("subscriber %d: got state %p, want the one state %p published for everyone", i, got[i], got[0])
			}
		}
	})
}

// A poll that finds the same representation must not wake anyone: waking
// would answer every held client with data it already has.
func TestUnchangedPollDoesNotWake(t *testing.T) {
	t.Parallel()
	returnPrev := func(_ context.Context, prev *longpoll.Snapshot, _ int64) (*longpoll.Snapshot, error) {
		if prev != nil {
			return prev, nil // as a Fetcher does on 304 Not Modified
		}
		return snapshotOf("v1")
	}
	tests := []struct {
		name   string
		script script
	}{
		{name: "same body", script: serve("v1")},
		{name: "fetcher returns prev", script: returnPrev},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				f := newFake(tt.script)
				e := newEngine(t, longpoll.Config{Interval: time.Second})
				defer e.Close()
				sub := subscribe(t, e, testKey, f)
				defer sub.Close()
				st := fresh(t, sub)

				time.Sleep(5*time.Second + time.Millisecond)
				synctest.Wait()
				if got := f.calls.Load(); got != 6 {
					t.Fatalf("after 5 intervals: got %d fetches, want 6", got)
				}
				if isClosed(st.Changed()) {
					t.Errorf("5 polls of an unchanged resource: Changed() is closed, want open")
				}
				now := sub.State()
				if now.Changed() != st.Changed() {
					t.Errorf("the current state has a new Changed channel, want the first one kept")
				}
				if now.Snapshot == nil || now.Snapshot.ETag != st.Snapshot.ETag {
					t.Errorf("current snapshot = %+v, want ETag %s", now.Snapshot, st.Snapshot.ETag)
				}
			})
		})
	}
}

// Idle keys must cost nothing upstream: when the last client leaves, the
// watch stops polling.
func TestPollingStopsWhenLastSubscriberLeaves(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: time.Minute})
		defer e.Close()
		a := subscribe(t, e, testKey, f)
		b := subscribe(t, e, testKey, f)
		fresh(t, a)
		time.Sleep(2*time.Second + time.Millisecond) // polls at 0s, 1s, 2s
		synctest.Wait()
		a.Close()
		time.Sleep(2 * time.Second) // b still holds the watch: polls at 3s, 4s
		synctest.Wait()
		if got := f.calls.Load(); got != 5 {
			t.Fatalf("with one subscriber left for 2 more intervals: got %d fetches, want 5", got)
		}
		b.Close()
		b.Close() // idempotent: must not count as a second leave
		time.Sleep(50 * time.Second)
		synctest.Wait()
		if got := f.calls.Load(); got != 5 {
			t.Errorf("50s after the last subscriber left: got %d fetches, want still 5", got)
		}
		if got := e.Len(); got != 1 {
			t.Errorf("before IdleTTL: Len() = %d, want 1 (the idle watch is kept warm)", got)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := e.Len(); got != 0 {
			t.Errorf("after IdleTTL: Len() = %d, want 0 (a second Close must not count as a leave)", got)
		}
	})
}

// An idle watch must be dropped with its memory after IdleTTL, or every key
// ever requested would be kept forever.
func TestIdleWatchForgottenAfterIdleTTL(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 30 * time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		fresh(t, sub)
		time.Sleep(1500 * time.Millisecond)
		sub.Close() // at 1.5s: the watch is forgotten at 31.5s

		time.Sleep(30*time.Second - time.Millisecond)
		synctest.Wait()
		if got := e.Len(); got != 1 {
			t.Fatalf("1ms before IdleTTL ends: Len() = %d, want 1", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := e.Len(); got != 0 {
			t.Fatalf("at IdleTTL after the last subscriber left: Len() = %d, want 0", got)
		}

		// A forgotten key starts cold.
		before := f.calls.Load()
		gate := make(chan struct{})
		f.setScript(gated(gate, before+1, serve("v1")))
		again := subscribe(t, e, testKey, f)
		defer again.Close()
		pendingThenResult(t, again, gate)
		if got := f.calls.Load(); got != before+1 {
			t.Errorf("Subscribe after the watch was forgotten: got %d fetches, want %d", got, before+1)
		}
	})
}

// The last subscriber may leave while a poll is in flight; the watch must
// still be forgotten IdleTTL after it left, not kept because the poll ended
// later.
func TestWatchLeftDuringPollIsForgotten(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gated(gate, 1, serve("v1")))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 30 * time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		synctest.Wait() // the first poll is in flight
		sub.Close()
		time.Sleep(5 * time.Second)
		gate <- struct{}{} // the poll ends 5s after the last subscriber left
		time.Sleep(25*time.Second - time.Millisecond)
		synctest.Wait()
		if got := e.Len(); got != 1 {
			t.Fatalf("1ms before IdleTTL: Len() = %d, want 1", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if got := e.Len(); got != 0 {
			t.Errorf("IdleTTL after the last subscriber left during a poll: Len() = %d, want 0", got)
		}
		if got := f.calls.Load(); got != 1 {
			t.Errorf("got %d fetches, want 1", got)
		}
	})
}

// A client coming back within IdleTTL gets the warm snapshot at once, but an
// answer given at once must not be older than one interval: Fresh waits for
// the one poll that the return started.
func TestReturningSubscriberWaitsForStaleWatch(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gated(gate, 2, func(_ context.Context, _ *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
			return snapshotOf(fmt.Sprintf("v%d", call))
		}))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 30 * time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		fresh(t, sub)
		sub.Close()
		time.Sleep(10 * time.Second)

		back := subscribe(t, e, testKey, f)
		defer back.Close()
		st := back.State()
		if st.Pending() || bodyOf(st) != "v1" {
			t.Fatalf("returning within IdleTTL: got state %+v (body %s), want the warm v1 snapshot", st, bodyOf(st))
		}
		if back.Stale() == nil {
			t.Fatalf("returning 10s after the last poll with a 1s interval: Stale() = nil, want the new poll's channel")
		}
		result := make(chan *longpoll.State)
		go func() {
			st, err := back.Fresh(t.Context())
			if err != nil {
				t.Errorf("Fresh() = %v, want no error", err)
			}
			result <- st
		}()
		synctest.Wait()
		if got := f.calls.Load(); got != 2 {
			t.Errorf("returning to a stale watch: got %d fetches, want 2", got)
		}
		select {
		case st := <-result:
			t.Fatalf("Fresh() returned %s before the new poll ended, want it to wait", bodyOf(st))
		default:
		}
		gate <- struct{}{}
		if st := within(t, result, time.Second, "Fresh() after the poll ended"); bodyOf(st) != "v2" {
			t.Errorf("Fresh() after the new poll: got body %s, want v2", bodyOf(st))
		}
		if back.Stale() != nil {
			t.Errorf("after the poll ended: Stale() != nil, want nil")
		}
		if got := f.calls.Load(); got != 2 {
			t.Errorf("after Fresh: got %d fetches, want 2", got)
		}
	})
}

// A client joining a watch that is already polling, or one that comes back
// within an interval, is answered at once without an extra fetch.
func TestFreshWithoutFetch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		closeFirst bool // the first subscriber leaves before the second comes
	}{
		{name: "active watch", closeFirst: false},
		{name: "idle within interval", closeFirst: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				f := newFake(serve("v1"))
				e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: time.Minute})
				defer e.Close()
				first := subscribe(t, e, testKey, f)
				fresh(t, first)
				if tt.closeFirst {
					first.Close()
				} else {
					defer first.Close()
				}
				time.Sleep(900 * time.Millisecond)

				sub := subscribe(t, e, testKey, f)
				defer sub.Close()
				if ch := sub.Stale(); ch != nil {
					t.Errorf("joining 0.9s after a poll with a 1s interval: Stale() != nil, want nil")
				}
				st := fresh(t, sub)
				if bodyOf(st) != "v1" {
					t.Errorf("Fresh() body = %s, want v1", bodyOf(st))
				}
				if got := f.calls.Load(); got != 1 {
					t.Errorf("joining 0.9s after a poll: got %d fetches, want 1", got)
				}
				time.Sleep(100 * time.Millisecond) // the watch polls on its schedule
				synctest.Wait()
				if got := f.calls.Load(); got != 2 {
					t.Errorf("at 1s: got %d fetches, want 2", got)
				}
			})
		})
	}
}

// Fresh gives up when the caller's context ends, so that a request whose
// client left does not wait for a slow upstream.
func TestFreshReturnsContextError(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gated(gate, 1, serve("v1")))
		e := newEngine(t, longpoll.Config{Interval: time.Second, PollTimeout: time.Minute})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		start := time.Now()
		st, err := sub.Fresh(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Fresh() on a cold watch whose fetch hangs = %v, want context.DeadlineExceeded", err)
		}
		if got := time.Since(start); got != 2*time.Second {
			t.Errorf("Fresh() returned after %v, want 2s", got)
		}
		if !st.Pending() {
			t.Errorf("Fresh() state = %+v, want Pending", st)
		}
		gate <- struct{}{}
	})
}

// A failed first poll must answer the clients waiting on it (with the
// failure), or they would hang until their own timeout.
func TestUpstreamErrorOnColdWatchWakes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gatedFirst(gate, fail(&longpoll.UpstreamError{Status: http.StatusBadGateway})))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		_, now := pendingThenResult(t, sub, gate)
		if now.Failure == nil || now.Pending() || now.Snapshot != nil {
			t.Fatalf("after a failed first poll: state %+v, want Failure set, no snapshot, not pending", now)
		}
		var ue *longpoll.UpstreamError
		if !errors.As(now.Failure.Err, &ue) || ue.Status != http.StatusBadGateway {
			t.Errorf("Failure.Err = %v, want *UpstreamError with status 502", now.Failure.Err)
		}
		if now.Failure.Count != 1 {
			t.Errorf("Failure.Count = %d, want 1", now.Failure.Count)
		}

		// Later failures do not wake: nothing new to tell.
		time.Sleep(now.Failure.RetryAfter)
		synctest.Wait()
		if got := f.calls.Load(); got != 2 {
			t.Fatalf("after the back-off: got %d fetches, want 2", got)
		}
		if isClosed(now.Changed()) {
			t.Errorf("second failure of a cold watch closed Changed, want it open")
		}
		if c := sub.State().Failure.Count; c != 2 {
			t.Errorf("Failure.Count = %d, want 2", c)
		}
	})
}

// When a warm watch starts failing, held clients keep waiting on the last
// good snapshot: a failure is not a change of representation. Subscribers
// are woken once, when the run of failures starts (a stream tells its
// client), and told to wait on; later failures wake nobody.
func TestUpstreamErrorOnWarmWatch(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		st := fresh(t, sub)

		f.setScript(fail(&longpoll.UpstreamError{Status: http.StatusServiceUnavailable}))
		time.Sleep(time.Second)
		synctest.Wait()
		now := sub.State()
		if now.Failure == nil || now.Failure.Count != 1 {
			t.Fatalf("after a failed poll: Failure = %+v, want Count 1", now.Failure)
		}
		if now.Snapshot != st.Snapshot {
			t.Errorf("after a failed poll: Snapshot = %p, want the last good one %p", now.Snapshot, st.Snapshot)
		}
		if !isClosed(st.Changed()) {
			t.Errorf("the first failed poll of a warm watch left Changed open, want subscribers woken once")
		}
		if d := now.Decide([]string{st.Snapshot.ETag}, nil); d != longpoll.Wait {
			t.Errorf("a subscriber with the last good version, after a failure: Decide = %v, want wait", d)
		}
		time.Sleep(10 * time.Second) // more failed polls
		synctest.Wait()
		if c := sub.State().Failure.Count; c < 2 || isClosed(now.Changed()) {
			t.Errorf("after %d failed polls: Changed closed again, want one wake per run", c)
		}
	})
}

// Back-off protects a failing upstream: gaps between polls grow, roughly
// doubling, never below the interval and never above MaxBackoff; the delay
// reported in Failure.RetryAfter is the one applied.
func TestBackoffGrowsAndIsCapped(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const interval, maxBackoff = time.Second, 16 * time.Second
		f := newFake(fail(&longpoll.UpstreamError{Status: http.StatusInternalServerError}))
		e := newEngine(t, longpoll.Config{Interval: interval, MaxBackoff: maxBackoff})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		synctest.Wait()
		for k := 1; k <= 10; k++ {
			fl := sub.State().Failure
			if fl == nil || fl.Count != k {
				t.Fatalf("after %d failed polls: Failure = %+v, want Count %d", k, fl, k)
			}
			upper := min(interval<<k, maxBackoff)
			lower := max(upper/2, interval)
			d := fl.RetryAfter
			if d < lower || d > upper {
				t.Errorf("after %d failed polls: back-off %v, want within [%v, %v]", k, d, lower, upper)
			}
			time.Sleep(d - time.Nanosecond)
			synctest.Wait()
			if got := f.calls.Load(); got != int64(k) {
				t.Fatalf("1ns before the back-off of %v ends: got %d fetches, want %d", d, got, k)
			}
			time.Sleep(time.Nanosecond)
			synctest.Wait()
			if got := f.calls.Load(); got != int64(k+1) {
				t.Fatalf("when the back-off of %v ends: got %d fetches, want %d", d, got, k+1)
			}
		}
	})
}

// An upstream that says when to come back is obeyed (it may be shedding
// load), but within MaxRetryAfter, so that a bogus header cannot park a key
// for hours.
func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		retryAfter time.Duration
		min, max   time.Duration // gap to the next poll
	}{
		{name: "longer than back-off", retryAfter: 20 * time.Second, min: 20 * time.Second, max: 20 * time.Second},
		{name: "capped", retryAfter: time.Hour, min: longpoll.MaxRetryAfter, max: longpoll.MaxRetryAfter},
		{name: "shorter than back-off", retryAfter: time.Millisecond, min: time.Second, max: 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				f := newFake(fail(&longpoll.UpstreamError{Status: http.StatusTooManyRequests, RetryAfter: tt.retryAfter}))
				e := newEngine(t, longpoll.Config{Interval: time.Second, MaxBackoff: 4 * time.Second})
				defer e.Close()
				sub := subscribe(t, e, testKey, f)
				defer sub.Close()
				synctest.Wait()
				d := sub.State().Failure.RetryAfter
				if d < tt.min || d > tt.max {
					t.Fatalf("Retry-After %v: Failure.RetryAfter = %v, want within [%v, %v]", tt.retryAfter, d, tt.min, tt.max)
				}
				time.Sleep(d - time.Nanosecond)
				synctest.Wait()
				if got := f.calls.Load(); got != 1 {
					t.Fatalf("Retry-After %v: got %d fetches 1ns before %v, want 1", tt.retryAfter, got, d)
				}
				time.Sleep(time.Nanosecond)
				synctest.Wait()
				if got := f.calls.Load(); got != 2 {
					t.Fatalf("Retry-After %v: got %d fetches at %v, want 2", tt.retryAfter, got, d)
				}
			})
		})
	}
}

// Recovery must clear the failure (or clients would keep getting errors)
// and return to the normal interval.
func TestRecoveryClearsFailure(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(fail(&longpoll.UpstreamError{Status: http.StatusBadGateway}))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		synctest.Wait()
		st := sub.State()
		if st.Failure == nil {
			t.Fatalf("after a failed poll: Failure = nil, want set")
		}
		f.setScript(serve("v1"))
		time.Sleep(st.Failure.RetryAfter)
		synctest.Wait()
		now := sub.State()
		if now.Failure != nil || bodyOf(now) != "v1" {
			t.Fatalf("after a good poll: state %+v (body %s), want no Failure and body v1", now, bodyOf(now))
		}
		if !isClosed(st.Changed()) {
			t.Errorf("first snapshot after failures: Changed is open, want closed")
		}
		calls := f.calls.Load()
		time.Sleep(time.Second)
		synctest.Wait()
		if got := f.calls.Load(); got != calls+1 {
			t.Errorf("one interval after recovery: got %d fetches, want %d", got, calls+1)
		}

		// The next failure starts a new run: count 1, the first back-off.
		f.setScript(fail(&longpoll.UpstreamError{Status: http.StatusBadGateway}))
		time.Sleep(time.Second)
		synctest.Wait()
		if fl := sub.State().Failure; fl == nil || fl.Count != 1 || fl.RetryAfter > 2*time.Second {
			t.Errorf("first failure after recovery: Failure = %+v, want Count 1 and RetryAfter at most 2s", fl)
		}
	})
}

// A recovery to the version the watch had before its failures wakes the
// subscribers: a stream told of the failure must learn that it is over
// (and be told of the next run), though the version did not change. A
// poll that finds the same version without a failure before wakes nobody.
func TestRecoveryToSameVersionWakes(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		synctest.Wait()
		healthy := sub.State()
		time.Sleep(time.Second)
		synctest.Wait()
		if isClosed(healthy.Changed()) {
			t.Fatalf("an unchanged poll woke the subscribers")
		}

		f.setScript(fail(&longpoll.UpstreamError{Status: http.StatusBadGateway}))
		time.Sleep(time.Second)
		synctest.Wait()
		failing := sub.State()
		if failing.Failure == nil || bodyOf(failing) != "v1" {
			t.Fatalf("after a failed poll: state %+v, want Failure and body v1", failing)
		}
		f.setScript(serve("v1"))
		time.Sleep(failing.Failure.RetryAfter)
		synctest.Wait()
		now := sub.State()
		if now.Failure != nil || bodyOf(now) != "v1" {
			t.Fatalf("after the recovery: state %+v, want no Failure and body v1", now)
		}
		if !isClosed(failing.Changed()) {
			t.Errorf("recovery to the same version: Changed of the failing state is open, want closed")
		}
	})
}

// A response that cannot be shared sends clients through to the upstream
// themselves, and the watch stops polling: polling would be wasted.
func TestUncacheablePassesThrough(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gatedFirst(gate, fail(fmt.Errorf("recording: %w", longpoll.ErrUncacheable))))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: time.Minute})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		if _, now := pendingThenResult(t, sub, gate); !now.Passthrough || now.Failure != nil || now.Snapshot != nil {
			t.Fatalf("after an uncacheable response: state %+v, want Passthrough only", now)
		}
		time.Sleep(10 * time.Second)
		sub.Trigger() // ignored: nothing to poll for
		synctest.Wait()
		if got := f.calls.Load(); got != 1 {
			t.Errorf("10 intervals and a Trigger after pass-through: got %d fetches, want 1", got)
		}
		other := subscribe(t, e, testKey, f)
		defer other.Close()
		if st := other.State(); !st.Passthrough {
			t.Errorf("second subscriber within IdleTTL: state %+v, want Passthrough", st)
		}
		if _, err := other.Fresh(t.Context()); err != nil {
			t.Errorf("Fresh() on a pass-through watch = %v, want no error", err)
		}
		synctest.Wait()
		if got := f.calls.Load(); got != 1 {
			t.Errorf("second subscriber within IdleTTL: got %d fetches, want 1", got)
		}

		// A subscriber returning to the idle pass-through watch does not
		// restart polling either.
		sub.Close()
		other.Close()
		time.Sleep(10 * time.Second)
		back := subscribe(t, e, testKey, f)
		defer back.Close()
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got, st := f.calls.Load(), back.State(); got != 1 || !st.Passthrough {
			t.Errorf("subscriber returning to an idle pass-through watch within IdleTTL: %d fetches, state %+v, want 1 fetch and Passthrough", got, st)
		}

		// And once everyone left, it is forgotten like any idle watch.
		back.Close()
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := e.Len(); got != 0 {
			t.Errorf("IdleTTL after the last subscriber left a pass-through watch: Len() = %d, want 0", got)
		}
	})
}

// Responses can become shareable again (a cookie was set once): after
// IdleTTL a new subscriber probes the upstream again.
func TestPassthroughProbedAgainAfterIdleTTL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		firstStay bool // the first subscriber still holds the pass-through watch
	}{
		{name: "first subscriber stays", firstStay: true},
		{name: "first subscriber left", firstStay: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				f := newFake(fail(fmt.Errorf("recording: %w", longpoll.ErrUncacheable)))
				e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 30 * time.Second})
				defer e.Close()
				first := subscribe(t, e, testKey, f)
				if st := fresh(t, first); !st.Passthrough {
					t.Fatalf("first poll: state %+v, want Passthrough", st)
				}
				if tt.firstStay {
					defer first.Close()
				} else {
					first.Close()
				}
				f.setScript(serve("v1"))
				time.Sleep(31 * time.Second)

				sub := subscribe(t, e, testKey, f)
				defer sub.Close()
				st := fresh(t, sub)
				if got := f.calls.Load(); got != 2 {
					t.Errorf("Subscribe after IdleTTL of pass-through: got %d fetches, want 2", got)
				}
				if st.Passthrough || bodyOf(st) != "v1" {
					t.Errorf("after the new probe: state %+v (body %s), want snapshot v1", st, bodyOf(st))
				}
				if got := e.Len(); got != 1 {
					t.Errorf("Len() = %d, want 1", got)
				}
			})
		})
	}
}

// Trigger lets a caller who knows the resource changed get it out at once
// instead of after up to one interval.
func TestTriggerPollsAtOnce(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Hour})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		st := fresh(t, sub)
		f.setScript(serve("v2"))
		start := time.Now()
		sub.Trigger()
		within(t, st.Changed(), time.Minute, "Changed after the the triggered poll")
		if got := time.Since(start); got != 0 {
			t.Errorf("Trigger: change seen after %v, want at once", got)
		}
		if got := f.calls.Load(); got != 2 {
			t.Errorf("after Trigger: got %d fetches, want 2", got)
		}
		if bodyOf(sub.State()) != "v2" {
			t.Errorf("after Trigger: body %s, want v2", bodyOf(sub.State()))
		}
	})
}

// Trigger works without subscribers (a writer announcing a change warms
// the watch for the clients that come next), and the watch still idles
// out afterwards.
func TestTriggerWithoutSubscribers(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 30 * time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		fresh(t, sub)
		sub.Close()
		time.Sleep(10 * time.Second)
		f.setScript(serve("v2"))
		sub.Trigger()
		synctest.Wait()
		if got := f.calls.Load(); got != 2 {
			t.Fatalf("Trigger on an idle watch: got %d fetches, want 2", got)
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := f.calls.Load(); got != 2 {
			t.Errorf("10s after a Trigger on an idle watch: got %d fetches, want still 2", got)
		}
		back := subscribe(t, e, testKey, f)
		if st := back.State(); bodyOf(st) != "v2" {
			t.Errorf("subscriber after the Trigger: body %s, want v2", bodyOf(st))
		}
		back.Close()
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if got := e.Len(); got != 0 {
			t.Errorf("IdleTTL after the last subscriber left: Len() = %d, want 0", got)
		}
	})
}

// A trigger (a notification) during back-off is evidence that the
// upstream may be back, worth a poll; but not a way to poll a failing
// upstream faster than the interval, however often writers trigger.
func TestTriggerInBackoff(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(fail(&longpoll.UpstreamError{Status: http.StatusServiceUnavailable, RetryAfter: 20 * time.Second}))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		synctest.Wait()
		for range 50 { // 5 seconds of triggers, ten a second
			sub.Trigger()
			time.Sleep(100 * time.Millisecond)
		}
		synctest.Wait()
		if got := f.calls.Load(); got < 5 || got > 6 {
			t.Fatalf("5s of triggers during a 20s back-off: got %d fetches, want 5 or 6 (the first, then one a second)", got)
		}
		time.Sleep(10 * time.Second) // no trigger: the back-off holds
		synctest.Wait()
		if got := f.calls.Load(); got > 6 {
			t.Errorf("10s without a trigger in back-off: got %d fetches in all, want no more", got)
		}
	})
}

// A burst of triggers (every writer notifying) must not become a burst of
// polls: triggers during a poll coalesce into exactly one more poll.
func TestTriggersDuringPollCauseOneExtraPoll(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gated(gate, 2, serve("v1")))
		e := newEngine(t, longpoll.Config{Interval: time.Hour, PollTimeout: 2 * time.Hour})
		defer e.Close()
		subs := make([]*longpoll.Subscription, 10)
		for i := range subs {
			subs[i] = subscribe(t, e, testKey, f)
			defer subs[i].Close()
		}
		fresh(t, subs[0])
		subs[0].Trigger() // poll 2 starts and blocks on the gate
		synctest.Wait()
		if got := f.calls.Load(); got != 2 {
			t.Fatalf("after one Trigger: got %d fetches, want 2", got)
		}
		var wg sync.WaitGroup
		for _, s := range subs {
			for range 10 {
				wg.Go(s.Trigger)
			}
		}
		wg.Wait()
		synctest.Wait()
		if got := f.calls.Load(); got != 2 {
			t.Fatalf("100 Triggers while a poll is in flight: got %d fetches during it, want 2", got)
		}
		gate <- struct{}{} // poll 2 ends; poll 3 starts at the end of the notify window, and blocks
		time.Sleep(longpoll.DefaultNotifyWindow)
		synctest.Wait()
		if got := f.calls.Load(); got != 3 {
			t.Fatalf("after the poll in flight ended: got %d fetches, want 3 (one extra)", got)
		}
		gate <- struct{}{} // poll 3 ends; nothing more is due for an hour
		synctest.Wait()
		if got := f.calls.Load(); got != 3 {
			t.Errorf("after the extra poll: got %d fetches, want 3", got)
		}
		if got := f.maxActive.Load(); got != 1 {
			t.Errorf("got %d polls in flight at once, want 1", got)
		}
	})
}

// However triggers, the interval timer and slow fetches interleave, a
// watch never runs two polls at once (which would double upstream load).
func TestNeverTwoPollsInFlight(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(func(ctx context.Context, _ *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
			select {
			case <-time.After(time.Duration(call%4) * 700 * time.Millisecond):
			case <-ctx.Done():
				return nil, &longpoll.UpstreamError{Err: ctx.Err()}
			}
			return snapshotOf(fmt.Sprint(call % 3))
		})
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				sub := subscribe(t, e, testKey, f)
				defer sub.Close()
				for j := range 30 {
					time.Sleep(time.Duration(100+10*i+j) * time.Millisecond)
					sub.Trigger()
				}
			})
		}
		wg.Wait()
		if got := f.maxActive.Load(); got != 1 {
			t.Errorf("got %d polls in flight at once, want 1", got)
		}
		if got := f.calls.Load(); got < 5 {
			t.Errorf("got %d fetches, want the watch to have polled", got)
		}
	})
}

// A trigger that arrives during a poll whose response cannot be shared must
// not keep the watch alive: the pass-through watch must still be forgotten
// IdleTTL after its last subscriber left, or such keys leak.
func TestTriggerDuringUncacheablePollDoesNotPinWatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		leaveDuring bool // the subscriber leaves while the poll is in flight
	}{
		{name: "subscriber leaves after the poll", leaveDuring: false},
		{name: "subscriber leaves during the poll", leaveDuring: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				gate := make(chan struct{})
				f := newFake(gated(gate, 1, fail(fmt.Errorf("recording: %w", longpoll.ErrUncacheable))))
				e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 10 * time.Second})
				defer e.Close()
				sub := subscribe(t, e, testKey, f)
				synctest.Wait() // the first poll is in flight
				sub.Trigger()
				if tt.leaveDuring {
					sub.Close()
				}
				gate <- struct{}{}
				synctest.Wait()
				if st := sub.State(); !st.Passthrough {
					t.Fatalf("after an uncacheable response: state %+v, want Passthrough", st)
				}
				sub.Close()
				time.Sleep(time.Hour)
				synctest.Wait()
				if got := e.Len(); got != 0 {
					t.Errorf("an hour after the last subscriber left a pass-through watch triggered during its poll (IdleTTL 10s): Len() = %d, want 0", got)
				}
				if got := f.calls.Load(); got != 1 {
					t.Errorf("got %d fetches, want 1", got)
				}
			})
		})
	}
}

// A bug in a Fetcher must fail one poll, not crash the server.
func TestFetcherPanicFailsPoll(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gatedFirst(gate, func(context.Context, *longpoll.Snapshot, int64) (*longpoll.Snapshot, error) {
			panic("fetcher bug")
		}))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		_, now := pendingThenResult(t, sub, gate)
		if now.Failure == nil || !strings.Contains(now.Failure.Err.Error(), "fetcher bug") {
			t.Fatalf("after a panicking fetch: Failure = %+v, want an error mentioning the panic", now.Failure)
		}
		f.setScript(serve("v1"))
		time.Sleep(now.Failure.RetryAfter)
		synctest.Wait()
		if now := sub.State(); now.Failure != nil || bodyOf(now) != "v1" {
			t.Errorf("poll after the panic: state %+v, want snapshot v1 and no failure", now)
		}
	})
}

// A Fetcher returning neither a snapshot nor an error is a bug; it must
// fail the poll rather than publish a nil snapshot that handlers would
// dereference.
func TestNilSnapshotFailsPoll(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(func(context.Context, *longpoll.Snapshot, int64) (*longpoll.Snapshot, error) {
			return nil, nil
		})
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		st := fresh(t, sub)
		var ue *longpoll.UpstreamError
		if st.Failure == nil || !errors.As(st.Failure.Err, &ue) {
			t.Errorf("after (nil, nil) from the fetcher: state %+v, want a Failure with *UpstreamError", st)
		}
	})
}

// Close must release every held request (with a state they can tell from
// a change) or they would hang until their timeout during shutdown.
func TestCloseWakesEverySubscriber(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const n = 100
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close() // on failure; the test closes it itself
		keys := []longpoll.Key{longpoll.KeyOf("a"), longpoll.KeyOf("b")}
		var ready, woken sync.WaitGroup
		ready.Add(n)
		got := make([]*longpoll.State, n)
		for i := range n {
			woken.Go(func() {
				sub := subscribe(t, e, keys[i%2], f)
				defer sub.Close()
				fresh(t, sub)
				st := sub.State()
				ready.Done()
				<-st.Changed()
				got[i] = sub.State()
			})
		}
		ready.Wait()
		if err := e.Close(); err != nil {
			t.Fatalf("Close() = %v, want nil", err)
		}
		within(t, done(&woken), time.Second, "subscribers woken by Close")
		for i, st := range got {
			if !st.Closed {
				t.Errorf("subscriber %d after Close: state %+v, want Closed", i, st)
			}
			if bodyOf(st) != "v1" {
				t.Errorf("subscriber %d after Close: body %s, want the last snapshot v1 kept", i, bodyOf(st))
			}
		}
		if got := e.Len(); got != 0 {
			t.Errorf("Len() after Close = %d, want 0", got)
		}
	})
}

// Close is called from several shutdown paths; a second call must be
// harmless.
func TestCloseIsIdempotent(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{})
		sub := subscribe(t, e, testKey, newFake(serve("v1")))
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				if err := e.Close(); err != nil {
					t.Errorf("concurrent Close() = %v, want nil", err)
				}
			})
		}
		wg.Wait()
		if err := e.Close(); err != nil {
			t.Errorf("Close() again = %v, want nil", err)
		}
		sub.Close()
		sub.Close()
	})
}

// A handler of an old config may still call Subscribe after shutdown; it
// must get ErrClosed and serve the request directly.
func TestSubscribeAfterCloseFails(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		f := newFake(serve("v1"))
		e := newEngine(t, longpoll.Config{})
		e.Close()
		sub, err := e.Join(testKey, "t", f.New)
		if !errors.Is(err, longpoll.ErrClosed) || sub != nil {
			t.Errorf("Subscribe after Close = %v, %v, want nil, ErrClosed", sub, err)
		}
		synctest.Wait()
		if got := f.calls.Load(); got != 0 {
			t.Errorf("Subscribe after Close: got %d fetches, want 0", got)
		}
	})
}

// Close must not wait for a slow upstream: the poll in flight is cancelled
// at once, and a subscriber waiting on it is released.
func TestCloseCancelsInflightFetch(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		fetchErr := make(chan error, 1)
		stop := make(chan struct{}) // ends the fetch if Close does not
		defer close(stop)
		f := newFake(func(ctx context.Context, _ *longpoll.Snapshot, _ int64) (*longpoll.Snapshot, error) {
			select {
			case <-ctx.Done():
			case <-stop:
			}
			fetchErr <- ctx.Err()
			return nil, &longpoll.UpstreamError{Err: ctx.Err()}
		})
		e := newEngine(t, longpoll.Config{Interval: time.Second, PollTimeout: time.Hour})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		freshDone := make(chan *longpoll.State)
		go func() {
			st, _ := sub.Fresh(t.Context())
			freshDone <- st
		}()
		synctest.Wait()
		start := time.Now()
		e.Close()
		if err := within(t, fetchErr, time.Second, "fetch returning after Close"); !errors.Is(err, context.Canceled) {
			t.Errorf("fetch ctx after Close: err %v, want context.Canceled", err)
		}
		// Fresh returns at once; whether with the Closed state or with the
		// cancelled poll's failure is racy (see
		// TestClosePendingSubscriberSeesClosed); the state ends Closed.
		within(t, freshDone, time.Second, "Fresh() returning after Close")
		if st := sub.State(); !st.Closed {
			t.Errorf("after Close: state %+v, want Closed", st)
		}
		if got := time.Since(start); got != 0 {
			t.Errorf("Close released the fetch after %v, want at once", got)
		}
	})
}

// A request waiting for a watch's first poll when the engine closes must
// be woken with the Closed state (the module then serves it directly), not
// with the failure of the poll that Close cancelled, which the module would
// turn into a 502 for every such client during a reload or shutdown.
//
// The race is between Close cancelling the polls and marking the watches
// closed, so this test gives it many watches to lose it on.
func TestClosePendingSubscriberSeesClosed(t *testing.T) {
	t.Parallel()
	for round := range 20 {
		synctest.Test(t, func(t *testing.T) {
			const n = 200
			f := newFake(func(ctx context.Context, _ *longpoll.Snapshot, _ int64) (*longpoll.Snapshot, error) {
				<-ctx.Done()
				return nil, &longpoll.UpstreamError{Err: ctx.Err()}
			})
			e := newEngine(t, longpoll.Config{Interval: time.Second, PollTimeout: time.Hour})
			defer e.Close()
			results := make(chan *longpoll.State, n)
			for i := range n {
				sub := subscribe(t, e, longpoll.KeyOf(fmt.Sprint(i)), f)
				defer sub.Close()
				go func() {
					st, _ := sub.Fresh(t.Context())
					results <- st
				}()
			}
			synctest.Wait()
			e.Close()
			for range n {
				if st := within(t, results, time.Second, "Fresh() returning after Close"); !st.Closed {
					t.Fatalf("round %d: Fresh() waiting on a first poll, after Close: state %+v (Failure %v), want Closed",
						round, st, st.Failure)
				}
			}
		})
	}
}

// Reloads close engines; each must leave no goroutine behind (poll, timer
// callback or subscriber). synctest.Test would also fail on a goroutine
// left blocked; this test names them.
func TestCloseLeavesNoGoroutine(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		f := newFake(gated(gate, 3, serve("v1")))
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: time.Minute})
		defer e.Close() // on failure; the test closes it itself
		var wg sync.WaitGroup
		for i := range 50 {
			wg.Go(func() {
				sub := subscribe(t, e, longpoll.KeyOf(fmt.Sprint(i%5)), f)
				defer sub.Close()
				for st := sub.State(); !st.Closed; st = sub.State() {
					<-st.Changed()
				}
			})
		}
		time.Sleep(2500 * time.Millisecond) // some watches have a poll blocked at the gate
		idle := subscribe(t, e, longpoll.KeyOf("idle"), f)
		idle.Close() // an idle watch
		synctest.Wait()
		if got := bubbleGoroutines(); len(got) < 50 {
			t.Fatalf("with 50 subscribers and polls in flight: %d goroutines of the test and engine, want at least 50", len(got))
		}
		e.Close()
		within(t, done(&wg), time.Second, "subscribers leaving after Close")
		synctest.Wait()
		if got := bubbleGoroutines(); len(got) > 0 {
			t.Errorf("after Close: %d goroutines of the test and engine left, want 0:\n%s", len(got), strings.Join(got, "\n\n"))
		}
	})
}

// bubbleGoroutines returns the stacks of the goroutines, other than the
// caller, that belong to the caller's synctest bubble and run code of this
// module (the engine or the test), leaving out the bubble's own machinery.
func bubbleGoroutines() []string {
	buf := make([]byte, 1<<16)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	recs := strings.Split(string(buf), "\n\n")
	self, _, _ := strings.Cut(recs[0], "\n") // "goroutine N [running, synctest bubble B]:"
	_, bubble, ok := strings.Cut(self, "synctest bubble ")
	if !ok {
		panic("bubbleGoroutines called outside a synctest bubble: " + self)
	}
	var out []string
	for _, r := range recs[1:] {
		header, _, _ := strings.Cut(r, "\n")
		switch {
		case !strings.Contains(header, "synctest bubble "+bubble),
			!strings.Contains(r, "caddy-longpoll"),
			strings.Contains(r, "synctest.Run"), strings.Contains(r, "testingSynctestTest"):
			continue
		}
		out = append(out, r)
	}
	return out
}

// A hung upstream must not hold a watch forever: each poll is cut at
// PollTimeout and counts as a failure.
func TestPollTimeoutCancelsFetch(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const timeout = 5 * time.Second
		type ended struct {
			after time.Duration
			err   error
		}
		ends := make(chan ended, 1)
		f := newFake(func(ctx context.Context, _ *longpoll.Snapshot, _ int64) (*longpoll.Snapshot, error) {
			start := time.Now()
			<-ctx.Done()
			select {
			case ends <- ended{time.Since(start), ctx.Err()}:
			default: // only the first poll is looked at
			}
			return nil, &longpoll.UpstreamError{Err: ctx.Err()}
		})
		e := newEngine(t, longpoll.Config{Interval: time.Second, PollTimeout: timeout})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		st := sub.State()
		within(t, st.Changed(), time.Minute, "Changed after the first poll, cut by PollTimeout")
		got := within(t, ends, time.Second, "fetch returning")
		if got.after != timeout || !errors.Is(got.err, context.DeadlineExceeded) {
			t.Errorf("blocking fetch with PollTimeout %v: ended after %v with %v, want %v with context.DeadlineExceeded",
				timeout, got.after, got.err, timeout)
		}
		if fl := sub.State().Failure; fl == nil || !errors.Is(fl.Err, context.DeadlineExceeded) {
			t.Errorf("after the poll timed out: Failure = %+v, want one wrapping context.DeadlineExceeded", fl)
		}
	})
}

// With a long interval, consecutive failures must not overflow the back-off
// computation (Interval << failures) and crash the poll goroutine.
func TestBackoffLongIntervalDoesNotOverflow(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		const interval = 48 * time.Hour
		f := newFake(fail(&longpoll.UpstreamError{Status: http.StatusBadGateway}))
		e := newEngine(t, longpoll.Config{Interval: interval, MaxBackoff: 4 * interval})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		synctest.Wait()
		for k := 1; k <= 20; k++ {
			fl := sub.State().Failure
			if fl == nil || fl.Count != k {
				t.Fatalf("after %d failed polls: Failure = %+v, want Count %d", k, fl, k)
			}
			if fl.RetryAfter < interval || fl.RetryAfter > 4*interval {
				t.Fatalf("after %d failed polls: back-off %v, want within [%v, %v]", k, fl.RetryAfter, interval, 4*interval)
			}
			time.Sleep(fl.RetryAfter)
			synctest.Wait()
		}
	})
}
