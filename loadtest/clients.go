// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// heldClients are N long-poll requests on raw connections, one goroutine
// each, that read their answer with as little work as the client can do:
// one read for a small answer, the status line and Content-Length parsed
// by hand.
type heldClients struct {
	conns    []net.Conn
	done     []time.Time
	status   []int
	answered atomic.Int64
	all      sync.WaitGroup
}

// holdClientsOn opens n connections to addr and sends one held request for
// path on each, with the header lines extra ("Name: value\r\n" each)
// besides. Set-up is paced in batches, each dialled in parallel and waited
// for before the next, so that the listen backlog never overflows.
func holdClientsOn(addr, path, etag, extra string, n int) (*heldClients, error) {
	c := &heldClients{conns: make([]net.Conn, n), done: make([]time.Time, n), status: make([]int, n)}
	req := fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nPrefer: wait=240\r\nIf-None-Match: %s\r\n%s\r\n", path, addr, etag, extra)
	const batch = 250
	for start := 0; start < n; start += batch {
		var dialed sync.WaitGroup
		var firstErr atomic.Value
		for i := start; i < min(start+batch, n); i++ {
			dialed.Add(1)
			c.all.Add(1)
			go func() {
				conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err == nil {
					c.conns[i] = conn
					_, err = conn.Write(req)
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
			c.close()
			return nil, fmt.Errorf("connecting client: %w", err)
		}
	}
	return c, nil
}

// read reads one response. The connection stays open: closing it is work
// for the server that belongs to neither the hold nor the release.
func (c *heldClients) read(conn net.Conn, i int) {
	defer c.all.Done()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Minute))
	status, err := readResponse(conn)
	if err == nil {
		c.done[i], c.status[i] = time.Now(), status
	}
	c.answered.Add(1)
}

// readResponse reads one HTTP/1.1 response, with a Content-Length or
// chunked (encode compressing on the fly sends no length), and returns its
// status.
func readResponse(conn net.Conn) (int, error) {
	buf := make([]byte, 4096)
	n := 0
	for {
		m, err := conn.Read(buf[n:])
		n += m
		if end := bytes.Index(buf[:n], []byte("\r\n\r\n")); end >= 0 {
			head := buf[:end]
			if len(head) < 12 || !bytes.HasPrefix(head, []byte("HTTP/1.1 ")) {
				return 0, errors.New("not an HTTP/1.1 response")
			}
			status, err := strconv.Atoi(string(head[9:12]))
			if err != nil {
				return 0, err
			}
			if chunked(head) {
				return status, readChunked(conn, buf, buf[end+4:n])
			}
			length, err := contentLength(head)
			if err != nil {
				return 0, err
			}
			for rest := length - (n - end - 4); rest > 0; {
				m, err := conn.Read(buf)
				if err != nil {
					return 0, err
				}
				rest -= m
			}
			return status, nil
		}
		if err != nil {
			return 0, err
		}
		if n == len(buf) {
			return 0, errors.New("response head over 4 KiB")
		}
	}
}

// chunked reports whether a response head says Transfer-Encoding: chunked.
func chunked(head []byte) bool {
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(name, []byte("Transfer-Encoding")) && bytes.Contains(bytes.ToLower(value), []byte("chunked")) {
			return true
		}
	}
	return false
}

// readChunked reads a chunked body, of which got was read with the head,
// to its last chunk: a response to one request ends there (no trailers).
func readChunked(conn net.Conn, buf, got []byte) error {
	const last = "0\r\n\r\n"
	tail := append([]byte(nil), got...)
	for !bytes.HasSuffix(tail, []byte(last)) {
		m, err := conn.Read(buf)
		if err != nil {
			return err
		}
		tail = append(tail, buf[:m]...)
		if len(tail) > 64 {
			tail = tail[len(tail)-64:]
		}
	}
	return nil
}

func contentLength(head []byte) (int, error) {
	for line := range bytes.SplitSeq(head, []byte("\r\n")) {
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok && bytes.EqualFold(name, []byte("Content-Length")) {
			return strconv.Atoi(string(bytes.TrimSpace(value)))
		}
	}
	return 0, nil // a 304 has none
}

// wait waits for every client to have its answer, at most d.
func (c *heldClients) wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() { c.all.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func (c *heldClients) close() {
	for _, conn := range c.conns {
		if conn != nil {
			conn.Close()
		}
	}
}

// latencies returns, sorted, the times from t0 to each answer with status
// 200, and how many were lost: another status, no answer, or an answer
// before t0 (a hold that did not last until the change).
func (c *heldClients) latencies(t0 time.Time) (lat []time.Duration, lost int) {
	lat = make([]time.Duration, 0, len(c.done))
	for i, t := range c.done {
		if c.status[i] != http.StatusOK || t.Before(t0) {
			lost++
			continue
		}
		lat = append(lat, t.Sub(t0))
	}
	slices.Sort(lat)
	return lat, lost
}

// clientCPU is this process's own user plus system CPU time.
func clientCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// longPollLoop runs clients long-polling until ctx ends: each asks with the
// ETag of its last answer and asks again as soon as it is answered, as a
// real client does. Client i polls paths[i%len(paths)].
func longPollLoop(ctx context.Context, base string, paths []string, clients int) (answers int64, errs int64) {
	tr := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	var a, e atomic.Int64
	for i := range clients {
		wg.Go(func() {
			url, etag := base+paths[i%len(paths)], ""
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				req.Header.Set("Prefer", "wait=25")
				if etag != "" {
					req.Header.Set("If-None-Match", etag)
				}
				resp, err := tr.RoundTrip(req)
				if err != nil {
					if ctx.Err() == nil {
						e.Add(1)
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					etag = resp.Header.Get("Etag")
					a.Add(1)
				case http.StatusNotModified:
					a.Add(1)
				default:
					e.Add(1)
				}
			}
		})
		if i%100 == 99 {
			time.Sleep(10 * time.Millisecond) // pace the first requests
		}
	}
	wg.Wait()
	return a.Load(), e.Load()
}

// shortPollLoop runs clients each sending a plain GET every period until
// ctx ends, each starting at a random point of the first period.
func shortPollLoop(ctx context.Context, url string, clients int, period time.Duration) (answers int64, errs int64) {
	tr := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	var a, e atomic.Int64
	for i := range clients {
		wg.Go(func() {
			offset := period * time.Duration(i) / time.Duration(clients)
			t := time.NewTimer(offset)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				t.Reset(period)
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					if ctx.Err() == nil {
						e.Add(1)
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					a.Add(1)
				} else {
					e.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return a.Load(), e.Load()
}

// throughput sends plain GETs to url from conc connections for d, as fast
// as they are answered, and returns how many were answered with 200 and
// the latency of each.
func throughput(url string, conc int, d time.Duration) (ok int, lat []time.Duration, errs int) {
	tr := &http.Transport{MaxIdleConnsPerHost: conc, DisableCompression: true}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range conc {
		wg.Go(func() {
			var mine []time.Duration
			bad := 0
			for ctx.Err() == nil {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				start := time.Now()
				resp, err := tr.RoundTrip(req)
				if err != nil {
					if ctx.Err() == nil {
						bad++
					}
					continue
				}
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					if ctx.Err() == nil {
						bad++
					}
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(lat)
	return len(lat), lat, errs
}

// pct is the p-th quantile of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}
