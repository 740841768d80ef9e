// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"errors"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// response is the input of NewSnapshot.
type response struct {
	status int
	header http.Header
	body   string
}

func (r response) snapshot(tb testing.TB) *longpoll.Snapshot {
	tb.Helper()
	s, err := longpoll.NewSnapshot(r.status, r.header.Clone(), []byte(r.body), nil)
	if err != nil {
		tb.Fatalf("NewSnapshot(%d, %v, %q) = %v, want no error", r.status, r.header, r.body, err)
	}
	return s
}

var base = response{
	status: http.StatusOK,
	header: http.Header{"Content-Type": {"text/plain"}, "Cache-Control": {"no-cache"}, "X-A": {"1"}},
	body:   "v1",
}

// with returns a copy of r with header field k set to v (deleted if v is
// empty).
func (r response) with(k, v string) response {
	r.header = r.header.Clone()
	if v == "" {
		r.header.Del(k)
	} else {
		r.header.Set(k, v)
	}
	return r
}

// The ETag is how clients and every instance tell versions apart: the same
// representation must always get the same ETag (or every poll would look
// like a change), and a different one a different ETag (or changes would
// be missed).
func TestSnapshotETag(t *testing.T) {
	t.Parallel()
	reordered := response{status: base.status, body: base.body, header: http.Header{}}
	reordered.header.Set("X-A", "1")
	reordered.header.Set("Cache-Control", "no-cache")
	reordered.header.Set("Content-Type", "text/plain")
	withStatus := base
	withStatus.status = http.StatusCreated
	withBody := base
	withBody.body = "v2"
	tests := []struct {
		name     string
		resp     response
		wantSame bool
	}{
		{name: "same input", resp: base, wantSame: true},
		{name: "headers added in another order", resp: reordered, wantSame: true},
		{name: "with Date", resp: base.with("Date", "Mon, 02 Jan 2006 15:04:05 GMT"), wantSame: true},
		{name: "with X-Request-Id", resp: base.with("X-Request-Id", "4f2a"), wantSame: true},
		{name: "with upstream ETag", resp: base.with("Etag", `"upstream"`), wantSame: true},
		{name: "with Content-Length", resp: base.with("Content-Length", "2"), wantSame: true},
		{name: "with Age", resp: base.with("Age", "12"), wantSame: true},
		{name: "unrelated header changes", resp: base.with("X-A", "2"), wantSame: true},
		{name: "other body", resp: withBody, wantSame: false},
		{name: "other status", resp: withStatus, wantSame: false},
		{name: "other Content-Type", resp: base.with("Content-Type", "application/json"), wantSame: false},
		{name: "no Content-Type", resp: base.with("Content-Type", ""), wantSame: false},
		{name: "with Content-Encoding", resp: base.with("Content-Encoding", "gzip"), wantSame: false},
		{name: "with Content-Language", resp: base.with("Content-Language", "fr"), wantSame: false},
		{name: "with Location", resp: base.with("Location", "/elsewhere"), wantSame: false},
	}
	want := base.snapshot(t).ETag
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := tt.resp.snapshot(t).ETag
			if same := got == want; same != tt.wantSame {
				t.Errorf("ETag of %d %v %q = %s, ETag of %d %v %q = %s: same %v, want %v",
					tt.resp.status, tt.resp.header, tt.resp.body, got, base.status, base.header, base.body, want, same, tt.wantSame)
			}
		})
	}
}

// The ETag is a strong, quoted validator clients send back verbatim.
func TestSnapshotETagFormat(t *testing.T) {
	t.Parallel()
	s := base.snapshot(t)
	if !regexp.MustCompile(`^"[A-Za-z0-9_-]{24}"$`).MatchString(s.ETag) {
		t.Errorf("ETag = %s, want a quoted strong tag of 24 base64url characters", s.ETag)
	}

}

// Responses that are per-client (cookies), unbounded in time (trailers) or
// that vary on everything must never be shared between clients.
func TestSnapshotUncacheable(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		resp response
	}{
		{name: "Set-Cookie", resp: base.with("Set-Cookie", "session=1")},
		{name: "Trailer", resp: base.with("Trailer", "X-Checksum")},
		{name: "Vary star", resp: base.with("Vary", "*")},
		{name: "Vary star in a list", resp: base.with("Vary", "Accept-Language, *")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := longpoll.NewSnapshot(tt.resp.status, tt.resp.header.Clone(), []byte(tt.resp.body), nil)
			if !errors.Is(err, longpoll.ErrUncacheable) || s != nil {
				t.Errorf("NewSnapshot(%v) = %v, %v, want nil, ErrUncacheable", tt.resp.header, s, err)
			}
		})
	}
}

// Vary fields are recorded with the poll request's values, so that a
// client whose values differ is not given a representation meant for
// another (a French page to a German reader).
func TestSnapshotVary(t *testing.T) {
	t.Parallel()
	h := http.Header{
		"Content-Type": {"text/plain"},
		"Vary":         {"accept-language, Accept-Encoding", "Prefer, X-Tenant"},
	}
	req := http.Header{"Accept-Language": {"fr", "en;q=0.5"}}
	s, err := longpoll.NewSnapshot(http.StatusOK, h, []byte("bonjour"), req)
	if err != nil {
		t.Fatalf("NewSnapshot = %v, want no error", err)
	}
	want := []longpoll.VaryField{
		{Name: "Accept-Language", Values: []string{"fr", "en;q=0.5"}},
		{Name: "X-Tenant", Values: nil},
	}
	if !slices.EqualFunc(s.Vary, want, func(a, b longpoll.VaryField) bool {
		return a.Name == b.Name && slices.Equal(a.Values, b.Values)
	}) {
		t.Errorf("Vary %q with request %v: got %+v, want %+v", h["Vary"], req, s.Vary, want)
	}
	req["Accept-Language"][0] = "de" // the request is the caller's: the snapshot keeps its own copy
	if got := s.Vary[0].Values[0]; got != "fr" {
		t.Errorf("after the request header changed: Vary value %q, want %q", got, "fr")
	}
	// The upstream's Vary names Prefer already: it must not be named twice.
	n := 0
	for _, line := range s.Header.Values("Vary") {
		for f := range strings.SplitSeq(line, ",") {
			if strings.EqualFold(strings.TrimSpace(f), "Prefer") {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("Header Vary = %q: Prefer named %d times, want once", s.Header.Values("Vary"), n)
	}
}

// VaryMatches is the check that keeps a representation from the clients it
// was not made for.
func TestVaryMatches(t *testing.T) {
	t.Parallel()
	h := http.Header{"Content-Type": {"text/plain"}, "Vary": {"Accept-Language, X-Tenant"}}
	s, err := longpoll.NewSnapshot(http.StatusOK, h, []byte("bonjour"), http.Header{"Accept-Language": {"fr"}})
	if err != nil {
		t.Fatalf("NewSnapshot = %v, want no error", err)
	}
	tests := []struct {
		name string
		req  http.Header
		want bool
	}{
		{name: "same values", req: http.Header{"Accept-Language": {"fr"}}, want: true},
		{name: "unrelated header differs", req: http.Header{"Accept-Language": {"fr"}, "Accept": {"text/html"}}, want: true},
		{name: "other value", req: http.Header{"Accept-Language": {"de"}}, want: false},
		{name: "extra value", req: http.Header{"Accept-Language": {"fr", "en"}}, want: false},
		{name: "missing", req: http.Header{}, want: false},
		{name: "field absent from the poll is present", req: http.Header{"Accept-Language": {"fr"}, "X-Tenant": {"a"}}, want: false},
		{name: "value case differs", req: http.Header{"Accept-Language": {"FR"}}, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := s.VaryMatches(tt.req); got != tt.want {
				t.Errorf("VaryMatches(%v) with Vary %+v = %v, want %v", tt.req, s.Vary, got, tt.want)
			}
		})
	}
	if plain := base.snapshot(t); !plain.VaryMatches(http.Header{"Accept-Language": {"de"}}) {
		t.Errorf("VaryMatches on a snapshot without Vary = false, want true")
	}
}

// Headers that the module recomputes (ETag, Content-Length) or that describe
// one connection or one moment (Date, hop-by-hop) must not be replayed to
// every client from the snapshot.
func TestSnapshotDropsHeaders(t *testing.T) {
	t.Parallel()
	h := http.Header{
		"Content-Type":      {"text/plain"},
		"Etag":              {`"upstream"`},
		"Content-Length":    {"999"},
		"Date":              {"Mon, 02 Jan 2006 15:04:05 GMT"},
		"Connection":        {"close"},
		"Keep-Alive":        {"timeout=5"},
		"Transfer-Encoding": {"chunked"},
		"Upgrade":           {"h2c"},
		"Cache-Control":     {"no-cache"},
	}
	s, err := longpoll.NewSnapshot(http.StatusOK, h, []byte("v1"), nil)
	if err != nil {
		t.Fatalf("NewSnapshot = %v, want no error", err)
	}
	for _, k := range []string{"Date", "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade"} {
		if v, ok := s.Header[k]; ok {
			t.Errorf("Header[%s] = %q, want it dropped", k, v)
		}
	}
	// The snapshot is neutral: the upstream's ETag and Content-Length are
	// gone, and each delivery adds its own.
	for _, k := range []string{"Etag", "Content-Length"} {
		if v, ok := s.Header[k]; ok {
			t.Errorf("Header[%s] = %q, want it dropped", k, v)
		}
	}
	if got := s.Header.Get("Cache-Control"); got != "no-cache" {
		t.Errorf("Header Cache-Control = %q, want %q kept", got, "no-cache")
	}
}

// The upstream's own validators make the next poll conditional (a cheap
// 304 instead of the full body); they must survive although the header
// they came in is replaced.
func TestSnapshotKeepsUpstreamValidators(t *testing.T) {
	t.Parallel()
	s := base.with("Etag", `W/"up-1"`).with("Last-Modified", "Mon, 02 Jan 2006 15:04:05 GMT").snapshot(t)
	if s.UpstreamETag != `W/"up-1"` {
		t.Errorf("UpstreamETag = %q, want %q", s.UpstreamETag, `W/"up-1"`)
	}
	// With an ETag, the next poll is conditional on it alone (If-None-Match
	// takes precedence over If-Modified-Since anyway).
	if s.LastModified != "" {
		t.Errorf("LastModified with an upstream ETag = %q, want none", s.LastModified)
	}
	if s.ETag == s.UpstreamETag {
		t.Errorf("ETag = UpstreamETag = %s, want the module's own", s.ETag)
	}
}

// A Last-Modified serves as the next poll's validator only when it is
// strong (RFC 9110, section 8.8.2.2): a second or more before the response's
// Date. Within that second a second change would hide behind a 304, as
// If-Modified-Since has a resolution of one second.
func TestSnapshotLastModifiedOnlyWhenStrong(t *testing.T) {
	t.Parallel()
	const lm = "Mon, 02 Jan 2006 15:04:05 GMT"
	tests := []struct {
		name, date, want string
	}{
		{"a second before Date", "Mon, 02 Jan 2006 15:04:06 GMT", lm},
		{"long before Date", "Tue, 03 Jan 2006 15:04:05 GMT", lm},
		{"same second as Date", "Mon, 02 Jan 2006 15:04:05 GMT", ""},
		{"no Date: compared with now", "", lm},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := base.with("Last-Modified", lm)
			if tt.date != "" {
				h = h.with("Date", tt.date)
			}
			if got := h.snapshot(t).LastModified; got != tt.want {
				t.Errorf("LastModified with Date %q = %q, want %q", tt.date, got, tt.want)
			}
		})
	}
	// Compared with the clock: in a bubble, so that no second boundary
	// passes between formatting the time and NewSnapshot reading it.
	synctest.Test(t, func(t *testing.T) {
		time.Sleep(1500 * time.Millisecond) // mid-second
		recent := time.Now().UTC().Format(http.TimeFormat)
		if got := base.with("Last-Modified", recent).snapshot(t).LastModified; got != "" {
			t.Errorf("LastModified %s without Date at %v = %q, want none", recent, time.Now().UTC(), got)
		}
		older := time.Now().Add(-time.Second).UTC().Format(http.TimeFormat)
		if got := base.with("Last-Modified", older).snapshot(t).LastModified; got != older {
			t.Errorf("LastModified %s without Date at %v = %q, want it kept", older, time.Now().UTC(), got)
		}
	})
}

// Every client's response shares the snapshot's header: a handler that
// appends to a value must get a new array, not write into the shared one.
func TestSnapshotHeaderValuesAreClipped(t *testing.T) {
	t.Parallel()
	vals := make([]string, 1, 8)
	vals[0] = "text/plain"
	s, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": vals, "Vary": {"Origin"}}, []byte("v1"), nil)
	if err != nil {
		t.Fatalf("NewSnapshot = %v, want no error", err)
	}
	for k, v := range s.Header {
		if len(v) != cap(v) {
			t.Errorf("Header[%s] has len %d cap %d, want them equal", k, len(v), cap(v))
		}
	}
}

// A Fetcher with no headers to pass may well hand NewSnapshot a nil header;
// that must not panic (in the poll it would fail every poll of the key).
func TestSnapshotNilHeader(t *testing.T) {
	t.Parallel()
	var (
		s   *longpoll.Snapshot
		err error
	)
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("NewSnapshot(200, nil, %q, nil) panicked: %v", "v1", r)
			}
		}()
		s, err = longpoll.NewSnapshot(http.StatusOK, nil, []byte("v1"), nil)
	}()
	if err != nil {
		t.Fatalf("NewSnapshot(200, nil, %q, nil) = %v, want no error", "v1", err)
	}
	if s.Header == nil || len(s.Header) != 0 {
		t.Errorf("Header = %v, want an empty, non-nil header", s.Header)
	}
}
