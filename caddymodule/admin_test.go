// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// BenchmarkAdminWatches100k lists the top 100 of 100,000 watches, as GET
// /longpoll/watches does: what an operator's look costs the process.
func BenchmarkAdminWatches100k(b *testing.B) {
	const n = 100_000
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	// polls every 50s: the set-up's first polls end before the timing
	h := &Handler{Key: "bench:{http.request.uri}", Interval: caddy.Duration(50 * time.Second)}
	if err := h.Provision(ctx); err != nil {
		b.Fatal(err)
	}
	defer h.Cleanup()
	snap, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, []byte("x"), nil)
	if err != nil {
		b.Fatal(err)
	}
	fetch := func() longpoll.Fetcher {
		return longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) { return snap, nil })
	}
	subs := make([]*longpoll.Subscription, 0, n)
	for i := range n {
		sub, err := h.hub.engine.Join(longpoll.KeyOf(strconv.Itoa(i)), "/r/"+strconv.Itoa(i%1000), fetch)
		if err != nil {
			b.Fatal(err)
		}
		subs = append(subs, sub)
	}
	defer func() {
		for _, s := range subs {
			s.Close()
		}
	}()
	for polled := 0; polled < n; time.Sleep(100 * time.Millisecond) {
		polled = 0
		for info := range h.hub.engine.Watches() {
			if !info.LastPoll.IsZero() {
				polled++
			}
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if v := collectWatches([]*hub{h.hub}, DefaultAdminLimit); v.Totals.Watches != n || len(v.Watches) != DefaultAdminLimit {
			b.Fatalf("totals %+v, %d listed", v.Totals, len(v.Watches))
		}
	}
}

// TestCollectWatchesTopK checks the listing cut at small limits, which
// sorts and trims as it goes, against the full listing: the same watches,
// in the same order, and the same totals.
func TestCollectWatchesTopK(t *testing.T) {
	h := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}", Interval: caddy.Duration(50 * time.Second)}
	provision(t, newTestContext(t), h)
	fetch := func() longpoll.Fetcher {
		return longpoll.FetcherFunc(func(context.Context, any, *longpoll.Snapshot) (*longpoll.Snapshot, error) {
			return longpoll.NewSnapshot(http.StatusOK, nil, []byte("x"), nil)
		})
	}
	for i := range 300 {
		for range (i*37)%11 + 1 { // waiters from 1 to 11, many ties
			sub, err := h.hub.engine.Join(longpoll.KeyOf(strconv.Itoa(i)), "/r/"+strconv.Itoa(i%7), fetch)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(sub.Close)
		}
	}
	hbs := []*hub{h.hub}
	all := collectWatches(hbs, MaxAdminLimit)
	for _, limit := range []int{1, 3, 7, 50, 149, 150, 151, 299} {
		got := collectWatches(hbs, limit)
		if got.Totals.Watches != all.Totals.Watches || got.Totals.Waiters != all.Totals.Waiters || got.Totals.Listed != limit {
			t.Errorf("limit %d: totals %+v, want those of the full listing %+v with %d listed", limit, got.Totals, all.Totals, limit)
		}
		for i, w := range got.Watches {
			if w.Watch != all.Watches[i].Watch || w.Waiters != all.Watches[i].Waiters {
				t.Fatalf("limit %d: watch %d is %s (%d waiters), want %s (%d waiters) as in the full listing",
					limit, i, w.Watch, w.Waiters, all.Watches[i].Watch, all.Watches[i].Waiters)
			}
		}
	}
	if w := all.Watches; len(w) != 300 || w[0].Waiters != 11 || w[len(w)-1].Waiters != 1 {
		t.Errorf("full listing: %d watches from %d to %d waiters, want 300 from 11 down to 1", len(w), w[0].Waiters, w[len(w)-1].Waiters)
	}
}
