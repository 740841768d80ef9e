// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// evictions counts what the engine reports evicted.
type evictions struct {
	pollLog
	n atomic.Int64
}

func (e *evictions) Evicted(n int) { e.n.Add(int64(n)) }

// Anybody can make a watch with one request for a new key, and an idle
// watch keeps its body for idle_ttl: without a bound, 3,000 requests for a
// 512 KiB body held 1.5 GiB. The budget must hold however many keys come,
// by dropping the longest idle watches first.
func TestMemoryBudgetEvictsIdleWatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const body, budget = 64 << 10, 1 << 20 // 64 KiB bodies, 1 MiB
		obs := new(evictions)
		e, err := longpoll.New(longpoll.Config{Interval: time.Second, IdleTTL: time.Hour, MaxMemory: budget}, longpoll.WithObserver(obs))
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		f := newFake(serve(strings.Repeat("x", body)))
		var first longpoll.Key
		for i := range 200 { // 200 keys × 64 KiB = 12.5 MiB without a bound
			key := longpoll.KeyOf("k", fmt.Sprint(i))
			if i == 0 {
				first = key
			}
			sub := subscribe(t, e, key, f)
			fresh(t, sub) // its first poll
			sub.Close()   // idle from now on
			time.Sleep(time.Millisecond)
			synctest.Wait() // an eviction run
			if got := e.Stats().Bytes; got > budget+body+2048 {
				t.Fatalf("after %d keys: the watches hold %d bytes, want at most the budget %d (and the one snapshot over it)", i+1, got, budget)
			}
		}
		st := e.Stats()
		if st.Watches < 10 || st.Watches > 17 {
			t.Errorf("watches kept: got %d, want the 64 KiB ones that fit in 1 MiB (10 to 16)", st.Watches)
		}
		if got := obs.n.Load(); got != int64(200-st.Watches) {
			t.Errorf("evictions reported: got %d, want %d (200 made, %d kept)", got, 200-st.Watches, st.Watches)
		}
		// The longest idle went first: the first key's watch is gone, so a
		// new subscriber polls it again.
		calls := f.calls.Load()
		sub := subscribe(t, e, first, f)
		fresh(t, sub)
		sub.Close()
		if f.calls.Load() != calls+1 {
			t.Errorf("the oldest idle watch: got %d polls on a new subscriber, want 1 (evicted)", f.calls.Load()-calls)
		}
	})
}

// Watches with subscribers are never evicted: a snapshot that they leave
// no room for is not kept, rather than the memory growing past the budget.
// The poll fails with ErrOverBudget (its clients are to be refused, and the
// watch backs off); passing its requests through instead would send every
// client loop to the upstream.
func TestMemoryBudgetRefusesOverActive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const body, budget = 300 << 10, 1 << 20
		e := newEngine(t, longpoll.Config{Interval: time.Second, MaxMemory: budget})
		defer e.Close()
		f := newFake(serve(strings.Repeat("y", body)))
		var held []*longpoll.Subscription
		defer func() {
			for _, s := range held {
				s.Close()
			}
		}()
		for i := range 3 { // three 300 KiB bodies fit in 1 MiB
			sub := subscribe(t, e, longpoll.KeyOf("k", fmt.Sprint(i)), f)
			held = append(held, sub)
			if st := fresh(t, sub); st.Snapshot == nil || st.Passthrough {
				t.Fatalf("watch %d: got no snapshot, want one (it fits)", i+1)
			}
		}
		sub := subscribe(t, e, longpoll.KeyOf("k", "4"), f)
		held = append(held, sub)
		st := fresh(t, sub)
		if st.Passthrough || st.Snapshot != nil || st.Failure == nil || !errors.Is(st.Failure.Err, longpoll.ErrOverBudget) {
			t.Errorf("a fourth 300 KiB watch under a 1 MiB budget: got snapshot %v, passthrough %v, failure %v; want a failure with ErrOverBudget", st.Snapshot != nil, st.Passthrough, st.Failure)
		}
		if got := e.Stats().Bytes; got > budget {
			t.Errorf("the watches hold %d bytes, want at most %d", got, budget)
		}
		// Room made (another watch's last subscriber left, and it is
		// evicted): the watch keeps its representation at its next poll.
		held[0].Close()
		held = held[1:]
		time.Sleep(time.Minute) // past the back-off
		synctest.Wait()
		if st := sub.State(); st.Snapshot == nil || st.Failure != nil {
			t.Errorf("after room was made: got snapshot %v, failure %v; want the representation kept", st.Snapshot != nil, st.Failure)
		}
	})
}

// A handler's cap on watches polling at once bounds what it costs the
// upstream per interval; subscribers of a watch that polls already are not
// refused.
func TestMaxActive(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second, MaxActive: 2})
		defer e.Close()
		f := newFake(serve("z"))
		a := subscribe(t, e, longpoll.KeyOf("a"), f)
		b := subscribe(t, e, longpoll.KeyOf("b"), f)
		if _, err := e.Join(longpoll.KeyOf("c"), "t", f.New); !errors.Is(err, longpoll.ErrTooManyWatches) {
			t.Fatalf("a third watch under MaxActive 2: got %v, want ErrTooManyWatches", err)
		}
		again := subscribe(t, e, longpoll.KeyOf("a"), f) // an active watch: admitted
		again.Close()
		a.Close()
		c := subscribe(t, e, longpoll.KeyOf("c"), f) // a's place is free
		c.Close()
		b.Close()
	})
}

// An upstream that answers one 503 with Retry-After: 300 and is back a
// second later must not keep a watch down for five minutes: the header is
// honoured up to MaxRetryAfter, a notification is worth a poll even in
// back-off, and a new client after a quiet spell gets a fresh attempt.
func TestBackoffRecovery(t *testing.T) {
	down := &longpoll.UpstreamError{Status: 503, RetryAfter: 300 * time.Second}
	t.Run("Retry-After capped", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(fail(down))
			e := newEngine(t, longpoll.Config{Interval: time.Second})
			defer e.Close()
			sub := subscribe(t, e, testKey, f)
			defer sub.Close()
			synctest.Wait()
			if d := sub.State().Failure.RetryAfter; d != longpoll.MaxRetryAfter {
				t.Errorf("Retry-After 300s: the watch waits %v, want MaxRetryAfter (%v)", d, longpoll.MaxRetryAfter)
			}
		})
	})
	t.Run("a notification polls in back-off, once an interval", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(fail(down))
			e := newEngine(t, longpoll.Config{Interval: time.Second})
			defer e.Close()
			sub, err := e.Join(testKey, "/t", f.New)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			synctest.Wait()
			f.setScript(serve("back"))
			time.Sleep(2 * time.Second)
			for range 50 { // a burst: one poll
				e.Notify([]string{"/t"})
			}
			synctest.Wait()
			if got := f.calls.Load(); got != 2 {
				t.Fatalf("a burst of notifications in back-off: got %d polls in all, want 2", got)
			}
			if st := sub.State(); st.Failure != nil || st.Snapshot == nil {
				t.Errorf("after the notification's poll: got failure %v, want the upstream's answer", st.Failure)
			}
		})
	})
	t.Run("notifications in back-off: at most one poll an interval", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(fail(down))
			e := newEngine(t, longpoll.Config{Interval: time.Second})
			defer e.Close()
			sub, err := e.Join(testKey, "/t", f.New)
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			synctest.Wait()
			for range 100 { // 10 seconds of notifications, ten a second
				e.Notify([]string{"/t"})
				time.Sleep(100 * time.Millisecond)
			}
			synctest.Wait()
			if got := f.calls.Load(); got < 9 || got > 12 {
				t.Errorf("10s of notifications to a failing upstream: got %d polls, want about 10 (one a second)", got)
			}
		})
	})
	t.Run("a new subscriber after a quiet spell retries", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(fail(down))
			e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: time.Hour})
			defer e.Close()
			sub := subscribe(t, e, testKey, f)
			synctest.Wait()
			sub.Close()
			f.setScript(serve("back"))
			time.Sleep(5 * time.Second) // in back-off for 30s
			sub = subscribe(t, e, testKey, f)
			defer sub.Close()
			st := fresh(t, sub)
			if st.Failure != nil || st.Snapshot == nil {
				t.Errorf("a new subscriber 5s into a 30s back-off: got failure %v, want a fresh poll's answer", st.Failure)
			}
			if got := f.calls.Load(); got != 2 {
				t.Errorf("got %d polls, want 2", got)
			}
		})
	})
}

// A Fetcher that ignores its context (Caddy's FastCGI client reads without
// a deadline) must not keep its watch from failing at the poll timeout: the
// clients would be given the last representation as current while the
// upstream hangs. The late result is dropped, and no second poll starts
// while the first has not returned.
func TestPollTimeoutWithoutTheFetcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		f := newFake(func(_ context.Context, _ *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
			if call == 2 {
				<-release // ignores its context
				return snapshotOf("late")
			}
			return snapshotOf(fmt.Sprint("v", call))
		})
		e := newEngine(t, longpoll.Config{Interval: time.Second, PollTimeout: 2 * time.Second})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		first := fresh(t, sub)
		time.Sleep(time.Second + 2*time.Second + time.Second) // the second poll, its timeout, and a grace
		synctest.Wait()
		st := sub.State()
		if st.Failure == nil || !errors.Is(st.Failure.Err, longpoll.ErrPollTimeout) {
			t.Fatalf("a poll stuck past the poll timeout: got failure %v, want ErrPollTimeout", st.Failure)
		}
		if st.Snapshot != first.Snapshot {
			t.Errorf("the snapshot changed while the poll was stuck")
		}
		time.Sleep(time.Minute)
		synctest.Wait()
		if got := f.calls.Load(); got != 2 {
			t.Errorf("while the second poll is stuck: got %d polls, want no third", got)
		}
		close(release)
		synctest.Wait()
		if st := sub.State(); st.Snapshot != nil && string(st.Snapshot.Body) == "late" {
			t.Errorf("the late result of the stuck poll was published, want it dropped")
		}
		time.Sleep(time.Minute) // the back-off, then polls resume
		synctest.Wait()
		if st := sub.State(); st.Failure != nil || st.Snapshot == nil || string(st.Snapshot.Body) == "late" || f.calls.Load() < 3 {
			t.Errorf("after the stuck poll returned: got %d polls, failure %v; want polling resumed", f.calls.Load(), st.Failure)
		}
	})
}

// sized is a derived value that holds n bytes.
type sized int64

func (s sized) Size() int64 { return int64(s) }

type sizedKey struct{}

// A derived value that holds memory (a compressed copy of the body) counts
// in its watch's size while its snapshot is current, and no longer once a
// change replaced it.
func TestDerivedSizeCounts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, err := longpoll.New(longpoll.Config{Interval: time.Second, IdleTTL: time.Hour, MaxMemory: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		var version atomic.Int64
		f := newFake(func(context.Context, *longpoll.Snapshot, int64) (*longpoll.Snapshot, error) {
			return snapshotOf(fmt.Sprint("version ", version.Load()))
		})
		sub := subscribe(t, e, longpoll.KeyOf("sized"), f)
		defer sub.Close()
		st := fresh(t, sub)
		before := e.Stats().Bytes
		st.Snapshot.Derived(sizedKey{}, func(*longpoll.Snapshot) any { return sized(10000) })
		if got := e.Stats().Bytes; got != before+10000 {
			t.Errorf("after a derived value of 10,000 bytes: the watches hold %d, want %d", got, before+10000)
		}
		version.Add(1)
		sub.Trigger()
		<-st.Changed()
		if got := e.Stats().Bytes; got != before {
			t.Errorf("after a change: the watches hold %d, want %d (the new snapshot, no derived value)", got, before)
		}
		// a value derived from the replaced snapshot counts nowhere
		st.Snapshot.Derived(struct{ sizedKey }{}, func(*longpoll.Snapshot) any { return sized(5000) })
		if got := e.Stats().Bytes; got != before {
			t.Errorf("a value derived from a replaced snapshot: the watches hold %d, want %d", got, before)
		}
	})
}

// An upstream that sends the same answer in full at every poll (no
// validators to make polls conditional) leaves the snapshot held as it is,
// and what was derived from it (its compressed variants) with it.
func TestSameAnswerKeepsSnapshot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: time.Hour})
		f := newFake(serve("same body")) // a new Snapshot object at every poll
		sub := subscribe(t, e, longpoll.KeyOf("same"), f)
		defer sub.Close()
		first := fresh(t, sub).Snapshot
		made := 0
		mk := func(*longpoll.Snapshot) any { made++; return sized(100) }
		first.Derived(sizedKey{}, mk)
		time.Sleep(3500 * time.Millisecond) // three more polls
		synctest.Wait()
		if n := f.calls.Load(); n < 4 {
			t.Fatalf("polls: %d, want at least 4", n)
		}
		if got := sub.State().Snapshot; got != first {
			t.Errorf("after polls that found the same answer: a new snapshot is held, want the first (its derived values with it)")
		}
		sub.State().Snapshot.Derived(sizedKey{}, mk)
		if made != 1 {
			t.Errorf("derived value made %d times, want once", made)
		}
		// new validators are a new snapshot (the next poll sends them)
		f.setScript(func(context.Context, *longpoll.Snapshot, int64) (*longpoll.Snapshot, error) {
			return longpoll.NewSnapshot(200, http.Header{"Content-Type": {"text/plain"}, "Etag": {`"v2"`}}, []byte("same body"), nil)
		})
		time.Sleep(time.Second)
		synctest.Wait()
		if got := sub.State().Snapshot; got == first || got.UpstreamETag != `"v2"` {
			t.Errorf("after a poll with a new upstream ETag: got the same snapshot (upstream ETag %q), want a new one with \"v2\"", got.UpstreamETag)
		}
	})
}
