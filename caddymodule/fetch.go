// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// fetcher polls the upstream through the rest of the route (the next
// handler) with a request built from a waiter's request. It keeps no
// reference to that request: every poll gets its own copy, its own context
// (which does not end when a client leaves), and its own replacer and vars.
type fetcher struct {
	tmpl    *http.Request  // no body, no context values
	values  []ctxValue     // connection-level context values to carry over
	vars    map[string]any // copied from the waiter's vars
	authID  any            // {http.auth.user.id} of the waiter, if set
	maxBody int64
}

type ctxValue struct{ key, val any }

// pollHeaders are removed from poll requests: the client's validators and
// ranges (a poll asks for the whole current representation),
// Accept-Encoding (polls ask for the identity encoding; `encode`, in front
// of this handler, compresses per client), and Prefer: besides the wait,
// which is the module's, a waiter's other preferences (return=minimal, say)
// would shape the one answer every waiter of the watch gets. Preferences
// are hints an upstream may ignore: polls send none, and an upstream's
// `Vary: Prefer` then has nothing to vary on.
//
// The headers that chose a stream's delivery go too (a watch made by a
// stream is polled as a long-poll of the URL would be): Last-Event-ID, the
// WebSocket handshake's, and an Accept that asks for an event stream.
var pollHeaders = []string{
	"If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since",
	"If-Range", "Range", "Accept-Encoding", "Prefer",
	"Last-Event-Id", "Upgrade", "Connection", "Sec-Websocket-Key", "Sec-Websocket-Version",
	"Sec-Websocket-Extensions", "Sec-Websocket-Protocol",
}

// newFetcher builds the fetcher for a watch from its first waiter's
// request. It runs on that request's goroutine, which owns r's vars.
func newFetcher(r *http.Request, maxBody int64) *fetcher {
	// A HEAD long-poll polls with HEAD, in a watch of its own: the upstream
	// never sees a request that the route would not have let through as
	// it came (a GET where only HEAD was allowed).
	tmpl := r.Clone(context.Background())
	tmpl.Body, tmpl.ContentLength, tmpl.GetBody = http.NoBody, 0, nil
	for _, name := range pollHeaders {
		delete(tmpl.Header, name)
	}
	if wantsSSE(tmpl) {
		delete(tmpl.Header, "Accept")
	}

	f := &fetcher{tmpl: tmpl, maxBody: maxBody}
	ctx := r.Context()
	for _, k := range []any{http.ServerContextKey, http.LocalAddrContextKey} {
		if v := ctx.Value(k); v != nil {
			f.values = append(f.values, ctxValue{k, v})
		}
	}
	if vars, ok := ctx.Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		f.vars = make(map[string]any, len(vars))
		for k, v := range vars {
			f.vars[k] = v
		}
	}
	if repl, ok := ctx.Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		f.authID, _ = repl.Get("http.auth.user.id")
	}
	return f
}

// Fetch polls once, through rv (the *route of the config in service). A
// poll is conditional on the upstream's own validators when the last one
// gave any, so that an unchanged upstream answers 304.
func (f *fetcher) Fetch(ctx context.Context, rv any, prev *longpoll.Snapshot) (*longpoll.Snapshot, error) {
	return f.poll(ctx, rv, prev, longpoll.NewRecorder(f.maxBody))
}

// poll is Fetch, into rec.
func (f *fetcher) poll(ctx context.Context, rv any, prev *longpoll.Snapshot, rec *longpoll.Recorder) (*longpoll.Snapshot, error) {
	rt, ok := rv.(*route)
	if !ok {
		return nil, &longpoll.UpstreamError{Err: errors.New("poll without a route")}
	}
	next, err := rt.handler()
	if err != nil {
		return nil, err
	}
	for _, v := range f.values {
		ctx = context.WithValue(ctx, v.key, v.val)
	}
	req := f.tmpl.Clone(ctx)
	if prev != nil {
		if prev.UpstreamETag != "" {
			req.Header.Set("If-None-Match", prev.UpstreamETag)
		}
		if prev.LastModified != "" {
			req.Header.Set("If-Modified-Since", prev.LastModified)
		}
	}
	if req.Method == http.MethodHead {
		rec.ForHead()
	}
	repl := caddy.NewReplacer()
	req = caddyhttp.PrepareRequest(req, repl, rec, rt.server)
	if vars, ok := req.Context().Value(caddyhttp.VarsCtxKey).(map[string]any); ok {
		for k, v := range f.vars {
			if _, set := vars[k]; !set {
				vars[k] = v
			}
		}
	}
	if f.authID != nil {
		repl.Set("http.auth.user.id", f.authID)
	}

	err = serve(next, rec, req)
	if rec.Passed() {
		// A private poll's response over max_body went on to its client
		// as it came: err says whether it was cut short.
		return nil, err
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		// An upstream that stalls, before its headers or after them, or
		// sends its body slowly, has failed this poll, whatever it wrote
		// (or whatever status a handler made of its cancellation): the
		// watch backs off, as for any failure. Passing its waiters
		// through instead would send each of them to that upstream.
		return nil, &longpoll.UpstreamError{Status: http.StatusGatewayTimeout, Err: longpoll.ErrPollTimeout}
	}
	if err != nil && !rec.TooLarge() {
		if status := clientErrorStatus(err); status != 0 && !rec.Started() && ctx.Err() == nil {
			// file_server, error and other handlers report a missing or
			// forbidden resource as an error rather than write it: it is
			// a representation all the same, which a client may wait on
			// until the resource appears.
			rec.ErrorStatus(status)
			return rec.Result(req.Header, prev)
		}
		return nil, upstreamError(err)
	}
	return rec.Result(req.Header, prev)
}

// clientErrorStatus returns the status of a handler error that describes
// the resource rather than a failure to reach it: a client error (4xx)
// other than 408 and 429, which say "try again later", and 499, which
// reverse_proxy makes of a cancelled request. It returns 0 for any other
// error.
func clientErrorStatus(err error) int {
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) {
		return 0
	}
	switch s := he.StatusCode; {
	case s < 400 || s >= 499, s == http.StatusRequestTimeout, s == http.StatusTooManyRequests:
		return 0
	default:
		return s
	}
}

// errAborted stands for a handler's panic with http.ErrAbortHandler, which
// reverse_proxy raises when it cannot finish writing a response (as when the
// recorder refuses a body over max_body).
var errAborted = errors.New("response aborted")

// serve runs the next handler, turning its http.ErrAbortHandler panic into an
// error; other panics propagate to the engine, which logs them.
func serve(next caddyhttp.Handler, rec *longpoll.Recorder, req *http.Request) (err error) {
	defer func() {
		if r := recover(); r != nil {
			if r != http.ErrAbortHandler { //nolint:errorlint // panic values are compared as is
				panic(r)
			}
			err = errAborted
		}
	}()
	return next.ServeHTTP(rec, req)
}

// upstreamError classifies an error returned by the next handler.
func upstreamError(err error) error {
	ue := &longpoll.UpstreamError{Status: http.StatusBadGateway, Err: err}
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		ue.Status = he.StatusCode
	}
	return ue
}
