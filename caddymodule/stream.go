// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// A stream is a subscriber that stays: one connection that gets every new
// version of a watch's representation as it comes (SSE, WebSocket). It
// follows State.Decide like a long-poll, sending instead of answering, and
// waiting again. Each stream is a goroutine of its own, blocked like a held
// request between versions; a slow client may skip intermediate versions,
// never the last one, and never delays the others (every write has a
// deadline of its own).

// Deliveries, the values of the delivery label of the stream metrics.
const (
	deliverySSE       = "sse"
	deliveryWebSocket = "websocket"
)

// Why a stream ended, the values of the reason label.
const (
	endClient      = "client"      // the client left, or closed its end
	endWrite       = "write_error" // a write failed or timed out: a client that stopped reading
	endHeartbeat   = "heartbeat"   // a WebSocket client did not answer a ping
	endDuration    = "duration"    // max_stream_duration
	endReload      = "reload"      // a reload replaced the watch's engine
	endShutdown    = "shutdown"    // Caddy is exiting
	endPassthrough = "passthrough" // the watch can no longer share its representation
	endPolicy      = "policy"      // the client sent a message (WebSocket)
)

// endReasons are the values of the reason label.
var endReasons = []string{endClient, endWrite, endHeartbeat, endDuration, endReload, endShutdown, endPassthrough, endPolicy}

// outcomeStream is {http.longpoll.outcome} for a stream.
const outcomeStream = "stream"

// deadlineGranularity is how early a shared deadline may end.
const deadlineGranularity = longpoll.DefaultGranularity

// writeTimeout bounds one write to a stream: a client that stops reading
// is dropped after it, rather than keep its goroutine and memory.
const writeTimeout = 10 * time.Second

// minWriteRate is the slowest a healthy client is taken to read: a write
// of n bytes has n/minWriteRate on top of writeTimeout, so that a big
// version (up to max_body) reaches a slow client rather than cut it off
// at every try. 16 KiB/s is a slow mobile link.
const minWriteRate = 16 << 10

// writeBudget is the time a write of n bytes may take.
func writeBudget(n int) time.Duration {
	return writeTimeout + time.Duration(n)*time.Second/minWriteRate
}

// writeDeadline is the deadline of a stream's writes: each write ends
// within its budget from its start, and has at least its budget less half
// of writeTimeout. It moves on only when that is not left, not at every
// write, which would cost every stream a timer update at every change.
type writeDeadline struct{ at time.Time }

// next returns the deadline of a write of n bytes starting at now, and
// whether it has moved since the last write.
func (d *writeDeadline) next(now time.Time, n int) (time.Time, bool) {
	budget := writeBudget(n)
	if d.at.Sub(now) >= budget-writeTimeout/2 {
		return d.at, false
	}
	d.at = now.Add(budget)
	return d.at, true
}

// hardWriteEnd returns when a response to r must have been written, as the
// server's write_timeout makes it a hard limit on the whole response,
// counted from the request's start (Caddy does when write_idle_timeout is
// on, its default), less a margin of a quarter of it (at most a second)
// for a stream to end cleanly; zero if there is no such limit. Without
// write_idle_timeout, the stream's own write deadlines replace the one
// write_timeout sets.
func hardWriteEnd(r *http.Request) time.Time {
	_, iw := caddyhttp.IdleTimeoutsFromContext(r.Context())
	if iw == nil || iw.Deadline.HardDeadline.IsZero() {
		return time.Time{}
	}
	hard := iw.Deadline.HardDeadline
	return hard.Add(-min(hard.Sub(iw.Deadline.Start)/4, time.Second))
}

// streamWriter is a delivery's side of a stream.
type streamWriter interface {
	// start writes what comes before the first version, if anything.
	start() error
	// send writes a version.
	send(s *longpoll.Snapshot) error
	// sendDelta writes a version as a delta from the one before it.
	sendDelta(d *delta) error
	// failing tells the client the upstream fails, f being the failure.
	failing(f *longpoll.Failure) error
	// heartbeat writes a sign of life.
	heartbeat() error
	// finish ends the delivery's side of a stream that ended for why.
	finish(why string)
	// gone returns a channel closed when the client has left, or a reason
	// of the delivery's own ends the stream (a WebSocket client that sent
	// a message, or missed its pings), with that reason.
	gone() (<-chan struct{}, func() string)
}

// streamDelivery returns the delivery r asks for: deliverySSE for a GET
// that accepts an event stream, deliveryWebSocket for a WebSocket upgrade,
// each if the handler serves it; "" otherwise.
func (h *Handler) streamDelivery(r *http.Request) string {
	switch {
	case r.Method != http.MethodGet:
	case h.SSE && wantsSSE(r):
		return deliverySSE
	case h.WebSocket && isWebSocket(r):
		return deliveryWebSocket
	}
	return ""
}

// serveStream serves a stream of the watch of r's key: admitted as a
// long-poll is, against max_streams, then opened by its delivery (or
// answered otherwise, if the watch cannot share), then run until it ends.
func (h *Handler) serveStream(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, delivery string) error {
	// first: they take the module's query parameters out of the key
	deltas := h.Deltas != "" && wantsDeltas(r)
	have := h.streamHave(r)
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if delivery == deliveryWebSocket && !originAllowed(r, h.Origins) {
		// before the request costs a place, a watch or a poll
		repl.Set("http.longpoll.outcome", outcomeRejected)
		h.delivered(outcomeRejected, nil, nil)
		return caddyhttp.Error(http.StatusForbidden, errOrigin)
	}
	clientIP, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	ticket, sub, err := h.admit(r, next, repl, clientIP, true)
	switch {
	case errors.Is(err, longpoll.ErrClosed):
		// The engine closed under an old config's handler (a reload): the
		// client is sent to the new one. Not to the next handler, whose
		// answer an EventSource would take as the end of it.
		repl.Set("http.longpoll.outcome", outcomeShutdown)
		h.delivered(outcomeShutdown, nil, nil)
		return reconnectStream(w, delivery)
	case err != nil:
		// before any upgrade or byte of the stream
		repl.Set("http.longpoll.outcome", outcomeRejected)
		h.delivered(outcomeRejected, nil, nil)
		return h.reject(w, err)
	}
	if ok, err := h.streamable(w, r, next, repl, ticket, sub, have); !ok {
		return err
	}
	var s *stream
	if delivery == deliverySSE {
		s = h.openSSE(w, r, ticket, sub, have)
	} else {
		s = h.openWebSocket(w, r, ticket, sub, have)
	}
	if s == nil {
		return nil // the upgrade failed: the library answered the client
	}
	s.deltas = deltas
	why := endWrite // if run panics, the stream's place is given back all the same
	defer func() {
		s.close(why)
		// set at the end, for the access log: set at the start, it would
		// keep the replacer's map (about 400 B) for the stream's life
		repl.Set("http.longpoll.outcome", outcomeStream)
	}()
	why = s.run()
	return nil
}

// streamable waits for the watch's first result, which says whether there
// is a stream at all: a resource that cannot be shared (an upstream that
// serves an event stream or a WebSocket of its own, say) is passed on as
// it came, before a byte of a stream is written. Unless the request can be
// streamed, it gives the stream's place back and answers the request.
func (h *Handler) streamable(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer,
	ticket longpoll.Ticket, sub *longpoll.Subscription, have []string,
) (bool, error) {
	st, err := sub.Fresh(r.Context())
	if err == nil && st.Decide(have, r.Header) != longpoll.PassThrough {
		return true, nil
	}
	sub.Close()
	ticket.Release()
	if err != nil { // the client left
		repl.Set("http.longpoll.outcome", outcomeCanceled)
		h.delivered(outcomeCanceled, nil, nil)
		return false, nil
	}
	repl.Set("http.longpoll.outcome", outcomePassthrough)
	h.delivered(outcomePassthrough, nil, nil)
	return false, next.ServeHTTP(w, r)
}

// reconnectStream answers a stream request that came in as its engine
// closed: an event stream with a reconnect hint and nothing else, which an
// EventSource follows; a WebSocket, before its upgrade, 503 with
// Retry-After.
func reconnectStream(w http.ResponseWriter, delivery string) error {
	if delivery == deliveryWebSocket {
		w.Header().Set("Retry-After", "1")
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("longpoll: the configuration is being replaced: connect again"))
	}
	setSSEHeader(w.Header(), false)
	w.WriteHeader(http.StatusOK)
	_, err := w.Write(retryHint())
	return err
}

// stream is an open stream: what its goroutine needs between versions.
//
// A stream's goroutine has a 16 KiB stack, where a held request's has
// 8 KiB (see ServeHTTP): a stream flushes its head from inside the
// handler, and net/http writes a response's header from a frame of about
// 2.8 KiB, under Caddy's handler chain of about 5.5 KiB. A held request's
// header is written after the handler has returned.
type stream struct {
	h        *Handler
	sub      *longpoll.Subscription
	ticket   longpoll.Ticket
	w        streamWriter
	ctx      context.Context
	header   http.Header
	have     []string // the version the client has
	delivery string
	deltas   bool               // the client asked for deltas
	last     *longpoll.Snapshot // with deltas: the version sent last

	gone         <-chan struct{}
	goneWhy      func() string
	beat, maxEnd <-chan struct{}
	lastSent     time.Time
	failing      bool
}

// newStream makes the stream of sub, to deliver to w, and to end by
// endBy if it is not zero.
func (h *Handler) newStream(ctx context.Context, sub *longpoll.Subscription, ticket longpoll.Ticket, w streamWriter,
	r *http.Request, have []string, delivery string, endBy time.Time,
) *stream {
	s := &stream{h: h, sub: sub, ticket: ticket, w: w, ctx: ctx, header: r.Header, have: have, delivery: delivery}
	var life time.Duration
	if d := time.Duration(h.MaxStreamDuration); d > 0 {
		life = d - d/10 + rand.N(d/5+1) // jitter: streams opened together do not end together
	}
	if !endBy.IsZero() {
		if d := max(time.Until(endBy), time.Millisecond); life == 0 || d < life {
			life = d
		}
	}
	if life > 0 {
		s.maxEnd = h.hub.deadlines.After(life)
	}
	sub.Stream()
	s.gone, s.goneWhy = w.gone()
	// One heartbeat deadline at a time, moved on only when it comes: not a
	// new one after every send, which would cost every stream a call on
	// the shared deadlines at every change.
	s.beat = h.hub.deadlines.After(time.Duration(h.Heartbeat))
	s.lastSent = time.Now()
	metrics.opened(delivery, h.DisableMetrics, h.hub)
	return s
}

// close gives the stream's place back, counts why it ended, and then ends
// the delivery's side (a WebSocket's close handshake waits for the
// client).
func (s *stream) close(why string) {
	s.sub.Close()
	s.ticket.Release()
	metrics.closed(s.delivery, why, s.h.DisableMetrics, s.h.hub)
	s.w.finish(why)
}

// run delivers the versions of the watch until the stream ends, and
// returns why.
func (s *stream) run() string {
	if s.w.start() != nil {
		return endWrite
	}
	for {
		changed, why := s.step()
		switch {
		case why != "":
			return why
		case changed == nil:
			continue // it sent: the state may have moved on meanwhile
		}
		if why := s.wait(changed); why != "" {
			return why
		}
	}
}

// step does what State.Decide says, and returns the channel to wait on
// next (nil: step again at once), or why the stream ends.
func (s *stream) step() (<-chan struct{}, string) {
	st := s.sub.State()
	switch {
	case st.Failure != nil && !s.failing:
		// once per run of failed polls, whatever version it has
		s.failing = true
		if s.w.failing(st.Failure) != nil {
			return nil, endWrite
		}
	case st.Failure == nil:
		s.failing = false
	}
	switch st.Decide(s.have, s.header) {
	case longpoll.Send:
		if s.send(st) != nil {
			return nil, endWrite
		}
		metrics.sent(s.delivery, s.h.DisableMetrics)
		s.have = []string{st.Snapshot.ETag}
		s.lastSent = time.Now()
		return nil, ""
	case longpoll.PassThrough:
		return nil, endPassthrough
	case longpoll.End:
		return nil, s.ending()
	}
	// Wait, or Fail: the client was told; it waits for the upstream
	if s.deltas && s.last == nil && st.Snapshot != nil && longpoll.MatchETag(s.have, st.Snapshot.ETag) {
		s.last = st.Snapshot // it resumed at the current version: deltas from it
	}
	return st.Changed(), ""
}

// send sends the state's version: as a delta from the version sent last,
// when the client asked for deltas and has the version it replaced.
func (s *stream) send(st *longpoll.State) error {
	snap := st.Snapshot
	if s.deltas {
		prev := s.last
		s.last = snap
		if prev != nil && prev.ETag == st.Previous {
			if d := deltaTo(snap, prev); d.sse != nil {
				return s.w.sendDelta(d)
			}
		}
	}
	return s.w.send(snap)
}

// ending is why a stream whose engine closed ends: a reload that replaced
// the engine ends its streams spread out, so that their clients do not all
// come back together; an exit ends them at once.
func (s *stream) ending() string {
	if caddy.Exiting() {
		return endShutdown
	}
	select {
	case <-s.h.hub.deadlines.After(rand.N(replaceSpread)):
	case <-s.gone:
	}
	return endReload
}

// wait waits for a new state, a heartbeat, the client, or the stream's end.
func (s *stream) wait(changed <-chan struct{}) string {
	select {
	case <-changed:
	case <-s.beat:
		// An SSE comment is due only when nothing was sent meanwhile; a
		// WebSocket ping every heartbeat, which the client must answer.
		heartbeat := time.Duration(s.h.Heartbeat)
		if idle := time.Since(s.lastSent); idle < heartbeat-deadlineGranularity && s.delivery == deliverySSE {
			s.beat = s.h.hub.deadlines.After(heartbeat - idle) // something was sent since
			return ""
		}
		if s.w.heartbeat() != nil {
			return endWrite
		}
		s.lastSent = time.Now()
		s.beat = s.h.hub.deadlines.After(heartbeat)
	case <-s.gone:
		if why := s.goneWhy(); why != "" {
			return why
		}
		return endClient
	case <-s.ctx.Done():
		return endClient
	case <-s.maxEnd:
		return endDuration
	}
	return ""
}
