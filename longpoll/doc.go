// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

// Package longpoll is the engine behind the caddy-longpoll module: it keeps
// one watch per key, polls the upstream once on behalf of every subscriber of
// that key, and tells subscribers when the representation changes.
//
// The engine knows nothing about Caddy. It is handed a [Fetcher] per watch,
// which performs one poll and returns a [Snapshot] (an immutable response
// with a strong ETag computed from what a client receives), and [Route]s to
// poll through, which their owner opens and closes (a configuration, for
// the Caddy module). Subscribers read the current [State], ask it what to do
// next ([State.Decide]: wait, send, fail, pass through, or end), and wait on
// its Changed channel, which the engine closes when it publishes a new
// state: one close wakes every subscriber, with no per-subscriber
// bookkeeping, timer or goroutine. A subscriber may be one request (a
// long-poll) or stay across many changes (a stream): a slow one skips
// versions, never the last one.
//
// Sketch of a stream's loop (a long-poll's ends at its first Send, or at its
// deadline):
//
//	e, _ := longpoll.New(longpoll.Config{Interval: time.Second})
//	defer e.Close()
//	sub, _ := e.Join(longpoll.KeyOf("GET", "/orders/42"), "/orders/42", newFetcher)
//	defer sub.Close()
//	var have []string // the ETag the client has
//	for {
//		st := sub.State()
//		switch st.Decide(have, header) {
//		case longpoll.Send:
//			send(st.Snapshot)
//			have = []string{st.Snapshot.ETag}
//		case longpoll.Wait, longpoll.Fail:
//			<-st.Changed()
//		default: // PassThrough, End
//			return
//		}
//	}
//
// Concurrency guarantees: every exported method is safe for concurrent use.
// A watch has at most one poll in flight; it polls every Config.Interval while
// it has subscribers (backing off while the upstream fails), stops polling
// when its last subscriber leaves, and is forgotten, with all its memory,
// Config.IdleTTL later unless a subscriber returns.
package longpoll
