// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestIntegrationPrivateHold runs the README's client loop (send the last
// ETag back with Prefer: wait=3, ask again at once) with 20 clients for
// 20 s at interval 1s against three upstreams that no watch can share with
// every client: one that sets a cookie on every response, one that varies
// on a header each client sends its own value of, and one whose body is
// over max_body. Each client is held on its own behalf: it causes at most
// one upstream request an interval, sees every change within an interval
// (and a margin for the round trips), and gets only its own answers, its
// own cookie included.
func TestIntegrationPrivateHold(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	settings := "\t\tinterval 1s\n\t\tmax_wait 10s\n\t\tkey {path}\n"
	site := fmt.Sprintf("\thandle /big {\n\t\tlongpoll {\n%s\t\tmax_body 1KiB\n\t\t}\n\t\treverse_proxy %s\n\t}\n"+
		"\thandle {\n\t\tlongpoll {\n%s\t\t}\n\t\treverse_proxy %s\n\t}\n", settings, up.addr(), settings, up.addr())
	itLoad(t, tc, itConfig("", site))

	var version atomic.Int64
	version.Store(1)
	serve := func(cookie, vary bool, pad int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			user := r.Header.Get("X-User")
			if cookie {
				http.SetCookie(w, &http.Cookie{Name: "session", Value: user + "-" + fmt.Sprint(time.Now().UnixNano())})
			}
			if vary {
				w.Header().Set("Vary", "X-User")
			}
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"user": %q, "version": %d, "pad": %q}`, user, version.Load(), strings.Repeat("x", pad))
		}
	}
	up.setServe("/cookie", serve(true, false, 0))
	up.setServe("/vary", serve(false, true, 0))
	up.setServe("/big", serve(true, false, 2048))

	const (
		clients  = 20
		run      = 20 * time.Second
		every    = 4 * time.Second // the upstream changes
		interval = time.Second
		margin   = time.Second // for the polls' and the answers' round trips
	)
	start := time.Now()
	changes := make(map[int64]time.Time) // version: when it was made
	changes[1] = start
	var changesMu sync.Mutex
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	go func() {
		for v := int64(2); ; v++ {
			<-ticker.C
			if time.Since(start) > run-every/2 {
				return // the last change has half a period to be seen
			}
			changesMu.Lock()
			version.Store(v)
			changes[v] = time.Now()
			changesMu.Unlock()
		}
	}()

	type result struct {
		answers, notModified int
		problems             []string
		late                 []string
		last                 map[string]int64 // by client: the last version it saw
	}
	results := make(map[string]*result)
	var wg sync.WaitGroup
	c, _ := itClient(t)
	ctx, cancel := context.WithTimeout(t.Context(), run)
	defer cancel()
	for _, path := range []string{"/cookie", "/vary", "/big"} {
		res := &result{last: make(map[string]int64)}
		results[path] = res
		var mu sync.Mutex
		for i := range clients {
			user := fmt.Sprintf("u%d", i)
			wg.Go(func() {
				etag, seen := "", int64(0)
				for ctx.Err() == nil {
					hdr := []string{"X-User", user, "Prefer", "wait=3"}
					if etag != "" {
						hdr = append(hdr, "If-None-Match", etag)
					}
					r := itSend(ctx, c, "GET", path, hdr...)
					if r.Err != nil {
						return // the run is over
					}
					mu.Lock()
					res.answers++
					cookie := r.Header.Get("Set-Cookie")
					ownCookie := strings.HasPrefix(cookie, "session="+user+"-")
					switch {
					case r.Status == http.StatusNotModified:
						res.notModified++
						if path == "/cookie" && !ownCookie {
							res.problems = append(res.problems, fmt.Sprintf("%s: 304 with cookie %q", user, cookie))
						}
					case r.Status != http.StatusOK || !strings.Contains(r.Body, `"user": "`+user+`"`) ||
						(path != "/vary" && !ownCookie) || (path == "/vary" && cookie != ""):
						res.problems = append(res.problems, fmt.Sprintf("%s: %d, cookie %q, body %.60s", user, r.Status, cookie, r.Body))
					default:
						var got int64
						if _, err := fmt.Sscanf(r.Body[strings.Index(r.Body, `"version": `)+len(`"version": `):], "%d", &got); err == nil && got > seen {
							changesMu.Lock()
							made := changes[got]
							changesMu.Unlock()
							if seen > 0 && r.At.Sub(made) > interval+margin {
								res.late = append(res.late, fmt.Sprintf("%s saw v%d %v after it", user, got, r.At.Sub(made).Round(time.Millisecond)))
							}
							seen = got
							res.last[user] = got
						}
						etag = r.Header.Get("Etag")
					}
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for _, path := range []string{"/cookie", "/vary", "/big"} {
		res := results[path]
		hits := up.hitsFor(path)
		if limit := int64(clients * (int(run/interval) + 1)); hits > limit {
			t.Errorf("%s: %d clients looping for %v at interval 1s: %d upstream requests, want at most %d", path, clients, run, hits, limit)
		}
		if len(res.problems) > 0 {
			t.Errorf("%s: answers not each the client's own (%d of %d): %q", path, len(res.problems), res.answers, res.problems)
		}
		if len(res.late) > 0 {
			t.Errorf("%s: changes seen later than an interval and %v: %q", path, margin, res.late)
		}
		for i := range clients {
			if user := fmt.Sprintf("u%d", i); res.last[user] != version.Load() {
				t.Errorf("%s: %s saw v%d last, want the last version, v%d", path, user, res.last[user], version.Load())
			}
		}
		if path != "/big" && res.notModified == 0 {
			t.Errorf("%s: no 304 in %d answers: the clients were not held until a change", path, res.answers)
		}
		t.Logf("%s: %d clients, %v: %d answers (%d 304), %d upstream requests, %.1f per client per minute",
			path, clients, run, res.answers, res.notModified, hits, float64(hits)/clients/run.Minutes())
	}
}

// TestIntegrationPrivateHoldConditional holds a client privately on an
// upstream that sets a cookie on every response, its 304s included: the
// private polls are conditional on the upstream's own ETag, and the 304
// at the end of the wait carries the newest cookie.
func TestIntegrationPrivateHoldConditional(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 1s\nmax_wait 10s", up)))
	var session, conditional atomic.Int64
	up.setServe("/cond", func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "session", Value: fmt.Sprint(session.Add(1))})
		w.Header().Set("Etag", `"u1"`)
		if r.Header.Get("If-None-Match") == `"u1"` {
			conditional.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		fmt.Fprint(w, "same body")
	})
	c, _ := itClient(t)
	first := itMustSend(t, c, "GET", "/cond", "Prefer", "wait=3")
	if first.Status != http.StatusOK || first.Body != "same body" || first.Header.Get("Etag") == `"u1"` {
		t.Fatalf("first answer: %d %q ETag %q, want 200 with the module's ETag", first.Status, first.Body, first.Header.Get("Etag"))
	}
	r := itMustSend(t, c, "GET", "/cond", "Prefer", "wait=3", "If-None-Match", first.Header.Get("Etag"))
	if r.Status != http.StatusNotModified || r.Elapsed < 2500*time.Millisecond {
		t.Fatalf("held privately: %d after %v, want 304 at the end of the wait", r.Status, r.Elapsed)
	}
	if got, want := r.Header.Get("Set-Cookie"), fmt.Sprintf("session=%d", session.Load()); got != want {
		t.Errorf("304's cookie %q, want the newest, %q", got, want)
	}
	if conditional.Load() == 0 {
		t.Error("no private poll sent the upstream's ETag back: want conditional polls")
	}
}
