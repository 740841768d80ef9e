// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"cmp"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-longpoll/caddy-longpoll/cluster"
	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

func init() {
	caddy.RegisterModule(AdminWatches{})
}

// Limits of the admin view.
const (
	// DefaultAdminLimit is how many watches GET /longpoll/watches lists
	// unless its limit parameter says otherwise.
	DefaultAdminLimit = 100
	// MaxAdminLimit is the largest limit it accepts.
	MaxAdminLimit = 10000
)

// AdminWatches serves `GET /longpoll/watches` on Caddy's admin API, with the
// admin API's own protection (its listen address, origin checks, remote
// access control). It lists the watches of every running `longpoll`
// handler as JSON, those with the most held requests first, after totals
// over all of them:
//
//	curl 'localhost:2019/longpoll/watches?limit=20'
//
// The `limit` parameter (0 to 10000, default 100) caps the watches listed;
// the totals always count every one. A watch is named by a short hash of
// its key (the `watch` field of the module's log lines), never by the key,
// which holds the client's credentials.
type AdminWatches struct{}

// CaddyModule returns the Caddy module information.
func (AdminWatches) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.longpoll",
		New: func() caddy.Module { return new(AdminWatches) },
	}
}

// Routes returns the admin API's routes for the module.
func (a *AdminWatches) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: "/longpoll/watches", Handler: caddy.AdminHandlerFunc(a.serveWatches)}}
}

// watchesView is the answer of GET /longpoll/watches.
type watchesView struct {
	Totals  watchTotals `json:"totals"`
	Watches []watchView `json:"watches"`
}

type watchTotals struct {
	Handlers     int `json:"handlers"`       // running engines: longpoll handlers with distinct settings
	Watches      int `json:"watches"`        // every watch kept, polling or idle
	Active       int `json:"active_watches"` // watches with held requests
	Failing      int `json:"failing_watches"`
	Waiters      int `json:"waiters"`       // subscriptions, summed over the watches
	HeldRequests int `json:"held_requests"` // requests admitted and not yet answered
	Streams      int `json:"streams"`       // open streams (SSE and WebSocket)
	Listed       int `json:"listed"`
}

type watchView struct {
	Watch             string    `json:"watch"` // the key's short hash, as in the logs
	Topic             string    `json:"topic"`
	Server            string    `json:"server,omitempty"`
	Group             string    `json:"group,omitempty"`
	State             string    `json:"state"` // polling, idle, failing or passthrough
	Waiters           int       `json:"waiters"`
	Streams           int       `json:"streams"` // of the waiters, the streams
	Interval          string    `json:"interval"`
	LastPoll          time.Time `json:"last_poll,omitzero"`
	LastResult        string    `json:"last_result,omitempty"`
	LastChange        time.Time `json:"last_change,omitzero"`
	ConsecutiveErrors int       `json:"consecutive_errors"`
	ETag              string    `json:"etag,omitempty"`
	Cluster           string    `json:"cluster,omitempty"` // with a cluster: polls, follows or alone (none before its first poll)
}

func (a *AdminWatches) serveWatches(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed, use GET", r.Method)}
	}
	limit := DefaultAdminLimit
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > MaxAdminLimit {
			return caddy.APIError{
				HTTPStatus: http.StatusBadRequest,
				Err:        fmt.Errorf("limit must be a whole number from 0 to %d, got %q", MaxAdminLimit, s),
			}
		}
		limit = n
	}
	view := collectWatches(runningHubs(), limit)
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(view); err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
	}
	return nil
}

// collectWatches describes the watches of hbs, keeping the limit with the
// most waiters. Only the watches listed are described in full; the others
// cost a comparison each.
func collectWatches(hbs []*hub, limit int) watchesView {
	view := watchesView{Watches: []watchView{}}
	view.Totals.Handlers = len(hbs)
	top := make([]hubWatch, 0, min(2*limit, 1024))
	var last *hubWatch // once top has been cut: the last watch kept
	for _, hb := range hbs {
		view.Totals.HeldRequests += hb.limiter.Held()
		view.Totals.Streams += hb.limiter.Streams()
		for info := range hb.engine.Watches() {
			view.Totals.Watches++
			view.Totals.Waiters += info.Waiters
			if info.Waiters > 0 {
				view.Totals.Active++
			}
			if info.Failures > 0 {
				view.Totals.Failing++
			}
			hw := hubWatch{hb, info}
			if limit == 0 || last != nil && byWaiters(hw, *last) >= 0 {
				continue // not listed: after the last watch kept
			}
			top = append(top, hw)
			if len(top) >= 2*limit {
				slices.SortFunc(top, byWaiters)
				top = top[:limit]
				kept := top[limit-1]
				last = &kept
			}
		}
	}
	slices.SortFunc(top, byWaiters)
	for _, hw := range top[:min(limit, len(top))] {
		view.Watches = append(view.Watches, hw.describe())
	}
	view.Totals.Listed = len(view.Watches)
	return view
}

// hubWatch is a watch and the hub that keeps it.
type hubWatch struct {
	hb   *hub
	info longpoll.WatchInfo
}

// byWaiters orders watches by waiters, most first, then by topic, key and
// hub, so that the listing is the same for the same watches.
func byWaiters(a, b hubWatch) int {
	return cmp.Or(cmp.Compare(b.info.Waiters, a.info.Waiters), strings.Compare(a.info.Topic, b.info.Topic),
		bytes.Compare(a.info.Key[:], b.info.Key[:]), cmp.Compare(a.hb.id, b.hb.id))
}

// describe is the watch as the admin view shows it.
func (hw hubWatch) describe() watchView {
	info := hw.info
	v := watchView{
		Watch: info.Key.Short(), Topic: info.Topic, Group: hw.hb.groupName(),
		Waiters: info.Waiters, Streams: info.Streams, Interval: hw.hb.engine.Config().Interval.String(),
		LastPoll: info.LastPoll, LastChange: info.LastChange,
		ConsecutiveErrors: info.Failures, ETag: info.ETag,
	}
	if s := hw.hb.server.Load(); s != nil {
		v.Server = *s
	}
	if !info.LastPoll.IsZero() {
		v.LastResult = info.LastResult.String()
	}
	if f, ok := info.Fetcher.(*cluster.Fetcher); ok {
		v.Cluster = f.Role().String()
	}
	switch {
	case info.Passthrough:
		v.State = "passthrough"
	case info.Failures > 0:
		v.State = "failing"
	case info.Waiters > 0:
		v.State = "polling"
	default:
		v.State = "idle"
	}
	return v
}

// Interface guards
var _ caddy.AdminRouter = (*AdminWatches)(nil)
