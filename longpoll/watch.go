// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"sync"
	"sync/atomic"
	"time"
)

// watch holds one key's representation for its subscribers, and polls the
// upstream for them (poller.go).
//
// Invariants, with mu held (lock order: the shard's mu, then watch.mu):
//   - subs counts the open subscriptions. Engine.active counts the watches
//     with subs > 0, and Engine.activeBytes their size.
//   - At most one poll is in flight (inflight). A poll starts only from
//     schedule, with none in flight: on a first subscriber, a notification,
//     the poll timer, the end of the previous poll, or SetFetcher.
//   - A watch without a Fetcher does not poll: its subscribers wait for the
//     first result, which SetFetcher starts.
//   - The poll timer runs only while a poll is due (subscribers, or a
//     notification not yet polled for) and none is in flight; the idle
//     timer only while there is no subscriber and no poll in flight.
//   - gone is set once, when the watch leaves the engine's maps (idle
//     expiry, eviction, a pass-through probe, Close). A gone watch
//     schedules nothing and publishes nothing more, Close's final state
//     aside.
//   - state is replaced, never changed, by publish; its Changed channel is
//     closed when a replacement matters to subscribers.
//   - size is what the watch counts in Engine.bytes (memory.go).
type watch struct {
	e     *Engine
	key   Key
	topic string
	state atomic.Pointer[State]

	mu        sync.Mutex
	subs      int
	streams   int         // of subs, the streams (Subscription.Stream)
	idleSince time.Time   // when the last subscriber left
	idleTimer *time.Timer // forgets the watch idle_ttl after its last subscriber
	passUntil time.Time   // a pass-through watch is probed again after this
	gone      bool
	size      int64     // bytes counted against Config.MaxMemory (memory.go)
	spin      spinCheck // requests that named no version (spin.go)
	notJSON   bool      // logged once: Config.Ignore met a body that is not JSON
	poller
}

func newWatch(e *Engine, key Key, topic string) *watch {
	w := &watch{e: e, key: key, topic: topic}
	w.state.Store(&State{changed: make(chan struct{})})
	w.timer = time.AfterFunc(time.Hour, w.onPollTimer)
	w.timer.Stop()
	w.idleTimer = time.AfterFunc(time.Hour, w.onIdleTimer)
	w.idleTimer.Stop()
	w.account(watchOverhead)
	return w
}

// subscribe adds a subscriber; see subscribeLocked.
func (w *watch) subscribe(maxActive int, taken bool) (*Subscription, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.subscribeLocked(maxActive, taken)
}

// join subscribes to a watch found in its shard, with the shard's lock
// held shared. It returns nil and no error for a pass-through watch due to
// be probed again, which takes a new watch (the shard's lock held alone),
// and ErrTooManyWatches if it is idle and maxActive watches are active.
func (w *watch) join(maxActive int) (*Subscription, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.state.Load().Passthrough && time.Now().After(w.passUntil) {
		return nil, nil
	}
	return w.subscribeLocked(maxActive, false)
}

// subscribeLocked adds a subscriber. The first one makes the watch active:
// it takes one of the maxActive places (0: no cap), unless the caller has
// taken it already (taken), or fails with ErrTooManyWatches. It must be
// called with w.mu held.
func (w *watch) subscribeLocked(maxActive int, taken bool) (*Subscription, error) {
	if w.subs == 0 && !taken && !w.e.takeActive(maxActive) {
		return nil, ErrTooManyWatches
	}
	w.subs++
	sub := &Subscription{w: w}
	if w.subs == 1 {
		w.e.activeBytes.Add(w.size)
		w.idleSince = time.Time{}
		w.idleTimer.Stop()
		w.freshPoll = w.activate()
	}
	// Every subscriber that arrives while the poll that freshens stale data
	// is under way waits for it, not only the one that started it.
	sub.await = w.freshPoll
	return sub, nil
}

func (w *watch) unsubscribe() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.subs--
	if w.subs > 0 {
		return
	}
	w.idled(false)
	w.e.active.Add(-1)
	w.e.activeBytes.Add(-w.size)
	if !w.gone {
		w.idleSince = time.Now()
		if !w.inflight {
			w.timer.Stop() // nothing due: no subscriber (a notification polls anyway)
			if w.again {
				w.schedule()
			} else {
				w.idleTimer.Reset(w.e.config().IdleTTL)
			}
		}
	}
}

// setFetcher gives a watch its Fetcher, if it has none, and starts polling
// for its subscribers.
func (w *watch) setFetcher(f Fetcher) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fetcher != nil || w.gone {
		return
	}
	w.fetcher = f
	if (w.subs > 0 || w.again) && !w.inflight && !w.state.Load().Passthrough {
		w.schedule()
	}
}

func (w *watch) trigger() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone || w.state.Load().Passthrough {
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

// expired reports whether a pass-through watch should be probed again,
// which takes a new watch. It must be called with its shard's mu held.
func (w *watch) expired() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state.Load().Passthrough && time.Now().After(w.passUntil)
}

// retire takes w out of service. It must be called with its shard's mu
// held.
func (w *watch) retire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.leave()
}

// leave marks w gone and stops its timers. It must be called with its
// shard's mu and
// w.mu held, and the caller removes w from the engine's maps.
func (w *watch) leave() {
	if !w.gone {
		w.idled(true)
	}
	w.gone = true
	w.timer.Stop()
	w.idleTimer.Stop()
	w.unaccount()
}

// idled tells the watch's Fetcher, if it is an Idler, that the watch has
// no subscriber left, or is gone; on a goroutine of its own, never under
// the watch's lock. It must be called with w.mu held.
func (w *watch) idled(gone bool) {
	if i, ok := w.fetcher.(Idler); ok {
		go i.Idle(gone)
	}
}

// onIdleTimer forgets the watch idle_ttl after its last subscriber left,
// re-checking under both locks in their order.
func (w *watch) onIdleTimer() {
	sh := w.e.shardOf(w.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.gone || w.subs > 0 || w.inflight || w.again {
		return
	}
	if wait := time.Until(w.idleSince.Add(w.e.config().IdleTTL)); wait > 0 {
		w.idleTimer.Reset(wait) // idle_ttl was raised meanwhile
		return
	}
	w.leave()
	w.e.forget(sh, w)
}

// close ends the watch for Engine.Close.
func (w *watch) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gone = true
	w.timer.Stop()
	w.idleTimer.Stop()
	cur := w.state.Load()
	w.publish(&State{Snapshot: cur.Snapshot, Failure: cur.Failure, Previous: cur.Previous, Since: cur.Since, Closed: true}, true)
}
