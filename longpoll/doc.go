// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

// Package longpoll is the engine behind the caddy-longpoll module: it keeps
// one watch per key, polls the upstream once on behalf of every subscriber of
// that key, and tells subscribers when the representation changes.
//
// The engine knows nothing about Caddy. It is handed a [Fetcher] per watch,
// which performs one poll and returns a [Snapshot] (an immutable, encoded
// response with a strong ETag computed from what a client receives).
// Subscribers read the current [State] and wait on its Changed channel,
// which the engine closes when it publishes a new state: one close wakes every
// subscriber, with no per-subscriber bookkeeping, timer or goroutine.
//
// Sketch:
//
//	e, _ := longpoll.New(longpoll.Config{Interval: time.Second})
//	defer e.Close()
//	sub, _ := e.Subscribe(longpoll.KeyOf("GET", "/orders/42"), "/orders/42", gen, newFetcher)
//	defer sub.Close()
//	for st := sub.State(); st.Snapshot == nil || st.Snapshot.ETag == have; st = sub.State() {
//		<-st.Changed()
//	}
//
// Concurrency guarantees: every exported method is safe for concurrent use.
// A watch has at most one poll in flight; it polls every Config.Interval while
// it has subscribers (backing off while the upstream fails), stops polling
// when its last subscriber leaves, and is forgotten, with all its memory,
// Config.IdleTTL later unless a subscriber returns.
package longpoll
