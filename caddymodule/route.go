// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"net/http"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// route is what polls go through for one config: the handlers that come
// after a longpoll handler in its server's routes, as a request that
// reaches the handler would go on through them. Each config's handler opens
// its route with the engine at Provision and closes it at Cleanup, so that
// a reload hands every watch to the new config without a request, a held
// request or a stream noticing.
//
// Caddy gives a handler what follows it (next) only with a request, as a
// chain compiled for that request. A route builds the same chain itself,
// once the server's routes are provisioned, from the handler's place in
// them; until then it is not ready, and polls go through the config before
// it. For a place it cannot find (a handler reached through something other
// than routes and subroutes), it uses the next of the first request the
// handler serves.
type route struct {
	h      *Handler
	server *caddyhttp.Server

	next     atomic.Pointer[caddyhttp.Handler] // built, once ready
	captured atomic.Pointer[caddyhttp.Handler] // from a request
}

// handler returns the chain polls go through, or longpoll.ErrRouteNotReady.
func (rt *route) handler() (caddyhttp.Handler, error) {
	if n := rt.next.Load(); n != nil {
		return *n, nil
	}
	if rt.server != nil {
		if n, ok := continuation(rt.server.Routes, rt.h, emptyHandler); ok {
			rt.next.Store(&n)
			return n, nil
		}
	}
	if c := rt.captured.Load(); c != nil {
		return *c, nil
	}
	return nil, longpoll.ErrRouteNotReady
}

// capture keeps next, the chain after the handler for a request, for a
// route that cannot build its own.
func (rt *route) capture(next caddyhttp.Handler) {
	if rt.captured.Load() == nil && rt.next.Load() == nil {
		rt.captured.CompareAndSwap(nil, &next)
	}
}

// emptyHandler ends a chain, as Caddy's does: nothing more is written.
var emptyHandler caddyhttp.Handler = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// continuation returns what follows handler h in routes, where outer is
// what follows routes: h's next, as Caddy compiles it for a request that
// reaches h. It reports false if h is not among routes (or in a subroute
// of theirs), or if a route it would chain through is not provisioned yet.
func continuation(routes caddyhttp.RouteList, h caddyhttp.MiddlewareHandler, outer caddyhttp.Handler) (caddyhttp.Handler, bool) {
	for i := range routes {
		r := &routes[i]
		if r.HandlersRaw != nil {
			return nil, false // not provisioned yet
		}
		for k, mh := range r.Handlers {
			var inner caddyhttp.Handler
			found := false
			if mh == h {
				found = true
			} else if sr, ok := mh.(*caddyhttp.Subroute); ok {
				// what follows the subroute, then what follows h in it
				after, ready := afterHandler(routes, i, k, outer)
				if !ready {
					return nil, false
				}
				inner, found = continuation(sr.Routes, h, after)
				if found {
					return inner, inner != nil
				}
			}
			if found {
				return afterHandler(routes, i, k, outer)
			}
		}
	}
	return nil, false
}

// afterHandler compiles what follows the k-th handler of routes[i]: the
// route's later handlers, then (unless the route is terminal) the later
// routes, then outer.
func afterHandler(routes caddyhttp.RouteList, i, k int, outer caddyhttp.Handler) (caddyhttp.Handler, bool) {
	for j := i + 1; j < len(routes); j++ {
		if routes[j].HandlersRaw != nil {
			return nil, false
		}
	}
	r := &routes[i]
	next := outer
	if r.Terminal {
		next = emptyHandler
	} else {
		next = routes[i+1:].Compile(outer)
	}
	for j := len(r.Handlers) - 1; j > k; j-- {
		next = middleware(r.Handlers[j], next)
	}
	return next, true
}

// middleware chains mh in front of next.
func middleware(mh caddyhttp.MiddlewareHandler, next caddyhttp.Handler) caddyhttp.Handler {
	return caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		return mh.ServeHTTP(w, r, next)
	})
}
