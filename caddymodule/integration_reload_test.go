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

// TestIntegrationReloadTunedConfig reloads a config whose longpoll settings
// changed in ways that do not change what a watch is (interval, caps,
// max_wait, metrics) while 20 requests are held: they apply to the running
// engine. Nobody is answered by the reload; the watch polls at the new
// interval; a change then releases everyone.
func TestIntegrationReloadTunedConfig(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 500ms\nmax_wait 30s", up)))
	c, _ := itClient(t)

	held, _ := itHoldMany(t, c, 20, "/reload-tuned", "wait=20")
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 40s\nmax_waiters 500\nmax_watches 50\ndisable_metrics", up)))
	time.Sleep(time.Second)
	for i, ch := range held {
		select {
		case r := <-ch:
			t.Fatalf("held request %d answered by a reload that changed no watch: %d %q", i, r.Status, r.Body)
		default:
		}
	}
	before := up.hitsFor("/reload-tuned")
	time.Sleep(time.Second)
	if n := up.hitsFor("/reload-tuned") - before; n < 6 {
		t.Errorf("a second after the reload: %d polls, want about 10 (the new interval, 100ms)", n)
	}
	up.set("/reload-tuned", http.StatusOK, "changed")
	for i, ch := range held {
		if r := itReceive(t, ch, 5*time.Second); r.Status != http.StatusOK || r.Body != "changed" {
			t.Errorf("held request %d after the change: got %d %q, want 200 %q", i, r.Status, r.Body, "changed")
		}
	}
}

// TestIntegrationReloadChangedConfig reloads a config whose longpoll
// settings changed what a watch is (here max_body) while 20 requests are
// held: the old engine closes, and its clients must be answered properly
// (304 or the new data, never a 5xx or a reset) within replaceSpread,
// spread over it rather than all at once (they would all come back at
// once, into the listeners the reload hands over).
func TestIntegrationReloadChangedConfig(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 500ms\nmax_wait 30s", up)))
	c, _ := itClient(t)

	held, etag := itHoldMany(t, c, 20, "/reload-changed", "wait=20")
	start := time.Now()
	itLoad(t, tc, itConfig("", itSite("interval 500ms\nmax_wait 30s\nmax_body 512KiB", up)))
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
// held and nothing else comes (streams would be the same). The watch moves
// to the new config's route without a request and without waking anyone:
// the held requests are released by the new upstream's data within an
// interval or so, and once the old config is cleaned up, the old upstream
// is polled no more.
func TestIntegrationReloadNewUpstream(t *testing.T) {
	tc := itStart(t)
	oldUp, newUp := newItUpstream(t), newItUpstream(t)
	newUp.set("/moved", http.StatusOK, "from the new upstream")
	itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s", oldUp)))
	c, _ := itClient(t)

	held, _ := itHoldMany(t, c, 3, "/moved", "wait=10")
	start := time.Now()
	itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s", newUp)))
	for i, ch := range held {
		r := itReceive(t, ch, 5*time.Second)
		if r.Status != http.StatusOK || r.Body != "from the new upstream" || r.At.Sub(start) > 2*time.Second {
			t.Errorf("held request %d: got %d %q %v after the reload, want 200 %q within 2s",
				i, r.Status, r.Body, r.At.Sub(start), "from the new upstream")
		}
	}
	// A poll that started before the hand-off may still reach the old
	// upstream: count from when it has landed.
	time.Sleep(300 * time.Millisecond)
	oldPolls := oldUp.hitsFor("/moved")
	held, _ = itHoldMany(t, c, 2, "/moved", "wait=2")
	for _, ch := range held {
		itReceive(t, ch, 5*time.Second)
	}
	if n := oldUp.hitsFor("/moved") - oldPolls; n != 0 {
		t.Errorf("the old upstream was polled %d more times after the reload, want 0", n)
	}
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
