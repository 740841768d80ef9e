// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"errors"
	"sync"
)

// Errors returned by Limiter.Acquire.
var (
	// ErrTooManyWaiters means the cap on held requests is reached.
	ErrTooManyWaiters = errors.New("longpoll: too many held requests")
	// ErrTooManyForClient means the cap on held requests for one client
	// address is reached.
	ErrTooManyForClient = errors.New("longpoll: too many held requests for this client")
	// ErrTooManyStreams means the cap on open streams is reached.
	ErrTooManyStreams = errors.New("longpoll: too many open streams")
	// ErrTooManyWatchesForClient means the cap on the watches one client
	// address holds requests on is reached: each of them polls the
	// upstream, so one client could otherwise make it pay per key.
	ErrTooManyWatchesForClient = errors.New("longpoll: too many watches held by this client")
)

// Caps are the limits Limiter.Acquire enforces. A cap of 0 or less is no
// cap.
type Caps struct {
	// Total caps the requests held at once.
	Total int
	// PerClient caps the requests held at once for one client address.
	PerClient int
	// WatchesPerClient caps the distinct keys one client address holds
	// requests on at once; more requests on a key it holds already are
	// not counted again.
	WatchesPerClient int
	// Stream says the request is a stream (it stays across many changes):
	// Total then caps the streams, counted apart from held requests; the
	// per-client caps count both.
	Stream bool
}

// Limiter counts held requests, in all, per client address and per key of
// each client, to enforce Caps. The zero value is ready to use.
type Limiter struct {
	mu      sync.Mutex
	total   int // held requests
	streams int
	clients map[string]*clientHolds
}

// clientHolds is what one client address holds: requests, and the keys
// they are on.
type clientHolds struct {
	client string
	held   int
	keys   map[Key]*keyHolds
}

// keyHolds counts the requests of one client on one key.
type keyHolds struct {
	key  Key
	held int
}

// Ticket is one admitted request. Release it exactly once.
type Ticket struct {
	l      *Limiter
	c      *clientHolds // nil when no per-client cap applied
	k      *keyHolds
	stream bool
}

// Acquire admits one request from client on key, unless that would go past
// one of caps. A refused request costs nothing. Per-client counts are kept
// only when a per-client cap is set.
func (l *Limiter) Acquire(client string, key Key, caps Caps) (Ticket, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	count := &l.total
	if caps.Stream {
		count = &l.streams
	}
	if caps.Total > 0 && *count >= caps.Total {
		if caps.Stream {
			return Ticket{}, ErrTooManyStreams
		}
		return Ticket{}, ErrTooManyWaiters
	}
	t := Ticket{l: l, stream: caps.Stream}
	if caps.PerClient > 0 || caps.WatchesPerClient > 0 {
		c := l.clients[client]
		var k *keyHolds
		if c != nil {
			k = c.keys[key]
		}
		switch {
		case caps.PerClient > 0 && c != nil && c.held >= caps.PerClient:
			return Ticket{}, ErrTooManyForClient
		case caps.WatchesPerClient > 0 && k == nil && c != nil && len(c.keys) >= caps.WatchesPerClient:
			return Ticket{}, ErrTooManyWatchesForClient
		}
		if c == nil {
			if l.clients == nil {
				l.clients = make(map[string]*clientHolds)
			}
			c = &clientHolds{client: client, keys: make(map[Key]*keyHolds, 1)}
			l.clients[client] = c
		}
		if k == nil {
			k = &keyHolds{key: key}
			c.keys[key] = k
		}
		c.held++
		k.held++
		t.c, t.k = c, k
	}
	*count++
	return t, nil
}

// Release gives the ticket's place back.
func (t Ticket) Release() {
	if t.l == nil {
		return
	}
	t.l.mu.Lock()
	defer t.l.mu.Unlock()
	if t.stream {
		t.l.streams--
	} else {
		t.l.total--
	}
	if c := t.c; c != nil {
		c.held--
		if t.k.held--; t.k.held == 0 {
			delete(c.keys, t.k.key)
		}
		if c.held == 0 {
			delete(t.l.clients, c.client)
		}
	}
}

// Held returns the number of requests admitted and not released, streams
// aside.
func (l *Limiter) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Streams returns the number of streams admitted and not released.
func (l *Limiter) Streams() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.streams
}
