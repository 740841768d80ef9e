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
	f := longpoll.FetcherFunc(func(_ context.Context, route any, _ *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		return snapshotOf("body")
	})
	e := newEngine(t, longpoll.Config{
		Interval: time.Hour, IdleTTL: time.Millisecond,
		MaxMemory: 64 << 10, // room for a few dozen idle watches: eviction runs
	})
	fetcherFor := func() longpoll.Fetcher { return f }
	var wg sync.WaitGroup
	for g := range workers {
		wg.Go(func() {
			for i := range joins {
				k := (g*7919 + i*31) % keys
				sub, err := e.Join(longpoll.KeyOf("k", strconv.Itoa(k)), "/t/"+strconv.Itoa(k), fetcherFor)
				if err != nil {
					t.Errorf("Join = %v", err)
					return
				}
				st, err := sub.Fresh(context.Background())
				if err != nil || st.Snapshot == nil || string(st.Snapshot.Body) != "body" {
					t.Errorf("Fresh = %+v, %v, want the body", st, err)
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
				sub, err := e.Join(longpoll.KeyOf("late", strconv.Itoa(g), strconv.Itoa(i)), "/late", fetcherFor)
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
