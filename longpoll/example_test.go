// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// A long-poll client holds a version (an ETag); the engine polls the
// upstream once for every subscriber of a key and wakes them all when the
// representation changes.
func Example() {
	var version atomic.Int64
	version.Store(1)
	upstream := longpoll.FetcherFunc(func(ctx context.Context, _ any, prev *longpoll.Snapshot) (*longpoll.Snapshot, error) {
		body := fmt.Sprintf("order 42, version %d", version.Load())
		return longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, []byte(body), nil)
	})

	e, err := longpoll.New(longpoll.Config{Interval: time.Hour})
	if err != nil {
		panic(err)
	}
	defer e.Close()

	key := longpoll.KeyOf("GET", "/orders/42")
	sub, err := e.Join(key, "/orders/42", func() longpoll.Fetcher { return upstream })
	if err != nil {
		panic(err)
	}
	defer sub.Close()

	// A request answered at once: wait for the watch's first poll.
	st, err := sub.Fresh(context.Background())
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d %s\n", st.Snapshot.Status, st.Snapshot.Body)
	have := st.Snapshot.ETag

	// The resource changes; Trigger polls at once instead of within the
	// interval.
	version.Store(2)
	sub.Trigger()

	// A held request: wait until the version differs from the client's.
	for st = sub.State(); !st.Closed && (st.Snapshot == nil || st.Snapshot.ETag == have); st = sub.State() {
		<-st.Changed()
	}
	fmt.Printf("%d %s (new ETag: %v)\n", st.Snapshot.Status, st.Snapshot.Body, st.Snapshot.ETag != have)
	// Output:
	// 200 order 42, version 1
	// 200 order 42, version 2 (new ETag: true)
}

// The client's Prefer header says how long it is willing to wait.
func ExampleParseWait() {
	wait, ok := longpoll.ParseWait([]string{"return=minimal, wait=30"})
	fmt.Println(wait, ok)
	wait, ok = longpoll.ParseWait([]string{"wait=soon"})
	fmt.Println(wait, ok)
	// Output:
	// 30s true
	// 0s false
}

// If-None-Match tells whether the client already has the current version.
func ExampleMatchETag() {
	fmt.Println(longpoll.MatchETag([]string{`"old", W/"v2"`}, `"v2"`))
	fmt.Println(longpoll.MatchETag([]string{`"old"`}, `"v2"`))
	// Output:
	// true
	// false
}

// A Recorder captures what a handler writes as a Snapshot; a handler that
// writes the same representation again gives the same ETag, and the
// snapshot keeps the body already held.
func ExampleRecorder() {
	serve := func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"status":"shipped"}`)
	}
	r := longpoll.NewRecorder(1 << 20)
	serve(r)
	first, err := r.Result(nil, nil)
	if err != nil {
		panic(err)
	}

	r = longpoll.NewRecorder(1 << 20)
	serve(r)
	second, err := r.Result(nil, first)
	if err != nil {
		panic(err)
	}
	fmt.Println(first.Status, len(first.Body), second.ETag == first.ETag, &second.Body[0] == &first.Body[0])
	// Output:
	// 200 20 true true
}
