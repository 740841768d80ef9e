// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestIntegrationHandlerErrorStatus long-polls resources that file_server
// and the error directive answer with a client error. Those handlers return
// the status as an error instead of writing it; the module must still take
// it as a representation (an ETag, held, released when the resource
// appears), not as an upstream failure counted, logged and answered 502.
// reverse_proxy's 404 is covered by TestIntegrationProtocol.
func TestIntegrationHandlerErrorStatus(t *testing.T) {
	tc := itStart(t)
	dir := t.TempDir()
	site := fmt.Sprintf(`	root * %s
	longpoll {
		interval 100ms
		max_wait 3s
	}
	error /forbidden 403
	file_server
`, dir)
	itLoad(t, tc, itConfig("", site))
	c, _ := itClient(t)

	t.Run("file_server 404: held until the file appears", func(t *testing.T) {
		before := readMetrics(t)
		r := itMustSend(t, c, "GET", "/later.txt", "Prefer", "wait=3")
		etag := r.Header.Get("Etag")
		if r.Status != http.StatusNotFound || etag == "" {
			t.Fatalf("got %d with ETag %q, want 404 with an ETag", r.Status, etag)
		}
		if !itHasToken(r.Header, "Vary", "Prefer") {
			t.Errorf("Vary: got %q, want it to hold Prefer", r.Header.Values("Vary"))
		}
		held := itSendAsync(t, t.Context(), c, "GET", "/later.txt", "Prefer", "wait=3", "If-None-Match", etag)
		itWaitHeld(t, 1)
		if err := os.WriteFile(filepath.Join(dir, "later.txt"), []byte("here now\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r = itReceive(t, held, 5*time.Second)
		if r.Status != http.StatusOK || r.Body != "here now\n" {
			t.Errorf("held request: got %d %q, want 200 %q", r.Status, r.Body, "here now\n")
		}
		if got := r.Header.Get("Etag"); got == etag || got == "" {
			t.Errorf("ETag: got %q, want a new one (the 404's was %q)", got, etag)
		}
		d := readMetrics(t).delta(before)
		if d["polls/error"] != 0 || d["answers/error"] != 0 {
			t.Errorf("metrics: got %v failed polls and %v error answers, want none", d["polls/error"], d["answers/error"])
		}
		if d["answers/immediate"] != 1 || d["answers/changed"] != 1 {
			t.Errorf("answers: got %v immediate and %v changed, want 1 and 1", d["answers/immediate"], d["answers/changed"])
		}
	})

	t.Run("file_server 404: 304 when the wait ends", func(t *testing.T) {
		r := itMustSend(t, c, "GET", "/never.txt", "Prefer", "wait=1")
		etag := r.Header.Get("Etag")
		if r.Status != http.StatusNotFound || etag == "" {
			t.Fatalf("got %d with ETag %q, want 404 with an ETag", r.Status, etag)
		}
		// unquoted, as hand-written clients send it: still a match
		r = itMustSend(t, c, "GET", "/never.txt", "Prefer", "wait=1", "If-None-Match", etag[1:len(etag)-1])
		if r.Status != http.StatusNotModified || r.Header.Get("Etag") != etag || r.Elapsed < 750*time.Millisecond {
			t.Errorf("got %d ETag %q after %v, want 304 %s after about 1s", r.Status, r.Header.Get("Etag"), r.Elapsed, etag)
		}
	})

	t.Run("error directive 403: a representation too", func(t *testing.T) {
		r := itMustSend(t, c, "GET", "/forbidden", "Prefer", "wait=1")
		etag := r.Header.Get("Etag")
		if r.Status != http.StatusForbidden || etag == "" {
			t.Fatalf("got %d with ETag %q, want 403 with an ETag", r.Status, etag)
		}
		r = itMustSend(t, c, "GET", "/forbidden", "Prefer", "wait=1", "If-None-Match", etag)
		if r.Status != http.StatusNotModified {
			t.Errorf("held: got %d, want 304", r.Status)
		}
	})

	// handle_errors renders long-polled errors as it renders the others.
	t.Run("handle_errors renders the status", func(t *testing.T) {
		itLoad(t, tc, itConfig("", site+"\thandle_errors {\n\t\trespond \"custom {err.status_code}\"\n\t}\n"))
		r := itMustSend(t, c, "GET", "/gone.txt", "Prefer", "wait=1")
		if r.Status != http.StatusNotFound || r.Body != "custom 404" || r.Header.Get("Etag") == "" {
			t.Errorf("got %d %q ETag %q, want 404 %q with an ETag", r.Status, r.Body, r.Header.Get("Etag"), "custom 404")
		}
		plain := itMustSend(t, c, "GET", "/gone.txt")
		if plain.Status != http.StatusNotFound || plain.Body != "custom 404" {
			t.Errorf("without Prefer: got %d %q, want 404 %q", plain.Status, plain.Body, "custom 404")
		}
	})

	// reverse_proxy answers its own timeout with a 504 error: to a held
	// client, a failing upstream is a 502, as documented, whatever the
	// failure's status.
	t.Run("reverse_proxy's timeout is answered 502", func(t *testing.T) {
		hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
		defer hang.Close()
		itLoad(t, tc, itConfig("", fmt.Sprintf("\tlongpoll {\n\t\tinterval 100ms\n\t}\n\treverse_proxy %s {\n\t\ttransport http {\n\t\t\tresponse_header_timeout 200ms\n\t\t}\n\t}\n", hang.Listener.Addr())))
		r := itMustSend(t, c, "GET", "/slow", "Prefer", "wait=1", "If-None-Match", `"a-version"`)
		if r.Status != http.StatusBadGateway || r.Header.Get("Retry-After") == "" {
			t.Errorf("got %d with Retry-After %q, want 502 with Retry-After", r.Status, r.Header.Get("Retry-After"))
		}
	})

	// A 429 or 408 says "later", not "there is no such resource".
	t.Run("error 429 is a failure", func(t *testing.T) {
		itLoad(t, tc, itConfig("", fmt.Sprintf("\tlongpoll {\n\t\tinterval 100ms\n\t}\n\terror /busy 429\n\troot * %s\n\tfile_server\n", dir)))
		r := itMustSend(t, c, "GET", "/busy", "Prefer", "wait=1")
		if r.Status != http.StatusBadGateway || r.Header.Get("Etag") != "" {
			t.Errorf("got %d with ETag %q, want 502 without an ETag", r.Status, r.Header.Get("Etag"))
		}
	})
}
