// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// This file holds the helpers of the in-process integration tests: one
// Caddy run by caddytest, configs loaded through its admin endpoint on
// :2999. The tests never run in parallel: they share one Caddy, one admin
// port and one HTTP port. A second test process of this package run at the
// same time shares them too, and disturbs both.

// itPort is the HTTP port of the in-process Caddy, picked once per run of
// the test binary; every integration test loads its config on it.
var itPort = sync.OnceValue(func() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 9080
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
})

// itStart skips the test under -short and returns a caddytest tester. It
// first waits for requests held by an earlier test to be gone, so that
// counts of held requests start from zero.
func itStart(t *testing.T) *caddytest.Tester {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: runs Caddy in-process")
	}
	itWaitFor(t, "requests of earlier tests to leave", 10*time.Second, func() bool { return itHeld() == 0 })
	return caddytest.NewTester(t)
}

// itConfig is a Caddyfile serving site on the test port, with extra global
// options.
func itConfig(globals, site string) string {
	port := itPort()
	return fmt.Sprintf(`{
	admin localhost:2999
	skip_install_trust
	http_port %d
%s}

http://localhost:%d {
%s}
`, port, globals, port, site)
}

// itSite is a site body with a longpoll handler (settings are its
// subdirectives, one a line) in front of reverse_proxy to up.
func itSite(settings string, up *itUpstream) string {
	return fmt.Sprintf("\tlongpoll {\n%s\n\t}\n\treverse_proxy %s\n", settings, up.addr())
}

// itLoad loads a Caddyfile config, stopping the test if it does not load.
func itLoad(t *testing.T, tc *caddytest.Tester, cfg string) {
	t.Helper()
	tc.InitServer(cfg, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
}

// itHeld is the number of long-poll requests admitted and not yet answered,
// over every longpoll engine of the process.
func itHeld() int {
	n := 0
	for _, hb := range runningHubs() {
		n += hb.limiter.Held()
	}
	return n
}

// itWaitHeld waits until at least n long-poll requests are held, then lets
// them settle into their wait.
func itWaitHeld(t *testing.T, n int) {
	t.Helper()
	itWaitFor(t, fmt.Sprintf("%d held requests", n), 30*time.Second, func() bool { return itHeld() >= n })
	time.Sleep(200 * time.Millisecond)
}

// itWaitFor polls cond until it holds, failing the test after within.
func itWaitFor(t *testing.T, what string, within time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// itClient returns a client that dials the test Caddy over IPv4 (so that
// every request has the same client address), keeps many connections open,
// and asks for no compression.
func itClient(t *testing.T) (*http.Client, *http.Transport) {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(itPort())))
		},
		MaxIdleConnsPerHost: 2000,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}, tr
}

// itReply is a response as the client read it.
type itReply struct {
	Status  int
	Header  http.Header
	Body    string
	Elapsed time.Duration // from sending to the end of the body
	At      time.Time     // when the body ended
	Err     error         // a transport error: no response
}

// itSend sends a request to the test Caddy; hdr holds header name, value
// pairs. It reports transport errors in Err.
func itSend(ctx context.Context, c *http.Client, method, path string, hdr ...string) itReply {
	req, err := http.NewRequestWithContext(ctx, method, fmt.Sprintf("http://localhost:%d%s", itPort(), path), nil)
	if err != nil {
		return itReply{Err: err}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return itReply{Err: err, Elapsed: time.Since(start), At: time.Now()}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return itReply{
		Status: resp.StatusCode, Header: resp.Header, Body: string(body), Err: err,
		Elapsed: time.Since(start), At: time.Now(),
	}
}

// itMustSend is itSend that stops the test on a transport error.
func itMustSend(t *testing.T, c *http.Client, method, path string, hdr ...string) itReply {
	t.Helper()
	r := itSend(t.Context(), c, method, path, hdr...)
	if r.Err != nil {
		t.Fatalf("%s %s %q: %v", method, path, hdr, r.Err)
	}
	return r
}

// itSendAsync sends a request in the background. The request ends at the
// latest when ctx or the test ends; the test's cleanup waits for it.
func itSendAsync(t *testing.T, ctx context.Context, c *http.Client, method, path string, hdr ...string) <-chan itReply {
	ch := make(chan itReply, 1)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ch <- itSend(ctx, c, method, path, hdr...)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return ch
}

// itReceive waits for a background request's reply.
func itReceive(t *testing.T, ch <-chan itReply, within time.Duration) itReply {
	t.Helper()
	select {
	case r := <-ch:
		if r.Err != nil {
			t.Fatalf("held request failed: %v", r.Err)
		}
		return r
	case <-time.After(within):
		t.Fatalf("no reply within %v", within)
		return itReply{}
	}
}

// itHasToken reports whether a comma-separated header field holds token.
func itHasToken(h http.Header, name, token string) bool {
	for _, line := range h.Values(name) {
		for v := range strings.SplitSeq(line, ",") {
			if strings.EqualFold(strings.TrimSpace(v), token) {
				return true
			}
		}
	}
	return false
}

// itUpstream is the API behind reverse_proxy: a resource per path, each
// with a status, body, headers and a version, and an ETag of its own
// ("up-<version>") that it honours in If-None-Match. It counts and records
// every request it gets.
type itUpstream struct {
	srv   *httptest.Server
	total atomic.Int64

	mu   sync.Mutex
	res  map[string]*itResource
	hits map[string]*atomic.Int64
	seen []itSeen
}

type itResource struct {
	status  int
	body    string
	header  http.Header
	version int
	serve   http.HandlerFunc // when set, answers instead of the above
}

// itSeen is a request as the upstream received it.
type itSeen struct {
	Method, Path, RawQuery string
	Header                 http.Header
}

func newItUpstream(t *testing.T) *itUpstream {
	u := &itUpstream{res: make(map[string]*itResource), hits: make(map[string]*atomic.Int64)}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *itUpstream) addr() string { return u.srv.Listener.Addr().String() }

// resource returns the resource at path, created as a 200 "initial <path>".
// It must be called with u.mu held.
func (u *itUpstream) resource(path string) *itResource {
	r := u.res[path]
	if r == nil {
		r = &itResource{status: http.StatusOK, body: "initial " + path, header: http.Header{}, version: 1}
		u.res[path] = r
		u.hits[path] = new(atomic.Int64)
	}
	return r
}

// set changes the resource at path: a new version with status, body and
// headers (name, value pairs).
func (u *itUpstream) set(path string, status int, body string, hdr ...string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	r := u.resource(path)
	r.status, r.body, r.header = status, body, http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.header.Add(hdr[i], hdr[i+1])
	}
	r.version++
}

// setServe makes fn answer the requests for path.
func (u *itUpstream) setServe(path string, fn http.HandlerFunc) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.resource(path).serve = fn
}

// hitsFor is the number of requests the upstream got for path.
func (u *itUpstream) hitsFor(path string) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.resource(path)
	return u.hits[path].Load()
}

// seenWith returns the requests received with header name set to value.
func (u *itUpstream) seenWith(name, value string) []itSeen {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []itSeen
	for _, s := range u.seen {
		if slices.Contains(s.Header.Values(name), value) {
			out = append(out, s)
		}
	}
	return out
}

// seenFor returns the requests received for path.
func (u *itUpstream) seenFor(path string) []itSeen {
	u.mu.Lock()
	defer u.mu.Unlock()
	var out []itSeen
	for _, s := range u.seen {
		if s.Path == path {
			out = append(out, s)
		}
	}
	return out
}

// itUpstreamETag is the upstream's own ETag for a version.
func itUpstreamETag(version int) string { return fmt.Sprintf(`"up-%d"`, version) }

func (u *itUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.total.Add(1)
	u.mu.Lock()
	res := u.resource(r.URL.Path)
	u.hits[r.URL.Path].Add(1)
	u.seen = append(u.seen, itSeen{Method: r.Method, Path: r.URL.Path, RawQuery: r.URL.RawQuery, Header: r.Header.Clone()})
	status, body, version, serve := res.status, res.body, res.version, res.serve
	hdr := res.header.Clone()
	u.mu.Unlock()

	if serve != nil {
		serve(w, r)
		return
	}
	for k, v := range hdr {
		w.Header()[k] = v
	}
	if status < 500 {
		etag := itUpstreamETag(version)
		w.Header().Set("Etag", etag)
		if status == http.StatusOK && r.Header.Get("If-None-Match") == etag {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = io.WriteString(w, body)
	}
}

// itLogFile returns the global option that sends the in-process Caddy's
// logs to a file of the test's, in JSON, and a function that empties it
// (before a step) and one that reads the entries whose message starts with
// prefix, each as its fields ("level" and "msg" among them).
func itLogFile(t *testing.T) (globals string, reset func(), entries func(prefix string) []map[string]any) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "caddy.log")
	globals = fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t\tlevel DEBUG\n\t}\n", file)
	reset = func() {
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	entries = func(prefix string) []map[string]any {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		var out []map[string]any
		for line := range strings.Lines(string(data)) {
			var e map[string]any
			if json.Unmarshal([]byte(line), &e) != nil {
				continue
			}
			if msg, _ := e["msg"].(string); strings.HasPrefix(msg, prefix) {
				out = append(out, e)
			}
		}
		return out
	}
	reset()
	return globals, reset, entries
}
