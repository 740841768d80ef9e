// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// The streams phase: N streams open on one key, over Server-Sent Events
// and over WebSocket, then one change; Caddy with the module side by side
// with floors in the same run: a minimal net/http SSE server (one goroutine
// per stream, writing each event and flushing) and a minimal server of the
// same WebSocket library, both in the floor process (routes /sse and /ws).

// Stream routes of the floor. Each waits on the same shared channel as the
// floor's long-polls, and writes the new body when it is closed.
func floorStreams(mux *http.ServeMux, current func() (body []byte, changed <-chan struct{})) {
	mux.HandleFunc("GET /sse", func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		w.Header().Set("Content-Type", "text/event-stream")
		w.Header().Set("Cache-Control", "no-cache")
		body, changed := current()
		if writeEvent(w, rc, body) != nil {
			return
		}
		for {
			select {
			case <-changed:
				body, changed = current()
				if writeEvent(w, rc, body) != nil {
					return
				}
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) {
		conn, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer conn.CloseNow()
		ctx := conn.CloseRead(r.Context())
		body, changed := current()
		if conn.Write(ctx, websocket.MessageText, body) != nil {
			return
		}
		for {
			select {
			case <-changed:
				body, changed = current()
				if conn.Write(ctx, websocket.MessageText, body) != nil {
					return
				}
			case <-ctx.Done():
				return
			}
		}
	})
}

func writeEvent(w http.ResponseWriter, rc *http.ResponseController, body []byte) error {
	if _, err := fmt.Fprintf(w, "data: %s\n\n", body); err != nil {
		return err
	}
	return rc.Flush()
}

// streamClients are N streams on raw connections, one goroutine each, that
// look for a marker (the new version) in what they read, with as little
// work as the client can do.
type streamClients struct {
	bytes atomic.Int64 // read, over every stream
	conns []net.Conn
	open  sync.WaitGroup // every stream has its first version
	round atomic.Pointer[round]
}

// round is one change: the marker of its version, and when each stream
// got it (Unix nanoseconds; zero until then).
type round struct {
	marker []byte
	got    []atomic.Int64
	left   sync.WaitGroup
	seen   atomic.Int64
}

// wsHandshake is a WebSocket upgrade request, with a fixed key: the client
// does not check the server's answer beyond reading it.
const wsHandshake = "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// openStreams opens n streams of delivery ("sse" or "websocket") on path
// of addr, paced in batches, and waits for each to get its first version
// (first, a marker of it).
func openStreams(addr, path, delivery string, n int, first []byte) (*streamClients, error) {
	c := &streamClients{conns: make([]net.Conn, n)}
	var req []byte
	if delivery == "sse" {
		req = fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n\r\n", path, addr)
	} else {
		req = fmt.Appendf(nil, wsHandshake, path, addr)
	}
	const batch = 250
	for start := 0; start < n; start += batch {
		var dialed sync.WaitGroup
		var firstErr atomic.Value
		for i := start; i < min(start+batch, n); i++ {
			dialed.Add(1)
			c.open.Add(1)
			go func() {
				conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err == nil {
					c.conns[i] = conn
					_, err = conn.Write(req)
				}
				dialed.Done()
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					c.open.Done()
					return
				}
				c.read(conn, i, first)
			}()
		}
		dialed.Wait()
		if err, _ := firstErr.Load().(error); err != nil {
			c.close()
			return nil, fmt.Errorf("connecting a stream: %w", err)
		}
	}
	done := make(chan struct{})
	go func() { c.open.Wait(); close(done) }()
	select {
	case <-done:
		return c, nil
	case <-time.After(120 * time.Second):
		c.close()
		return nil, errors.New("streams did not all get their first version within 120s")
	}
}

// read reads a stream: first until the first version's marker, then, for
// each round the harness starts, until that round's marker.
func (c *streamClients) read(conn net.Conn, i int, first []byte) {
	buf := make([]byte, 0, 8192)
	tmp := make([]byte, 4096)
	opened := false
	var last *round
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Minute))
	for {
		n, err := conn.Read(tmp)
		c.bytes.Add(int64(n))
		buf = append(buf, tmp[:n]...)
		if !opened && bytes.Contains(buf, first) {
			opened = true
			buf = buf[:0]
			c.open.Done()
		}
		if r := c.round.Load(); opened && r != nil && r != last && bytes.Contains(buf, r.marker) {
			r.got[i].Store(time.Now().UnixNano())
			r.seen.Add(1)
			r.left.Done()
			last = r
			buf = buf[:0]
		}
		if err != nil {
			if !opened {
				c.open.Done()
			}
			return
		}
		if len(buf) > 1<<20 {
			buf = buf[len(buf)-4096:] // only the tail matters
		}
	}
}

// start begins a round: the streams now look for marker.
func (c *streamClients) start(marker []byte) *round {
	r := &round{marker: marker, got: make([]atomic.Int64, len(c.conns))}
	r.left.Add(len(c.conns))
	c.round.Store(r)
	return r
}

// wait waits up to d for every stream to get the round's version.
func (r *round) wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() { r.left.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

func (c *streamClients) close() {
	for _, conn := range c.conns {
		if conn != nil {
			conn.Close()
		}
	}
}

// latencies appends the times from t0 to each stream's new version, and
// returns how many streams did not get it.
func (r *round) latencies(t0 time.Time, lat []time.Duration) ([]time.Duration, int) {
	lost := 0
	for i := range r.got {
		t := r.got[i].Load()
		if t == 0 || t < t0.UnixNano() {
			lost++
			continue
		}
		lat = append(lat, time.Duration(t-t0.UnixNano()))
	}
	return lat, lost
}

// versionMarker is what a stream carries of the body of version v.
func versionMarker(v int) []byte { return fmt.Appendf(nil, `"version":%d,`, v) }

// streamRun measures n streams of delivery on p (floor or Caddy): memory per
// stream, the time from the change's announcement t to each stream's new
// version, the streams lost, and the server's CPU for the delivery. For the
// module, change first changes the upstream, which t then announces (a
// notification), as in the fan-out phase.
func streamRun(o options, p *proc, path, delivery string, n int, change, t trigger, prof *profiler) (fanout, error) {
	return streamRunMarked(o, p, path, delivery, n, versionMarker, change, t, prof)
}

// streamRunMarked is streamRun, with marker saying what a stream carries
// of each version.
func streamRunMarked(o options, p *proc, path, delivery string, n int, marker func(int) []byte,
	change, t trigger, prof *profiler,
) (fanout, error) {
	f := fanout{n: n}
	time.Sleep(o.settle)
	var err error
	if f.rssIdle, err = rss(p.pid()); err != nil {
		return f, err
	}
	cpu0, err := cpuTime(p.pid())
	if err != nil {
		return f, err
	}
	cc0 := clientCPU()
	clients, err := openStreams(p.addr, path, delivery, n, marker(1))
	if err != nil {
		return f, err
	}
	defer clients.close()
	time.Sleep(o.settle)
	f.clientHold = clientCPU() - cc0
	if f.rssHeld, err = rss(p.pid()); err != nil {
		return f, err
	}
	cpu1, err := cpuTime(p.pid())
	if err != nil {
		return f, err
	}
	f.cpuHold = cpu1 - cpu0
	if prof != nil {
		prof.heap()
		prof.startCPU()
	}
	cc1 := clientCPU()
	bytes0 := clients.bytes.Load()
	for k := range o.streamChanges {
		r := clients.start(marker(k + 2))
		if change != nil {
			if err := change(); err != nil {
				return f, err
			}
		}
		t0 := time.Now()
		if err := t(); err != nil {
			return f, err
		}
		if !r.wait(60 * time.Second) {
			fmt.Fprintf(os.Stderr, "%s: %d of %d streams got change %d within 60s\n", delivery, r.seen.Load(), n, k+1)
		}
		var lost int
		f.lat, lost = r.latencies(t0, f.lat)
		f.lost += lost
		time.Sleep(200 * time.Millisecond)
	}
	f.clientRel = (clientCPU() - cc1) / time.Duration(o.streamChanges)
	f.bytesRel = float64(clients.bytes.Load()-bytes0) / float64(o.streamChanges)
	slices.Sort(f.lat)
	cpu2, err := cpuTime(p.pid())
	if err != nil {
		return f, err
	}
	f.cpuRel = (cpu2 - cpu1) / time.Duration(o.streamChanges)
	if prof != nil {
		prof.wait()
	}
	return f, nil
}

// streamsPhase runs, for each delivery and N, the floor and Caddy, o.repeat
// times each, alternating, and prints the medians.
func streamsPhase(o options) error {
	for _, delivery := range o.deliveries {
		if delivery != "sse" && delivery != "websocket" {
			return fmt.Errorf("-deliveries: %q is neither sse nor websocket", delivery)
		}
		var all []fanoutRuns
		for _, n := range o.streamNs {
			runs := fanoutRuns{n: n}
			for i := range o.repeat {
				floorFirst := i%2 == 0
				for k := range 2 {
					if (k == 0) == floorFirst {
						f, err := streamFloor(o, delivery, n)
						if err != nil {
							return fmt.Errorf("floor, %d %s streams: %w", n, delivery, err)
						}
						runs.floor = append(runs.floor, f)
					} else {
						f, err := streamModule(o, delivery, n)
						if err != nil {
							return fmt.Errorf("module, %d %s streams: %w", n, delivery, err)
						}
						runs.module = append(runs.module, f)
					}
				}
				fmt.Fprintf(os.Stderr, "%d %s streams, run %d of %d: done\n", n, delivery, i+1, o.repeat)
			}
			all = append(all, runs)
		}
		fmt.Printf("\n## Streams (%s): one key, medians of %d runs each, the servers alternating\n", delivery, o.repeat)
		printStreams(all)
	}
	return nil
}

func streamFloor(o options, delivery string, n int) (fanout, error) {
	p, err := startChild("floor", o.body)
	if err != nil {
		return fanout{n: n}, err
	}
	defer p.stop()
	path := "/sse"
	if delivery == "websocket" {
		path = "/ws"
	}
	return streamRun(o, p, path, delivery, n, nil, func() error {
		return post("http://"+p.addr+"/_change", "", "", http.StatusNoContent)
	}, nil)
}

func streamModule(o options, delivery string, n int) (fanout, error) {
	st, err := startStack(o, 30*time.Second, o.pprof != "")
	if err != nil {
		return fanout{n: n}, err
	}
	defer st.stop()
	var prof *profiler
	if o.pprof != "" {
		prof = &profiler{dir: o.pprof, admin: fmt.Sprintf("127.0.0.1:%d", st.ports.admin), tag: fmt.Sprintf("%s-%d", delivery, n)}
	}
	notify := fmt.Sprintf("http://127.0.0.1:%d/", st.ports.notify)
	return streamRun(o, st.caddy, "/resource", delivery, n, func() error {
		return post("http://"+st.up.addr+"/_change", "", "", http.StatusNoContent)
	}, func() error {
		return post(notify, `{"topics": ["/resource"]}`, notifySecret, http.StatusAccepted)
	}, prof)
}

// streamFigures are the figures of the streams tables.
var streamFigures = []struct {
	name  string
	ratio bool
	get   func(f fanout) float64
	text  func(v float64) string
}{
	{"memory per open stream (RSS)", true, figures[0].get, figures[0].text},
	{"change to event p50", true, figures[1].get, msText},
	{"change to event p99", true, figures[2].get, msText},
	{"change to event max", true, figures[3].get, msText},
	{"streams lost", false, figures[4].get, figures[4].text},
	{"server CPU, opening", true, figures[5].get, msText},
	{"server CPU, delivery", true, figures[6].get, msText},
	{"client CPU, delivery", false, figures[8].get, msText},
}

func printStreams(all []fanoutRuns) {
	fmt.Println()
	fmt.Println("| Figure | Streams | Floor | Caddy + longpoll | Ratio |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, runs := range all {
		for _, fig := range streamFigures {
			a, b := median(runs.floor, fig.get), median(runs.module, fig.get)
			ratio := ""
			if fig.ratio && a > 0 {
				ratio = fmt.Sprintf("%.2f×", b/a)
			}
			fmt.Printf("| %s | %d | %s | %s | %s |\n", fig.name, runs.n, fig.text(a), fig.text(b), ratio)
		}
		idleHeld := func(fs []fanout) string {
			return fmt.Sprintf("%.0f → %.0f MiB",
				median(fs, func(f fanout) float64 { return float64(f.rssIdle) / (1 << 20) }),
				median(fs, func(f fanout) float64 { return float64(f.rssHeld) / (1 << 20) }))
		}
		fmt.Printf("| RSS idle → open | %d | %s | %s | |\n", runs.n, idleHeld(runs.floor), idleHeld(runs.module))
	}
}

// deltasPhase measures one change of one item in a JSON list of
// o.deltaBody bytes delivered to n SSE streams, as full versions and as
// JSON Patch deltas, o.repeat times each, alternating: bytes on the wire
// and the server's CPU per change, and the time to the last stream.
func deltasPhase(o options) error {
	o.body = o.deltaBody
	for _, n := range o.streamNs {
		var full, deltas []fanout
		for i := range o.repeat {
			for k := range 2 {
				withDeltas := (k == 0) == (i%2 == 0)
				f, err := deltaRun(o, n, withDeltas)
				if err != nil {
					return fmt.Errorf("%d SSE streams (deltas %v): %w", n, withDeltas, err)
				}
				if withDeltas {
					deltas = append(deltas, f)
				} else {
					full = append(full, f)
				}
			}
			fmt.Fprintf(os.Stderr, "%d SSE streams of a %d-byte list, run %d of %d: done\n", n, o.body, i+1, o.repeat)
		}
		fmt.Printf("\n## Deltas: one item of a %d-byte JSON list changed, %d SSE streams, medians of %d runs each, alternating\n\n", o.body, n, o.repeat)
		fmt.Println("| Figure | Full versions | JSON Patch deltas | Ratio |")
		fmt.Println("|---|---:|---:|---:|")
		for _, fig := range []struct {
			name string
			get  func(fanout) float64
			text func(float64) string
		}{
			{"bytes read per change, all streams", func(f fanout) float64 { return f.bytesRel }, func(v float64) string { return fmt.Sprintf("%.2f MB", v/1e6) }},
			{"bytes read per change, per stream", func(f fanout) float64 { return f.bytesRel / float64(n) }, func(v float64) string { return fmt.Sprintf("%.0f B", v) }},
			{"server CPU per change", figures[6].get, msText},
			{"change to event p50", figures[1].get, msText},
			{"change to event p99", figures[2].get, msText},
			{"streams lost", figures[4].get, figures[4].text},
		} {
			a, b := median(full, fig.get), median(deltas, fig.get)
			ratio := ""
			if a > 0 {
				ratio = fmt.Sprintf("%.3f×", b/a)
			}
			fmt.Printf("| %s | %s | %s | %s |\n", fig.name, fig.text(a), fig.text(b), ratio)
		}
	}
	return nil
}

// deltaRun is one run of the deltas phase.
func deltaRun(o options, n int, withDeltas bool) (fanout, error) {
	st, err := startStack(o, 30*time.Second, false)
	if err != nil {
		return fanout{n: n}, err
	}
	defer st.stop()
	path := "/list"
	if withDeltas {
		path += "?deltas=json-patch"
	}
	notify := fmt.Sprintf("http://127.0.0.1:%d/", st.ports.notify)
	return streamRunMarked(o, st.caddy, path, "sse", n, listMarker, func() error {
		return post("http://"+st.up.addr+"/_change", "", "", http.StatusNoContent)
	}, func() error {
		return post(notify, `{"topics": ["/list"]}`, notifySecret, http.StatusAccepted)
	}, nil)
}
