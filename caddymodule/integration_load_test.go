// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"context"
	"net/http"
	"runtime"
	"runtime/pprof"
	"testing"
	"time"
)

// TestIntegrationThousandWaiters holds 1,000 clients on one resource: the
// upstream must see one poll per interval, not one per client (the reason
// the module exists), and one change must release every client with it.
func TestIntegrationThousandWaiters(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	const interval = 200 * time.Millisecond
	itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s\nmax_waiters 5000", up)))
	c, _ := itClient(t)

	const n = 1000
	held, etag := itHoldMany(t, c, n, "/crowd", "wait=20")
	before, start := up.hitsFor("/crowd"), time.Now()
	time.Sleep(2 * time.Second)
	polls, elapsed := up.hitsFor("/crowd")-before, time.Since(start)
	t.Logf("%d polls in %v with %d clients held", polls, elapsed, n)
	if limit := int64(elapsed/interval) + 3; polls > limit || polls < 2 {
		t.Errorf("polls with %d clients held: got %d in %v, want between 2 and %d (one per interval %v)",
			n, polls, elapsed, limit, interval)
	}

	up.set("/crowd", http.StatusOK, "news for everyone")
	bad := 0
	deadline := time.After(20 * time.Second)
	for i, ch := range held {
		var r itReply
		select {
		case r = <-ch:
		case <-deadline:
			t.Fatalf("only %d of %d held requests answered within 20s of the change", i, n)
		}
		ok := r.Err == nil && r.Status == http.StatusOK && r.Body == "news for everyone" &&
			r.Header.Get("Etag") != etag && r.Header.Get("Preference-Applied") == "wait=20"
		if !ok {
			if bad++; bad <= 5 {
				t.Errorf("held request %d: got %d %q %v (Preference-Applied %q), want 200 %q with a new ETag",
					i, r.Status, r.Body, r.Err, r.Header.Get("Preference-Applied"), "news for everyone")
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d held requests got a wrong answer", bad, n)
	}
}

// TestIntegrationThousandClientsLeave has 1,000 clients connect, be held
// and go away: whatever a held request costs (goroutines, buffers, its
// place in the watch) must be given back, or a server leaks with every
// client that closes a tab.
func TestIntegrationThousandClientsLeave(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 200ms\nmax_wait 30s\nmax_waiters 5000", up)))
	c, tr := itClient(t)

	// Warm up once with the same traffic, so that pools and lazily
	// started goroutines are part of the baseline.
	etag := itMustSend(t, c, "GET", "/leave", "Prefer", "wait=1").Header.Get("Etag")
	round := func(n int) {
		ctx, cancel := context.WithCancel(t.Context())
		chans := make([]<-chan itReply, n)
		for i := range chans {
			chans[i] = itSendAsync(t, ctx, c, "GET", "/leave", "Prefer", "wait=20", "If-None-Match", etag)
		}
		itWaitHeld(t, n)
		cancel()
		for i, ch := range chans {
			if r := <-ch; r.Err == nil {
				t.Fatalf("request %d: got %d, want canceled", i, r.Status)
			}
		}
		itWaitFor(t, "held requests to leave", 10*time.Second, func() bool { return itHeld() == 0 })
		tr.CloseIdleConnections()
	}
	round(100)

	settle := func() (goroutines int, heap uint64) {
		var ms runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), ms.HeapAlloc
	}
	time.Sleep(500 * time.Millisecond)
	g0, h0 := settle()

	round(1000)

	const goroutineSlack, heapSlack = 20, 8 << 20
	deadline := time.Now().Add(15 * time.Second)
	g1, h1 := settle()
	for (g1 > g0+goroutineSlack || h1 > h0+heapSlack) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		g1, h1 = settle()
	}
	t.Logf("after 1000 clients left: goroutines %d -> %d, heap %d KiB -> %d KiB", g0, g1, h0>>10, h1>>10)
	if g1 > g0+goroutineSlack {
		var buf bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&buf, 1)
		t.Errorf("goroutines: got %d, want at most %d (%d before)\n%s", g1, g0+goroutineSlack, g0, buf.String())
	}
	if h1 > h0+heapSlack {
		t.Errorf("heap: got %d KiB, want at most %d KiB (%d KiB before)", h1>>10, (h0+heapSlack)>>10, h0>>10)
	}
}
