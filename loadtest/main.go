// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

// Command loadtest measures Caddy with the longpoll module side by side with
// a floor: a minimal Go net/http server whose handler blocks on a shared
// channel until a change, which is what Go itself costs per held request.
//
//	go run ./loadtest                      # builds ./caddy with build.sh, runs everything
//	go run ./loadtest -caddy ./caddy -n 1000 -phases fanout
//
// It runs, each server in a process of its own on loopback:
//
//   - fanout, for each N: N requests held on one key, then one change,
//     announced by a request (the floor's POST /_change; the module's
//     longpoll_notify). Memory per held request (RSS held minus idle, over
//     N), the time from that request to each client's full answer, the
//     answers lost, and the server's CPU for the hold and the release, for
//     the floor and for Caddy with the module.
//   - upstream: 1,000 clients long-polling one key (then 10 keys) at
//     interval 1s, the upstream changing every 5 s, and the upstream
//     requests they cause, against the same clients short-polling every
//     second through plain reverse_proxy.
//   - passthrough: ordinary requests (no Prefer) through a route with
//     longpoll and the same route without it, in alternating rounds:
//     throughput, latency and Caddy's CPU per request.
//   - streams, for each delivery (SSE, WebSocket) and N: N streams open
//     on one key, then five changes, each delivered to every stream before
//     the next; side by side with a minimal net/http SSE server and a
//     minimal server of the same WebSocket library. Memory per open
//     stream, the time from each change to each stream's event (pooled),
//     the streams lost, and the server's CPU for the opening and per
//     change.
//   - compress, for each N of -compress-n: N requests held on one key of a
//     20 KiB JSON list, each with Accept-Encoding: gzip, released by one
//     change, under three configs: no compression, encode gzip zstd in
//     front compressing each answer (longpoll's compress off), and the
//     module's default behind that encode (each version compressed once).
//     The server's CPU for the release, the fan-out, the bytes per answer.
//
// CPU is each thread's time on a CPU (/proc/<pid>/task/*/schedstat), in
// nanoseconds.
//
// The client runs here too and shares the machine's cores with the
// servers: its own CPU is reported beside the server's. Every loop is
// bounded in count and time.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	caddy    string
	ns       []int
	body     int
	settle   time.Duration
	sustain  time.Duration
	shortFor time.Duration
	rounds   int
	repeat   int
	phases   map[string]bool
	pprof    string
	streamNs []int
	// changes per streams run; the delivery figures are per change
	streamChanges int
	deliveries    []string
	deltaBody     int // size of the list of the deltas phase
	compressNs    []int
	compressBody  int // size of the list of the compress phase
	// what measureFanout's clients ask for: default /resource, nothing more
	holdPath, holdHeader string
}

func main() {
	var o options
	role := flag.String("role", "", "internal: run as the upstream or the floor server")
	flag.StringVar(&o.caddy, "caddy", "", "Caddy binary built with the module (default: build ./caddy with build.sh)")
	ns := flag.String("n", "1000,10000,19000", "held requests per fan-out run, comma-separated (at most about 19,000 under a 20,000 file limit)")
	sns := flag.String("streams", "1000,10000", "open streams per run of the streams phase, comma-separated")
	flag.IntVar(&o.streamChanges, "stream-changes", 5, "changes delivered per run of the streams phase (latencies pooled, CPU per change)")
	flag.StringVar(&writeIdle, "write-idle", "", "Caddy's write_idle timeout (a duration; -1s: off); default: Caddy's own, 1m")
	dl := flag.String("deliveries", "sse,websocket", "deliveries of the streams phase, comma-separated")
	flag.IntVar(&o.body, "body", 1024, "size of the upstream body in bytes")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "time to let the server settle before reading its memory")
	flag.DurationVar(&o.sustain, "sustain", 60*time.Second, "length of each long-polling run of the upstream phase")
	flag.DurationVar(&o.shortFor, "shortpoll", 10*time.Second, "length of the short-polling run of the upstream phase")
	flag.IntVar(&o.repeat, "repeat", 3, "fan-out runs per N and server (the table shows medians)")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds of 2s per route in the pass-through phase")
	phases := flag.String("phases", "fanout,upstream,passthrough,streams", "phases to run: fanout, upstream, passthrough, streams, deltas, cluster, compress")
	flag.IntVar(&o.deltaBody, "delta-body", 200<<10, "size of the JSON list of the deltas phase, in bytes")
	cns := flag.String("compress-n", "1000,10000", "held requests per run of the compress phase, comma-separated")
	flag.IntVar(&o.compressBody, "compress-body", 20<<10, "size of the JSON list of the compress phase, in bytes")
	flag.StringVar(&o.pprof, "pprof", "", "folder to save Caddy's heap profile (held) and CPU profile (release) in, per N")
	flag.Parse()

	var err error
	switch *role {
	case "upstream":
		err = runUpstream(o.body)
	case "floor":
		err = runFloor(o.body)
	case "":
		o.phases = map[string]bool{}
		for p := range strings.SplitSeq(*phases, ",") {
			o.phases[strings.TrimSpace(p)] = true
		}
		o.ns, o.streamNs, o.compressNs = counts("-n", *ns), counts("-streams", *sns), counts("-compress-n", *cns)
		o.deliveries = strings.Split(*dl, ",")
		err = run(o)
	default:
		err = fmt.Errorf("unknown role %q", *role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
}

// counts reads a comma-separated list of counts, or exits.
func counts(flagName, list string) []int {
	var out []int
	for s := range strings.SplitSeq(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "loadtest: %s: %q is not a count\n", flagName, s)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

func run(o options) error {
	if err := checkFileLimit(slices.Concat(o.ns, o.streamNs, o.compressNs)); err != nil {
		return err
	}
	if o.caddy == "" {
		fmt.Fprintln(os.Stderr, "building ./caddy with build.sh")
		cmd := exec.Command("bash", "./build.sh")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("build.sh (run from the repository's root): %w", err)
		}
		o.caddy = "./caddy"
	}
	bin, err := filepath.Abs(o.caddy)
	if err != nil {
		return err
	}
	o.caddy = bin
	if o.pprof != "" {
		if err := os.MkdirAll(o.pprof, 0o755); err != nil {
			return err
		}
	}
	fmt.Println(machine())
	if o.phases["fanout"] {
		var all []fanoutRuns
		for _, n := range o.ns {
			runs := fanoutRuns{n: n}
			for i := range o.repeat {
				var floor, mod fanout
				var ferr, merr error
				if i%2 == 0 {
					floor, ferr = fanoutFloor(o, n)
					mod, merr = fanoutModule(o, n, i)
				} else {
					mod, merr = fanoutModule(o, n, i)
					floor, ferr = fanoutFloor(o, n)
				}
				if ferr != nil {
					return fmt.Errorf("floor, %d held: %w", n, ferr)
				}
				if merr != nil {
					return fmt.Errorf("module, %d held: %w", n, merr)
				}
				runs.floor, runs.module = append(runs.floor, floor), append(runs.module, mod)
				fmt.Fprintf(os.Stderr, "%d held, run %d of %d: done\n", n, i+1, o.repeat)
			}
			all = append(all, runs)
		}
		fmt.Printf("\n## Fan-out: one key, medians of %d runs each, the servers alternating\n", o.repeat)
		printFanout(all)
	}
	if o.phases["upstream"] {
		if err := upstreamPhase(o); err != nil {
			return fmt.Errorf("upstream phase: %w", err)
		}
	}
	if o.phases["passthrough"] {
		if err := passthroughPhase(o); err != nil {
			return fmt.Errorf("pass-through phase: %w", err)
		}
	}
	if o.phases["streams"] {
		if err := streamsPhase(o); err != nil {
			return fmt.Errorf("streams phase: %w", err)
		}
	}
	if o.phases["cluster"] {
		if err := clusterPhase(o); err != nil {
			return fmt.Errorf("cluster phase: %w", err)
		}
	}
	if o.phases["deltas"] {
		if err := deltasPhase(o); err != nil {
			return fmt.Errorf("deltas phase: %w", err)
		}
	}
	if o.phases["compress"] {
		if err := compressPhase(o); err != nil {
			return fmt.Errorf("compress phase: %w", err)
		}
	}
	return nil
}

// checkFileLimit refuses counts the file limit cannot hold: each held
// request is one file in the client and one in the server.
func checkFileLimit(ns []int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	for _, n := range ns {
		if uint64(n)+500 > lim.Cur {
			return fmt.Errorf("-n %d needs %d files, and this process may open %d", n, n+500, lim.Cur)
		}
	}
	return nil
}

func machine() string {
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if name, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(name), ":"))
				break
			}
		}
	}
	return fmt.Sprintf("# loadtest on %s: %s, %d CPUs, %s", host, cpu, numCPU(), time.Now().Format(time.DateOnly))
}

// fanout is one server's figures for N held requests.
type fanout struct {
	n                int
	rssIdle, rssHeld int64
	cpuHold, cpuRel  time.Duration // the server's
	clientHold       time.Duration // the client's own CPU while holding
	clientRel        time.Duration // the client's own CPU during the release
	lat              []time.Duration
	lost             int
	upstreamHits     int64   // during the release (module only)
	bytesRel         float64 // bytes the clients read per change (streams)
}

// fanoutRuns are the runs for one N.
type fanoutRuns struct {
	n             int
	floor, module []fanout
}

// trigger announces the change; it is timed from just before it is sent.
type trigger func() error

func fanoutFloor(o options, n int) (fanout, error) {
	p, err := startChild("floor", o.body)
	if err != nil {
		return fanout{n: n}, err
	}
	defer p.stop()
	// one request answered at once, as the module's first one is
	if _, err := currentETag(p.addr); err != nil {
		return fanout{n: n}, err
	}
	return measureFanout(o, p, n, `"v1"`, nil, func() error {
		return post("http://"+p.addr+"/_change", "", "", http.StatusNoContent)
	}, nil)
}

func fanoutModule(o options, n, run int) (fanout, error) {
	st, err := startStack(o, 30*time.Second, o.pprof != "")
	if err != nil {
		return fanout{n: n}, err
	}
	defer st.stop()
	up, c, ports := st.up, st.caddy, st.ports
	etag, err := currentETag(c.addr)
	if err != nil {
		return fanout{n: n}, err
	}
	var prof *profiler
	if o.pprof != "" {
		prof = &profiler{dir: o.pprof, admin: fmt.Sprintf("127.0.0.1:%d", ports.admin), tag: fmt.Sprintf("%d-run%d", n, run+1)}
	}
	notify := fmt.Sprintf("http://127.0.0.1:%d/", ports.notify)
	var before upstreamStats
	change := func() error {
		if before, err = stats(up.addr); err != nil {
			return err
		}
		return post("http://"+up.addr+"/_change", "", "", http.StatusNoContent)
	}
	f, err := measureFanout(o, c, n, etag, change, func() error {
		return post(notify, `{"topics": ["/resource"]}`, notifySecret, http.StatusAccepted)
	}, prof)
	after, serr := stats(up.addr)
	f.upstreamHits = after.Hits - before.Hits
	return f, errors.Join(err, serr)
}

// measureFanout holds n requests on p, then releases them with t, timed
// from just before it is sent. For the module, change first changes the
// upstream, which t then announces.
func measureFanout(o options, p *proc, n int, etag string, change, t trigger, prof *profiler) (fanout, error) {
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
	path := o.holdPath
	if path == "" {
		path = "/resource"
	}
	clients, err := holdClientsOn(p.addr, path, etag, o.holdHeader, n)
	if err != nil {
		return f, err
	}
	defer clients.close()
	time.Sleep(o.settle)
	f.clientHold = clientCPU() - cc0
	if f.rssHeld, err = rss(p.pid()); err != nil {
		return f, err
	}
	if prof != nil {
		prof.heap()
		prof.startCPU()
	}
	cpu1, err := cpuTime(p.pid())
	if err != nil {
		return f, err
	}
	f.cpuHold = cpu1 - cpu0
	if change != nil {
		if err := change(); err != nil {
			return f, err
		}
	}
	cc1 := clientCPU()
	t0 := time.Now()
	if err := t(); err != nil {
		return f, err
	}
	if !clients.wait(60 * time.Second) {
		return f, fmt.Errorf("%d of %d answered within 60s of the change", clients.answered.Load(), n)
	}
	f.clientRel = clientCPU() - cc1
	f.lat, f.lost = clients.latencies(t0)
	time.Sleep(200 * time.Millisecond) // the last writes' own tail
	cpu2, err := cpuTime(p.pid())
	if err != nil {
		return f, err
	}
	f.cpuRel = cpu2 - cpu1
	if prof != nil {
		prof.wait()
	}
	return f, nil
}

func currentETag(addr string) (string, error) { return currentETagOf(addr, "/resource") }

func currentETagOf(addr, path string) (string, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Header.Set("Prefer", "wait=10")
	resp, err := controlClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if etag := resp.Header.Get("Etag"); etag != "" {
		return etag, nil
	}
	return "", fmt.Errorf("no ETag in the first answer (status %d)", resp.StatusCode)
}

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	return strings.Count(string(b), "\nprocessor") + 1
}

// figures are the fan-out figures, each read from one run; the table
// shows each one's median over the runs.
var figures = []struct {
	name string
	get  func(f fanout) float64
	text func(v float64) string
}{
	{"memory per held request (RSS)", func(f fanout) float64 { return float64(f.rssHeld-f.rssIdle) / float64(f.n) / 1024 },
		func(v float64) string { return fmt.Sprintf("%.1f KiB", v) }},
	{"fan-out p50", func(f fanout) float64 { return msOf(pct(f.lat, .5)) }, msText},
	{"fan-out p99", func(f fanout) float64 { return msOf(pct(f.lat, .99)) }, msText},
	{"fan-out max", func(f fanout) float64 { return msOf(pct(f.lat, 1)) }, msText},
	{"clients lost (not 200, or answered early)", func(f fanout) float64 { return float64(f.lost) },
		func(v float64) string { return fmt.Sprintf("%.0f", v) }},
	{"server CPU, hold", func(f fanout) float64 { return msOf(f.cpuHold) }, msText},
	{"server CPU, release", func(f fanout) float64 { return msOf(f.cpuRel) }, msText},
	{"client CPU, hold", func(f fanout) float64 { return msOf(f.clientHold) }, msText},
	{"client CPU, release", func(f fanout) float64 { return msOf(f.clientRel) }, msText},
}

func printFanout(all []fanoutRuns) {
	fmt.Println()
	fmt.Println("| Figure | Held | Floor (net/http) | Caddy + longpoll | Ratio |")
	fmt.Println("|---|---:|---:|---:|---:|")
	for _, runs := range all {
		for _, fig := range figures {
			a, b := median(runs.floor, fig.get), median(runs.module, fig.get)
			ratio := ""
			if a > 0 && !strings.HasPrefix(fig.name, "client") {
				ratio = fmt.Sprintf("%.2f×", b/a)
			}
			fmt.Printf("| %s | %d | %s | %s | %s |\n", fig.name, runs.n, fig.text(a), fig.text(b), ratio)
		}
		idleHeld := func(fs []fanout) string {
			return fmt.Sprintf("%.0f → %.0f MiB",
				median(fs, func(f fanout) float64 { return float64(f.rssIdle) / (1 << 20) }),
				median(fs, func(f fanout) float64 { return float64(f.rssHeld) / (1 << 20) }))
		}
		fmt.Printf("| RSS idle → held | %d | %s | %s | |\n", runs.n, idleHeld(runs.floor), idleHeld(runs.module))
		hits := median(runs.module, func(f fanout) float64 { return float64(f.upstreamHits) })
		fmt.Printf("| upstream requests, release | %d | – | %.0f | |\n", runs.n, hits)
	}
}

func median(fs []fanout, get func(fanout) float64) float64 {
	v := make([]float64, len(fs))
	for i, f := range fs {
		v[i] = get(f)
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	if len(v)%2 == 0 {
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return v[len(v)/2]
}

func msOf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func msText(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.1f ms", v)
	}
	return fmt.Sprintf("%.0f ms", v)
}

// stack is the Caddy under test in front of the upstream fixture.
type stack struct {
	up, caddy *proc
	ports     caddyPorts
}

func startStack(o options, interval time.Duration, pprof bool) (*stack, error) {
	up, err := startChild("upstream", o.body)
	if err != nil {
		return nil, err
	}
	c, ports, err := startCaddy(o.caddy, up.addr, interval, pprof)
	if err != nil {
		up.stop()
		return nil, err
	}
	return &stack{up: up, caddy: c, ports: ports}, nil
}

func (s *stack) stop() {
	s.caddy.stop()
	s.up.stop()
}

// upstreamPhase counts the upstream requests of clients long-polling at
// interval 1s, and of the same clients short-polling through plain
// reverse_proxy.
func upstreamPhase(o options) error {
	st, err := startStack(o, time.Second, false)
	if err != nil {
		return err
	}
	defer st.stop()
	up, c, ports := st.up, st.caddy, st.ports
	const clients = 1000
	fmt.Printf("\n## Upstream requests (%d clients, interval 1s, the upstream changing every 5s)\n\n", clients)
	fmt.Println("| Clients poll | Keys | Run | Upstream requests | Bound (keys × (run/interval + 2)) | Answers | Errors |")
	fmt.Println("|---|---:|---:|---:|---:|---:|---:|")
	for _, keys := range []int{1, 10} {
		paths := make([]string, keys)
		for i := range paths {
			paths[i] = fmt.Sprintf("/k/%d", i)
		}
		if keys == 1 {
			paths[0] = "/resource"
		}
		before, err := stats(up.addr)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), o.sustain)
		go changeEvery(ctx, up.addr, 5*time.Second)
		answers, errs := longPollLoop(ctx, "http://"+c.addr, paths, clients)
		cancel()
		after, err := stats(up.addr)
		if err != nil {
			return err
		}
		bound := keys * (int(o.sustain/time.Second) + 2)
		fmt.Printf("| long-poll through longpoll | %d | %v | %d | %d | %d | %d |\n",
			keys, o.sustain, after.Hits-before.Hits, bound, answers, errs)
	}
	before, err := stats(up.addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.shortFor)
	answers, errs := shortPollLoop(ctx, fmt.Sprintf("http://127.0.0.1:%d/resource", ports.plain), clients, time.Second)
	cancel()
	after, err := stats(up.addr)
	if err != nil {
		return err
	}
	hits := after.Hits - before.Hits
	fmt.Printf("| every 1s through plain reverse_proxy | 1 | %v | %d (%d per 60s) | – | %d | %d |\n",
		o.shortFor, hits, hits*int64(time.Minute)/int64(o.shortFor), answers, errs)
	return nil
}

func changeEvery(ctx context.Context, upstream string, d time.Duration) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = post("http://"+upstream+"/_change", "", "", http.StatusNoContent)
		}
	}
}

// passthroughPhase compares ordinary requests through the longpoll route
// and through the same route without it, in alternating rounds.
func passthroughPhase(o options) error {
	st, err := startStack(o, time.Second, false)
	if err != nil {
		return err
	}
	defer st.stop()
	c, ports := st.caddy, st.ports
	const conc = 32
	const round = 2 * time.Second
	type total struct {
		ok, errs int
		lat      []time.Duration
		cpu      time.Duration
		client   time.Duration
	}
	var with, without total
	urls := map[*total]string{
		&with:    fmt.Sprintf("http://127.0.0.1:%d/resource", ports.longpoll),
		&without: fmt.Sprintf("http://127.0.0.1:%d/resource", ports.plain),
	}
	throughput(urls[&without], conc, round/2) // warm up both
	throughput(urls[&with], conc, round/2)
	for r := range o.rounds {
		order := []*total{&with, &without}
		if r%2 == 1 {
			order[0], order[1] = order[1], order[0]
		}
		for _, t := range order {
			cpu0, err := cpuTime(c.pid())
			if err != nil {
				return err
			}
			cc0 := clientCPU()
			ok, lat, errs := throughput(urls[t], conc, round)
			cpu1, err := cpuTime(c.pid())
			if err != nil {
				return err
			}
			t.client += clientCPU() - cc0
			t.ok, t.errs, t.cpu = t.ok+ok, t.errs+errs, t.cpu+cpu1-cpu0
			t.lat = append(t.lat, lat...)
		}
	}
	secs := (time.Duration(o.rounds) * round).Seconds()
	fmt.Printf("\n## Pass-through: requests without Prefer, %d connections, %d rounds of %v per route, alternating\n\n", conc, o.rounds, round)
	fmt.Println("| Figure | Without longpoll | With longpoll | Ratio |")
	fmt.Println("|---|---:|---:|---:|")
	for _, t := range []*total{&with, &without} {
		slices.Sort(t.lat)
	}
	rate := func(t total) float64 { return float64(t.ok) / secs }
	perReq := func(t total) float64 { return float64(t.cpu.Microseconds()) / float64(max(t.ok, 1)) }
	fmt.Printf("| throughput | %.0f req/s | %.0f req/s | %.3f× |\n", rate(without), rate(with), rate(with)/rate(without))
	for _, q := range []struct {
		name string
		p    float64
	}{{"latency p50", .5}, {"latency p99", .99}} {
		a, b := pct(without.lat, q.p), pct(with.lat, q.p)
		fmt.Printf("| %s | %s | %s | %.2f× |\n", q.name, usText(a), usText(b), float64(b)/float64(a))
	}
	fmt.Printf("| Caddy CPU per request | %.1f µs | %.1f µs | %.3f× |\n", perReq(without), perReq(with), perReq(with)/perReq(without))
	fmt.Printf("| client CPU | %v | %v | |\n", without.client.Round(time.Millisecond), with.client.Round(time.Millisecond))
	fmt.Printf("| errors | %d | %d | |\n", without.errs, with.errs)
	return nil
}

func usText(d time.Duration) string {
	return fmt.Sprintf("%d µs", d.Microseconds())
}

// profiler saves Caddy's profiles from its admin endpoint.
type profiler struct {
	dir, admin string
	tag        string // the file names' prefix
	cpuDone    chan struct{}
}

func (p *profiler) save(path, name string) {
	resp, err := (&http.Client{Timeout: time.Minute}).Get("http://" + p.admin + path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pprof:", err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(filepath.Join(p.dir, p.tag+"-"+name))
	if err != nil {
		fmt.Fprintln(os.Stderr, "pprof:", err)
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}

// heap saves the heap profile, with the requests held, after a garbage
// collection (a heap profile is as of the last one, which may have run with
// only part of the requests in). The text form ends with the runtime's
// memory statistics (StackInuse, HeapInuse).
func (p *profiler) heap() {
	p.save("/debug/pprof/heap?gc=1", "heap.pb.gz")
	p.save("/debug/pprof/heap?debug=1", "heap.txt")
}

// startCPU starts a 3s CPU profile, to cover the release.
func (p *profiler) startCPU() {
	p.cpuDone = make(chan struct{})
	go func() {
		defer close(p.cpuDone)
		p.save("/debug/pprof/profile?seconds=3", "cpu.pb.gz")
	}()
	time.Sleep(100 * time.Millisecond)
}

func (p *profiler) wait() { <-p.cpuDone }
