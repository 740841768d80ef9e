// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// deadlineRecorder is a response writer that records, for every write, the
// write deadline in force.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	deadline time.Time
	set      int
	writes   []deadlineAt
}

type deadlineAt struct {
	at, deadline time.Time
	n            int
}

func (d *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	d.deadline = t
	d.set++
	return nil
}

func (d *deadlineRecorder) Write(p []byte) (int, error) {
	d.writes = append(d.writes, deadlineAt{time.Now(), d.deadline, len(p)})
	return d.ResponseRecorder.Write(p)
}

// TestSSEWriteDeadlines checks that every write of an event stream has a
// deadline between half writeTimeout and writeTimeout away, however long
// the stream has been open, and that the deadline moves only when half of
// it has passed, not at every write.
func TestSSEWriteDeadlines(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
		sw := &sseWriter{w: rec, rc: http.NewResponseController(rec)}
		if err := sw.start(); err != nil {
			t.Fatal(err)
		}
		// events 1 s apart for 3 s, then a heartbeat after a long quiet,
		// then events again
		for _, gap := range []time.Duration{time.Second, time.Second, time.Second, 25 * time.Second, time.Second, 7 * time.Second} {
			time.Sleep(gap)
			if err := sw.heartbeat(); err != nil {
				t.Fatal(err)
			}
		}
		for i, w := range rec.writes {
			if left, budget := w.deadline.Sub(w.at), writeBudget(w.n); left < budget-writeTimeout/2 || left > budget {
				t.Errorf("write %d: deadline %v away, want between %v and %v", i, left, budget-writeTimeout/2, budget)
			}
		}
		// at 0 s (the head), 28 s (the first write after the quiet), 36 s
		if len(rec.writes) != 7 || rec.set != 3 {
			t.Errorf("%d writes set the deadline %d times, want 7 writes and 3 deadlines", len(rec.writes), rec.set)
		}
		if body := rec.Body.String(); !strings.HasPrefix(body, "retry: ") || strings.Count(body, string(heartbeatComment)) != 6 {
			t.Errorf("stream written: %q, want a retry hint and 6 heartbeats", body)
		}
	})
}

// TestSSEWriteDeadlinesHTTP2 checks that over HTTP/2, where a write
// deadline is a timer that resets the stream when it fires, every write of
// an event stream has a deadline writeTimeout away and none is left
// between writes.
func TestSSEWriteDeadlinesHTTP2(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
		sw := &sseWriter{w: rec, rc: http.NewResponseController(rec), h2: true}
		if err := sw.start(); err != nil {
			t.Fatal(err)
		}
		for _, gap := range []time.Duration{time.Second, 25 * time.Second} {
			time.Sleep(gap)
			if err := sw.heartbeat(); err != nil {
				t.Fatal(err)
			}
			if !rec.deadline.IsZero() {
				t.Errorf("after a write: deadline %v left, want none", rec.deadline)
			}
		}
		for i, w := range rec.writes {
			if left := w.deadline.Sub(w.at); left != writeBudget(w.n) {
				t.Errorf("write %d: deadline %v away, want %v", i, left, writeBudget(w.n))
			}
		}
		if len(rec.writes) != 3 {
			t.Errorf("got %d writes, want 3", len(rec.writes))
		}
	})
}

// TestSSEWriteDeadlineBigEvent checks that a big event gets time in
// proportion to its size (a slow but healthy client is not cut off at
// every try), and that the deadline moves for it even when a small write
// has just set one.
func TestSSEWriteDeadlineBigEvent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &deadlineRecorder{ResponseRecorder: httptest.NewRecorder()}
		sw := &sseWriter{w: rec, rc: http.NewResponseController(rec)}
		if err := sw.start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		big := make([]byte, 1<<20) // max_body's default
		if err := sw.write(big); err != nil {
			t.Fatal(err)
		}
		w := rec.writes[len(rec.writes)-1]
		if left, want := w.deadline.Sub(w.at), writeTimeout+64*time.Second; left != want {
			t.Errorf("a 1 MiB write: deadline %v away, want %v (writeTimeout and 64 s at 16 KiB/s)", left, want)
		}
	})
}

// TestReconnectStream checks the answer to a stream request that came in
// as its engine closed (a reload): an event stream with a reconnect hint
// and nothing else, which an EventSource follows (another answer would end
// it for good); a WebSocket, not upgraded, 503 with Retry-After.
func TestReconnectStream(t *testing.T) {
	rec := httptest.NewRecorder()
	if err := reconnectStream(rec, deliverySSE); err != nil {
		t.Fatal(err)
	}
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "text/event-stream" ||
		!regexp.MustCompile(`^retry: \d+\n\n$`).MatchString(rec.Body.String()) {
		t.Errorf("SSE: got %d %q %q, want 200, text/event-stream, a retry hint alone", rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	rec = httptest.NewRecorder()
	err := reconnectStream(rec, deliveryWebSocket)
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" {
		t.Errorf("WebSocket: got %v with Retry-After %q, want a 503 handler error with Retry-After", err, rec.Header().Get("Retry-After"))
	}
}

// deadlineConn is a net.Conn that records its write deadlines.
type deadlineConn struct {
	net.Conn
	deadlines []time.Time
}

func (c *deadlineConn) SetWriteDeadline(t time.Time) error {
	c.deadlines = append(c.deadlines, t)
	return nil
}

// TestWebSocketWriteDeadline checks that a WebSocket's writes run under a
// deadline on its connection (not a context of their own), moved as an
// event stream's is: for a big message at once, for small ones only when
// half of writeTimeout has passed.
func TestWebSocketWriteDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		conn := &deadlineConn{}
		ws := &wsWriter{netConn: conn}
		start := time.Now()
		ws.moveDeadline(100)
		time.Sleep(time.Second)
		ws.moveDeadline(100) // within the first deadline's time
		ws.moveDeadline(1 << 20)
		time.Sleep(70 * time.Second)
		ws.moveDeadline(0) // a ping after a long quiet
		want := []time.Time{
			start.Add(writeBudget(100)),
			start.Add(time.Second + writeBudget(1<<20)),
			start.Add(71*time.Second + writeBudget(0)),
		}
		if !slices.Equal(conn.deadlines, want) {
			t.Errorf("deadlines set: %v, want %v", conn.deadlines, want)
		}
	})
}
