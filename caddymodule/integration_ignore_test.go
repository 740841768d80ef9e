// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestIntegrationIgnore puts a JSON upstream that stamps the time and a
// request id into every body behind `ignore /generated_at /request_id`:
// held clients are not released by 30 polls that change only those, and
// one real change then releases every one of them with the new body.
func TestIntegrationIgnore(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 20s\nignore /generated_at /request_id", up)))
	var status atomic.Value
	status.Store("open")
	var served atomic.Int64
	up.setServe("/stamped", func(w http.ResponseWriter, r *http.Request) {
		n := served.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"order": 42, "status": %q, "generated_at": %q, "request_id": "r-%d"}`,
			status.Load(), time.Now().Format(time.RFC3339Nano), n)
	})
	c, _ := itClient(t)
	first := itMustSend(t, c, "GET", "/stamped", "Prefer", "wait=1")
	etag := first.Header.Get("Etag")
	if first.Status != http.StatusOK || !strings.Contains(first.Body, `"open"`) {
		t.Fatalf("first answer: %d %s, want 200 with the order open", first.Status, first.Body)
	}
	var held []<-chan itReply
	for range 3 {
		held = append(held, itSendAsync(t, t.Context(), c, "GET", "/stamped", "Prefer", "wait=15", "If-None-Match", etag))
	}
	itWaitHeld(t, 3)
	before := served.Load()
	itWaitFor(t, "30 polls", 10*time.Second, func() bool { return served.Load()-before >= 30 })
	for i, ch := range held {
		select {
		case r := <-ch:
			t.Fatalf("client %d answered (%d) by polls that changed only ignored fields", i, r.Status)
		default:
		}
	}
	status.Store("shipped")
	for i, ch := range held {
		select {
		case r := <-ch:
			if r.Status != http.StatusOK || !strings.Contains(r.Body, `"shipped"`) || r.Header.Get("Etag") == etag {
				t.Errorf("client %d after the change: %d %s (ETag %s), want 200 with the new body and ETag", i, r.Status, r.Body, r.Header.Get("Etag"))
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("client %d not released within 5 s of a real change", i)
		}
	}
}
