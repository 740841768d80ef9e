// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/caddytest"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestUnmarshalCaddyfile covers every subdirective, with the values it
// accepts and the mistakes it must refuse, since the parser is where a typo
// in a Caddyfile is either caught or silently ignored.
func TestUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    Handler
		wantErr string // substring of the error; empty for success
		bug     string // set while the case shows a known bug: it is skipped
	}{
		// accepted
		{name: "bare directive", input: `longpoll`},
		{name: "empty block", input: "longpoll {\n}"},
		{
			name:  "interval",
			input: "longpoll {\n\tinterval 2s\n}",
			want:  Handler{Interval: caddy.Duration(2 * time.Second)},
		},
		{
			name:  "interval fractional",
			input: "longpoll {\n\tinterval 1.5s\n}",
			want:  Handler{Interval: caddy.Duration(1500 * time.Millisecond)},
		},
		{
			name:  "max_wait",
			input: "longpoll {\n\tmax_wait 30s\n}",
			want:  Handler{MaxWait: caddy.Duration(30 * time.Second)},
		},
		{
			name:  "idle_ttl in days",
			input: "longpoll {\n\tidle_ttl 1d\n}",
			want:  Handler{IdleTTL: caddy.Duration(24 * time.Hour)},
		},
		{
			name:  "idle_ttl negative is left to Validate",
			input: "longpoll {\n\tidle_ttl -1s\n}",
			want:  Handler{IdleTTL: caddy.Duration(-time.Second)},
		},
		{
			name:  "poll_timeout",
			input: "longpoll {\n\tpoll_timeout 500ms\n}",
			want:  Handler{PollTimeout: caddy.Duration(500 * time.Millisecond)},
		},
		{
			name:  "key one token",
			input: "longpoll {\n\tkey {host}{uri}\n}",
			want:  Handler{Key: "{host}{uri}"},
		},
		{
			name:  "key several tokens joined by one space",
			input: "longpoll {\n\tkey {host}   {path}\t{query.v}\n}",
			want:  Handler{Key: "{host} {path} {query.v}"},
		},
		{
			name:  "key quoted token keeps its spaces",
			input: "longpoll {\n\tkey \"a  b\" c\n}",
			want:  Handler{Key: "a  b c"},
		},
		{
			name:  "max_body KiB",
			input: "longpoll {\n\tmax_body 512KiB\n}",
			want:  Handler{MaxBody: 512 << 10},
		},
		{
			name:  "max_body MB",
			input: "longpoll {\n\tmax_body 2MB\n}",
			want:  Handler{MaxBody: 2_000_000},
		},
		{
			name:  "max_body MiB",
			input: "longpoll {\n\tmax_body 1MiB\n}",
			want:  Handler{MaxBody: 1 << 20},
		},
		{
			name:  "max_body plain bytes",
			input: "longpoll {\n\tmax_body 4096\n}",
			want:  Handler{MaxBody: 4096},
		},
		{
			name:  "max_waiters",
			input: "longpoll {\n\tmax_waiters 500\n}",
			want:  Handler{MaxWaiters: 500},
		},
		{
			name:  "max_waiters negative removes the cap",
			input: "longpoll {\n\tmax_waiters -1\n}",
			want:  Handler{MaxWaiters: -1},
		},
		{
			name:  "max_waiters_per_client",
			input: "longpoll {\n\tmax_waiters_per_client 10\n}",
			want:  Handler{MaxWaitersPerClient: 10},
		},
		{
			name:  "max_watches",
			input: "longpoll {\n\tmax_watches 50\n}",
			want:  Handler{MaxWatches: 50},
		},
		{
			name:  "max_watches_per_client",
			input: "longpoll {\n\tmax_watches_per_client 8\n}",
			want:  Handler{MaxWatchesPerClient: 8},
		},
		{
			name:  "max_memory",
			input: "longpoll {\n\tmax_memory 64MiB\n}",
			want:  Handler{MaxMemory: 64 << 20},
		},
		{
			name:  "max_memory -1 removes the bound",
			input: "longpoll {\n\tmax_memory -1\n}",
			want:  Handler{MaxMemory: -1},
		},
		{name: "max_memory not a size", input: "longpoll {\n\tmax_memory lots\n}", wantErr: "invalid max_memory 'lots'"},
		{name: "max_watches_per_client twice", input: "longpoll {\n\tmax_watches_per_client 1\n\tmax_watches_per_client 2\n}", wantErr: "max_watches_per_client already specified"},
		{
			name:  "query_params",
			input: "longpoll {\n\tquery_params w e\n}",
			want:  Handler{QueryParams: &QueryParams{Wait: "w", ETag: "e"}},
		},
		{
			name:  "disable_metrics",
			input: "longpoll {\n\tdisable_metrics\n}",
			want:  Handler{DisableMetrics: true},
		},
		{
			name:  "streams",
			input: "longpoll {\n\tsse\n\twebsocket\n\theartbeat 10s\n\tmax_streams 50\n\tmax_stream_duration 30m\n\torigins app.example.com https://*.example.org\n\tcompress_streams\n\tignore /at /items/*/updated_at\n\tdeltas json-patch\n\tcluster {env.REDIS_URL}\n}",
			want: Handler{SSE: true, WebSocket: true, Heartbeat: caddy.Duration(10 * time.Second), MaxStreams: 50,
				MaxStreamDuration: caddy.Duration(30 * time.Minute), Origins: []string{"app.example.com", "https://*.example.org"},
				CompressStreams: true, Ignore: []string{"/at", "/items/*/updated_at"}, Deltas: "json-patch", Cluster: "{env.REDIS_URL}"},
		},
		{name: "sse with an argument", input: "longpoll {\n\tsse on\n}", wantErr: "wrong argument count"},
		{name: "websocket twice", input: "longpoll {\n\twebsocket\n\twebsocket\n}", wantErr: "websocket already specified"},
		{name: "ignore without a pointer", input: "longpoll {\n\tignore\n}", wantErr: "wrong argument count"},
		{name: "cluster without a URL", input: "longpoll {\n\tcluster\n}", wantErr: "wrong argument count"},
		{name: "compress off", input: "longpoll {\n\tcompress off\n}", want: Handler{Compress: &Compress{Off: true}}},
		{
			name:  "compress formats",
			input: "longpoll {\n\tcompress zstd gzip\n}",
			want: Handler{Compress: &Compress{
				EncodingsRaw: caddy.ModuleMap{"zstd": json.RawMessage(`{}`), "gzip": json.RawMessage(`{}`)},
				Prefer:       []string{"zstd", "gzip"},
			}},
		},
		{
			name:  "compress with encode's block",
			input: "longpoll {\n\tcompress {\n\t\tgzip 9\n\t\tminimum_length 1024\n\t}\n}",
			want: Handler{Compress: &Compress{
				EncodingsRaw: caddy.ModuleMap{"gzip": json.RawMessage(`{"level":9}`)},
				Prefer:       []string{"gzip"}, MinLength: 1024,
			}},
		},
		{
			name:  "compress bare: encode's default formats",
			input: "longpoll {\n\tcompress\n}",
			want: Handler{Compress: &Compress{
				EncodingsRaw: caddy.ModuleMap{"zstd": json.RawMessage(`{}`), "gzip": json.RawMessage(`{}`)},
				Prefer:       []string{"zstd", "gzip"},
			}},
		},
		{name: "compress off with a format", input: "longpoll {\n\tcompress off gzip\n}", wantErr: "compress off takes no other argument"},
		{name: "compress off with a block", input: "longpoll {\n\tcompress off {\n\t\tgzip\n\t}\n}", wantErr: "compress off takes no block"},
		{name: "compress unknown format", input: "longpoll {\n\tcompress brotli9\n}", wantErr: "http.encoders.brotli9"},
		{name: "compress unknown setting", input: "longpoll {\n\tcompress {\n\t\tlevel 3\n\t}\n}", wantErr: "http.encoders.level"},
		{name: "compress twice", input: "longpoll {\n\tcompress gzip\n\tcompress zstd\n}", wantErr: "compress already specified"},
		{name: "compress, then another subdirective", input: "longpoll {\n\tcompress gzip\n\tinterval 2s\n}", want: Handler{
			Compress: &Compress{EncodingsRaw: caddy.ModuleMap{"gzip": json.RawMessage(`{}`)}, Prefer: []string{"gzip"}},
			Interval: caddy.Duration(2 * time.Second),
		}},
		{name: "deltas without a kind", input: "longpoll {\n\tdeltas\n}", wantErr: "wrong argument count"},
		{name: "deltas with two kinds", input: "longpoll {\n\tdeltas json-patch merge-patch\n}", wantErr: "wrong argument count"},
		{name: "compress_streams with a value", input: "longpoll {\n\tcompress_streams gzip\n}", wantErr: "wrong argument count"},
		{name: "origins without one", input: "longpoll {\n\torigins\n}", wantErr: "wrong argument count"},
		{name: "heartbeat not a duration", input: "longpoll {\n\theartbeat often\n}", wantErr: "invalid heartbeat 'often'"},
		{
			name: "every subdirective",
			input: `longpoll {
				interval 2s
				max_wait 40s
				idle_ttl 1m
				poll_timeout 5s
				key {host}{path}
				max_body 512KiB
				max_waiters 100
				max_waiters_per_client 5
				max_watches 20
				max_watches_per_client 3
				max_memory 8MiB
				query_params wait etag
			}`,
			want: Handler{
				Interval:            caddy.Duration(2 * time.Second),
				MaxWait:             caddy.Duration(40 * time.Second),
				IdleTTL:             caddy.Duration(time.Minute),
				PollTimeout:         caddy.Duration(5 * time.Second),
				Key:                 "{host}{path}",
				MaxBody:             512 << 10,
				MaxWaiters:          100,
				MaxWaitersPerClient: 5,
				MaxWatches:          20,
				MaxWatchesPerClient: 3,
				MaxMemory:           8 << 20,
				QueryParams:         &QueryParams{Wait: "wait", ETag: "etag"},
			},
		},

		// repeated subdirectives
		{name: "interval twice", input: "longpoll {\n\tinterval 1s\n\tinterval 2s\n}", wantErr: "interval already specified"},
		{name: "max_wait twice", input: "longpoll {\n\tmax_wait 10s\n\tmax_wait 10s\n}", wantErr: "max_wait already specified"},
		{name: "idle_ttl twice", input: "longpoll {\n\tidle_ttl 1s\n\tidle_ttl 2s\n}", wantErr: "idle_ttl already specified"},
		{name: "poll_timeout twice", input: "longpoll {\n\tpoll_timeout 1s\n\tpoll_timeout 2s\n}", wantErr: "poll_timeout already specified"},
		{name: "key twice", input: "longpoll {\n\tkey a\n\tkey b\n}", wantErr: "key already specified"},
		{name: "max_body twice", input: "longpoll {\n\tmax_body 1KiB\n\tmax_body 2KiB\n}", wantErr: "max_body already specified"},
		{name: "max_waiters twice", input: "longpoll {\n\tmax_waiters 1\n\tmax_waiters 2\n}", wantErr: "max_waiters already specified"},
		{
			name:    "max_waiters twice, first 0",
			input:   "longpoll {\n\tmax_waiters 0\n\tmax_waiters 2\n}",
			wantErr: "max_waiters already specified",
		},
		{name: "max_waiters_per_client twice", input: "longpoll {\n\tmax_waiters_per_client 1\n\tmax_waiters_per_client 2\n}", wantErr: "max_waiters_per_client already specified"},
		{
			name:    "max_waiters_per_client twice, first 0",
			input:   "longpoll {\n\tmax_waiters_per_client 0\n\tmax_waiters_per_client 2\n}",
			wantErr: "max_waiters_per_client already specified",
		},
		{name: "query_params twice", input: "longpoll {\n\tquery_params a b\n\tquery_params c d\n}", wantErr: "query_params already specified"},
		{name: "disable_metrics twice", input: "longpoll {\n\tdisable_metrics\n\tdisable_metrics\n}", wantErr: "disable_metrics already specified"},
		{name: "disable_metrics with a value", input: "longpoll {\n\tdisable_metrics true\n}", wantErr: "wrong argument count"},

		// bad values
		{name: "invalid duration", input: "longpoll {\n\tinterval soon\n}", wantErr: "invalid interval 'soon'"},
		{name: "duration without unit", input: "longpoll {\n\tmax_wait 30\n}", wantErr: "invalid max_wait '30'"},
		{name: "zero interval", input: "longpoll {\n\tinterval 0\n}", wantErr: "invalid interval '0': must not be zero"},
		{name: "zero max_wait", input: "longpoll {\n\tmax_wait 0s\n}", wantErr: "invalid max_wait '0s': must not be zero"},
		{name: "zero idle_ttl", input: "longpoll {\n\tidle_ttl 0ms\n}", wantErr: "invalid idle_ttl '0ms': must not be zero"},
		{name: "zero poll_timeout", input: "longpoll {\n\tpoll_timeout 0\n}", wantErr: "invalid poll_timeout '0': must not be zero"},
		{name: "non-number max_waiters", input: "longpoll {\n\tmax_waiters lots\n}", wantErr: "invalid max_waiters 'lots'"},
		{name: "fractional max_waiters", input: "longpoll {\n\tmax_waiters 1.5\n}", wantErr: "invalid max_waiters '1.5'"},
		{name: "non-number max_waiters_per_client", input: "longpoll {\n\tmax_waiters_per_client ten\n}", wantErr: "invalid max_waiters_per_client 'ten'"},
		{name: "bad size", input: "longpoll {\n\tmax_body big\n}", wantErr: "invalid max_body 'big'"},
		{name: "bad size unit", input: "longpoll {\n\tmax_body 2XB\n}", wantErr: "invalid max_body '2XB'"},
		{name: "zero size", input: "longpoll {\n\tmax_body 0\n}", wantErr: "invalid max_body '0'"},
		{name: "negative size", input: "longpoll {\n\tmax_body -1KiB\n}", wantErr: "invalid max_body '-1KiB'"},
		{name: "size over int64", input: "longpoll {\n\tmax_body 16EiB\n}", wantErr: "invalid max_body '16EiB'"},

		// missing arguments
		{name: "interval without value", input: "longpoll {\n\tinterval\n}", wantErr: "wrong argument count"},
		{name: "max_wait without value", input: "longpoll {\n\tmax_wait\n}", wantErr: "wrong argument count"},
		{name: "idle_ttl without value", input: "longpoll {\n\tidle_ttl\n}", wantErr: "wrong argument count"},
		{name: "poll_timeout without value", input: "longpoll {\n\tpoll_timeout\n}", wantErr: "wrong argument count"},
		{name: "key without value", input: "longpoll {\n\tkey\n}", wantErr: "wrong argument count"},
		{name: "max_body without value", input: "longpoll {\n\tmax_body\n}", wantErr: "wrong argument count"},
		{name: "max_waiters without value", input: "longpoll {\n\tmax_waiters\n}", wantErr: "wrong argument count"},
		{name: "max_waiters_per_client without value", input: "longpoll {\n\tmax_waiters_per_client\n}", wantErr: "wrong argument count"},
		{name: "query_params without value", input: "longpoll {\n\tquery_params\n}", wantErr: "wrong argument count"},
		{name: "query_params with one name", input: "longpoll {\n\tquery_params wait\n}", wantErr: "wrong argument count"},

		// extra arguments
		{name: "interval with two values", input: "longpoll {\n\tinterval 1s 2s\n}", wantErr: "wrong argument count"},
		{name: "max_wait with two values", input: "longpoll {\n\tmax_wait 10s 20s\n}", wantErr: "wrong argument count"},
		{name: "max_body with two values", input: "longpoll {\n\tmax_body 1 MiB\n}", wantErr: "wrong argument count"},
		{name: "max_waiters with two values", input: "longpoll {\n\tmax_waiters 1 2\n}", wantErr: "wrong argument count"},
		{name: "max_waiters_per_client with two values", input: "longpoll {\n\tmax_waiters_per_client 1 2\n}", wantErr: "wrong argument count"},
		{name: "query_params with three names", input: "longpoll {\n\tquery_params a b c\n}", wantErr: "wrong argument count"},

		// inline arguments, unknown subdirectives, nested blocks
		{name: "inline argument", input: `longpoll 5s`, wantErr: "wrong argument count"},
		{name: "inline argument with block", input: "longpoll 5s {\n\tinterval 1s\n}", wantErr: "wrong argument count"},
		{name: "unknown subdirective", input: "longpoll {\n\tintervall 1s\n}", wantErr: "unrecognized subdirective 'intervall'"},
		{name: "unknown subdirective after a known one", input: "longpoll {\n\tinterval 1s\n\tmax_wiat 10s\n}", wantErr: "unrecognized subdirective 'max_wiat'"},
		{name: "block under a duration", input: "longpoll {\n\tinterval 1s {\n\t\tx\n\t}\n}", wantErr: "unrecognized subdirective"},
		{name: "block under key", input: "longpoll {\n\tkey {path} {\n\t\tx\n\t}\n}", wantErr: "unrecognized subdirective"},
		{name: "block under query_params", input: "longpoll {\n\tquery_params a b {\n\t\tx\n\t}\n}", wantErr: "unrecognized subdirective"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.bug != "" {
				t.Skip("BUG: " + tt.bug)
			}
			var got Handler
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("UnmarshalCaddyfile(%q): got error %v, want one containing %q", tt.input, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("UnmarshalCaddyfile(%q): got error %v, want none", tt.input, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("UnmarshalCaddyfile(%q): got %s, want %s", tt.input, exportedJSON(t, &got), exportedJSON(t, &tt.want))
			}
		})
	}
}

// exportedJSON shows a handler's settings (its exported fields) in failure
// messages.
func exportedJSON(t *testing.T, h *Handler) string {
	t.Helper()
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// exampleLongpollBlock is the longpoll block of Caddyfile.example. The
// example is documentation that users copy: TestAdaptCaddyfileExample fails
// when the file and this copy drift apart, so that a change to one is a
// deliberate change to both, and to the expected JSON.
const exampleLongpollBlock = `
	longpoll {
		# How often a watched file is polled while clients wait. Default: 1s.
		interval 1s
		# The longest a request is held; larger waits are clamped. Default: 55s.
		max_wait 55s
		# How long an idle watch stays warm after its last client. Default: 30s.
		idle_ttl 30s
		# How long one poll may take before it counts as failed. Default: 10s.
		poll_timeout 10s
		# What requests share a poll. Default: method, host, path, query,
		# Authorization and Cookie (per user). These files are public.
		key {host}{uri}
		# The largest body held and shared; larger ones pass through. Default: 1MiB.
		max_body 1MiB
		# The most requests held at once (503 beyond). Default: 10000.
		max_waiters 10000
		# The most held at once per client IP (429 beyond). Default: 0, no cap.
		max_waiters_per_client 100
		# The most watches polling at once (503 beyond). Default: 10000.
		max_watches 10000
		# The most watches one client IP holds requests on (429 beyond). Default: 64.
		max_watches_per_client 64
		# The most memory the watches hold; idle ones are dropped past it. Default: 256MiB.
		max_memory 256MiB
		# Query parameters for clients that cannot send headers. Default: off.
		query_params wait etag
		# The name longpoll_notify reaches a watch by. Default: the request path.
		topic {path}
		# The notification group of this handler. Default: none.
		group demo
		# Leave this handler out of the caddy_longpoll_* metrics. Default: off.
		# disable_metrics
		# Server-Sent Events to an Accept: text/event-stream GET. Default: off.
		sse
		# WebSocket streams to an Upgrade: websocket GET. Default: off.
		websocket
		# A quiet stream's sign of life (SSE comment, WebSocket ping). Default: 25s.
		heartbeat 25s
		# The most streams open at once (503 beyond). Default: 10000.
		max_streams 10000
		# End a stream after this long, so that connections rebalance. Default: 0, never.
		max_stream_duration 1h
		# Origins allowed to open WebSocket streams. Default: the same origin only.
		origins localhost:8080
		# Let streams be compressed (SSE by encode, WebSocket by permessage-deflate). Default: off.
		# compress_streams
		# Without encode in front, compress answers here (encode's syntax). Default: follow
		# the encode in front, compressing each version once; without one, none.
		# compress gzip zstd
		# JSON fields whose changes are no change (JSON pointers). Default: none.
		# ignore /generated_at /items/*/updated_at
		# Stream clients that ask (?deltas=json-patch) get changes as JSON Patches. Default: off.
		# deltas json-patch
		# Instances with this Caddyfile share one poller per key, on Redis. Default: off.
		# cluster {env.LONGPOLL_REDIS_URL}
	}
`

// exampleJSON is Caddyfile.example adapted, with LONGPOLL_DEMO_ROOT set to
// /srv/longpoll-demo. It listens on loopback addresses only. Durations are integer nanoseconds; the shorthand
// placeholders of the key are expanded by the Caddyfile adapter.
const exampleJSON = `{
	"admin": {
		"listen": "localhost:2019",
		"config": {
			"persist": false
		}
	},
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						"127.0.0.1:8080",
						"[::1]:8080"
					],
					"routes": [
						{
							"match": [
								{
									"host": [
										"localhost"
									]
								}
							],
							"handle": [
								{
									"handler": "subroute",
									"routes": [
										{
											"handle": [
												{
													"handler": "vars",
													"root": "/srv/longpoll-demo"
												},
												{
													"handler": "log_append",
													"key": "longpoll_outcome",
													"value": "{http.longpoll.outcome}"
												},
												{
													"handler": "log_append",
													"key": "longpoll_held",
													"value": "{http.longpoll.held}"
												},
												{
													"encodings": {
														"gzip": {},
														"zstd": {}
													},
													"handler": "encode",
													"prefer": [
														"zstd",
														"gzip"
													]
												},
												{
													"group": "demo",
													"handler": "longpoll",
													"heartbeat": 25000000000,
													"idle_ttl": 30000000000,
													"interval": 1000000000,
													"key": "{http.request.host}{http.request.uri}",
													"max_body": 1048576,
													"max_memory": 268435456,
													"max_stream_duration": 3600000000000,
													"max_streams": 10000,
													"max_wait": 55000000000,
													"max_waiters": 10000,
													"max_waiters_per_client": 100,
													"max_watches": 10000,
													"max_watches_per_client": 64,
													"origins": [
														"localhost:8080"
													],
													"poll_timeout": 10000000000,
													"query_params": {
														"etag": "etag",
														"wait": "wait"
													},
													"sse": true,
													"topic": "{http.request.uri.path}",
													"websocket": true
												}
											]
										},
										{
											"handle": [
												{
													"handler": "subroute",
													"routes": [
														{
															"handle": [
																{
																	"group": "demo",
																	"handler": "longpoll_notify",
																	"secret": "{env.LONGPOLL_NOTIFY_SECRET}"
																}
															]
														}
													]
												}
											],
											"match": [
												{
													"path": [
														"/_longpoll/notify"
													]
												}
											]
										},
										{
											"handle": [
												{
													"handler": "file_server",
													"hide": [
														"./Caddyfile"
													]
												}
											]
										}
									]
								}
							],
							"terminal": true
						}
					],
					"automatic_https": {
						"disable": true,
						"skip": [
							"localhost"
						]
					},
					"logs": {
						"logger_names": {
							"localhost": [
								""
							]
						}
					}
				}
			}
		}
	}
}`

// TestAdaptCaddyfileExample adapts Caddyfile.example, comments and all, and
// compares it with the expected JSON: the example users copy must adapt,
// and to what the README says.
func TestAdaptCaddyfileExample(t *testing.T) {
	t.Setenv("LONGPOLL_DEMO_ROOT", "/srv/longpoll-demo")
	// The secret is read when the config loads, never written into it:
	// a value in the environment at adapt time must not reach the JSON
	// (which Caddy saves to autosave.json and serves on GET /config/).
	const secret = "sentinel-secret-value"
	t.Setenv("LONGPOLL_NOTIFY_SECRET", secret)
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	if out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, nil); err != nil || strings.Contains(string(out), secret) {
		t.Errorf("adapting Caddyfile.example: got the secret from the environment in the JSON (or error %v), want the {env.*} placeholder", err)
	}
	if !strings.Contains(string(src), exampleLongpollBlock) {
		t.Errorf("Caddyfile.example: got no block equal to exampleLongpollBlock, want one (update the file and the test together)")
	}
	caddytest.AssertAdapt(t, string(src), "caddyfile", exampleJSON)

	got := adaptedHandlers(t, string(src))
	want := []string{"subroute", "vars", "log_append", "log_append", "encode", "longpoll", "subroute", "longpoll_notify", "file_server"}
	if !slices.Equal(got, want) {
		t.Errorf("adapting Caddyfile.example: got handlers %q, want %q", got, want)
	}
}

// TestAdaptMatcherAndDefaults checks that a matcher is not taken for an
// inline argument, that key tokens are joined after placeholder expansion,
// and that a bare directive adapts to a handler with no settings (every
// default is applied at Provision, so that the JSON stays minimal).
func TestAdaptMatcherAndDefaults(t *testing.T) {
	const input = `:8080 {
	longpoll /api/* {
		key {path} {query.v}
	}
	longpoll
	respond "ok"
}
`
	const want = `{
	"apps": {
		"http": {
			"servers": {
				"srv0": {
					"listen": [
						":8080"
					],
					"routes": [
						{
							"match": [
								{
									"path": [
										"/api/*"
									]
								}
							],
							"handle": [
								{
									"handler": "longpoll",
									"key": "{http.request.uri.path} {http.request.uri.query.v}"
								}
							]
						},
						{
							"handle": [
								{
									"handler": "longpoll"
								},
								{
									"body": "ok",
									"handler": "static_response"
								}
							]
						}
					]
				}
			}
		}
	}
}`
	caddytest.AssertAdapt(t, input, "caddyfile", want)
}

// TestAdaptDirectiveOrder checks the registered order whatever the order in
// the Caddyfile: after encode (so that released responses are compressed per
// client), before the handlers that produce content, which it polls.
func TestAdaptDirectiveOrder(t *testing.T) {
	tests := []struct {
		name  string
		input string
		want  []string
	}{
		{
			name:  "file_server",
			input: ":8080 {\n\tfile_server\n\tlongpoll\n\tencode\n}\n",
			want:  []string{"encode", "longpoll", "file_server"},
		},
		{
			name:  "reverse_proxy",
			input: ":8080 {\n\treverse_proxy localhost:9000\n\tencode\n\tlongpoll\n}\n",
			want:  []string{"encode", "longpoll", "reverse_proxy"},
		},
		{
			name:  "respond",
			input: ":8080 {\n\trespond ok\n\tlongpoll\n}\n",
			want:  []string{"longpoll", "static_response"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := adaptedHandlers(t, tt.input); !slices.Equal(got, tt.want) {
				t.Errorf("adapting %q: got handlers %q, want %q", tt.input, got, tt.want)
			}
		})
	}
}

// adaptedHandlers adapts a Caddyfile and returns the names of its handlers
// in the order of the JSON document, which is the order they run in for the
// single-route configs used here.
func adaptedHandlers(t *testing.T, input string) []string {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatalf("adapting %q: %v", input, err)
	}
	for _, w := range warnings {
		t.Logf("adapting %q: warning: %s", input, w.Message)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	var names []string
	for {
		tok, err := dec.Token()
		if err != nil {
			break
		}
		if tok != "handler" {
			continue
		}
		if v, err := dec.Token(); err == nil {
			if s, ok := v.(string); ok {
				names = append(names, s)
			}
		}
	}
	return names
}

// TestSyntaxBlock keeps the syntax block of the UnmarshalCaddyfile doc
// comment and the README's identical, and both in step with the parser and
// the JSON field names: the block is the directive's reference, so a
// subdirective added to one place and not the others is a documentation bug.
func TestSyntaxBlock(t *testing.T) {
	src, err := os.ReadFile("caddyfile.go")
	if err != nil {
		t.Fatal(err)
	}
	var docLines []string
	for line := range strings.Lines(string(src)) {
		if rest, ok := strings.CutPrefix(line, "//"); ok {
			docLines = append(docLines, rest)
		} else {
			docLines = append(docLines, "") // ends the block if it is open
		}
	}
	doc := syntaxBlock(t, "caddyfile.go", docLines)
	if len(doc) == 0 {
		t.Fatal("caddyfile.go: got an empty syntax block, want the subdirectives")
	}

	t.Run("README", func(t *testing.T) {
		readme, err := os.ReadFile("../README.md")
		if errors.Is(err, fs.ErrNotExist) {
			t.Skip("no README.md")
		}
		if err != nil {
			t.Fatal(err)
		}
		got := syntaxBlock(t, "README.md", strings.Split(string(readme), "\n"))
		if !slices.Equal(got, doc) {
			t.Errorf("README.md syntax block:\n%s\nwant the one of caddyfile.go:\n%s",
				strings.Join(got, "\n"), strings.Join(doc, "\n"))
		}
	})

	var names []string
	for _, line := range doc {
		names = append(names, strings.Fields(line)[0])
	}
	sort.Strings(names)

	t.Run("parser", func(t *testing.T) {
		got := parserCases(t, src)
		sort.Strings(got)
		if !slices.Equal(got, names) {
			t.Errorf("UnmarshalCaddyfile cases: got %q, want the syntax block's %q", got, names)
		}
	})

	t.Run("JSON fields", func(t *testing.T) {
		var got []string
		typ := reflect.TypeFor[Handler]()
		for i := range typ.NumField() {
			if tag, _, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ","); tag != "" && tag != "-" {
				got = append(got, tag)
			}
		}
		sort.Strings(got)
		if !slices.Equal(got, names) {
			t.Errorf("Handler JSON fields: got %q, want the syntax block's %q", got, names)
		}
	})
}

// syntaxBlock returns the lines between "longpoll [<matcher>] {" and its
// closing "}", leading tabs and spaces removed and trailing space trimmed.
func syntaxBlock(t *testing.T, name string, lines []string) []string {
	t.Helper()
	const opening = "longpoll [<matcher>] {"
	var block []string
	open, found := false, false
	for _, line := range lines {
		line = strings.TrimRight(strings.TrimLeft(line, "\t "), "\r\n\t ")
		switch {
		case !open && line == opening:
			if found {
				t.Fatalf("%s: got two syntax blocks, want one", name)
			}
			open, found = true, true
		case open && line == "}":
			open = false
		case open && line == "":
			t.Fatalf("%s: got a blank line or the end of the comment in the syntax block, want a closing }", name)
		case open:
			block = append(block, line)
		}
	}
	if !found {
		t.Fatalf("%s: got no line %q, want the syntax block", name, opening)
	}
	if open {
		t.Fatalf("%s: got no closing } for the syntax block", name)
	}
	return block
}

// parserCases returns the string cases of the switch in UnmarshalCaddyfile.
func parserCases(t *testing.T, src []byte) []string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "caddyfile.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cases []string
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Name.Name != "UnmarshalCaddyfile" {
			continue
		}
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			cc, ok := n.(*ast.CaseClause)
			if !ok {
				return true
			}
			for _, e := range cc.List {
				if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					if s, err := strconv.Unquote(lit.Value); err == nil {
						cases = append(cases, s)
					}
				}
			}
			return true
		})
	}
	if len(cases) == 0 {
		t.Fatal("caddyfile.go: got no cases in UnmarshalCaddyfile, want one per subdirective")
	}
	return cases
}
