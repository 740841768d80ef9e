// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// itAdminGet sends a request to the in-process Caddy's admin API.
func itAdminGet(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://localhost:2999"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s on the admin API: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// scrape is the admin API's /metrics: every series of the module by its
// name and labels as written, and how many times each family is declared.
type scrape struct {
	values   map[string]float64
	families map[string]int
}

func itScrape(t *testing.T) scrape {
	t.Helper()
	status, body := itAdminGet(t, http.MethodGet, "/metrics")
	if status != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s, want 200", status, body)
	}
	s := scrape{values: map[string]float64{}, families: map[string]int{}}
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "# TYPE caddy_longpoll_"); ok {
			s.families["caddy_longpoll_"+strings.Fields(name)[0]]++
			continue
		}
		if !strings.HasPrefix(line, "caddy_longpoll_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		s.values[line[:i]] = v
	}
	return s
}

// metricsSite has two longpoll handlers with different settings (two
// engines, one registry), with or without metrics.
func metricsSite(up *itUpstream, interval, extra string) string {
	return fmt.Sprintf(`	handle /a/* {
		longpoll {
			interval %s
%s
		}
		reverse_proxy %s
	}
	handle {
		longpoll {
%s
		}
		reverse_proxy %s
	}
`, interval, extra, up.addr(), extra, up.addr())
}

// TestIntegrationMetricsEndpoint reads the module's metrics where operators
// do, on Caddy's admin API: the gauges while a request is held, counters
// that carry on across reloads (new registries, with no duplicate
// registration), and nothing at all with disable_metrics.
func TestIntegrationMetricsEndpoint(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", metricsSite(up, "500ms", "")))
	c, _ := itClient(t)

	first := itScrape(t)
	for _, fam := range []string{"caddy_longpoll_polls_total", "caddy_longpoll_answers_total", "caddy_longpoll_held_seconds",
		"caddy_longpoll_change_to_answer_seconds", "caddy_longpoll_poll_duration_seconds", "caddy_longpoll_held_requests", "caddy_longpoll_watches"} {
		if first.families[fam] != 1 {
			t.Errorf("GET /metrics: family %s declared %d times, want once", fam, first.families[fam])
		}
	}
	const immediate = `caddy_longpoll_answers_total{outcome="immediate"}`
	etag := itMustSend(t, c, "GET", "/a/metrics", "Prefer", "wait=5").Header.Get("Etag")
	held := itSendAsync(t, t.Context(), c, "GET", "/a/metrics", "Prefer", "wait=30", "If-None-Match", etag)
	itWaitHeld(t, 1)
	during := itScrape(t)
	if got := during.values[immediate] - first.values[immediate]; got != 1 {
		t.Errorf("%s moved by %v, want 1", immediate, got)
	}
	if during.values["caddy_longpoll_held_requests"] != 1 || during.values[`caddy_longpoll_watches{state="active"}`] != 1 {
		t.Errorf("gauges with one request held: held_requests %v, active watches %v; want 1 and 1",
			during.values["caddy_longpoll_held_requests"], during.values[`caddy_longpoll_watches{state="active"}`])
	}
	if got := during.values[`caddy_longpoll_polls_total{result="changed"}`] - first.values[`caddy_longpoll_polls_total{result="changed"}`]; got != 1 {
		t.Errorf("polls found changed: moved by %v, want 1 (the watch's first poll)", got)
	}
	up.set("/a/metrics", http.StatusOK, "new")
	if r := itReceive(t, held, 5*time.Second); r.Status != http.StatusOK {
		t.Fatalf("held request: %d, want 200", r.Status)
	}

	// Reloads: a changed handler (a new engine) and an unchanged one, in
	// a new registry each time.
	for i, interval := range []string{"600ms", "700ms", "700ms"} {
		itLoad(t, tc, itConfig("", metricsSite(up, interval, "")))
		s := itScrape(t)
		for fam, n := range s.families {
			if n != 1 {
				t.Errorf("reload %d: family %s declared %d times, want once", i, fam, n)
			}
		}
		if len(s.families) != len(first.families) {
			t.Errorf("reload %d: families %v, want %v", i, s.families, first.families)
		}
		if s.values[immediate] < during.values[immediate] {
			t.Errorf("reload %d: %s went from %v to %v, want counters kept across reloads", i, immediate, during.values[immediate], s.values[immediate])
		}
		if s.values[`caddy_longpoll_answers_total{outcome="changed"}`] < 1 {
			t.Errorf("reload %d: changed answers %v, want the one before the reloads kept", i, s.values[`caddy_longpoll_answers_total{outcome="changed"}`])
		}
	}

	itLoad(t, tc, itConfig("", metricsSite(up, "500ms", "\t\t\tdisable_metrics")))
	itMustSend(t, c, "GET", "/a/metrics", "Prefer", "wait=5")
	if s := itScrape(t); len(s.families) != 0 || len(s.values) != 0 {
		t.Errorf("with disable_metrics: families %v, want none", s.families)
	}
}

// TestIntegrationAdminWatches reads GET /longpoll/watches on the admin API
// while requests of two users are held on two resources and a third
// resource's upstream fails: totals over all, watches with the most waiters
// first, cut at limit, and never a credential of a request nor a key.
func TestIntegrationAdminWatches(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	// topic {path} is the default, written out: an engine of its own, not
	// one an earlier test left watches in
	itLoad(t, tc, itConfig("", itSite("interval 1s\nmax_wait 30s\ngroup ops\ntopic {path}", up)))
	c, _ := itClient(t)

	const (
		tokenA  = "Bearer sekret-token-a"
		tokenB  = "Bearer sekret-token-b"
		session = "session=cookie-secret-c"
	)
	hold := func(path, auth string, n int) string {
		etag := itMustSend(t, c, "GET", path, "Prefer", "wait=1", "Authorization", auth, "Cookie", session).Header.Get("Etag")
		for range n {
			itSendAsync(t, t.Context(), c, "GET", path, "Prefer", "wait=30", "If-None-Match", etag,
				"Authorization", auth, "Cookie", session)
		}
		return etag
	}
	etag42 := hold("/orders/42", tokenA, 3)
	hold("/orders/7", tokenB, 1)
	itWaitHeld(t, 4)
	up.set("/down", http.StatusInternalServerError, "boom")
	if r := itMustSend(t, c, "GET", "/down", "Prefer", "wait=1"); r.Status != http.StatusBadGateway {
		t.Fatalf("GET /down: %d, want 502", r.Status)
	}

	status, body := itAdminGet(t, http.MethodGet, "/longpoll/watches?limit=2")
	if status != http.StatusOK {
		t.Fatalf("GET /longpoll/watches: %d %s, want 200", status, body)
	}
	var view watchesView
	if err := json.Unmarshal([]byte(body), &view); err != nil {
		t.Fatalf("GET /longpoll/watches: %v in %s", err, body)
	}
	if !strings.HasPrefix(body, `{"totals":`) {
		t.Errorf("GET /longpoll/watches: %.40s..., want the totals first", body)
	}
	want := watchTotals{Handlers: 1, Watches: 3, Active: 2, Failing: 1, Waiters: 4, HeldRequests: 4, Listed: 2}
	if view.Totals != want {
		t.Errorf("totals: %+v, want %+v", view.Totals, want)
	}
	if len(view.Watches) != 2 {
		t.Fatalf("watches with limit=2: %d listed, want 2 (%s)", len(view.Watches), body)
	}
	top := view.Watches[0]
	if top.Topic != "/orders/42" || top.Waiters != 3 || top.State != "polling" || top.Interval != "1s" ||
		top.ETag != etag42 || top.Group != "ops" || top.ConsecutiveErrors != 0 || top.LastResult == "" ||
		time.Since(top.LastPoll) > 5*time.Second || top.LastChange.IsZero() || !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(top.Watch) {
		t.Errorf("first watch: %+v, want /orders/42 polling for 3 waiters every 1s, its ETag %s, a recent poll, a short hash", top, etag42)
	}
	if second := view.Watches[1]; second.Topic != "/orders/7" || second.Waiters != 1 {
		t.Errorf("second watch: %+v, want /orders/7 with 1 waiter", second)
	}

	_, body = itAdminGet(t, http.MethodGet, "/longpoll/watches")
	view = watchesView{}
	if err := json.Unmarshal([]byte(body), &view); err != nil {
		t.Fatal(err)
	}
	if len(view.Watches) != 3 || view.Totals.Listed != 3 {
		t.Fatalf("watches with the default limit: %d listed, want all 3 (%s)", len(view.Watches), body)
	}
	down := view.Watches[2]
	if down.Topic != "/down" || down.State != "failing" || down.ConsecutiveErrors < 1 || down.LastResult != "error" || down.ETag != "" {
		t.Errorf("failing watch: %+v, want /down failing, consecutive errors, last result error, no ETag", down)
	}
	for _, secret := range []string{"sekret", "cookie-secret", base64.StdEncoding.EncodeToString([]byte("sekret-token-a")), "Bearer"} {
		if strings.Contains(body, secret) {
			t.Errorf("GET /longpoll/watches holds %q, a request's credential: %s", secret, body)
		}
	}
	noETags := body
	for _, w := range view.Watches {
		if w.ETag != "" {
			noETags = strings.ReplaceAll(noETags, w.ETag, "")
		}
	}
	if regexp.MustCompile(`[0-9a-f]{16}`).MatchString(noETags) {
		t.Errorf("GET /longpoll/watches holds a long hex string, perhaps a key: %s", body)
	}

	if status, body := itAdminGet(t, http.MethodGet, "/longpoll/watches?limit=0"); status != http.StatusOK ||
		!strings.Contains(body, `"watches":[]`) || !strings.Contains(body, `"watches":3`) {
		t.Errorf("limit=0: %d %s, want the totals and no watch", status, body)
	}
	for _, bad := range []string{"abc", "-1", "10001", "1.5"} {
		status, body := itAdminGet(t, http.MethodGet, "/longpoll/watches?limit="+bad)
		if status != http.StatusBadRequest || !strings.Contains(body, "limit must be a whole number from 0 to 10000") {
			t.Errorf("limit=%s: %d %s, want 400 naming the limit", bad, status, body)
		}
	}
	if status, body := itAdminGet(t, http.MethodPost, "/longpoll/watches"); status != http.StatusMethodNotAllowed {
		t.Errorf("POST /longpoll/watches: %d %s, want 405", status, body)
	}
}

// TestIntegrationLogsLoopWithoutValidator runs the client loop a newcomer
// writes by mistake: Prefer: wait, no If-None-Match, again and again. Each
// request is answered at once; the one sign of it must be a log line, once
// per watch, naming the watch by its short hash. A client's first request,
// which never has a validator, must not cause it.
func TestIntegrationLogsLoopWithoutValidator(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	globals, _, entries := itLogFile(t)
	itLoad(t, tc, itConfig(globals, itSite("interval 100ms", up)))
	c, _ := itClient(t)

	first := itMustSend(t, c, "GET", "/polite", "Prefer", "wait=30")
	itMustSend(t, c, "GET", "/polite", "Prefer", "wait=1", "If-None-Match", first.Header.Get("Etag"))
	for range 20 {
		if r := itMustSend(t, c, "GET", "/spinning", "Prefer", "wait=30"); r.Status != http.StatusOK || r.Elapsed > 5*time.Second {
			t.Fatalf("got %d after %v, want 200 at once", r.Status, r.Elapsed)
		}
	}
	lines := entries("a client long-polls without If-None-Match")
	if len(lines) != 1 {
		t.Fatalf("got %d log lines about clients without a validator, want 1 (for /spinning only)", len(lines))
	}
	e := lines[0]
	if e["level"] != "info" || e["topic"] != "/spinning" || !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(fmt.Sprint(e["watch"])) {
		t.Errorf("log line: got level %v, topic %v, watch %v; want info, /spinning and an 8-digit hash", e["level"], e["topic"], e["watch"])
	}
}
