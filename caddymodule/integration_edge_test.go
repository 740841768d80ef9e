// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestIntegrationUsersAreKeptApart long-polls one path as two users: the
// default key holds the Authorization header, so that one user's data can
// never reach another, neither at once nor when a change releases them.
func TestIntegrationUsersAreKeptApart(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	var version atomic.Int64
	version.Store(1)
	up.setServe("/me", func(w http.ResponseWriter, r *http.Request) {
		user := strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
		v := version.Load()
		etag := fmt.Sprintf(`"up-%s-%d"`, user, v)
		w.Header().Set("Etag", etag)
		if r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
		fmt.Fprintf(w, "data for %s v%d", user, v)
	})
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 5s", up)))
	c, _ := itClient(t)

	etags := map[string]string{}
	for _, user := range []string{"alice", "bob"} {
		r := itMustSend(t, c, "GET", "/me", "Prefer", "wait=5", "Authorization", "Bearer "+user)
		if want := "data for " + user + " v1"; r.Status != http.StatusOK || r.Body != want {
			t.Fatalf("%s: got %d %q, want 200 %q", user, r.Status, r.Body, want)
		}
		etags[user] = r.Header.Get("Etag")
	}
	if etags["alice"] == etags["bob"] {
		t.Fatalf("alice and bob got the same ETag %q, want their own", etags["alice"])
	}

	// Bob showing Alice's ETag is not holding Bob's version: answered at
	// once, with Bob's data.
	r := itMustSend(t, c, "GET", "/me", "Prefer", "wait=5", "Authorization", "Bearer bob", "If-None-Match", etags["alice"])
	if r.Status != http.StatusOK || r.Body != "data for bob v1" || r.Elapsed > time.Second {
		t.Errorf("bob with alice's ETag: got %d %q after %v, want 200 %q at once", r.Status, r.Body, r.Elapsed, "data for bob v1")
	}

	held := map[string]<-chan itReply{}
	for _, user := range []string{"alice", "bob"} {
		held[user] = itSendAsync(t, t.Context(), c, "GET", "/me",
			"Prefer", "wait=5", "Authorization", "Bearer "+user, "If-None-Match", etags[user])
	}
	itWaitHeld(t, 2)
	version.Store(2)
	for _, user := range []string{"alice", "bob"} {
		r := itReceive(t, held[user], 5*time.Second)
		if want := "data for " + user + " v2"; r.Status != http.StatusOK || r.Body != want {
			t.Errorf("%s after the change: got %d %q, want 200 %q", user, r.Status, r.Body, want)
		}
	}
}

// TestIntegrationDisconnectFreesPlace checks that a client that gives up
// frees its place under max_waiters at once: otherwise clients that
// reconnect (as browsers do on every navigation) would lock everyone out
// until their old waits end.
func TestIntegrationDisconnectFreesPlace(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 20s\nmax_waiters 1", up)))
	c, _ := itClient(t)

	etag := itMustSend(t, c, "GET", "/one", "Prefer", "wait=1").Header.Get("Etag")
	ctx, cancel := context.WithCancel(t.Context())
	gone := itSendAsync(t, ctx, c, "GET", "/one", "Prefer", "wait=20", "If-None-Match", etag)
	itWaitHeld(t, 1)
	if r := itMustSend(t, c, "GET", "/one", "Prefer", "wait=1", "If-None-Match", etag); r.Status != http.StatusServiceUnavailable {
		t.Fatalf("second request while one is held: got %d, want 503 (max_waiters 1)", r.Status)
	}

	cancel()
	left := time.Now()
	if r := <-gone; r.Err == nil {
		t.Fatalf("canceled request: got %d, want a canceled request", r.Status)
	}
	itWaitFor(t, "the canceled request to free its place", 2*time.Second, func() bool { return itHeld() == 0 })
	for {
		r := itMustSend(t, c, "GET", "/one", "Prefer", "wait=1", "If-None-Match", etag)
		if r.Status == http.StatusServiceUnavailable {
			if time.Since(left) > 2*time.Second {
				t.Fatalf("still 503 %v after the client left, want its place freed at once", time.Since(left))
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		if r.Status != http.StatusNotModified || r.Elapsed < 750*time.Millisecond {
			t.Errorf("new request: got %d after %v, want held and 304 after about 1s", r.Status, r.Elapsed)
		}
		break
	}
}

// TestIntegrationCapsAndBadInput checks the answers to requests the module
// must refuse or cannot hold: over a cap they are refused at once with a
// Retry-After the client can honour (rather than piling up), and an
// If-None-Match list too long to scan is answered at once (invalid waits are
// in TestIntegrationPassThrough).
func TestIntegrationCapsAndBadInput(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	site := fmt.Sprintf(`	handle /capped/* {
		longpoll {
			interval 100ms
			max_wait 20s
			max_waiters 1
		}
		reverse_proxy %[1]s
	}
	handle /perclient/* {
		longpoll {
			interval 100ms
			max_wait 20s
			max_waiters_per_client 1
		}
		reverse_proxy %[1]s
	}
	handle {
		longpoll {
			interval 100ms
			max_wait 20s
		}
		reverse_proxy %[1]s
	}
`, up.addr())
	itLoad(t, tc, itConfig("", site))
	c, _ := itClient(t)

	for _, tt := range []struct {
		path string
		want int
	}{
		{"/capped/x", http.StatusServiceUnavailable},
		{"/perclient/x", http.StatusTooManyRequests},
	} {
		t.Run(tt.path, func(t *testing.T) {
			etag := itMustSend(t, c, "GET", tt.path, "Prefer", "wait=1").Header.Get("Etag")
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			itSendAsync(t, ctx, c, "GET", tt.path, "Prefer", "wait=20", "If-None-Match", etag)
			itWaitHeld(t, 1)
			r := itMustSend(t, c, "GET", tt.path, "Prefer", "wait=20", "If-None-Match", etag)
			if r.Status != tt.want || r.Elapsed > time.Second {
				t.Errorf("over the cap: got %d after %v, want %d at once", r.Status, r.Elapsed, tt.want)
			}
			if n, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || n < 1 {
				t.Errorf("Retry-After: got %q, want whole seconds >= 1", r.Header.Get("Retry-After"))
			}
			// Caps are for held requests: a plain GET still gets through.
			if r := itMustSend(t, c, "GET", tt.path); r.Status != http.StatusOK {
				t.Errorf("GET without Prefer over the cap: got %d, want 200", r.Status)
			}
			cancel()
			itWaitFor(t, "the held request to leave", 2*time.Second, func() bool { return itHeld() == 0 })
		})
	}

	// Over 32 entries, If-None-Match is not scanned (a bound on the work
	// one request causes): it matches nothing and the request is answered
	// at once, even though its 40th entry is the current ETag.
	t.Run("If-None-Match with 40 entries", func(t *testing.T) {
		etag := itMustSend(t, c, "GET", "/many", "Prefer", "wait=1").Header.Get("Etag")
		tags := make([]string, 0, 40)
		for i := 1; i < 40; i++ {
			tags = append(tags, fmt.Sprintf(`"old-%d"`, i))
		}
		tags = append(tags, etag)
		r := itMustSend(t, c, "GET", "/many", "Prefer", "wait=5", "If-None-Match", strings.Join(tags, ", "))
		if r.Status != http.StatusOK || r.Body != "initial /many" || r.Elapsed > time.Second {
			t.Errorf("got %d %q after %v, want 200 %q at once", r.Status, r.Body, r.Elapsed, "initial /many")
		}
	})
}

// TestIntegrationUpstreamFailure checks what clients see while the upstream
// fails: never a 304 that claims nothing changed, a Retry-After to slow them
// down, and a watch that backs off rather than hammering a struggling
// upstream, then recovers on its own.
func TestIntegrationUpstreamFailure(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 5s", up)))
	c, _ := itClient(t)

	// A client with no version has nothing to wait for: it learns of the
	// failure at once.
	t.Run("cold failing key: 502 at once", func(t *testing.T) {
		up.set("/down", http.StatusInternalServerError, "broken")
		r := itMustSend(t, c, "GET", "/down", "Prefer", "wait=3")
		if r.Status != http.StatusBadGateway || r.Elapsed > 1500*time.Millisecond {
			t.Errorf("got %d after %v, want 502 at once", r.Status, r.Elapsed)
		}
		if n, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || n < 1 {
			t.Errorf("Retry-After: got %q, want whole seconds >= 1", r.Header.Get("Retry-After"))
		}
	})

	etag := itMustSend(t, c, "GET", "/flaky", "Prefer", "wait=1").Header.Get("Etag")
	up.set("/flaky", http.StatusInternalServerError, "broken")

	t.Run("held request ends while failing: 502, back-off", func(t *testing.T) {
		before := up.hitsFor("/flaky")
		r := itMustSend(t, c, "GET", "/flaky", "Prefer", "wait=3", "If-None-Match", etag)
		if r.Status != http.StatusBadGateway {
			t.Errorf("status: got %d, want 502 (a 304 would claim nothing changed)", r.Status)
		}
		if r.Elapsed < 2500*time.Millisecond {
			t.Errorf("answered after %v, want at the end of the wait (3s)", r.Elapsed)
		}
		if n, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || n < 1 {
			t.Errorf("Retry-After: got %q, want whole seconds >= 1", r.Header.Get("Retry-After"))
		}
		// 3s at interval 100ms is 30 polls without back-off.
		polls := up.hitsFor("/flaky") - before
		t.Logf("%d polls of the failing upstream in %v", polls, r.Elapsed)
		if polls < 1 || polls >= 15 {
			t.Errorf("polls while failing: got %d in %v, want between 1 and 14 (back-off)", polls, r.Elapsed)
		}
	})

	t.Run("recovers", func(t *testing.T) {
		up.set("/flaky", http.StatusOK, "back again")
		var fresh itReply
		itWaitFor(t, "a 200 after the upstream recovered", 15*time.Second, func() bool {
			fresh = itMustSend(t, c, "GET", "/flaky", "Prefer", "wait=1")
			if fresh.Status != http.StatusOK {
				time.Sleep(200 * time.Millisecond)
			}
			return fresh.Status == http.StatusOK
		})
		if fresh.Body != "back again" {
			t.Fatalf("body: got %q, want %q", fresh.Body, "back again")
		}
		held := itSendAsync(t, t.Context(), c, "GET", "/flaky", "Prefer", "wait=5", "If-None-Match", fresh.Header.Get("Etag"))
		itWaitHeld(t, 1)
		up.set("/flaky", http.StatusOK, "changed again")
		if r := itReceive(t, held, 5*time.Second); r.Status != http.StatusOK || r.Body != "changed again" {
			t.Errorf("held after recovery: got %d %q, want 200 %q", r.Status, r.Body, "changed again")
		}
	})
}

// TestIntegrationUncacheable checks that responses the module must not
// share reach each client whole: a cookie belongs to one client, and a
// body over max_body must never be cut.
func TestIntegrationUncacheable(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	var session atomic.Int64
	up.setServe("/cookie", func(w http.ResponseWriter, _ *http.Request) {
		n := session.Add(1)
		w.Header().Set("Set-Cookie", fmt.Sprintf("session=%d", n))
		w.Header().Set("Etag", fmt.Sprintf(`"up-cookie-%d"`, n))
		fmt.Fprintf(w, "hello session %d", n)
	})
	big := bytes.Repeat([]byte("0123456789abcdef"), 640) // 10 KiB
	up.set("/big", http.StatusOK, string(big))
	up.set("/stream", http.StatusOK, "data: one\n\n", "Content-Type", "text/event-stream")
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 5s\nmax_body 1KiB", up)))
	c, _ := itClient(t)

	t.Run("Set-Cookie", func(t *testing.T) {
		cookies := map[string]bool{}
		for range 2 {
			r := itMustSend(t, c, "GET", "/cookie", "Prefer", "wait=3")
			cookie := r.Header.Get("Set-Cookie")
			n := strings.TrimPrefix(cookie, "session=")
			if r.Status != http.StatusOK || r.Body != "hello session "+n {
				t.Errorf("got %d %q with cookie %q, want 200 and the body of the same upstream response", r.Status, r.Body, cookie)
			}
			// held privately: answered with the module's ETag of the
			// content, which the client sends back
			if got := r.Header.Get("Etag"); got == fmt.Sprintf(`"up-cookie-%s"`, n) || !strings.HasPrefix(got, `"`) {
				t.Errorf("ETag: got %q, want the module's", got)
			}
			if !itHasToken(r.Header, "Vary", "Prefer") {
				t.Errorf("Vary: got %q, want Prefer (a long-poll's answer)", r.Header.Values("Vary"))
			}
			if cookies[cookie] {
				t.Errorf("cookie %q given to two clients, want one each", cookie)
			}
			cookies[cookie] = true
		}
	})

	t.Run("body over max_body", func(t *testing.T) {
		for range 2 {
			r := itMustSend(t, c, "GET", "/big", "Prefer", "wait=3")
			if r.Status != http.StatusOK || r.Body != string(big) {
				t.Errorf("got %d with %d body bytes, want 200 with all %d", r.Status, len(r.Body), len(big))
			}
			if got := r.Header.Get("Etag"); got != itUpstreamETag(2) {
				t.Errorf("ETag: got %q, want the upstream's %q", got, itUpstreamETag(2))
			}
		}
	})

	t.Run("event stream", func(t *testing.T) {
		r := itMustSend(t, c, "GET", "/stream", "Prefer", "wait=3")
		if r.Status != http.StatusOK || r.Body != "data: one\n\n" {
			t.Errorf("got %d %q, want 200 %q", r.Status, r.Body, "data: one\n\n")
		}
		if got := r.Header.Get("Etag"); got != itUpstreamETag(2) {
			t.Errorf("ETag: got %q, want the upstream's %q", got, itUpstreamETag(2))
		}
	})
}

// TestIntegrationQueryParams checks the query form of the protocol for
// clients that cannot set headers (EventSource-less browsers, webhooks): it
// must behave as the headers do, and the upstream must never see the
// module's parameters, which would make every wait a different resource.
func TestIntegrationQueryParams(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 5s\nquery_params wait etag", up)))
	c, _ := itClient(t)

	first := itMustSend(t, c, "GET", "/q?wait=2&x=1")
	etag := first.Header.Get("Etag")
	if first.Status != http.StatusOK || first.Body != "initial /q" || etag == "" || etag == itUpstreamETag(1) {
		t.Fatalf("got %d %q ETag %q, want 200 %q with the module's ETag", first.Status, first.Body, etag, "initial /q")
	}
	r := itMustSend(t, c, "GET", "/q?wait=1&etag="+url.QueryEscape(strings.Trim(etag, `"`))+"&x=1")
	if r.Status != http.StatusNotModified || r.Elapsed < 750*time.Millisecond {
		t.Errorf("with etag parameter: got %d after %v, want 304 after about 1s", r.Status, r.Elapsed)
	}
	if got := r.Header.Get("Preference-Applied"); got != "wait=1" {
		t.Errorf("Preference-Applied: got %q, want %q", got, "wait=1")
	}
	seen := up.seenFor("/q")
	if len(seen) == 0 {
		t.Fatal("upstream got no request for /q")
	}
	for _, s := range seen {
		if s.RawQuery != "x=1" {
			t.Errorf("upstream query: got %q, want %q", s.RawQuery, "x=1")
		}
	}
}

// TestIntegrationWriteTimeout runs servers with a write timeout shorter
// than the wait, as many deployments have: a held request must not be cut
// off by it (the client would see a reset and retry at once).
func TestIntegrationWriteTimeout(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	c, _ := itClient(t)
	timeouts := func(lines string) string { return "\tservers {\n\t\ttimeouts {\n" + lines + "\t\t}\n\t}\n" }

	// The module moves the write deadline past the wait: the README's
	// promise that write_timeout never cuts a held request short. Caddy
	// 2.11's write_idle_timeout (on by default) caps any deadline a handler
	// sets at write_timeout, so it is turned off here.
	t.Run("write 1s, write_idle off: held for the whole wait", func(t *testing.T) {
		itLoad(t, tc, itConfig(timeouts("\t\t\twrite 1s\n\t\t\twrite_idle -1s\n"), itSite("interval 100ms\nmax_wait 5s", up)))
		etag := itMustSend(t, c, "GET", "/slow1", "Prefer", "wait=3").Header.Get("Etag")
		r := itMustSend(t, c, "GET", "/slow1", "Prefer", "wait=3", "If-None-Match", etag)
		if r.Status != http.StatusNotModified || r.Elapsed < 2500*time.Millisecond {
			t.Errorf("got %d after %v, want 304 after about 3s (write timeout 1s)", r.Status, r.Elapsed)
		}
		if got := r.Header.Get("Preference-Applied"); got != "wait=3" {
			t.Errorf("Preference-Applied: got %q, want %q", got, "wait=3")
		}
	})

	// With Caddy's default write_idle_timeout, whose hard limit caps any
	// deadline a handler sets, the README says the wait is shortened to end
	// inside write_timeout instead. Either way the answer must arrive whole,
	// after the wait it announces in Preference-Applied.
	t.Run("write 3s, default write_idle: never cut short", func(t *testing.T) {
		itLoad(t, tc, itConfig(timeouts("\t\t\twrite 3s\n"), itSite("interval 100ms\nmax_wait 5s", up)))
		etag := itMustSend(t, c, "GET", "/slow3", "Prefer", "wait=4").Header.Get("Etag")
		r := itMustSend(t, c, "GET", "/slow3", "Prefer", "wait=4", "If-None-Match", etag)
		applied, err := strconv.Atoi(strings.TrimPrefix(r.Header.Get("Preference-Applied"), "wait="))
		if r.Status != http.StatusNotModified || err != nil || applied < 1 || applied > 4 {
			t.Fatalf("got %d with Preference-Applied %q, want 304 with a wait of 1 to 4 s",
				r.Status, r.Header.Get("Preference-Applied"))
		}
		t.Logf("wait=4 under write 3s: Preference-Applied wait=%d, answered after %v", applied, r.Elapsed)
		if want := time.Duration(applied) * time.Second; r.Elapsed < want*85/100 || r.Elapsed > want+time.Second {
			t.Errorf("answered after %v, want about %v (Preference-Applied wait=%d)", r.Elapsed, want, applied)
		}
	})

	// The case of the brief: write 1s with Caddy's defaults and a 3s wait.
	// write_timeout is then a hard limit on the whole response, so the hold
	// must end inside it: a 304 before the second is up, whole, never a
	// connection cut by the timeout (and never a pass-through, which would
	// break the protocol for the client).
	t.Run("write 1s, default write_idle: the wait ends inside write_timeout", func(t *testing.T) {
		itLoad(t, tc, itConfig(timeouts("\t\t\twrite 1s\n"), itSite("interval 100ms\nmax_wait 5s", up)))
		first := itMustSend(t, c, "GET", "/slow", "Prefer", "wait=3")
		etag := first.Header.Get("Etag")
		if etag == itUpstreamETag(1) {
			t.Fatalf("first answer carries the upstream's ETag %s: the long-poll was passed through", etag)
		}
		r := itMustSend(t, c, "GET", "/slow", "Prefer", "wait=3", "If-None-Match", etag)
		if r.Err != nil || r.Status != http.StatusNotModified {
			t.Fatalf("got %d (error %v) after %v, want 304", r.Status, r.Err, r.Elapsed)
		}
		if r.Elapsed < 500*time.Millisecond || r.Elapsed >= time.Second {
			t.Errorf("answered after %v, want after most of, and within, the 1s write timeout", r.Elapsed)
		}
		if got := r.Header.Get("Preference-Applied"); got != "wait=0" {
			t.Errorf("Preference-Applied: got %q, want %q (the wait applied, in whole seconds)", got, "wait=0")
		}
	})

	// An event stream under that hard limit ends cleanly before it (its
	// last chunk written, the client free to reconnect and resume), rather
	// than stay open until a write fails; with write_idle off, the
	// stream's own write deadlines replace write_timeout and it stays.
	streamFor := func(t *testing.T, path string, within time.Duration) (ended bool, after time.Duration, err error) {
		t.Helper()
		sse := openSSE(t, path)
		start := time.Now()
		if ev := sse.next(t, 5*time.Second); ev.ID == "" {
			t.Fatalf("first event without an id: %+v", ev)
		}
		timer := time.NewTimer(within)
		defer timer.Stop()
		for {
			select {
			case _, ok := <-sse.events:
				if !ok {
					return true, time.Since(start), sse.err
				}
			case <-timer.C:
				return false, time.Since(start), nil
			}
		}
	}
	t.Run("write 3s, default write_idle: a stream ends cleanly inside it", func(t *testing.T) {
		itLoad(t, tc, itConfig(timeouts("\t\t\twrite 3s\n"), streamSite(up, "")))
		ended, after, err := streamFor(t, "/stream3", 8*time.Second)
		if !ended || err != nil || after < 1500*time.Millisecond || after >= 3*time.Second {
			t.Errorf("stream ended: %v (read error %v) after %v; want a clean end after most of, and within, the 3s write timeout", ended, err, after)
		}
	})
	t.Run("write 1s, write_idle off: a stream stays", func(t *testing.T) {
		itLoad(t, tc, itConfig(timeouts("\t\t\twrite 1s\n\t\t\twrite_idle -1s\n"), streamSite(up, "")))
		if ended, after, err := streamFor(t, "/stream1", 3*time.Second); ended {
			t.Errorf("stream ended after %v (read error %v), want it open (write_idle off)", after, err)
		}
	})
}
