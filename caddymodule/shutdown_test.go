// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestMain lets the test binary run as Caddy (with this module compiled in)
// when asked to, so that a test can start a real Caddy process and stop it
// the way an operator does.
func TestMain(m *testing.M) {
	if os.Getenv("LONGPOLL_RUN_AS_CADDY") == "1" {
		os.Args = append([]string{"caddy"}, os.Args[1:]...)
		caddycmd.Main()
		return
	}
	os.Exit(m.Run())
}

// TestShutdownAnswersHeldRequests stops a real Caddy process with SIGTERM
// while a request is held for 30 s, and checks the request is answered
// (304, its wait cut short) within a second, rather than holding up the
// server's graceful shutdown until the wait ends.
func TestShutdownAnswersHeldRequests(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Caddy process")
	}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "unchanging")
	}))
	defer upstream.Close()
	port := freeTCPPort(t)
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
}
http://127.0.0.1:%d {
	longpoll
	reverse_proxy %s
}
`, port, upstream.Listener.Addr())
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "LONGPOLL_RUN_AS_CADDY=1")
	logs, _ := os.Create(filepath.Join(dir, "caddy.log"))
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	base := fmt.Sprintf("http://127.0.0.1:%d/", port)
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
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
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
	case <-exited:
	case <-time.After(10 * time.Second):
		t.Error("Caddy did not exit within 10s of SIGTERM")
	}
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
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
