// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestIntegrationUpstreamVary has the upstream vary its answer on
// Accept-Language, which is not in the key: a client whose language differs
// from the one the watch polled with must get its own language, never the
// shared snapshot.
func TestIntegrationUpstreamVary(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	up.setServe("/lang", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Vary", "Accept-Language")
		fmt.Fprintf(w, "text in %s", r.Header.Get("Accept-Language"))
	})
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 5s", up)))
	c, _ := itClient(t)

	for _, lang := range []string{"en", "fr", "en", "fr"} {
		r := itMustSend(t, c, "GET", "/lang", "Prefer", "wait=2", "Accept-Language", lang)
		if want := "text in " + lang; r.Status != http.StatusOK || r.Body != want {
			t.Errorf("Accept-Language %s: got %d %q, want 200 %q", lang, r.Status, r.Body, want)
		}
	}
}

// TestIntegrationEncode puts encode in front of longpoll, as the README's
// example does: encode gives gzip clients an ETag with a "-gzip" suffix and
// strips it from their If-None-Match, and many clients released at once
// must each get their own compressed copy of the one snapshot they share
// (run with -race, this also checks that no handler writes into it).
func TestIntegrationEncode(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	body := strings.Repeat("compressible text ", 200)
	up.set("/gz", http.StatusOK, body, "Content-Type", "text/plain")
	itLoad(t, tc, itConfig("", "\tencode gzip\n"+itSite("interval 100ms\nmax_wait 10s", up)))
	c, _ := itClient(t)

	gunzip := func(t *testing.T, r itReply) string {
		t.Helper()
		if got := r.Header.Get("Content-Encoding"); got != "gzip" {
			t.Fatalf("Content-Encoding: got %q, want gzip", got)
		}
		zr, err := gzip.NewReader(strings.NewReader(r.Body))
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		return string(b)
	}

	first := itMustSend(t, c, "GET", "/gz", "Prefer", "wait=5", "Accept-Encoding", "gzip")
	etag := first.Header.Get("Etag")
	if first.Status != http.StatusOK || gunzip(t, first) != body || !strings.HasSuffix(etag, `-gzip"`) {
		t.Fatalf("got %d with ETag %q, want 200 with the body gzipped and a -gzip ETag", first.Status, etag)
	}

	const n = 50
	held := make([]<-chan itReply, n)
	for i := range held {
		held[i] = itSendAsync(t, t.Context(), c, "GET", "/gz", "Prefer", "wait=8", "Accept-Encoding", "gzip", "If-None-Match", etag)
	}
	itWaitHeld(t, n)
	changed := strings.Repeat("changed text ", 200)
	up.set("/gz", http.StatusOK, changed, "Content-Type", "text/plain")
	for i, ch := range held {
		r := itReceive(t, ch, 5*time.Second)
		if r.Status != http.StatusOK || gunzip(t, r) != changed {
			t.Fatalf("held gzip request %d: got %d, want 200 with the changed body", i, r.Status)
		}
		if got := r.Header.Values("Vary"); len(got) != 2 || !itHasToken(r.Header, "Vary", "Prefer") || !itHasToken(r.Header, "Vary", "Accept-Encoding") {
			t.Errorf("held gzip request %d: Vary %q, want Prefer and Accept-Encoding once each", i, got)
		}
	}

	// The -gzip ETag, sent back, is held like the module's own.
	etag = itMustSend(t, c, "GET", "/gz", "Prefer", "wait=1", "Accept-Encoding", "gzip").Header.Get("Etag")
	if r := itMustSend(t, c, "GET", "/gz", "Prefer", "wait=1", "Accept-Encoding", "gzip", "If-None-Match", etag); r.Status != http.StatusNotModified || r.Elapsed < 750*time.Millisecond {
		t.Errorf("If-None-Match %s: got %d after %v, want 304 after about 1s", etag, r.Status, r.Elapsed)
	}
}

// TestIntegrationHeaderDirective puts a deferred header replacement in
// front of longpoll, a common way of rewriting what an upstream says: it
// edits each response's header, and must not edit the snapshot that every
// client of the watch is answered from.
func TestIntegrationHeaderDirective(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	up.set("/hdr", http.StatusOK, "same body", "X-Upstream", "v1")
	itLoad(t, tc, itConfig("", "\theader >X-Upstream v vv\n"+itSite("interval 100ms\nmax_wait 5s", up)))
	c, _ := itClient(t)

	var got []string
	for range 3 {
		r := itMustSend(t, c, "GET", "/hdr", "Prefer", "wait=2")
		got = append(got, r.Header.Get("X-Upstream"))
	}
	want := []string{"vv1", "vv1", "vv1"}
	if fmt.Sprint(got) == fmt.Sprint(want) {
		return
	}
	t.Errorf("X-Upstream of three clients in a row: got %q, want %q", got, want)
}

// TestIntegrationQueryParamsWithoutWait checks that the module's query
// parameters are removed even from a request that is not a long-poll (an
// etag parameter with no wait), as the README says, so that the upstream
// never sees them.
func TestIntegrationQueryParamsWithoutWait(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 5s\nquery_params wait etag", up)))
	c, _ := itClient(t)

	r := itMustSend(t, c, "GET", "/qp?etag=abc&x=2")
	if r.Status != http.StatusOK || r.Header.Get("Etag") != itUpstreamETag(1) {
		t.Errorf("got %d with ETag %q, want 200 passed through with the upstream's %s", r.Status, r.Header.Get("Etag"), itUpstreamETag(1))
	}
	seen := up.seenFor("/qp")
	if len(seen) != 1 || seen[0].RawQuery != "x=2" {
		var queries bytes.Buffer
		for _, s := range seen {
			fmt.Fprintf(&queries, " %q", s.RawQuery)
		}
		t.Errorf("upstream queries: got%s, want exactly \"x=2\"", queries.String())
	}
}
