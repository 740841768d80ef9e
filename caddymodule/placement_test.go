// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"encoding/json"
	"slices"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// placementCases are sites and the handlers after which a longpoll handler
// of theirs is out of reach. A longpoll that nothing reaches loads as valid
// and holds nothing: the warning is all the operator gets.
var placementCases = []struct {
	name string
	site string
	want []string // the handler before each unreachable longpoll
}{
	{"directive order", "longpoll\n\treverse_proxy localhost:9000", nil},
	{"route, in front", "route {\n\t\tlongpoll\n\t\treverse_proxy localhost:9000\n\t}", nil},
	{"route, after reverse_proxy", "route {\n\t\treverse_proxy localhost:9000\n\t\tlongpoll\n\t}", []string{"reverse_proxy"}},
	{"route, after respond", "route {\n\t\trespond ok\n\t\tlongpoll\n\t}", []string{"static_response"}},
	{"route, after file_server", "route {\n\t\tfile_server\n\t\tlongpoll\n\t}", []string{"file_server"}},
	{"route, after file_server pass_thru", "route {\n\t\tfile_server {\n\t\t\tpass_thru\n\t\t}\n\t\tlongpoll\n\t\trespond ok\n\t}", nil},
	{"route, after error", "route {\n\t\terror 404\n\t\tlongpoll\n\t}", []string{"error"}},
	{"route, after php_fastcgi", "route {\n\t\tphp_fastcgi localhost:9000\n\t\tlongpoll\n\t}", []string{"php_fastcgi"}},
	{"route, after a matched reverse_proxy", "route {\n\t\treverse_proxy /api/* localhost:9000\n\t\tlongpoll\n\t\trespond ok\n\t}", nil},
	{"a route block after one that answers all", "route {\n\t\treverse_proxy localhost:9000\n\t}\n\troute {\n\t\tlongpoll\n\t\trespond ok\n\t}", []string{"reverse_proxy"}},
	{"a handle block in front", "handle /api/* {\n\t\tlongpoll\n\t\treverse_proxy localhost:9000\n\t}\n\trespond ok", nil},
	{"two unreachable", "route {\n\t\trespond ok\n\t\tlongpoll\n\t\tlongpoll /x\n\t}", []string{"static_response", "static_response"}},
}

// siteRoutes adapts a site and returns its server's routes, as JSON not yet
// provisioned.
func siteRoutes(t *testing.T, site string) caddyhttp.RouteList {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(":8080 {\n\t"+site+"\n}\n"), nil)
	if err != nil {
		t.Fatalf("adapting %q: %v", site, err)
	}
	var cfg struct {
		Apps struct {
			HTTP struct {
				Servers map[string]struct {
					Routes caddyhttp.RouteList `json:"routes"`
				} `json:"servers"`
			} `json:"http"`
		} `json:"apps"`
	}
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg.Apps.HTTP.Servers["srv0"].Routes
}

func afterNames(us []unreachable) []string {
	var names []string
	for _, u := range us {
		names = append(names, u.after)
	}
	return names
}

// TestFindUnreachable reads each site's routes as Provision may find them
// while the routes are provisioned: as JSON (the routes not provisioned yet,
// the handler's own among them).
func TestFindUnreachable(t *testing.T) {
	for _, tt := range placementCases {
		t.Run(tt.name, func(t *testing.T) {
			routes := siteRoutes(t, tt.site)
			if got := afterNames(findUnreachable(routeNodes(routes), "")); !slices.Equal(got, tt.want) {
				t.Errorf("got longpoll out of reach after %q, want %q", got, tt.want)
			}
		})
	}
}

// TestIntegrationWarnUnreachable loads each site into Caddy: the warning
// must be in the log once for each unreachable handler, and the routes, now
// provisioned (the routes before a handler's own, as Provision sees them),
// must read as their JSON did.
func TestIntegrationWarnUnreachable(t *testing.T) {
	tc := itStart(t)
	globals, reset, entries := itLogFile(t)
	for _, tt := range placementCases {
		t.Run(tt.name, func(t *testing.T) {
			reset()
			itLoad(t, tc, itConfig(globals, "\t"+tt.site+"\n"))
			app, err := caddy.ActiveContext().App("http")
			if err != nil {
				t.Fatal(err)
			}
			routes := app.(*caddyhttp.App).Servers["srv0"].Routes
			if routes[0].HandlersRaw != nil {
				t.Fatal("provisioned routes still hold their JSON")
			}
			if got := afterNames(findUnreachable(routeNodes(routes), "")); !slices.Equal(got, tt.want) {
				t.Errorf("provisioned: got longpoll out of reach after %q, want %q", got, tt.want)
			}
			var got []string
			for _, e := range entries("longpoll comes after") {
				if e["level"] != "warn" {
					t.Errorf("got the warning at level %v, want warn", e["level"])
				}
				after, _ := e["after"].(string)
				got = append(got, after)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("log: got warnings naming %q, want %q", got, tt.want)
			}
		})
	}
}

// TestWarnUnreachableOncePerLoad checks the warning itself: once per server
// and config load, whichever of the server's longpoll handlers provisions
// first, naming the handler in the way.
func TestWarnUnreachableOncePerLoad(t *testing.T) {
	srv := &caddyhttp.Server{Routes: siteRoutes(t, "route {\n\t\treverse_proxy localhost:9000\n\t\tlongpoll\n\t}")}
	core, logs := observer.New(zapcore.WarnLevel)
	logger := zap.New(core)
	load := func() {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		ctx.Context = context.WithValue(ctx.Context, caddyhttp.ServerCtxKey, srv)
		warnUnreachable(ctx, logger)
		warnUnreachable(ctx, logger) // a second handler of the same load
	}
	load()
	if got := logs.Len(); got != 1 {
		t.Fatalf("one load: got %d warnings, want 1", got)
	}
	if e := logs.All()[0]; e.ContextMap()["after"] != "reverse_proxy" {
		t.Errorf("warning fields: got %v, want after=reverse_proxy", e.ContextMap())
	}
	load()
	if got := logs.Len(); got != 2 {
		t.Errorf("a second load: got %d warnings in all, want 2", got)
	}
}
