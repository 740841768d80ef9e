// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	jsonpatch "github.com/evanphx/json-patch/v5"
)

// countingClient is an HTTP client that counts the bytes it reads from the
// network, headers and framing included.
func countingClient(read *atomic.Int64) *http.Client {
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{Transport: &http.Transport{
		DisableCompression: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return countingConn{c, read}, nil
		},
	}}
}

type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// normalJSON is a JSON document re-encoded: keys sorted, no spaces,
// numbers as written.
func normalJSON(t *testing.T, doc []byte) string {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(doc))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		t.Fatalf("not JSON: %v: %.80s", err, doc)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// applyPatch applies an RFC 6902 patch to doc.
func applyPatch(t *testing.T, doc []byte, patch []byte) []byte {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("patch %.200s: %v", patch, err)
	}
	out, err := p.Apply(doc)
	if err != nil {
		t.Fatalf("applying %.200s: %v", patch, err)
	}
	return out
}

// orderList is a JSON list of about 200 KiB, its item changed set to
// version v (item -1: none changed), with an id past 2^53 that a float
// would not carry whole.
func orderList(changed, v int) string {
	var b strings.Builder
	b.WriteString(`{"total": 1750, "big_id": 9007199254740993, "items": [`)
	for i := range 1750 {
		if i > 0 {
			b.WriteString(", ")
		}
		status := "pending"
		if i == changed {
			status = fmt.Sprintf("changed-%d", v)
		}
		fmt.Fprintf(&b, `{"id": %d, "name": "order number %06d", "status": %q, "note": "%s"}`, i, i, status, strings.Repeat("n", 40))
	}
	b.WriteString("]}")
	return b.String()
}

// TestIntegrationDeltas changes one item of a 200 KiB JSON list 50 times.
// Streams that asked for deltas (SSE by the query parameter and by the
// Accept parameter, WebSocket by the query parameter) get the first
// version whole and each change as a JSON Patch, and rebuild exactly the
// upstream's body, after JSON normalisation, at every version; a stream
// that did not ask gets every version whole. The bytes each read are
// compared.
func TestIntegrationDeltas(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "deltas json-patch")))
	body := orderList(-1, 0)
	up.set("/orders", http.StatusOK, body, "Content-Type", "application/json")
	if len(body) < 200<<10 {
		t.Fatalf("the list is %d bytes, want 200 KiB", len(body))
	}

	var fullRead, queryRead, acceptRead atomic.Int64
	full := openSSEVia(t, countingClient(&fullRead), "/orders")
	byQuery := openSSEVia(t, countingClient(&queryRead), "/orders?deltas=json-patch")
	byAccept := openSSEVia(t, countingClient(&acceptRead), "/orders", "Accept", "text/event-stream; deltas=json-patch")
	ws := openWS(t, "/orders?deltas=json-patch")
	ws.SetReadLimit(1 << 20)

	docs := map[string][]byte{}
	const changes = 50
	patches := 0
	for v := 0; v <= changes; v++ {
		if v > 0 {
			body = orderList((v*37)%1750, v)
			up.set("/orders", http.StatusOK, body, "Content-Type", "application/json")
		}
		want := normalJSON(t, []byte(body))
		for name, c := range map[string]*sseClient{"full": full, "query": byQuery, "accept": byAccept} {
			ev := c.next(t, 10*time.Second)
			switch {
			case v == 0 || name == "full":
				if ev.Event != "" {
					t.Fatalf("%s, version %d: event %q, want the full version", name, v, ev.Event)
				}
				docs[name] = []byte(ev.Data)
			case ev.Event != "patch":
				t.Fatalf("%s, version %d: event %q, want a patch", name, v, ev.Event)
			default:
				docs[name] = applyPatch(t, docs[name], []byte(ev.Data))
				patches++
			}
			if got := normalJSON(t, docs[name]); got != want {
				t.Fatalf("%s, version %d: rebuilt body differs from the upstream's", name, v)
			}
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		_, p, err := ws.Read(ctx)
		cancel()
		if err != nil {
			t.Fatalf("WebSocket, version %d: %v", v, err)
		}
		var m struct {
			ETag  string          `json:"etag"`
			Body  json.RawMessage `json:"body"`
			Patch json.RawMessage `json:"patch"`
		}
		if err := json.Unmarshal(p, &m); err != nil {
			t.Fatal(err)
		}
		switch {
		case v == 0 && m.Body != nil:
			docs["ws"] = m.Body
		case v > 0 && m.Patch != nil && m.Body == nil:
			docs["ws"] = applyPatch(t, docs["ws"], m.Patch)
		default:
			t.Fatalf("WebSocket, version %d: body %d bytes, patch %d bytes; want the body first, then patches only", v, len(m.Body), len(m.Patch))
		}
		if got := normalJSON(t, docs["ws"]); got != want {
			t.Fatalf("WebSocket, version %d: rebuilt body differs from the upstream's", v)
		}
	}
	if patches != 2*changes {
		t.Errorf("%d patches to the SSE clients, want %d", patches, 2*changes)
	}
	f, q, a := fullRead.Load(), queryRead.Load(), acceptRead.Load()
	t.Logf("SSE bytes read for the first version and %d changes: full versions %d, deltas %d (query) and %d (Accept): %.1f and %.1f bytes per change against %d",
		changes, f, q, a, float64(q-int64(len(body)))/changes, float64(a-int64(len(body)))/changes, (f-int64(len(body)))/changes)
	if q*20 > f || a*20 > f {
		t.Errorf("delta streams read %d and %d bytes, full %d: want a twentieth or less", q, a, f)
	}

	// A client further behind (resuming at a version it cannot have been
	// sent a patch to) gets the full version first, then patches.
	behind := openSSE(t, "/orders?deltas=json-patch", "Last-Event-ID", "stale-version")
	ev := behind.next(t, 10*time.Second)
	if ev.Event != "" || normalJSON(t, []byte(ev.Data)) != normalJSON(t, []byte(body)) {
		t.Fatalf("a client further behind: event %q, want the full current version", ev.Event)
	}
	doc := []byte(ev.Data)
	body = orderList(5, changes+1)
	up.set("/orders", http.StatusOK, body, "Content-Type", "application/json")
	ev = behind.next(t, 10*time.Second)
	if ev.Event != "patch" {
		t.Fatalf("after the full version, event %q, want a patch", ev.Event)
	}
	if got := normalJSON(t, applyPatch(t, doc, []byte(ev.Data))); got != normalJSON(t, []byte(body)) {
		t.Error("after the full version, the patch did not rebuild the upstream's body")
	}
}
