// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

func TestWantsDeltas(t *testing.T) {
	tests := []struct {
		name, target, accept string
		want                 bool
		query                string // left for the key and the polls
	}{
		{name: "query parameter", target: "/o?a=1&deltas=json-patch&b=2", want: true, query: "a=1&b=2"},
		{name: "query parameter alone", target: "/o?deltas=json-patch", want: true, query: ""},
		{name: "another value is the upstream's", target: "/o?deltas=all", want: false, query: "deltas=all"},
		{name: "Accept parameter", target: "/o?a=1", accept: "text/event-stream; deltas=json-patch", want: true, query: "a=1"},
		{name: "Accept parameter on another type", target: "/o", accept: "application/json; deltas=json-patch", want: false},
		{name: "none", target: "/o", accept: "text/event-stream", want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, tt.target, nil)
			if tt.accept != "" {
				r.Header.Set("Accept", tt.accept)
			}
			if got := wantsDeltas(r); got != tt.want {
				t.Errorf("wantsDeltas = %v, want %v", got, tt.want)
			}
			if r.URL.RawQuery != tt.query {
				t.Errorf("query left: %q, want %q", r.URL.RawQuery, tt.query)
			}
			if want := r.URL.Path + map[bool]string{true: "?" + tt.query}[tt.query != ""]; r.RequestURI != want {
				t.Errorf("RequestURI: %q, want %q", r.RequestURI, want)
			}
		})
	}
}

func snapshotOf(t testing.TB, status int, ct, body string) *longpoll.Snapshot {
	t.Helper()
	s, err := longpoll.NewSnapshot(status, http.Header{"Content-Type": {ct}}, []byte(body), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMakeDelta(t *testing.T) {
	long := `{"items": [` + strings.Repeat(`{"a": 1, "b": "xxxxxxxxxxxxxxxx"}, `, 20) + `{"a": 1}], "n": 9007199254740993}`
	changed := strings.Replace(long, `{"a": 1}]`, `{"a": 2}]`, 1)
	tests := []struct {
		name      string
		prev, cur *longpoll.Snapshot
		patch     string // "" for the full version
	}{
		{name: "one field", prev: snapshotOf(t, 200, "application/json", long), cur: snapshotOf(t, 200, "application/json", changed),
			patch: `[{"value":2,"op":"replace","path":"/items/20/a"}]`},
		{name: "a big number kept whole", prev: snapshotOf(t, 200, "application/json", long),
			cur:   snapshotOf(t, 200, "application/json", strings.Replace(long, "9007199254740993", "9007199254740995", 1)),
			patch: `[{"value":9007199254740995,"op":"replace","path":"/n"}]`},
		{name: "+json type", prev: snapshotOf(t, 200, "application/problem+json", long), cur: snapshotOf(t, 200, "application/problem+json", changed),
			patch: `[{"value":2,"op":"replace","path":"/items/20/a"}]`},
		{name: "patch not smaller", prev: snapshotOf(t, 200, "application/json", `{"a":1}`), cur: snapshotOf(t, 200, "application/json", `{"a":2}`)},
		{name: "status changed", prev: snapshotOf(t, 200, "application/json", long), cur: snapshotOf(t, 404, "application/json", changed)},
		{name: "not 2xx", prev: snapshotOf(t, 404, "application/json", long), cur: snapshotOf(t, 404, "application/json", changed)},
		{name: "content type changed", prev: snapshotOf(t, 200, "application/json", long), cur: snapshotOf(t, 200, "application/vnd.api+json", changed)},
		{name: "not JSON by type", prev: snapshotOf(t, 200, "text/plain", long), cur: snapshotOf(t, 200, "text/plain", changed)},
		{name: "not JSON by content", prev: snapshotOf(t, 200, "application/json", long), cur: snapshotOf(t, 200, "application/json", changed[:len(changed)-1])},
		{name: "trailing data", prev: snapshotOf(t, 200, "application/json", long), cur: snapshotOf(t, 200, "application/json", changed+" {}")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := makeDelta(tt.prev, tt.cur)
			if tt.patch == "" {
				if d.sse != nil || d.ws != nil {
					t.Fatalf("delta %q, want the full version", d.sse)
				}
				return
			}
			wantSSE := "id: " + strings.Trim(tt.cur.ETag, `"`) + "\nevent: patch\ndata: " + tt.patch + "\n\n"
			if string(d.sse) != wantSSE {
				t.Errorf("SSE event %q, want %q", d.sse, wantSSE)
			}
			var m struct {
				ETag  string          `json:"etag"`
				Patch json.RawMessage `json:"patch"`
				Body  json.RawMessage `json:"body"`
			}
			if err := json.Unmarshal(d.ws, &m); err != nil || m.ETag != tt.cur.ETag || string(m.Patch) != tt.patch || m.Body != nil {
				t.Errorf("WebSocket message %s (%v), want etag %s and patch %s, no body", d.ws, err, tt.cur.ETag, tt.patch)
			}
		})
	}
}

// BenchmarkDelta200KiB makes the patch of one item changed in a JSON list
// of 200 KiB: the work done once per change for every stream that asked
// for deltas.
func BenchmarkDelta200KiB(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"items": [`)
	for i := range 1750 {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteString(`{"id": ` + strings.Repeat("1", 1+i%5) + `, "name": "order number", "status": "pending", "note": "` + strings.Repeat("n", 40) + `"}`)
	}
	sb.WriteString("]}")
	body := sb.String()
	prev := snapshotOf(b, 200, "application/json", body)
	cur := snapshotOf(b, 200, "application/json", strings.Replace(body, `"pending"`, `"shipped"`, 1))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if d := makeDelta(prev, cur); d.sse == nil {
			b.Fatal("no patch")
		}
	}
}
