// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The cluster phase: Caddy instances in front of one upstream whose every
// key changes every 5 s, with clients long-polling 100 keys spread over
// the instances, each instance alone, and all of them in a cluster on a
// redis-server of their own; and one instance alone, for the time from a
// change to the answers.

const (
	clusterClients = 3000
	clusterKeys    = 100
	clusterEvery   = 5 * time.Second
)

// clusterRun is one run of the phase.
type clusterRun struct {
	name      string
	instances int
	cluster   bool
	hits      int64           // upstream requests during the run
	lat       []time.Duration // from each change to each client's answer with it
	last      []time.Duration // from each change to its last client's answer
	changes   int
	errs      int64
	redis     redisStats // traffic during the run
}

func clusterPhase(o options) error {
	runs := []*clusterRun{
		{name: "1 instance", instances: 1},
		{name: "3 instances, no cluster", instances: 3},
		{name: "3 instances, cluster on Redis", instances: 3, cluster: true},
	}
	for _, r := range runs {
		if err := r.run(o); err != nil {
			return fmt.Errorf("%s: %w", r.name, err)
		}
		fmt.Fprintf(os.Stderr, "cluster phase, %s: done\n", r.name)
	}
	fmt.Printf("\n## Cluster: %d clients on %d keys for %v at interval 1s, every key changing every %v\n\n", clusterClients, clusterKeys, o.sustain, clusterEvery)
	fmt.Println("| Run | Upstream requests per interval | Change to answer p50 | p99 | Change to last client, median | Errors |")
	fmt.Println("|---|---:|---:|---:|---:|---:|")
	for _, r := range runs {
		slices.Sort(r.lat)
		slices.Sort(r.last)
		fmt.Printf("| %s | %.1f | %s | %s | %s | %d |\n", r.name, float64(r.hits)/o.sustain.Seconds(),
			msText(msOf(pct(r.lat, .5))), msText(msOf(pct(r.lat, .99))), msText(msOf(pct(r.last, .5))), r.errs)
	}
	one, cl := runs[0], runs[2]
	fmt.Printf("\nCluster against one instance: p50 %.2f×, p99 %.2f×.\n",
		float64(pct(cl.lat, .5))/float64(max(pct(one.lat, .5), 1)), float64(pct(cl.lat, .99))/float64(max(pct(one.lat, .99), 1)))
	if n := cl.changes * clusterKeys; n > 0 {
		fmt.Printf("Redis per change of one key: %.1f commands, %.0f bytes in, %.0f bytes out (%d key changes).\n",
			float64(cl.redis.commands)/float64(n), float64(cl.redis.in)/float64(n), float64(cl.redis.out)/float64(n), n)
	}
	return nil
}

// run starts the servers, runs the clients for o.sustain, and stops them.
func (r *clusterRun) run(o options) error {
	up, err := startChild("upstream", o.body)
	if err != nil {
		return err
	}
	defer up.stop()
	var rd *redisServer
	clusterURL = ""
	if r.cluster {
		if rd, err = startRedisServer(); err != nil {
			return err
		}
		defer rd.stop()
		clusterURL = fmt.Sprintf("redis://127.0.0.1:%d/0", rd.port)
		defer func() { clusterURL = "" }()
	}
	var bases []string
	for range r.instances {
		c, ports, err := startCaddy(o.caddy, up.addr, time.Second, false)
		if err != nil {
			return err
		}
		defer c.stop()
		bases = append(bases, fmt.Sprintf("http://127.0.0.1:%d", ports.longpoll))
	}
	time.Sleep(o.settle)

	var (
		mu      sync.Mutex
		version = int64(1)
		changed = map[int64]time.Time{}
	)
	clients := make([]*versionClient, clusterClients)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tr := &http.Transport{MaxIdleConnsPerHost: clusterClients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	var wg sync.WaitGroup
	for i := range clients {
		clients[i] = &versionClient{seen: map[int64]time.Time{}}
		url := fmt.Sprintf("%s/k/%d", bases[i%len(bases)], i%clusterKeys)
		wg.Go(func() { clients[i].run(ctx, tr, url, &r.errs) })
		if i%100 == 99 {
			time.Sleep(10 * time.Millisecond) // pace the first requests
		}
	}
	time.Sleep(3 * time.Second) // every client has its first version
	var before, after redisStats
	if rd != nil {
		if before, err = rd.stats(); err != nil {
			return err
		}
	}
	st0, err := stats(up.addr)
	if err != nil {
		return err
	}
	end := time.Now().Add(o.sustain)
	for time.Now().Add(clusterEvery).Before(end) {
		time.Sleep(clusterEvery)
		mu.Lock()
		version++
		changed[version] = time.Now()
		mu.Unlock()
		if err := post("http://"+up.addr+"/_change", "", "", http.StatusNoContent); err != nil {
			return err
		}
		r.changes++
	}
	time.Sleep(time.Until(end))
	st1, err := stats(up.addr)
	if err != nil {
		return err
	}
	if rd != nil {
		if after, err = rd.stats(); err != nil {
			return err
		}
		r.redis = redisStats{after.commands - before.commands, after.in - before.in, after.out - before.out}
	}
	r.hits = st1.Hits - st0.Hits
	cancel()
	wg.Wait()
	for v, at := range changed {
		var last time.Duration
		for _, c := range clients {
			if got, ok := c.seen[v]; ok {
				d := got.Sub(at)
				r.lat = append(r.lat, d)
				last = max(last, d)
			}
		}
		r.last = append(r.last, last)
	}
	return nil
}

// versionClient long-polls one URL, with a Host header every instance
// shares (as behind a load balancer), recording when it first got each
// version.
type versionClient struct {
	seen map[int64]time.Time // written by its goroutine, read after it ends
}

var versionField = []byte(`"version":`)

func (c *versionClient) run(ctx context.Context, tr *http.Transport, url string, errs *int64) {
	etag := ""
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Host = "127.0.0.1" // the site's host, with no port: one key on every instance
		req.Header.Set("Prefer", "wait=25")
		if etag != "" {
			req.Header.Set("If-None-Match", etag)
		}
		resp, err := tr.RoundTrip(req)
		if err != nil {
			if ctx.Err() == nil {
				atomic.AddInt64(errs, 1)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusOK:
			etag = resp.Header.Get("Etag")
			if i := bytes.Index(body, versionField); i >= 0 {
				rest := body[i+len(versionField):]
				if j := bytes.IndexByte(rest, ','); j > 0 {
					if v, err := strconv.ParseInt(string(rest[:j]), 10, 64); err == nil {
						if _, ok := c.seen[v]; !ok {
							c.seen[v] = time.Now()
						}
					}
				}
			}
		case http.StatusNotModified:
		default:
			if ctx.Err() == nil {
				atomic.AddInt64(errs, 1)
			}
		}
	}
}

// redisServer is a redis-server of the phase's own, on a loopback port.
type redisServer struct {
	port int
	cmd  *exec.Cmd
}

func startRedisServer() (*redisServer, error) {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return nil, errors.New("the cluster phase needs redis-server (Debian: apt-get install redis-server)")
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	r := &redisServer{port: port, cmd: cmd}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := r.stats(); err == nil {
			return r, nil
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, errors.New("redis-server did not answer within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *redisServer) stop() {
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
}

// redisStats are a Redis server's counters.
type redisStats struct{ commands, in, out int64 }

// stats reads the server's INFO stats.
func (r *redisServer) stats() (redisStats, error) {
	var st redisStats
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), time.Second)
	if err != nil {
		return st, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("INFO stats\r\n")); err != nil {
		return st, err
	}
	br := bufio.NewReader(conn)
	head, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		return st, fmt.Errorf("INFO: %q %v", head, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(head[1:]))
	if err != nil {
		return st, err
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(br, body); err != nil {
		return st, err
	}
	for line := range strings.SplitSeq(string(body), "\r\n") {
		name, val, _ := strings.Cut(line, ":")
		v, _ := strconv.ParseInt(val, 10, 64)
		switch name {
		case "total_commands_processed":
			st.commands = v
		case "total_net_input_bytes":
			st.in = v
		case "total_net_output_bytes":
			st.out = v
		}
	}
	return st, nil
}
