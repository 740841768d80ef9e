// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// Outcomes, the values of {http.longpoll.outcome}.
const (
	outcomeImmediate   = "immediate"   // answered at once with the current representation
	outcomeChanged     = "changed"     // held, then answered with a new representation
	outcomeTimeout     = "timeout"     // held until the wait ended: 304
	outcomePassthrough = "passthrough" // handed to the next handler as is
	outcomeRejected    = "rejected"    // over a cap: 503 or 429
	outcomeError       = "error"       // the upstream failed: 502 or 504
	outcomeShutdown    = "shutdown"    // answered early by a reload or an exit
	outcomeCanceled    = "canceled"    // the client left
)

// ServeHTTP implements caddyhttp.MiddlewareHandler.
//
// A held request's goroutine carries Caddy's whole handler chain, close to
// the 8 KiB at which the runtime moves a goroutine's stack to a new one
// twice the size: held with a 16 KiB stack, a request costs 8 KiB more, and
// the copies made when thousands are released at once are a good part of
// the release's CPU. So ServeHTTP keeps a small frame and calls join, wait
// and finish one after the other, each gone before the next starts, rather
// than one inside the other; the load tool's heap profile (runtime
// statistics, Stack) shows whether held stacks stay at 8 KiB.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		if h.WebSocket && r.Method == http.MethodConnect {
			return h.refuseWebSocketOverH2(w, r, next)
		}
		return next.ServeHTTP(w, r)
	}
	if delivery := h.streamDelivery(r); delivery != "" {
		return h.serveStream(w, r, next, delivery)
	}
	lp, ok := h.parseLongPoll(r)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !h.fitWait(w, r, &lp) {
		repl.Set("http.longpoll.outcome", outcomePassthrough)
		h.delivered(outcomePassthrough, nil, nil)
		return next.ServeHTTP(w, r)
	}
	clientIP, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	ticket, sub, err := h.admit(r, next, repl, clientIP, false)
	switch {
	case errors.Is(err, longpoll.ErrClosed):
		// the engine closed under an old config's handler: serve directly
		repl.Set("http.longpoll.outcome", outcomePassthrough)
		h.delivered(outcomePassthrough, nil, nil)
		return next.ServeHTTP(w, r)
	case err != nil:
		repl.Set("http.longpoll.outcome", outcomeRejected)
		h.delivered(outcomeRejected, nil, nil)
		return h.reject(w, err)
	}
	// The ticket and the subscription are given back before the answer is
	// written, or by this defer if wait panics.
	left := false
	defer func() {
		if !left {
			sub.Close()
			ticket.Release()
		}
	}()
	end := h.wait(r, sub, &lp)
	if end.private {
		return h.servePrivately(w, r, next, repl, sub, &lp, end.heldFor)
	}
	left = true
	sub.Close()
	ticket.Release()
	if end.st != nil && end.st.Closed && !caddy.Exiting() {
		h.spreadAnswer(r, lp.wait-end.heldFor)
	}

	repl.Set("http.longpoll.wait", int(lp.wait/time.Second))
	if end.held {
		repl.Set("http.longpoll.held", end.heldFor)
	}
	if end.st == nil {
		repl.Set("http.longpoll.outcome", outcomeCanceled)
		h.delivered(outcomeCanceled, &end, sub)
		return nil
	}
	outcome, err := h.finish(w, r, next, repl, &end, &lp)
	h.delivered(outcome, &end, sub)
	if outcome == outcomeImmediate && len(lp.inm) == 0 {
		h.askedWithoutVersion(sub, end.st, clientIP)
	}
	return err
}

// askedWithoutVersion notes a long-poll that named no version and was
// answered at once, and logs, once per watch, that clients of the watch
// loop that way: each such request is answered at once, and a loop that
// never sends the ETag back spins.
//
//go:noinline
func (h *Handler) askedWithoutVersion(sub *longpoll.Subscription, st *longpoll.State, clientIP string) {
	if st.Snapshot == nil || !sub.AskedWithoutVersion(clientIP, st.Snapshot.ETag) {
		return
	}
	h.logger.Info("a client long-polls without If-None-Match, again and again: each such request is answered at once, so its loop spins; the client must send the ETag it got back in If-None-Match",
		zap.String("watch", sub.Key().Short()), zap.String("topic", sub.Topic()))
}

// longPoll is what a long-poll request asks for.
type longPoll struct {
	wait time.Duration
	inm  []string // If-None-Match values
}

// fitWait reports whether the module may hold the request, and shortens
// its wait to max_wait and to what the server's write timeout allows.
func (h *Handler) fitWait(w http.ResponseWriter, r *http.Request, lp *longPoll) bool {
	if r.Header.Get("Range") != "" {
		return false // a part of a representation cannot be held for everyone
	}
	lp.wait = fitWriteTimeout(w, r, min(lp.wait, time.Duration(h.MaxWait)))
	return lp.wait > 0
}

// admit checks the request against the caps (max_streams for a stream,
// max_waiters for a long-poll) and subscribes it to the watch of its key. The error is one of the caps' (the request is to be
// rejected), or longpoll.ErrClosed if the engine has closed; with an error,
// nothing is held.
func (h *Handler) admit(r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer, clientIP string, stream bool) (longpoll.Ticket, *longpoll.Subscription, error) {
	key := h.requestKey(r, repl)
	total := h.MaxWaiters
	if stream {
		total = h.MaxStreams
	}
	ticket, err := h.hub.limiter.Acquire(clientAddress(clientIP), key, longpoll.Caps{
		Total: total, PerClient: h.MaxWaitersPerClient, WatchesPerClient: h.MaxWatchesPerClient, Stream: stream,
	})
	if err != nil {
		return ticket, nil, err
	}
	h.route.capture(next)
	sub, err := h.hub.engine.Join(key, h.requestTopic(r, repl), func() longpoll.Fetcher {
		// Called, outside the engine's locks, when a watch is made: its
		// polls are built from this request (never from its route, which
		// the config in service gives).
		f := newFetcher(r, h.MaxBody)
		if m := h.hub.member; m != nil {
			return m.Fetcher(key, f)
		}
		return f
	})
	if err != nil {
		ticket.Release()
		return longpoll.Ticket{}, nil, err
	}
	return ticket, sub, nil
}

// clientAddress is what the per-client caps count a client by: its IP
// address, or for IPv6, its /64 network, which one host can hold whole
// (a client could otherwise take a new address for every request).
func clientAddress(ip string) string {
	addr, err := netip.ParseAddr(ip)
	if err != nil || addr.Unmap().Is4() {
		return ip
	}
	prefix, err := addr.Prefix(64)
	if err != nil {
		return ip
	}
	return prefix.String()
}

// replaceSpread is how long the answers of held requests are spread over
// when their engine is replaced by a reload: answered all at once, they
// would all come back at once, into the listeners the reload hands over.
const replaceSpread = 3 * time.Second

// spreadAnswer waits a random part of replaceSpread, never past what is
// left of the request's wait, or until the client leaves.
//
//go:noinline
func (h *Handler) spreadAnswer(r *http.Request, left time.Duration) {
	if left <= 0 {
		return
	}
	select {
	case <-h.hub.deadlines.After(rand.N(min(replaceSpread, left))):
	case <-r.Context().Done():
	}
}

// holdEnd is how a long-poll request's wait ended.
type holdEnd struct {
	st      *longpoll.State // the state to answer from; nil: the client left
	held    bool            // the request waited for a change (also when its wait ended)
	heldFor time.Duration
	private bool // the watch cannot share with the request: hold it privately
}

// wait waits until the request's watch has a state to answer it from: at
// once, when the representation changes, or when the wait ends.
func (h *Handler) wait(r *http.Request, sub *longpoll.Subscription, lp *longPoll) holdEnd {
	start := time.Now()
	// Shorten each wait by up to a tenth, so that clients released together
	// by one change do not all come back at the same instant next time. The
	// hub's deadlines end it, up to a tenth of a second earlier still,
	// without a timer of its own.
	expired := h.hub.deadlines.After(lp.wait - rand.N(lp.wait/10+1))
	done := r.Context().Done()
	st := sub.State()
	held := false
	for {
		var wake <-chan struct{}
		switch st.Decide(lp.inm, r.Header) {
		case longpoll.Wait:
			// The watch's first poll, or a change the client waits for.
			wake, held = st.Changed(), held || !st.Pending()
		case longpoll.Send, longpoll.Fail:
			if wake = sub.Stale(); wake == nil {
				return holdEnd{st: st, held: held, heldFor: time.Since(start)}
			}
			// An answer given at once must not be older than one interval:
			// wait for the poll this request started on an idle watch.
		case longpoll.PassThrough:
			return holdEnd{held: true, heldFor: time.Since(start), private: true}
		default: // End
			return holdEnd{st: st, held: held, heldFor: time.Since(start)}
		}
		select {
		case <-wake:
			st = sub.State()
		case <-expired:
			return holdEnd{st: sub.State(), held: true, heldFor: time.Since(start)}
		case <-done:
			return holdEnd{held: true, heldFor: time.Since(start)}
		}
	}
}

// finish answers the request from the state its wait ended with, as
// State.Decide says, and returns the outcome. Answers other than the
// representation or 304 are left to finishOther, to keep this frame small.
func (h *Handler) finish(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler,
	repl *caddy.Replacer, end *holdEnd, lp *longPoll,
) (string, error) {
	st := end.st
	d := st.Decide(lp.inm, r.Header)
	switch {
	case d == longpoll.Send:
		outcome := outcomeImmediate
		if end.held {
			outcome = outcomeChanged
		}
		repl.Set("http.longpoll.outcome", outcome)
		return outcome, writeSnapshot(w, r, st.Snapshot, h.variantFor(w, r, st.Snapshot), lp.wait, end.held)
	case d == longpoll.Wait && st.Snapshot != nil && st.Failure == nil:
		// the wait ended with nothing new
		repl.Set("http.longpoll.outcome", outcomeTimeout)
		writeNotModified(w, h.notModifiedFor(w, r, st.Snapshot), lp.wait)
		return outcomeTimeout, nil
	case d == longpoll.End && st.Snapshot != nil && st.Snapshot.VaryMatches(r.Header):
		// the engine closed: answered now, from what it had
		repl.Set("http.longpoll.outcome", outcomeShutdown)
		if longpoll.MatchETag(lp.inm, st.Snapshot.ETag) {
			writeNotModified(w, h.notModifiedFor(w, r, st.Snapshot), lp.wait)
			return outcomeShutdown, nil
		}
		return outcomeShutdown, writeSnapshot(w, r, st.Snapshot, h.variantFor(w, r, st.Snapshot), lp.wait, end.held)
	}
	return h.finishOther(w, r, next, repl, end, lp, d)
}

// finishOther answers from a state that has no representation for the
// request: the upstream's failure, no answer within the wait, or the next
// handler.
func (h *Handler) finishOther(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler,
	repl *caddy.Replacer, end *holdEnd, lp *longPoll, d longpoll.Decision,
) (string, error) {
	st := end.st
	switch {
	case d == longpoll.PassThrough, d == longpoll.End && st.Failure == nil:
		// the watch cannot share, or closed with nothing to give
		repl.Set("http.longpoll.outcome", outcomePassthrough)
		if !end.held {
			return outcomePassthrough, next.ServeHTTP(w, r)
		}
		return outcomePassthrough, h.passOn(w, r, next, lp.wait-end.heldFor+time.Duration(h.PollTimeout))
	case st.Failure != nil && errors.Is(st.Failure.Err, longpoll.ErrOverBudget):
		// Over max_memory: refused like a request over a cap, not passed
		// to the upstream, which would pay for every client's loop.
		repl.Set("http.longpoll.outcome", outcomeRejected)
		return outcomeRejected, h.reject(w, st.Failure.Err)
	case st.Failure != nil:
		repl.Set("http.longpoll.outcome", outcomeError)
		w.Header().Set("Retry-After", strconv.Itoa(max(1, int(st.Failure.RetryAfter.Seconds()+0.5))))
		return outcomeError, caddyhttp.Error(http.StatusBadGateway, pollFailure{st.Failure.Err})
	}
	repl.Set("http.longpoll.outcome", outcomeError)
	w.Header().Set("Retry-After", "1")
	return outcomeError, caddyhttp.Error(http.StatusGatewayTimeout, errors.New("upstream gave no answer within the wait"))
}

// passOn hands a held long-poll request to the next handler (its watch can
// no longer share a representation), for no longer than limit: what is
// left of its wait, plus poll_timeout. A client that asked to wait N
// seconds is not kept much longer by a slow upstream.
func (h *Handler) passOn(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(r.Context(), max(limit, time.Duration(h.PollTimeout)))
	defer cancel()
	return next.ServeHTTP(w, r.WithContext(ctx))
}

// pollFailure is the error a request is answered with when the watch's
// polls fail. It does not unwrap to the poll's error: caddyhttp.Error would
// take the status of a HandlerError inside it (reverse_proxy's 504 for a
// timeout, the 429 of an error directive) instead of the documented 502.
type pollFailure struct{ err error }

func (e pollFailure) Error() string { return "polling upstream: " + e.err.Error() }

// reject answers a request over a cap: 429 for a client's caps, 503 for
// the handler's, with Retry-After and a message that names the cap.
func (h *Handler) reject(w http.ResponseWriter, err error) error {
	w.Header().Set("Retry-After", strconv.Itoa(1+rand.IntN(5)))
	c := capOf(err)
	if !h.DisableMetrics {
		metrics.rejected(c.name)
	}
	if c.status == http.StatusServiceUnavailable && h.hub.capWarning() {
		h.logger.Warn(c.name+" reached: rejecting requests", zap.Int(c.name, c.value(h)))
	}
	return caddyhttp.Error(c.status, fmt.Errorf("%s (%d) reached: %w", c.name, c.value(h), err))
}

// capRule is a cap a request can be rejected by.
type capRule struct {
	name   string // the setting
	status int
	value  func(*Handler) int
}

var capRules = map[error]capRule{
	longpoll.ErrOverBudget:              {"max_memory", http.StatusServiceUnavailable, func(h *Handler) int { return int(h.MaxMemory) }},
	longpoll.ErrTooManyWaiters:          {"max_waiters", http.StatusServiceUnavailable, func(h *Handler) int { return h.MaxWaiters }},
	longpoll.ErrTooManyStreams:          {"max_streams", http.StatusServiceUnavailable, func(h *Handler) int { return h.MaxStreams }},
	longpoll.ErrTooManyWatches:          {"max_watches", http.StatusServiceUnavailable, func(h *Handler) int { return h.MaxWatches }},
	longpoll.ErrTooManyForClient:        {"max_waiters_per_client", http.StatusTooManyRequests, func(h *Handler) int { return h.MaxWaitersPerClient }},
	longpoll.ErrTooManyWatchesForClient: {"max_watches_per_client", http.StatusTooManyRequests, func(h *Handler) int { return h.MaxWatchesPerClient }},
}

// capNames are the names of the caps, as the metrics label rejections.
var capNames = []string{"max_waiters", "max_watches", "max_waiters_per_client", "max_watches_per_client", "max_memory", "max_streams"}

func capOf(err error) capRule {
	for e, c := range capRules {
		if errors.Is(err, e) {
			return c
		}
	}
	return capRules[longpoll.ErrTooManyWaiters]
}

// writeSnapshot writes a representation. One whose status the next handler
// reported as an error (file_server's 404) is returned as that error, with
// the representation's headers set, so that the server's error handling
// (handle_errors) renders it as it would without this module.
func writeSnapshot(w http.ResponseWriter, r *http.Request, s *longpoll.Snapshot, v *variant, wait time.Duration, held bool) error {
	copyHeader(w.Header(), v.lh.full, nil)
	if held {
		w.Header()["Preference-Applied"] = preferenceApplied(wait)
	}
	if s.ErrorStatus {
		return errorStatus(w, s)
	}
	w.WriteHeader(s.Status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(v.body) // a client that left is no error of ours
	}
	return nil
}

// errorStatus answers a representation made of the next handler's error
// status. It is a call of its own to keep writeSnapshot's frame small: the
// answer path runs on stacks close to 8 KiB.
//
//go:noinline
func errorStatus(w http.ResponseWriter, s *longpoll.Snapshot) error {
	delete(w.Header(), "Content-Length") // the error handling writes the body
	return caddyhttp.Error(s.Status, errErrorStatus)
}

// errErrorStatus is the error a representation made of the next handler's
// error status is answered with.
var errErrorStatus = errors.New("longpoll: the resource's status, as the next handler reported it")

// copyHeader copies the fields of src (all, or those named in only) into
// dst. The values are copied into one new array per response: handlers
// that wrap this one (a deferred `header` directive, say) may edit values in
// place, and must not edit the snapshot that every client shares.
func copyHeader(dst, src http.Header, only []string) {
	n := 0
	for k, v := range src {
		if only == nil || slices.Contains(only, k) {
			n += len(v)
		}
	}
	vals := make([]string, n)
	for k, v := range src {
		if only == nil || slices.Contains(only, k) {
			c := copy(vals, v)
			dst[k], vals = vals[:c:c], vals[c:]
		}
	}
}

func writeNotModified(w http.ResponseWriter, nm http.Header, wait time.Duration) {
	copyHeader(w.Header(), nm, nil)
	w.Header()["Preference-Applied"] = preferenceApplied(wait)
	w.WriteHeader(http.StatusNotModified)
}

// preferenceApplied returns the Preference-Applied value for a wait, in a
// slice of its own (handlers that wrap this one may edit header values in
// place), from a table of strings for common waits.
func preferenceApplied(wait time.Duration) []string {
	n := int(wait / time.Second)
	if n < len(preferenceAppliedValues) {
		return []string{preferenceAppliedValues[n]}
	}
	return []string{"wait=" + strconv.Itoa(n)}
}

var preferenceAppliedValues = func() []string {
	v := make([]string, 301)
	for i := range v {
		v[i] = "wait=" + strconv.Itoa(i)
	}
	return v
}()

// fitWriteTimeout keeps a server's write_timeout from cutting a held request
// short. Without write_idle_timeout, it moves the write deadline past the
// wait, giving the answer the full write_timeout after it. With it (Caddy's
// default), write_timeout is a hard limit on the whole response that a
// handler cannot loosen, so the wait is shortened to end inside it, with a
// margin of a quarter of write_timeout (at most a second) for the answer.
func fitWriteTimeout(w http.ResponseWriter, r *http.Request, wait time.Duration) time.Duration {
	srv, _ := r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if srv == nil || srv.WriteTimeout <= 0 {
		return wait
	}
	wt := time.Duration(srv.WriteTimeout)
	if srv.WriteIdleTimeout <= 0 {
		err := http.NewResponseController(w).SetWriteDeadline(time.Now().Add(wait + wt))
		if err == nil {
			return wait
		}
	}
	return min(wait, wt-min(wt/4, time.Second))
}
