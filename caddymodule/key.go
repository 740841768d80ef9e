// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// requestKey is the key of the watch that serves r.
func (h *Handler) requestKey(r *http.Request, repl *caddy.Replacer) longpoll.Key {
	// GET and HEAD long-polls never share a watch, whatever the key says:
	// each is polled with its own method.
	if h.Key != "" {
		return longpoll.KeyOf("key", r.Method, repl.ReplaceAll(h.Key, ""))
	}
	return longpoll.KeyOf(r.Method, r.Host, r.URL.EscapedPath(), r.URL.RawQuery,
		strings.Join(r.Header.Values("Authorization"), "\n"),
		strings.Join(r.Header.Values("Cookie"), "\n"))
}

// requestTopic is the topic of the watch that serves r, for notifications.
// Topics are paths, as notifications name them: a template that does not
// give one gets a leading slash.
func (h *Handler) requestTopic(r *http.Request, repl *caddy.Replacer) string {
	if h.Topic == "" {
		return r.URL.Path
	}
	t := repl.ReplaceAll(h.Topic, "")
	if !strings.HasPrefix(t, "/") {
		t = "/" + t
	}
	return t
}

// parseLongPoll reads the wait and the client's version from r. It reports
// false for a request that is not a long-poll: no wait preference, an invalid
// one (ignored, as RFC 7240 says), or wait=0. With query_params set, it
// removes the module's parameters from r's URL in every case, as the rewrite
// handler does, so that neither the upstream nor the key sees them.
func (h *Handler) parseLongPoll(r *http.Request) (longPoll, bool) {
	var lp longPoll
	var qWait, qETag string
	var hasQWait bool
	if qp := h.QueryParams; qp != nil && r.URL.RawQuery != "" {
		qWait, hasQWait, qETag = stripQueryParams(r, qp)
	}
	ok := false
	if prefer := r.Header.Values("Prefer"); len(prefer) > 0 {
		lp.wait, ok = longpoll.ParseWait(prefer)
	}
	if !ok && hasQWait {
		lp.wait, ok = parseSeconds(qWait)
	}
	if !ok || lp.wait <= 0 {
		return lp, false
	}
	lp.inm = r.Header.Values("If-None-Match")
	if len(lp.inm) == 0 && qETag != "" {
		lp.inm = []string{longpoll.QueryETag(qETag)}
	}
	return lp, true
}

// parseSeconds reads a wait given as a query parameter, by the rules of
// ParseWait.
func parseSeconds(v string) (time.Duration, bool) {
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil || v == "" || v[0] == '+' {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}

// stripQueryParams removes the wait and etag parameters from r's query,
// keeping every other parameter as it was written, and returns their values.
func stripQueryParams(r *http.Request, qp *QueryParams) (wait string, hasWait bool, etag string) {
	var kept []string
	removed := false
	for part := range strings.SplitSeq(r.URL.RawQuery, "&") {
		rawName, rawVal, _ := strings.Cut(part, "=")
		name, err := url.QueryUnescape(rawName)
		if err != nil || (name != qp.Wait && name != qp.ETag) {
			kept = append(kept, part)
			continue
		}
		removed = true
		val, err := url.QueryUnescape(rawVal)
		if err != nil {
			continue
		}
		if name == qp.Wait && !hasWait {
			wait, hasWait = val, true
		} else if name == qp.ETag && etag == "" {
			etag = val
		}
	}
	if !removed {
		return "", false, ""
	}
	r.URL.RawQuery = strings.Join(kept, "&")
	if path, _, found := strings.Cut(r.RequestURI, "?"); found {
		r.RequestURI = path
		if r.URL.RawQuery != "" {
			r.RequestURI += "?" + r.URL.RawQuery
		}
	}
	return wait, hasWait, etag
}
