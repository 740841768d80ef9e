// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// TestShutdownAnswersHeldRequests stops a real Caddy process with SIGTERM
// while a request is held for 30 s, and checks the request is answered
// (304, its wait cut short) within a second, rather than holding up the
// server's graceful shutdown until the wait ends.
func TestShutdownAnswersHeldRequests(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "unchanging")
	}))
	defer upstream.Close()
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll\n\treverse_proxy %s\n", upstream.Listener.Addr()))
	base := p.base + "/"
	etag := waitForETag(t, base)

	type result struct {
		status int
		at     time.Time
		err    error
	}
	answered := make(chan result, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodGet, base, nil)
		req.Header.Set("Prefer", "wait=30")
		req.Header.Set("If-None-Match", etag)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			answered <- result{err: err}
			return
		}
		resp.Body.Close()
		answered <- result{status: resp.StatusCode, at: time.Now()}
	}()
	time.Sleep(500 * time.Millisecond) // let the request be held
	select {
	case r := <-answered:
		t.Fatalf("request answered before the shutdown: %+v", r)
	default:
	}

	stopped := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-answered:
		if r.err != nil {
			t.Fatalf("held request failed at shutdown: %v", r.err)
		}
		if r.status != http.StatusNotModified {
			t.Errorf("held request at shutdown: got status %d, want 304", r.status)
		}
		if d := r.at.Sub(stopped); d > time.Second {
			t.Errorf("held request answered %v after SIGTERM, want within 1s", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("held request not answered within 10s of SIGTERM")
	}
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		t.Error("Caddy did not exit within 10s of SIGTERM")
	}
}

// waitForETag waits for the server at base to answer a long-poll and
// returns the ETag it gives.
func waitForETag(t *testing.T, base string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequest(http.MethodGet, base, nil)
		req.Header.Set("Prefer", "wait=5")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if etag := resp.Header.Get("Etag"); resp.StatusCode == http.StatusOK && etag != "" {
				return etag
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("Caddy did not answer a long-poll within 20s")
	return ""
}
