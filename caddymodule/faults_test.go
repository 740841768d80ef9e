// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/fcgi"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// This file attacks a real Caddy process from outside, as an untrusted
// client would and through upstreams that misbehave, and holds the module
// to the bounds the README's "Limits and defences" gives: memory, requests
// sent to the upstream, and time.

// faultUpstream is an upstream that misbehaves on purpose, by path:
//
//	/hang...      never answers
//	/stall...     sends its headers, then nothing
//	/slow...      sends its body a byte every 200ms
//	/reset...     resets the connection
//	/truncated... declares 100 bytes, sends 10, closes
//	/cookie-stall "ok"; once cookies is set, a cookie, then stalls
//	/retry...     503 with Retry-After: 300 while down is set, then "back"
//	/big...       a 512 KiB body
//	/user...      "data of <Authorization>"
//	/prefer...    "minimal" or "full" by Prefer: return=..., with Vary: Prefer
//
// and "ok" otherwise. It counts requests by path (without the query) and
// records the Prefer headers and methods it gets.
type faultUpstream struct {
	srv        *httptest.Server
	down       atomic.Bool
	cookies    atomic.Bool // /cookie-stall: answer with a cookie, then stall
	cookieSent atomic.Bool

	mu      sync.Mutex
	hits    map[string]int
	prefers []string
	methods map[string][]string
}

func newFaultUpstream(t *testing.T) *faultUpstream {
	u := &faultUpstream{hits: make(map[string]int), methods: make(map[string][]string)}
	u.srv = httptest.NewServer(u)
	t.Cleanup(u.srv.Close)
	return u
}

func (u *faultUpstream) addr() string { return u.srv.Listener.Addr().String() }

func (u *faultUpstream) count(path string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits[path]
}

func (u *faultUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	u.mu.Lock()
	u.hits[p]++
	u.methods[p] = append(u.methods[p], r.Method)
	if v := r.Header.Values("Prefer"); len(v) > 0 {
		u.prefers = append(u.prefers, strings.Join(v, ", "))
	}
	u.mu.Unlock()
	rc := http.NewResponseController(w)
	switch {
	case strings.HasPrefix(p, "/hang"):
		<-r.Context().Done()
	case strings.HasPrefix(p, "/stall"):
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		<-r.Context().Done()
	case strings.HasPrefix(p, "/slow"):
		w.Header().Set("Content-Length", "100")
		for range 100 {
			if _, err := w.Write([]byte("x")); err != nil {
				return
			}
			_ = rc.Flush()
			select {
			case <-r.Context().Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	case strings.HasPrefix(p, "/reset"):
		conn, _, err := rc.Hijack()
		if err == nil {
			_ = conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
	case strings.HasPrefix(p, "/truncated"):
		w.Header().Set("Content-Length", "100")
		_, _ = w.Write([]byte("0123456789"))
		_ = rc.Flush()
		panic(http.ErrAbortHandler)
	case strings.HasPrefix(p, "/cookie-stall") && u.cookies.Load() && u.cookieSent.CompareAndSwap(false, true):
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "s"})
		_, _ = io.WriteString(w, "mine")
	case strings.HasPrefix(p, "/cookie-stall") && u.cookies.Load():
		w.WriteHeader(http.StatusOK)
		_ = rc.Flush()
		<-r.Context().Done()
	case strings.HasPrefix(p, "/retry") && u.down.Load():
		w.Header().Set("Retry-After", "300")
		w.WriteHeader(http.StatusServiceUnavailable)
	case strings.HasPrefix(p, "/retry"):
		_, _ = io.WriteString(w, "back")
	case strings.HasPrefix(p, "/big"):
		_, _ = w.Write(bigBody)
	case strings.HasPrefix(p, "/user"):
		_, _ = io.WriteString(w, "data of "+r.Header.Get("Authorization"))
	case strings.HasPrefix(p, "/prefer"):
		w.Header().Set("Vary", "Prefer")
		if strings.Contains(r.Header.Get("Prefer"), "return=minimal") {
			_, _ = io.WriteString(w, "minimal")
		} else {
			_, _ = io.WriteString(w, "full")
		}
	default:
		_, _ = io.WriteString(w, "ok")
	}
}

var bigBody = []byte(strings.Repeat("b", 512<<10))

// reply is an answer as a client got it.
type reply struct {
	status  int
	body    string
	header  http.Header
	elapsed time.Duration
	err     error
}

// send sends a request to the Caddy process; hdr holds name, value pairs.
func send(c *http.Client, method, url string, hdr ...string) reply {
	req, err := http.NewRequestWithContext(context.Background(), method, url, nil)
	if err != nil {
		return reply{err: err}
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return reply{err: err, elapsed: time.Since(start)}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, body: string(body), header: resp.Header, elapsed: time.Since(start), err: err}
}

// sendMany sends n requests at once, the i-th built by req, and returns the
// replies in order.
func sendMany(n int, req func(i int) reply) []reply {
	out := make([]reply, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { out[i] = req(i) })
	}
	wg.Wait()
	return out
}

func faultClient(t *testing.T) *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 512, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 90 * time.Second}
}

// Immediate long-polls on new keys each leave an idle watch holding its
// body for idle_ttl: without a bound, 1,000 of them for a 512 KiB body held
// 508 MiB. With max_memory, the watches hold no more than it, idle ones
// evicted, and the process's heap stays near it.
func TestFaultsIdleWatchMemory(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tmax_memory 32MiB\n\t}\n\treverse_proxy %s\n", up.addr()))
	c := faultClient(t)
	start := time.Now()
	var sem = make(chan struct{}, 16)
	replies := sendMany(1000, func(i int) reply {
		sem <- struct{}{}
		defer func() { <-sem }()
		return send(c, "GET", fmt.Sprintf("%s/big?n=%d", p.base, i), "Prefer", "wait=10")
	})
	for i, r := range replies {
		if r.err != nil || r.status != http.StatusOK || len(r.body) != len(bigBody) {
			t.Fatalf("request %d: got %d (%d bytes, %v), want 200 with the 512 KiB body", i, r.status, len(r.body), r.err)
		}
	}
	t.Logf("1,000 requests for 512 KiB on new keys in %v", time.Since(start))
	held := p.metric(t, "caddy_longpoll_watch_bytes")
	evicted := p.metric(t, "caddy_longpoll_watches_evicted_total")
	heap := p.metric(t, "go_memstats_heap_inuse_bytes")
	t.Logf("watch_bytes %.1f MiB, evicted %v, heap in use %.1f MiB", held/(1<<20), evicted, heap/(1<<20))
	if held > 32<<20 {
		t.Errorf("the watches hold %.1f MiB, want at most max_memory (32 MiB)", held/(1<<20))
	}
	if evicted < 900 {
		t.Errorf("%v watches evicted, want at least 900 of the 1,000 (only about 60 fit in 32 MiB)", evicted)
	}
	if heap > 160<<20 {
		t.Errorf("Caddy's heap in use: %.1f MiB, want under 160 MiB (32 MiB of watches, and garbage not yet collected)", heap/(1<<20))
	}
}

// An upstream that hangs, stalls after its headers, sends its body slowly,
// resets or truncates must cost one poll at a time with back-off, never a
// stampede of held clients passed to it; and every held client is answered
// 502 by the end of its wait plus poll_timeout.
func TestFaultsMisbehavingUpstream(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tinterval 500ms\n\t\tpoll_timeout 1s\n\t}\n\treverse_proxy %s\n", up.addr()))
	c := faultClient(t)
	const clients, wait, pollTimeout = 30, 5 * time.Second, time.Second
	for _, path := range []string{"/hang", "/stall", "/slow", "/reset", "/truncated"} {
		t.Run(path, func(t *testing.T) {
			replies := sendMany(clients, func(int) reply {
				// a version of its own: the client waits for the watch
				return send(c, "GET", p.base+path, "Prefer", "wait=5", "If-None-Match", `"a-version"`)
			})
			var longest time.Duration
			for i, r := range replies {
				longest = max(longest, r.elapsed)
				if r.err != nil || r.status != http.StatusBadGateway || r.header.Get("Retry-After") == "" {
					t.Errorf("client %d: got %d (%v), want 502 with Retry-After", i, r.status, r.err)
				}
				if r.elapsed > wait+pollTimeout+time.Second {
					t.Errorf("client %d: answered after %v, want within its wait plus poll_timeout (%v)", i, r.elapsed, wait+pollTimeout)
				}
			}
			// Polls at 0, ~2s, ~4s (back-off from 1s, poll_timeout 1s):
			// never one per client.
			t.Logf("%d clients held %v: answered 502 within %v, %d upstream requests", clients, wait, longest, up.count(path))
			if n := up.count(path); n > 6 {
				t.Errorf("%d clients held for %v: the upstream got %d requests, want at most 6 (one poll at a time, backing off)", clients, wait, n)
			}
		})
	}
}

// A held request whose watch can no longer share (the upstream starts
// setting a cookie) is passed to the upstream on its own; if the upstream
// then stalls, the request still ends by its wait plus poll_timeout, not
// whenever the upstream gives up.
func TestFaultsPassThroughAfterHoldIsBounded(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tinterval 500ms\n\t\tpoll_timeout 1s\n\t}\n\treverse_proxy %s\n", up.addr()))
	c := faultClient(t)
	etag := send(c, "GET", p.base+"/cookie-stall", "Prefer", "wait=3").header.Get("Etag")
	if etag == "" {
		t.Fatal("no ETag from a shareable answer")
	}
	held := make(chan reply, 1)
	go func() { held <- send(c, "GET", p.base+"/cookie-stall", "Prefer", "wait=3", "If-None-Match", etag) }()
	time.Sleep(time.Second)
	up.cookies.Store(true) // the next poll gets a cookie; the request passed on stalls
	r := <-held
	t.Logf("held, then passed through to a stalling upstream: %d after %v (%v)", r.status, r.elapsed, r.err)
	if r.elapsed < time.Second || r.elapsed > 3*time.Second+time.Second+time.Second {
		t.Errorf("answered after %v, want after its hold began (1s) and within its wait plus poll_timeout (4s)", r.elapsed)
	}
	if r.err == nil && r.status == http.StatusOK && r.body == "" {
		// headers came, the body never: the connection must be cut, so
		// that a client cannot take this for a complete answer
		t.Errorf("got 200 with an empty body and no error, want a failed or cut response")
	}
}

// php_fastcgi's client reads without a deadline, and ignores the poll's
// context: a backend that stalls must still fail the poll at poll_timeout,
// so that held clients get 502, not the last representation as current.
func TestFaultsStalledFastCGI(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var stall atomic.Bool
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck); ln.Close() })
	go fcgi.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if stall.Load() {
			<-stuck
			return
		}
		_, _ = io.WriteString(w, "from php")
	}))
	root := t.TempDir()
	if err := os.WriteFile(root+"/index.php", nil, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startCaddy(t, "", fmt.Sprintf("\troot * %s\n\tlongpoll {\n\t\tinterval 500ms\n\t\tpoll_timeout 1s\n\t}\n\tphp_fastcgi %s\n", root, ln.Addr()))
	c := faultClient(t)
	first := send(c, "GET", p.base+"/index.php", "Prefer", "wait=3")
	if first.status != http.StatusOK || first.body != "from php" {
		t.Fatalf("first answer: got %d %q, want 200 \"from php\"", first.status, first.body)
	}
	stall.Store(true)
	r := send(c, "GET", p.base+"/index.php", "Prefer", "wait=4", "If-None-Match", first.header.Get("Etag"))
	t.Logf("held while the FastCGI backend stalls: %d after %v", r.status, r.elapsed)
	if r.status != http.StatusBadGateway || r.elapsed > 4*time.Second+time.Second+time.Second {
		t.Errorf("got %d after %v, want 502 within the wait plus poll_timeout (not a 304 calling the old answer current)", r.status, r.elapsed)
	}
}

// A representation that the watches with held requests leave no room for
// in max_memory is not kept, and its clients are refused with 503, not
// passed through: every client loop would otherwise cost the upstream a
// request per round trip.
func TestFaultsOverMemoryBudget(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tmax_memory 2MiB\n\t}\n\treverse_proxy %s\n", up.addr()))
	c := faultClient(t)
	etag := send(c, "GET", p.base+"/big?k=0", "Prefer", "wait=5").header.Get("Etag")
	done := make(chan []reply, 1)
	go func() {
		done <- sendMany(3, func(i int) reply { // three 512 KiB watches held: 1.5 MiB
			return send(c, "GET", fmt.Sprintf("%s/big?k=%d", p.base, i), "Prefer", "wait=4", "If-None-Match", etag)
		})
	}()
	time.Sleep(time.Second) // held
	before := up.count("/big")
	refused := sendMany(20, func(int) reply { return send(c, "GET", p.base+"/big?k=over", "Prefer", "wait=3") })
	for i, r := range refused {
		if r.status != http.StatusServiceUnavailable || r.header.Get("Retry-After") == "" {
			t.Errorf("request %d over the budget: got %d, want 503 with Retry-After", i, r.status)
		}
	}
	if n := up.count("/big") - before; n > 3 {
		t.Errorf("20 requests over the budget: the upstream got %d requests, want the watch's polls only (at most 3)", n)
	}
	if got := p.metric(t, `caddy_longpoll_rejected_total{cap="max_memory"}`); got != 20 {
		t.Errorf("rejected_total{cap=max_memory}: got %v, want 20", got)
	}
	for i, r := range <-done {
		if r.status != http.StatusNotModified {
			t.Errorf("held request %d: got %d, want 304 (held, within the budget)", i, r.status)
		}
	}
}

// One 503 with Retry-After: 300 from an upstream back 1.5s later must not
// keep the watch down for five minutes: a new client after a quiet spell
// gets a fresh poll, and a notification is worth a poll in back-off.
func TestFaultsRetryAfter(t *testing.T) {
	up := newFaultUpstream(t)
	t.Setenv("LONGPOLL_FAULTS_SECRET", "faults-secret")
	p := startCaddy(t, "", fmt.Sprintf(`	handle /_notify {
		longpoll_notify {
			secret {env.LONGPOLL_FAULTS_SECRET}
		}
	}
	longpoll {
		interval 500ms
	}
	reverse_proxy %s
`, up.addr()))
	c := faultClient(t)
	up.down.Store(true)
	if r := send(c, "GET", p.base+"/retry", "Prefer", "wait=5"); r.status != http.StatusBadGateway {
		t.Fatalf("while down: got %d, want 502", r.status)
	}
	held := make(chan reply, 1)
	go func() {
		held <- send(c, "GET", p.base+"/retry-held", "Prefer", "wait=20", "If-None-Match", `"a-version"`)
	}()
	time.Sleep(1500 * time.Millisecond)
	up.down.Store(false)
	time.Sleep(time.Second)

	// A new client, 2.5s into a back-off of up to 30s: one fresh poll.
	if r := send(c, "GET", p.base+"/retry", "Prefer", "wait=5"); r.status != http.StatusOK || r.body != "back" {
		t.Errorf("a new client after the upstream came back: got %d %q, want 200 \"back\"", r.status, r.body)
	}
	// A notification releases the held client now, not 30s later.
	notified := time.Now()
	req, _ := http.NewRequest("POST", p.base+"/_notify", strings.NewReader(`{"topics": ["/retry-held"]}`))
	req.Header.Set("Authorization", "Bearer faults-secret")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("notify: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	select {
	case r := <-held:
		if r.status != http.StatusOK || r.body != "back" {
			t.Errorf("held client after the notification: got %d %q, want 200 \"back\"", r.status, r.body)
		}
		if d := time.Since(notified); d > 2*time.Second {
			t.Errorf("held client answered %v after the notification, want within 2s", d)
		}
	case <-time.After(10 * time.Second):
		t.Error("held client not answered within 10s of the notification")
	}
}

// One client holding requests on many keys (distinct query strings) made
// the upstream pay per key: 2,000 requests caused 39,889 upstream requests
// in 20s. max_watches_per_client (default 64) bounds it.
func TestFaultsOneClientManyKeys(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tinterval 1s\n\t}\n\treverse_proxy %s\n", up.addr()))
	c := faultClient(t)
	etag := send(c, "GET", p.base+"/keys?k=first", "Prefer", "wait=5").header.Get("Etag")
	before := up.count("/keys")
	start := time.Now()
	replies := sendMany(200, func(i int) reply {
		return send(c, "GET", fmt.Sprintf("%s/keys?k=%d", p.base, i), "Prefer", "wait=5", "If-None-Match", etag)
	})
	took := time.Since(start)
	held, rejected := 0, 0
	for i, r := range replies {
		switch {
		case r.status == http.StatusNotModified:
			held++
		case r.status == http.StatusTooManyRequests && r.header.Get("Retry-After") != "" && r.elapsed < time.Second:
			rejected++
		default:
			t.Errorf("request %d: got %d after %v (%v), want 304 after its wait or 429 at once", i, r.status, r.elapsed, r.err)
		}
	}
	polls := up.count("/keys") - before
	t.Logf("200 keys from one client: %d held, %d rejected, %d upstream requests in %v", held, rejected, polls, took)
	if held != DefaultMaxWatchesPerClient || rejected != 200-DefaultMaxWatchesPerClient {
		t.Errorf("got %d held and %d rejected, want %d and %d", held, rejected, DefaultMaxWatchesPerClient, 200-DefaultMaxWatchesPerClient)
	}
	if limit := DefaultMaxWatchesPerClient * (int(took/time.Second) + 2); polls > limit {
		t.Errorf("the upstream got %d requests in %v, want at most %d (64 watches, one poll a second each)", polls, took, limit)
	}
	if got := p.metric(t, `caddy_longpoll_rejected_total{cap="max_watches_per_client"}`); got != float64(rejected) {
		t.Errorf("rejected_total{cap=max_watches_per_client}: got %v, want %d", got, rejected)
	}
}

// Two users on one path, many requests each, with notifications in the
// middle: each only ever sees its own data.
func TestFaultsUsersApart(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tinterval 200ms\n\t}\n\treverse_proxy %s\n", up.addr()))
	c := faultClient(t)
	replies := sendMany(400, func(i int) reply {
		user := fmt.Sprintf("Bearer user-%d", i%20)
		r := send(c, "GET", p.base+"/user", "Prefer", "wait=1", "Authorization", user)
		if r.status == http.StatusOK && r.body != "data of "+user {
			r.err = fmt.Errorf("user %q got %q", user, r.body)
		}
		return r
	})
	for i, r := range replies {
		if r.err != nil || r.status != http.StatusOK {
			t.Errorf("request %d: got %d (%v), want 200 with its own user's data", i, r.status, r.err)
		}
	}
}

// Polls send no preference: a client's return=minimal must not shape what
// every waiter gets, and an upstream's Vary: Prefer must not be doubled.
// A HEAD long-poll is polled with HEAD: the route here refuses GET, and the
// upstream must never see one.
func TestFaultsPreferAndHead(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf(`	route {
		@get {
			method GET
			path /sec/*
		}
		respond @get 403
		longpoll {
			interval 200ms
		}
		reverse_proxy %s
	}
`, up.addr()))
	c := faultClient(t)
	minimal := send(c, "GET", p.base+"/prefer", "Prefer", "wait=1, return=minimal")
	full := send(c, "GET", p.base+"/prefer", "Prefer", "wait=1, return=representation")
	if minimal.body != full.body || minimal.header.Get("Etag") != full.header.Get("Etag") {
		t.Errorf("return=minimal got %q, return=representation %q: want the same answer (polls carry no preference)", minimal.body, full.body)
	}
	for _, r := range []reply{minimal, full} {
		n := 0
		for _, line := range r.header.Values("Vary") {
			for f := range strings.SplitSeq(line, ",") {
				if strings.EqualFold(strings.TrimSpace(f), "Prefer") {
					n++
				}
			}
		}
		if n != 1 {
			t.Errorf("Vary %q: Prefer named %d times, want once", r.header.Values("Vary"), n)
		}
	}
	up.mu.Lock()
	prefers := up.prefers
	up.mu.Unlock()
	if len(prefers) > 0 {
		t.Errorf("the upstream got Prefer %q from polls, want none", prefers)
	}

	if r := send(c, "GET", p.base+"/sec/data", "Prefer", "wait=1"); r.status != http.StatusForbidden {
		t.Fatalf("GET /sec/data: got %d, want the route's 403", r.status)
	}
	head := send(c, "HEAD", p.base+"/sec/data", "Prefer", "wait=1")
	if head.status != http.StatusOK || head.header.Get("Etag") == "" {
		t.Errorf("HEAD long-poll: got %d with ETag %q, want 200 with one", head.status, head.header.Get("Etag"))
	}
	held := send(c, "HEAD", p.base+"/sec/data", "Prefer", "wait=1", "If-None-Match", head.header.Get("Etag"))
	if held.status != http.StatusNotModified {
		t.Errorf("held HEAD long-poll: got %d, want 304", held.status)
	}
	up.mu.Lock()
	methods := up.methods["/sec/data"]
	up.mu.Unlock()
	for _, m := range methods {
		if m != http.MethodHead {
			t.Errorf("the upstream got %q for /sec/data, where the route lets only HEAD through", methods)
			break
		}
	}
}

// A notify secret with a placeholder that expands to nothing must not load:
// "p{env.UNSET}" would otherwise accept the token "p".
func TestFaultsPartialSecret(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	dir := t.TempDir()
	cfg := dir + "/Caddyfile"
	site := "{\n\tadmin off\n}\nhttp://127.0.0.1:1 {\n\tlongpoll_notify {\n\t\tsecret p{env.LONGPOLL_FAULTS_UNSET}\n\t}\n}\n"
	if err := os.WriteFile(cfg, []byte(site), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := caddyCommand(t, "validate", "--config", cfg, "--adapter", "caddyfile").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "{env.LONGPOLL_FAULTS_UNSET} expands to nothing") {
		t.Errorf("caddy validate of secret p{env.UNSET}: got %v and\n%s\nwant a refusal naming the placeholder", err, out)
	}
}

// A reload that changes a longpoll block replaces its engine. Its held
// requests, answered all at once, all came back at once into the listeners
// the reload hands over: 1,300 to 1,600 of 2,000 got EOF or a reset. Spread
// over replaceSpread, they come back without an error.
func TestFaultsReloadStorm(t *testing.T) {
	up := newFaultUpstream(t)
	site := "\tlongpoll {\n\t\tinterval %s\n\t}\n\treverse_proxy " + up.addr() + "\n"
	p := startCaddy(t, "", fmt.Sprintf(site, "1s"))
	c := faultClient(t)
	etag := send(c, "GET", p.base+"/storm", "Prefer", "wait=5").header.Get("Etag")
	const clients = 1000
	var held atomic.Int64
	results := make(chan error, clients)
	for range clients {
		go func() {
			// held, then answered by the reload, then straight back
			held.Add(1)
			r := send(c, "GET", p.base+"/storm", "Prefer", "wait=30", "If-None-Match", etag)
			if r.err != nil || (r.status != http.StatusNotModified && r.status != http.StatusOK) {
				results <- fmt.Errorf("held request: %d %v", r.status, r.err)
				return
			}
			r = send(c, "GET", p.base+"/storm", "Prefer", "wait=1", "If-None-Match", etag)
			if r.err != nil || r.status != http.StatusNotModified {
				results <- fmt.Errorf("coming back: %d %v", r.status, r.err)
				return
			}
			results <- nil
		}()
	}
	for held.Load() < clients {
		time.Sleep(10 * time.Millisecond)
	}
	// every request in its hold, as the server counts them: a request
	// still on its way when the reload closes the old listener is not
	// what this test is about
	deadline := time.Now().Add(30 * time.Second)
	for p.metric(t, "caddy_longpoll_held_requests") < clients {
		if time.Now().After(deadline) {
			t.Fatalf("%v requests held after 30s, want %d", p.metric(t, "caddy_longpoll_held_requests"), clients)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	cfg := fmt.Sprintf("{\n\tadmin %s\n\tauto_https off\n\tpersist_config off\n}\n\n%s {\n%s}\n",
		strings.TrimPrefix(p.admin, "http://"), p.base, fmt.Sprintf(site, "2s"))
	resp, err := http.Post(p.admin+"/load", "text/caddyfile", strings.NewReader(cfg))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("reload: %v %v", resp, err)
	}
	resp.Body.Close()
	failed := 0
	for range clients {
		select {
		case err := <-results:
			if err != nil {
				failed++
				if failed <= 5 {
					t.Log(err)
				}
			}
		case <-time.After(60 * time.Second):
			t.Fatal("clients not back within 60s of the reload")
		}
	}
	t.Logf("%d clients held through a reload that replaced their engine: %d failed", clients, failed)
	if failed > 0 {
		t.Errorf("%d of %d clients got an error from the reload or coming back after it, want none", failed, clients)
	}
}

// Shutdown ends every stream within a second: an event stream's response
// ends, a WebSocket is closed with 1001 (going away), rather than cut when
// the process exits (the server's graceful shutdown does not wait for a
// hijacked connection).
func TestFaultsShutdownEndsStreams(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tsse\n\t\twebsocket\n\t}\n\treverse_proxy %s\n", up.addr()))
	req, _ := http.NewRequest("GET", p.base+"/streamed", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sseEnded := make(chan time.Time, 1)
	go func() { _, _ = io.Copy(io.Discard, resp.Body); sseEnded <- time.Now() }()
	conn, _, err := websocket.Dial(context.Background(), strings.Replace(p.base, "http", "ws", 1)+"/streamed", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.CloseNow()
	type closed struct {
		at  time.Time
		err error
	}
	wsEnded := make(chan closed, 1)
	go func() {
		for {
			if _, _, err := conn.Read(context.Background()); err != nil {
				wsEnded <- closed{time.Now(), err}
				return
			}
		}
	}()
	time.Sleep(500 * time.Millisecond) // both streams open, the first version sent
	stopped := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-sseEnded:
		if d := at.Sub(stopped); d > time.Second {
			t.Errorf("event stream ended %v after SIGTERM, want within 1s", d)
		}
	case <-time.After(10 * time.Second):
		t.Error("event stream not ended within 10s of SIGTERM")
	}
	select {
	case c := <-wsEnded:
		if d := c.at.Sub(stopped); d > time.Second || websocket.CloseStatus(c.err) != websocket.StatusGoingAway {
			t.Errorf("WebSocket %v after SIGTERM: %v, want a close with 1001 within 1s", d, c.err)
		}
	case <-time.After(10 * time.Second):
		t.Error("WebSocket not closed within 10s of SIGTERM")
	}
}

// 1,000 streams opened and dropped with a reset leave nothing behind: the
// goroutines and open streams of the process go back to where they were.
func TestFaultsStreamsDroppedLeaveNothing(t *testing.T) {
	up := newFaultUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tsse\n\t\twebsocket\n\t}\n\treverse_proxy %s\n", up.addr()))
	c := faultClient(t)
	send(c, "GET", p.base+"/churn", "Prefer", "wait=1") // the watch, warm
	before := p.metric(t, "go_goroutines")
	addr := strings.TrimPrefix(p.base, "http://")
	for round := range 2 {
		var conns []net.Conn
		for i := range 500 {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				fmt.Fprintf(conn, "GET /churn HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", addr)
			} else {
				fmt.Fprintf(conn, "GET /churn HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
					"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", addr)
			}
			conns = append(conns, conn)
		}
		deadline := time.Now().Add(20 * time.Second)
		for p.metric(t, `caddy_longpoll_streams{delivery="sse"}`)+p.metric(t, `caddy_longpoll_streams{delivery="websocket"}`) < 500 {
			if time.Now().After(deadline) {
				t.Fatalf("round %d: 500 streams not open within 20s", round)
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, conn := range conns {
			_ = conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
	}

	deadline := time.Now().Add(30 * time.Second)
	for {
		open := p.metric(t, `caddy_longpoll_streams{delivery="sse"}`) + p.metric(t, `caddy_longpoll_streams{delivery="websocket"}`)
		after := p.metric(t, "go_goroutines")
		if open == 0 && after <= before+10 {
			t.Logf("goroutines: %v before, %v after 1,000 streams dropped", before, after)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after 1,000 streams were dropped: %v still open, %v goroutines (%v before)", open, after, before)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
