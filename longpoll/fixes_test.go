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

func (f *versionFetcher) Fetch(ctx context.Context, _ *longpoll.Snapshot) (*longpoll.Snapshot, error) {
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

		first, _ := e.Subscribe(key, "t", 1, newF)
		if st, _ := first.Fresh(t.Context()); string(st.Snapshot.Body) != "version 1" {
			t.Fatalf("first answer: got %q, want version 1", st.Snapshot.Body)
		}
		first.Close()
		time.Sleep(5 * time.Second) // idle, and stale
		f.version.Store(2)

		a, _ := e.Subscribe(key, "t", 1, newF) // starts the fresh poll
		defer a.Close()
		time.Sleep(100 * time.Millisecond)
		b, _ := e.Subscribe(key, "t", 1, newF) // arrives during it
		defer b.Close()
		for name, sub := range map[string]*longpoll.Subscription{"first arrival": a, "second arrival": b} {
			st, err := sub.Fresh(t.Context())
			if err != nil || string(st.Snapshot.Body) != "version 2" {
				t.Errorf("%s: Fresh = %q, %v; want version 2", name, st.Snapshot.Body, err)
			}
		}
	})
}

// A poll that ends after Detach must not put the watch back in service:
// it has no fetcher, so its state must stay Detached, or subscribers would
// be held on a watch that no longer polls.
func TestPollEndingAfterDetachKeepsDetached(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newVersionFetcher()
		e, _ := longpoll.New(longpoll.Config{Interval: 200 * time.Millisecond, PollTimeout: 5 * time.Second})
		defer e.Close()
		sub, _ := e.Subscribe(longpoll.KeyOf("k"), "t", 1, func() longpoll.Fetcher { return f })
		defer sub.Close()
		st, _ := sub.Fresh(t.Context())
		time.Sleep(250 * time.Millisecond) // the next poll is under way
		f.version.Store(2)
		if n := e.Detach(1); n != 1 {
			t.Fatalf("Detach(1) = %d, want 1", n)
		}
		time.Sleep(2 * time.Second) // the poll in flight ends
		synctest.Wait()
		got := sub.State()
		if !got.Detached {
			t.Errorf("state after the poll in flight ended: Detached = false, want true")
		}
		if got.Snapshot.ETag == st.Snapshot.ETag {
			t.Errorf("the poll in flight's result was dropped: ETag still %s", got.Snapshot.ETag)
		}
		n := f.fetches.Load()
		time.Sleep(5 * time.Second)
		if more := f.fetches.Load() - n; more != 0 {
			t.Errorf("detached watch polled %d more times, want 0", more)
		}
	})
}

// Detach takes only the watches of the generation whose route went away:
// a handler that never served (a config that failed to load, `caddy
// validate`) must not detach the watches of the live one.
func TestDetachOnlyThatGeneration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := &versionFetcher{}
		e, _ := longpoll.New(longpoll.Config{Interval: time.Second})
		defer e.Close()
		sub, _ := e.Subscribe(longpoll.KeyOf("k"), "t", 1, func() longpoll.Fetcher { return f })
		defer sub.Close()
		if _, err := sub.Fresh(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := e.Detach(2); n != 0 {
			t.Errorf("Detach(2) with watches of generation 1: got %d detached, want 0", n)
		}
		if sub.State().Detached {
			t.Error("watch of generation 1 detached by Detach(2)")
		}
	})
}

// QueryETag accepts the ETag a client copied from a response, quoted or
// not, and undoes the suffix Caddy's encode adds to it.
func TestQueryETag(t *testing.T) {
	t.Parallel()
	tag := `"0123456789abcdefghijklmn"` // 24 characters, like the module's
	tests := []struct{ in, want string }{
		{`0123456789abcdefghijklmn`, tag},
		{tag, tag},
		{`0123456789abcdefghijklmn-gzip`, tag},
		{`"0123456789abcdefghijklmn-zstd"`, tag},
		{`W/"0123456789abcdefghijklmn"`, `W/` + tag},
		{`short-gzip`, `"short-gzip"`},
	}
	for _, tt := range tests {
		if got := longpoll.QueryETag(tt.in); got != tt.want {
			t.Errorf("QueryETag(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
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
			sub, err := e.Subscribe(longpoll.KeyOf(topic), topic, 1, func() longpoll.Fetcher { return f })
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
		sub2, _ := e.Subscribe(longpoll.KeyOf("/orders/42", "user 2"), "/orders/42", 1, func() longpoll.Fetcher { return other })
		defer sub2.Close()
		_, _ = sub2.Fresh(t.Context())
		idle := &versionFetcher{}
		idle.version.Store(1)
		idleSub, _ := e.Subscribe(longpoll.KeyOf("/orders/7"), "/orders/7", 1, func() longpoll.Fetcher { return idle })
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
		back, _ := e.Subscribe(longpoll.KeyOf("/orders/7"), "/orders/7", 1, func() longpoll.Fetcher { return idle })
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
		sub, _ := e.Subscribe(longpoll.KeyOf("k"), "/t", 1, func() longpoll.Fetcher { return f })
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

// A notification that comes while a watch is detached (between a reload's
// clean-up and the new config's first request for it) must not be lost:
// the watch polls as soon as it is back in service, not an interval later.
func TestNotifyWhileDetachedIsKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newVersionFetcher()
		e := slowEngine(t)
		s1, _ := e.Subscribe(longpoll.KeyOf("k"), "/a", 1, func() longpoll.Fetcher { return f })
		defer s1.Close()
		_, _ = s1.Fresh(t.Context())
		e.Detach(1)
		f.version.Store(2)
		if n := e.Notify([]string{"/a"}); n != 1 {
			t.Errorf("Notify on a detached watch reached %d, want 1", n)
		}
		s2, _ := e.Subscribe(longpoll.KeyOf("k"), "/a", 2, func() longpoll.Fetcher { return f })
		defer s2.Close()
		time.Sleep(2 * time.Second) // far less than the 30s interval
		synctest.Wait()
		if got := f.fetches.Load(); got != 2 {
			t.Errorf("fetches after re-attaching a notified watch: got %d, want 2", got)
		}
		if body := string(s2.State().Snapshot.Body); body != "version 2" {
			t.Errorf("state after re-attaching a notified watch: got %q, want version 2", body)
		}
	})
}

// A closed engine reaches nothing and keeps no topic index.
func TestNotifyAfterClose(t *testing.T) {
	e, _ := longpoll.New(longpoll.Config{})
	sub, _ := e.Subscribe(longpoll.KeyOf("k"), "/a", 1, func() longpoll.Fetcher { return &versionFetcher{} })
	sub.Close()
	_ = e.Close()
	if n := e.Notify([]string{"/a", "/*"}); n != 0 {
		t.Errorf("Notify after Close reached %d watches, want 0", n)
	}
}
