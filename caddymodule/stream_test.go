// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

// deadlineRecorder is a response writer that records, for every write, the
// write deadline in force.
type deadlineRecorder struct {
	*httptest.ResponseRecorder
	deadline time.Time
	set      int
	writes   []deadlineAt
}

type deadlineAt struct{ at, deadline time.Time }

func (d *deadlineRecorder) SetWriteDeadline(t time.Time) error {
	d.deadline = t
	d.set++
	return nil
}

func (d *deadlineRecorder) Write(p []byte) (int, error) {
	d.writes = append(d.writes, deadlineAt{time.Now(), d.deadline})
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
			if left := w.deadline.Sub(w.at); left < writeTimeout/2 || left > writeTimeout {
				t.Errorf("write %d: deadline %v away, want between %v and %v", i, left, writeTimeout/2, writeTimeout)
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
			if left := w.deadline.Sub(w.at); left != writeTimeout {
				t.Errorf("write %d: deadline %v away, want %v", i, left, writeTimeout)
			}
		}
		if len(rec.writes) != 3 {
			t.Errorf("got %d writes, want 3", len(rec.writes))
		}
	})
}
