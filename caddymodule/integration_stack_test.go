// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

//go:build !race

package caddymodule

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"strconv"
	"testing"
	"time"
)

// TestIntegrationHeldStackSize checks that a held request's goroutine keeps
// the 8 KiB stack it has, rather than growing to 16 KiB while the request
// is set up: Caddy's handler chain leaves this module little room under
// that size (see ServeHTTP), and 8 KiB more per held request is a third
// more memory. Each held request has two goroutines in net/http (its own
// and a background read of 2 KiB), so the stacks cost 10 KiB per request
// at 8 KiB and 18 KiB at 16 KiB. The race detector makes frames larger, so
// this runs without it (.ci/run runs it on its own).
func TestIntegrationHeldStackSize(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 1s\nmax_wait 60s\nmax_waiters 5000", up)))
	c, _ := itClient(t)
	etag := itMustSend(t, c, "GET", "/stack", "Prefer", "wait=1").Header.Get("Etag")

	const n = 500
	runtime.GC()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	// Raw connections with no goroutine of their own on the client side,
	// so that every new stack is the server's.
	req := fmt.Sprintf("GET /stack HTTP/1.1\r\nHost: localhost:%d\r\nPrefer: wait=60\r\nIf-None-Match: %s\r\n\r\n", itPort(), etag)
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for range n {
		conn, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(itPort())))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		if _, err := conn.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
	}
	itWaitHeld(t, n)
	runtime.GC()
	var held runtime.MemStats
	runtime.ReadMemStats(&held)
	perRequest := (int64(held.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("stack per held request: %d bytes (%d goroutines)", perRequest, runtime.NumGoroutine())
	if perRequest > 14<<10 {
		t.Errorf("stack per held request: %d bytes, want about 10 KiB (an 8 KiB stack and a 2 KiB one); "+
			"a held request's stack has grown to 16 KiB", perRequest)
	}

	// They are all answered, and their stacks have not grown on the way
	// out either: an answer is written as deep in the stack as the hold,
	// and its reporting (metrics, debug log) must not go deeper. With the
	// garbage collector off, a stack that grew stays grown to be counted.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	up.set("/stack", http.StatusOK, "changed")
	for i, conn := range conns {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("held request %d: %v, %v", i, resp, err)
		}
		resp.Body.Close()
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perRequest = (int64(after.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("stack per request after the answers: %d bytes", perRequest)
	if perRequest > 14<<10 {
		t.Errorf("stack per request after the answers: %d bytes, want about 10 KiB as while held; "+
			"stacks have grown to 16 KiB while answering", perRequest)
	}
}

// TestIntegrationStreamStackSize measures the stack of an open event stream
// and of one that has written events, as TestIntegrationHeldStackSize does
// for held requests. A stream's goroutine has a 16 KiB stack: it flushes its
// head from inside the handler, and net/http writes a header from a frame
// of about 2.8 KiB under Caddy's handler chain (see stream). It must not
// grow further while it waits and writes versions: a stream costs that
// stack for as long as it is open.
func TestIntegrationStreamStackSize(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", itSite("interval 100ms\nsse\nmax_streams 5000", up)))
	const n = 500
	runtime.GC()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	req := fmt.Sprintf("GET /stack-sse HTTP/1.1\r\nHost: localhost:%d\r\nAccept: text/event-stream\r\n\r\n", itPort())
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for range n {
		conn, err := net.Dial("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(itPort())))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		if _, err := conn.Write([]byte(req)); err != nil {
			t.Fatal(err)
		}
	}
	itWaitFor(t, fmt.Sprintf("%d streams", n), 30*time.Second, func() bool {
		open := 0
		for _, hb := range runningHubs() {
			open += hb.limiter.Streams()
		}
		return open >= n
	})
	// the 8 KiB stacks the streams grew out of are freed
	runtime.GC()
	var opened runtime.MemStats
	runtime.ReadMemStats(&opened)
	perStream := (int64(opened.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("stack per open stream: %d bytes", perStream)
	if perStream > 26<<10 {
		t.Errorf("stack per open stream: %d bytes, want about 18 KiB (a 16 KiB stack and a 2 KiB one); a stream's stack has grown to 32 KiB", perStream)
	}

	// With the garbage collector off, a stack that grew while writing
	// stays grown to be counted.
	defer debug.SetGCPercent(debug.SetGCPercent(-1))
	for v := range 3 {
		up.set("/stack-sse", http.StatusOK, fmt.Sprint("version ", v))
		time.Sleep(500 * time.Millisecond)
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perStream = (int64(after.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("stack per open stream, after 3 versions: %d bytes", perStream)
	if perStream > 26<<10 {
		t.Errorf("stack per open stream after 3 versions: %d bytes, want about 18 KiB as when opened", perStream)
	}
}
