// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// provisionedEncode returns an encode handler with gzip and zstd,
// provisioned by encode itself.
func provisionedEncode(t *testing.T) *encode.Encode {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	enc := &encode.Encode{EncodingsRaw: caddy.ModuleMap{"gzip": json.RawMessage(`{}`), "zstd": json.RawMessage(`{}`)}}
	if err := enc.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	return enc
}

// writerOf returns the response writer enc hands to the next handler for a
// request that accepts acceptEncoding.
func writerOf(t *testing.T, enc *encode.Encode, acceptEncoding string) http.ResponseWriter {
	t.Helper()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header.Set("Accept-Encoding", acceptEncoding)
	var seen http.ResponseWriter
	err := enc.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		seen = w
		return nil
	}))
	if err != nil || seen == nil {
		t.Fatalf("encode.ServeHTTP: %v, writer %v", err, seen)
	}
	return seen
}

type opaqueWriter struct{ http.ResponseWriter }

func (w opaqueWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// The module reads, from the writer an encode in front hands down, the
// encode handler and the encoding it negotiated, through writers that pass
// the body on as it is, and not through one that might hold or change it.
func TestEncodeInFront(t *testing.T) {
	if _, err := frontLayout(); err != nil {
		t.Fatalf("frontLayout: %v; this Caddy's encode is not readable: compression falls back to encode", err)
	}
	enc := provisionedEncode(t)
	w := writerOf(t, enc, "gzip, zstd")
	for _, tc := range []struct {
		name string
		w    http.ResponseWriter
		want *encode.Encode
	}{
		{"encode's own writer", w, enc},
		{"a plain wrapper", &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, enc},
		{"the metrics' recorder without a buffer", caddyhttp.NewResponseRecorder(w, nil, nil), enc},
		{"a recorder with a buffer", caddyhttp.NewResponseRecorder(w, new(bytes.Buffer), func(int, http.Header) bool { return true }), nil},
		{"an unknown writer", opaqueWriter{w}, nil},
		{"no encode", httptest.NewRecorder(), nil},
	} {
		got, name := encodeInFront(tc.w)
		if got != tc.want || (got != nil && name != "zstd") {
			t.Errorf("%s: got %p %q, want %p and zstd (encode's preference)", tc.name, got, name, tc.want)
		}
	}
	if _, name := encodeInFront(writerOf(t, enc, "gzip")); name != "gzip" {
		t.Errorf("Accept-Encoding gzip: negotiated %q, want gzip", name)
	}
	if got, name := encodeInFront(writerOf(t, enc, "br")); got != enc || name != "" {
		t.Errorf("Accept-Encoding br: got %p %q, want encode and no encoding", got, name)
	}
	l, _ := frontLayout()
	for _, name := range []string{"gzip", "zstd"} {
		if _, ok := l.pool(enc, name).Get().(encode.Encoder); !ok {
			t.Errorf("pool of %s: no encode.Encoder", name)
		}
	}
	if p := l.pool(enc, "br"); p != nil {
		t.Errorf("pool of br, not offered: got one")
	}
}

// encodable decides as encode's response writer does.
func TestEncodable(t *testing.T) {
	enc := provisionedEncode(t)
	long := strings.Repeat("a", 600) // over encode's default minimum of 512
	snap := func(status int, body string, kv ...string) (*longpoll.Snapshot, http.Header) {
		h := http.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Add(kv[i], kv[i+1])
		}
		s, err := longpoll.NewSnapshot(status, h.Clone(), []byte(body), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s, h
	}
	for _, tc := range []struct {
		name   string
		status int
		body   string
		kv     []string
		want   bool
	}{
		{"json over the minimum", 200, long, []string{"Content-Type", "application/json"}, true},
		{"a 404's JSON body", 404, long, []string{"Content-Type", "application/json"}, true},
		{"at the minimum", 200, long[:512], []string{"Content-Type", "application/json"}, false},
		{"not a listed type", 200, long, []string{"Content-Type", "image/png"}, false},
		{"no type: sniffed as encode does, text/plain", 200, long, nil, true},
		{"no type: sniffed, binary", 200, "\x00\x01\x02" + long, nil, false},
		{"already encoded", 200, long, []string{"Content-Type", "text/plain", "Content-Encoding", "br"}, false},
		{"no-transform", 200, long, []string{"Content-Type", "text/plain", "Cache-Control", "public, no-transform"}, false},
	} {
		s, h := snap(tc.status, tc.body, tc.kv...)
		if got := encodable(enc, s, withContentType(h, s.Body)); got != tc.want {
			t.Errorf("%s: encodable = %v, want %v", tc.name, got, tc.want)
		}
	}
	s, h := snap(200, long, "Content-Type", "text/plain")
	off := *enc
	off.MinLength = -1 // encode never compresses then
	if encodable(&off, s, h) {
		t.Error("minimum_length -1: encodable, want not (encode never compresses)")
	}
}

func TestCompressValidate(t *testing.T) {
	for _, tc := range []struct {
		c       Compress
		wantErr string
	}{
		{Compress{Off: true}, ""},
		{Compress{EncodingsRaw: caddy.ModuleMap{"gzip": json.RawMessage(`{}`)}}, ""},
		{Compress{}, "no encoding"},
		{Compress{Off: true, MinLength: 10}, "off takes no other setting"},
		{Compress{Off: true, EncodingsRaw: caddy.ModuleMap{"gzip": json.RawMessage(`{}`)}}, "off takes no other setting"},
	} {
		err := tc.c.validate()
		if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("validate(%+v) = %v, want %q", tc.c, err, tc.wantErr)
		}
	}
}
