// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// TestBrowserStreams opens the demo's page (demo/index.html) in a real
// browser, headless Chromium driven over its DevTools protocol, served by a
// Caddy process configured as Caddyfile.example is; changes status.txt three
// times; and reads the page: its EventSource and its WebSocket must each
// have shown every version. A held request stalls Chromium's virtual time,
// so the page runs in real time.
//
// Chromium comes from Debian's chromium package, which .ci/run installs; the
// test is skipped where it is missing, unless LONGPOLL_BROWSER_TEST=required.
func TestBrowserStreams(t *testing.T) {
	browser := findChromium()
	if browser == "" {
		if os.Getenv("LONGPOLL_BROWSER_TEST") == "required" {
			t.Fatal("chromium not found, and LONGPOLL_BROWSER_TEST=required")
		}
		t.Skip("chromium not found (apt-get install chromium)")
	}
	root := t.TempDir()
	page, err := os.ReadFile("../demo/index.html")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("index.html", string(page))
	write("status.txt", "version 1\n")
	p := startCaddy(t, "", fmt.Sprintf(`	root * %s
	longpoll {
		interval 200ms
		query_params wait etag
		sse
		websocket
	}
	file_server
`, root))

	cdp := startChromium(t, browser)
	cdp.call(t, "Page.navigate", map[string]any{"url": p.base + "/index.html"})
	read := func(list string) []string {
		var res struct {
			Result struct {
				Value string `json:"value"`
			} `json:"result"`
		}
		cdp.callInto(t, "Runtime.evaluate", map[string]any{
			"expression": fmt.Sprintf(`[...document.querySelectorAll("#%s li")].map(li => li.textContent).join("|")`, list),
		}, &res)
		if res.Result.Value == "" {
			return nil
		}
		return strings.Split(res.Result.Value, "|")
	}
	waitFor := func(want []string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			sse, ws := read("sse"), read("websocket")
			if strings.Join(sse, "|") == strings.Join(want, "|") && strings.Join(ws, "|") == strings.Join(want, "|") {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the page shows %q (EventSource) and %q (WebSocket), want %q in both", sse, ws, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	want := []string{"version 1"}
	waitFor(want)
	for i := 2; i <= 4; i++ {
		v := fmt.Sprint("version ", i)
		write("status.txt", v+"\n")
		want = append(want, v)
		waitFor(want)
	}
}

// findChromium returns the path of a Chromium, or "".
func findChromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(name); err == nil {
			return path
		}
	}
	return ""
}

// devTools is a connection to a page of Chromium's DevTools protocol.
type devTools struct {
	conn    *websocket.Conn
	session string // the page's, once attached
	mu      sync.Mutex
	id      int
}

// startChromium runs a headless Chromium with a blank page, stopped (by
// PID) when the test ends, and connects to that page.
func startChromium(t *testing.T, browser string) *devTools {
	t.Helper()
	profile := t.TempDir()
	cmd := exec.Command(browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-dev-shm-usage", "--remote-debugging-port=0", "--user-data-dir="+profile, "about:blank")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	listening := regexp.MustCompile(`DevTools listening on (ws://\S+)`)
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
	}()
	var browserURL string
	select {
	case browserURL = <-found:
	case <-time.After(30 * time.Second):
		t.Fatal("Chromium did not say where DevTools listen within 30s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, browserURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(16 << 20)
	t.Cleanup(func() { _ = conn.CloseNow() })
	b := &devTools{conn: conn}
	var target struct {
		TargetID string `json:"targetId"`
	}
	b.callInto(t, "Target.createTarget", map[string]any{"url": "about:blank"}, &target)
	var session struct {
		SessionID string `json:"sessionId"`
	}
	b.callInto(t, "Target.attachToTarget", map[string]any{"targetId": target.TargetID, "flatten": true}, &session)
	return &devTools{conn: conn, id: b.id, session: session.SessionID}
}

// call sends a DevTools command and waits for its result.
func (d *devTools) call(t *testing.T, method string, params map[string]any) {
	t.Helper()
	d.callInto(t, method, params, nil)
}

func (d *devTools) callInto(t *testing.T, method string, params map[string]any, result any) {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	d.id++
	msg := map[string]any{"id": d.id, "method": method, "params": params}
	if d.session != "" {
		msg["sessionId"] = d.session
	}
	p, _ := json.Marshal(msg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := d.conn.Write(ctx, websocket.MessageText, p); err != nil {
		t.Fatalf("DevTools %s: %v", method, err)
	}
	for {
		_, p, err := d.conn.Read(ctx)
		if err != nil {
			t.Fatalf("DevTools %s: %v", method, err)
		}
		var reply struct {
			ID     int             `json:"id"`
			Result json.RawMessage `json:"result"`
			Error  *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if json.Unmarshal(p, &reply) != nil || reply.ID != d.id {
			continue // an event, or another reply
		}
		if reply.Error != nil {
			t.Fatalf("DevTools %s: %s", method, reply.Error.Message)
		}
		if result != nil {
			if err := json.Unmarshal(reply.Result, result); err != nil {
				t.Fatalf("DevTools %s: %v", method, err)
			}
		}
		return
	}
}
