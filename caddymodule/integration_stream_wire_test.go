// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// wireSite has encode in front of two longpoll handlers with streams on:
// /z/* with compress_streams, the rest without.
func wireSite(up *itUpstream) string {
	return fmt.Sprintf(`	encode gzip
	longpoll /z/* {
		interval 100ms
		sse
		websocket
		compress_streams
	}
	longpoll {
		interval 100ms
		sse
		websocket
	}
	reverse_proxy %s
`, up.addr())
}

// h2cClient speaks HTTP/2 without TLS (prior knowledge), as Caddy's h2c
// protocol takes it, and asks for no compression of its own.
func h2cClient() *http.Client {
	tr := &http.Transport{DisableCompression: true}
	tr.Protocols = new(http.Protocols)
	tr.Protocols.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: tr}
}

// TestIntegrationStreamsEncodeAndHTTP2 opens event streams through encode
// over HTTP/2 (h2c): without compress_streams the stream is sent as it is
// (no-transform), with it encode compresses the stream and every event
// still arrives when it is sent, not when a compression buffer fills. A
// WebSocket is offered permessage-deflate only with compress_streams.
func TestIntegrationStreamsEncodeAndHTTP2(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("\tservers {\n\t\tprotocols h1 h2c\n\t}\n", wireSite(up)))
	body := func(i int) string { return fmt.Sprintf("version %d %s", i, strings.Repeat("compressible ", 100)) }
	for _, path := range []string{"/p/s", "/z/s"} {
		up.set(path, http.StatusOK, body(0), "Content-Type", "text/plain")
	}

	t.Run("SSE", func(t *testing.T) {
		for _, tt := range []struct {
			path, encoding, cacheControl string
		}{
			{path: "/p/s", encoding: "", cacheControl: "no-cache, no-transform"},
			{path: "/z/s", encoding: "gzip", cacheControl: "no-cache"},
		} {
			sse := openSSEVia(t, h2cClient(), tt.path, "Accept-Encoding", "gzip")
			resp := sse.resp
			if resp.ProtoMajor != 2 {
				t.Errorf("%s: got %s, want HTTP/2", tt.path, resp.Proto)
			}
			if got := resp.Header.Get("Content-Encoding"); got != tt.encoding {
				t.Errorf("%s: got Content-Encoding %q, want %q", tt.path, got, tt.encoding)
			}
			if got := resp.Header.Get("Cache-Control"); got != tt.cacheControl {
				t.Errorf("%s: got Cache-Control %q, want %q", tt.path, got, tt.cacheControl)
			}
			// the first event arrives with nothing after it to push it
			// out of a buffer; so does the second, after a change
			for i := range 2 {
				if i > 0 {
					up.set(tt.path, http.StatusOK, body(i), "Content-Type", "text/plain")
				}
				if ev := sse.next(t, 5*time.Second); ev.Data != body(i) {
					t.Fatalf("%s version %d: got data %.40q..., want %.40q...", tt.path, i, ev.Data, body(i))
				}
			}
		}
	})

	// On HTTP/2 a write deadline left armed between writes is a timer
	// that resets the stream when it fires: a stream quiet for longer
	// than a write may take (10s) must still be open.
	t.Run("SSE quiet over HTTP/2", func(t *testing.T) {
		up.set("/p/quiet", http.StatusOK, body(0), "Content-Type", "text/plain")
		sse := openSSEVia(t, h2cClient(), "/p/quiet")
		if ev := sse.next(t, 5*time.Second); ev.Data != body(0) {
			t.Fatalf("first event: got %.40q..., want %.40q...", ev.Data, body(0))
		}
		time.Sleep(writeTimeout + 2*time.Second)
		up.set("/p/quiet", http.StatusOK, body(1), "Content-Type", "text/plain")
		if ev := sse.next(t, 5*time.Second); ev.Data != body(1) {
			t.Fatalf("after %v quiet: got %.40q..., want %.40q...", writeTimeout+2*time.Second, ev.Data, body(1))
		}
	})

	t.Run("WebSocket", func(t *testing.T) {
		for _, tt := range []struct {
			path      string
			extension string
		}{
			{path: "/p/s"},
			{path: "/z/s", extension: "permessage-deflate"},
		} {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			conn, resp, err := websocket.Dial(ctx, fmt.Sprintf("ws://localhost:%d%s", itPort(), tt.path),
				&websocket.DialOptions{CompressionMode: websocket.CompressionNoContextTakeover})
			cancel()
			if err != nil {
				t.Fatalf("%s: dialing: %v", tt.path, err)
			}
			t.Cleanup(func() { _ = conn.CloseNow() })
			if got := resp.Header.Get("Sec-WebSocket-Extensions"); !strings.HasPrefix(got, tt.extension) || (tt.extension == "") != (got == "") {
				t.Errorf("%s: got Sec-WebSocket-Extensions %q, want %q", tt.path, got, tt.extension)
			}
			m := readWS(t, conn, 5*time.Second)
			var got string
			if err := json.Unmarshal(m.Body, &got); err != nil || !strings.HasPrefix(got, "version ") || len(got) < 1000 {
				t.Errorf("%s: got message body %.40q... (%v), want a version of the resource", tt.path, got, err)
			}
		}
	})
}
