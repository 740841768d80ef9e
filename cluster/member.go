// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// Engine is what a Member needs of the engine whose watches it serves.
type Engine interface {
	// NotifyKey polls the watch of a key now (longpoll.Engine.NotifyKey).
	NotifyKey(k longpoll.Key) bool
	// Notify polls the watches of the topics patterns match
	// (longpoll.Engine.Notify).
	Notify(patterns []string) int
}

// Config is how a Member works.
type Config struct {
	// Interval is the engine's poll interval: a lease lasts three (and 3s
	// at least), so that an instance that dies is replaced within a few
	// intervals. A poll slower than that loses its lease: another instance
	// polls too, and the slow one's write is fenced off.
	Interval time.Duration
	// SnapshotTTL is how long a representation is kept in Redis after it
	// was last written or confirmed: the watches' idle_ttl.
	SnapshotTTL time.Duration
	// OpTimeout bounds every Redis call on a poll's way; past it the
	// instance polls on its own. Default: 500ms.
	OpTimeout time.Duration
	// Logger gets the transitions: Redis lost, Redis back.
	Logger *zap.Logger
	// Alone, if set, is called with true when the member loses Redis and
	// with false when it has it again.
	Alone func(alone bool)
}

// Role is what an instance does for one watch.
type Role int32

// Roles.
const (
	RoleNone    Role = iota // not polled yet
	RolePolls               // this instance holds the lease and polls
	RoleFollows             // another instance polls; this one reads Redis
	RoleAlone               // Redis is unreachable: this instance polls on its own
)

var roleNames = [...]string{"none", "polls", "follows", "alone"}

func (r Role) String() string { return roleNames[r] }

// Member is one instance's part in a namespace: it gives an engine's
// watches Fetchers that poll under the cluster's leases, or read what the
// lease's holder wrote, and wakes the watches when another instance
// announces a change or relays a notification.
type Member struct {
	store  *Store
	rdb    redis.UniversalClient
	engine Engine
	cfgp   atomic.Pointer[Config]
	holder string
	notify string   // the channel of relayed notifications
	keys   sync.Map // key hash → *Fetcher, of this instance's watches
	alone  atomic.Bool
	stop   context.CancelFunc
	done   chan struct{}
}

// Join makes engine's watches members of namespace ns in rdb, and starts
// following its announcements, and the notifications relayed on channel
// notify, until Leave. It does not wait for Redis: an instance that cannot
// reach it polls on its own until it can.
func Join(rdb redis.UniversalClient, ns, notify string, engine Engine, cfg Config) *Member {
	ctx, cancel := context.WithCancel(context.Background())
	m := &Member{
		store: NewStore(rdb, ns), rdb: rdb, engine: engine, notify: notify,
		holder: NewHolder(), stop: cancel, done: make(chan struct{}),
	}
	m.SetConfig(cfg)
	go m.follow(ctx)
	return m
}

// SetConfig makes cfg the member's configuration, for the polls to come.
func (m *Member) SetConfig(cfg Config) {
	if cfg.OpTimeout <= 0 {
		cfg.OpTimeout = 500 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	m.cfgp.Store(&cfg)
}

func (m *Member) cfg() *Config { return m.cfgp.Load() }

// Leave stops following the namespace. The leases this instance holds
// expire (its Fetchers give them back as their watches go idle).
func (m *Member) Leave() {
	m.stop()
	<-m.done
	if m.alone.CompareAndSwap(true, false) && m.cfg().Alone != nil {
		m.cfg().Alone(false) // no longer counted
	}
}

// NotifyChannel is where notifications are relayed to every instance: the
// JSON body of a longpoll_notify request, {"topics": [...]}. An
// application may publish there itself.
func (m *Member) NotifyChannel() string { return m.notify }

// relayed is a notification as the notify channel carries it. From names
// the member that relayed it, which leaves it alone; an application that
// publishes there itself leaves it out.
type relayed struct {
	Topics []string `json:"topics"`
	From   string   `json:"from,omitempty"`
}

// Relay publishes a notification's topics for the other instances of the
// namespace (this one notifies its own engine itself).
func (m *Member) Relay(ctx context.Context, topics []string) error {
	b, err := json.Marshal(relayed{Topics: topics, From: m.holder})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg().OpTimeout)
	defer cancel()
	return m.rdb.Publish(ctx, m.NotifyChannel(), b).Err()
}

// follow receives the namespace's announcements and relayed notifications
// until ctx ends; go-redis resubscribes after a lost connection.
func (m *Member) follow(ctx context.Context) {
	defer close(m.done)
	ps := m.rdb.Subscribe(ctx, m.store.Channel(), m.NotifyChannel())
	defer ps.Close()
	ch := ps.Channel()
	for {
		select {
		case <-ctx.Done():
			return
		case msg, ok := <-ch:
			if !ok {
				return
			}
			m.received(msg)
		}
	}
}

// received acts on one message of the namespace.
func (m *Member) received(msg *redis.Message) {
	if msg.Channel == m.NotifyChannel() {
		var n relayed
		if err := json.Unmarshal([]byte(msg.Payload), &n); err == nil && n.From != m.holder && len(n.Topics) > 0 && len(n.Topics) <= 1000 {
			m.engine.Notify(n.Topics)
		}
		return
	}
	a, ok := ParseAnnouncement(msg.Payload)
	if !ok {
		return
	}
	// The instance that polls the key wrote it: its own announcement is
	// no news to it (a poll for it would cost the upstream one more).
	if f, ok := m.keys.Load(a.KeyHash); ok && f.(*Fetcher).Role() != RolePolls {
		m.engine.NotifyKey(f.(*Fetcher).k)
	}
}

// together and apart record whether Redis answers, logging and reporting
// the transitions only.
func (m *Member) together() {
	if m.alone.CompareAndSwap(true, false) {
		m.cfg().Logger.Warn("cluster: Redis answers again; polling shared with the other instances")
		if m.cfg().Alone != nil {
			m.cfg().Alone(false)
		}
	}
}

func (m *Member) apart(err error) {
	if m.alone.CompareAndSwap(false, true) {
		m.cfg().Logger.Error("cluster: Redis unreachable; this instance polls on its own until it answers", zap.Error(err))
		if m.cfg().Alone != nil {
			m.cfg().Alone(true)
		}
	}
}

// Alone reports whether the member polls on its own, Redis being
// unreachable.
func (m *Member) Alone() bool { return m.alone.Load() }

// Fetcher returns the Fetcher of the watch of k, which polls through inner
// when this instance holds k's lease (or Redis is unreachable), and reads
// the holder's representation otherwise.
func (m *Member) Fetcher(k longpoll.Key, inner longpoll.Fetcher) *Fetcher {
	f := &Fetcher{m: m, k: k, inner: inner}
	m.keys.Store(m.store.KeyHash(k), f)
	return f
}

// Fetcher is a watch's Fetcher in a cluster.
type Fetcher struct {
	m       *Member
	k       longpoll.Key
	inner   longpoll.Fetcher
	role    atomic.Int32
	written atomic.Value // string: "<fence> <etag>" this instance stored last
	fence   atomic.Int64 // the fence of the lease this instance took last
	fetched atomic.Int64 // when Fetch was last called, Unix nanoseconds
}

// Role says what this instance did for the watch at its last poll.
func (f *Fetcher) Role() Role { return Role(f.role.Load()) }

func (f *Fetcher) leaseTTL() time.Duration { return max(3*f.m.cfg().Interval, 3*time.Second) }

// Fetch implements longpoll.Fetcher.
func (f *Fetcher) Fetch(ctx context.Context, route any, prev *longpoll.Snapshot) (*longpoll.Snapshot, error) {
	m := f.m
	f.fetched.Store(time.Now().UnixNano())
	opCtx, cancel := context.WithTimeout(ctx, m.cfg().OpTimeout)
	fence, err := m.store.Acquire(opCtx, f.k, m.holder, f.leaseTTL(), 2*m.cfg().SnapshotTTL)
	cancel()
	if err != nil && ctx.Err() != nil {
		// the poll was called off (the engine closes): no news of Redis
		return nil, &longpoll.UpstreamError{Err: ctx.Err()}
	}
	if err != nil {
		m.apart(err)
		f.role.Store(int32(RoleAlone))
		f.written.Store("")
		return f.inner.Fetch(ctx, route, prev)
	}
	m.together()
	if fence > 0 {
		f.role.Store(int32(RolePolls))
		f.fence.Store(fence)
		snap, err := f.inner.Fetch(ctx, route, prev)
		if ctx.Err() == nil {
			// a poll called off (the engine closes) found nothing to say
			f.share(fence, snap, err)
		}
		return snap, err
	}
	f.role.Store(int32(RoleFollows))
	f.written.Store("")
	opCtx, cancel = context.WithTimeout(ctx, m.cfg().OpTimeout)
	snap, err := m.store.Read(opCtx, f.k, prev)
	cancel()
	var ue *longpoll.UpstreamError
	switch {
	case err == nil, errors.As(err, &ue), errors.Is(err, longpoll.ErrUncacheable):
		return snap, err
	case errors.Is(err, ErrNoSnapshot):
		// The holder has found nothing yet (its first poll is under way):
		// this once, poll as well, which costs the upstream one request.
		return f.inner.Fetch(ctx, route, prev)
	case ctx.Err() != nil:
		return nil, &longpoll.UpstreamError{Err: ctx.Err()}
	}
	m.apart(err)
	f.role.Store(int32(RoleAlone))
	f.written.Store("")
	return f.inner.Fetch(ctx, route, prev)
}

// share writes what the holder's poll found for the other instances: a new
// representation, a failure, or a response that cannot be shared; an
// unchanged one only has its expiry moved.
func (f *Fetcher) share(fence int64, snap *longpoll.Snapshot, err error) {
	m := f.m
	ctx, cancel := context.WithTimeout(context.Background(), m.cfg().OpTimeout)
	defer cancel()
	var werr error
	switch {
	case err != nil:
		var ue *longpoll.UpstreamError
		if !errors.As(err, &ue) && !errors.Is(err, longpoll.ErrUncacheable) {
			return // the route is not ready, or the like: nothing to say
		}
		f.written.Store("")
		werr = m.store.Mark(ctx, f.k, m.holder, fence, err, m.cfg().SnapshotTTL)
	case snap.Private:
		return
	case f.written.Load() == writtenAs(fence, snap.ETag):
		// stored by this lease already: only its expiry moves (under an
		// older lease, another holder may have written since)
		werr = m.store.Touch(ctx, f.k, m.cfg().SnapshotTTL)
	default:
		if werr = m.store.Write(ctx, f.k, m.holder, fence, snap, m.cfg().SnapshotTTL); werr == nil {
			f.written.Store(writtenAs(fence, snap.ETag))
		}
	}
	switch {
	case werr == nil:
		m.together()
	case errors.Is(werr, ErrFenced):
		f.written.Store("") // another instance took over: it writes now
	default:
		m.apart(werr)
	}
}

// writtenAs is what Fetcher.written holds for a representation stored
// under a lease.
func writtenAs(fence int64, etag string) string { return strconv.FormatInt(fence, 10) + " " + etag }

// Idle implements longpoll.Idler: a watch with no subscriber left gives
// its lease back, so that an instance whose clients still wait takes it at
// once rather than when it expires. Not at the instant: a change answers
// every held request of a watch at once, and its clients come straight
// back; the lease is given back only if the watch has not polled for two
// intervals since (or at once, for a watch dropped).
func (f *Fetcher) Idle(gone bool) {
	if gone {
		f.release()
		f.m.keys.CompareAndDelete(f.m.store.KeyHash(f.k), f)
		return
	}
	idled := time.Now().UnixNano()
	time.AfterFunc(2*f.m.cfg().Interval, func() {
		if f.fetched.Load() < idled {
			f.release()
		}
	})
}

// release gives the lease on the watch's key back, if this instance has it.
func (f *Fetcher) release() {
	ctx, cancel := context.WithTimeout(context.Background(), f.m.cfg().OpTimeout)
	defer cancel()
	_ = f.m.store.Release(ctx, f.k, f.m.holder, f.fence.Load())
	f.written.Store("")
	f.role.CompareAndSwap(int32(RolePolls), int32(RoleNone)) // announcements wake it again
}
