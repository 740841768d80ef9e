// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"compress/gzip"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// decoded returns r's body as the client reads it, after its
// Content-Encoding, failing t if it does not decode.
func decoded(t *testing.T, r itReply) string {
	t.Helper()
	var rd io.Reader
	switch ce := r.Header.Get("Content-Encoding"); ce {
	case "":
		return r.Body
	case "gzip":
		zr, err := gzip.NewReader(strings.NewReader(r.Body))
		if err != nil {
			t.Fatalf("gzip: %v", err)
		}
		rd = zr
	case "zstd":
		zr, err := zstd.NewReader(strings.NewReader(r.Body))
		if err != nil {
			t.Fatalf("zstd: %v", err)
		}
		defer zr.Close()
		rd = zr
	default:
		t.Fatalf("Content-Encoding %q", ce)
	}
	b, err := io.ReadAll(rd)
	if err != nil {
		t.Fatalf("decoding %s: %v", r.Header.Get("Content-Encoding"), err)
	}
	return string(b)
}

func compressions(enc string) float64 {
	return testutil.ToFloat64(metrics.compressions.WithLabelValues(enc))
}

// TestIntegrationCompressOnce holds clients that accept gzip, zstd and
// nothing, behind `encode gzip zstd`, and releases them with one change:
// each gets the new version in the encoding encode would have chosen, with
// encode's ETag suffix, Vary and an exact Content-Length, and the version
// is compressed once per encoding, not once per client. A 304 carries the
// ETag of the client's variant; a client that moves from gzip to plain
// still has the version.
func TestIntegrationCompressOnce(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	v1 := `{"items":"` + strings.Repeat("first version ", 300) + `"}`
	up.set("/c", http.StatusOK, v1, "Content-Type", "application/json")
	itLoad(t, tc, itConfig("", "\tencode gzip zstd\n"+itSite("interval 100ms\nmax_wait 10s", up)))
	c, _ := itClient(t)

	first := itMustSend(t, c, "GET", "/c", "Prefer", "wait=5")
	etag := first.Header.Get("Etag")
	if first.Status != http.StatusOK || first.Body != v1 || first.Header.Get("Content-Encoding") != "" {
		t.Fatalf("plain client: got %d, Content-Encoding %q, want 200 plain", first.Status, first.Header.Get("Content-Encoding"))
	}
	if !itHasToken(first.Header, "Vary", "Accept-Encoding") {
		t.Errorf("plain answer of a compressible version: Vary %q, want Accept-Encoding (encode's own)", first.Header.Values("Vary"))
	}

	accepts := map[string]int{"gzip": 30, "zstd": 20, "": 10}
	type heldReq struct {
		enc string
		ch  <-chan itReply
	}
	var held []heldReq
	for enc, n := range accepts {
		for range n {
			hdr := []string{"Prefer", "wait=8", "If-None-Match", etag}
			if enc != "" {
				hdr = append(hdr, "Accept-Encoding", enc)
			}
			held = append(held, heldReq{enc, itSendAsync(t, t.Context(), c, "GET", "/c", hdr...)})
		}
	}
	itWaitHeld(t, len(held))
	gz, zs := compressions("gzip"), compressions("zstd")
	v2 := `{"items":"` + strings.Repeat("second version ", 300) + `"}`
	up.set("/c", http.StatusOK, v2, "Content-Type", "application/json")
	var newETag string
	for i, hr := range held {
		r := itReceive(t, hr.ch, 5*time.Second)
		if r.Status != http.StatusOK || decoded(t, r) != v2 {
			t.Fatalf("held client %d (%q): got %d, want 200 with the new version", i, hr.enc, r.Status)
		}
		if got := r.Header.Get("Content-Encoding"); got != hr.enc {
			t.Errorf("held client %d: Content-Encoding %q, want %q", i, got, hr.enc)
		}
		tag := r.Header.Get("Etag")
		plain := strings.TrimSuffix(tag, `-`+hr.enc+`"`) + `"`
		if hr.enc == "" {
			plain = tag
		}
		if newETag == "" {
			newETag = plain
		}
		if plain != newETag || (hr.enc != "" && !strings.HasSuffix(tag, "-"+hr.enc+`"`)) {
			t.Errorf("held client %d (%q): ETag %s, want %s with encode's suffix", i, hr.enc, tag, newETag)
		}
		if !itHasToken(r.Header, "Vary", "Accept-Encoding") || !itHasToken(r.Header, "Vary", "Prefer") {
			t.Errorf("held client %d: Vary %q, want Prefer and Accept-Encoding", i, r.Header.Values("Vary"))
		}
		if hr.enc != "" && r.Header.Get("Content-Length") != strconv.Itoa(len(r.Body)) {
			t.Errorf("held client %d: Content-Length %q for a body of %d", i, r.Header.Get("Content-Length"), len(r.Body))
		}
	}
	if d := compressions("gzip") - gz; d != 1 {
		t.Errorf("gzip compressions for one change released to 30 clients: %v, want 1", d)
	}
	if d := compressions("zstd") - zs; d != 1 {
		t.Errorf("zstd compressions for one change released to 20 clients: %v, want 1", d)
	}

	// The wait ends: 304 with the ETag of the client's variant.
	gzTag := strings.TrimSuffix(newETag, `"`) + `-gzip"`
	r := itMustSend(t, c, "GET", "/c", "Prefer", "wait=1", "Accept-Encoding", "gzip", "If-None-Match", gzTag)
	if r.Status != http.StatusNotModified || r.Header.Get("Etag") != gzTag || !itHasToken(r.Header, "Vary", "Accept-Encoding") {
		t.Errorf("gzip client at its wait's end: got %d, ETag %s, Vary %q; want 304, %s, Accept-Encoding", r.Status, r.Header.Get("Etag"), r.Header.Values("Vary"), gzTag)
	}
	// A client that had the gzip variant and now asks plain has the version.
	r = itMustSend(t, c, "GET", "/c", "Prefer", "wait=1", "If-None-Match", gzTag)
	if r.Status != http.StatusNotModified || r.Header.Get("Etag") != newETag {
		t.Errorf("plain client with the gzip variant's ETag: got %d, ETag %s; want 304 with %s", r.Status, r.Header.Get("Etag"), newETag)
	}
	if d := compressions("gzip") - gz; d != 1 {
		t.Errorf("gzip compressions after 304s of the same version: %v, want still 1", d)
	}

	// A reload keeps the version and its variants: it compresses nothing
	// again (a reload a minute must not pile up copies).
	itLoad(t, tc, itConfig("", "\tencode gzip zstd\n"+itSite("interval 100ms\nmax_wait 10s", up)))
	for range 2 {
		r = itMustSend(t, c, "GET", "/c", "Prefer", "wait=5", "Accept-Encoding", "gzip")
		if r.Status != http.StatusOK || decoded(t, r) != v2 || r.Header.Get("Etag") != gzTag {
			t.Errorf("gzip client after a reload: got %d, ETag %s; want 200 with %s", r.Status, r.Header.Get("Etag"), gzTag)
		}
	}
	if d := compressions("gzip") - gz; d != 1 {
		t.Errorf("gzip compressions after a reload, the version unchanged: %v, want still 1", d)
	}
}

// TestIntegrationCompressFollowsEncode checks that answers encode would
// not compress are not compressed: below its minimum_length, a content
// type it does not match, a body already encoded; and that `compress off`
// leaves compression to encode, answer by answer.
func TestIntegrationCompressFollowsEncode(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	long := strings.Repeat("some text ", 500)
	up.set("/short", http.StatusOK, strings.Repeat("x", 1000), "Content-Type", "text/plain")
	up.set("/png", http.StatusOK, long, "Content-Type", "image/png")
	up.set("/text", http.StatusOK, long, "Content-Type", "text/plain")
	itLoad(t, tc, itConfig("", "\tencode {\n\t\tgzip\n\t\tminimum_length 2048\n\t}\n"+itSite("interval 100ms\nmax_wait 10s", up)))
	c, _ := itClient(t)
	gz := compressions("gzip")
	for _, path := range []string{"/short", "/png"} {
		r := itMustSend(t, c, "GET", path, "Prefer", "wait=2", "Accept-Encoding", "gzip")
		if r.Status != http.StatusOK || r.Header.Get("Content-Encoding") != "" || strings.HasSuffix(r.Header.Get("Etag"), `-gzip"`) {
			t.Errorf("%s: got %d, Content-Encoding %q, ETag %s; want 200 plain, as encode leaves it", path, r.Status, r.Header.Get("Content-Encoding"), r.Header.Get("Etag"))
		}
	}
	r := itMustSend(t, c, "GET", "/text", "Prefer", "wait=2", "Accept-Encoding", "gzip")
	if r.Status != http.StatusOK || decoded(t, r) != long || r.Header.Get("Content-Encoding") != "gzip" {
		t.Errorf("/text: got %d, Content-Encoding %q; want 200 gzip", r.Status, r.Header.Get("Content-Encoding"))
	}
	if d := compressions("gzip") - gz; d != 1 {
		t.Errorf("compressions: %v, want 1 (/text only)", d)
	}

	// compress off: encode compresses each answer itself.
	itLoad(t, tc, itConfig("", "\tencode gzip\n"+itSite("interval 100ms\nmax_wait 10s\ncompress off", up)))
	gz = compressions("gzip")
	for range 3 {
		r := itMustSend(t, c, "GET", "/text", "Prefer", "wait=2", "Accept-Encoding", "gzip")
		if r.Status != http.StatusOK || decoded(t, r) != long || !strings.HasSuffix(r.Header.Get("Etag"), `-gzip"`) {
			t.Errorf("compress off: got %d, ETag %s; want 200 gzip from encode", r.Status, r.Header.Get("Etag"))
		}
	}
	if d := compressions("gzip") - gz; d != 0 {
		t.Errorf("compress off: the module compressed %v times, want 0", d)
	}
}

// TestIntegrationCompressOwn has no encode in front: the handler's own
// compress setting compresses as encode would, Vary included on plain
// answers; without it, nothing is compressed.
func TestIntegrationCompressOwn(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	body := strings.Repeat("plain text ", 400)
	up.set("/own", http.StatusOK, body, "Content-Type", "text/plain")
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 10s\ncompress zstd gzip", up)))
	c, _ := itClient(t)

	for _, tc := range []struct{ accept, want string }{
		{"gzip", "gzip"}, {"zstd", "zstd"}, {"gzip, zstd", "zstd"}, {"gzip;q=1, zstd;q=0.5", "gzip"}, {"", ""}, {"br", ""},
	} {
		hdr := []string{"Prefer", "wait=2"}
		if tc.accept != "" {
			hdr = append(hdr, "Accept-Encoding", tc.accept)
		}
		r := itMustSend(t, c, "GET", "/own", hdr...)
		if r.Status != http.StatusOK || decoded(t, r) != body || r.Header.Get("Content-Encoding") != tc.want {
			t.Errorf("Accept-Encoding %q: got %d, Content-Encoding %q; want 200 %q", tc.accept, r.Status, r.Header.Get("Content-Encoding"), tc.want)
		}
		if !itHasToken(r.Header, "Vary", "Accept-Encoding") {
			t.Errorf("Accept-Encoding %q: Vary %q, want Accept-Encoding", tc.accept, r.Header.Values("Vary"))
		}
	}

	itLoad(t, tc, itConfig("", itSite("interval 100ms\nmax_wait 10s", up)))
	r := itMustSend(t, c, "GET", "/own", "Prefer", "wait=2", "Accept-Encoding", "gzip")
	if r.Status != http.StatusOK || r.Header.Get("Content-Encoding") != "" || itHasToken(r.Header, "Vary", "Accept-Encoding") {
		t.Errorf("no encode, no compress: got %d, Content-Encoding %q, Vary %q; want 200 plain, no Vary on Accept-Encoding", r.Status, r.Header.Get("Content-Encoding"), r.Header.Values("Vary"))
	}
}

// TestIntegrationCompressNoValidators has an upstream that sends no ETag
// or Last-Modified, so that every poll gets the same answer in full: the
// version is still compressed once, not once per poll; and a 304 names the
// client's variant without compressing anything.
func TestIntegrationCompressNoValidators(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	var body atomic.Value
	body.Store(`{"v":"` + strings.Repeat("one ", 400) + `"}`)
	up.setServe("/nv", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, body.Load().(string))
	})
	itLoad(t, tc, itConfig("", "\tencode gzip\n"+itSite("interval 100ms\nmax_wait 10s", up)))
	c, _ := itClient(t)
	gz := compressions("gzip")
	var tag string
	for i := range 4 {
		r := itMustSend(t, c, "GET", "/nv", "Prefer", "wait=5", "Accept-Encoding", "gzip")
		if r.Status != http.StatusOK || decoded(t, r) != body.Load().(string) || r.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("request %d: got %d, Content-Encoding %q; want 200 gzip", i, r.Status, r.Header.Get("Content-Encoding"))
		}
		tag = r.Header.Get("Etag")
		time.Sleep(300 * time.Millisecond) // polls in between, each with the whole answer
	}
	if polls := up.hitsFor("/nv"); polls < 4 {
		t.Fatalf("upstream requests: %d, want polls between the requests", polls)
	}
	if d := compressions("gzip") - gz; d != 1 {
		t.Errorf("compressions of one version over several polls without validators: %v, want 1", d)
	}

	// A new version, answered plain once; a gzip client that has it gets a
	// 304 naming its gzip variant, and nothing is compressed for that.
	body.Store(`{"v":"` + strings.Repeat("two ", 400) + `"}`)
	var plain itReply
	itWaitFor(t, "the new version", 10*time.Second, func() bool {
		plain = itMustSend(t, c, "GET", "/nv", "Prefer", "wait=1")
		return plain.Status == http.StatusOK && plain.Body == body.Load().(string)
	})
	newTag := plain.Header.Get("Etag")
	gz = compressions("gzip")
	r := itMustSend(t, c, "GET", "/nv", "Prefer", "wait=1", "Accept-Encoding", "gzip", "If-None-Match", newTag)
	want := strings.TrimSuffix(newTag, `"`) + `-gzip"`
	if r.Status != http.StatusNotModified || r.Header.Get("Etag") != want || newTag == tag {
		t.Errorf("gzip client with the version: got %d, ETag %s; want 304 with %s", r.Status, r.Header.Get("Etag"), want)
	}
	if d := compressions("gzip") - gz; d != 0 {
		t.Errorf("compressions for a 304: %v, want 0", d)
	}
}

// TestIntegrationCompressRespectsHeaders has a header directive set
// Cache-Control: no-transform on every response before longpoll: encode
// leaves such a response alone, and so does the module.
func TestIntegrationCompressRespectsHeaders(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	text := strings.Repeat("text ", 400)
	up.set("/nt", http.StatusOK, text, "Content-Type", "text/plain")
	itLoad(t, tc, itConfig("", "\theader Cache-Control no-transform\n\tencode gzip\n"+itSite("interval 100ms\nmax_wait 10s", up)))
	c, _ := itClient(t)
	gz := compressions("gzip")
	r := itMustSend(t, c, "GET", "/nt", "Prefer", "wait=2", "Accept-Encoding", "gzip")
	if r.Status != http.StatusOK || r.Body != text || r.Header.Get("Content-Encoding") != "" {
		t.Errorf("no-transform set before longpoll: got %d, Content-Encoding %q; want 200 plain", r.Status, r.Header.Get("Content-Encoding"))
	}
	if d := compressions("gzip") - gz; d != 0 {
		t.Errorf("compressions: %v, want 0", d)
	}

	// The upstream's own Cache-Control replaces the header directive's in
	// the answer: encode would compress it, and so the module does, once.
	up.set("/cc", http.StatusOK, text, "Content-Type", "text/plain", "Cache-Control", "no-cache")
	for range 2 {
		r = itMustSend(t, c, "GET", "/cc", "Prefer", "wait=2", "Accept-Encoding", "gzip")
		if r.Status != http.StatusOK || decoded(t, r) != text || r.Header.Get("Content-Encoding") != "gzip" || r.Header.Get("Cache-Control") != "no-cache" {
			t.Errorf("the upstream's Cache-Control: got %d, Content-Encoding %q, Cache-Control %q; want 200 gzip, no-cache", r.Status, r.Header.Get("Content-Encoding"), r.Header.Get("Cache-Control"))
		}
	}
	if d := compressions("gzip") - gz; d != 1 {
		t.Errorf("compressions of /cc answered twice: %v, want 1", d)
	}
}
