// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import "context"

// Subscription is one subscriber's membership of a watch: a held request,
// or a stream that stays across many changes. It is used by one goroutine
// at a time.
type Subscription struct {
	w      *watch
	await  chan struct{} // a poll to wait for before an immediate answer
	closed bool
	stream bool
}

// State returns the watch's current state.
func (s *Subscription) State() *State { return s.w.state.Load() }

// Key returns the key of the subscription's watch.
func (s *Subscription) Key() Key { return s.w.key }

// Topic returns the topic of the subscription's watch.
func (s *Subscription) Topic() string { return s.w.topic }

// NeedsFetcher reports whether the watch has no Fetcher yet: a new one.
// The subscriber then builds one and gives it with SetFetcher, outside the
// engine's locks.
func (s *Subscription) NeedsFetcher() bool {
	s.w.mu.Lock()
	defer s.w.mu.Unlock()
	return s.w.fetcher == nil && !s.w.gone
}

// SetFetcher gives the watch its Fetcher, which it keeps for life, and
// starts its first poll. A watch that has one keeps it: when two
// subscribers race to give a new watch its Fetcher, the first wins.
func (s *Subscription) SetFetcher(f Fetcher) { s.w.setFetcher(f) }

// Fresh returns a state no older than one poll interval, for a request
// that is answered at once: it waits for the watch's first result, or for
// the poll that this subscription started because the watch had been idle
// longer than the interval. It returns ctx's error if ctx ends first.
func (s *Subscription) Fresh(ctx context.Context) (*State, error) {
	st := s.State()
	if st.Pending() {
		select {
		case <-st.changed:
		case <-ctx.Done():
			return st, ctx.Err()
		}
	}
	if ch := s.Stale(); ch != nil {
		select {
		case <-ch:
		case <-ctx.Done():
			return s.State(), ctx.Err()
		}
	}
	return s.State(), nil
}

// Stale returns, for a subscription that found its watch idle for longer
// than the interval, the channel of the poll it started, closed when that
// poll ends; nil otherwise. A request answered at once waits for it, so that
// it is never given data older than one interval.
func (s *Subscription) Stale() <-chan struct{} {
	if s.await != nil {
		select {
		case <-s.await:
			s.await = nil // that poll ended: the state is fresh
		default:
		}
	}
	return s.await
}

// Trigger asks the watch to poll as soon as it may, even if no subscriber
// waits: at once, unless a poll caused by a trigger or notification started
// less than Config.NotifyWindow ago (or, while the upstream fails, less
// than an interval ago). A trigger during a poll causes one more poll after
// it, however many triggers come.
func (s *Subscription) Trigger() { s.w.trigger() }

// Stream marks the subscription as a stream (it stays across changes),
// for WatchInfo.Streams.
func (s *Subscription) Stream() {
	if s.stream || s.closed {
		return
	}
	s.stream = true
	s.w.mu.Lock()
	s.w.streams++
	s.w.mu.Unlock()
}

// Close leaves the watch. It is idempotent.
func (s *Subscription) Close() {
	if s.closed {
		return
	}
	s.closed = true
	if s.stream {
		s.w.mu.Lock()
		s.w.streams--
		s.w.mu.Unlock()
	}
	s.w.unsubscribe()
}
