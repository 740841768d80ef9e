// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sseEvent is one event of an event stream, as a client reads it.
type sseEventRead struct {
	ID, Event, Data string
	Comment         bool // a comment line (a heartbeat)
}

// sseClient reads an event stream.
type sseClient struct {
	resp   *http.Response
	events chan sseEventRead
	cancel context.CancelFunc
	err    error // why reading ended, once events is closed: nil at a clean end
}

// openSSE opens an event stream on path of the test Caddy; hdr holds name,
// value pairs. The stream is closed when the test ends.
func openSSE(t *testing.T, path string, hdr ...string) *sseClient {
	t.Helper()
	return openSSEVia(t, &http.Client{Transport: &http.Transport{DisableCompression: true}}, path, hdr...)
}

// openSSEVia opens an event stream with client, reading it through gzip
// when the server compressed it.
func openSSEVia(t *testing.T, client *http.Client, path string, hdr ...string) *sseClient {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://127.0.0.1:%d%s", itPort(), path), nil)
	req.Host = fmt.Sprintf("localhost:%d", itPort()) // as the other clients: one watch
	req.Header.Set("Accept", "text/event-stream")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	c := &sseClient{resp: resp, events: make(chan sseEventRead, 1000), cancel: cancel}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	go c.read()
	return c
}

func (c *sseClient) read() {
	defer close(c.events)
	var body io.Reader = c.resp.Body
	if c.resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			return
		}
		body = zr
	}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	defer func() { c.err = sc.Err() }()
	var ev sseEventRead
	var data []string
	started := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if started {
				ev.Data = strings.Join(data, "\n")
				c.events <- ev
			}
			ev, data, started = sseEventRead{}, nil, false
		case strings.HasPrefix(line, ":"):
			c.events <- sseEventRead{Comment: true}
		default:
			name, val, _ := strings.Cut(line, ":")
			val = strings.TrimPrefix(val, " ")
			switch name {
			case "id":
				ev.ID, started = val, true
			case "event":
				ev.Event, started = val, true
			case "data":
				data, started = append(data, val), true
			}
		}
	}
}

// next returns the next event that is not a comment, within a deadline.
func (c *sseClient) next(t *testing.T, within time.Duration) sseEventRead {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case ev, ok := <-c.events:
			if !ok {
				t.Fatal("the event stream ended")
			}
			if !ev.Comment {
				return ev
			}
		case <-deadline:
			t.Fatalf("no event within %v", within)
		}
	}
}

// openWS opens a WebSocket on path of the test Caddy.
func openWS(t *testing.T, path string, hdr ...string) *websocket.Conn {
	t.Helper()
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Set(hdr[i], hdr[i+1])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, resp, err := websocket.Dial(ctx, fmt.Sprintf("ws://localhost:%d%s", itPort(), path), &websocket.DialOptions{HTTPHeader: h})
	if err != nil {
		status := 0
		if resp != nil {
			status = resp.StatusCode
		}
		t.Fatalf("dialing %s: %v (status %d)", path, err, status)
	}
	t.Cleanup(func() { _ = conn.CloseNow() })
	return conn
}

// wsMessageRead is a message as a WebSocket client reads it.
type wsMessageRead struct {
	ETag        string          `json:"etag"`
	Status      int             `json:"status"`
	ContentType string          `json:"content_type"`
	Body        json.RawMessage `json:"body"`
	BodyBase64  string          `json:"body_base64"`
	Error       string          `json:"error"`
}

func readWS(t *testing.T, conn *websocket.Conn, within time.Duration) wsMessageRead {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	typ, p, err := conn.Read(ctx)
	if err != nil {
		t.Fatalf("reading a message: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("message type %v, want text", typ)
	}
	var m wsMessageRead
	if err := json.Unmarshal(p, &m); err != nil {
		t.Fatalf("message %q: %v", p, err)
	}
	return m
}

// streamSite is a site with streams on, in front of up.
func streamSite(up *itUpstream, extra string) string {
	return itSite("interval 100ms\nsse\nwebsocket\n"+extra, up)
}

// TestIntegrationStreamsEveryVersion changes a resource 20 times, each
// change once every stream has the version before: both deliveries must
// carry all 21 versions, in order, with the ETag a long-poll would get, and
// the body byte for byte (several lines, for SSE's data lines).
func TestIntegrationStreamsEveryVersion(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "")))
	c, _ := itClient(t)
	body := func(i int) string { return fmt.Sprintf("version %d\nsecond line\n\nlast", i) }
	up.set("/s", http.StatusOK, body(0), "Content-Type", "text/plain")

	sse := openSSE(t, "/s")
	if got := sse.resp.Header.Get("Content-Type"); got != "text/event-stream" {
		t.Errorf("SSE Content-Type: got %q, want text/event-stream", got)
	}
	if got := sse.resp.Header.Get("Cache-Control"); !strings.Contains(got, "no-transform") || !strings.Contains(got, "no-cache") {
		t.Errorf("SSE Cache-Control: got %q, want no-cache, no-transform", got)
	}
	ws := openWS(t, "/s")
	etag := ""
	for i := 0; i <= 20; i++ {
		if i > 0 {
			up.set("/s", http.StatusOK, body(i), "Content-Type", "text/plain")
		}
		// the ETag a long-poll gets for this version
		etag = itMustSend(t, c, "GET", "/s", "Prefer", "wait=5", "If-None-Match", etag+`, "none"`).Header.Get("Etag")
		ev := sse.next(t, 5*time.Second)
		if ev.Data != body(i) || `"`+ev.ID+`"` != etag {
			t.Fatalf("SSE version %d: got id %q data %q, want id %s data %q", i, ev.ID, ev.Data, etag, body(i))
		}
		m := readWS(t, ws, 5*time.Second)
		var got string
		if err := json.Unmarshal(m.Body, &got); err != nil || got != body(i) || m.ETag != etag || m.Status != 200 || m.ContentType != "text/plain" {
			t.Fatalf("WebSocket version %d: got %+v (%q), want ETag %s, 200, text/plain, %q", i, m, got, etag, body(i))
		}
	}
}

// TestIntegrationStreamsUsersApart opens streams of two users on one path:
// each only ever sees its own data, however the versions come.
func TestIntegrationStreamsUsersApart(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	version := 0
	up.setServe("/me", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s v%d", r.Header.Get("Authorization"), version)
	})
	itLoad(t, tc, itConfig("", streamSite(up, "")))
	alice := openSSE(t, "/me", "Authorization", "alice")
	bob := openWS(t, "/me", "Authorization", "bob")
	for i := 0; i < 5; i++ {
		ev := alice.next(t, 5*time.Second)
		if !strings.HasPrefix(ev.Data, "alice v") {
			t.Fatalf("alice's stream: got %q", ev.Data)
		}
		m := readWS(t, bob, 5*time.Second)
		if !strings.HasPrefix(string(m.Body), `"bob v`) {
			t.Fatalf("bob's stream: got %s", m.Body)
		}
		up.mu.Lock()
		version++
		up.mu.Unlock()
	}
}

// TestIntegrationStreamsResume checks that a client that names the version
// it has (Last-Event-ID for SSE, the etag query parameter or If-None-Match
// for WebSocket) is not sent it again: nothing until the next version.
func TestIntegrationStreamsResume(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "query_params wait etag")))
	c, _ := itClient(t)
	etag := itMustSend(t, c, "GET", "/r", "Prefer", "wait=1").Header.Get("Etag")
	unquoted := strings.Trim(etag, `"`)
	sse := openSSE(t, "/r", "Last-Event-ID", unquoted)
	ws := openWS(t, "/r?etag="+unquoted)
	ws2 := openWS(t, "/r", "If-None-Match", etag)
	select {
	case ev := <-sse.events:
		if !ev.Comment {
			t.Fatalf("SSE resumed at the current version: got event %+v, want none", ev)
		}
	case <-time.After(time.Second):
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	_, p, err := ws.Read(ctx)
	cancel()
	if err == nil {
		t.Fatalf("WebSocket resumed at the current version: got %s, want nothing", p)
	}
	// a read that times out closes a coder/websocket connection: reopen
	ws = openWS(t, "/r?etag="+unquoted)
	up.set("/r", http.StatusOK, "next")
	if ev := sse.next(t, 5*time.Second); ev.Data != "next" {
		t.Errorf("SSE after a change: got %q, want next", ev.Data)
	}
	if m := readWS(t, ws, 5*time.Second); string(m.Body) != `"next"` {
		t.Errorf("WebSocket (etag) after a change: got %s, want \"next\"", m.Body)
	}
	if m := readWS(t, ws2, 5*time.Second); string(m.Body) != `"next"` {
		t.Errorf("WebSocket (If-None-Match) after a change: got %s, want \"next\"", m.Body)
	}
	// If-None-Match: * names no version: the stream starts with the current one
	if ev := openSSE(t, "/r", "If-None-Match", "*").next(t, 5*time.Second); ev.Data != "next" {
		t.Errorf("SSE with If-None-Match *: got %q, want the current version, next", ev.Data)
	}
}

// TestIntegrationStreamsStatusesAndFailures checks how what is not a 2xx
// appears: a 404 is a named event (http-404) and a message with its status;
// an upstream that fails is said once, as upstream-error.
func TestIntegrationStreamsStatusesAndFailures(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "")))
	up.set("/st", http.StatusNotFound, "missing", "Content-Type", "application/json")
	sse := openSSE(t, "/st")
	ws := openWS(t, "/st")
	if ev := sse.next(t, 5*time.Second); ev.Event != "http-404" || ev.Data != "missing" {
		t.Errorf("a 404 on SSE: got %+v, want event http-404 with the body", ev)
	}
	// JSON by its content type, but not valid JSON: base64, which any body
	// survives
	if m := readWS(t, ws, 5*time.Second); m.Status != 404 || m.BodyBase64 != "bWlzc2luZw==" || m.Body != nil {
		t.Errorf("a 404 on WebSocket: got %+v, want status 404 and the body in body_base64", m)
	}
	up.set("/st", http.StatusServiceUnavailable, "down")
	if ev := sse.next(t, 5*time.Second); ev.Event != "upstream-error" || !strings.Contains(ev.Data, "retry_after") {
		t.Errorf("a failing upstream on SSE: got %+v, want event upstream-error", ev)
	}
	if m := readWS(t, ws, 5*time.Second); m.Error != "upstream failing" {
		t.Errorf("a failing upstream on WebSocket: got %+v, want error", m)
	}
}

// TestIntegrationStreamsHeartbeat checks the sign of life of a quiet
// stream: an SSE comment, a WebSocket ping the client answers.
func TestIntegrationStreamsHeartbeat(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "heartbeat 1s")))
	sse := openSSE(t, "/hb")
	sse.next(t, 5*time.Second)
	comments := 0
	deadline := time.After(3500 * time.Millisecond)
loop:
	for {
		select {
		case ev := <-sse.events:
			if ev.Comment {
				comments++
			}
		case <-deadline:
			break loop
		}
	}
	if comments < 2 || comments > 4 {
		t.Errorf("3.5s of a quiet stream with heartbeat 1s: got %d comments, want about 3", comments)
	}
	ws := openWS(t, "/hb")
	readWS(t, ws, 5*time.Second)
	// reading answers the pings: the connection outlives several heartbeats
	ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
	_, _, err := ws.Read(ctx)
	cancel()
	if !strings.Contains(fmt.Sprint(err), "deadline") && !strings.Contains(fmt.Sprint(err), "context") {
		t.Errorf("a WebSocket answering pings for 3.5s: got %v, want still open", err)
	}
}

// TestIntegrationStreamsCapsAndPolicy checks max_streams (503 before the
// stream starts, a WebSocket not upgraded), origins (403 for another), and
// a client that sends a message (closed with 1008).
func TestIntegrationStreamsCapsAndPolicy(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "max_streams 2\norigins https://app.example.com")))
	c, _ := itClient(t)
	a := openSSE(t, "/cap")
	a.next(t, 5*time.Second)
	b := openWS(t, "/cap")
	readWS(t, b, 5*time.Second)
	rejected := testutil.ToFloat64(metrics.byCap["max_streams"])
	r := itMustSend(t, c, "GET", "/cap", "Accept", "text/event-stream")
	if r.Status != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Errorf("a third stream over max_streams 2: got %d, want 503 with Retry-After", r.Status)
	}
	_, resp, err := websocket.Dial(context.Background(), fmt.Sprintf("ws://localhost:%d/cap", itPort()), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("a third stream (WebSocket): got %v, want 503 before the upgrade", err)
	}
	if got := testutil.ToFloat64(metrics.byCap["max_streams"]) - rejected; got != 2 {
		t.Errorf("rejected_total{cap=max_streams}: got %v more, want 2", got)
	}
	b.CloseNow()
	time.Sleep(300 * time.Millisecond)

	_, resp, err = websocket.Dial(context.Background(), fmt.Sprintf("ws://localhost:%d/cap", itPort()),
		&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example.net"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("a WebSocket from another origin: got %v, want 403", err)
	}
	// refused before it costs a watch: the upstream never sees it
	_, resp, err = websocket.Dial(context.Background(), fmt.Sprintf("ws://localhost:%d/cap-other", itPort()),
		&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example.net"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden || up.hitsFor("/cap-other") != 0 {
		t.Errorf("a WebSocket from another origin on a new key: got %v and %d upstream requests, want 403 and none", err, up.hitsFor("/cap-other"))
	}
	ok := openWS(t, "/cap", "Origin", "https://app.example.com")
	readWS(t, ok, 5*time.Second)
	if err := ok.Write(context.Background(), websocket.MessageText, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _, err = ok.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Errorf("a client that sends a message: got %v, want a close with 1008", err)
	}
}

// TestIntegrationStreamsSlowReader checks that a client that stops reading
// delays nobody: the others get each version at once.
func TestIntegrationStreamsSlowReader(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "")))
	up.set("/slow", http.StatusOK, strings.Repeat("x", 256<<10)) // fills a socket buffer fast
	conn, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(itPort())))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /slow HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n") // and never reads
	fast := openSSE(t, "/slow")
	fast.next(t, 5*time.Second)
	for i := range 5 {
		up.set("/slow", http.StatusOK, strings.Repeat(strconv.Itoa(i), 256<<10))
		start := time.Now()
		ev := fast.next(t, 5*time.Second)
		if d := time.Since(start); d > 2*time.Second || ev.Data[0] != byte('0'+i) {
			t.Fatalf("version %d to a reading client beside one that does not read: after %v", i, d)
		}
	}
}

// TestIntegrationStreamsReload reloads a config whose longpoll block is
// unchanged, and one that only tunes it (heartbeat, caps): every stream
// stays open and gets the next version.
func TestIntegrationStreamsReload(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "")))
	sse := openSSE(t, "/rl")
	ws := openWS(t, "/rl")
	sse.next(t, 5*time.Second)
	readWS(t, ws, 5*time.Second)
	// the admin view counts the streams, per watch and in all
	if status, body := itAdminGet(t, "GET", "/longpoll/watches"); status != http.StatusOK ||
		!strings.Contains(body, `"streams":2,`) || !strings.Contains(body, `"topic":"/rl","server":"srv0","state":"polling","waiters":2,"streams":2`) {
		t.Errorf("admin view with two streams open: got %d %s", status, body)
	}
	for i, site := range []string{streamSite(up, ""), streamSite(up, "heartbeat 5s\nmax_streams 100")} {
		itLoad(t, tc, itConfig("", site))
		body := fmt.Sprint("after reload ", i)
		up.set("/rl", http.StatusOK, body)
		if ev := sse.next(t, 5*time.Second); ev.Data != body {
			t.Fatalf("SSE after reload %d: got %q, want %q", i, ev.Data, body)
		}
		if m := readWS(t, ws, 5*time.Second); string(m.Body) != strconv.Quote(body) {
			t.Fatalf("WebSocket after reload %d: got %s, want %q", i, m.Body, body)
		}
	}
}

// TestIntegrationStreamsReloadReplacesEngine reloads a config that changes
// what a watch is (max_body): its streams end, spread over a few seconds
// (WebSocket with 1012, "restart"), and a client that resumes from the last
// version it got misses nothing and gets nothing twice.
func TestIntegrationStreamsReloadReplacesEngine(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "")))
	var sses []*sseClient
	var ids []string
	for range 10 {
		s := openSSE(t, "/swap")
		ids = append(ids, s.next(t, 5*time.Second).ID)
		sses = append(sses, s)
	}
	ws := openWS(t, "/swap")
	readWS(t, ws, 5*time.Second)
	start := time.Now()
	itLoad(t, tc, itConfig("", streamSite(up, "max_body 512KiB")))
	// Each stream's end is timed as it comes, all of them at once.
	ended := make([]time.Duration, len(sses))
	var wg sync.WaitGroup
	for i, s := range sses {
		wg.Go(func() {
			timeout := time.After(replaceSpread + 3*time.Second)
			for {
				select {
				case ev, ok := <-s.events:
					if ok && ev.Comment {
						continue
					}
					if ok {
						t.Errorf("stream %d: got event %+v, want the stream ended", i, ev)
					}
					ended[i] = time.Since(start)
				case <-timeout:
					t.Errorf("stream %d not ended within %v of the reload", i, replaceSpread+3*time.Second)
				}
				return
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	first, last := slices.Min(ended), slices.Max(ended)
	if last-first < replaceSpread/4 {
		t.Errorf("10 streams ended within %v of each other, want them spread", last-first)
	}
	ctx, cancel := context.WithTimeout(context.Background(), replaceSpread+3*time.Second)
	defer cancel()
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusServiceRestart {
		t.Errorf("WebSocket at the reload: got %v, want a close with 1012", err)
	}
	// Resuming from the last version: nothing twice, then the next.
	resumed := openSSE(t, "/swap", "Last-Event-ID", ids[0])
	up.set("/swap", http.StatusOK, "after the swap")
	if ev := resumed.next(t, 5*time.Second); ev.Data != "after the swap" {
		t.Errorf("resumed stream: got %+v, want only the new version", ev)
	}
}
