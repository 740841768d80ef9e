// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
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

// streamWriter is a delivery's side of a stream.
type streamWriter interface {
	// send writes a version.
	send(s *longpoll.Snapshot) error
	// failing tells the client the upstream fails, f being the failure.
	failing(f *longpoll.Failure) error
	// heartbeat writes a sign of life.
	heartbeat() error
	// gone returns a channel closed when the client has left, or a reason
	// of the delivery's own ends the stream (a WebSocket client that sent
	// a message, or missed its pings), with that reason.
	gone() (<-chan struct{}, func() string)
}

// admitStream checks a stream request against the caps and subscribes it
// to the watch of its key, as admit does for a long-poll.
func (h *Handler) admitStream(r *http.Request, next caddyhttp.Handler, repl *caddy.Replacer) (longpoll.Ticket, *longpoll.Subscription, error) {
	clientIP, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	key := h.requestKey(r, repl)
	ticket, err := h.hub.limiter.Acquire(clientAddress(clientIP), key, longpoll.Caps{
		Total: h.MaxStreams, PerClient: h.MaxWaitersPerClient, WatchesPerClient: h.MaxWatchesPerClient, Stream: true,
	})
	if err != nil {
		return ticket, nil, err
	}
	h.route.capture(next)
	sub, err := h.hub.engine.Join(key, h.requestTopic(r, repl), func() longpoll.Fetcher {
		return newFetcher(r, h.MaxBody)
	})
	if err != nil {
		ticket.Release()
		return longpoll.Ticket{}, nil, err
	}
	return ticket, sub, nil
}

// runStream delivers the versions of sub's watch to sw until the stream
// ends, and returns why. have is what the client has (from Last-Event-ID,
// or the etag of a WebSocket request); header is its request's header.
func (h *Handler) runStream(ctx context.Context, sub *longpoll.Subscription, sw streamWriter, have []string, header http.Header, delivery string) string {
	heartbeat := time.Duration(h.Heartbeat)
	var maxEnd <-chan struct{}
	if d := time.Duration(h.MaxStreamDuration); d > 0 {
		maxEnd = h.hub.deadlines.After(d - d/10 + rand.N(d/5+1)) // jitter: streams opened together do not end together
	}
	sub.Stream()
	gone, goneWhy := sw.gone()
	failing := false
	// One heartbeat deadline at a time, moved on only when it comes: not a
	// new one after every send, which would cost every stream a call on
	// the shared deadlines at every change.
	beat := h.hub.deadlines.After(heartbeat)
	lastSent := time.Now()
	for {
		st := sub.State()
		switch {
		case st.Failure != nil && !failing:
			// once per run of failed polls, whatever version it has
			failing = true
			if sw.failing(st.Failure) != nil {
				return endWrite
			}
		case st.Failure == nil:
			failing = false
		}
		switch st.Decide(have, header) {
		case longpoll.Send:
			if err := sw.send(st.Snapshot); err != nil {
				return endWrite
			}
			metrics.sent(delivery, h.DisableMetrics)
			have = []string{st.Snapshot.ETag}
			lastSent = time.Now()
			continue // the state may have moved on meanwhile
		case longpoll.PassThrough:
			return endPassthrough
		case longpoll.End:
			if caddy.Exiting() {
				return endShutdown
			}
			// a reload replaced the engine: end the streams spread out,
			// so that their clients do not all come back together
			select {
			case <-h.hub.deadlines.After(rand.N(replaceSpread)):
			case <-gone:
			}
			return endReload
		}
		// Wait, or Fail: the client was told; it waits for the upstream
		select {
		case <-st.Changed():
		case <-beat:
			if idle := time.Since(lastSent); idle < heartbeat-deadlineGranularity {
				beat = h.hub.deadlines.After(heartbeat - idle) // something was sent since
				continue
			}
			if sw.heartbeat() != nil {
				return endWrite
			}
			lastSent = time.Now()
			beat = h.hub.deadlines.After(heartbeat)
		case <-gone:
			if why := goneWhy(); why != "" {
				return why
			}
			return endClient
		case <-ctx.Done():
			return endClient
		case <-maxEnd:
			return endDuration
		}
	}
}
