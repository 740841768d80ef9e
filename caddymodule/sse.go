// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"context"
	"math/rand/v2"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// Server-Sent Events: a GET that accepts text/event-stream gets one
// response carrying every version of the resource as an event.
//
//	retry: 3412                      reconnect hint, with jitter
//
//	id: y89PCoXva9PuEz7Mq07TSyx9     the version's ETag, without quotes
//	data: {"order": 42,              the body, a data line per line
//	data:  "status": "shipped"}
//
//	id: 4cX8YfxFJtjMkDYC6eDtxZjg
//	event: http-404                  a status other than 2xx names the event
//	data: no such order
//
//	event: upstream-error            the upstream fails (once per run)
//	data: {"retry_after": 5}
//
//	: heartbeat                      nothing sent for a heartbeat

// wantsSSE reports whether r accepts an event stream.
func wantsSSE(r *http.Request) bool {
	for _, line := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(line, ",") {
			if mt, _, err := mime.ParseMediaType(strings.TrimSpace(part)); err == nil && mt == "text/event-stream" {
				return true
			}
		}
	}
	return false
}

// openSSE opens the event stream of an admitted request that can be
// streamed, its head to be written by start.
func (h *Handler) openSSE(w http.ResponseWriter, r *http.Request,
	ticket longpoll.Ticket, sub *longpoll.Subscription, have []string,
) *stream {
	setSSEHeader(w.Header(), h.CompressStreams)
	sw := &sseWriter{w: w, rc: http.NewResponseController(w), ctx: r.Context(), h2: r.ProtoMajor == 2}
	return h.newStream(r.Context(), sub, ticket, sw, r, have, deliverySSE, hardWriteEnd(r))
}

// setSSEHeader sets the header of an event stream. no-transform: encode
// leaves the stream alone (a compressor costs about 1 MiB a stream),
// unless the operator asked for compression; encode then flushes its
// compressor with each event.
func setSSEHeader(hdr http.Header, compress bool) {
	hdr.Set("Content-Type", "text/event-stream")
	if compress {
		hdr.Set("Cache-Control", "no-cache")
	} else {
		hdr.Set("Cache-Control", "no-cache, no-transform")
	}
	hdr.Add("Vary", "Accept")
	hdr.Set("X-Accel-Buffering", "no") // nginx and others in front: do not buffer
	hdr.Del("Content-Length")
}

// retryHint is an event stream's reconnect hint, with jitter, so that
// clients cut off together do not come back together.
func retryHint() []byte {
	return []byte("retry: " + strconv.Itoa(1000+rand.IntN(4000)) + "\n\n")
}

// streamHave returns the version a stream's client has: Last-Event-ID (an
// EventSource that reconnects sends the last id it got), the etag query
// parameter (with query_params), or If-None-Match (but "*"); quoted or not. It
// removes the module's query parameters from r, as for a long-poll, so that
// the key is the same.
func (h *Handler) streamHave(r *http.Request) []string {
	var etag string
	if qp := h.QueryParams; qp != nil && r.URL.RawQuery != "" {
		_, _, etag = stripQueryParams(r, qp)
	}
	switch id := r.Header.Get("Last-Event-ID"); {
	case id != "":
		return []string{id}
	case etag != "":
		return []string{longpoll.QueryETag(etag)}
	}
	inm := r.Header.Values("If-None-Match")
	if len(inm) == 1 && strings.TrimSpace(inm[0]) == "*" {
		return nil // any version: a stream starts with the current one
	}
	return inm
}

// sseWriter writes a stream's events.
type sseWriter struct {
	w        http.ResponseWriter
	rc       *http.ResponseController
	ctx      context.Context
	deadline writeDeadline
	h2       bool // HTTP/2: no deadline stays between writes
}

// write writes p and flushes it, within the write deadline. The deadline
// is the connection's: Caddy's write_idle_timeout, when on, keeps it as
// the ceiling of its own.
//
// Over HTTP/1 and HTTP/3 a deadline left between writes is checked only
// by the next write, so it stays, moved only when half of it has passed.
// Over HTTP/2 it is a timer that resets the stream when it fires, write
// or not: each write sets its own and clears it after.
func (s *sseWriter) write(p []byte) error {
	if s.h2 {
		_ = s.rc.SetWriteDeadline(time.Now().Add(writeBudget(len(p))))
		defer func() { _ = s.rc.SetWriteDeadline(time.Time{}) }()
	} else if d, moved := s.deadline.next(time.Now(), len(p)); moved {
		_ = s.rc.SetWriteDeadline(d)
	}
	if _, err := s.w.Write(p); err != nil {
		return err
	}
	return s.rc.Flush()
}

// start writes the stream's head: its status and header, and a reconnect
// hint.
func (s *sseWriter) start() error {
	s.w.WriteHeader(http.StatusOK)
	return s.write(retryHint())
}

func (s *sseWriter) send(snap *longpoll.Snapshot) error { return s.write(sseEvent(snap)) }

func (s *sseWriter) sendDelta(d *delta) error { return s.write(d.sse) }

func (s *sseWriter) failing(f *longpoll.Failure) error {
	return s.write([]byte("event: upstream-error\ndata: {\"retry_after\": " +
		strconv.Itoa(max(1, int(f.RetryAfter.Seconds()+0.5))) + "}\n\n"))
}

var heartbeatComment = []byte(": heartbeat\n\n")

// finish gives what net/http writes once the handler has returned (the
// end of the chunked response) a deadline of its own.
func (s *sseWriter) finish(string) { _ = s.rc.SetWriteDeadline(time.Now().Add(writeTimeout)) }

func (s *sseWriter) heartbeat() error { return s.write(heartbeatComment) }

func (s *sseWriter) gone() (<-chan struct{}, func() string) {
	return s.ctx.Done(), func() string { return "" }
}

// sseEventKey is the key of a snapshot's event (Snapshot.Derived).
type sseEventKey struct{}

// sseEvent returns the event of a snapshot, made once and shared by every
// stream of the watch.
func sseEvent(s *longpoll.Snapshot) []byte {
	return s.Derived(sseEventKey{}, makeSSEEvent).([]byte)
}

func makeSSEEvent(s *longpoll.Snapshot) any {
	var b bytes.Buffer
	b.Grow(len(s.Body) + 64)
	b.WriteString("id: ")
	b.WriteString(strings.Trim(s.ETag, `"`))
	b.WriteByte('\n')
	if s.Status < 200 || s.Status > 299 {
		// a 2xx is a default event, for onmessage; other statuses are named
		b.WriteString("event: http-")
		b.WriteString(strconv.Itoa(s.Status))
		b.WriteByte('\n')
	}
	// The event stream format ends a line at CR LF, LF or CR: a body's
	// line breaks arrive as LF.
	body := bytes.ReplaceAll(s.Body, []byte("\r\n"), []byte("\n"))
	body = bytes.ReplaceAll(body, []byte("\r"), []byte("\n"))
	for line := range bytes.SplitSeq(body, []byte("\n")) {
		b.WriteString("data: ")
		b.Write(line)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	return b.Bytes()
}
