// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// The caps are what stop one client, or a crowd, from holding every
// connection the server has: each Acquire must be admitted or refused
// exactly as the caps say, and a refusal must cost nothing.
func TestLimiterAcquire(t *testing.T) {
	t.Parallel()
	type step struct {
		client  string
		key     string // the watch's key, "" for "k"
		release int    // > 0: release the ticket of that step (1-based) instead
		want    error
	}
	tests := []struct {
		name                   string
		maxTotal, maxPerClient int
		maxWatchesPerClient    int
		steps                  []step
		wantHeld               int
	}{
		{
			name: "total cap", maxTotal: 2,
			steps:    []step{{client: "a"}, {client: "b"}, {client: "c", want: longpoll.ErrTooManyWaiters}},
			wantHeld: 2,
		},
		{
			name: "release frees a place", maxTotal: 2,
			steps: []step{
				{client: "a"}, {client: "b"}, {client: "c", want: longpoll.ErrTooManyWaiters},
				{release: 1}, {client: "c"}, {client: "d", want: longpoll.ErrTooManyWaiters},
			},
			wantHeld: 2,
		},
		{
			name: "per-client cap", maxPerClient: 2,
			steps: []step{
				{client: "a"}, {client: "a"}, {client: "a", want: longpoll.ErrTooManyForClient},
				{client: "b"}, {client: "b"}, {client: "b", want: longpoll.ErrTooManyForClient},
			},
			wantHeld: 4,
		},
		{
			name: "release frees the client's place", maxPerClient: 1,
			steps: []step{
				{client: "a"}, {client: "a", want: longpoll.ErrTooManyForClient},
				{release: 1}, {client: "a"}, {client: "a", want: longpoll.ErrTooManyForClient},
			},
			wantHeld: 1,
		},
		{
			name: "empty client is a client", maxPerClient: 1,
			steps: []step{
				{client: ""}, {client: "", want: longpoll.ErrTooManyForClient}, {client: "a"},
				{release: 1}, {client: ""},
			},
			wantHeld: 2,
		},
		{
			name: "total cap checked before per-client cap", maxTotal: 1, maxPerClient: 1,
			steps:    []step{{client: "a"}, {client: "a", want: longpoll.ErrTooManyWaiters}, {client: "b", want: longpoll.ErrTooManyWaiters}},
			wantHeld: 1,
		},
		{
			name: "refusals cost nothing", maxTotal: 3, maxPerClient: 1,
			steps: []step{
				{client: "a"}, {client: "a", want: longpoll.ErrTooManyForClient}, {client: "a", want: longpoll.ErrTooManyForClient},
				{client: "b"}, {client: "c"}, {client: "d", want: longpoll.ErrTooManyWaiters},
			},
			wantHeld: 3,
		},
		{
			name: "zero caps are no caps",
			steps: []step{
				{client: "a"}, {client: "a"}, {client: "a"}, {client: "a"}, {client: "b"},
			},
			wantHeld: 5,
		},
		{
			name: "negative caps are no caps", maxTotal: -1, maxPerClient: -1, maxWatchesPerClient: -1,
			steps:    []step{{client: "a"}, {client: "a"}, {client: "a"}},
			wantHeld: 3,
		},
		// One client on many keys makes the upstream pay per key.
		{
			name: "watches per client", maxWatchesPerClient: 2,
			steps: []step{
				{client: "a", key: "1"}, {client: "a", key: "2"}, {client: "a", key: "3", want: longpoll.ErrTooManyWatchesForClient},
				{client: "a", key: "1"}, {client: "a", key: "2"}, // more on a key it holds: no new watch
				{client: "b", key: "3"}, {client: "b", key: "4"}, {client: "b", key: "5", want: longpoll.ErrTooManyWatchesForClient},
			},
			wantHeld: 6,
		},
		{
			name: "a key is freed with its last request", maxWatchesPerClient: 1,
			steps: []step{
				{client: "a", key: "1"}, {client: "a", key: "1"}, {client: "a", key: "2", want: longpoll.ErrTooManyWatchesForClient},
				{release: 1}, {client: "a", key: "2", want: longpoll.ErrTooManyWatchesForClient},
				{release: 2}, {client: "a", key: "2"},
			},
			wantHeld: 1,
		},
		{
			name: "held per client and watches per client together", maxPerClient: 3, maxWatchesPerClient: 2,
			steps: []step{
				{client: "a", key: "1"}, {client: "a", key: "2"}, {client: "a", key: "3", want: longpoll.ErrTooManyWatchesForClient},
				{client: "a", key: "1"}, {client: "a", key: "1", want: longpoll.ErrTooManyForClient},
			},
			wantHeld: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var l longpoll.Limiter
			tickets := make([]longpoll.Ticket, len(tt.steps))
			for i, s := range tt.steps {
				if s.release > 0 {
					tickets[s.release-1].Release()
					continue
				}
				var err error
				caps := longpoll.Caps{Total: tt.maxTotal, PerClient: tt.maxPerClient, WatchesPerClient: tt.maxWatchesPerClient}
				tickets[i], err = l.Acquire(s.client, longpoll.KeyOf("k", s.key), caps)
				if !errors.Is(err, s.want) || (s.want == nil) != (err == nil) {
					t.Fatalf("step %d: Acquire(%q, key %q, %+v) = %v, want %v", i+1, s.client, s.key, caps, err, s.want)
				}
			}
			if got := l.Held(); got != tt.wantHeld {
				t.Errorf("after %d steps: Held() = %d, want %d", len(tt.steps), got, tt.wantHeld)
			}
		})
	}
}

// A refused Acquire returns a zero Ticket; releasing it (a deferred Release
// on the refusal path) must not free somebody else's place.
func TestLimiterZeroTicketRelease(t *testing.T) {
	t.Parallel()
	var l longpoll.Limiter
	key := longpoll.KeyOf("k")
	if _, err := l.Acquire("a", key, longpoll.Caps{Total: 1}); err != nil {
		t.Fatalf("Acquire = %v, want no error", err)
	}
	refused, err := l.Acquire("b", key, longpoll.Caps{Total: 1})
	if !errors.Is(err, longpoll.ErrTooManyWaiters) {
		t.Fatalf("Acquire over the cap = %v, want ErrTooManyWaiters", err)
	}
	refused.Release()
	(longpoll.Ticket{}).Release()
	if got := l.Held(); got != 1 {
		t.Errorf("after releasing zero tickets: Held() = %d, want 1", got)
	}
}

// Handlers admit and release concurrently on every request: the counts must
// stay exact (no place lost or leaked) and the caps must hold at every
// instant.
func TestLimiterConcurrent(t *testing.T) {
	t.Parallel()
	const (
		workers, rounds = 64, 500
		maxTotal        = 20
		maxPerClient    = 3
	)
	var (
		l             longpoll.Limiter
		held, maxHeld atomic.Int64
		perClient     [8]atomic.Int64
		admitted      atomic.Int64
		wg            sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			c := w % len(perClient)
			client := clientName(c)
			for range rounds {
				tk, err := l.Acquire(client, longpoll.KeyOf(fmt.Sprint(w%3)), longpoll.Caps{Total: maxTotal, PerClient: maxPerClient, WatchesPerClient: 2})
				if err != nil {
					continue
				}
				admitted.Add(1)
				h := held.Add(1)
				for m := maxHeld.Load(); h > m && !maxHeld.CompareAndSwap(m, h); m = maxHeld.Load() {
				}
				if n := perClient[c].Add(1); n > maxPerClient {
					t.Errorf("client %q: %d held at once, want at most %d", client, n, maxPerClient)
				}
				perClient[c].Add(-1)
				held.Add(-1)
				tk.Release()
			}
		})
	}
	wg.Wait()
	if got := l.Held(); got != 0 {
		t.Errorf("after every ticket was released: Held() = %d, want 0", got)
	}
	if got := maxHeld.Load(); got > maxTotal {
		t.Errorf("%d held at once, want at most %d", got, maxTotal)
	}
	if admitted.Load() == 0 {
		t.Errorf("no Acquire admitted out of %d", workers*rounds)
	}
	// Every client's places are free again.
	for c := range len(perClient) {
		for i := range maxPerClient {
			if _, err := l.Acquire(clientName(c), longpoll.KeyOf("k"), longpoll.Caps{PerClient: maxPerClient}); err != nil {
				t.Fatalf("after the run: Acquire %d for client %q = %v, want no error", i+1, clientName(c), err)
			}
		}
	}
}

// clientName is "" (an unknown address, which counts like any other) for 0.
func clientName(c int) string {
	if c == 0 {
		return ""
	}
	return fmt.Sprint("10.0.0.", c)
}
