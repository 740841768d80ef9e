// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"iter"
	"time"
)

// PollResult is what one poll of the upstream found.
type PollResult uint8

// Poll results.
const (
	// PollChanged: a representation with a new ETag (also a watch's first).
	PollChanged PollResult = iota
	// PollUnchanged: the upstream sent the representation in full, with
	// the same ETag as before.
	PollUnchanged
	// PollNotModified: the upstream answered 304 Not Modified to the
	// conditional poll.
	PollNotModified
	// PollFailed: a transport error, a timeout, or a status that is not a
	// representation (5xx, 429, 408).
	PollFailed
	// PollUncacheable: a response that cannot be shared (too large, sets
	// cookies, streamed): the watch passes its requests through.
	PollUncacheable

	numPollResults = int(PollUncacheable) + 1
)

var pollResultNames = [numPollResults]string{"changed", "unchanged", "not_modified", "error", "uncacheable"}

// String returns the result's name, as metrics label it: changed,
// unchanged, not_modified, error or uncacheable.
func (r PollResult) String() string {
	if int(r) < len(pollResultNames) {
		return pollResultNames[r]
	}
	return "unknown"
}

// PollResults lists every poll result, for callers that set up one metric
// series per result.
func PollResults() []PollResult {
	rs := make([]PollResult, numPollResults)
	for i := range rs {
		rs[i] = PollResult(i)
	}
	return rs
}

// Observer is told what the engine does, for metrics. Its methods are called
// from the engine's goroutines, some with a watch's lock held: they must be
// safe for concurrent use, return quickly and not call the engine.
type Observer interface {
	// Polled is called once per poll that ends, with what it found and how
	// long it took.
	Polled(result PollResult, took time.Duration)
	// Evicted is called when idle watches are forgotten to keep within
	// Config.MaxMemory, with how many.
	Evicted(watches int)
}

// WithObserver makes the engine report to o (default: nothing is reported).
func WithObserver(o Observer) Option {
	return func(e *Engine) { e.observer = o }
}

// Stats counts an engine's watches.
type Stats struct {
	// Watches is every watch the engine keeps, polling or idle.
	Watches int
	// Active is the watches with at least one subscriber.
	Active int
	// Bytes is the memory the watches hold, as counted against
	// Config.MaxMemory.
	Bytes int64
}

// Stats returns the engine's counts, without visiting its watches.
func (e *Engine) Stats() Stats {
	return Stats{Watches: e.Len(), Active: int(e.active.Load()), Bytes: e.bytes.Load()}
}

// WatchInfo describes one watch, for an operator's view of the engine.
// It holds no key in the clear: Key is the watch's hash.
type WatchInfo struct {
	Key   Key
	Topic string
	// Waiters is the number of subscribers, Streams of them streams.
	Waiters, Streams int
	// LastPoll is when the last completed poll ended; zero before the first.
	LastPoll time.Time
	// LastResult is what the last completed poll found, if LastPoll is set.
	LastResult PollResult
	// LastChange is when the watch's representation took its current value.
	LastChange time.Time
	// Failures is the number of polls that failed in a row, up to now.
	Failures int
	// ETag is the current representation's ETag, empty before the first.
	ETag string
	// Passthrough: see State.
	Passthrough bool
	// Fetcher is the watch's Fetcher, nil before its first subscriber
	// made it: an adapter may ask its own Fetchers more (a cluster
	// member's, whether this instance polls).
	Fetcher Fetcher
}

// Watches returns every watch the engine keeps, in no particular order, as
// each stands when it is reached. It locks one watch at a time, so that an
// operator looking costs subscribers nothing but a short wait.
func (e *Engine) Watches() iter.Seq[WatchInfo] {
	return func(yield func(WatchInfo) bool) {
		for _, w := range e.list() {
			if info, ok := w.info(); ok && !yield(info) {
				return
			}
		}
	}
}

// info describes w; it reports false for a watch forgotten since it was
// listed.
func (w *watch) info() (WatchInfo, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone {
		return WatchInfo{}, false
	}
	st := w.state.Load()
	info := WatchInfo{
		Key: w.key, Topic: w.topic, Waiters: w.subs, Streams: w.streams,
		LastPoll: w.lastPoll, LastResult: w.lastResult, LastChange: st.Since,
		Failures: w.failures, Passthrough: st.Passthrough, Fetcher: w.fetcher,
	}
	if st.Snapshot != nil {
		info.ETag = st.Snapshot.ETag
	}
	return info, true
}
