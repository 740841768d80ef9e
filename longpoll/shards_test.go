// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// TestShardsJoinLeaveExpire joins and leaves watches of many keys from
// many goroutines while idle watches expire and memory evicts them, then
// closes the engine under load: every subscription gets its key's
// representation, the counts agree with the watches, and after Close
// nothing joins and nothing is left.
func TestShardsJoinLeaveExpire(t *testing.T) {
	const keys, workers, joins = 300, 8, 400
	// each key's watch gets a Fetcher that answers that key's body
	fetcherOf := func(k int) func() longpoll.Fetcher {
		return func() longpoll.Fetcher {
			return longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
				return snapshotOf("body " + strconv.Itoa(k))
			})
		}
	}
	e := newEngine(t, longpoll.Config{
		Interval: time.Hour, IdleTTL: time.Millisecond,
		MaxMemory: 64 << 10, // room for a few dozen idle watches: eviction runs
	})
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range joins {
				k := (g*7919 + i*31) % keys
				sub, err := e.Join(longpoll.KeyOf("k", strconv.Itoa(k)), "/t/"+strconv.Itoa(k), fetcherOf(k))
				if err != nil {
					t.Errorf("Join = %v", err)
					return
				}
				st, err := sub.Fresh(context.Background())
				if want := "body " + strconv.Itoa(k); err != nil || st.Snapshot == nil || string(st.Snapshot.Body) != want {
					t.Errorf("Fresh = %+v, %v, want %q", st, err, want)
				}
				if got := sub.Topic(); got != "/t/"+strconv.Itoa(k) {
					t.Errorf("Topic = %q, want /t/%d", got, k)
				}
				sub.Close()
			}
		})
	}
	wg.Wait()
	// Every watch expires a millisecond after its last subscriber: the
	// count must come to zero, and agree with the watches listed.
	deadline := time.Now().Add(30 * time.Second)
	for e.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	listed := 0
	for range e.Watches() {
		listed++
	}
	if n := e.Len(); n != 0 || listed != 0 {
		t.Errorf("after every watch expired: Len() = %d, Watches() lists %d; want 0 and 0", n, listed)
	}
	if st := e.Stats(); st.Active != 0 {
		t.Errorf("Stats().Active = %d after every subscription closed, want 0", st.Active)
	}

	// Close while joins are under way: each either joined before (and is
	// woken with a final state) or is refused.
	var late sync.WaitGroup
	for g := range workers {
		late.Go(func() {
			for i := range 200 {
				sub, err := e.Join(longpoll.KeyOf("late", strconv.Itoa(g), strconv.Itoa(i)), "/late", fetcherOf(i))
				if errors.Is(err, longpoll.ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("Join = %v, want nil or ErrClosed", err)
					return
				}
				select {
				case <-sub.State().Changed():
				case <-time.After(time.Minute):
					t.Error("a subscriber was not woken by its first poll or Close")
				}
				sub.Close()
			}
		})
	}
	e.Close()
	late.Wait()
	if n := e.Len(); n != 0 {
		t.Errorf("Len() after Close = %d, want 0", n)
	}
	if _, err := e.Subscribe(longpoll.KeyOf("after"), "/after"); !errors.Is(err, longpoll.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	if n := e.Notify([]string{"/*"}); n != 0 {
		t.Errorf("Notify after Close reached %d watches, want 0", n)
	}
}

// max_watches holds however many joins of idle watches race from every
// shard at once: the place is taken with the count, never after a check.
func TestShardsMaxActiveUnderRace(t *testing.T) {
	const watches, max = 200, 10
	e := newEngine(t, longpoll.Config{Interval: time.Hour, IdleTTL: time.Hour, MaxActive: max})
	f := longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		return snapshotOf("body")
	})
	newFetcher := func() longpoll.Fetcher { return f }
	keys := make([]longpoll.Key, watches)
	for i := range keys {
		keys[i] = longpoll.KeyOf("max", strconv.Itoa(i))
		sub, err := e.Join(keys[i], "/max", newFetcher)
		if err != nil {
			t.Fatalf("making watch %d: %v", i, err)
		}
		sub.Close() // idle: every watch exists, none is active
	}
	for round := range 20 {
		start := make(chan struct{})
		var wg sync.WaitGroup
		subs := make([]*longpoll.Subscription, watches*2)
		for i := range subs {
			wg.Go(func() {
				<-start
				k := keys[i%watches]
				if i >= watches {
					k = longpoll.KeyOf("new", strconv.Itoa(round), strconv.Itoa(i)) // a watch to make
				}
				sub, err := e.Join(k, "/max", newFetcher)
				if err == nil {
					subs[i] = sub
				} else if !errors.Is(err, longpoll.ErrTooManyWatches) {
					t.Errorf("Join = %v, want nil or ErrTooManyWatches", err)
				}
			})
		}
		close(start)
		wg.Wait()
		active := map[longpoll.Key]bool{}
		for _, sub := range subs {
			if sub != nil {
				active[sub.Key()] = true
			}
		}
		if got := e.Stats().Active; len(active) != max || got != max {
			t.Fatalf("round %d: %d watches joined, Stats().Active = %d; want max_watches, %d", round, len(active), got, max)
		}
		for _, sub := range subs {
			if sub != nil {
				sub.Close()
			}
		}
	}
}
