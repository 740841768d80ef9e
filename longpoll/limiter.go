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
)

// Limiter counts held requests, in all and per client address, to enforce
// caps. The zero value is ready to use.
type Limiter struct {
	mu        sync.Mutex
	total     int
	perClient map[string]int
}

// Ticket is one admitted request. Release it exactly once.
type Ticket struct {
	l         *Limiter
	client    string
	perClient bool // counted per client
}

// Acquire admits one request from client, unless that would take the total
// above maxTotal or the client's count above maxPerClient (a cap of 0 or
// less is no cap). A refused request costs nothing.
func (l *Limiter) Acquire(client string, maxTotal, maxPerClient int) (Ticket, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if maxTotal > 0 && l.total >= maxTotal {
		return Ticket{}, ErrTooManyWaiters
	}
	t := Ticket{l: l}
	if maxPerClient > 0 {
		if l.perClient[client] >= maxPerClient {
			return Ticket{}, ErrTooManyForClient
		}
		if l.perClient == nil {
			l.perClient = make(map[string]int)
		}
		l.perClient[client]++
		t.client, t.perClient = client, true
	}
	l.total++
	return t, nil
}

// Release gives the ticket's place back.
func (t Ticket) Release() {
	if t.l == nil {
		return
	}
	t.l.mu.Lock()
	defer t.l.mu.Unlock()
	t.l.total--
	if t.perClient {
		if n := t.l.perClient[t.client] - 1; n > 0 {
			t.l.perClient[t.client] = n
		} else {
			delete(t.l.perClient, t.client)
		}
	}
}

// Held returns the number of requests admitted and not released.
func (l *Limiter) Held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
