// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
)

// Fetcher performs one poll of the upstream for a watch.
//
// Fetch returns the representation as it is now, polled through route (the
// value of the Route the poll goes through). prev is the watch's current
// snapshot (nil before the first success): a Fetcher may make its request
// conditional on prev's upstream validators and return prev itself when the
// upstream answers 304 Not Modified. Errors are *UpstreamError for a failed
// poll, wrap ErrUncacheable for a response that cannot be shared, or are
// ErrRouteNotReady for a route that cannot take polls yet. Fetch should
// return when ctx ends; the engine fails the poll without it if it does not.
type Fetcher interface {
	Fetch(ctx context.Context, route any, prev *Snapshot) (*Snapshot, error)
}

// An Idler is a Fetcher that is told when its watch has no subscriber left
// (gone false: the watch is kept for idle_ttl, and may get subscribers
// again) and when the watch is dropped (gone true: the Fetcher is not used
// again). A cluster member gives back its lease on the key then. Idle is
// called on a goroutine of its own, outside the engine's locks.
type Idler interface {
	Idle(gone bool)
}

// FetcherFunc adapts a function to the Fetcher interface.
type FetcherFunc func(ctx context.Context, route any, prev *Snapshot) (*Snapshot, error)

// Fetch calls f.
func (f FetcherFunc) Fetch(ctx context.Context, route any, prev *Snapshot) (*Snapshot, error) {
	return f(ctx, route, prev)
}

// Engine keeps the watches, one per key. Create it with New.
//
// The watches are split by key into shards, each with its own lock, so that
// requests joining and leaving watches of different keys do not wait for
// each other (shards.go).
//
// Lock order: a shard's mu (shared or alone), then watch.mu, then
// topicsMu; routesMu is taken alone, by routes opening and closing only.
// The Fetcher, an Idler and Join's newFetcher are never called with any of
// them held; an Observer and the logger are called with a watch's mu held,
// and must return quickly.
type Engine struct {
	cfg      atomic.Pointer[Config]
	logger   func() *zap.Logger
	observer Observer
	active   atomic.Int64 // watches with subscribers
	count    atomic.Int64 // watches in the shards' maps
	// bytes is what the watches hold, activeBytes what those with
	// subscribers hold (memory.go); evicting is set during an eviction run
	bytes, activeBytes atomic.Int64
	evicting           atomic.Bool
	closed             atomic.Bool
	ctx                context.Context // ends at Close; parent of the shards' contexts
	cancel             context.CancelFunc

	shards [shardCount]shard

	topicsMu sync.Mutex
	topics   map[string]map[*watch]struct{} // watches by topic, for Notify

	routesMu sync.Mutex               // serialises changes to routes
	routes   atomic.Pointer[[]*Route] // open, newest first (route.go)
}

func nopLogger() *zap.Logger { return nop }

var nop = zap.NewNop()

// Option sets an optional collaborator of the engine.
type Option func(*Engine)

// WithLogger makes the engine log through l (default: no logging). The
// engine logs lifecycle at info, and an upstream that starts failing (error)
// or recovers (warn) once per transition per watch, never per poll or per
// subscriber; watches are named by Key.Short, never by their key.
func WithLogger(l *zap.Logger) Option {
	return func(e *Engine) { e.logger = func() *zap.Logger { return l } }
}

// WithLoggerFunc makes the engine log through the logger f returns when
// each line is logged, for an engine that outlives the configuration whose
// logging it should follow. f must be safe for concurrent use and return
// quickly; it is called only to log.
func WithLoggerFunc(f func() *zap.Logger) Option {
	return func(e *Engine) { e.logger = f }
}

// New returns a running engine. It starts nothing until the first Subscribe.
func New(cfg Config, opts ...Option) (*Engine, error) {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("longpoll config: %w", err)
	}
	e := &Engine{logger: nopLogger, topics: make(map[string]map[*watch]struct{})}
	for i := range e.shards {
		e.shards[i].watches = make(map[Key]*watch)
	}
	e.cfg.Store(&cfg)
	for _, o := range opts {
		o(e)
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	for i := range e.shards {
		e.shards[i].ctx, e.shards[i].cancel = context.WithCancel(e.ctx)
	}
	return e, nil
}

// Config returns the engine's configuration, defaults applied.
func (e *Engine) Config() Config { return *e.cfg.Load() }

// config is the configuration in force: watches read it at each use, so
// that SetConfig applies to them from then on.
func (e *Engine) config() *Config { return e.cfg.Load() }

// SetConfig changes the engine's configuration for everything it does from
// now on: the next poll's interval and timeout, the next idle expiry, the
// caps of the next subscription. Watches, subscribers and their state are
// kept.
func (e *Engine) SetConfig(cfg Config) error {
	cfg.applyDefaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("longpoll config: %w", err)
	}
	e.cfg.Store(&cfg)
	e.kickEviction() // a smaller budget
	return nil
}

// Subscribe joins the watch for key, creating it if there is none, in
// topic: the name under which Notify reaches it (for an HTTP resource,
// typically its path; many keys, one per user say, may share a topic). The
// caller must Close the subscription. A new watch has no Fetcher: the
// subscription's NeedsFetcher says so, and SetFetcher gives it one, outside
// the engine's locks; Join does both.
func (e *Engine) Subscribe(key Key, topic string) (*Subscription, error) {
	sh := e.shardOf(key)
	// Joining a watch that exists (most requests) takes its shard's lock
	// shared: requests that fall in one shard wait only on their watch.
	sh.mu.RLock()
	closed := sh.closed
	var sub *Subscription
	var err error
	if w := sh.watches[key]; w != nil && !closed {
		sub, err = w.join(e.config().MaxActive)
	}
	sh.mu.RUnlock()
	switch {
	case closed:
		return nil, ErrClosed
	case sub != nil || err != nil:
		return sub, err
	}
	return e.subscribeNew(sh, key, topic)
}

// subscribeNew is Subscribe for a key whose watch must be made, or
// replaced by a new one: under its shard's lock, held alone.
func (e *Engine) subscribeNew(sh *shard, key Key, topic string) (*Subscription, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed {
		return nil, ErrClosed
	}
	w := sh.watches[key]
	if w != nil && w.expired() {
		w.retire()
		e.forget(sh, w)
		w = nil
	}
	max := e.config().MaxActive
	if w != nil {
		return w.subscribe(max, false)
	}
	// The place among max_watches is taken before the watch is made: a
	// watch refused one is never made.
	if !e.takeActive(max) {
		return nil, ErrTooManyWatches
	}
	w = newWatch(e, key, topic)
	sh.watches[key] = w
	e.count.Add(1)
	e.topicsMu.Lock()
	set := e.topics[topic]
	if set == nil {
		set = make(map[*watch]struct{})
		e.topics[topic] = set
	}
	set[w] = struct{}{}
	e.topicsMu.Unlock()
	return w.subscribe(max, true)
}

// Join is Subscribe, then SetFetcher with newFetcher() if the watch has no
// Fetcher yet. newFetcher is called outside the engine's locks, and only
// for a watch that needs one.
func (e *Engine) Join(key Key, topic string, newFetcher func() Fetcher) (*Subscription, error) {
	sub, err := e.Subscribe(key, topic)
	if err != nil {
		return nil, err
	}
	if sub.NeedsFetcher() {
		sub.SetFetcher(newFetcher())
	}
	return sub, nil
}

// takeActive counts one more watch with subscribers, unless max (0: no
// cap) are counted already. Joins of different watches take places at
// once, from different shards: the count is the only arbiter.
func (e *Engine) takeActive(max int) bool {
	for {
		n := e.active.Load()
		if max > 0 && n >= int64(max) {
			return false
		}
		if e.active.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// list returns the engine's watches, for visiting them one at a time
// without the shards' locks.
func (e *Engine) list() []*watch {
	ws := make([]*watch, 0, e.count.Load())
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.RLock()
		for _, w := range sh.watches {
			ws = append(ws, w)
		}
		sh.mu.RUnlock()
	}
	return ws
}

// Len returns the number of watches the engine keeps, polling or idle.
func (e *Engine) Len() int { return int(e.count.Load()) }

// Close stops every watch and wakes every subscriber with a final state
// whose Closed field is set. It does not wait for polls in flight: their
// context is cancelled. It is idempotent.
func (e *Engine) Close() error {
	if !e.closed.CompareAndSwap(false, true) {
		return nil
	}
	var ws []*watch
	for i := range e.shards {
		sh := &e.shards[i]
		sh.mu.Lock()
		sh.closed = true
		for _, w := range sh.watches {
			ws = append(ws, w)
		}
		sh.watches = nil
		sh.mu.Unlock()
		defer sh.cancel()
	}
	e.count.Store(0)
	e.topicsMu.Lock()
	e.topics = nil
	e.topicsMu.Unlock()

	// Close the watches first: a poll cancelled below must find its watch
	// gone, not publish its cancellation as an upstream failure.
	for _, w := range ws {
		w.close()
	}
	e.cancel()
	e.logger().Info("longpoll engine closed", zap.Int("watches", len(ws)))
	return nil
}

// forget removes w from the engine. It must be called with sh.mu held, sh
// being w's shard.
func (e *Engine) forget(sh *shard, w *watch) {
	if sh.watches[w.key] == w {
		delete(sh.watches, w.key)
		e.count.Add(-1)
	}
	e.topicsMu.Lock()
	if set := e.topics[w.topic]; set != nil {
		delete(set, w)
		if len(set) == 0 {
			delete(e.topics, w.topic)
		}
	}
	e.topicsMu.Unlock()
}

// Notify tells the engine that the resources of some topics may have
// changed. Each pattern is an exact topic, or a prefix followed by "*"
// ("/orders/*" matches "/orders/42"). A matching watch with subscribers polls
// at once (or right after the poll in flight: a burst of notifications causes
// one poll, never two in flight); an idle one is marked stale, so that it
// polls before its next subscriber is answered. A notification never
// publishes anything itself: the poll decides the new representation of each
// key. It returns the number of watches reached.
func (e *Engine) Notify(patterns []string) int {
	ws := e.matching(patterns)
	n := 0
	for w := range ws {
		if w.notify() {
			n++
		}
	}
	return n
}

// NotifyKey is Notify for the watch of one key: it polls as soon as it may
// if it has subscribers, or is marked stale. It reports whether there was
// such a watch, in service.
func (e *Engine) NotifyKey(k Key) bool {
	sh := e.shardOf(k)
	sh.mu.RLock()
	w := sh.watches[k]
	sh.mu.RUnlock()
	return w != nil && w.notify()
}

// matching returns the watches of the topics that patterns match.
func (e *Engine) matching(patterns []string) map[*watch]struct{} {
	e.topicsMu.Lock()
	defer e.topicsMu.Unlock()
	if e.topics == nil {
		return nil // closed
	}
	ws := make(map[*watch]struct{}) // a watch matched twice counts once
	for _, p := range patterns {
		if prefix, ok := strings.CutSuffix(p, "*"); ok {
			for topic, set := range e.topics {
				if strings.HasPrefix(topic, prefix) {
					maps.Copy(ws, set)
				}
			}
			continue
		}
		maps.Copy(ws, e.topics[p])
	}
	return ws
}
