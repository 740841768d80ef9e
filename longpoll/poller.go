// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"time"

	"go.uber.org/zap"
)

// poller is a watch's polling: its Fetcher and its schedule. Its fields are
// guarded by watch.mu (see the invariants on watch).
type poller struct {
	fetcher    Fetcher
	timer      *time.Timer   // the next poll
	inflight   bool          // a poll is under way (or a Fetcher that outlived its poll has not returned)
	again      bool          // a notification: poll again as soon as allowed
	pollDone   chan struct{} // closed when the poll in flight ends
	freshPoll  chan struct{} // pollDone of a poll started because the data was stale
	polledAt   time.Time     // start of the last completed poll; zero: stale, poll first
	lastPoll   time.Time     // end of the last completed poll, for WatchInfo
	lastResult PollResult
	triggered  time.Time // start of the last poll caused by a notification
	notBefore  time.Time // back-off: no poll before this
	failures   int       // polls failed in a row
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
	stale := !st.Pending() && time.Since(w.polledAt) > w.e.config().Interval
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
		return // SetFetcher starts the first poll
	}
	cfg := w.e.config()
	now := time.Now()
	due := w.polledAt.Add(cfg.Interval)
	if w.again {
		// a notification: at once, or at the end of the window of the
		// last poll a notification caused, if that is sooner than due
		soon := w.triggered.Add(cfg.NotifyWindow)
		if soon.Before(now) {
			soon = now
		}
		if soon.Before(due) {
			due = soon
		}
	}
	floor := w.notBefore
	if w.again && w.failures > 0 {
		// A notification during back-off is evidence that the upstream
		// may be back: it is worth one poll, at most one an interval.
		soon := w.polledAt.Add(cfg.Interval)
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
	if w.again {
		w.triggered = now
	}
	w.inflight, w.again = true, false
	w.pollDone = make(chan struct{})
	go w.poll(w.fetcher, w.state.Load().Snapshot, now, w.pollDone)
}

// onPollTimer starts a poll that has come due.
func (w *watch) onPollTimer() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone || w.inflight || w.state.Load().Passthrough {
		return
	}
	if w.subs > 0 || w.again {
		w.schedule()
	}
}

// poll runs one poll, through the newest open route that is ready (with a
// nil route when none is open: an engine used without routes), and
// publishes its result.
func (w *watch) poll(f Fetcher, prev *Snapshot, start time.Time, done chan struct{}) {
	ctx, cancel := context.WithTimeout(w.e.shardOf(w.key).ctx, w.e.config().PollTimeout)
	var snap *Snapshot
	var err error
	returned := true
	routes := w.e.openRoutes()
	if len(routes) == 0 {
		snap, err, returned = w.fetchBounded(ctx, f, nil, prev) // an engine used without routes
	}
	for _, r := range routes {
		snap, err, returned = w.fetchBounded(ctx, f, r.value, prev)
		if !errors.Is(err, ErrRouteNotReady) {
			break
		}
	}
	cancel()
	if errors.Is(err, ErrRouteNotReady) {
		err = &UpstreamError{Err: err}
	}
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
	switch {
	case w.subs > 0 || w.again:
		if !w.state.Load().Passthrough {
			w.schedule()
		}
	default:
		w.idleTimer.Reset(time.Until(w.idleSince.Add(w.e.config().IdleTTL)))
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
func (w *watch) fetchBounded(ctx context.Context, f Fetcher, route any, prev *Snapshot) (snap *Snapshot, err error, returned bool) {
	type result struct {
		snap *Snapshot
		err  error
	}
	res := make(chan result, 1)
	go func() {
		s, e := w.fetch(ctx, f, route, prev)
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
func (w *watch) fetch(ctx context.Context, f Fetcher, route any, prev *Snapshot) (snap *Snapshot, err error) {
	defer func() {
		if r := recover(); r != nil {
			w.e.logger().Error("panic during poll", zap.String("watch", w.key.Short()),
				zap.Any("panic", r), zap.ByteString("stack", debug.Stack()))
			snap, err = nil, &UpstreamError{Err: fmt.Errorf("panic during poll: %v", r)}
		}
	}()
	return f.Fetch(ctx, route, prev)
}

// uncacheable records a response that cannot be shared: the watch stops
// polling and its subscribers pass their requests through. It must be called
// with w.mu held.
func (w *watch) uncacheable(err error, now time.Time) {
	if w.failures > 0 {
		w.logRecovered()
	}
	w.failures, w.notBefore, w.again = 0, time.Time{}, false
	w.passUntil = now.Add(w.e.config().IdleTTL)
	w.publish(&State{Passthrough: true, Since: now}, true)
	if ce := w.e.logger().Check(zap.DebugLevel, "upstream response cannot be shared, passing requests through"); ce != nil {
		ce.Write(zap.String("watch", w.key.Short()), zap.Error(err))
	}
}

// failed records a failed poll and backs off. It must be called with w.mu
// held.
func (w *watch) failed(err error) {
	cfg := w.e.config()
	w.failures++
	var ue *UpstreamError
	var retryAfter time.Duration
	if errors.As(err, &ue) {
		retryAfter = min(ue.RetryAfter, max(MaxRetryAfter, cfg.MaxBackoff))
	}
	d := cfg.MaxBackoff
	if shift := min(w.failures, 16); cfg.Interval <= d>>shift {
		d = cfg.Interval << shift // no overflow: at most MaxBackoff
	}
	d = d/2 + rand.N(d/2+1) // full jitter on the upper half: never a stampede
	d = max(d, retryAfter, cfg.Interval)
	w.notBefore = time.Now().Add(d)

	cur := w.state.Load()
	next := *cur
	next.Failure = &Failure{Err: err, RetryAfter: d, Count: w.failures}
	// Subscribers are woken when a run of failures starts (a stream tells
	// its client; a held request waits on), not at every failed poll.
	w.publish(&next, cur.Pending() || w.failures == 1)
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
		if !w.ignorable(cur.Snapshot, snap) {
			next := &State{Snapshot: snap, Since: now}
			if cur.Snapshot != nil {
				next.Previous = cur.Snapshot.ETag
			}
			w.publish(next, true)
			return PollChanged
		}
		// a change in ignored fields only: the snapshot stays, its body
		// and ETag with it
		w.publish(&State{Snapshot: cur.Snapshot, Previous: cur.Previous, Since: cur.Since}, cur.Failure != nil)
		return PollUnchanged
	}
	// The same version: only a recovery wakes the subscribers, for those
	// that were told of the failure (a stream that had no version yet
	// sends the current one, and is told of the next run of failures).
	// The snapshot held stays if the new one says nothing else (an
	// upstream without validators sends the same answer in full, a
	// cluster's follower reads it again): what was derived from it, its
	// compressed variants, stays with it.
	keep := snap
	if snap != cur.Snapshot && sameAnswer(cur.Snapshot, snap) {
		keep = cur.Snapshot
	}
	w.publish(&State{Snapshot: keep, Previous: cur.Previous, Since: cur.Since}, cur.Failure != nil)
	if snap == prev {
		return PollNotModified // the Fetcher's answer to an upstream 304
	}
	return PollUnchanged
}

// sameAnswer reports whether two snapshots of one ETag are the same in
// everything a client or the next poll sees: headers, validators, kind,
// Vary (the ETag covers the status, the content headers and the body).
func sameAnswer(a, b *Snapshot) bool {
	return a.ETag == b.ETag && a.Status == b.Status && a.ErrorStatus == b.ErrorStatus &&
		a.Head == b.Head && a.Private == b.Private &&
		a.UpstreamETag == b.UpstreamETag && a.LastModified == b.LastModified &&
		maps.EqualFunc(a.Header, b.Header, slices.Equal) &&
		slices.EqualFunc(a.Vary, b.Vary, func(x, y VaryField) bool {
			return x.Name == y.Name && x.Hashed == y.Hashed && slices.Equal(x.Values, y.Values)
		})
}

// ignorable reports whether snap differs from cur only in the fields that
// Config.Ignore names. A body that is not JSON is compared whole, and
// logged once per watch. It must be called with w.mu held.
func (w *watch) ignorable(cur, snap *Snapshot) bool {
	ig := w.e.config().Ignore
	if ig == nil || cur == nil {
		return false
	}
	same, isJSON := ig.same(cur, snap)
	if !isJSON && !w.notJSON {
		w.notJSON = true
		w.e.logger().Info("ignore: a representation is not JSON, so it is compared whole",
			zap.String("watch", w.key.Short()), zap.String("topic", w.topic))
	}
	return same
}

// publish makes next the current state. If wake is set, next gets a new
// Changed channel and the old one is closed, waking every subscriber;
// otherwise next keeps the current channel. It must be called with w.mu
// held.
func (w *watch) publish(next *State, wake bool) {
	cur := w.state.Load()
	if next.Snapshot != nil {
		next.Snapshot.derived.owner.Store(w) // its derived values count in w's size
	}
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
