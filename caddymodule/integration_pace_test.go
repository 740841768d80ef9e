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

// TestIntegrationPassThroughPaced runs the README's client loop (send the
// last ETag back with Prefer: wait=3, ask again at once) against an
// upstream that sets a cookie on every response, which no watch can
// share: each answer comes from the upstream with the client's own cookie,
// and a change reaches every client within an interval, but no client
// costs the upstream more than one request per interval.
func TestIntegrationPassThroughPaced(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 1s\nmax_wait 10s\nkey {path} {header.X-User}", up)))
	var version atomic.Int64
	version.Store(1)
	up.setServe("/cookie", func(w http.ResponseWriter, r *http.Request) {
		user := r.Header.Get("X-User")
		http.SetCookie(w, &http.Cookie{Name: "session", Value: user + "-" + fmt.Sprint(time.Now().UnixNano())})
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"user": %q, "version": %d}`, user, version.Load())
	})

	const clients, run = 5, 5 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), run)
	defer cancel()
	c, _ := itClient(t)
	var (
		mu       sync.Mutex
		answers  int
		problems []string
		sawV2    = make(map[string]time.Time)
	)
	changedAt := time.Now().Add(run / 2)
	time.AfterFunc(time.Until(changedAt), func() { version.Store(2) })
	var wg sync.WaitGroup
	for i := range clients {
		user := fmt.Sprintf("u%d", i)
		wg.Go(func() {
			etag := ""
			for ctx.Err() == nil {
				hdr := []string{"X-User", user, "Prefer", "wait=3"}
				if etag != "" {
					hdr = append(hdr, "If-None-Match", etag)
				}
				r := itSend(ctx, c, "GET", "/cookie", hdr...)
				if r.Err != nil {
					return // the run is over
				}
				mu.Lock()
				answers++
				cookie := r.Header.Get("Set-Cookie")
				if r.Status != http.StatusOK || !strings.HasPrefix(cookie, "session="+user+"-") || !strings.Contains(r.Body, `"user": "`+user+`"`) {
					problems = append(problems, fmt.Sprintf("%s: %d, cookie %q, body %s", user, r.Status, cookie, r.Body))
				}
				if strings.Contains(r.Body, `"version": 2`) {
					if _, ok := sawV2[user]; !ok {
						sawV2[user] = r.At
					}
				}
				mu.Unlock()
				etag = r.Header.Get("Etag")
			}
		})
	}
	wg.Wait()
	hits := up.hitsFor("/cookie")
	if max := int64(clients * (int(run/time.Second) + 1)); hits > max {
		t.Errorf("%d clients looping for %v at interval 1s: %d upstream requests, want at most %d", clients, run, hits, max)
	}
	if len(problems) > 0 {
		t.Errorf("answers not each the client's own (%d of %d): %q", len(problems), answers, problems)
	}
	for i := range clients {
		user := fmt.Sprintf("u%d", i)
		if at, ok := sawV2[user]; !ok || at.Sub(changedAt) > 2*time.Second {
			t.Errorf("%s saw the change %v after it (seen: %v), want within an interval", user, at.Sub(changedAt), ok)
		}
	}
	t.Logf("%d clients, %v: %d answers, %d upstream requests", clients, run, answers, hits)
}
