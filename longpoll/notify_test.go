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

// versionFetcher serves "version N" for the current N, counting fetches,
// each taking a second.
type versionFetcher struct {
	version, fetches atomic.Int64
}

func newVersionFetcher() *versionFetcher {
	f := &versionFetcher{}
	f.version.Store(1)
	return f
}

// slowEngine is an engine that polls every 30s, so that any quicker poll
// comes from a notification; it is closed at the end of the test.
func slowEngine(t *testing.T) *longpoll.Engine {
	t.Helper()
	e, err := longpoll.New(longpoll.Config{Interval: 30 * time.Second, PollTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func (f *versionFetcher) Fetch(ctx context.Context, _ any, _ *longpoll.Snapshot) (*longpoll.Snapshot, error) {
	f.fetches.Add(1)
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	body := []byte("version " + string(rune('0'+f.version.Load())))
	return longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, body, nil)
}

// Every subscriber that arrives at an idle, stale watch while the poll that
// freshens it is under way must wait for that poll, not only the first:
// an answer given at once is never older than one interval.
func TestStaleWatchEverySubscriberWaitsForFreshPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newVersionFetcher()
		e, _ := longpoll.New(longpoll.Config{Interval: 200 * time.Millisecond, PollTimeout: 5 * time.Second})
		defer e.Close()
		key := longpoll.KeyOf("k")
		newF := func() longpoll.Fetcher { return f }

		first, _ := e.Join(key, "t", newF)
		if st, _ := first.Fresh(t.Context()); string(st.Snapshot.Body) != "version 1" {
			t.Fatalf("first answer: got %q, want version 1", st.Snapshot.Body)
		}
		first.Close()
		time.Sleep(5 * time.Second) // idle, and stale
		f.version.Store(2)

		a, _ := e.Join(key, "t", newF) // starts the fresh poll
		defer a.Close()
		time.Sleep(100 * time.Millisecond)
		b, _ := e.Join(key, "t", newF) // arrives during it
		defer b.Close()
		for name, sub := range map[string]*longpoll.Subscription{"first arrival": a, "second arrival": b} {
			st, err := sub.Fresh(t.Context())
			if err != nil || string(st.Snapshot.Body) != "version 2" {
				t.Errorf("%s: Fresh = %q, %v; want version 2", name, st.Snapshot.Body, err)
			}
		}
	})
}

// Notify reaches the watches of the topics it names, exact or by prefix,
// each once however many patterns match it; a watch with subscribers polls
// at once (well before its interval), an idle one is only marked stale and
// polls when its next subscriber comes, and other topics are untouched.
func TestNotify(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := slowEngine(t)
		fetchers := map[string]*versionFetcher{}
		subs := map[string]*longpoll.Subscription{}
		for _, topic := range []string{"/orders/42", "/orders/43", "/users/1"} {
			f := &versionFetcher{}
			f.version.Store(1)
			fetchers[topic] = f
			sub, err := e.Join(longpoll.KeyOf(topic), topic, func() longpoll.Fetcher { return f })
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			if _, err := sub.Fresh(t.Context()); err != nil {
				t.Fatal(err)
			}
			subs[topic] = sub
		}
		// one more key (another user) on /orders/42, and an idle watch
		other := &versionFetcher{}
		other.version.Store(1)
		sub2, _ := e.Join(longpoll.KeyOf("/orders/42", "user 2"), "/orders/42", func() longpoll.Fetcher { return other })
		defer sub2.Close()
		_, _ = sub2.Fresh(t.Context())
		idle := &versionFetcher{}
		idle.version.Store(1)
		idleSub, _ := e.Join(longpoll.KeyOf("/orders/7"), "/orders/7", func() longpoll.Fetcher { return idle })
		_, _ = idleSub.Fresh(t.Context())
		idleSub.Close()

		before := map[string]int64{}
		for topic, f := range fetchers {
			before[topic] = f.fetches.Load()
		}
		n := e.Notify([]string{"/orders/42", "/orders/*", "/nothing"})
		if n != 4 {
			t.Errorf("Notify reached %d watches, want 4 (/orders/42 twice by key, /orders/43, idle /orders/7)", n)
		}
		time.Sleep(2 * time.Second) // well under the 30s interval
		synctest.Wait()
		for topic, want := range map[string]int64{"/orders/42": 1, "/orders/43": 1, "/users/1": 0} {
			if got := fetchers[topic].fetches.Load() - before[topic]; got != want {
				t.Errorf("%s: %d polls after the notification, want %d", topic, got, want)
			}
		}
		if got := other.fetches.Load(); got != 2 {
			t.Errorf("second key of /orders/42: %d fetches, want 2 (first, notified)", got)
		}
		if got := idle.fetches.Load(); got != 1 {
			t.Errorf("idle watch: %d fetches after the notification, want 1 (it only polls when used)", got)
		}
		idle.version.Store(2)
		back, _ := e.Join(longpoll.KeyOf("/orders/7"), "/orders/7", func() longpoll.Fetcher { return idle })
		defer back.Close()
		if st, _ := back.Fresh(t.Context()); string(st.Snapshot.Body) != "version 2" {
			t.Errorf("returning to a notified idle watch: got %q, want a fresh poll's version 2", st.Snapshot.Body)
		}
	})
}

// A burst of notifications for one watch causes a bounded number of polls:
// one now, at most one more after it, never two in flight.
func TestNotifyBurstCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newVersionFetcher()
		e := slowEngine(t)
		sub, _ := e.Join(longpoll.KeyOf("k"), "/t", func() longpoll.Fetcher { return f })
		defer sub.Close()
		_, _ = sub.Fresh(t.Context())
		for range 1000 {
			e.Notify([]string{"/t"})
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if got := f.fetches.Load(); got > 3 {
			t.Errorf("1,000 notifications: %d fetches, want at most 3 (first, one now, one after it)", got)
		}
	})
}

// A closed engine reaches nothing and keeps no topic index.
func TestNotifyAfterClose(t *testing.T) {
	e, _ := longpoll.New(longpoll.Config{})
	sub, _ := e.Join(longpoll.KeyOf("k"), "/a", func() longpoll.Fetcher { return &versionFetcher{} })
	sub.Close()
	_ = e.Close()
	if n := e.Notify([]string{"/a", "/*"}); n != 0 {
		t.Errorf("Notify after Close reached %d watches, want 0", n)
	}
}

// idleFetcher is a versionFetcher that records what its watch told it.
type idleFetcher struct {
	versionFetcher
	idled chan bool
}

func (f *idleFetcher) Idle(gone bool) { f.idled <- gone }

// NotifyKey polls one key's watch, not the others of its topic; an Idler
// is told when its watch has no subscriber left, and when it is dropped.
func TestNotifyKeyAndIdler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, err := longpoll.New(longpoll.Config{Interval: 30 * time.Second, PollTimeout: 5 * time.Second, IdleTTL: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		a := &idleFetcher{idled: make(chan bool, 4)}
		b := newVersionFetcher()
		ka, kb := longpoll.KeyOf("/o", "user a"), longpoll.KeyOf("/o", "user b")
		subA, _ := e.Join(ka, "/o", func() longpoll.Fetcher { return a })
		subB, _ := e.Join(kb, "/o", func() longpoll.Fetcher { return b })
		defer subB.Close()
		_, _ = subA.Fresh(t.Context())
		_, _ = subB.Fresh(t.Context())
		if !e.NotifyKey(ka) || e.NotifyKey(longpoll.KeyOf("/nothing")) {
			t.Error("NotifyKey: want true for a watch there is, false for none")
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if a.fetches.Load() != 2 || b.fetches.Load() != 1 {
			t.Errorf("fetches after NotifyKey(a): a %d, b %d, want 2 and 1", a.fetches.Load(), b.fetches.Load())
		}
		subA.Close()
		synctest.Wait()
		if got := <-a.idled; got {
			t.Error("the last subscriber left: Idle(true), want Idle(false): the watch is kept")
		}
		time.Sleep(2 * time.Minute) // past idle_ttl: the watch is dropped
		synctest.Wait()
		select {
		case gone := <-a.idled:
			if !gone {
				t.Error("the watch was dropped: Idle(false), want Idle(true)")
			}
		default:
			t.Error("the watch was dropped: no Idle")
		}
	})
}
