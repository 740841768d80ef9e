// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"errors"
	"net/http"
	"testing"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// Decide is the one place that says what a subscriber does next; every
// delivery follows it. Each state a watch can be in, with each kind of
// subscriber: none of its version, the current one, another one.
func TestDecide(t *testing.T) {
	t.Parallel()
	snap := mustSnapshot(t, "body")
	varying, err := longpoll.NewSnapshot(http.StatusOK,
		http.Header{"Vary": {"X-Tenant"}}, []byte("tenant a"), http.Header{"X-Tenant": {"a"}})
	if err != nil {
		t.Fatal(err)
	}
	failure := &longpoll.Failure{Err: errors.New("down")}
	current, other := []string{snap.ETag}, []string{`"other"`}
	tenantA, tenantB := http.Header{"X-Tenant": {"a"}}, http.Header{"X-Tenant": {"b"}}
	tests := []struct {
		name   string
		st     longpoll.State
		have   []string
		header http.Header
		want   longpoll.Decision
	}{
		{"pending, no version", longpoll.State{}, nil, nil, longpoll.Wait},
		{"pending, a version", longpoll.State{}, other, nil, longpoll.Wait},
		{"a snapshot, no version", longpoll.State{Snapshot: snap}, nil, nil, longpoll.Send},
		{"a snapshot, another version", longpoll.State{Snapshot: snap}, other, nil, longpoll.Send},
		{"a snapshot, the current version", longpoll.State{Snapshot: snap}, current, nil, longpoll.Wait},
		{"a snapshot, * matches", longpoll.State{Snapshot: snap}, []string{"*"}, nil, longpoll.Wait},
		{"failing first polls, no version", longpoll.State{Failure: failure}, nil, nil, longpoll.Fail},
		{"failing first polls, a version", longpoll.State{Failure: failure}, other, nil, longpoll.Wait},
		{"failing with a snapshot, the current version", longpoll.State{Snapshot: snap, Failure: failure}, current, nil, longpoll.Wait},
		{"failing with a snapshot, another version", longpoll.State{Snapshot: snap, Failure: failure}, other, nil, longpoll.Fail},
		{"failing with a snapshot, no version", longpoll.State{Snapshot: snap, Failure: failure}, nil, nil, longpoll.Fail},
		{"pass-through", longpoll.State{Passthrough: true}, current, nil, longpoll.PassThrough},
		{"vary matches", longpoll.State{Snapshot: varying}, nil, tenantA, longpoll.Send},
		{"vary differs", longpoll.State{Snapshot: varying}, nil, tenantB, longpoll.PassThrough},
		{"vary differs, its version", longpoll.State{Snapshot: varying}, []string{varying.ETag}, tenantB, longpoll.PassThrough},
		{"closed with a snapshot", longpoll.State{Snapshot: snap, Closed: true}, current, nil, longpoll.End},
		{"closed, pending", longpoll.State{Closed: true}, nil, nil, longpoll.End},
		{"closed, pass-through", longpoll.State{Passthrough: true, Closed: true}, nil, nil, longpoll.End},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.st.Decide(tt.have, tt.header); got != tt.want {
				t.Errorf("Decide(%q) in state %+v = %v, want %v", tt.have, tt.st, got, tt.want)
			}
		})
	}
}

// A delivery calls Decide on every wake of every subscriber: it must not
// allocate.
func TestDecideDoesNotAllocate(t *testing.T) {
	snap := mustSnapshot(t, "body")
	st := longpoll.State{Snapshot: snap}
	have := []string{`"old"`, snap.ETag}
	h := http.Header{}
	if n := testing.AllocsPerRun(100, func() { _ = st.Decide(have, h) }); n != 0 {
		t.Errorf("Decide: %v allocations, want 0", n)
	}
}
