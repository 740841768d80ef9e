// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"net/http"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// itHoldMany starts n long-polls on path that are held (If-None-Match is
// the current ETag), waits until all are held, and returns their replies.
func itHoldMany(t *testing.T, c *http.Client, n int, path, wait string) ([]<-chan itReply, string) {
	t.Helper()
	etag := itMustSend(t, c, "GET", path, "Prefer", "wait=1").Header.Get("Etag")
	if etag == "" {
		t.Fatalf("GET %s: got no ETag", path)
	}
	held := make([]<-chan itReply, n)
	for i := range held {
		held[i] = itSendAsync(t, t.Context(), c, "GET", path, "Prefer", wait, "If-None-Match", etag)
	}
	itWaitHeld(t, n)
	return held, etag
}

// TestIntegrationReloadSameConfig reloads an unchanged config while 20
// requests are held: operators reload for unrelated changes all the time,
// and that must neither drop held clients nor start the polling over.
func TestIntegrationReloadSameConfig(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	const interval = 500 * time.Millisecond
	cfg := itConfig("", itSite("interval 500ms\nmax_wait 30s", up))
	itLoad(t, tc, cfg)
	c, _ := itClient(t)

	held, _ := itHoldMany(t, c, 20, "/reload-same", "wait=20")
	before, start := up.hitsFor("/reload-same"), time.Now()
	itLoad(t, tc, cfg)
	time.Sleep(300 * time.Millisecond)
	for i, ch := range held {
		select {
		case r := <-ch:
			t.Fatalf("held request %d answered by the reload: %d %v, want still held", i, r.Status, r.Err)
		default:
		}
	}
	// The watch goes on polling once per interval; a new engine would
	// poll again at once.
	polls, elapsed := up.hitsFor("/reload-same")-before, time.Since(start)
	if limit := int64(elapsed/interval) + 2; polls > limit {
		t.Errorf("polls across the reload: got %d in %v, want at most %d (interval %v)", polls, elapsed, limit, interval)
	}

	up.set("/reload-same", http.StatusOK, "after the reload")
	for i, ch := range held {
		r := itReceive(t, ch, 5*time.Second)
		if r.Status != http.StatusOK || r.Body != "after the reload" {
			t.Errorf("held request %d: got %d %q, want 200 %q", i, r.Status, r.Body, "after the reload")
		}
	}
}

// TestIntegrationReloadChangedConfig reloads a config whose longpoll
// settings changed while 20 requests are held: the old engine closes, and
// its clients must be answered properly (304 or the new data, never a 5xx
// or a reset) within replaceSpread, spread over it rather than all at once
// (they would all come back at once, into the listeners the reload hands
// over).
func TestIntegrationReloadChangedConfig(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 500ms\nmax_wait 30s", up)))
	c, _ := itClient(t)

	held, etag := itHoldMany(t, c, 20, "/reload-changed", "wait=20")
	start := time.Now()
	itLoad(t, tc, itConfig("", itSite("interval 300ms\nmax_wait 30s", up)))
	end := time.Now()
	t.Logf("reload took %v", end.Sub(start))
	var first, last time.Time
	for i, ch := range held {
		r := itReceive(t, ch, 5*time.Second)
		if first.IsZero() || r.At.Before(first) {
			first = r.At
		}
		if r.At.After(last) {
			last = r.At
		}
		if r.Status != http.StatusNotModified && r.Status != http.StatusOK {
			t.Errorf("held request %d: got %d %q, want 304 or 200", i, r.Status, r.Body)
		}
		if r.Status == http.StatusNotModified && r.Header.Get("Etag") != etag {
			t.Errorf("held request %d: got ETag %q with its 304, want %q", i, r.Header.Get("Etag"), etag)
		}
		if r.At.Before(start) || r.At.After(end.Add(replaceSpread+time.Second)) {
			t.Errorf("held request %d answered %v after the reload began (reload took %v), want within %v of it",
				i, r.At.Sub(start), end.Sub(start), replaceSpread)
		}
	}
	if spread := last.Sub(first); spread < replaceSpread/3 {
		t.Errorf("the 20 answers came within %v of each other, want them spread over about %v", spread, replaceSpread)
	}

	// The new engine serves long-polls.
	if r := itMustSend(t, c, "GET", "/reload-changed", "Prefer", "wait=1", "If-None-Match", etag); r.Status != http.StatusNotModified {
		t.Errorf("long-poll after the reload: got %d %q %v, want 304 (ETag %s)", r.Status, r.Body, r.Header, etag)
	}
}

// TestIntegrationReloadNewUpstream reloads a config that keeps the longpoll
// settings but points reverse_proxy at another upstream, while requests are
// held. From the reload on, the resource is what the new upstream serves: no
// poll may go through the replaced config for more than the route grace
// period, and no held client may be told "304 Not Modified" about the old
// upstream and then be kept waiting.
func TestIntegrationReloadNewUpstream(t *testing.T) {
	// A busy server: a request for the same resource reaches the new config
	// right after the reload. That moves the watch to the new config's
	// route, and the held requests are released by the new upstream's data.
	t.Run("busy", func(t *testing.T) {
		tc := itStart(t)
		oldUp, newUp := newItUpstream(t), newItUpstream(t)
		newUp.set("/moved-busy", http.StatusOK, "from the new upstream")
		itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s", oldUp)))
		c, _ := itClient(t)

		held, _ := itHoldMany(t, c, 3, "/moved-busy", "wait=10")
		start := time.Now()
		itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s", newUp)))
		itMustSend(t, c, "GET", "/moved-busy", "Prefer", "wait=1")
		for i, ch := range held {
			r := itReceive(t, ch, 5*time.Second)
			if r.Status != http.StatusOK || r.Body != "from the new upstream" || time.Since(start) > 2*time.Second {
				t.Errorf("held request %d: got %d %q %v after the reload, want 200 %q within 2s",
					i, r.Status, r.Body, time.Since(start), "from the new upstream")
			}
		}
	})

	// A quiet server: nothing reaches the new config. After the grace
	// period the watches on the replaced route stop polling it, and their
	// held requests are answered (304 from the last poll, or the data);
	// the clients' next long-poll reaches the new upstream at once.
	t.Run("quiet", func(t *testing.T) {
		tc := itStart(t)
		oldUp, newUp := newItUpstream(t), newItUpstream(t)
		newUp.set("/moved-quiet", http.StatusOK, "from the new upstream")
		itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s", oldUp)))
		c, _ := itClient(t)

		held, etag := itHoldMany(t, c, 3, "/moved-quiet", "wait=10")
		start := time.Now()
		itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s", newUp)))
		end := time.Now()
		for i, ch := range held {
			r := itReceive(t, ch, 5*time.Second)
			if r.Status != http.StatusNotModified && r.Status != http.StatusOK {
				t.Errorf("held request %d: got %d %q, want 304 or 200", i, r.Status, r.Body)
			}
			if r.At.After(end.Add(routeGrace + time.Second)) {
				t.Errorf("held request %d answered %v after the reload began (reload took %v), want within %v of it",
					i, r.At.Sub(start), end.Sub(start), routeGrace+time.Second)
			}
		}
		// A poll that started before the detach may still reach the old
		// upstream: count from when it has landed.
		time.Sleep(300 * time.Millisecond)
		oldPolls := oldUp.hitsFor("/moved-quiet")
		r := itMustSend(t, c, "GET", "/moved-quiet", "Prefer", "wait=5", "If-None-Match", etag)
		if r.Status != http.StatusOK || r.Body != "from the new upstream" || r.Elapsed > 2*time.Second {
			t.Errorf("long-poll after the reload: got %d %q after %v, want 200 %q within 2s",
				r.Status, r.Body, r.Elapsed, "from the new upstream")
		}
		time.Sleep(500 * time.Millisecond)
		if n := oldUp.hitsFor("/moved-quiet") - oldPolls; n != 0 {
			t.Errorf("the old upstream was polled %d more times after the held requests were answered, want 0", n)
		}
	})
}

// TestIntegrationReloadLeak reloads 20 times between two longpoll configs,
// each time with a watch in use: every reload closes an engine, and one
// left behind (a poll loop, an exit watcher) would pile up for the life of
// the server.
func TestIntegrationReloadLeak(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	// Caddy's reverse_proxy keeps its keep-alive connections to the
	// upstream open across reloads (three goroutines per reload, with or
	// without longpoll in the route): without keep-alives, what is counted
	// is the module's.
	up.srv.Config.SetKeepAlivesEnabled(false)
	configs := []string{
		itConfig("", itSite("interval 200ms\nmax_wait 30s", up)),
		itConfig("", itSite("interval 300ms\nmax_wait 30s", up)),
	}
	c, tr := itClient(t)
	cycle := func(i int) {
		itLoad(t, tc, configs[i%2])
		if r := itMustSend(t, c, "GET", "/leak", "Prefer", "wait=1"); r.Status != http.StatusOK {
			t.Fatalf("long-poll after reload %d: got %d, want 200", i, r.Status)
		}
	}
	cycle(0)
	cycle(1)
	tr.CloseIdleConnections()
	time.Sleep(500 * time.Millisecond)
	before, hubsBefore := runtime.NumGoroutine(), itHubs()

	for i := range 20 {
		cycle(i)
	}
	tr.CloseIdleConnections()

	const slack = 15
	deadline := time.Now().Add(10 * time.Second)
	after := runtime.NumGoroutine()
	for after > before+slack && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		after = runtime.NumGoroutine()
	}
	t.Logf("goroutines: %d before 20 reloads, %d after", before, after)
	if after > before+slack {
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Errorf("goroutines after 20 reloads: got %d, want at most %d (%d before)\n%s", after, before+slack, before, buf.String())
	}
	if n := itHubs(); n != hubsBefore {
		t.Errorf("longpoll engines after 20 reloads: got %d, want %d as before", n, hubsBefore)
	}
}

// itHubs is the number of longpoll engines alive in the process.
func itHubs() int {
	n := 0
	hubs.Range(func(_, _ any) bool {
		n++
		return true
	})
	return n
}
