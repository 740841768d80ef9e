// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// TestMain lets the test binary run as Caddy (with this module compiled in)
// when asked to, so that a test can start a real Caddy process, attack it
// from outside and stop it the way an operator does.
func TestMain(m *testing.M) {
	if os.Getenv("LONGPOLL_RUN_AS_CADDY") == "1" {
		os.Args = append([]string{"caddy"}, os.Args[1:]...)
		caddycmd.Main()
		return
	}
	os.Exit(m.Run())
}

// caddyProc is a Caddy process: this test binary run as Caddy, with a
// config of the test's, on free loopback ports.
type caddyProc struct {
	cmd    *exec.Cmd
	exited chan struct{}
	base   string // the site, http://127.0.0.1:port
	admin  string // the admin API, http://127.0.0.1:port
	dir    string // its config and log
}

// startCaddy runs Caddy with site as its one site's body and globals added
// to its global options, waits until it serves, and stops it (by PID) when
// the test ends.
func startCaddy(t *testing.T, globals, site string) *caddyProc {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a Caddy process")
	}
	port, adminPort := freeTCPPort(t), freeTCPPort(t)
	cfg := fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\tauto_https off\n\tpersist_config off\n%s}\n\nhttp://127.0.0.1:%d {\n%s}\n",
		adminPort, globals, port, site)
	p := &caddyProc{
		exited: make(chan struct{}),
		base:   fmt.Sprintf("http://127.0.0.1:%d", port),
		admin:  fmt.Sprintf("http://127.0.0.1:%d", adminPort),
		dir:    t.TempDir(),
	}
	path := filepath.Join(p.dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p.cmd = caddyCommand(t, "run", "--config", path, "--adapter", "caddyfile")
	logs, err := os.Create(filepath.Join(p.dir, "caddy.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stdout, p.cmd.Stderr = logs, logs
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); logs.Close(); close(p.exited) }()
	t.Cleanup(p.stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get(p.admin + "/config/"); err == nil {
			resp.Body.Close()
			if conn, err := net.Dial("tcp", strings.TrimPrefix(p.base, "http://")); err == nil {
				conn.Close()
				return p
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("Caddy exited at start:\n%s", p.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("Caddy did not start within 30s:\n%s", p.logs())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// caddyCommand is this test binary, to be run as Caddy with args.
func caddyCommand(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), "LONGPOLL_RUN_AS_CADDY=1")
	return cmd
}

// stop ends the process: SIGTERM, then SIGKILL if it lingers.
func (p *caddyProc) stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// logs returns what the process logged.
func (p *caddyProc) logs() string {
	b, _ := os.ReadFile(filepath.Join(p.dir, "caddy.log"))
	return string(b)
}

// metric returns the value of a series of the admin API's /metrics, given
// as written there (name and labels), or -1 if there is none.
func (p *caddyProc) metric(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if ok && name == series {
			v, err := strconv.ParseFloat(val, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return v
		}
	}
	return -1
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
