// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

// Command loadtest measures a Caddy built with the longpoll module: it runs
// an upstream on loopback, starts the given Caddy binary in front of it,
// holds N long-poll requests on one key, changes the upstream once, and
// reports the memory per held request and the time from the change reaching
// Caddy to each client having its full response. With -notify, the change is
// announced to longpoll_notify (the interval is then 30s, a safety net), and
// times count from the notify request.
//
//	go run ./loadtest -caddy ./caddy -n 10000
//	go run ./loadtest -caddy ./caddy -n 10000 -notify
//
// Every loop is bounded in count and time, and all traffic stays on
// 127.0.0.1.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	caddyBin := flag.String("caddy", "./caddy", "Caddy binary built with the longpoll module")
	n := flag.Int("n", 10000, "long-poll clients to hold (at most about 19,000 under a 20,000 file limit)")
	interval := flag.Duration("interval", time.Second, "the longpoll interval")
	bodySize := flag.Int("body", 1024, "size of the upstream body in bytes")
	settle := flag.Duration("settle", 3*time.Second, "time to let held requests settle before measuring memory")
	notify := flag.Bool("notify", false, "announce the change with longpoll_notify (and poll every 30s)")
	flag.Parse()
	if *notify {
		*interval = 30 * time.Second
	}
	if err := run(*caddyBin, *n, *interval, *bodySize, *settle, *notify); err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

func run(caddyBin string, n int, interval time.Duration, bodySize int, settle time.Duration, notify bool) error {
	up, err := startUpstream(bodySize)
	if err != nil {
		return err
	}
	defer up.close()

	caddy, err := startCaddy(caddyBin, up.addr, interval, notify)
	if err != nil {
		return err
	}
	defer caddy.stop()

	etag, err := currentETag(caddy.addr)
	if err != nil {
		return err
	}
	time.Sleep(settle) // let the first request's watch go idle and Caddy settle
	rssIdle, err := rss(caddy.pid())
	if err != nil {
		return err
	}

	clients, err := holdClients(caddy.addr, etag, n)
	if err != nil {
		return err
	}
	time.Sleep(settle)
	rssHeld, err := rss(caddy.pid())
	if err != nil {
		return err
	}
	early := clients.answered.Load()
	hitsBefore := up.hits.Load()

	changedAt := up.change()
	if notify {
		changedAt = time.Now()
		if err := postNotify(caddy.addr); err != nil {
			return err
		}
	}
	if !clients.wait(30 * time.Second) {
		return fmt.Errorf("only %d of %d clients answered within 30s of the change", clients.answered.Load(), n)
	}
	from := up.servedNew()
	if notify {
		from = changedAt
	}
	report(n, early, rssIdle, rssHeld, from, changedAt, clients, up.hits.Load()-hitsBefore, notify)
	return nil
}

// postNotify announces the change of /resource to longpoll_notify.
func postNotify(addr string) error {
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/_longpoll/notify", strings.NewReader(`{"topics": ["/resource"]}`))
	req.Header.Set("Authorization", "Bearer "+notifySecret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusAccepted {
		return fmt.Errorf("notify: got %d %s, want 202", resp.StatusCode, body)
	}
	return nil
}

const notifySecret = "loadtest-secret"

func report(n int, early int64, rssIdle, rssHeld int64, served, changedAt time.Time, c *clientSet, polls int64, notify bool) {
	lat := make([]time.Duration, 0, n)
	var bad int
	for i := range c.done {
		if c.status[i] != http.StatusOK {
			bad++
			continue
		}
		lat = append(lat, c.done[i].Sub(served))
	}
	slices.Sort(lat)
	pct := func(p float64) time.Duration {
		if len(lat) == 0 {
			return 0
		}
		return lat[min(len(lat)-1, int(float64(len(lat))*p))]
	}
	fmt.Printf("held requests:            %d (answered before the change: %d)\n", n, early)
	fmt.Printf("caddy RSS idle / held:    %.1f MiB / %.1f MiB\n", mib(rssIdle), mib(rssHeld))
	fmt.Printf("memory per held request:  %.1f KiB\n", float64(rssHeld-rssIdle)/float64(n)/1024)
	from := "poll"
	if notify {
		from = "notify request"
	} else {
		fmt.Printf("change to poll:           %v (the upstream served the new body to Caddy's poll)\n", served.Sub(changedAt).Round(time.Millisecond))
	}
	fmt.Printf("released with 200:        %d of %d (other statuses: %d)\n", len(lat), n, bad)
	fmt.Printf("%s to client answered: p50 %v  p99 %v  max %v\n", from,
		pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), pct(1).Round(time.Millisecond))
	fmt.Printf("upstream requests during the release: %d\n", polls)
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

// upstream is the origin: one resource whose body changes once.
type upstream struct {
	srv      *http.Server
	addr     string
	hits     atomic.Int64
	mu       sync.Mutex
	body     []byte
	version  int
	changed  time.Time
	servedAt time.Time // when the changed body was first served
}

func startUpstream(size int) (*upstream, error) {
	u := &upstream{body: makeBody(size, 1), version: 1}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	u.addr = ln.Addr().String()
	u.srv = &http.Server{Handler: http.HandlerFunc(u.serve), ReadHeaderTimeout: 10 * time.Second}
	go u.srv.Serve(ln) //nolint:errcheck // ends at close
	return u, nil
}

func makeBody(size, version int) []byte {
	b := []byte(fmt.Sprintf(`{"version":%d,"pad":"`, version))
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	return append(b, '"', '}')
}

func (u *upstream) serve(w http.ResponseWriter, _ *http.Request) {
	u.hits.Add(1)
	u.mu.Lock()
	body := u.body
	if u.version > 1 && u.servedAt.IsZero() {
		u.servedAt = time.Now()
	}
	u.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

func (u *upstream) change() time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.version++
	u.body = makeBody(len(u.body), u.version)
	u.changed = time.Now()
	return u.changed
}

func (u *upstream) servedNew() time.Time {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.servedAt
}

func (u *upstream) close() { _ = u.srv.Close() }

// caddyProc is the Caddy under test.
type caddyProc struct {
	cmd  *exec.Cmd
	addr string
	dir  string
}

func startCaddy(bin, upstreamAddr string, interval time.Duration, notify bool) (*caddyProc, error) {
	bin, err := filepath.Abs(bin)
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "longpoll-load")
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	log {
		level ERROR
	}
}

http://127.0.0.1:%d {
%s	longpoll {
		interval %s
		max_waiters 100000
	}
	reverse_proxy %s
}
`, port, notifyRoute(notify), interval, upstreamAddr)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "caddy.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &caddyProc{cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", port), dir: dir}
	for range 100 {
		if conn, err := net.Dial("tcp", c.addr); err == nil {
			conn.Close()
			return c, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.stop()
	return nil, fmt.Errorf("caddy did not start; see %s", logf.Name())
}

func notifyRoute(notify bool) string {
	if !notify {
		return ""
	}
	return "\thandle /_longpoll/notify {\n\t\tlongpoll_notify {\n\t\t\tsecret " + notifySecret + "\n\t\t}\n\t}\n"
}

func (c *caddyProc) pid() int { return c.cmd.Process.Pid }

func (c *caddyProc) stop() {
	_ = c.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
	}
	os.RemoveAll(c.dir)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// rss reads a process's resident set size from /proc.
func rss(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}

func currentETag(addr string) (string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/resource", nil)
	req.Header.Set("Prefer", "wait=10")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if etag := resp.Header.Get("Etag"); etag != "" {
		return etag, nil
	}
	return "", fmt.Errorf("no ETag in the first answer (status %d)", resp.StatusCode)
}

// clientSet is N long-poll clients on raw connections, one goroutine each.
type clientSet struct {
	done     []time.Time
	status   []int
	answered atomic.Int64
	all      sync.WaitGroup
}

// holdClients opens n connections, paced in batches so that the listen
// backlog never overflows, and sends one held long-poll request on each.
func holdClients(addr, etag string, n int) (*clientSet, error) {
	c := &clientSet{done: make([]time.Time, n), status: make([]int, n)}
	req := fmt.Sprintf("GET /resource HTTP/1.1\r\nHost: %s\r\nPrefer: wait=60\r\nIf-None-Match: %s\r\n\r\n", addr, etag)
	const batch = 500
	for start := 0; start < n; start += batch {
		var dialed sync.WaitGroup
		var firstErr atomic.Value
		for i := start; i < min(start+batch, n); i++ {
			dialed.Add(1)
			c.all.Add(1)
			go func() {
				conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err == nil {
					_, err = io.WriteString(conn, req)
				}
				dialed.Done()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					c.all.Done()
					return
				}
				c.read(conn, i)
			}()
		}
		dialed.Wait()
		if err, _ := firstErr.Load().(error); err != nil {
			return nil, fmt.Errorf("connecting client: %w", err)
		}
	}
	return c, nil
}

func (c *clientSet) read(conn net.Conn, i int) {
	defer c.all.Done()
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil {
		c.done[i], c.status[i] = time.Now(), resp.StatusCode
	}
	c.answered.Add(1)
}

// wait waits for every client to finish, at most d.
func (c *clientSet) wait(d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan struct{})
	go func() { c.all.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}
