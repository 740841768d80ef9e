// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// redisProc is a redis-server the test started on a loopback port.
type redisProc struct {
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
}

// startRedis starts redis-server on port (0: a free one), with extra
// arguments, and stops it by PID when the test ends. Without redis-server
// the test is skipped, unless LONGPOLL_CLUSTER_TEST=required (CI), which
// makes it fail.
func startRedis(t *testing.T, port int, extra ...string) *redisProc {
	t.Helper()
	if testing.Short() {
		t.Skip("starts redis-server and Caddy processes")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("LONGPOLL_CLUSTER_TEST") == "required" {
			t.Fatal("redis-server is not installed (Debian: apt-get install redis-server)")
		}
		t.Skip("redis-server is not installed")
	}
	if port == 0 {
		port = freeTCPPort(t)
	}
	r := &redisProc{port: port, exited: make(chan struct{})}
	r.cmd = exec.Command(bin, append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--loglevel", "warning"}, extra...)...)
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.exited) }()
	t.Cleanup(r.stop)
	deadline := time.Now().Add(10 * time.Second)
	for !r.ping() {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func (r *redisProc) url() string { return fmt.Sprintf("redis://127.0.0.1:%d/0", r.port) }

// ping reports whether the server answers PING.
func (r *redisProc) ping() bool {
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", r.port), time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	if _, err := conn.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}

func (r *redisProc) stop() {
	select {
	case <-r.exited:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.exited
	}
}

// clusterUpstream serves {"user": <Authorization>, "version": N} for every
// path, counting requests.
type clusterUpstream struct {
	srv     *httptest.Server
	version atomic.Int64
	hits    atomic.Int64
}

func newClusterUpstream(t *testing.T) *clusterUpstream {
	u := &clusterUpstream{}
	u.version.Store(1)
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"user": %q, "version": %d}`, r.Header.Get("Authorization"), u.version.Load())
	}))
	t.Cleanup(u.srv.Close)
	return u
}

// startCluster starts n Caddy processes with the same longpoll block, in
// front of up, in one cluster on r.
func startCluster(t *testing.T, n int, r *redisProc, up *clusterUpstream, settings string) []*caddyProc {
	t.Helper()
	// the same block on every instance: one namespace (the group names
	// the channel an application may publish notifications on)
	site := fmt.Sprintf("\tlongpoll {\n\t\tcluster %s\n\t\tgroup orders\n%s\t}\n\treverse_proxy %s\n",
		r.url(), settings, strings.TrimPrefix(up.srv.URL, "http://"))
	procs := make([]*caddyProc, n)
	for i := range procs {
		procs[i] = startCaddy(t, "", site)
	}
	return procs
}

// clusterClient follows path on base with the README's loop until ctx
// ends, recording each version it gets, when, and anything wrong.
type clusterClient struct {
	base, path, user string

	mu       sync.Mutex
	seen     map[int64]time.Time
	problems []string
}

func (cc *clusterClient) run(ctx context.Context, c *http.Client, wait string) {
	etag := ""
	for ctx.Err() == nil {
		hdr := []string{"Authorization", cc.user, "Prefer", "wait=" + wait}
		if etag != "" {
			hdr = append(hdr, "If-None-Match", etag)
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", cc.base+cc.path, nil)
		req.Host = "127.0.0.1:443" // as a load balancer in front of them all would send it: one key
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := c.Do(req)
		if err != nil {
			if ctx.Err() == nil {
				cc.note("transport error: %v", err)
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		var body strings.Builder
		_, _ = bufio.NewReader(resp.Body).WriteTo(&body)
		resp.Body.Close()
		switch resp.StatusCode {
		case http.StatusNotModified:
		case http.StatusOK:
			var v int64
			want := fmt.Sprintf(`{"user": %q, "version": `, cc.user)
			if !strings.HasPrefix(body.String(), want) {
				cc.note("another's data: %s", body.String())
				break
			}
			_, _ = fmt.Sscanf(strings.TrimPrefix(body.String(), want), "%d", &v)
			cc.mu.Lock()
			if _, ok := cc.seen[v]; !ok {
				cc.seen[v] = time.Now()
			}
			cc.mu.Unlock()
			etag = resp.Header.Get("Etag")
		default:
			if ctx.Err() == nil {
				cc.note("status %d: %s", resp.StatusCode, body.String())
			}
		}
	}
}

func (cc *clusterClient) note(format string, args ...any) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	cc.problems = append(cc.problems, fmt.Sprintf(format, args...))
}

// sawAt returns when the client first got version v.
func (cc *clusterClient) sawAt(v int64) (time.Time, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	at, ok := cc.seen[v]
	return at, ok
}

// followAll starts perInstance clients per instance on path, users taking
// turns between two, and returns them; they stop when ctx ends.
func followAll(ctx context.Context, t *testing.T, procs []*caddyProc, perInstance int, path, wait string, wg *sync.WaitGroup) []*clusterClient {
	c := faultClient(t)
	var all []*clusterClient
	for i, p := range procs {
		for k := range perInstance {
			cc := &clusterClient{base: p.base, path: path, user: fmt.Sprintf("Bearer user-%d", (i+k)%2), seen: map[int64]time.Time{}}
			all = append(all, cc)
			wg.Go(func() { cc.run(ctx, c, wait) })
		}
	}
	return all
}

// waitAllSaw waits until every client saw version v, and returns the
// longest time from changedAt to a client's answer.
func waitAllSaw(t *testing.T, clients []*clusterClient, v int64, changedAt time.Time, within time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		var latest time.Duration
		missing := 0
		for _, cc := range clients {
			if at, ok := cc.sawAt(v); ok {
				latest = max(latest, at.Sub(changedAt))
			} else {
				missing++
			}
		}
		if missing == 0 {
			return latest
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d clients did not get version %d within %v", missing, len(clients), v, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterOnePollerPerKey runs three Caddy processes with the same
// longpoll block on one Redis, with clients of two users spread over them
// on one path: the upstream is polled about once an interval per key in
// all, not once per instance; a change reaches every instance's clients
// within an interval and a second; a notification sent to one instance
// releases the clients of all three; and no client gets another user's
// data.
func TestClusterOnePollerPerKey(t *testing.T) {
	r := startRedis(t, 0)
	up := newClusterUpstream(t)
	procs := startCluster(t, 3, r, up, "\t\tinterval 1s\n\t\tsse\n")
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	clients := followAll(ctx, t, procs, 4, "/orders", "5", &wg)
	defer func() { cancel(); wg.Wait() }()
	waitAllSaw(t, clients, 1, time.Now(), 10*time.Second)
	// an event stream on each instance, of the same key: served from the
	// cluster's representations alike
	var streams []chan string
	for _, p := range procs {
		streams = append(streams, openClusterSSE(ctx, t, p.base+"/orders", "Bearer user-0"))
	}

	time.Sleep(2 * time.Second) // the first polls, which may overlap, are over
	before := up.hits.Load()
	const run = 6 * time.Second
	time.Sleep(run)
	polls := up.hits.Load() - before
	t.Logf("3 instances, 2 keys (users), %v at interval 1s: %d upstream requests (%d without the cluster)", run, polls, 3*2*int(run/time.Second))
	if os.Getenv("LP_DEBUG") != "" {
		for _, p := range procs {
			for _, l := range strings.Split(p.logs(), "\n") {
				if strings.Contains(l, "cluster") {
					t.Log(l)
				}
			}
		}
	}
	if limit := int64(2*run/time.Second) + 4; polls > limit {
		t.Errorf("%d upstream requests in %v, want about one an interval per key in all (at most %d)", polls, run, limit)
	}

	changed := time.Now()
	up.version.Store(2)
	if d := waitAllSaw(t, clients, 2, changed, 10*time.Second); d > 2*time.Second {
		t.Errorf("the last client got the change %v after it, want within an interval and a second", d)
	}
	for i, events := range streams {
		want := `{"user": "Bearer user-0", "version": 2}`
		deadline := time.After(10 * time.Second)
	next:
		for {
			select {
			case data := <-events:
				if data == want {
					break next
				}
			case <-deadline:
				t.Errorf("the event stream on instance %d did not get version 2", i)
				break next
			}
		}
	}
	for _, cc := range clients {
		if len(cc.problems) > 0 {
			t.Errorf("client of %s (%s): %q", cc.base, cc.user, cc.problems)
		}
	}
}

// TestClusterNotifyReachesEveryInstance holds clients on three instances
// that poll only every 30 s: a notification sent to one of them releases
// the clients of all three at once.
func TestClusterNotifyReachesEveryInstance(t *testing.T) {
	r := startRedis(t, 0)
	up := newClusterUpstream(t)
	procs := make([]*caddyProc, 3)
	for i := range procs {
		procs[i] = startCaddy(t, "", fmt.Sprintf("\thandle /_notify {\n\t\tlongpoll_notify {\n\t\t\tsecret s3cret\n\t\t\tgroup orders\n\t\t}\n\t}\n"+
			"\thandle {\n\t\tlongpoll {\n\t\t\tcluster %s\n\t\t\tgroup orders\n\t\t\tinterval 30s\n\t\t\tmax_wait 60s\n\t\t}\n\t\treverse_proxy %s\n\t}\n",
			r.url(), strings.TrimPrefix(up.srv.URL, "http://")))
	}
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	clients := followAll(ctx, t, procs, 3, "/orders", "50", &wg)
	defer func() { cancel(); wg.Wait() }()
	waitAllSaw(t, clients, 1, time.Now(), 10*time.Second)
	time.Sleep(time.Second) // held again

	up.version.Store(2)
	changed := time.Now()
	c := faultClient(t)
	req, _ := http.NewRequest("POST", procs[0].base+"/_notify", strings.NewReader(`{"topics": ["/orders"]}`))
	req.Header.Set("Authorization", "Bearer s3cret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("notify: %d, want 202", resp.StatusCode)
	}
	if d := waitAllSaw(t, clients, 2, changed, 10*time.Second); d > 3*time.Second {
		t.Errorf("the last client got the change %v after the notification to one instance, want within seconds (interval 30s)", d)
	}
	for _, cc := range clients {
		if len(cc.problems) > 0 {
			t.Errorf("client of %s (%s): %q", cc.base, cc.user, cc.problems)
		}
	}
}

// TestClusterFailover kills the instance that polls with SIGKILL, then
// stops Redis and starts it again: the other instances' clients keep
// getting every change, with no error.
func TestClusterFailover(t *testing.T) {
	r := startRedis(t, 0)
	up := newClusterUpstream(t)
	procs := startCluster(t, 3, r, up, "\t\tinterval 1s\n")
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	// instance 0 gets the key first: it polls
	first := &clusterClient{base: procs[0].base, path: "/orders", user: "Bearer user-0", seen: map[int64]time.Time{}}
	firstCtx, firstCancel := context.WithCancel(ctx)
	wg.Go(func() { first.run(firstCtx, faultClient(t), "5") })
	waitAllSaw(t, []*clusterClient{first}, 1, time.Now(), 10*time.Second)
	var clients []*clusterClient
	for _, cc := range followAll(ctx, t, procs[1:], 3, "/orders", "5", &wg) {
		if cc.user == first.user {
			clients = append(clients, cc) // the key instance 0 polls
		}
	}
	waitAllSaw(t, clients, 1, time.Now(), 10*time.Second)
	if role := watchRole(t, procs[0]); role != "polls" {
		t.Fatalf("instance 0's role for the key: %q, want polls", role)
	}

	// The instance that polls dies, its clients still held: another takes
	// the key over within a few intervals (the lease lasts three).
	_ = procs[0].cmd.Process.Kill()
	<-procs[0].exited
	firstCancel()
	changed := time.Now()
	up.version.Store(2)
	if d := waitAllSaw(t, clients, 2, changed, 15*time.Second); d > 6*time.Second {
		t.Errorf("after the poller died, the last client got the change %v later, want within a few intervals", d)
	}

	// Redis goes away: each instance polls on its own, clients see changes.
	r.stop()
	changed = time.Now()
	up.version.Store(3)
	waitAllSaw(t, clients, 3, changed, 15*time.Second)
	// and comes back, on the same port
	startRedis(t, r.port)
	time.Sleep(3 * time.Second)
	changed = time.Now()
	up.version.Store(4)
	if d := waitAllSaw(t, clients, 4, changed, 15*time.Second); d > 3*time.Second {
		t.Errorf("after Redis came back, the last client got the change %v later", d)
	}
	for _, cc := range clients {
		cc.mu.Lock()
		if len(cc.problems) > 0 {
			t.Errorf("client of %s (%s): %q", cc.base, cc.user, cc.problems)
		}
		cc.mu.Unlock()
	}
	if got := procs[1].metric(t, "caddy_longpoll_cluster_alone"); got != 0 {
		t.Errorf("cluster_alone after Redis came back: %v, want 0", got)
	}
}

// watchRole is what the admin view of p says the instance does for its
// first watch: polls, follows or alone.
func watchRole(t *testing.T, p *caddyProc) string {
	t.Helper()
	resp, err := http.Get(p.admin + "/longpoll/watches")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var view struct {
		Watches []struct {
			Cluster string `json:"cluster"`
		} `json:"watches"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&view); err != nil || len(view.Watches) == 0 {
		t.Fatalf("admin view: %v, %d watches", err, len(view.Watches))
	}
	return view.Watches[0].Cluster
}

// TestClusterACLUser joins a cluster as a Redis ACL user allowed only the
// longpoll: keys and channels: the module needs no more. An instance with
// a wrong password polls alone, says so in its metrics, and never writes
// the password in its log.
func TestClusterACLUser(t *testing.T) {
	r := startRedis(t, 0, "--user", "app", "on", ">s3cret-pw", "~longpoll:*", "&longpoll:*", "+@all")
	up := newClusterUpstream(t)
	url := func(pw string) string { return fmt.Sprintf("redis://app:%s@127.0.0.1:%d/0", pw, r.port) }
	site := "\tlongpoll {\n\t\tcluster %s\n\t\tgroup orders\n\t}\n\treverse_proxy " + strings.TrimPrefix(up.srv.URL, "http://") + "\n"
	good := startCaddy(t, "", fmt.Sprintf(site, url("s3cret-pw")))
	bad := startCaddy(t, "", fmt.Sprintf(site, url("wrong-pw")))
	c := faultClient(t)
	for _, p := range []*caddyProc{good, bad} {
		req, _ := http.NewRequest("GET", p.base+"/orders", nil)
		req.Header.Set("Prefer", "wait=1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d, want 200", p.base, resp.StatusCode)
		}
	}
	if role := watchRole(t, good); role != "polls" {
		t.Errorf("the ACL user's instance: %q, want polls", role)
	}
	if role := watchRole(t, bad); role != "alone" {
		t.Errorf("the instance with a wrong password: %q, want alone", role)
	}
	if got := bad.metric(t, "caddy_longpoll_cluster_alone"); got != 1 {
		t.Errorf("cluster_alone with a wrong password: %v, want 1", got)
	}
	for _, p := range []*caddyProc{good, bad} {
		if logs := p.logs(); strings.Contains(logs, "s3cret-pw") || strings.Contains(logs, "wrong-pw") {
			t.Errorf("%s logged a password", p.base)
		}
	}
}

// openClusterSSE opens an event stream of url as user, with the Host every
// instance shares, and returns the data of its events until ctx ends.
func openClusterSSE(ctx context.Context, t *testing.T, url, user string) chan string {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Host = "127.0.0.1:443"
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Authorization", user)
	resp, err := faultClient(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("event stream: %d", resp.StatusCode)
	}
	events := make(chan string, 100)
	go func() {
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				select {
				case events <- data:
				default:
				}
			}
		}
	}()
	return events
}

// TestClusterTLS joins a cluster over TLS (rediss://) to a redis-server
// whose certificate a CA of the test's signs, which the Caddy process
// trusts as a system root (SSL_CERT_FILE): no verification is skipped.
func TestClusterTLS(t *testing.T) {
	dir := t.TempDir()
	caFile, certFile, keyFile := writeTestCerts(t, dir)
	tlsPort := freeTCPPort(t)
	r := startRedis(t, 0, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certFile, "--tls-key-file", keyFile,
		"--tls-ca-cert-file", caFile, "--tls-auth-clients", "no")
	defer r.stop()
	up := newClusterUpstream(t)
	t.Setenv("SSL_CERT_FILE", caFile) // the Caddy processes' roots
	site := fmt.Sprintf("\tlongpoll {\n\t\tcluster rediss://127.0.0.1:%d/0\n\t\tgroup orders\n\t}\n\treverse_proxy %s\n",
		tlsPort, strings.TrimPrefix(up.srv.URL, "http://"))
	procs := []*caddyProc{startCaddy(t, "", site), startCaddy(t, "", site)}
	c := faultClient(t)
	for _, p := range procs {
		req, _ := http.NewRequest("GET", p.base+"/orders", nil)
		req.Host = "127.0.0.1:443"
		req.Header.Set("Prefer", "wait=1")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	roles := map[string]int{}
	for _, p := range procs {
		roles[watchRole(t, p)]++
	}
	if roles["polls"] != 1 || roles["follows"] != 1 {
		t.Errorf("roles over TLS: %v, want one instance polling and one following", roles)
	}
	polls := procs[0].metric(t, `caddy_longpoll_cluster_watches{role="polls"}`) + procs[1].metric(t, `caddy_longpoll_cluster_watches{role="polls"}`)
	follows := procs[0].metric(t, `caddy_longpoll_cluster_watches{role="follows"}`) + procs[1].metric(t, `caddy_longpoll_cluster_watches{role="follows"}`)
	if polls != 1 || follows != 1 {
		t.Errorf("cluster_watches: %v polling and %v following over both instances, want 1 and 1", polls, follows)
	}
}

// writeTestCerts writes a CA, and a certificate for 127.0.0.1 it signs,
// into dir, and returns their files.
func writeTestCerts(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "longpoll test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	caFile, certFile, keyFile = dir+"/ca.pem", dir+"/cert.pem", dir+"/key.pem"
	for file, block := range map[string]*pem.Block{
		caFile: {Type: "CERTIFICATE", Bytes: caDER}, certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile: {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return caFile, certFile, keyFile
}

// TestClusterRedisLate starts Caddy with a cluster whose Redis is not
// there yet: it starts and serves alone, and joins when Redis answers.
func TestClusterRedisLate(t *testing.T) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		startRedis(t, 0) // skips, or fails under LONGPOLL_CLUSTER_TEST=required
	}
	port := freeTCPPort(t)
	up := newClusterUpstream(t)
	p := startCaddy(t, "", fmt.Sprintf("\tlongpoll {\n\t\tinterval 1s\n\t\tcluster redis://127.0.0.1:%d/0\n\t}\n\treverse_proxy %s\n",
		port, strings.TrimPrefix(up.srv.URL, "http://")))
	c := faultClient(t)
	get := func() int {
		req, _ := http.NewRequest("GET", p.base+"/orders", nil)
		req.Header.Set("Prefer", "wait=2")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if status := get(); status != http.StatusOK {
		t.Fatalf("without Redis: %d, want 200 (alone)", status)
	}
	if role := watchRole(t, p); role != "alone" {
		t.Fatalf("without Redis: %q, want alone", role)
	}
	startRedis(t, port)
	deadline := time.Now().Add(15 * time.Second)
	for watchRole(t, p) != "polls" {
		if time.Now().After(deadline) {
			t.Fatalf("Redis up for 15s: %q, want polls", watchRole(t, p))
		}
		get()
	}
	if got := p.metric(t, "caddy_longpoll_cluster_alone"); got != 0 {
		t.Errorf("cluster_alone after Redis came: %v, want 0", got)
	}
}
