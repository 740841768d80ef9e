// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"net/http"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// TestIntegrationRouteContinuation checks the chain a config's route builds
// for polls against Caddy's own: for each site, a long-poll's answer (made
// by a poll through the built chain) must equal what the same request gets
// without Prefer (passed by the handler to Caddy's next): the handlers
// after longpoll, later routes, subroutes and terminal routes alike.
func TestIntegrationRouteContinuation(t *testing.T) {
	tc := itStart(t)
	c, _ := itClient(t)
	for _, tt := range []struct{ name, site, path string }{
		{"handlers after it", "\tlongpoll\n\theader X-After yes\n\trespond \"the body\"\n", "/x"},
		{"a later route", "\troute {\n\t\tlongpoll\n\t\trespond /a \"route a\"\n\t}\n\trespond \"outer\"\n", "/b"},
		{"in a handle block", "\thandle /api/* {\n\t\tlongpoll\n\t\theader X-In api\n\t\trespond \"api {path}\"\n\t}\n\trespond \"other\"\n", "/api/orders"},
		{"nested blocks", "\troute {\n\t\thandle /n/* {\n\t\t\tlongpoll\n\t\t\troute {\n\t\t\t\theader X-Deep 1\n\t\t\t}\n\t\t}\n\t\trespond \"after the handle\"\n\t}\n", "/n/1"},
		{"a status and headers", "\tlongpoll\n\theader Cache-Control max-age=5\n\trespond \"gone\" 410\n", "/g"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			itLoad(t, tc, itConfig("", tt.site))
			plain := itMustSend(t, c, "GET", tt.path)
			lp := itMustSend(t, c, "GET", tt.path, "Prefer", "wait=1")
			if lp.Header.Get("Etag") == "" {
				t.Fatalf("long-poll: got %d %q without an ETag, want an answer from a poll", lp.Status, lp.Body)
			}
			if lp.Status != plain.Status || lp.Body != plain.Body {
				t.Errorf("long-poll (a poll through the built chain): got %d %q, want Caddy's %d %q", lp.Status, lp.Body, plain.Status, plain.Body)
			}
			for _, name := range []string{"X-After", "X-In", "Cache-Control"} {
				if lp.Header.Get(name) != plain.Header.Get(name) {
					t.Errorf("%s: got %q, want Caddy's %q", name, lp.Header.Get(name), plain.Header.Get(name))
				}
			}
		})
	}
}

// A route whose handler is not found in its server's routes (reached in a
// way the builder does not know) is not ready until a request has given it
// Caddy's next; then polls go through that.
func TestRouteFallsBackToCapturedNext(t *testing.T) {
	rt := &route{h: &Handler{}, server: &caddyhttp.Server{}}
	if _, err := rt.handler(); err != longpoll.ErrRouteNotReady {
		t.Fatalf("before any request: got %v, want ErrRouteNotReady", err)
	}
	called := false
	rt.capture(caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { called = true; return nil }))
	next, err := rt.handler()
	if err != nil {
		t.Fatal(err)
	}
	_ = next.ServeHTTP(nil, nil)
	if !called {
		t.Error("after a request: the route's chain is not the captured next")
	}
}
