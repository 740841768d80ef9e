// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestIntegrationProtocol walks through the long-poll protocol case by case
// against a real Caddy with reverse_proxy: it is the contract clients are
// written against, so each answer is checked for its status, validators and
// headers, not just for arriving.
func TestIntegrationProtocol(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 3s", up)))
	c, _ := itClient(t)

	// A client without a version gets the current one at once, with a
	// validator of the module's own (stable across instances) replacing the
	// upstream's, and Vary: Prefer so caches keep long-polls apart.
	t.Run("no If-None-Match: 200 at once with the module's ETag", func(t *testing.T) {
		r := itMustSend(t, c, "GET", "/fresh", "Prefer", "wait=3")
		if r.Status != http.StatusOK {
			t.Fatalf("status: got %d, want 200", r.Status)
		}
		etag := r.Header.Get("Etag")
		if etag == "" || etag == itUpstreamETag(1) || !strings.HasPrefix(etag, `"`) {
			t.Errorf("ETag: got %q, want a strong ETag other than the upstream's %s", etag, itUpstreamETag(1))
		}
		if !itHasToken(r.Header, "Vary", "Prefer") {
			t.Errorf("Vary: got %q, want it to hold Prefer", r.Header.Values("Vary"))
		}
		if r.Body != "initial /fresh" {
			t.Errorf("body: got %q, want %q", r.Body, "initial /fresh")
		}
		if r.Elapsed > time.Second {
			t.Errorf("answered after %v, want at once (wait=3)", r.Elapsed)
		}
	})

	// A client with an outdated version must not wait for the next change:
	// it has missed one already.
	t.Run("If-None-Match not matching: 200 at once", func(t *testing.T) {
		r := itMustSend(t, c, "GET", "/stale", "Prefer", "wait=3", "If-None-Match", `"some-old-version"`)
		if r.Status != http.StatusOK || r.Body != "initial /stale" {
			t.Errorf("got %d %q, want 200 %q", r.Status, r.Body, "initial /stale")
		}
		if r.Elapsed > time.Second {
			t.Errorf("answered after %v, want at once (wait=3)", r.Elapsed)
		}
	})

	// The heart of long-polling: a client with the current version is held
	// and released by the change with everything the upstream said.
	t.Run("If-None-Match matching: held, released by a change", func(t *testing.T) {
		etag := itMustSend(t, c, "GET", "/change", "Prefer", "wait=3").Header.Get("Etag")
		held := itSendAsync(t, t.Context(), c, "GET", "/change", "Prefer", "wait=3", "If-None-Match", etag)
		itWaitHeld(t, 1)
		changed := time.Now()
		up.set("/change", http.StatusOK, `{"v":2}`, "Content-Type", "application/json", "X-Upstream", "v2")
		r := itReceive(t, held, 5*time.Second)
		if r.Status != http.StatusOK || r.Body != `{"v":2}` {
			t.Fatalf("got %d %q, want 200 %q", r.Status, r.Body, `{"v":2}`)
		}
		if d := r.At.Sub(changed); d > 2*time.Second {
			t.Errorf("released %v after the change, want within 2s (interval 100ms)", d)
		}
		if got := r.Header.Get("Etag"); got == "" || got == etag || got == itUpstreamETag(2) {
			t.Errorf("ETag: got %q, want a new module ETag (old %s, upstream %s)", got, etag, itUpstreamETag(2))
		}
		if got := r.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("Content-Type: got %q, want %q", got, "application/json")
		}
		if got := r.Header.Get("X-Upstream"); got != "v2" {
			t.Errorf("X-Upstream: got %q, want %q", got, "v2")
		}
		if got := r.Header.Get("Preference-Applied"); got != "wait=3" {
			t.Errorf("Preference-Applied: got %q, want %q", got, "wait=3")
		}
	})

	// Nothing changed: the wait ends with a 304 that repeats the validator,
	// so that the client can ask again with it.
	t.Run("If-None-Match matching: 304 when the wait ends", func(t *testing.T) {
		etag := itMustSend(t, c, "GET", "/same", "Prefer", "wait=1").Header.Get("Etag")
		r := itMustSend(t, c, "GET", "/same", "Prefer", "wait=1", "If-None-Match", etag)
		if r.Status != http.StatusNotModified {
			t.Fatalf("status: got %d, want 304", r.Status)
		}
		if got := r.Header.Get("Etag"); got != etag {
			t.Errorf("ETag: got %q, want %q", got, etag)
		}
		if got := r.Header.Get("Preference-Applied"); got != "wait=1" {
			t.Errorf("Preference-Applied: got %q, want %q", got, "wait=1")
		}
		if r.Body != "" {
			t.Errorf("body: got %q, want none", r.Body)
		}
		if r.Elapsed < 750*time.Millisecond || r.Elapsed > 3*time.Second {
			t.Errorf("answered after %v, want about 1s (wait=1, jitter up to 10%%)", r.Elapsed)
		}
	})

	// A client cannot hold a request longer than the operator allows (load
	// balancers cut idle requests); Preference-Applied tells it what it got.
	t.Run("wait above max_wait is clamped", func(t *testing.T) {
		etag := itMustSend(t, c, "GET", "/clamp", "Prefer", "wait=3600").Header.Get("Etag")
		r := itMustSend(t, c, "GET", "/clamp", "Prefer", "wait=3600", "If-None-Match", etag)
		if r.Status != http.StatusNotModified {
			t.Fatalf("status: got %d, want 304", r.Status)
		}
		if got := r.Header.Get("Preference-Applied"); got != "wait=3" {
			t.Errorf("Preference-Applied: got %q, want %q (max_wait 3s)", got, "wait=3")
		}
		if r.Elapsed < 2500*time.Millisecond || r.Elapsed > 5*time.Second {
			t.Errorf("answered after %v, want about 3s (max_wait)", r.Elapsed)
		}
	})

	// If-None-Match uses the weak comparison and may list several ETags
	// (RFC 9110, 13.1.2): a client that kept a few versions is held too.
	for _, tt := range []struct{ name, inm string }{
		{"weak W/ ETag matches", "W/%s"},
		{"a list of ETags matches", `"other", W/"older", %s`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := "/inm-" + strings.ReplaceAll(tt.name, " ", "-")
			etag := itMustSend(t, c, "GET", path, "Prefer", "wait=1").Header.Get("Etag")
			inm := fmt.Sprintf(tt.inm, etag)
			r := itMustSend(t, c, "GET", path, "Prefer", "wait=1", "If-None-Match", inm)
			if r.Status != http.StatusNotModified || r.Elapsed < 750*time.Millisecond {
				t.Errorf("If-None-Match %q: got %d after %v, want 304 after about 1s", inm, r.Status, r.Elapsed)
			}
		})
	}

	// A HEAD long-poll watches for a change without downloading. It is
	// polled with HEAD, in a watch of its own (its own ETag), so that the
	// upstream never sees a GET the route did not let through; its headers
	// are those of a plain HEAD.
	t.Run("HEAD long-poll: headers, no body, polled with HEAD", func(t *testing.T) {
		get := itMustSend(t, c, "GET", "/head", "Prefer", "wait=1")
		before := len(up.seenFor("/head"))
		r := itMustSend(t, c, "HEAD", "/head", "Prefer", "wait=1")
		if r.Status != http.StatusOK || r.Body != "" {
			t.Fatalf("got %d %q, want 200 and no body", r.Status, r.Body)
		}
		etag := r.Header.Get("Etag")
		if etag == "" || etag == get.Header.Get("Etag") {
			t.Errorf("ETag: got %q, want one of the HEAD watch's own (the GET's is %q)", etag, get.Header.Get("Etag"))
		}
		plain := itMustSend(t, c, "HEAD", "/head")
		if got, want := r.Header.Get("Content-Length"), plain.Header.Get("Content-Length"); got != want {
			t.Errorf("Content-Length: got %q, want a plain HEAD's %q", got, want)
		}
		for _, s := range up.seenFor("/head")[before:] {
			if s.Method != http.MethodHead {
				t.Errorf("the upstream got a %s for a HEAD long-poll, want HEAD only", s.Method)
			}
		}
		held := itMustSend(t, c, "HEAD", "/head", "Prefer", "wait=1", "If-None-Match", etag)
		if held.Status != http.StatusNotModified || held.Elapsed < 750*time.Millisecond {
			t.Errorf("held HEAD: got %d after %v, want 304 after about 1s", held.Status, held.Elapsed)
		}
	})

	// A 404 is a representation like any other: a client can wait for a
	// resource to appear.
	t.Run("upstream status is long-polled: 404, then 200", func(t *testing.T) {
		up.set("/missing", http.StatusNotFound, "no such thing")
		r := itMustSend(t, c, "GET", "/missing", "Prefer", "wait=3")
		etag := r.Header.Get("Etag")
		if r.Status != http.StatusNotFound || r.Body != "no such thing" || etag == "" {
			t.Fatalf("got %d %q ETag %q, want 404 %q with an ETag", r.Status, r.Body, etag, "no such thing")
		}
		held := itSendAsync(t, t.Context(), c, "GET", "/missing", "Prefer", "wait=3", "If-None-Match", etag)
		itWaitHeld(t, 1)
		up.set("/missing", http.StatusOK, "here now")
		r = itReceive(t, held, 5*time.Second)
		if r.Status != http.StatusOK || r.Body != "here now" {
			t.Errorf("got %d %q, want 200 %q", r.Status, r.Body, "here now")
		}
		if got := r.Header.Get("Etag"); got == etag {
			t.Errorf("ETag: got the 404's %q, want a new one", got)
		}
	})
}

// TestIntegrationPassThrough checks that whatever is not a long-poll reaches
// the upstream byte for byte and comes back untouched: the module must be
// invisible to every other client of the API, and an invalid wait is
// ignored as RFC 7240 asks, not treated as a long-poll.
func TestIntegrationPassThrough(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 3s", up)))
	c, _ := itClient(t)

	for i, tt := range []struct {
		name, method string
		hdr          []string
	}{
		{"POST with Prefer wait", "POST", []string{"Prefer", "wait=2"}},
		{"GET without Prefer", "GET", nil},
		{"Prefer wait=abc", "GET", []string{"Prefer", "wait=abc"}},
		{"Prefer wait=-1", "GET", []string{"Prefer", "wait=-1"}},
		{"Prefer wait overflowing", "GET", []string{"Prefer", "wait=99999999999"}},
		{"Prefer wait=0", "GET", []string{"Prefer", "wait=0"}},
		{"Range request with Prefer wait", "GET", []string{"Prefer", "wait=2", "Range", "bytes=0-3"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := "pass-" + strconv.Itoa(i)
			hdr := append([]string{"X-Test-Id", id, "If-None-Match", `"client-old"`, "Accept", "text/plain"}, tt.hdr...)
			r := itMustSend(t, c, tt.method, "/pass", hdr...)
			if r.Status != http.StatusOK || r.Body != "initial /pass" {
				t.Errorf("got %d %q, want 200 %q", r.Status, r.Body, "initial /pass")
			}
			if got := r.Header.Get("Etag"); got != itUpstreamETag(1) {
				t.Errorf("ETag: got %q, want the upstream's %q", got, itUpstreamETag(1))
			}
			if itHasToken(r.Header, "Vary", "Prefer") {
				t.Errorf("Vary: got %q, want no Prefer", r.Header.Values("Vary"))
			}
			if r.Header.Get("Preference-Applied") != "" {
				t.Errorf("Preference-Applied: got %q, want none", r.Header.Get("Preference-Applied"))
			}
			seen := up.seenWith("X-Test-Id", id)
			if len(seen) != 1 {
				t.Fatalf("upstream got %d requests, want exactly the client's 1", len(seen))
			}
			if seen[0].Method != tt.method {
				t.Errorf("upstream method: got %s, want %s", seen[0].Method, tt.method)
			}
			for j := 0; j+1 < len(hdr); j += 2 {
				if got := seen[0].Header.Values(hdr[j]); !slices.Equal(got, []string{hdr[j+1]}) {
					t.Errorf("upstream %s: got %q, want %q", hdr[j], got, hdr[j+1])
				}
			}
			if tt.hdr == nil && seen[0].Header.Get("Prefer") != "" {
				t.Errorf("upstream Prefer: got %q, want none", seen[0].Header.Get("Prefer"))
			}
		})
	}
}
