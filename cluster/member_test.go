// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package cluster_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-longpoll/caddy-longpoll/cluster"
	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// upstream is a resource that every instance polls: it counts the polls.
type upstream struct {
	version, polls atomic.Int64
}

func (u *upstream) Fetch(ctx context.Context, _ any, _ *longpoll.Snapshot) (*longpoll.Snapshot, error) {
	u.polls.Add(1)
	body := fmt.Sprintf(`{"version": %d}`, u.version.Load())
	return longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"application/json"}}, []byte(body), nil)
}

const interval = 100 * time.Millisecond

// instance is an engine and its member, as one Caddy would have.
type instance struct {
	e *longpoll.Engine
	m *cluster.Member
}

func newInstance(t *testing.T, rdb redis.UniversalClient, ns string) *instance {
	t.Helper()
	e, err := longpoll.New(longpoll.Config{Interval: interval, PollTimeout: 2 * time.Second, IdleTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	m := cluster.Join(rdb, ns, "longpoll:"+ns+":notify", e, cluster.Config{Interval: interval, SnapshotTTL: time.Minute})
	t.Cleanup(func() { m.Leave(); _ = e.Close() })
	return &instance{e: e, m: m}
}

// join subscribes to k on in, polling up, and waits for its first version.
func (in *instance) join(t *testing.T, k longpoll.Key, up *upstream) (*longpoll.Subscription, *cluster.Fetcher) {
	t.Helper()
	var f *cluster.Fetcher
	sub, err := in.e.Join(k, "/orders", func() longpoll.Fetcher { f = in.m.Fetcher(k, up); return f })
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := sub.Fresh(ctx); err != nil {
		t.Fatal(err)
	}
	return sub, f
}

// waitVersion waits until sub's state has version v, within d.
func waitVersion(t *testing.T, sub *longpoll.Subscription, v int64, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	want := fmt.Sprintf(`{"version": %d}`, v)
	deadline := time.After(d)
	for {
		st := sub.State()
		if st.Snapshot != nil && string(st.Snapshot.Body) == want {
			return time.Since(start)
		}
		select {
		case <-st.Changed():
		case <-deadline:
			t.Fatalf("version %d not seen within %v (state %+v)", v, d, st)
		}
	}
}

func redisClient(t *testing.T, mr *miniredis.Miniredis) *redis.Client {
	t.Helper()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// Three instances with clients on one key poll the upstream once an
// interval in all, not three times; a change reaches every instance's
// clients; when the polling instance's clients leave, another takes over.
func TestMembersShareOnePoller(t *testing.T) {
	mr := miniredis.RunT(t)
	up := &upstream{}
	up.version.Store(1)
	k := longpoll.KeyOf("GET", "/orders")
	var subs []*longpoll.Subscription
	var fetchers []*cluster.Fetcher
	for range 3 {
		in := newInstance(t, redisClient(t, mr), "ns")
		sub, f := in.join(t, k, up)
		subs, fetchers = append(subs, sub), append(fetchers, f)
	}
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	time.Sleep(200 * time.Millisecond) // past the first polls, which may overlap
	before := up.polls.Load()
	const run = 2 * time.Second
	time.Sleep(run)
	polls := up.polls.Load() - before
	t.Logf("3 instances, %v at interval %v: %d upstream polls", run, interval, polls)
	if limit := int64(run/interval) + 3; polls > limit {
		t.Errorf("%d upstream polls in %v, want about one an interval in all (at most %d)", polls, run, limit)
	}
	roles := map[cluster.Role]int{}
	for _, f := range fetchers {
		roles[f.Role()]++
	}
	if roles[cluster.RolePolls] != 1 || roles[cluster.RoleFollows] != 2 {
		t.Errorf("roles %v, want one instance polling and two following", roles)
	}

	up.version.Store(2)
	for i, sub := range subs {
		if d := waitVersion(t, sub, 2, 2*time.Second); d > interval+500*time.Millisecond {
			t.Errorf("instance %d saw the change after %v, want within an interval and a margin", i, d)
		}
	}

	// The poller's clients leave: another instance takes the key over.
	var poller int
	for i, f := range fetchers {
		if f.Role() == cluster.RolePolls {
			poller = i
		}
	}
	subs[poller].Close()
	up.version.Store(3)
	for i, sub := range subs {
		if i != poller {
			waitVersion(t, sub, 3, 5*time.Second)
		}
	}
	next := -1
	for i, f := range fetchers {
		if i != poller && f.Role() == cluster.RolePolls {
			next = i
		}
	}
	if next < 0 {
		t.Error("no instance took the key over after the poller's clients left")
	}
}

// Without Redis every instance polls on its own and its clients still see
// changes; when Redis is back, they share again.
func TestMembersWithoutRedis(t *testing.T) {
	mr := miniredis.RunT(t)
	up := &upstream{}
	up.version.Store(1)
	k := longpoll.KeyOf("GET", "/orders")
	var alone atomic.Int64
	var ins []*instance
	var subs []*longpoll.Subscription
	var mu sync.Mutex
	for range 2 {
		rdb := redisClient(t, mr)
		e, _ := longpoll.New(longpoll.Config{Interval: interval, PollTimeout: 2 * time.Second, IdleTTL: time.Minute})
		m := cluster.Join(rdb, "ns", "longpoll:ns:notify", e, cluster.Config{Interval: interval, SnapshotTTL: time.Minute, OpTimeout: 200 * time.Millisecond,
			Alone: func(a bool) {
				mu.Lock()
				defer mu.Unlock()
				if a {
					alone.Add(1)
				} else {
					alone.Add(-1)
				}
			}})
		t.Cleanup(func() { m.Leave(); _ = e.Close() })
		in := &instance{e: e, m: m}
		sub, _ := in.join(t, k, up)
		defer sub.Close()
		ins, subs = append(ins, in), append(subs, sub)
	}
	mr.Close()
	up.version.Store(2)
	for _, sub := range subs {
		waitVersion(t, sub, 2, 5*time.Second)
	}
	if alone.Load() != 2 || !ins[0].m.Alone() || !ins[1].m.Alone() {
		t.Errorf("Redis down: %d instances alone, want 2", alone.Load())
	}
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for (ins[0].m.Alone() || ins[1].m.Alone()) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if alone.Load() != 0 {
		t.Fatalf("Redis back: %d instances still alone, want 0", alone.Load())
	}
	up.version.Store(3)
	for _, sub := range subs {
		waitVersion(t, sub, 3, 5*time.Second)
	}
}

// recordingEngine records what a member asks of its engine.
type recordingEngine struct {
	mu     sync.Mutex
	topics [][]string
	keys   []longpoll.Key
}

func (r *recordingEngine) Notify(p []string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.topics = append(r.topics, p)
	return 1
}

func (r *recordingEngine) NotifyKey(k longpoll.Key) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.keys = append(r.keys, k)
	return true
}

// A notification relayed by one instance reaches every other instance's
// engine, and one published on the channel by the application every
// instance's; one of another namespace does not.
func TestRelayedNotifications(t *testing.T) {
	mr := miniredis.RunT(t)
	a, b, other := &recordingEngine{}, &recordingEngine{}, &recordingEngine{}
	ma := cluster.Join(redisClient(t, mr), "ns", "longpoll:ns:notify", a, cluster.Config{Interval: interval})
	defer ma.Leave()
	mb := cluster.Join(redisClient(t, mr), "ns", "longpoll:ns:notify", b, cluster.Config{Interval: interval})
	defer mb.Leave()
	mo := cluster.Join(redisClient(t, mr), "ns-other", "longpoll:ns-other:notify", other, cluster.Config{Interval: interval})
	defer mo.Leave()
	waitSubscribed(t, mr, ma.NotifyChannel(), 2)
	if err := ma.Relay(t.Context(), []string{"/orders/42"}); err != nil {
		t.Fatal(err)
	}
	mr.Publish(mb.NotifyChannel(), `{"topics": ["/orders/*"]}`) // the application, on its own
	mr.Publish(mb.NotifyChannel(), `not JSON`)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		b.mu.Lock()
		done := len(a.topics) == 1 && len(b.topics) == 2
		b.mu.Unlock()
		a.mu.Unlock()
		if done {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	for name, want := range map[*recordingEngine]string{a: "[[/orders/*]]", b: "[[/orders/42] [/orders/*]]"} {
		name.mu.Lock()
		if got := fmt.Sprint(name.topics); got != want {
			t.Errorf("notified of %v, want %s (the relaying instance notifies itself)", got, want)
		}
		name.mu.Unlock()
	}
	other.mu.Lock()
	defer other.mu.Unlock()
	if len(other.topics) != 0 {
		t.Errorf("another namespace notified of %v, want nothing", other.topics)
	}
}

// waitSubscribed waits until n clients subscribe to channel.
func waitSubscribed(t *testing.T, mr *miniredis.Miniredis, channel string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for mr.PubSubNumSub(channel)[channel] < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d subscribers of %s, want %d", mr.PubSubNumSub(channel)[channel], channel, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The instance that polls a key is not woken by its own announcement: that
// would cost the upstream a poll more per change.
func TestOwnAnnouncementIgnored(t *testing.T) {
	mr := miniredis.RunT(t)
	up := &upstream{}
	up.version.Store(1)
	k := longpoll.KeyOf("GET", "/orders")
	e, err := longpoll.New(longpoll.Config{Interval: time.Hour, PollTimeout: 2 * time.Second, IdleTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	m := cluster.Join(redisClient(t, mr), "ns", "longpoll:ns:notify", e, cluster.Config{Interval: time.Hour, SnapshotTTL: time.Hour})
	defer m.Leave()
	waitSubscribed(t, mr, m.NotifyChannel(), 1)
	in := &instance{e: e, m: m}
	sub, f := in.join(t, k, up)
	defer sub.Close()
	if f.Role() != cluster.RolePolls {
		t.Fatalf("role %v, want polls", f.Role())
	}
	time.Sleep(500 * time.Millisecond) // the announcement of the first write has come back
	if got := up.polls.Load(); got != 1 {
		t.Errorf("%d upstream polls at interval 1h after the first, want 1: the poller was woken by its own announcement", got)
	}
}

// A poll called off by its engine closing (a shutdown, a deploy) tells the
// other instances nothing: they must not take it for a failing upstream.
func TestCancelledPollNotShared(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redisClient(t, mr)
	s := cluster.NewStore(rdb, "ns")
	e, err := longpoll.New(longpoll.Config{Interval: interval, PollTimeout: 5 * time.Second, IdleTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	m := cluster.Join(rdb, "ns", "longpoll:ns:notify", e, cluster.Config{Interval: interval, SnapshotTTL: time.Minute})
	defer m.Leave()
	started := make(chan struct{})
	var once sync.Once
	blocking := longpoll.FetcherFunc(func(ctx context.Context, _ any, _ *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		once.Do(func() { close(started) })
		<-ctx.Done()
		return nil, &longpoll.UpstreamError{Status: 499, Err: ctx.Err()}
	})
	k := longpoll.KeyOf("k")
	sub, err := e.Join(k, "/k", func() longpoll.Fetcher { return m.Fetcher(k, blocking) })
	if err != nil {
		t.Fatal(err)
	}
	<-started
	_ = e.Close()
	sub.Close()
	time.Sleep(500 * time.Millisecond)
	if _, err := s.Read(context.Background(), k, nil); !errors.Is(err, cluster.ErrNoSnapshot) {
		t.Errorf("after a poll called off: Read = %v, want ErrNoSnapshot (nothing shared)", err)
	}
	if m.Alone() {
		t.Error("a poll called off made the member think Redis unreachable")
	}
}
