// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// newTestContext returns the context of one config load, cancelled when the
// test ends.
func newTestContext(t *testing.T) caddy.Context {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	return ctx
}

// provision provisions h in ctx and cleans it up when the test ends.
func provision(t *testing.T, ctx caddy.Context, h *Handler) {
	t.Helper()
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision(%s): got error %v, want none", exportedJSON(t, h), err)
	}
	t.Cleanup(func() {
		if err := h.Cleanup(); err != nil {
			t.Errorf("Cleanup(): got error %v, want none", err)
		}
	})
}

// TestValidate checks each rule on the settled config (defaults applied, as
// Provision does before it validates), and that errors name the JSON key, so
// that JSON and Caddyfile users can find the setting at fault.
func TestValidate(t *testing.T) {
	const s = caddy.Duration(time.Second)
	tests := []struct {
		name    string
		h       Handler
		wantErr []string // substrings of the error; nil for success
	}{
		{name: "defaults", h: Handler{}},
		{
			name: "every setting",
			h: Handler{
				Interval: 2 * s, MaxWait: 30 * s, IdleTTL: 60 * s, PollTimeout: 5 * s,
				Key: "{http.request.uri.path}", MaxBody: 1, MaxWaiters: 1, MaxWaitersPerClient: 1,
				QueryParams: &QueryParams{Wait: "w", ETag: "e"},
			},
		},
		{name: "max_wait of 1s", h: Handler{Interval: s / 2, MaxWait: s}},
		{name: "negative max_waiters removes the cap", h: Handler{MaxWaiters: -1}},
		{name: "interval just below max_wait", h: Handler{Interval: 55*s - 1}},
		{name: "interval equal to max_wait", h: Handler{Interval: 55 * s}, wantErr: []string{"interval (55s) must be below max_wait (55s)"}},
		{name: "interval above max_wait", h: Handler{Interval: 60 * s, MaxWait: 30 * s}, wantErr: []string{"interval (1m0s) must be below max_wait (30s)"}},
		{name: "negative interval", h: Handler{Interval: -s}, wantErr: []string{"interval must be positive"}},
		{name: "max_wait below 1s", h: Handler{Interval: s / 10, MaxWait: s - 1}, wantErr: []string{"max_wait must be at least 1s"}},
		{name: "negative max_wait", h: Handler{MaxWait: -s}, wantErr: []string{"max_wait must be at least 1s"}},
		{name: "negative idle_ttl", h: Handler{IdleTTL: -s}, wantErr: []string{"idle_ttl must not be negative"}},
		{name: "negative poll_timeout", h: Handler{PollTimeout: -s}, wantErr: []string{"poll_timeout must be positive"}},
		{name: "negative max_body", h: Handler{MaxBody: -1}, wantErr: []string{"max_body must be positive"}},
		{name: "negative max_waiters_per_client", h: Handler{MaxWaitersPerClient: -1}, wantErr: []string{"max_waiters_per_client must not be negative"}},
		{name: "negative caps and budget remove them", h: Handler{MaxWatches: -1, MaxWatchesPerClient: -1, MaxMemory: -1, MaxStreams: -1}},
		{name: "heartbeat below 1s", h: Handler{Heartbeat: s / 2}, wantErr: []string{"heartbeat must be at least 1s"}},
		{name: "max_stream_duration below 10s", h: Handler{MaxStreamDuration: 5 * s}, wantErr: []string{"max_stream_duration must be 0 (off) or at least 10s"}},
		{name: "an origin with a comma", h: Handler{Origins: []string{"a.example, b.example"}}, wantErr: []string{"origins:"}},
		{name: "ignore pointers malformed", h: Handler{Ignore: []string{"/ok", "items/0", "/a~2"}}, wantErr: []string{`ignore: JSON pointer "items/0"`, `JSON pointer "/a~2"`}},
		{name: "ignore pointers", h: Handler{Ignore: []string{"/generated_at", "/items/*/updated_at", "/a~1b"}}},
		{name: "deltas on streams", h: Handler{SSE: true, Deltas: "json-patch"}},
		{name: "cluster", h: Handler{Cluster: "rediss://app:hunter2@redis.example.com:6380/1"}},
		{name: "cluster of another scheme", h: Handler{Cluster: "http://app:hunter2@redis.example.com"}, wantErr: []string{`cluster: scheme "http"`}},
		{name: "cluster URL that does not parse", h: Handler{Cluster: "redis://app:hunter2 x@bad host"}, wantErr: []string{"cluster: the URL does not parse"}},
		{name: "deltas of another kind", h: Handler{WebSocket: true, Deltas: "merge-patch"}, wantErr: []string{`deltas: "merge-patch" is not a kind of delta; the one kind is "json-patch"`}},
		{name: "deltas without a stream", h: Handler{Deltas: "json-patch"}, wantErr: []string{"deltas needs sse or websocket"}},
		{name: "max_memory below max_body", h: Handler{MaxBody: 2 << 20, MaxMemory: 1 << 20}, wantErr: []string{"max_memory (1048576) must be at least twice max_body (2097152)"}},
		{name: "max_memory below twice max_body", h: Handler{MaxBody: 2 << 20, MaxMemory: 4<<20 - 1}, wantErr: []string{"must be at least twice max_body"}},
		{name: "max_memory twice max_body", h: Handler{MaxBody: 2 << 20, MaxMemory: 4 << 20}},
		// A key that resolves to the same string for every request would make
		// different resources share one response: a Caddyfile shorthand in
		// JSON (unknown there, so replaced by "") or no placeholder at all.
		{name: "key with a Caddyfile shorthand", h: Handler{Key: "{host}{path}"}, wantErr: []string{"key: unknown placeholder {host}"}},
		{name: "key without placeholder", h: Handler{Key: "orders"}, wantErr: []string{"has no request placeholder"}},
		{name: "key with only the same value for everyone", h: Handler{Key: "{env.TENANT}{system.hostname}"}, wantErr: []string{"has no request placeholder"}},
		{name: "key with an escaped brace and a placeholder", h: Handler{Key: `\{x}{http.request.uri}`}},
		{name: "key with env placeholder only is accepted", h: Handler{Key: "{env.TENANT}:{http.request.uri}"}},
		{name: "query_params without names", h: Handler{QueryParams: &QueryParams{}}, wantErr: []string{"query_params needs both"}},
		{name: "query_params without wait", h: Handler{QueryParams: &QueryParams{ETag: "e"}}, wantErr: []string{"query_params needs both"}},
		{name: "query_params without etag", h: Handler{QueryParams: &QueryParams{Wait: "w"}}, wantErr: []string{"query_params needs both"}},
		{name: "query_params with equal names", h: Handler{QueryParams: &QueryParams{Wait: "v", ETag: "v"}}, wantErr: []string{`query_params wait and etag must differ, both are "v"`}},
		{
			name:    "every error is reported",
			h:       Handler{Interval: -s, IdleTTL: -s, MaxBody: -1},
			wantErr: []string{"interval", "idle_ttl", "max_body"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.h
			h.applyDefaults()
			err := h.Validate()
			if tt.wantErr == nil {
				if err != nil {
					t.Errorf("Validate(%s): got error %v, want none", exportedJSON(t, &h), err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate(%s): got no error, want one containing %q", exportedJSON(t, &h), tt.wantErr)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("Validate: the error %q holds the cluster's password", err)
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("Validate(%s): got error %q, want it to contain %q", exportedJSON(t, &h), err, want)
				}
			}
		})
	}
}

// TestProvisionDefaults checks the documented defaults, and that they reach
// the engine.
func TestProvisionDefaults(t *testing.T) {
	h := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}"}
	provision(t, newTestContext(t), h)
	checks := []struct {
		name      string
		got, want any
	}{
		{"interval", h.Interval, caddy.Duration(time.Second)},
		{"max_wait", h.MaxWait, caddy.Duration(55 * time.Second)},
		{"idle_ttl", h.IdleTTL, caddy.Duration(30 * time.Second)},
		{"poll_timeout", h.PollTimeout, caddy.Duration(10 * time.Second)},
		{"max_body", h.MaxBody, int64(1 << 20)},
		{"max_waiters", h.MaxWaiters, 10000},
		{"max_waiters_per_client", h.MaxWaitersPerClient, 0},
		{"max_watches_per_client", h.MaxWatchesPerClient, 64},
		{"max_watches", h.MaxWatches, 10000},
		{"max_memory", h.MaxMemory, int64(256 << 20)},
		{"engine max_memory", h.hub.engine.Config().MaxMemory, int64(256 << 20)},
		{"engine max_watches", h.hub.engine.Config().MaxActive, 10000},
		{"engine interval", h.hub.engine.Config().Interval, time.Second},
		{"engine idle_ttl", h.hub.engine.Config().IdleTTL, 30 * time.Second},
		{"engine poll_timeout", h.hub.engine.Config().PollTimeout, 10 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("after Provision of an empty config: got %s %v, want %v", c.name, c.got, c.want)
		}
	}
}

// TestProvisionKeepsSettings checks that Provision leaves set values alone
// and hands them to the engine.
func TestProvisionKeepsSettings(t *testing.T) {
	const s = caddy.Duration(time.Second)
	h := &Handler{
		Interval: 2 * s, MaxWait: 20 * s, IdleTTL: 7 * s, PollTimeout: 3 * s,
		Key: "test:" + t.Name() + ":{http.request.uri}", MaxBody: 5, MaxWaiters: -1, MaxWaitersPerClient: 4,
		MaxWatchesPerClient: 9, MaxWatches: 11, MaxMemory: 4096,
		Heartbeat: 3 * s, MaxStreams: 12,
	}
	want := *h
	provision(t, newTestContext(t), h)
	if got := exportedJSON(t, h); got != exportedJSON(t, &want) {
		t.Errorf("after Provision: got %s, want %s", got, exportedJSON(t, &want))
	}
	wantCfg := longpoll.Config{Interval: 2 * time.Second, IdleTTL: 7 * time.Second, PollTimeout: 3 * time.Second, MaxMemory: 4096, MaxActive: 11}
	if got := h.hub.engine.Config(); got.Interval != wantCfg.Interval || got.IdleTTL != wantCfg.IdleTTL || got.PollTimeout != wantCfg.PollTimeout ||
		got.MaxMemory != wantCfg.MaxMemory || got.MaxActive != wantCfg.MaxActive {
		t.Errorf("engine config: got %+v, want %+v", got, wantCfg)
	}
}

// TestProvisionSharesHubs checks how handlers find their engine: handlers
// with identical settings in one config are distinct handlers (two routes)
// and must not share watches, while a handler of the next config (a reload)
// takes over the engine of its predecessor, with a higher generation so that
// watches move to its poll path.
func TestProvisionSharesHubs(t *testing.T) {
	settings := func() *Handler { return &Handler{Key: "test:" + t.Name() + ":{http.request.uri}"} }

	ctx1 := newTestContext(t)
	a1, b1 := settings(), settings()
	provision(t, ctx1, a1)
	provision(t, ctx1, b1)
	if a1.hub == b1.hub {
		t.Errorf("two handlers with identical settings in one config: got the same hub (%s, %s), want different ones", a1.poolKey, b1.poolKey)
	}

	ctx2 := newTestContext(t)
	a2, b2 := settings(), settings()
	provision(t, ctx2, a2)
	provision(t, ctx2, b2)
	if a2.hub != a1.hub {
		t.Errorf("first handler of a reloaded config: got hub %s, want its predecessor's %s", a2.poolKey, a1.poolKey)
	}
	if b2.hub != b1.hub {
		t.Errorf("second handler of a reloaded config: got hub %s, want its predecessor's %s", b2.poolKey, b1.poolKey)
	}
	if n := a1.hub.engine.Routes(); n != 2 || a2.route == a1.route {
		t.Errorf("reloaded handler: got %d routes open, want 2 (the running config's and the new one's)", n)
	}
	if n, _ := hubs.References(a1.poolKey); n != 2 {
		t.Errorf("hub %s: got %d references, want 2", a1.poolKey, n)
	}

	// Settings that do not change what a watch is apply to the running
	// engine: a third config with another interval and other caps keeps
	// the hub, and its engine polls at the new interval.
	ctx3 := newTestContext(t)
	tuned := settings()
	tuned.Interval = caddy.Duration(2 * time.Second)
	tuned.MaxWaiters, tuned.MaxMemory = 7, 64<<20
	provision(t, ctx3, tuned)
	if tuned.hub != a1.hub {
		t.Errorf("handler with a new interval and caps: got hub %s, want its predecessor's %s", tuned.poolKey, a1.poolKey)
	}
	if cfg := a1.hub.engine.Config(); cfg.Interval != 2*time.Second || cfg.MaxMemory != 64<<20 {
		t.Errorf("engine config after the new handler joined: interval %v, max memory %d; want 2s and 64 MiB", cfg.Interval, cfg.MaxMemory)
	}
	// A config that fails (cleaned up before it served) gives the running
	// config's settings back.
	if err := tuned.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if cfg := a1.hub.engine.Config(); cfg.Interval != time.Second {
		t.Errorf("engine config after the new handler left: interval %v, want the running config's 1s", cfg.Interval)
	}

	changed := settings()
	changed.MaxBody = 4096
	provision(t, ctx2, changed)
	if changed.hub == a1.hub || changed.hub == b1.hub {
		t.Errorf("handler with a changed max_body (what a watch holds): got a predecessor's hub %s, want a new one", changed.poolKey)
	}
}

// subscribeProbe subscribes to a watch of hb's engine and leaves at once,
// reporting whether the engine accepted the subscription.
func subscribeProbe(hb *hub) error {
	sub, err := hb.engine.Join(longpoll.KeyOf("probe"), "t", func() longpoll.Fetcher {
		return longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
			return longpoll.NewSnapshot(http.StatusOK, http.Header{}, []byte("probe"), http.Header{})
		})
	})
	if err == nil {
		sub.Close()
	}
	return err
}

// TestCleanup checks that Cleanup releases exactly one reference however
// often it is called (Caddy may call it again; a second release would close
// the engine under the next config's handler), and that the engine closes
// when its last handler is cleaned up.
func TestCleanup(t *testing.T) {
	oldH := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}"}
	newH := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}"}
	t.Cleanup(func() { _ = oldH.Cleanup(); _ = newH.Cleanup() }) // on early failure
	if err := oldH.Provision(newTestContext(t)); err != nil {
		t.Fatal(err)
	}
	if err := newH.Provision(newTestContext(t)); err != nil {
		t.Fatal(err)
	}
	hb, key := oldH.hub, oldH.poolKey
	if newH.hub != hb {
		t.Fatalf("reloaded handler: got hub %s, want %s", newH.poolKey, key)
	}

	for i := range 3 {
		if err := oldH.Cleanup(); err != nil {
			t.Errorf("old handler's Cleanup() call %d: got error %v, want none", i+1, err)
		}
	}
	if n, ok := hubs.References(key); n != 1 || !ok {
		t.Errorf("after the old handler's Cleanup: got %d references (found %t), want 1", n, ok)
	}
	if err := subscribeProbe(hb); err != nil {
		t.Errorf("Subscribe after the old handler's Cleanup, with the new one running: got error %v, want none", err)
	}
	if oldH.hub == nil {
		t.Error("old handler after Cleanup: got no hub, want it kept for the requests it still serves")
	}

	for i := range 2 {
		if err := newH.Cleanup(); err != nil {
			t.Errorf("new handler's Cleanup() call %d: got error %v, want none", i+1, err)
		}
	}
	if n, ok := hubs.References(key); n != 0 || ok {
		t.Errorf("after every handler's Cleanup: got %d references (found %t), want none", n, ok)
	}
	if err := subscribeProbe(hb); !errors.Is(err, longpoll.ErrClosed) {
		t.Errorf("Subscribe after every handler's Cleanup: got error %v, want %v", err, longpoll.ErrClosed)
	}
}

// TestCleanupAfterFailedProvision checks that Cleanup is safe on a handler
// whose Provision failed (Caddy cleans up what it provisioned when a config
// fails to load) or never ran, and that the error names the JSON key.
func TestCleanupAfterFailedProvision(t *testing.T) {
	tests := []struct {
		name    string
		h       *Handler
		wantErr string
	}{
		{name: "negative interval", h: &Handler{Interval: -1}, wantErr: "interval"},
		{name: "max_wait too short", h: &Handler{MaxWait: caddy.Duration(time.Millisecond)}, wantErr: "max_wait"},
		{name: "query_params without names", h: &Handler{QueryParams: &QueryParams{}}, wantErr: "query_params"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.h.Provision(newTestContext(t))
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Provision(%s): got error %v, want one containing %q", exportedJSON(t, tt.h), err, tt.wantErr)
			}
			if tt.h.hub != nil {
				t.Errorf("Provision(%s) failed: got a hub %s, want none", exportedJSON(t, tt.h), tt.h.poolKey)
			}
			for i := range 2 {
				if err := tt.h.Cleanup(); err != nil {
					t.Errorf("Cleanup() call %d after a failed Provision: got error %v, want none", i+1, err)
				}
			}
		})
	}
	t.Run("never provisioned", func(t *testing.T) {
		if err := new(Handler).Cleanup(); err != nil {
			t.Errorf("Cleanup() without Provision: got error %v, want none", err)
		}
	})
}

// TestHubLogsThroughNewestLogger reloads a handler (same settings, a new
// config) with new logging: the shared engine's lines must follow the new
// config's logger, not stay with the one of the config that made it, and
// go back to it when a later reload fails and is cleaned up.
func TestHubLogsThroughNewestLogger(t *testing.T) {
	key := "test:" + t.Name() + ":{http.request.uri}"
	first := &Handler{Key: key}
	provision(t, newTestContext(t), first)
	oldCore, oldLogs := observer.New(zapcore.InfoLevel)
	first.useLogger(zap.New(oldCore).Named("old"))

	second := &Handler{Key: key} // the reloaded config's handler
	provision(t, newTestContext(t), second)
	if second.hub != first.hub {
		t.Fatal("the reloaded handler got a new hub, want the one it shares with its predecessor")
	}
	if second.hub.log.Load() != second.logger {
		t.Error("after Provision, the hub logs through an older handler's logger, want the newest one's")
	}
	newCore, newLogs := observer.New(zapcore.InfoLevel)
	second.useLogger(zap.New(newCore).Named("http.handlers.longpoll"))

	// a reload that fails: provisioned, then cleaned up without running
	failed := &Handler{Key: key}
	provision(t, newTestContext(t), failed)
	if failed.hub.log.Load() != failed.logger {
		t.Error("after the failed config's Provision, the hub does not log through its logger")
	}
	if err := failed.Cleanup(); err != nil {
		t.Fatal(err)
	}
	if failed.hub.log.Load() != second.logger {
		t.Error("after the failed config's Cleanup, the hub does not log through the running config's logger")
	}

	if err := second.hub.engine.Close(); err != nil {
		t.Fatal(err)
	}
	if oldLogs.Len() != 0 {
		t.Errorf("old config's logger got %v, want nothing after the reload", oldLogs.All())
	}
	closed := newLogs.FilterMessage("longpoll engine closed").All()
	if len(closed) != 1 || closed[0].LoggerName != "http.handlers.longpoll" {
		t.Errorf("running config's logger got %v, want the engine's close, under its name", newLogs.All())
	}
}
