// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// State is what a watch knows, published as one immutable value. A
// subscriber reads it and waits on Changed, which is closed when a state
// that matters to subscribers replaces it: a new representation (a
// different ETag), the first result of a cold watch, a switch to
// pass-through, or the engine closing.
type State struct {
	// Snapshot is the last representation polled, nil before the first
	// successful poll.
	Snapshot *Snapshot
	// Failure is set while the last poll failed.
	Failure *Failure
	// Passthrough is set when the upstream's response cannot be shared:
	// subscribers must serve their request themselves.
	Passthrough bool
	// Closed is set when the engine closed: no state will follow.
	Closed bool
	// Detached is set when the watch lost its Fetcher (Engine.Detach): it
	// does not poll until a subscriber brings a newer one, and held
	// subscribers should be answered now from what the state holds.
	Detached bool
	// Since is when the watch's representation took its current value:
	// the end of the poll that found it (or that found the response could
	// not be shared). Zero before the first result.
	Since time.Time

	changed chan struct{}
}

// Changed returns a channel that is closed when a new state matters.
func (s *State) Changed() <-chan struct{} { return s.changed }

// Pending reports whether the watch has no result yet (its first poll is
// under way).
func (s *State) Pending() bool {
	return s.Snapshot == nil && s.Failure == nil && !s.Passthrough && !s.Closed && !s.Detached
}

// Failure describes the failing state of a watch.
type Failure struct {
	// Err is the last poll's error.
	Err error
	// RetryAfter is the delay before the watch polls again.
	RetryAfter time.Duration
	// Count is the number of polls that failed in a row.
	Count int
}

// watch polls one key. Lock order: Engine.mu before watch.mu.
type watch struct {
	e     *Engine
	key   Key
	topic string
	state atomic.Pointer[State]
	timer *time.Timer // next poll while subscribed; idle expiry otherwise

	mu         sync.Mutex
	subs       int
	fetcher    Fetcher
	gen        uint64
	inflight   bool
	again      bool          // poll again as soon as the one in flight ends
	dirty      bool          // notified while detached: poll first thing when back in service
	pollDone   chan struct{} // closed when the poll in flight ends
	freshPoll  chan struct{} // pollDone of a poll started because the data was stale
	polledAt   time.Time     // start of the last completed poll; zero: stale, poll first
	lastPoll   time.Time     // end of the last completed poll, for WatchInfo
	lastResult PollResult
	triggered  time.Time // start of the last poll caused by a notification
	notBefore  time.Time // backoff: no poll before this
	failures   int
	idleSince  time.Time // when the last subscriber left
	passUntil  time.Time // a pass-through watch is probed again after this
	gone       bool
	spin       spinCheck // requests that named no version (spin.go)
	size       int64     // bytes counted against Config.MaxMemory (memory.go)
}

func newWatch(e *Engine, key Key, topic string) *watch {
	w := &watch{e: e, key: key, topic: topic}
	w.state.Store(&State{changed: make(chan struct{})})
	w.timer = time.AfterFunc(time.Hour, w.onTimer)
	w.timer.Stop()
	w.account(watchOverhead)
	return w
}

// Subscription is one subscriber's membership of a watch. It is used by one
// goroutine at a time.
type Subscription struct {
	w      *watch
	await  chan struct{} // a poll to wait for before an immediate answer
	closed bool
}

// State returns the watch's current state.
func (s *Subscription) State() *State { return s.w.state.Load() }

// Key returns the key of the subscription's watch.
func (s *Subscription) Key() Key { return s.w.key }

// Topic returns the topic of the subscription's watch.
func (s *Subscription) Topic() string { return s.w.topic }

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
// waits: at once, unless the upstream is in back-off or a poll caused by a
// trigger or notification started less than Config.NotifyWindow ago. A
// trigger during a poll causes one more poll after it, however many
// triggers come.
func (s *Subscription) Trigger() { s.w.trigger() }

// Close leaves the watch. It is idempotent.
func (s *Subscription) Close() {
	if s.closed {
		return
	}
	s.closed = true
	s.w.unsubscribe()
}

func (w *watch) subscribe(gen uint64, newFetcher func() Fetcher) *Subscription {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subs++
	if w.subs == 1 {
		w.e.active.Add(1)
		w.e.activeBytes.Add(w.size)
	}
	sub := &Subscription{w: w}
	if (w.fetcher == nil && !w.state.Load().Detached) || gen > w.gen {
		w.fetcher, w.gen = newFetcher(), gen
		if st := w.state.Load(); st.Detached {
			// Back in service: the subscribers this concerned have
			// been woken already, so the new state keeps the channel.
			next := *st
			w.publish(&next, false) // not Detached: the watch has a fetcher
			if !w.inflight && w.subs > 1 {
				w.schedule()
			}
		}
	}
	if w.subs == 1 {
		w.idleSince = time.Time{}
		w.freshPoll = w.activate()
	}
	// Every subscriber that arrives while the poll that freshens stale data
	// is under way waits for it, not only the one that started it.
	sub.await = w.freshPoll
	return sub
}

// activate starts polling for a watch that gets its first subscriber. It
// returns the channel of a poll that the subscriber must wait for to answer
// with fresh data, if the watch had been idle longer than the interval.
// It must be called with w.mu held.
func (w *watch) activate() chan struct{} {
	st := w.state.Load()
	if st.Passthrough || st.Closed {
		return nil
	}
	stale := !st.Pending() && time.Since(w.polledAt) > w.e.cfg.Interval
	if stale && st.Failure != nil {
		// A watch in back-off, its last poll older than the interval: the
		// first subscriber after a quiet spell gets one fresh attempt
		// rather than the old failure (at most one an interval, as the
		// poll it starts makes the watch fresh again).
		w.notBefore = time.Time{}
	}
	if !w.inflight {
		w.schedule()
	}
	if stale && w.inflight {
		return w.pollDone
	}
	return nil
}

// schedule starts the next poll if it is due, or sets the timer for it.
// It must be called with w.mu held, with no poll in flight.
func (w *watch) schedule() {
	if w.fetcher == nil {
		return // detached: a subscriber with a Fetcher resumes polling
	}
	now := time.Now()
	due := w.polledAt.Add(w.e.cfg.Interval)
	if w.again || w.dirty {
		// a notification: at once, or at the end of the window of the
		// last poll a notification caused, if that is sooner than due
		soon := w.triggered.Add(w.e.cfg.NotifyWindow)
		if soon.Before(now) {
			soon = now
		}
		if soon.Before(due) {
			due = soon
		}
	}
	floor := w.notBefore
	if (w.again || w.dirty) && w.failures > 0 {
		// A notification during back-off is evidence that the upstream
		// may be back: it is worth one poll, at most one an interval.
		soon := w.polledAt.Add(w.e.cfg.Interval)
		if soon.Before(now) {
			soon = now
		}
		if soon.Before(floor) {
			floor = soon
		}
	}
	if due.Before(floor) {
		due = floor
	}
	if due.After(now) {
		w.timer.Reset(due.Sub(now))
		return
	}
	if w.again || w.dirty {
		w.triggered = now
	}
	w.inflight, w.again, w.dirty = true, false, false
	w.pollDone = make(chan struct{})
	go w.poll(w.fetcher, w.state.Load().Snapshot, now, w.pollDone)
}

func (w *watch) unsubscribe() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subs--
	if w.subs == 0 {
		w.e.active.Add(-1)
		w.e.activeBytes.Add(-w.size)
	}
	if w.subs == 0 && !w.gone {
		w.idleSince = time.Now()
		if !w.inflight && !w.again {
			w.timer.Reset(w.idleDeadline().Sub(w.idleSince))
		}
	}
}

func (w *watch) trigger() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone || w.fetcher == nil || w.state.Load().Passthrough {
		return
	}
	w.again = true
	if !w.inflight {
		w.schedule()
	}
}

// notify is Engine.Notify for one watch: one with subscribers (or a poll
// in flight) polls again as soon as it may; an idle one is marked stale. It
// reports whether the watch was in service to be reached.
func (w *watch) notify() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone || w.state.Load().Passthrough {
		return false
	}
	if w.fetcher == nil {
		w.dirty = true // detached: the change is polled for when back in service
		return true
	}
	if w.subs == 0 && !w.inflight {
		w.polledAt = time.Time{} // its next subscriber polls first
		return true
	}
	w.again = true
	if !w.inflight {
		w.schedule()
	}
	return true
}

// idleDeadline is when an idle watch is forgotten. It must be called with
// w.mu held.
func (w *watch) idleDeadline() time.Time {
	return w.idleSince.Add(w.e.cfg.IdleTTL)
}

// expired reports whether a pass-through watch should be probed again,
// which takes a new watch. It must be called with e.mu held.
func (w *watch) expired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state.Load().Passthrough && time.Now().After(w.passUntil)
}

// retire takes w out of service. It must be called with e.mu held.
func (w *watch) retire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gone = true
	w.timer.Stop()
	w.unaccount()
}

func (w *watch) onTimer() {
	w.mu.Lock()
	if w.gone || w.inflight {
		w.mu.Unlock()
		return
	}
	if w.subs > 0 || w.again {
		if !w.state.Load().Passthrough {
			w.schedule()
		}
		w.mu.Unlock()
		return
	}
	if wait := time.Until(w.idleDeadline()); wait > 0 {
		w.timer.Reset(wait)
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()

	// Forget the idle watch, re-checking under both locks in their order.
	w.e.mu.Lock()
	defer w.e.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.subs == 0 && !w.inflight && !w.again && !w.gone && !time.Now().Before(w.idleDeadline()) {
		w.gone = true
		w.unaccount()
		w.e.forget(w)
	}
}

// poll runs one poll and publishes its result.
func (w *watch) poll(f Fetcher, prev *Snapshot, start time.Time, done chan struct{}) {
	ctx, cancel := context.WithTimeout(w.e.ctx, w.e.cfg.PollTimeout)
	snap, err, returned := w.fetchBounded(ctx, f, prev)
	cancel()
	if err == nil && snap == nil {
		err = &UpstreamError{Err: errors.New("fetcher returned no snapshot")}
	}

	w.mu.Lock()
	defer w.mu.Unlock()
	defer close(done)
	// A Fetcher that has not returned still holds the watch's one poll:
	// the next starts when it returns (unstick).
	w.inflight, w.freshPoll = !returned, nil
	w.polledAt = start
	if w.gone {
		return // the engine closed: the poll's end is no news
	}
	end := time.Now()
	var result PollResult
	switch {
	case errors.Is(err, ErrUncacheable):
		result = PollUncacheable
		w.uncacheable(err, end)
	case err != nil:
		result = PollFailed
		w.failed(err)
	default:
		if err := w.overBudget(snap); err != nil {
			result = PollFailed
			w.failed(err)
			break
		}
		result = w.succeeded(snap, prev, end)
	}
	w.lastPoll, w.lastResult = end, result
	if o := w.e.observer; o != nil {
		o.Polled(result, end.Sub(start))
	}
	if returned {
		w.next()
	}
}

// next sets what follows a poll: the next poll, or the idle expiry. It must
// be called with w.mu held, with no poll in flight.
func (w *watch) next() {
	if w.subs > 0 || w.again {
		if !w.state.Load().Passthrough {
			w.schedule()
		}
	} else {
		w.timer.Reset(time.Until(w.idleDeadline()))
	}
}

// pollGrace is how long a Fetcher has, once the poll's context has ended,
// to return on its own before the poll is failed without it.
const pollGrace = 250 * time.Millisecond

// fetchBounded calls f, and returns by the end of ctx (and pollGrace)
// whether f does or not: a Fetcher that ignores its context (a handler
// whose reads have no deadline) must not keep a watch from failing, and so
// from backing off and answering its clients. returned is false when f had
// not returned: its late result is dropped, and the watch starts no other
// poll until it returns.
func (w *watch) fetchBounded(ctx context.Context, f Fetcher, prev *Snapshot) (snap *Snapshot, err error, returned bool) {
	type result struct {
		snap *Snapshot
		err  error
	}
	res := make(chan result, 1)
	go func() {
		s, e := w.fetch(ctx, f, prev)
		res <- result{s, e}
	}()
	select {
	case r := <-res:
		return r.snap, r.err, true
	case <-ctx.Done():
	}
	grace := time.NewTimer(pollGrace)
	defer grace.Stop()
	select {
	case r := <-res:
		return r.snap, r.err, true
	case <-grace.C:
	}
	go func() {
		<-res
		w.unstick()
	}()
	return nil, &UpstreamError{Err: ErrPollTimeout}, false
}

// unstick ends the poll of a Fetcher that returned after its poll was
// failed without it.
func (w *watch) unstick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.inflight = false
	if !w.gone {
		w.next()
	}
}

// fetch calls f, turning a panic into an error so that a bug fails one poll
// rather than the whole server.
func (w *watch) fetch(ctx context.Context, f Fetcher, prev *Snapshot) (snap *Snapshot, err error) {
	defer func() {
		if r := recover(); r != nil {
			w.e.logger().Error("panic during poll", zap.String("watch", w.key.Short()),
				zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			snap, err = nil, &UpstreamError{Err: fmt.Errorf("panic during poll: %v", r)}
		}
	}()
	return f.Fetch(ctx, prev)
}

// uncacheable records a response that cannot be shared: the watch stops
// polling and its subscribers pass their requests through. It must be called
// with w.mu held.
func (w *watch) uncacheable(err error, now time.Time) {
	if w.failures > 0 {
		w.logRecovered()
	}
	w.failures, w.notBefore, w.again = 0, time.Time{}, false
	w.passUntil = now.Add(w.e.cfg.IdleTTL)
	w.publish(&State{Passthrough: true, Since: now}, true)
	if ce := w.e.logger().Check(zap.DebugLevel, "upstream response cannot be shared, passing requests through"); ce != nil {
		ce.Write(zap.String("watch", w.key.Short()), zap.Error(err))
	}
}

// failed records a failed poll and backs off. It must be called with w.mu
// held.
func (w *watch) failed(err error) {
	w.failures++
	var ue *UpstreamError
	var retryAfter time.Duration
	if errors.As(err, &ue) {
		retryAfter = min(ue.RetryAfter, max(MaxRetryAfter, w.e.cfg.MaxBackoff))
	}
	d := w.e.cfg.MaxBackoff
	if shift := min(w.failures, 16); w.e.cfg.Interval <= d>>shift {
		d = w.e.cfg.Interval << shift // no overflow: at most MaxBackoff
	}
	d = d/2 + rand.N(d/2+1) // full jitter on the upper half: never a stampede
	d = max(d, retryAfter, w.e.cfg.Interval)
	w.notBefore = time.Now().Add(d)

	cur := w.state.Load()
	next := *cur
	next.Failure = &Failure{Err: err, RetryAfter: d, Count: w.failures}
	w.publish(&next, cur.Pending())
	if w.failures > 1 {
		return
	}
	// once per transition: the first failure of a run, never per poll
	if errors.Is(err, ErrOverBudget) {
		w.e.logger().Warn("memory budget reached: a representation is not kept, and its clients are refused",
			zap.String("watch", w.key.Short()), zap.String("topic", w.topic), zap.Duration("retry_in", d))
		return
	}
	w.e.logger().Error("upstream poll failing", zap.String("watch", w.key.Short()),
		zap.String("topic", w.topic), zap.Error(err), zap.Duration("retry_in", d))
}

// logRecovered logs the end of a run of failed polls, once per run.
func (w *watch) logRecovered() {
	if f := w.state.Load().Failure; f != nil && errors.Is(f.Err, ErrOverBudget) {
		w.e.logger().Info("memory budget: the representation is kept again", zap.String("watch", w.key.Short()),
			zap.String("topic", w.topic), zap.Int("failed_polls", w.failures))
		return
	}
	w.e.logger().Warn("upstream poll recovered", zap.String("watch", w.key.Short()),
		zap.String("topic", w.topic), zap.Int("failed_polls", w.failures))
}

// succeeded records a successful poll that returned snap, prev being the
// snapshot the poll started from, and returns what the poll found. It must
// be called with w.mu held.
func (w *watch) succeeded(snap, prev *Snapshot, now time.Time) PollResult {
	if w.failures > 0 {
		w.logRecovered()
	}
	w.failures, w.notBefore = 0, time.Time{}
	cur := w.state.Load()
	if cur.Snapshot == nil || cur.Snapshot.ETag != snap.ETag {
		w.publish(&State{Snapshot: snap, Since: now}, true)
		return PollChanged
	}
	w.publish(&State{Snapshot: snap, Since: cur.Since}, false)
	if snap == prev {
		return PollNotModified // the Fetcher's answer to an upstream 304
	}
	return PollUnchanged
}

// publish makes next the current state. If wake is set, next gets a new
// Changed channel and the old one is closed, waking every subscriber;
// otherwise next keeps the current channel. It must be called with w.mu
// held.
func (w *watch) publish(next *State, wake bool) {
	next.Detached = w.fetcher == nil // a poll that ends after Detach keeps it
	cur := w.state.Load()
	w.account(stateSize(next))
	if wake {
		next.changed = make(chan struct{})
		w.state.Store(next)
		close(cur.changed)
		return
	}
	next.changed = cur.changed
	w.state.Store(next)
}

// detach drops the watch's Fetcher if its generation is gen, and wakes its
// subscribers. It reports whether it did.
func (w *watch) detach(gen uint64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone || w.fetcher == nil || w.gen != gen {
		return false
	}
	w.fetcher = nil
	// A watch without a Fetcher cannot poll: a pending notification waits,
	// as dirty, for the watch to be back in service.
	w.dirty = w.dirty || w.again
	w.again = false
	w.timer.Stop()
	next := *w.state.Load()
	w.publish(&next, true) // Detached, as the fetcher is gone
	if w.subs == 0 && !w.inflight {
		w.timer.Reset(time.Until(w.idleDeadline()))
	}
	return true
}

// close ends the watch for Engine.Close.
func (w *watch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gone = true
	w.timer.Stop()
	cur := w.state.Load()
	w.publish(&State{Snapshot: cur.Snapshot, Failure: cur.Failure, Since: cur.Since, Closed: true}, true)
}
