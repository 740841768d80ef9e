// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

// Package caddymodule registers the longpoll HTTP handler with Caddy: it
// turns short-polled GET endpoints into long-poll endpoints, polling the
// upstream through the rest of the route once for all waiting clients.
package caddymodule

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/cluster"
	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults of the handler's settings.
const (
	DefaultMaxWait             = 55 * time.Second
	DefaultMaxBody             = 1 << 20
	DefaultMaxWaiters          = 10000
	DefaultMaxWatches          = 10000
	DefaultMaxWatchesPerClient = 64
	DefaultMaxMemory           = 256 << 20
	DefaultHeartbeat           = 25 * time.Second
	DefaultMaxStreams          = 10000
)

// Handler holds long-poll requests until the resource they watch changes.
//
// A `GET` or `HEAD` request is a long-poll when it carries `Prefer: wait=N`
// ([RFC 7240](https://www.rfc-editor.org/rfc/rfc7240)), N in whole seconds,
// and names the version it already has in `If-None-Match`:
//
// - without `If-None-Match`, or when it does not match the current `ETag`,
// the request is answered at once with the current representation;
// - when it matches, the request is held until the representation changes
// (answered with the upstream's status, headers and new body, and a new
// `ETag`) or until the wait ends (answered `304 Not Modified`).
//
// The wait is clamped to `max_wait` and shortened by a small random jitter.
// Held responses carry `Preference-Applied: wait=N`; long-poll responses carry
// `Vary: Prefer`. The `ETag` is a strong validator hashed from what the client
// receives (status, content headers, body), the same on every instance and
// after every restart; it replaces the upstream's.
//
// Requests are grouped by a key (by default the method, host, path, query,
// `Authorization` and `Cookie`: two users never share a poll). One watch per
// key polls the upstream through the rest of the route (normally
// `reverse_proxy`) every `interval` while anyone waits. If the upstream fails
// (5xx, 429, transport error), the watch backs off; a request whose wait ends
// while the last poll failed is answered `502` with `Retry-After`.
//
// With `sse` and `websocket`, the same watches are streams too: a `GET` with
// `Accept: text/event-stream` gets every version as an event, one with
// `Upgrade: websocket` every version as a JSON message.
//
// Every other request (other methods, no or invalid `Prefer: wait`, `wait=0`)
// passes to the next handler untouched.
//
// Placeholders set on long-poll requests:
//
// | Placeholder | Description |
// |---|---|
// | `{http.longpoll.outcome}` | `immediate`, `changed`, `timeout`, `passthrough`, `rejected`, `error`, `shutdown`, `canceled` or `stream` |
// | `{http.longpoll.wait}` | the wait applied, in seconds |
// | `{http.longpoll.held}` | how long the request was held (a duration) |
//
// The handler reports `caddy_longpoll_*` metrics (held requests, watches,
// polls by result, answers by outcome, hold and delivery times) in Caddy's
// metrics registry unless `disable_metrics` is set, and the admin API's
// `GET /longpoll/watches` lists its watches.
type Handler struct {
	// How often the upstream is polled while at least one client waits on
	// a key. Must be below `max_wait`. Default: `1s`.
	Interval caddy.Duration `json:"interval,omitempty"`

	// The longest a request is held: larger `Prefer: wait` values are
	// clamped to it. Keep it below the idle timeout of load balancers in
	// front of Caddy (often 60s). Default: `55s`.
	MaxWait caddy.Duration `json:"max_wait,omitempty"`

	// How long a watch is kept, not polling, after its last client left, so
	// that clients coming straight back find it warm. Default: `30s`.
	IdleTTL caddy.Duration `json:"idle_ttl,omitempty"`

	// How long one poll of the upstream may take before it counts as
	// failed. Default: `10s`.
	PollTimeout caddy.Duration `json:"poll_timeout,omitempty"`

	// What makes two requests share a poll and a response, as a template
	// of [placeholders](/docs/conventions#placeholders). The default key is
	// the method, host, path and query (less the module's own query
	// parameters) and the `Authorization` and `Cookie` headers, so two users
	// never share data. Set it only for resources that are the same for
	// everyone who may see them, e.g. `{host}{path}` for a public resource.
	// Keys are hashed: they never appear in memory or logs in the clear.
	Key string `json:"key,omitempty"`

	// The largest response body held and shared, in bytes. A larger
	// response is passed through to each client instead, never truncated.
	// Default: 1 MiB.
	MaxBody int64 `json:"max_body,omitempty"`

	// The most requests held at once by this handler. Past it, long-poll
	// requests are answered `503 Service Unavailable` with `Retry-After`.
	// A negative value removes the cap. Default: `10000`.
	MaxWaiters int `json:"max_waiters,omitempty"`

	// The most requests held at once for one client address (Caddy's client
	// IP, which honours `trusted_proxies`; an IPv6 client counts by its /64
	// network, which one host can hold whole). Past it, long-poll requests are
	// answered `429 Too Many Requests` with `Retry-After`. Many clients can
	// share an address behind NAT, so there is no cap by default: `0`.
	MaxWaitersPerClient int `json:"max_waiters_per_client,omitempty"`

	// The most watches (distinct keys) one client address (as for
	// `max_waiters_per_client`) holds requests on at once. Each watch polls the upstream every `interval`, so one
	// client holding requests on many keys (distinct query strings, say)
	// would make the upstream pay per key. Past it, long-poll requests on
	// another key are answered `429 Too Many Requests` with `Retry-After`.
	// A browser never comes near the default; raise it for clients that
	// share an address (behind NAT, or a proxy that `trusted_proxies` does
	// not name). A negative value removes the cap. Default: `64`.
	MaxWatchesPerClient int `json:"max_watches_per_client,omitempty"`

	// The most watches polling at once (those with held requests): the
	// upstream gets at most `max_watches` polls per `interval` from this
	// handler (notifications, at most one poll per watch per 100ms, come
	// on top). Past it, a long-poll request that would start a watch
	// is answered `503 Service Unavailable` with `Retry-After`. A negative
	// value removes the cap. Default: `10000`.
	MaxWatches int `json:"max_watches,omitempty"`

	// The most memory, in bytes, the handler's watches may hold: the
	// representations they keep (bodies up to `max_body`), the compressed
	// variants of the current ones, and about 1 KiB per watch. Past it,
	// idle watches (kept for `idle_ttl` after their last client) are
	// dropped, the longest idle first; a representation
	// that the watches with held requests leave no room for is not kept:
	// its clients are answered `503` with `Retry-After`, and its watch
	// backs off. At least twice `max_body`; a negative value removes the
	// bound. Default: 256 MiB.
	MaxMemory int64 `json:"max_memory,omitempty"`

	// The topic of a request's watch, as a template of placeholders: the
	// name under which `longpoll_notify` reaches it. Many keys (one per
	// user) usually share a topic. Default: the request path,
	// `{http.request.uri.path}`.
	Topic string `json:"topic,omitempty"`

	// The notification group of this handler: a `longpoll_notify` handler
	// with a group reaches only the handlers of that group. Default: none
	// (reached by `longpoll_notify` handlers without a group).
	Group string `json:"group,omitempty"`

	// Lets clients that cannot send headers give the wait and the ETag as
	// query parameters. They are removed from the request before anything
	// else sees it, and left out of the key. Off by default.
	QueryParams *QueryParams `json:"query_params,omitempty"`

	// Serves [Server-Sent Events](https://html.spec.whatwg.org/multipage/server-sent-events.html):
	// a `GET` with `Accept: text/event-stream` gets one response that
	// carries every version of the resource as an event, from the same
	// watch (same key, same polls, same notifications) as long-polls of
	// the URL. Off by default, so that an upstream that serves its own
	// event stream is left alone.
	SSE bool `json:"sse,omitempty"`

	// Serves WebSocket streams: a `GET` with `Upgrade: websocket` is
	// upgraded and gets every version of the resource as a JSON message,
	// from the same watch as long-polls of the URL. Off by default, so
	// that an upstream that serves its own WebSocket is left alone.
	WebSocket bool `json:"websocket,omitempty"`

	// How long an SSE stream may go without sending anything before it
	// gets a comment line, and how often a WebSocket is pinged, so that
	// proxies and load balancers do not time them out. A WebSocket client
	// that does not answer a ping within a second heartbeat is
	// disconnected. At least `1s`. Default: `25s`.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`

	// The most streams (SSE and WebSocket) open at once. Past it, a stream
	// request is answered `503 Service Unavailable` with `Retry-After`
	// before the stream starts. Streams count against
	// `max_waiters_per_client` and `max_watches_per_client` too. A
	// negative value removes the cap. Default: `10000`.
	MaxStreams int `json:"max_streams,omitempty"`

	// Ends a stream after this long (give or take a tenth, at random), so
	// that connections rebalance across instances; the client reconnects
	// and resumes where it was. Default: `0`, off.
	MaxStreamDuration caddy.Duration `json:"max_stream_duration,omitempty"`

	// The origins allowed to open WebSocket streams besides the request's
	// own host, as host patterns (`app.example.com`, `*.example.com`;
	// with a scheme, `https://app.example.com`). Browsers send `Origin`
	// with every WebSocket; a request from an origin not listed is
	// answered `403 Forbidden`. Default: the same origin only.
	Origins []string `json:"origins,omitempty"`

	// Lets streams be compressed. SSE streams then leave out
	// `Cache-Control: no-transform`, so that an `encode` in front
	// compresses them (each event flushed through the compressor), and
	// WebSocket streams offer permessage-deflate without context
	// takeover (each message compressed on its own, with a pooled
	// compressor). Off by default: an SSE stream through `encode`'s gzip
	// at its default level holds about 1 MiB of compressor per stream,
	// some 27 times the stream itself.
	CompressStreams bool `json:"compress_streams,omitempty"`

	// How long-poll answers are compressed. With an `encode` in front
	// (the usual site), each version is compressed once per encoding that
	// some client asked for, as that `encode` would have compressed it
	// (its encodings, preferences, minimum length and content types, its
	// compressors at their levels), and every client answered with it is
	// given the same bytes; `encode` passes them on. Without an `encode`
	// in front, this setting, with `encode`'s syntax and settings
	// (`compress gzip zstd`, or a block), does the same; `compress off`
	// leaves every answer to an `encode` in front, compressed once per
	// answer. Default: follow the `encode` in front; without one, no
	// compression.
	Compress *Compress `json:"compress,omitempty"`

	// JSON fields whose changes are no change: a timestamp, a request id
	// or a cache age that the upstream stamps into every body. RFC 6901
	// JSON pointers (`/generated_at`); a `*` segment matches every member
	// of an array or object (`/items/*/updated_at`). A poll whose body
	// differs from the representation held only in these fields releases
	// nobody: the representation, its body and its ETag stay as they are.
	// A body that is not JSON is compared whole (logged once per watch).
	Ignore []string `json:"ignore,omitempty"`

	// Lets stream clients (SSE, WebSocket) ask for changes as deltas:
	// `json-patch`, the only kind, sends each change of a JSON
	// representation as an RFC 6902 JSON Patch from the version the client
	// has, when the patch is smaller than the new body (else the full
	// version). A client opts in with the query parameter
	// `deltas=json-patch` (which the module removes: the key and the polls
	// do not see it), or, for SSE, with the media type parameter
	// `Accept: text/event-stream; deltas=json-patch`. The patch is made
	// once per change and shared by every client that had the version
	// before it; a client further behind gets the full version. Needs
	// `sse` or `websocket`. Default: off.
	Deltas string `json:"deltas,omitempty"`

	// Makes the Caddy instances that share this Caddyfile one system, on
	// Redis: `redis://[user:password@]host:port/db`, or `rediss://` for
	// TLS. Placeholders are expanded when the config loads
	// (`{env.LONGPOLL_REDIS_URL}` keeps the password out of the config).
	// One instance polls each key at a time, under a lease, and writes
	// what it finds to Redis for the others; notifications reach every
	// instance. Handlers with the same URL share one connection pool. A
	// Redis that cannot be reached is no error: each instance then polls
	// on its own, and they share again when it answers. Default: off.
	Cluster string `json:"cluster,omitempty"`

	// Leaves this handler out of the `caddy_longpoll_*` metrics: its
	// requests and polls are not counted, and its held requests and watches
	// not reported. Default: false (metrics on).
	DisableMetrics bool `json:"disable_metrics,omitempty"`

	hub     *hub
	poolKey string
	ignore  *longpoll.Ignore // Ignore, parsed
	route   *route           // what polls go through in this handler's config
	routeH  *longpoll.Route  // the route, opened with the engine
	logger  *zap.Logger
	debug   bool // the logger takes debug lines: log each request
	cleaned bool

	serverName string // its server's, for the admin view
	clusterURL string // Cluster, its placeholders expanded
}

// QueryParams names the query parameters that stand for `Prefer: wait=N`
// and `If-None-Match`.
type QueryParams struct {
	// The parameter holding the wait, in seconds.
	Wait string `json:"wait,omitempty"`
	// The parameter holding the ETag the client has (quoted or not).
	ETag string `json:"etag,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.longpoll",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler and joins the engine it shares with the
// same handler of earlier configs, so that a reload keeps held requests and
// warm watches.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.useLogger(ctx.Logger())
	h.applyDefaults()
	h.clusterURL = caddy.NewReplacer().ReplaceKnown(h.Cluster, "")
	if err := h.Validate(); err != nil {
		return err
	}
	h.ignore, _ = longpoll.ParseIgnore(h.Ignore) // Validate has parsed them
	if h.Compress != nil {
		if err := h.Compress.provision(ctx); err != nil {
			return err
		}
	} else if _, err := frontLayout(); err != nil && layoutWarned.CompareAndSwap(false, true) {
		h.logger.Warn("an encode in front compresses each long-poll answer on its own: this module cannot read its settings in this version of Caddy", zap.Error(err))
	}
	warnUnreachable(ctx, h.logger)
	hb, key, err := acquireHub(ctx, h)
	if err != nil {
		return fmt.Errorf("provisioning longpoll engine: %w", err)
	}
	h.hub, h.poolKey = hb, key
	srv, _ := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	h.route = &route{h: h, server: srv}
	h.routeH = hb.engine.OpenRoute(h.route)
	if srv != nil {
		h.serverName = srv.Name()
	}
	// The newest config's settings apply to the running engine, its
	// watches and subscribers; Cleanup gives the previous config's back if
	// this one never replaces it (a reload that fails).
	if err := hb.join(h); err != nil {
		h.routeH.Close()
		_, _ = hubs.Delete(key)
		h.hub = nil
		return fmt.Errorf("provisioning longpoll engine: %w", err)
	}
	if !h.DisableMetrics {
		if err := metrics.register(ctx.GetMetricsRegistry()); err != nil {
			// metrics are no reason to refuse a config
			h.logger.Warn("registering longpoll metrics", zap.Error(err))
		}
	}
	return nil
}

// layoutWarned is set once the process has said that it cannot read the
// settings of an encode in front (encodefront.go).
var layoutWarned atomic.Bool

// useLogger makes h log through l, and its hub too if it has one.
func (h *Handler) useLogger(l *zap.Logger) {
	h.logger = l
	h.debug = l.Core().Enabled(zapcore.DebugLevel)
	if h.hub != nil {
		h.hub.log.Store(l)
	}
}

func (h *Handler) applyDefaults() {
	if h.Interval == 0 {
		h.Interval = caddy.Duration(longpoll.DefaultInterval)
	}
	if h.MaxWait == 0 {
		h.MaxWait = caddy.Duration(DefaultMaxWait)
	}
	if h.IdleTTL == 0 {
		h.IdleTTL = caddy.Duration(longpoll.DefaultIdleTTL)
	}
	if h.PollTimeout == 0 {
		h.PollTimeout = caddy.Duration(longpoll.DefaultPollTimeout)
	}
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.MaxWaiters == 0 {
		h.MaxWaiters = DefaultMaxWaiters
	}
	if h.MaxWatches == 0 {
		h.MaxWatches = DefaultMaxWatches
	}
	if h.MaxWatchesPerClient == 0 {
		h.MaxWatchesPerClient = DefaultMaxWatchesPerClient
	}
	if h.MaxMemory == 0 {
		h.MaxMemory = DefaultMaxMemory
	}
	if h.Heartbeat == 0 {
		h.Heartbeat = caddy.Duration(DefaultHeartbeat)
	}
	if h.MaxStreams == 0 {
		h.MaxStreams = DefaultMaxStreams
	}
}

// Validate checks the settings; errors name the JSON key.
func (h *Handler) Validate() error {
	var errs []error
	check := func(bad bool, format string, args ...any) {
		if bad {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(h.Interval <= 0, "interval must be positive, got %v", time.Duration(h.Interval))
	if _, err := longpoll.ParseIgnore(h.Ignore); err != nil {
		errs = append(errs, fmt.Errorf("ignore: %w", err))
	}
	check(h.MaxWait < caddy.Duration(time.Second), "max_wait must be at least 1s, got %v", time.Duration(h.MaxWait))
	check(h.Interval > 0 && h.Interval >= h.MaxWait,
		"interval (%v) must be below max_wait (%v)", time.Duration(h.Interval), time.Duration(h.MaxWait))
	check(h.IdleTTL < 0, "idle_ttl must not be negative, got %v", time.Duration(h.IdleTTL))
	check(h.PollTimeout <= 0, "poll_timeout must be positive, got %v", time.Duration(h.PollTimeout))
	check(h.MaxBody <= 0, "max_body must be positive, got %d", h.MaxBody)
	check(h.MaxMemory > 0 && h.MaxMemory < 2*h.MaxBody,
		"max_memory (%d) must be at least twice max_body (%d), room for a representation of max_body and more", h.MaxMemory, h.MaxBody)
	check(h.MaxWaitersPerClient < 0, "max_waiters_per_client must not be negative, got %d", h.MaxWaitersPerClient)
	check(h.Heartbeat < caddy.Duration(time.Second), "heartbeat must be at least 1s, got %v", time.Duration(h.Heartbeat))
	check(h.MaxStreamDuration < 0, "max_stream_duration must not be negative, got %v", time.Duration(h.MaxStreamDuration))
	check(h.MaxStreamDuration > 0 && h.MaxStreamDuration < caddy.Duration(10*time.Second),
		"max_stream_duration must be 0 (off) or at least 10s, got %v", time.Duration(h.MaxStreamDuration))
	for _, o := range h.Origins {
		check(o == "" || strings.ContainsAny(o, " ,"), "origins: %q is not an origin or host pattern", o)
	}
	if h.Key != "" {
		if err := checkKeyTemplate(h.Key); err != nil {
			errs = append(errs, err)
		}
	}
	if h.Topic != "" && !strings.Contains(h.Topic, "{http.") {
		errs = append(errs, fmt.Errorf("topic %q has no request placeholder ({http.*}): every request would have one topic", h.Topic))
	}
	check(h.Deltas != "" && h.Deltas != deltasJSONPatch, "deltas: %q is not a kind of delta; the one kind is %q", h.Deltas, deltasJSONPatch)
	check(h.Deltas != "" && !h.SSE && !h.WebSocket, "deltas needs sse or websocket: only streams are sent deltas")
	if h.Cluster != "" {
		u := h.clusterURL
		if u == "" && !strings.Contains(h.Cluster, "{") {
			u = h.Cluster // Validate without Provision
		}
		if u == "" {
			errs = append(errs, errors.New("cluster: the URL is empty once its placeholders are expanded: is the environment variable set?"))
		} else if _, err := cluster.ParseURL(u); err != nil {
			errs = append(errs, err)
		}
	}
	if h.Compress != nil {
		if err := h.Compress.validate(); err != nil {
			errs = append(errs, err)
		}
	}
	if qp := h.QueryParams; qp != nil {
		check(qp.Wait == "" || qp.ETag == "", "query_params needs both a wait and an etag parameter name")
		check(qp.Wait != "" && qp.Wait == qp.ETag, "query_params wait and etag must differ, both are %q", qp.Wait)
	}
	return errors.Join(errs...)
}

// checkKeyTemplate rejects a key that would make requests for different
// resources, or of different users, share one response: a key must hold at
// least one request placeholder ({http.*}), and no placeholder that resolves
// to nothing (such as a Caddyfile shorthand like {path} written in JSON,
// where only full names exist). {env.*}, {system.*}, {time.*} and {file.*}
// may be added, but are the same for every request.
func checkKeyTemplate(key string) error {
	perRequest := false
	for rest := key; ; {
		open := strings.IndexByte(rest, '{')
		if open < 0 {
			break
		}
		if open > 0 && rest[open-1] == '\\' { // an escaped brace
			rest = rest[open+1:]
			continue
		}
		end := strings.IndexByte(rest[open:], '}')
		if end < 0 {
			break
		}
		name := rest[open+1 : open+end]
		switch ns, _, _ := strings.Cut(name, "."); ns {
		case "http":
			perRequest = true
		case "env", "system", "time", "file":
		default:
			return fmt.Errorf("key: unknown placeholder {%s}; Caddyfile shorthands need their full name in JSON, e.g. {http.request.uri.path} for {path}", name)
		}
		rest = rest[open+end+1:]
	}
	if !perRequest {
		return fmt.Errorf("key %q has no request placeholder ({http.*}): every request would share one response", key)
	}
	return nil
}

// Cleanup leaves the shared engine; the last handler to leave it closes it,
// which answers its held requests at once.
func (h *Handler) Cleanup() error {
	// h.hub stays set: requests still in flight on this handler use it.
	if h.hub == nil || h.cleaned {
		return nil
	}
	h.cleaned = true
	// After a reload that failed, the running config's handler is the
	// newest again: the hub takes its settings back. After one that
	// succeeded, the newer handler's are in place, and stay.
	h.hub.leave(h)
	// Polls go back to the route of the config before, if this one never
	// served (a reload that failed); else they have moved on already.
	h.routeH.Close()
	_, err := hubs.Delete(h.poolKey)
	return err
}

// engineConfig is the engine configuration for h's settings.
func (h *Handler) engineConfig() longpoll.Config {
	return longpoll.Config{
		Interval:    time.Duration(h.Interval),
		IdleTTL:     time.Duration(h.IdleTTL),
		PollTimeout: time.Duration(h.PollTimeout),
		MaxMemory:   h.MaxMemory,
		MaxActive:   h.MaxWatches,
		Ignore:      h.ignore,
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
