// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// routesOf returns the routes of f's calls from the n-th on (counting from
// 0).
func routesOf(f *fakeFetcher, from int) []any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.routes[min(from, len(f.routes)):])
}

// A reload hands the watches to the new configuration's route: from the
// next poll on, every watch polls through it, and neither the subscribers
// (held requests, streams) nor the state notice: nobody is woken, nothing
// is polled again at once. Closing the old route changes nothing more.
func TestRouteHandOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		old := e.OpenRoute("old")
		f := newFake(serve("same"))
		held := subscribe(t, e, testKey, f)
		defer held.Close()
		stream := subscribe(t, e, testKey, f)
		defer stream.Close()
		st := fresh(t, held)

		calls := len(routesOf(f, 0))
		next := e.OpenRoute("new")
		time.Sleep(3 * time.Second)
		synctest.Wait()
		old.Close()
		time.Sleep(3 * time.Second)
		synctest.Wait()

		select {
		case <-st.Changed():
			t.Error("the hand-off woke the subscribers, want them left alone")
		default:
		}
		got := routesOf(f, calls)
		if len(got) < 5 || len(got) > 7 {
			t.Fatalf("6s after the hand-off: got %d polls, want one a second (no extra)", len(got))
		}
		for i, r := range got {
			if r != "new" {
				t.Errorf("poll %d after the new route opened went through %v, want the new route", i, r)
			}
		}
		next.Close()
	})
}

// A configuration that loads and is rolled back (a reload that fails after
// provisioning) opens a route and closes it: polls go back to the route
// still open, with no gap.
func TestRouteRollBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		running := e.OpenRoute("running")
		defer running.Close()
		f := newFake(serve("x"))
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		fresh(t, sub)
		failed := e.OpenRoute("failed")
		time.Sleep(time.Second)
		synctest.Wait()
		failed.Close()
		failed.Close() // idempotent
		calls := len(routesOf(f, 0))
		time.Sleep(3 * time.Second)
		synctest.Wait()
		got := routesOf(f, calls)
		if len(got) < 2 {
			t.Fatalf("after the roll-back: got %d polls, want polling to go on", len(got))
		}
		for _, r := range got {
			if r != "running" {
				t.Errorf("a poll after the roll-back went through %v, want the running route", r)
			}
		}
		if n := e.Routes(); n != 1 {
			t.Errorf("open routes: got %d, want 1", n)
		}
	})
}

// A route that cannot take polls yet (a configuration whose handlers are
// still being provisioned) hands the poll to the next newest open route.
func TestRouteNotReady(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		e.OpenRoute("ready")
		e.OpenRoute("loading")
		var through []any
		f := longpoll.FetcherFunc(func(_ context.Context, route any, _ *longpoll.Snapshot) (*longpoll.Snapshot, error) {
			through = append(through, route)
			if route == "loading" {
				return nil, longpoll.ErrRouteNotReady
			}
			return snapshotOf("x")
		})
		sub, err := e.Join(testKey, "/t", func() longpoll.Fetcher { return f })
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		st := fresh(t, sub)
		if st.Snapshot == nil || st.Failure != nil {
			t.Fatalf("got failure %v, want the ready route's snapshot", st.Failure)
		}
		if want := []any{"loading", "ready"}; !slices.Equal(through, want) {
			t.Errorf("the first poll tried %v, want %v", through, want)
		}
	})
}

// Without a route open (a caller that needs none), polls get a nil route;
// and with only routes that are not ready, the poll fails rather than
// hangs.
func TestRouteNone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		f := newFake(serve("x"))
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		fresh(t, sub)
		if got := routesOf(f, 0); len(got) != 1 || got[0] != nil {
			t.Errorf("polls without a route: got routes %v, want nil", got)
		}
		e.OpenRoute("loading")
		notReady := newFake(fail(longpoll.ErrRouteNotReady))
		other := subscribe(t, e, longpoll.KeyOf("other"), notReady)
		defer other.Close()
		st := fresh(t, other)
		if st.Failure == nil || !errors.Is(st.Failure.Err, longpoll.ErrRouteNotReady) {
			t.Errorf("no route ready: got failure %v, want ErrRouteNotReady", st.Failure)
		}
	})
}

// A new watch gets its Fetcher from its subscriber, outside the engine's
// locks: NeedsFetcher says so once, the first SetFetcher wins, and the
// watch polls only once it has one.
func TestSetFetcher(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		a, err := e.Subscribe(testKey, "/t")
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		b, err := e.Subscribe(testKey, "/t")
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if !a.NeedsFetcher() || !b.NeedsFetcher() {
			t.Fatal("a new watch: NeedsFetcher() = false, want true")
		}
		synctest.Wait()
		if !a.State().Pending() {
			t.Fatalf("a watch without a Fetcher: state %+v, want pending, no poll", a.State())
		}
		first, second := newFake(serve("first")), newFake(serve("second"))
		a.SetFetcher(first.New())
		b.SetFetcher(second.New())
		st := fresh(t, a)
		if string(st.Snapshot.Body) != "first" || second.calls.Load() != 0 {
			t.Errorf("two subscribers racing to give a Fetcher: got %q and %d calls of the second, want the first's only", st.Snapshot.Body, second.calls.Load())
		}
		if a.NeedsFetcher() {
			t.Error("after SetFetcher: NeedsFetcher() = true, want false")
		}
	})
}

// A stream subscriber stays across many changes. It may skip intermediate
// versions when it is slow, but it always ends with the last one: the
// broadcast replaces the state, it does not queue.
func TestStreamSubscriberSeesTheLast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second})
		defer e.Close()
		f := newFake(func(_ context.Context, _ *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
			return snapshotOf(fmt.Sprint("v", min(call, 100)))
		})
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		var have []string
		seen := 0
		for range 1000 {
			st := sub.State()
			switch st.Decide(have, nil) {
			case longpoll.Send:
				have = []string{st.Snapshot.ETag}
				seen++
				if string(st.Snapshot.Body) == "v100" {
					if seen < 2 {
						t.Errorf("saw %d versions, want several", seen)
					}
					return
				}
				if seen%7 == 0 {
					time.Sleep(3 * time.Second) // a slow reader
				}
			case longpoll.Wait:
				<-st.Changed()
			default:
				t.Fatalf("decision %v, want send or wait", st.Decide(have, nil))
			}
		}
		t.Errorf("never saw the last version (v100); saw %d", seen)
	})
}
