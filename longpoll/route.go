// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"errors"
	"slices"
)

// A Route is a path polls go through, given to the engine by whoever owns
// it (for the Caddy module, a configuration: the handlers after the
// longpoll handler) and closed by its owner when it goes out of service.
// Every poll goes through the newest open route that is ready: a new one
// takes over from the next poll of every watch, and closing it hands back
// to the one before, so that watches always poll through a route in
// service and neither their subscribers nor their state notice. An engine
// with no route open polls with a nil route: routes are for callers whose
// polls go through something that changes.
type Route struct {
	e     *Engine
	value any
}

// ErrRouteNotReady is what a Fetcher returns when the route it was given
// cannot take polls yet (a configuration still being loaded): the poll then
// goes through the next newest open route.
var ErrRouteNotReady = errors.New("longpoll: the route is not ready for polls")

// OpenRoute gives the engine a route to poll through; value is handed to
// Fetch with every poll that goes through it. The route is the newest until
// another opens; the caller must Close it.
func (e *Engine) OpenRoute(value any) *Route {
	r := &Route{e: e, value: value}
	e.routesMu.Lock()
	defer e.routesMu.Unlock()
	var cur []*Route
	if p := e.routes.Load(); p != nil {
		cur = *p
	}
	next := append([]*Route{r}, cur...) // newest first
	e.routes.Store(&next)
	return r
}

// Value returns the value the route was opened with.
func (r *Route) Value() any { return r.value }

// Close takes the route out of service: polls go through the newest route
// still open. A poll under way through it ends as it will. It is
// idempotent.
func (r *Route) Close() {
	e := r.e
	e.routesMu.Lock()
	defer e.routesMu.Unlock()
	p := e.routes.Load()
	if p == nil {
		return
	}
	if i := slices.Index(*p, r); i >= 0 {
		next := slices.Delete(slices.Clone(*p), i, i+1)
		e.routes.Store(&next)
	}
}

// openRoutes returns the open routes, newest first. Every poll reads them,
// so they are replaced (under routesMu), never changed, and read without a
// lock; the caller must not modify the slice.
func (e *Engine) openRoutes() []*Route {
	if p := e.routes.Load(); p != nil {
		return *p
	}
	return nil
}

// Routes returns the number of open routes.
func (e *Engine) Routes() int { return len(e.openRoutes()) }
