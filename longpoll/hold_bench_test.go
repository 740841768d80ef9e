// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// BenchmarkHold10000 holds 10,000 subscribers on one key the way the Caddy
// handler does (a goroutine blocked on the state's Changed channel and on
// a shared Deadlines channel for its wait), reports the memory each costs (heap and stack, measured with
// the garbage collector settled), then publishes one change and reports how
// long it takes until every subscriber has seen the new snapshot.
//
//	go test -run '^$' -bench Hold10000 -benchtime 5x ./longpoll/
func BenchmarkHold10000(b *testing.B) {
	const n = 10000
	var perWaiter, release float64
	for range b.N {
		pw, rel := holdAndRelease(b, n)
		perWaiter += pw
		release += rel.Seconds()
	}
	b.ReportMetric(perWaiter/float64(b.N), "bytes/waiter")
	b.ReportMetric(release/float64(b.N)*1e3, "ms/release")
}

func holdAndRelease(b *testing.B, n int) (bytesPerWaiter float64, release time.Duration) {
	b.Helper()
	var version atomic.Int64
	version.Store(1)
	fetch := longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		body := []byte("version " + string(rune('0'+version.Load())))
		return longpoll.NewSnapshot(200, http.Header{"Content-Type": {"text/plain"}}, body, nil)
	})
	e, err := longpoll.New(longpoll.Config{Interval: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	key := longpoll.KeyOf("GET", "/resource")
	first, err := e.Join(key, "t", func() longpoll.Fetcher { return fetch })
	if err != nil {
		b.Fatal(err)
	}
	if _, err := first.Fresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	etag := first.State().Snapshot.ETag
	var deadlines longpoll.Deadlines

	before := settledMemory()
	var held, woken sync.WaitGroup
	held.Add(n)
	woken.Add(n)
	wakeTimes := make([]time.Time, n)
	for i := range n {
		go func() {
			defer woken.Done()
			sub, err := e.Join(key, "t", func() longpoll.Fetcher { return fetch })
			if err != nil {
				held.Done()
				return
			}
			defer sub.Close()
			expired := deadlines.After(time.Minute)
			st := sub.State()
			held.Done()
			for st.Snapshot.ETag == etag {
				select {
				case <-st.Changed():
					st = sub.State()
				case <-expired:
					return
				}
			}
			wakeTimes[i] = time.Now()
		}()
	}
	held.Wait()
	after := settledMemory()

	version.Store(2)
	start := time.Now()
	first.Trigger()
	woken.Wait()
	var last time.Time
	for _, t := range wakeTimes {
		if t.After(last) {
			last = t
		}
	}
	first.Close()
	return float64(after-before) / float64(n), last.Sub(start)
}

// settledMemory is the heap and stack in use after garbage collection.
func settledMemory() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}
