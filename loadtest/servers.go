// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The upstream fixture and the floor server run in processes of their own
// (this program, started again with -role), so that the memory and CPU read
// from /proc for a server are that server's alone, and the client's CPU is
// the client's alone.

// makeBody is a JSON body of size bytes that names its path and version.
func makeBody(size int, path string, version int) []byte {
	b := fmt.Appendf(nil, `{"path":%q,"version":%d,"pad":"`, path, version)
	for len(b) < size-2 {
		b = append(b, 'x')
	}
	return append(b, '"', '}')
}

// makeList is a JSON list of about size bytes (at least one item) in which
// one item, a different one at each version, has the status
// "changed-<version>": a change of one item in a big document.
func makeList(size, version int) []byte {
	const item = `{"id":%d,"name":"order number %06d","status":%q,"note":"%s"}`
	note := strings.Repeat("n", 60)
	count := max(1, size/len(fmt.Sprintf(item, 100000, 100000, "pending", note)))
	b := fmt.Appendf(make([]byte, 0, size+256), `{"total":%d,"items":[`, count)
	for i := range count {
		if i > 0 {
			b = append(b, ',')
		}
		status := "pending"
		if i == (version*37)%count {
			status = fmt.Sprintf("changed-%d", version)
		}
		b = fmt.Appendf(b, item, i, i, status, note)
	}
	return append(b, ']', '}')
}

// makeRecords is a JSON list of about size bytes of records as an API
// would send them: ids, timestamps, amounts, hex digests and words drawn
// from a fixed seed, so that it compresses as real JSON does (about 3 to
// 1 with gzip, where makeList's repeated items compress 20 to 1); the
// version is in its first field.
func makeRecords(size, version int) []byte {
	words := []string{"pending", "shipped", "delivered", "returned", "north", "south", "east", "west",
		"express", "standard", "priority", "economy", "alpha", "bravo", "charlie", "delta"}
	rng := rand.New(rand.NewPCG(42, 7))
	b := fmt.Appendf(make([]byte, 0, size+512), `{"version":%d,"records":[`, version)
	for i := 0; len(b) < size-200; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"id":%d,"customer":"%s %s","status":%q,"amount":%d.%02d,"created":"2026-%02d-%02dT%02d:%02d:%02dZ","sha":"%016x%016x"}`,
			1000000+rng.IntN(9000000), words[rng.IntN(len(words))], words[rng.IntN(len(words))], words[rng.IntN(4)],
			rng.IntN(100000), rng.IntN(100), 1+rng.IntN(12), 1+rng.IntN(28), rng.IntN(24), rng.IntN(60), rng.IntN(60),
			rng.Uint64(), rng.Uint64())
	}
	return append(b, ']', '}')
}

// listMarker is what a stream of the list carries of version v, in the
// full body as in a patch.
func listMarker(v int) []byte { return fmt.Appendf(nil, `"changed-%d"`, v) }

// runUpstream serves the origin: every path is a resource whose body
// changes with a version that POST /_change raises. GET /_stats reports the
// requests served (control requests excluded) and when a changed body was
// first served.
func runUpstream(size int) error {
	var (
		hits     atomic.Int64
		mu       sync.Mutex
		version  = 1
		servedAt time.Time // when the current version was first served, after a change
	)
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_change", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		version++
		servedAt = time.Time{}
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /_stats", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		st := upstreamStats{Hits: hits.Load(), ServedNew: servedAt.UnixNano()}
		if servedAt.IsZero() {
			st.ServedNew = 0
		}
		mu.Unlock()
		_ = json.NewEncoder(w).Encode(st)
	})
	mux.HandleFunc("GET /", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		mu.Lock()
		v := version
		if v > 1 && servedAt.IsZero() {
			servedAt = time.Now()
		}
		mu.Unlock()
		body := makeBody(size, r.URL.Path, v)
		switch r.URL.Path {
		case "/list":
			body = makeList(size, v)
		case "/records":
			body = makeRecords(size, v)
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
	return serveChild(mux)
}

type upstreamStats struct {
	Hits      int64 `json:"hits"`
	ServedNew int64 `json:"served_new_unix_nano"`
}

// runFloor serves the floor: the least a Go net/http server can do to hold
// a request. A GET whose If-None-Match is the current ETag blocks on one
// channel shared by every waiter until POST /_change closes it, then gets
// the new body, with the same fields Caddy sends for it.
func runFloor(size int) error {
	type state struct {
		etag    string
		body    []byte
		length  string
		changed chan struct{}
	}
	newState := func(v int) *state {
		body := makeBody(size, "/resource", v)
		return &state{
			etag: fmt.Sprintf(`"v%d"`, v), body: body,
			length: strconv.Itoa(len(body)), changed: make(chan struct{}),
		}
	}
	var (
		cur     atomic.Pointer[state]
		mu      sync.Mutex
		version = 1
	)
	cur.Store(newState(version))
	mux := http.NewServeMux()
	floorStreams(mux, func() ([]byte, <-chan struct{}) {
		st := cur.Load()
		return st.body, st.changed
	})
	mux.HandleFunc("POST /_change", func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		version++
		old := cur.Swap(newState(version))
		close(old.changed)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /resource", func(w http.ResponseWriter, r *http.Request) {
		st := cur.Load()
		if r.Header.Get("If-None-Match") == st.etag {
			select {
			case <-st.changed:
				st = cur.Load()
			case <-r.Context().Done():
				return
			}
		}
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Etag"] = []string{st.etag}
		h["Content-Length"] = []string{st.length}
		_, _ = w.Write(st.body)
	})
	return serveChild(mux)
}

// serveChild serves h on a loopback port and prints the address as the
// first line of stdout, for the parent to read.
func serveChild(h http.Handler) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	return srv.Serve(ln)
}

// proc is a server process under test.
type proc struct {
	name string
	cmd  *exec.Cmd
	addr string // the address it serves the resource on
	dir  string // scratch folder, removed at stop
}

// startChild starts this program again in a role, and reads its address.
func startChild(role string, size int) (*proc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-role", role, "-body", strconv.Itoa(size))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: role, cmd: cmd}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%s did not start: %w", role, err)
	}
	p.addr = strings.TrimSpace(line)
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) stop() {
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
	if p.dir != "" {
		_ = os.RemoveAll(p.dir)
	}
}

// caddyPorts are the servers of the Caddy under test.
type caddyPorts struct {
	longpoll int // longpoll in front of reverse_proxy
	plain    int // the same route without longpoll
	notify   int // longpoll_notify
	admin    int // 0: admin off
}

const notifySecret = "loadtest-secret"

// writeIdle is Caddy's write_idle timeout for the Caddy under test, as
// -write-idle gives it; "" leaves Caddy's default.
var writeIdle string

// clusterURL, when set, puts the Caddy under test in a cluster on that
// Redis (the cluster phase), in one group: the instances listen on ports
// of their own.
var clusterURL string

// caddyConfig is the Caddyfile of the Caddy under test. The plain server
// is the longpoll server without the longpoll directive, for the
// pass-through and short-polling comparisons; the notify endpoint has a
// server of its own so that both of those routes are exactly alike.
func caddyConfig(p caddyPorts, upstream string, interval time.Duration) string {
	admin := "admin off"
	if p.admin != 0 {
		admin = fmt.Sprintf("admin 127.0.0.1:%d", p.admin)
	}
	if writeIdle != "" {
		admin += "\n\tservers {\n\t\ttimeouts {\n\t\t\twrite_idle " + writeIdle + "\n\t\t}\n\t}"
	}
	return fmt.Sprintf(`{
	%s
	auto_https off
	default_bind 127.0.0.1
	persist_config off
	log {
		level ERROR
	}
}

http://127.0.0.1:%d {%s
	longpoll {
		interval %s
		max_wait 5m
		max_waiters 100000
		max_watches_per_client -1
		sse
		websocket
		max_streams 100000
		heartbeat 10m
		deltas json-patch%s%s
	}
	reverse_proxy %s
}

http://127.0.0.1:%d {
	reverse_proxy %s
}

http://127.0.0.1:%d {
	longpoll_notify {
		secret %s
	}
}
`, admin, p.longpoll, encodeLine(), interval, clusterLines(), compressLines(), upstream, p.plain, upstream, p.notify, notifySecret)
}

// startCaddy starts the Caddy binary bin in front of upstream.
func startCaddy(bin, upstream string, interval time.Duration, pprof bool) (*proc, caddyPorts, error) {
	var ports caddyPorts
	for _, p := range []*int{&ports.longpoll, &ports.plain, &ports.notify} {
		port, err := freePort()
		if err != nil {
			return nil, ports, err
		}
		*p = port
	}
	if pprof {
		port, err := freePort()
		if err != nil {
			return nil, ports, err
		}
		ports.admin = port
	}
	dir, err := os.MkdirTemp("", "longpoll-load")
	if err != nil {
		return nil, ports, err
	}
	path := filepath.Join(dir, "Caddyfile")
	logf, err := os.Create(filepath.Join(dir, "caddy.log"))
	if err == nil {
		defer logf.Close()
		err = os.WriteFile(path, []byte(caddyConfig(ports, upstream, interval)), 0o600)
	}
	cmd := exec.Command(bin, "run", "--config", path, "--adapter", "caddyfile")
	if err == nil {
		cmd.Stdout, cmd.Stderr = logf, logf
		err = cmd.Start()
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, ports, err
	}
	p := &proc{name: "caddy", cmd: cmd, addr: fmt.Sprintf("127.0.0.1:%d", ports.longpoll), dir: dir}
	for range 100 {
		if conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ports.notify)); err == nil {
			conn.Close()
			return p, ports, nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(logf.Name())
	p.stop()
	return nil, ports, fmt.Errorf("caddy did not start:\n%s", log)
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

// cpuTime reads a process's CPU time from /proc: its threads' schedstat,
// in nanoseconds, or else user plus system time in clock ticks of 10 ms.
func cpuTime(pid int) (time.Duration, error) {
	if d, err := schedTime(pid); err == nil {
		return d, nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// the command name, field 2, is in parentheses and may hold spaces
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond, nil
}

// schedTime is the time pid's threads have spent on a CPU, in nanoseconds
// (the first field of each thread's schedstat), where /proc/<pid>/stat
// counts 10 ms ticks. Go's threads live as long as the process, so
// none of its time is lost with an exited thread.
func schedTime(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // the thread ended
			}
			return 0, err
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, errors.New("empty schedstat")
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, err
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// post sends a POST with a JSON body and checks the status.
func post(url, body, bearer string, want int) error {
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := controlClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != want {
		return fmt.Errorf("POST %s: %d %s, want %d", url, resp.StatusCode, b, want)
	}
	return nil
}

// controlClient sends the harness's own requests (changes, notifications,
// stats), never the measured load.
var controlClient = &http.Client{Timeout: 30 * time.Second}

func stats(upstream string) (upstreamStats, error) {
	var st upstreamStats
	resp, err := controlClient.Get("http://" + upstream + "/_stats")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// compression is how the Caddy under test compresses (the compress
// phase): "" not at all; "encode", with `encode gzip zstd` in front of
// longpoll; "encode-each", the same with `compress off` (encode compresses
// each answer on its own, as before the module compressed once a version).
var compression string

func encodeLine() string {
	if compression == "" {
		return ""
	}
	return "\n\tencode gzip zstd"
}

func compressLines() string {
	if compression == "encode-each" {
		return "\n\t\tcompress off"
	}
	return ""
}

// clusterLines are the longpoll block's cluster settings, if any.
func clusterLines() string {
	if clusterURL == "" {
		return ""
	}
	return "\n\t\tcluster " + clusterURL + "\n\t\tgroup load"
}
