// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"bytes"
	"errors"
	"net/http"
	"reflect"
	"strings"
	"testing"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// A snapshot that leaves the process comes back the same: the same ETag,
// status, headers, body, validators and Vary fields.
func TestSnapshotRoundTrip(t *testing.T) {
	t.Parallel()
	header := http.Header{
		"Content-Type":  {"application/json"},
		"Etag":          {`"up-1"`},
		"Cache-Control": {"max-age=0"},
		"Vary":          {"Accept-Language"},
	}
	s, err := longpoll.NewSnapshot(http.StatusOK, header, []byte(`{"a":1}`), http.Header{"Accept-Language": {"fr"}})
	if err != nil {
		t.Fatal(err)
	}
	head := longpoll.NewRecorder(1 << 10)
	head.ForHead()
	head.Header().Set("Content-Length", "1234")
	head.Header().Set("Etag", `"up-2"`)
	hs, err := head.Result(http.Header{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*longpoll.Snapshot{"GET": s, "HEAD": hs} {
		meta, err := s.MarshalMeta()
		if err != nil {
			t.Fatal(err)
		}
		got, err := longpoll.RestoreSnapshot(meta, bytes.Clone(s.Body))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got.ETag != s.ETag || got.Status != s.Status || !bytes.Equal(got.Body, s.Body) || got.Head != s.Head ||
			got.UpstreamETag != s.UpstreamETag || !reflect.DeepEqual(got.Header, s.Header) || len(got.Vary) != len(s.Vary) {
			t.Errorf("%s: restored %+v, want %+v", name, got, s)
		}
		if !got.VaryMatches(http.Header{"Accept-Language": {"fr"}}) || (name == "GET" && got.VaryMatches(http.Header{"Accept-Language": {"de"}})) {
			t.Errorf("%s: the restored Vary fields do not match as the original's", name)
		}
	}
}

// A snapshot whose parts do not agree is refused, never served: a body
// changed in the store, an ETag of another content, metadata that does not
// parse, or a private snapshot on its way out.
func TestSnapshotRestoreRefuses(t *testing.T) {
	t.Parallel()
	s, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := s.MarshalMeta()
	for name, tc := range map[string]struct{ meta, body string }{
		"body changed":    {string(meta), "hellO"},
		"ETag replaced":   {strings.Replace(string(meta), s.ETag[1:len(s.ETag)-1], "AAAAAAAAAAAAAAAAAAAAAAAA", 1), "hello"},
		"not JSON":        {"{", "hello"},
		"no status":       {`{"etag": ` + `"\"x\""}`, "hello"},
		"content changed": {strings.Replace(string(meta), "text/plain", "text/html", 1), "hello"},
	} {
		if _, err := longpoll.RestoreSnapshot([]byte(tc.meta), []byte(tc.body)); err == nil {
			t.Errorf("%s: restored, want an error", name)
		}
	}
	rec := longpoll.NewRecorder(1 << 10)
	rec.Private()
	rec.Header().Set("Set-Cookie", "session=1")
	private, err := rec.Result(http.Header{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := private.MarshalMeta(); !errors.Is(err, longpoll.ErrNotShareable) {
		t.Errorf("a private snapshot: %v, want ErrNotShareable", err)
	}
}

// The values of the request headers a representation varies on never
// leave the process in clear: a Vary on Authorization carries a token.
func TestSnapshotMetaHidesVaryValues(t *testing.T) {
	t.Parallel()
	s, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Vary": {"Authorization"}}, []byte("mine"),
		http.Header{"Authorization": {"Bearer secret-token"}})
	if err != nil {
		t.Fatal(err)
	}
	meta, _ := s.MarshalMeta()
	if strings.Contains(string(meta), "secret-token") {
		t.Fatalf("metadata %s holds the credential", meta)
	}
	got, err := longpoll.RestoreSnapshot(meta, []byte("mine"))
	if err != nil {
		t.Fatal(err)
	}
	if !got.VaryMatches(http.Header{"Authorization": {"Bearer secret-token"}}) || got.VaryMatches(http.Header{"Authorization": {"Bearer other"}}) {
		t.Error("the restored snapshot must match the same token only")
	}
}
