// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestIntegrationServersKeptApart runs two servers whose longpoll blocks are
// identical, with a key that does not name the host, in front of different
// responses. Each server's clients must only ever see their own server's
// data: identical settings must not make two servers share an engine, its
// watches or its poll path.
func TestIntegrationServersKeptApart(t *testing.T) {
	tc := itStart(t)
	port, other := itPort(), freeTCPPort(t)
	site := func(p int, body string) string {
		return fmt.Sprintf("http://localhost:%d {\n\tlongpoll {\n\t\tinterval 100ms\n\t\tkey {uri}\n\t}\n\trespond %q\n}\n", p, body)
	}
	cfg := fmt.Sprintf("{\n\tadmin localhost:2999\n\tskip_install_trust\n\thttp_port %d\n}\n\n", port) +
		site(port, "site A") + "\n" + site(other, "site B")
	itLoad(t, tc, cfg)
	c, _ := itClient(t)

	a := itMustSend(t, c, "GET", "/status", "Prefer", "wait=1")
	if a.Status != http.StatusOK || a.Body != "site A" {
		t.Fatalf("site A: got %d %q, want 200 %q", a.Status, a.Body, "site A")
	}
	held := itSendAsync(t, t.Context(), c, "GET", "/status", "Prefer", "wait=2", "If-None-Match", a.Header.Get("Etag"))
	itWaitHeld(t, 1)

	// site B, same path, same key template, while A's client is held
	reqB, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, fmt.Sprintf("http://localhost:%d/status", other), nil)
	reqB.Header.Set("Prefer", "wait=1")
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(other)))
	}}
	defer tr.CloseIdleConnections()
	respB, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Do(reqB)
	if err != nil {
		t.Fatal(err)
	}
	bodyB, _ := io.ReadAll(respB.Body)
	respB.Body.Close()
	if respB.StatusCode != http.StatusOK || string(bodyB) != "site B" {
		t.Errorf("site B: got %d %q, want 200 %q", respB.StatusCode, bodyB, "site B")
	}

	r := itReceive(t, held, 5*time.Second)
	if r.Status != http.StatusNotModified {
		t.Errorf("held client of site A: got %d %q, want 304 (site A did not change)", r.Status, r.Body)
	}
	if again := itMustSend(t, c, "GET", "/status", "Prefer", "wait=1"); again.Body != "site A" {
		t.Errorf("site A after site B was polled: got %q, want %q", again.Body, "site A")
	}
}

// TestIntegrationQueryETagThroughEncode long-polls with query parameters
// behind `encode`, which appends "-gzip" to the ETags it sends and removes
// it only from the If-None-Match header: the ETag a client copies into the
// query must still match, or every query-parameter client would spin.
func TestIntegrationQueryETagThroughEncode(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	up.set("/zipped", http.StatusOK, strings.Repeat("compressible ", 100))
	itLoad(t, tc, itConfig("", "\tencode gzip\n"+itSite("interval 100ms\nmax_wait 5s\nquery_params wait etag", up)))
	c, _ := itClient(t)

	first := itMustSend(t, c, "GET", "/zipped", "Prefer", "wait=1", "Accept-Encoding", "gzip")
	etag := first.Header.Get("Etag")
	if !strings.HasSuffix(etag, `-gzip"`) {
		t.Fatalf("ETag through encode: got %q, want one ending in -gzip", etag)
	}
	unquoted := strings.Trim(etag, `"`)
	r := itMustSend(t, c, "GET", "/zipped?wait=2&etag="+unquoted, "Accept-Encoding", "gzip")
	if r.Status != http.StatusNotModified || r.Elapsed < 1500*time.Millisecond {
		t.Errorf("query long-poll with the encoded ETag %s: got %d after %v, want 304 after about 2s", unquoted, r.Status, r.Elapsed)
	}
}

// TestIntegrationPreferenceAppliedNotShared puts a deferred header rewrite
// of Preference-Applied in front of longpoll: it edits the value in place,
// which must not change what the next client is told.
func TestIntegrationPreferenceAppliedNotShared(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	up.set("/pa", http.StatusOK, "same")
	itLoad(t, tc, itConfig("", "\theader >Preference-Applied wait= wait:\n"+itSite("interval 100ms\nmax_wait 5s", up)))
	c, _ := itClient(t)

	etag := itMustSend(t, c, "GET", "/pa", "Prefer", "wait=1").Header.Get("Etag")
	for i := range 3 {
		r := itMustSend(t, c, "GET", "/pa", "Prefer", "wait=1", "If-None-Match", etag)
		if got := r.Header.Get("Preference-Applied"); r.Status != http.StatusNotModified || got != "wait:1" {
			t.Errorf("answer %d: got %d with Preference-Applied %q, want 304 with %q", i, r.Status, got, "wait:1")
		}
	}
}
