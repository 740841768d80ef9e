// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// record plays a response into a new Recorder: header fields, status (0 for
// none) and body chunks. It returns the first Write error.
func record(maxBody int64, header http.Header, status int, chunks ...string) (*longpoll.Recorder, error) {
	r := longpoll.NewRecorder(maxBody)
	for k, v := range header {
		r.Header()[k] = v
	}
	if status != 0 {
		r.WriteHeader(status)
	}
	for _, c := range chunks {
		if _, err := r.Write([]byte(c)); err != nil {
			return r, err
		}
	}
	return r, nil
}

var textPlain = http.Header{"Content-Type": {"text/plain"}}

// The size limit bounds the memory a watch holds: past it, the writer is
// stopped and the response passes through instead of being shared.
func TestRecorderBodyOverLimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		chunks []string
	}{
		{name: "one write", chunks: []string{"hello"}},
		{name: "over in the second write", chunks: []string{"hel", "lo"}},
		{name: "write after the limit was hit", chunks: []string{"hello", "x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, err := record(4, textPlain.Clone(), 0, tt.chunks...)
			if err == nil {
				t.Fatalf("writes %q with max 4: no error, want one", tt.chunks)
			}
			if n, err := r.Write([]byte("x")); n != 0 || err == nil {
				t.Errorf("Write after the limit = %d, %v, want 0 and an error", n, err)
			}
			if !r.TooLarge() {
				t.Errorf("TooLarge() = false, want true")
			}
			s, err := r.Result(nil, nil)
			if !errors.Is(err, longpoll.ErrUncacheable) || s != nil {
				t.Errorf("Result() after writes %q with max 4 = %v, %v, want nil, ErrUncacheable", tt.chunks, s, err)
			}
		})
	}
}

// A body of exactly the limit is kept whole.
func TestRecorderBodyAtLimit(t *testing.T) {
	t.Parallel()
	r, err := record(4, textPlain.Clone(), 0, "he", "ll")
	if err != nil {
		t.Fatalf("writes of 4 bytes with max 4 = %v, want no error", err)
	}
	if r.TooLarge() {
		t.Errorf("TooLarge() = true, want false")
	}
	s, err := r.Result(nil, nil)
	if err != nil || string(s.Body) != "hell" {
		t.Fatalf("Result() = %v, %v, want body %q", s, err, "hell")
	}
}

// A 304 to a conditional poll means "what you have is current": the watch
// keeps its snapshot. Without a snapshot to keep, it is an upstream error,
// not an empty representation to give clients.
func TestRecorderNotModified(t *testing.T) {
	t.Parallel()
	prev := mustSnapshot(t, "v1")
	r, _ := record(1024, nil, http.StatusNotModified)
	if s, err := r.Result(nil, prev); err != nil || s != prev {
		t.Errorf("Result(prev) after 304 = %p, %v, want prev %p", s, err, prev)
	}

	r, _ = record(1024, nil, http.StatusNotModified)
	s, err := r.Result(nil, nil)
	var ue *longpoll.UpstreamError
	if !errors.As(err, &ue) || ue.Status != http.StatusNotModified || s != nil {
		t.Errorf("Result(nil) after 304 = %v, %v, want *UpstreamError with status 304", s, err)
	}
}

// Failure statuses must not be shared as representations (clients would
// get a cached 503); their Retry-After feeds the back-off.
func TestRecorderUpstreamErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		status     int
		retryAfter func(now time.Time) string
		want       time.Duration
	}{
		{name: "500", status: http.StatusInternalServerError},
		{name: "502", status: http.StatusBadGateway},
		{name: "503 seconds", status: http.StatusServiceUnavailable, retryAfter: func(time.Time) string { return "120" }, want: 2 * time.Minute},
		{name: "503 date", status: http.StatusServiceUnavailable, retryAfter: func(now time.Time) string {
			return now.Add(90 * time.Second).UTC().Format(http.TimeFormat)
		}, want: 90 * time.Second},
		{name: "429 seconds", status: http.StatusTooManyRequests, retryAfter: func(time.Time) string { return "7" }, want: 7 * time.Second},
		{name: "429 date in the past", status: http.StatusTooManyRequests, retryAfter: func(now time.Time) string {
			return now.Add(-time.Hour).UTC().Format(http.TimeFormat)
		}},
		{name: "408 invalid", status: http.StatusRequestTimeout, retryAfter: func(time.Time) string { return "soon" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) { // Result reads the clock for a Retry-After date
				h := textPlain.Clone()
				if tt.retryAfter != nil {
					h.Set("Retry-After", tt.retryAfter(time.Now()))
				}
				r, _ := record(1024, h, tt.status, "error page")
				s, err := r.Result(nil, mustSnapshot(t, "v1"))
				var ue *longpoll.UpstreamError
				if !errors.As(err, &ue) || s != nil {
					t.Fatalf("Result() after %d = %v, %v, want *UpstreamError", tt.status, s, err)
				}
				if ue.Status != tt.status || ue.RetryAfter != tt.want {
					t.Errorf("Result() after %d with Retry-After %q = status %d, RetryAfter %v, want %d, %v",
						tt.status, h.Get("Retry-After"), ue.Status, ue.RetryAfter, tt.status, tt.want)
				}
			})
		})
	}
}

// Statuses that are representations (a 404 is what the resource is now)
// are shared like a 200.
func TestRecorderClientErrorIsRepresentation(t *testing.T) {
	t.Parallel()
	for _, status := range []int{http.StatusNotFound, http.StatusGone, http.StatusForbidden} {
		r, _ := record(1024, textPlain.Clone(), status, "nope")
		s, err := r.Result(nil, nil)
		if err != nil || s.Status != status {
			t.Errorf("Result() after %d = %+v, %v, want a snapshot with status %d", status, s, err, status)
		}
	}
}

// ParseRetryAfter accepts both forms of RFC 9110 section 10.2.3 and
// ignores anything else rather than stalling a watch.
func TestParseRetryAfter(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		v    string
		want time.Duration
	}{
		{name: "empty", v: "", want: 0},
		{name: "seconds", v: "120", want: 2 * time.Minute},
		{name: "zero", v: "0", want: 0},
		{name: "negative", v: "-5", want: 0},
		{name: "fraction", v: "1.5", want: 0},
		{name: "overflow", v: "99999999999", want: 0},
		{name: "garbage", v: "soon", want: 0},
		{name: "date ahead", v: "Sun, 01 Mar 2026 12:01:30 GMT", want: 90 * time.Second},
		{name: "RFC 850 date ahead", v: "Sunday, 01-Mar-26 12:00:10 GMT", want: 10 * time.Second},
		{name: "date now", v: "Sun, 01 Mar 2026 12:00:00 GMT", want: 0},
		{name: "date past", v: "Sun, 01 Mar 2026 11:00:00 GMT", want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := longpoll.ParseRetryAfter(tt.v, now); got != tt.want {
				t.Errorf("ParseRetryAfter(%q, %v) = %v, want %v", tt.v, now, got, tt.want)
			}
		})
	}
}

// Streams never end, and switching protocols leaves HTTP: neither can be
// held and shared.
func TestRecorderStreamsUncacheable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		contentType string
		status      int
	}{
		{name: "event stream", contentType: "text/event-stream"},
		{name: "event stream with parameters", contentType: "text/event-stream; charset=utf-8"},
		{name: "event stream upper case", contentType: "Text/Event-Stream"},
		{name: "switching protocols", contentType: "text/plain", status: http.StatusSwitchingProtocols},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r, _ := record(1024, http.Header{"Content-Type": {tt.contentType}}, tt.status, "data: 1\n\n")
			s, err := r.Result(nil, nil)
			if !errors.Is(err, longpoll.ErrUncacheable) || s != nil {
				t.Errorf("Result() for Content-Type %q status %d = %v, %v, want nil, ErrUncacheable", tt.contentType, tt.status, s, err)
			}
		})
	}
}

// NewSnapshot's rules apply to recorded responses too.
func TestRecorderSetCookieUncacheable(t *testing.T) {
	t.Parallel()
	r, _ := record(1024, http.Header{"Content-Type": {"text/plain"}, "Set-Cookie": {"a=1"}}, 0, "v1")
	if s, err := r.Result(nil, nil); !errors.Is(err, longpoll.ErrUncacheable) || s != nil {
		t.Errorf("Result() with Set-Cookie = %v, %v, want nil, ErrUncacheable", s, err)
	}
}

// An unchanged representation must not cost a second copy of the body per
// poll, but must carry the upstream's new validators so that the next poll
// stays conditional.
func TestRecorderSameETagReusesBody(t *testing.T) {
	t.Parallel()
	prev, err := longpoll.NewSnapshot(http.StatusOK, http.Header{
		"Content-Type":  {"text/plain"},
		"Last-Modified": {"Mon, 02 Jan 2006 15:04:05 GMT"},
		"Etag":          {`"up-1"`},
	}, []byte("same body"), nil)
	if err != nil {
		t.Fatalf("NewSnapshot = %v", err)
	}
	r, _ := record(1024, http.Header{
		"Content-Type":  {"text/plain"},
		"Last-Modified": {"Tue, 03 Jan 2006 15:04:05 GMT"},
	}, http.StatusOK, "same ", "body")
	s, err := r.Result(nil, prev)
	if err != nil {
		t.Fatalf("Result(prev) = %v, want no error", err)
	}
	if s.ETag != prev.ETag {
		t.Fatalf("same body: ETag %s, want prev's %s", s.ETag, prev.ETag)
	}
	if &s.Body[0] != &prev.Body[0] || len(s.Body) != len(prev.Body) {
		t.Errorf("same body: Body %p (len %d), want prev's array %p (len %d)", &s.Body[0], len(s.Body), &prev.Body[0], len(prev.Body))
	}
	if s.LastModified != "Tue, 03 Jan 2006 15:04:05 GMT" || s.UpstreamETag != "" {
		t.Errorf("same body: validators %q, %q, want the new %q and no ETag",
			s.LastModified, s.UpstreamETag, "Tue, 03 Jan 2006 15:04:05 GMT")
	}
	if s == prev {
		t.Errorf("same body: got prev itself, want a new snapshot with the new validators")
	}
}

// A changed representation gets its own body, sized to it rather than to
// the recorder's buffer, which grows by doubling: a watch must not hold up
// to twice the memory its snapshot needs.
func TestRecorderChangedBodyIsCopied(t *testing.T) {
	t.Parallel()
	const size = 100_000
	prev := mustSnapshot(t, "v1")
	chunk := strings.Repeat("x", 1000)
	chunks := make([]string, size/len(chunk))
	for i := range chunks {
		chunks[i] = chunk
	}
	r, err := record(1<<20, textPlain.Clone(), http.StatusOK, chunks...)
	if err != nil {
		t.Fatalf("writing %d bytes = %v, want no error", size, err)
	}
	s, err := r.Result(nil, prev)
	if err != nil {
		t.Fatalf("Result(prev) = %v, want no error", err)
	}
	if len(s.Body) != size || s.ETag == prev.ETag {
		t.Fatalf("changed body: got %d bytes with ETag %s, want %d with an ETag other than %s", len(s.Body), s.ETag, size, prev.ETag)
	}
	if limit := size + size/8; cap(s.Body) > limit {
		t.Errorf("%d-byte body written in %d-byte chunks: cap %d, want at most %d (a copy sized to the body)",
			size, len(chunk), cap(s.Body), limit)
	}
}

// An empty 200 is a representation, with a non-nil empty body.
func TestRecorderEmptyBody(t *testing.T) {
	t.Parallel()
	r, _ := record(1024, textPlain.Clone(), http.StatusNoContent)
	s, err := r.Result(nil, nil)
	if err != nil || s.Status != http.StatusNoContent || s.Body == nil || len(s.Body) != 0 {
		t.Fatalf("Result() of an empty 204 = %+v, %v, want status 204 and a non-nil empty body", s, err)
	}
	if got := s.Header.Get("Content-Length"); got != "" {
		t.Errorf("Content-Length = %q, want none (a delivery adds its own)", got)
	}
}

// Informational responses (103 Early Hints) come before the real one and
// must not be taken for it; only the first final status counts, and a body
// written without a status is a 200.
func TestRecorderStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name          string
		before, after []int // WriteHeader calls before and after the body
		want          int
	}{
		{name: "default", want: http.StatusOK},
		{name: "103 ignored", before: []int{http.StatusEarlyHints, http.StatusCreated}, want: http.StatusCreated},
		{name: "100 ignored", before: []int{http.StatusContinue}, want: http.StatusOK},
		{name: "first final status wins", before: []int{http.StatusAccepted, http.StatusNotFound}, want: http.StatusAccepted},
		{name: "status after the body ignored", after: []int{http.StatusTeapot}, want: http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := longpoll.NewRecorder(1024)
			r.Header().Set("Content-Type", "text/plain")
			for _, st := range tt.before {
				r.WriteHeader(st)
			}
			if _, err := r.Write([]byte("x")); err != nil {
				t.Fatalf("Write = %v, want no error", err)
			}
			for _, st := range tt.after {
				r.WriteHeader(st)
			}
			s, err := r.Result(nil, nil)
			if err != nil || s.Status != tt.want {
				t.Errorf("WriteHeader %v, Write, WriteHeader %v: Result() = %+v, %v, want status %d", tt.before, tt.after, s, err, tt.want)
			}
		})
	}
}

// Started tells the caller whether the handler answered at all; an
// informational status alone does not count.
func TestRecorderStarted(t *testing.T) {
	t.Parallel()
	r := longpoll.NewRecorder(1024)
	if r.Started() {
		t.Errorf("new Recorder: Started() = true, want false")
	}
	r.WriteHeader(http.StatusEarlyHints)
	if r.Started() {
		t.Errorf("after 103: Started() = true, want false")
	}
	r.WriteHeader(http.StatusOK)
	if !r.Started() {
		t.Errorf("after 200: Started() = false, want true")
	}
	w := longpoll.NewRecorder(1024)
	w.Flush() // everything is held anyway: a no-op
	if w.Started() {
		t.Errorf("after Flush: Started() = true, want false")
	}
	if _, err := w.Write(nil); err != nil {
		t.Fatalf("Write(nil) = %v, want no error", err)
	}
	if !w.Started() {
		t.Errorf("after Write: Started() = false, want true")
	}
}

// A private response over the size limit goes on to its client whole,
// header first, and no more than the limit is ever held.
func TestRecorderPassOn(t *testing.T) {
	t.Parallel()
	rec := longpoll.NewRecorder(4)
	rec.Private()
	dst := httptest.NewRecorder()
	rec.PassOn(dst)
	rec.Header().Set("Set-Cookie", "session=1")
	rec.Header().Set("Content-Type", "text/plain")
	rec.WriteHeader(http.StatusAccepted)
	for _, c := range []string{"abc", "defg", "hij"} {
		if n, err := rec.Write([]byte(c)); n != len(c) || err != nil {
			t.Fatalf("Write(%q) = %d, %v, want %d, nil", c, n, err, len(c))
		}
	}
	rec.Flush()
	if !rec.Passed() {
		t.Fatal("Passed() = false after a body over the limit, want true")
	}
	if dst.Code != http.StatusAccepted || dst.Body.String() != "abcdefghij" || dst.Header().Get("Set-Cookie") != "session=1" {
		t.Errorf("passed on: %d %q cookie %q, want 202 \"abcdefghij\" cookie \"session=1\"", dst.Code, dst.Body.String(), dst.Header().Get("Set-Cookie"))
	}
	if !dst.Flushed {
		t.Error("Flush after passing on did not flush the client's writer")
	}
	if _, err := rec.Result(nil, nil); !errors.Is(err, longpoll.ErrUncacheable) {
		t.Errorf("Result after passing on: %v, want ErrUncacheable", err)
	}

	// within the limit, nothing reaches the client
	small := longpoll.NewRecorder(4)
	dst = httptest.NewRecorder()
	small.PassOn(dst)
	_, _ = small.Write([]byte("abcd"))
	if small.Passed() || dst.Body.Len() != 0 || dst.Flushed {
		t.Errorf("a body within the limit was passed on (%q)", dst.Body.String())
	}
}

// A private recorder keeps a response that sets cookies, and its ETag is
// that of the same content without them: the cookie of each response
// changes nothing the client compares.
func TestRecorderPrivate(t *testing.T) {
	t.Parallel()
	var etags []string
	for i, cookie := range []string{"session=1", "session=2"} {
		rec := longpoll.NewRecorder(1 << 10)
		rec.Private()
		rec.Header().Set("Set-Cookie", cookie)
		rec.Header().Set("Vary", "*")
		rec.Header().Set("Content-Type", "application/json")
		_, _ = rec.Write([]byte(`{"a":1}`))
		s, err := rec.Result(http.Header{}, nil)
		if err != nil {
			t.Fatalf("response %d: %v, want a private snapshot", i, err)
		}
		if !s.Private || s.Header.Get("Set-Cookie") != cookie {
			t.Errorf("response %d: Private %v, Set-Cookie %q, want true, %q", i, s.Private, s.Header.Get("Set-Cookie"), cookie)
		}
		etags = append(etags, s.ETag)
	}
	shared, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"application/json"}}, []byte(`{"a":1}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	if etags[0] != etags[1] || etags[0] != shared.ETag {
		t.Errorf("ETags %q and shared %q, want one: cookies are not content", etags, shared.ETag)
	}
	// not private: refused
	rec := longpoll.NewRecorder(1 << 10)
	rec.Header().Set("Set-Cookie", "session=1")
	if _, err := rec.Result(http.Header{}, nil); !errors.Is(err, longpoll.ErrUncacheable) {
		t.Errorf("a shared recorder's response with Set-Cookie: %v, want ErrUncacheable", err)
	}
}
