// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"bytes"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"strconv"
	"time"
)

// errBodyTooLarge is what Recorder.Write returns past the size limit, so
// that the handler writing the response stops.
var errBodyTooLarge = errors.New("longpoll: response body over the size limit")

// Recorder is an http.ResponseWriter that captures a response for a
// Snapshot, holding at most a given number of body bytes. It is for one
// response, written by one goroutine.
type Recorder struct {
	header      http.Header
	status      int
	wroteHeader bool
	body        bytes.Buffer
	maxBody     int64
	tooLarge    bool
	errorStatus bool // the status was reported as an error, not written
	head        bool // the response to a HEAD request
	private     bool // the response to one client's own request

	passOn http.ResponseWriter // where a body over the limit goes
	passed bool                // the response went on to passOn
}

// NewRecorder returns a Recorder that holds at most maxBody body bytes.
func NewRecorder(maxBody int64) *Recorder {
	return &Recorder{header: make(http.Header), status: http.StatusOK, maxBody: maxBody}
}

// Header implements http.ResponseWriter.
func (r *Recorder) Header() http.Header { return r.header }

// WriteHeader implements http.ResponseWriter. Informational responses other
// than 101 are ignored, as a client would not keep them either.
func (r *Recorder) WriteHeader(code int) {
	if r.wroteHeader || (code >= 100 && code < 200 && code != http.StatusSwitchingProtocols) {
		return
	}
	r.status, r.wroteHeader = code, true
}

// Write implements http.ResponseWriter. Past the size limit it returns an
// error, so that the writer stops, and the response is not shareable; or,
// with PassOn, it passes the response on.
func (r *Recorder) Write(p []byte) (int, error) {
	r.wroteHeader = true
	if r.passed {
		return r.passOn.Write(p)
	}
	if r.tooLarge || int64(r.body.Len())+int64(len(p)) > r.maxBody {
		r.tooLarge = true
		if r.passOn != nil {
			return r.passBody(p)
		}
		return 0, errBodyTooLarge
	}
	return r.body.Write(p)
}

// passBody writes the response so far (its header and the body held) to
// the PassOn writer, then p, and sends the rest of the body there too.
func (r *Recorder) passBody(p []byte) (int, error) {
	r.passed = true
	dst := r.passOn.Header()
	for k, v := range r.header {
		dst[k] = v
	}
	r.passOn.WriteHeader(r.status)
	if _, err := r.passOn.Write(r.body.Bytes()); err != nil {
		return 0, err
	}
	r.body = bytes.Buffer{}
	return r.passOn.Write(p)
}

// Flush implements http.Flusher: everything is held until the end anyway,
// but a response passed on is flushed.
func (r *Recorder) Flush() {
	if r.passed {
		_ = http.NewResponseController(r.passOn).Flush()
	}
}

// Private makes the recorder take the response to one client's own
// request, for that client only: its snapshot may set cookies (see
// Snapshot.Private).
func (r *Recorder) Private() { r.private = true }

// PassOn makes the recorder, past its size limit, pass the response on to
// w rather than refuse it: the status, the header and the bytes held so
// far are written to w, and the rest of the body goes straight there, so
// that no more than the limit is ever held. It is for a response meant for
// one client, whose ResponseWriter w is. Passed then reports true, and
// Result returns an error.
func (r *Recorder) PassOn(w http.ResponseWriter) { r.passOn = w }

// Passed reports whether the response went on to the PassOn writer.
func (r *Recorder) Passed() bool { return r.passed }

// Started reports whether the response's header or body was written.
func (r *Recorder) Started() bool { return r.wroteHeader }

// ForHead makes the recorder take the response to a HEAD request: the
// snapshot has no body and keeps the upstream's Content-Length (see
// Snapshot.Head).
func (r *Recorder) ForHead() { r.head = true }

// ErrorStatus records a status that the handler reported as an error
// instead of writing a response (Caddy's file_server answers a missing file
// with a 404 error, for one), for a response that was not started: the
// snapshot has that status, the headers set so far and no body, and its
// ErrorStatus field set, so that the adapter answers it as an error too.
func (r *Recorder) ErrorStatus(code int) {
	if r.wroteHeader {
		return
	}
	r.status, r.wroteHeader, r.errorStatus = code, true, true
}

// Result turns the recorded response into a Snapshot. reqHeader is the poll
// request's header (for Vary); prev is the watch's current snapshot, which is
// returned as is when the upstream answered 304 Not Modified, and whose body is
// reused when the representation is the same. Errors are *UpstreamError for responses that
// are failures rather than representations (5xx, 429, 408), or wrap
// ErrUncacheable for responses that cannot be shared (too large, streamed,
// setting cookies).
func (r *Recorder) Result(reqHeader http.Header, prev *Snapshot) (*Snapshot, error) {
	if r.tooLarge {
		return nil, fmt.Errorf("%w: its body is over %d bytes", ErrUncacheable, r.maxBody)
	}
	if r.status == http.StatusSwitchingProtocols {
		return nil, fmt.Errorf("%w: it switches protocols", ErrUncacheable)
	}
	if mt, _, _ := mime.ParseMediaType(r.header.Get("Content-Type")); mt == "text/event-stream" {
		return nil, fmt.Errorf("%w: it is an event stream", ErrUncacheable)
	}
	switch {
	case r.status == http.StatusNotModified && prev != nil:
		return prev, nil
	case r.status == http.StatusNotModified:
		return nil, &UpstreamError{Status: r.status, Err: errors.New("304 Not Modified to an unconditional poll")}
	case r.status >= 500 || r.status == http.StatusTooManyRequests || r.status == http.StatusRequestTimeout:
		return nil, &UpstreamError{Status: r.status, RetryAfter: ParseRetryAfter(r.header.Get("Retry-After"), time.Now())}
	}
	kind := snapshotKind{errorStatus: r.errorStatus, head: r.head, private: r.private}
	s, err := newSnapshot(r.status, kind, r.header, r.body.Bytes(), reqHeader)
	if err != nil {
		return nil, err
	}
	r.header = nil
	if prev != nil && prev.ETag == s.ETag {
		// Same representation: keep the body already held, take the new
		// upstream validators so that the next poll stays conditional.
		s.Body = prev.Body
		return s, nil
	}
	s.Body = bytes.Clone(s.Body) // exact size: the buffer may have grown past it
	if s.Body == nil {
		s.Body = []byte{}
	}
	return s, nil
}

// ParseRetryAfter reads a Retry-After value (delta-seconds or an HTTP date)
// as a delay from now. It returns 0 for an empty or invalid value.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseUint(v, 10, 31); err == nil {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// TooLarge reports whether the body went over the size limit.
func (r *Recorder) TooLarge() bool { return r.tooLarge }
