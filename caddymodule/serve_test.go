// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// prepare builds a request as Caddy's server hands it to a handler: with a
// replacer and vars in its context. There is no server (nil), as in Caddy's
// own handler unit tests; a caddyhttp.HandlerFunc next does not need one.
func prepare(t *testing.T, method, target string, header http.Header) (*http.Request, *httptest.ResponseRecorder, *caddy.Replacer) {
	t.Helper()
	req := httptest.NewRequestWithContext(t.Context(), method, target, nil)
	maps.Copy(req.Header, header)
	w := httptest.NewRecorder()
	repl := caddy.NewReplacer()
	return caddyhttp.PrepareRequest(req, repl, w, nil), w, repl
}

// outcome returns {http.longpoll.outcome}, or "" when it is not set.
func outcome(repl *caddy.Replacer) string {
	v, _ := repl.GetString("http.longpoll.outcome")
	return v
}

// TestServeHTTPPassesThrough checks that every request that is not a
// long-poll goes to the next handler as it came: the same request, headers
// and query, with the next handler's response.
func TestServeHTTPPassesThrough(t *testing.T) {
	h := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}", QueryParams: &QueryParams{Wait: "wait", ETag: "etag"}}
	provision(t, newTestContext(t), h)

	var (
		calls atomic.Int32
		seen  atomic.Pointer[http.Request]
	)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		calls.Add(1)
		seen.Store(r)
		w.Header().Set("X-Next", "1")
		w.WriteHeader(http.StatusTeapot)
		_, _ = io.WriteString(w, "from next")
		return nil
	})

	wait := http.Header{"Prefer": {"wait=5"}}
	tests := []struct {
		name        string
		method      string
		target      string
		header      http.Header
		wantOutcome string
	}{
		{name: "POST", method: http.MethodPost, target: "/res?a=1", header: wait},
		{name: "POST with query wait", method: http.MethodPost, target: "/res?wait=5&a=1&etag=x"},
		{name: "PUT", method: http.MethodPut, target: "/res", header: wait},
		{name: "DELETE", method: http.MethodDelete, target: "/res", header: wait},
		{name: "OPTIONS", method: http.MethodOptions, target: "/res", header: wait},
		{name: "GET without Prefer", method: http.MethodGet, target: "/res?a=1&b=%20"},
		{name: "HEAD without Prefer", method: http.MethodHead, target: "/res"},
		{name: "GET with another preference", method: http.MethodGet, target: "/res", header: http.Header{"Prefer": {"return=minimal"}}},
		{name: "GET with wait=0", method: http.MethodGet, target: "/res", header: http.Header{"Prefer": {"wait=0"}}},
		{name: "GET with invalid wait", method: http.MethodGet, target: "/res", header: http.Header{"Prefer": {"wait=soon"}}},
		{name: "GET with negative wait", method: http.MethodGet, target: "/res", header: http.Header{"Prefer": {"wait=-5"}}},
		{name: "GET with If-None-Match but no Prefer", method: http.MethodGet, target: "/res", header: http.Header{"If-None-Match": {`"x"`}}},
		{
			name: "GET with Range", method: http.MethodGet, target: "/res?a=1",
			header: http.Header{"Prefer": {"wait=5"}, "Range": {"bytes=0-1"}}, wantOutcome: outcomePassthrough,
		},
		{
			name: "HEAD with Range and If-None-Match", method: http.MethodHead, target: "/res",
			header: http.Header{"Prefer": {"wait=5"}, "Range": {"bytes=0-1"}, "If-None-Match": {`"x"`}}, wantOutcome: outcomePassthrough,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls.Store(0)
			req, w, repl := prepare(t, tt.method, tt.target, tt.header)
			wantHeader := req.Header.Clone()
			wantQuery, wantURI := req.URL.RawQuery, req.RequestURI

			if err := h.ServeHTTP(w, req, next); err != nil {
				t.Fatalf("ServeHTTP(%s %s %v): got error %v, want none", tt.method, tt.target, tt.header, err)
			}
			if n := calls.Load(); n != 1 {
				t.Fatalf("ServeHTTP(%s %s %v): got %d calls to next, want 1", tt.method, tt.target, tt.header, n)
			}
			if got := seen.Load(); got != req {
				t.Errorf("ServeHTTP(%s %s %v): next got another request, want the same one", tt.method, tt.target, tt.header)
			}
			if !httpHeaderEqual(req.Header, wantHeader) || req.URL.RawQuery != wantQuery || req.RequestURI != wantURI {
				t.Errorf("ServeHTTP(%s %s %v): next got header %v, query %q, URI %q; want them untouched: %v, %q, %q",
					tt.method, tt.target, tt.header, req.Header, req.URL.RawQuery, req.RequestURI, wantHeader, wantQuery, wantURI)
			}
			if w.Code != http.StatusTeapot || w.Body.String() != "from next" || w.Header().Get("X-Next") != "1" {
				t.Errorf("ServeHTTP(%s %s %v): got response %d %q, want next's 418 \"from next\"", tt.method, tt.target, tt.header, w.Code, w.Body)
			}
			if got := outcome(repl); got != tt.wantOutcome {
				t.Errorf("ServeHTTP(%s %s %v): got outcome %q, want %q", tt.method, tt.target, tt.header, got, tt.wantOutcome)
			}
		})
	}
}

func httpHeaderEqual(a, b http.Header) bool {
	return maps.EqualFunc(a, b, slices.Equal)
}

// versioned is an upstream whose representation is "v<version>", with an
// ETag of its own that the module must not pass on.
type versioned struct {
	version atomic.Int32
	polls   atomic.Int32
	query   atomic.Value // string: the raw query of the last poll
}

func (u *versioned) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	u.polls.Add(1)
	u.query.Store(r.URL.RawQuery)
	v := fmt.Sprintf("v%d", u.version.Load())
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Etag", `"upstream-`+v+`"`)
	_, _ = io.WriteString(w, v)
	return nil
}

var quotedETag = regexp.MustCompile(`^"[^"]+"$`)

// TestServeHTTPLongPoll follows one client through the protocol, on a fake
// clock: a first long-poll is answered at once with the module's ETag; one
// with that ETag is held and answered 304 when its wait ends; one held while
// the upstream changes is answered with the new representation.
func TestServeHTTPLongPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := new(versioned)
		up.version.Store(1)
		h := &Handler{}
		provision(t, newTestContext(t), h)
		const target = "http://example.com/res"

		// No If-None-Match: answered at once.
		req, w, repl := prepare(t, http.MethodGet, target, http.Header{"Prefer": {"wait=5"}})
		if err := h.ServeHTTP(w, req, up); err != nil {
			t.Fatalf("first long-poll: got error %v, want none", err)
		}
		etag := w.Header().Get("Etag")
		vary := strings.Join(w.Header().Values("Vary"), ",")
		switch {
		case w.Code != http.StatusOK || w.Body.String() != "v1":
			t.Errorf("first long-poll: got %d %q, want 200 \"v1\"", w.Code, w.Body)
		case !quotedETag.MatchString(etag) || etag == `"upstream-v1"`:
			t.Errorf("first long-poll: got ETag %q, want a quoted ETag of the module's, not the upstream's", etag)
		case !slices.ContainsFunc(strings.Split(vary, ","), func(s string) bool { return strings.EqualFold(strings.TrimSpace(s), "Prefer") }):
			t.Errorf("first long-poll: got Vary %q, want it to include Prefer", vary)
		case w.Header().Get("Preference-Applied") != "":
			t.Errorf("first long-poll (not held): got Preference-Applied %q, want none", w.Header().Get("Preference-Applied"))
		}
		if got := outcome(repl); got != outcomeImmediate {
			t.Errorf("first long-poll: got outcome %q, want %q", got, outcomeImmediate)
		}
		if got, _ := repl.GetString("http.longpoll.wait"); got != "5" {
			t.Errorf("first long-poll: got {http.longpoll.wait} %q, want \"5\"", got)
		}

		// A HEAD with a version the client no longer has: answered at once,
		// without a body, from a watch of its own polled with HEAD (so an
		// ETag of its own).
		req, w, repl = prepare(t, http.MethodHead, target, http.Header{"Prefer": {"wait=5"}, "If-None-Match": {`"old"`}})
		if err := h.ServeHTTP(w, req, up); err != nil {
			t.Fatalf("HEAD long-poll: got error %v, want none", err)
		}
		if w.Code != http.StatusOK || w.Body.Len() != 0 || w.Header().Get("Etag") == "" || w.Header().Get("Etag") == etag {
			t.Errorf("HEAD long-poll: got %d, body %q, ETag %q; want 200, no body, an ETag other than the GET's %q", w.Code, w.Body, w.Header().Get("Etag"), etag)
		}
		if got := outcome(repl); got != outcomeImmediate {
			t.Errorf("HEAD long-poll: got outcome %q, want %q", got, outcomeImmediate)
		}

		// The current version and wait=1: held, then 304.
		req, w, repl = prepare(t, http.MethodGet, target, http.Header{"Prefer": {"wait=1"}, "If-None-Match": {etag}})
		start := time.Now()
		if err := h.ServeHTTP(w, req, up); err != nil {
			t.Fatalf("held long-poll: got error %v, want none", err)
		}
		// The wait is shortened by a jitter of up to a tenth.
		if held := time.Since(start); held < 900*time.Millisecond || held > time.Second {
			t.Errorf("long-poll with wait=1 and the current ETag: held %v, want 0.9s to 1s", held)
		}
		if w.Code != http.StatusNotModified || w.Body.Len() != 0 {
			t.Errorf("long-poll with wait=1 and the current ETag: got %d %q, want 304 and no body", w.Code, w.Body)
		}
		if got := w.Header().Get("Etag"); got != etag {
			t.Errorf("304: got ETag %q, want %q", got, etag)
		}
		if got := w.Header().Get("Preference-Applied"); got != "wait=1" {
			t.Errorf("304: got Preference-Applied %q, want \"wait=1\"", got)
		}
		if got := strings.Join(w.Header().Values("Vary"), ","); got != vary {
			t.Errorf("304: got Vary %q, want the 200's %q", got, vary)
		}
		if got := outcome(repl); got != outcomeTimeout {
			t.Errorf("304: got outcome %q, want %q", got, outcomeTimeout)
		}
		if _, ok := repl.Get("http.longpoll.held"); !ok {
			t.Error("304: got no {http.longpoll.held}, want it set")
		}

		// The current version while the upstream changes: answered with
		// the new representation.
		req, w, repl = prepare(t, http.MethodGet, target, http.Header{"Prefer": {"wait=30"}, "If-None-Match": {etag}})
		done := make(chan error, 1)
		start = time.Now()
		go func() { done <- h.ServeHTTP(w, req, up) }()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("long-poll with the current ETag: answered (%v) before the upstream changed, want it held", err)
		default:
		}
		up.version.Store(2)
		if err := <-done; err != nil {
			t.Fatalf("long-poll released by a change: got error %v, want none", err)
		}
		if held := time.Since(start); held > 7*time.Second {
			t.Errorf("long-poll released by a change: held %v, want about one interval after the change", held)
		}
		if w.Code != http.StatusOK || w.Body.String() != "v2" {
			t.Errorf("long-poll released by a change: got %d %q, want 200 \"v2\"", w.Code, w.Body)
		}
		if got := w.Header().Get("Etag"); got == etag || !quotedETag.MatchString(got) {
			t.Errorf("long-poll released by a change: got ETag %q, want a new quoted ETag (old %q)", got, etag)
		}
		if got := w.Header().Get("Preference-Applied"); got != "wait=30" {
			t.Errorf("long-poll released by a change: got Preference-Applied %q, want \"wait=30\"", got)
		}
		if got := outcome(repl); got != outcomeChanged {
			t.Errorf("long-poll released by a change: got outcome %q, want %q", got, outcomeChanged)
		}
	})
}

// TestServeHTTPQueryParams checks that the module's query parameters are
// removed before anything else sees the request, whether or not it is a
// long-poll, and that every other parameter is kept as written, in order.
func TestServeHTTPQueryParams(t *testing.T) {
	h := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}", QueryParams: &QueryParams{Wait: "wait", ETag: "etag"}}
	provision(t, newTestContext(t), h)
	var seen atomic.Pointer[http.Request]
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		seen.Store(r)
		return nil
	})
	tests := []struct {
		name      string
		target    string
		wantQuery string
		wantURI   string
	}{
		{name: "wait=0 in the middle", target: "/res?a=1&wait=0&b=2", wantQuery: "a=1&b=2", wantURI: "/res?a=1&b=2"},
		{name: "order and escapes kept", target: "/res?z=9&etag=%22x%22&a=1&wait=0&m=%20&b=a%2Bb", wantQuery: "z=9&a=1&m=%20&b=a%2Bb", wantURI: "/res?z=9&a=1&m=%20&b=a%2Bb"},
		{name: "only the module's parameters", target: "/res?etag=x&wait=0", wantQuery: "", wantURI: "/res"},
		{name: "escaped parameter name", target: "/res?w%61it=0&a=1", wantQuery: "a=1", wantURI: "/res?a=1"},
		{name: "invalid wait", target: "/res?a=1&wait=soon", wantQuery: "a=1", wantURI: "/res?a=1"},
		{name: "etag without wait", target: "/res?etag=x&a=1", wantQuery: "a=1", wantURI: "/res?a=1"},
		{name: "repeated", target: "/res?wait=0&a=1&wait=0", wantQuery: "a=1", wantURI: "/res?a=1"},
		{name: "none of the module's", target: "/res?a=1&b=%20&waiting=1", wantQuery: "a=1&b=%20&waiting=1", wantURI: "/res?a=1&b=%20&waiting=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seen.Store(nil)
			req, w, repl := prepare(t, http.MethodGet, tt.target, nil)
			if err := h.ServeHTTP(w, req, next); err != nil {
				t.Fatalf("ServeHTTP(GET %s): got error %v, want none", tt.target, err)
			}
			got := seen.Load()
			if got == nil {
				t.Fatalf("ServeHTTP(GET %s): next not called, want the request passed through", tt.target)
			}
			if got.URL.RawQuery != tt.wantQuery || got.RequestURI != tt.wantURI {
				t.Errorf("ServeHTTP(GET %s): next got query %q, URI %q; want %q, %q", tt.target, got.URL.RawQuery, got.RequestURI, tt.wantQuery, tt.wantURI)
			}
			if o := outcome(repl); o != "" {
				t.Errorf("ServeHTTP(GET %s): got outcome %q, want none (not a long-poll)", tt.target, o)
			}
		})
	}
}

// TestServeHTTPQueryParamsLongPoll checks the query form of the protocol:
// the wait and an unquoted ETag as parameters, which the upstream never
// sees.
func TestServeHTTPQueryParamsLongPoll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := new(versioned)
		h := &Handler{QueryParams: &QueryParams{Wait: "wait", ETag: "etag"}}
		provision(t, newTestContext(t), h)

		req, w, repl := prepare(t, http.MethodGet, "http://example.com/res?a=1&wait=5", nil)
		if err := h.ServeHTTP(w, req, up); err != nil {
			t.Fatalf("long-poll by query: got error %v, want none", err)
		}
		etag := w.Header().Get("Etag")
		if w.Code != http.StatusOK || !quotedETag.MatchString(etag) || outcome(repl) != outcomeImmediate {
			t.Errorf("long-poll by query: got %d, ETag %q, outcome %q; want 200, a quoted ETag, %q", w.Code, etag, outcome(repl), outcomeImmediate)
		}
		if got, _ := up.query.Load().(string); got != "a=1" {
			t.Errorf("long-poll by query: the upstream got query %q, want \"a=1\"", got)
		}

		target := "http://example.com/res?wait=1&a=1&etag=" + strings.Trim(etag, `"`)
		req, w, repl = prepare(t, http.MethodGet, target, nil)
		if err := h.ServeHTTP(w, req, up); err != nil {
			t.Fatalf("long-poll by query with the current ETag: got error %v, want none", err)
		}
		if w.Code != http.StatusNotModified || outcome(repl) != outcomeTimeout {
			t.Errorf("GET %s: got %d, outcome %q; want 304, %q", target, w.Code, outcome(repl), outcomeTimeout)
		}
	})
}

// TestStripQueryParamsUntouched checks that a query without the module's
// parameters is left byte for byte as it came: re-encoding it could change
// what the upstream, the key or a signature check sees.
func TestStripQueryParamsUntouched(t *testing.T) {
	qp := &QueryParams{Wait: "wait", ETag: "etag"}
	for _, query := range []string{
		"a=1&b=%20",
		"a=1&&b=2&",
		"a=%zz&b=+",
		"x=1;y=2",
		"wait2=1&a=wait&etag_=x",
		"WAIT=1",
		"%ZZ=wait",
	} {
		t.Run(query, func(t *testing.T) {
			uri := "/p?" + query
			r := httptest.NewRequest(http.MethodGet, uri, nil)
			wait, hasWait, etag := stripQueryParams(r, qp)
			if r.URL.RawQuery != query || r.RequestURI != uri {
				t.Errorf("stripQueryParams(%q): got query %q, URI %q; want them untouched", query, r.URL.RawQuery, r.RequestURI)
			}
			if wait != "" || hasWait || etag != "" {
				t.Errorf("stripQueryParams(%q): got (%q, %t, %q), want (\"\", false, \"\")", query, wait, hasWait, etag)
			}
		})
	}
}

// TestStripQueryParams checks the values read from the module's parameters:
// the first of each wins, and the rest of the query is kept as written.
func TestStripQueryParams(t *testing.T) {
	qp := &QueryParams{Wait: "wait", ETag: "etag"}
	tests := []struct {
		query               string
		wantWait            string
		wantHasWait         bool
		wantETag, wantQuery string
	}{
		{query: "wait=5&etag=%22v1%22", wantWait: "5", wantHasWait: true, wantETag: `"v1"`},
		{query: "a=1&wait=5&b=%20", wantWait: "5", wantHasWait: true, wantQuery: "a=1&b=%20"},
		{query: "wait=5&wait=7&etag=x&etag=y", wantWait: "5", wantHasWait: true, wantETag: "x"},
		{query: "wait=&a=1", wantHasWait: true, wantQuery: "a=1"},
		{query: "wait", wantHasWait: true},
		{query: "etag=a+b", wantETag: "a b"},
		{query: "wait=%zz&a=1", wantQuery: "a=1"},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/p?"+tt.query, nil)
			wait, hasWait, etag := stripQueryParams(r, qp)
			if wait != tt.wantWait || hasWait != tt.wantHasWait || etag != tt.wantETag {
				t.Errorf("stripQueryParams(%q): got (%q, %t, %q), want (%q, %t, %q)",
					tt.query, wait, hasWait, etag, tt.wantWait, tt.wantHasWait, tt.wantETag)
			}
			wantURI := "/p"
			if tt.wantQuery != "" {
				wantURI += "?" + tt.wantQuery
			}
			if r.URL.RawQuery != tt.wantQuery || r.RequestURI != wantURI {
				t.Errorf("stripQueryParams(%q): got query %q, URI %q; want %q, %q", tt.query, r.URL.RawQuery, r.RequestURI, tt.wantQuery, wantURI)
			}
		})
	}
}

// TestRequestKey checks which requests share a watch. The default key must
// keep users apart (Authorization, Cookie) and GET apart from HEAD (polled
// with its own method), with a custom key too;
// a custom key is exactly what its template says.
func TestRequestKey(t *testing.T) {
	type req struct {
		method, target string
		header         http.Header
	}
	get := func(target string, kv ...string) req {
		h := http.Header{}
		for i := 0; i+1 < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		return req{http.MethodGet, target, h}
	}
	qp := &QueryParams{Wait: "wait", ETag: "etag"}
	tests := []struct {
		name     string
		h        Handler
		a, b     req
		wantSame bool
		bug      string
	}{
		{name: "same request", a: get("http://x/r?a=1"), b: get("http://x/r?a=1"), wantSame: true},
		{name: "GET and HEAD", a: get("http://x/r?a=1"), b: req{http.MethodHead, "http://x/r?a=1", nil}},
		{name: "GET and HEAD, custom key", h: Handler{Key: "{http.request.uri}"}, a: get("http://x/r?a=1"), b: req{http.MethodHead, "http://x/r?a=1", nil}},
		{name: "different Authorization", a: get("http://x/r", "Authorization", "Bearer a"), b: get("http://x/r", "Authorization", "Bearer b")},
		{name: "Authorization or none", a: get("http://x/r", "Authorization", "Bearer a"), b: get("http://x/r")},
		{name: "different Cookie", a: get("http://x/r", "Cookie", "s=a"), b: get("http://x/r", "Cookie", "s=b")},
		{name: "Cookie or none", a: get("http://x/r", "Cookie", "s=a"), b: get("http://x/r")},
		{name: "Authorization moved to Cookie", a: get("http://x/r", "Authorization", "t"), b: get("http://x/r", "Cookie", "t")},
		{name: "different host", a: get("http://x/r"), b: get("http://y/r")},
		{name: "different path", a: get("http://x/r"), b: get("http://x/s")},
		{name: "different query", a: get("http://x/r?a=1"), b: get("http://x/r?a=2")},
		{name: "other headers do not count", a: get("http://x/r", "Accept", "text/html"), b: get("http://x/r", "Accept", "application/json"), wantSame: true},
		{
			name: "module's query parameters left out", h: Handler{QueryParams: qp},
			a: get("http://x/r?a=1&wait=0&etag=x"), b: get("http://x/r?a=1"), wantSame: true,
		},
		{
			name: "custom key {path} ignores the query", h: Handler{Key: "{http.request.uri.path}"},
			a: get("http://x/r?a=1", "Authorization", "a"), b: get("http://y/r?a=2", "Authorization", "b"), wantSame: true,
		},
		{name: "custom key {path} tells paths apart", h: Handler{Key: "{http.request.uri.path}"}, a: get("http://x/r"), b: get("http://x/s")},
		{
			name: "custom key of several tokens", h: Handler{Key: "{http.request.uri.path} {http.request.header.X-Tenant}"},
			a: get("http://x/r", "X-Tenant", "a"), b: get("http://x/r", "X-Tenant", "b"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.bug != "" {
				t.Skip("BUG: " + tt.bug)
			}
			h := tt.h
			key := func(r req) longpoll.Key {
				t.Helper()
				hr, _, repl := prepare(t, r.method, r.target, r.header)
				if _, ok := h.parseLongPoll(hr); ok {
					t.Fatalf("%s %s: a long-poll, want a plain request for this test", r.method, r.target)
				}
				return h.requestKey(hr, repl)
			}
			ka, kb := key(tt.a), key(tt.b)
			if same := ka == kb; same != tt.wantSame {
				t.Errorf("key %q of %s %s %v and %s %s %v: got same %t, want %t",
					h.Key, tt.a.method, tt.a.target, tt.a.header, tt.b.method, tt.b.target, tt.b.header, same, tt.wantSame)
			}
		})
	}
}

// TestClientAddress checks what the per-client caps count a client by: an
// IPv4 address, or an IPv6 /64, which one host can hold whole and would
// otherwise take a new address for every request.
func TestClientAddress(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "::ffff:192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"2001:db8:1:3::1":      "2001:db8:1:3::/64",
		"fe80::1%eth0":         "fe80::/64",
		"":                     "",
		"not an address":       "not an address",
	} {
		if got := clientAddress(in); got != want {
			t.Errorf("clientAddress(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestServeHTTPWebSocketOverHTTP2 checks that a WebSocket over HTTP/2 (an
// extended CONNECT, :protocol websocket) or HTTP/3 (quic-go puts the
// protocol in Proto) is refused with 501 and a message that says what to
// do, while another CONNECT, or any CONNECT with websocket off, goes on.
func TestServeHTTPWebSocketOverHTTP2(t *testing.T) {
	on := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}", WebSocket: true}
	provision(t, newTestContext(t), on)
	off := &Handler{Key: "test:" + t.Name() + ":off:{http.request.uri}"}
	provision(t, newTestContext(t), off)
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	tests := []struct {
		name       string
		h          *Handler
		proto      string
		header     http.Header
		wantStatus int // of the handler error; 0: next answered
	}{
		{name: "HTTP/2 extended CONNECT", h: on, proto: "HTTP/2.0", header: http.Header{":protocol": {"websocket"}}, wantStatus: http.StatusNotImplemented},
		{name: "HTTP/3 extended CONNECT", h: on, proto: "websocket", wantStatus: http.StatusNotImplemented},
		{name: "a CONNECT tunnel", h: on, proto: "HTTP/2.0"},
		{name: "another protocol", h: on, proto: "HTTP/2.0", header: http.Header{":protocol": {"webtransport"}}},
		{name: "websocket off", h: off, proto: "HTTP/2.0", header: http.Header{":protocol": {"websocket"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, w, _ := prepare(t, http.MethodConnect, "/res", tt.header)
			req.Proto = tt.proto
			err := tt.h.ServeHTTP(w, req, next)
			var he caddyhttp.HandlerError
			switch {
			case tt.wantStatus == 0 && (err != nil || w.Code != http.StatusTeapot):
				t.Errorf("got error %v, status %d; want next's 418", err, w.Code)
			case tt.wantStatus != 0 && (!errors.As(err, &he) || he.StatusCode != tt.wantStatus):
				t.Errorf("got error %v, want a handler error %d", err, tt.wantStatus)
			case tt.wantStatus != 0 && !strings.Contains(err.Error(), "connect over HTTP/1.1"):
				t.Errorf("got error %q, want it to say to connect over HTTP/1.1", err)
			}
		})
	}
}
