// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"bytes"
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// benchEngine returns an engine with a warm watch on testKey, held by a
// subscriber the caller must Close. The interval is long enough that no
// poll runs unless triggered, and triggers are not spaced out (the notify
// window would otherwise delay each one after the first by up to 100ms).
func benchEngine(b *testing.B, f longpoll.Fetcher) (*longpoll.Engine, *longpoll.Subscription) {
	b.Helper()
	e, err := longpoll.New(longpoll.Config{Interval: time.Hour, IdleTTL: time.Hour, NotifyWindow: time.Nanosecond})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { e.Close() })
	holder, err := e.Join(testKey, "t", func() longpoll.Fetcher { return f })
	if err != nil {
		b.Fatal(err)
	}
	if st, err := holder.Fresh(context.Background()); err != nil || st.Snapshot == nil {
		b.Fatalf("Fresh() = %+v, %v, want a snapshot", st, err)
	}
	return e, holder
}

// BenchmarkSubscribe is the per-request cost of joining and leaving a warm
// watch: "active" while another subscriber holds it (the common case under
// load), "idle" when each Subscribe wakes the watch and each Close idles it.
func BenchmarkSubscribe(b *testing.B) {
	f := longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		return snapshotOf("v1")
	})
	newFetcher := func() longpoll.Fetcher { return f }
	for _, holdOpen := range []bool{true, false} {
		name := "idle"
		if holdOpen {
			name = "active"
		}
		b.Run(name, func(b *testing.B) {
			e, holder := benchEngine(b, f)
			if !holdOpen {
				holder.Close()
			} else {
				defer holder.Close()
			}
			b.ReportAllocs()
			for b.Loop() {
				sub, err := e.Join(testKey, "t", newFetcher)
				if err != nil {
					b.Fatal(err)
				}
				sub.Close()
			}
		})
	}
}

// BenchmarkSubscribeParallel is joining and leaving warm watches from
// every P at once, over 10,000 keys each held open by another subscriber
// (many clients on per-user keys): run it with -cpu 1,2,8,32 to see
// whether the join path scales with cores, and with -mutexprofile to see
// where it waits.
func BenchmarkSubscribeParallel(b *testing.B) {
	const keys = 10000
	f := longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		return snapshotOf("v1")
	})
	newFetcher := func() longpoll.Fetcher { return f }
	e, err := longpoll.New(longpoll.Config{Interval: time.Hour, IdleTTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	ks := make([]longpoll.Key, keys)
	for i := range ks {
		ks[i] = longpoll.KeyOf("bench", strconv.Itoa(i))
		holder, err := e.Join(ks[i], "/users/"+strconv.Itoa(i), newFetcher)
		if err != nil {
			b.Fatal(err)
		}
		defer holder.Close()
	}
	var seed atomic.Uint64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := seed.Add(7919) // each goroutine walks the keys from its own place
		for pb.Next() {
			i++
			k := ks[i%keys]
			sub, err := e.Join(k, "/users/x", newFetcher)
			if err != nil {
				b.Error(err)
				return
			}
			sub.Close()
		}
	})
}

// BenchmarkRelease10000 measures the time from publishing a change (a new
// body and a Trigger) until all of 10,000 subscribers blocked on one
// State's Changed channel have woken and read the new state.
func BenchmarkRelease10000(b *testing.B) {
	const n = 10000
	var version atomic.Int64
	f := longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		return snapshotOf("version " + string(rune('a'+version.Load()%26)))
	})
	e, holder := benchEngine(b, f)
	defer holder.Close()
	newFetcher := func() longpoll.Fetcher { return f }
	b.ReportAllocs()
	for range b.N {
		b.StopTimer()
		have := holder.State()
		subs := make([]*longpoll.Subscription, n)
		for i := range subs {
			sub, err := e.Join(testKey, "t", newFetcher)
			if err != nil {
				b.Fatal(err)
			}
			subs[i] = sub
		}
		var ready, woken sync.WaitGroup
		ready.Add(n)
		for _, sub := range subs {
			woken.Go(func() {
				st := sub.State()
				ready.Done()
				<-st.Changed()
				if now := sub.State(); now.Snapshot == have.Snapshot {
					b.Error("woken without a new snapshot")
				}
			})
		}
		ready.Wait()
		b.StartTimer()

		version.Add(1)
		holder.Trigger()
		woken.Wait()

		b.StopTimer()
		for _, sub := range subs {
			sub.Close()
		}
		b.StartTimer()
	}
}

// BenchmarkChangeDetection100KiB is the cost of one unchanged poll of a
// 100 KiB resource: recording the body and finding it equal to the watch's
// snapshot (hash, compare, keep the old body).
func BenchmarkChangeDetection100KiB(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 100<<10/16)
	prev, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"application/json"}}, bytes.Clone(body), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		r := longpoll.NewRecorder(1 << 20)
		r.Header().Set("Content-Type", "application/json")
		if _, err := r.Write(body); err != nil {
			b.Fatal(err)
		}
		s, err := r.Result(nil, prev)
		if err != nil {
			b.Fatal(err)
		}
		if s.ETag != prev.ETag || &s.Body[0] != &prev.Body[0] {
			b.Fatal("same body: want prev's ETag and body")
		}
	}
}
