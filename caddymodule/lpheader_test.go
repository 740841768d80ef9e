// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"net/http"
	"slices"
	"testing"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// A snapshot is neutral; the long-poll answer adds its ETag, the body's
// length and Vary: Prefer (once, if the upstream named it already), and a
// 304 repeats what RFC 9110 asks of it, no more.
func TestLongPollHeader(t *testing.T) {
	s, err := longpoll.NewSnapshot(http.StatusOK, http.Header{
		"Content-Type": {"text/plain"}, "Vary": {"Accept-Language, prefer"}, "Cache-Control": {"max-age=5"},
		"Etag": {`"upstream"`}, "Content-Length": {"999"}, "X-Other": {"1"},
	}, []byte("hello"), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := longPollHeader(s)
	if h != longPollHeader(s) {
		t.Error("longPollHeader made twice for one snapshot, want once")
	}
	if got := h.full.Values("Etag"); !slices.Equal(got, []string{s.ETag}) {
		t.Errorf("Etag: got %q, want the module's %s only", got, s.ETag)
	}
	if got := h.full.Get("Content-Length"); got != "5" {
		t.Errorf("Content-Length: got %q, want the body's 5", got)
	}
	if got := h.full.Values("Vary"); !slices.Equal(got, []string{"Accept-Language, prefer"}) {
		t.Errorf("Vary: got %q, want the upstream's, which names Prefer already", got)
	}
	if _, ok := s.Header["Etag"]; ok {
		t.Error("the snapshot's header got an ETag, want it neutral")
	}
	if got := h.notModified; len(got) != 3 || got.Get("Etag") != s.ETag || got.Get("Cache-Control") != "max-age=5" || got.Get("X-Other") != "" {
		t.Errorf("304 header: got %v, want Etag, Vary and Cache-Control", got)
	}

	plain, err := longpoll.NewSnapshot(http.StatusOK, http.Header{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := longPollHeader(plain).full.Values("Vary"); !slices.Equal(got, []string{"Prefer"}) {
		t.Errorf("Vary of a snapshot without one: got %q, want Prefer", got)
	}
	// a handler that serves event streams answers the URL by Accept too
	if got := (&Handler{SSE: true}).answerHeader(plain); !slices.Equal(got.full.Values("Vary"), []string{"Prefer", "Accept"}) ||
		!slices.Equal(got.notModified.Values("Vary"), []string{"Prefer", "Accept"}) {
		t.Errorf("Vary with sse: got %q (304: %q), want Prefer, Accept", got.full.Values("Vary"), got.notModified.Values("Vary"))
	}
	if got := (&Handler{}).answerHeader(plain).full.Values("Vary"); !slices.Equal(got, []string{"Prefer"}) {
		t.Errorf("Vary without sse: got %q, want Prefer", got)
	}
	if got := (&Handler{SSE: true}).answerHeader(s).full.Values("Vary"); !slices.Equal(got, []string{"Accept-Language, prefer", "Accept"}) {
		t.Errorf("Vary with sse, the upstream's naming Prefer: got %q, want it and Accept", got)
	}

	rec := longpoll.NewRecorder(1 << 20)
	rec.ForHead()
	rec.Header().Set("Content-Length", "1234")
	rec.WriteHeader(http.StatusOK)
	head, err := rec.Result(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := longPollHeader(head).full.Get("Content-Length"); got != "1234" {
		t.Errorf("HEAD answer's Content-Length: got %q, want the upstream's 1234", got)
	}
}
