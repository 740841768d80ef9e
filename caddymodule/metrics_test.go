// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// metricValues reads the module's series: counters by name and label
// value, and histogram sample counts as name+"_count".
type metricValues map[string]float64

func readMetrics(t *testing.T) metricValues {
	t.Helper()
	v := metricValues{}
	for _, r := range longpoll.PollResults() {
		v["polls/"+r.String()] = testutil.ToFloat64(metrics.polls[r])
	}
	for _, o := range outcomes {
		v["answers/"+o] = testutil.ToFloat64(metrics.byOutcome[o].answers)
		v["held/"+o+"_count"] = float64(histogram(t, metrics.byOutcome[o].held).GetSampleCount())
	}
	v["change_to_answer_count"] = float64(histogram(t, metrics.delivery).GetSampleCount())
	v["poll_duration_count"] = float64(histogram(t, metrics.pollDuration).GetSampleCount())
	return v
}

func histogram(t *testing.T, o any) *dto.Histogram {
	t.Helper()
	var m dto.Metric
	if err := o.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram()
}

// delta returns after - before for every series that moved.
func (after metricValues) delta(before metricValues) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if v != before[k] {
			d[k] = v - before[k]
		}
	}
	return d
}

// failing is an upstream that answers like versioned, or 503 while down is
// set.
type failing struct {
	versioned
	down atomic.Bool
}

func (u *failing) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	if u.down.Load() {
		u.polls.Add(1)
		w.WriteHeader(http.StatusServiceUnavailable)
		return nil
	}
	return u.versioned.ServeHTTP(w, r)
}

// TestMetricsScenario scripts one client through an answer at once, a
// timeout, a change, a failing upstream and its recovery, on a fake clock,
// and checks every series the module moved, and its log: the failure once
// at error and the recovery once at warn however many polls failed, each
// request at debug only, and never the request's credentials.
func TestMetricsScenario(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := new(failing)
		up.version.Store(1)
		h := &Handler{Interval: caddy.Duration(time.Second)}
		provision(t, newTestContext(t), h)
		core, logs := observer.New(zapcore.DebugLevel)
		h.useLogger(zap.New(core)) // the hub's engine logs through it too
		const target = "http://example.com/orders/42"
		creds := http.Header{"Authorization": {"Bearer s3cr3t-token"}}
		send := func(wait, inm string) (int, string) {
			hdr := http.Header{"Prefer": {"wait=" + wait}, "Authorization": creds["Authorization"]}
			if inm != "" {
				hdr.Set("If-None-Match", inm)
			}
			req, w, _ := prepare(t, http.MethodGet, target, hdr)
			err := h.ServeHTTP(w, req, up)
			var he caddyhttp.HandlerError
			if errors.As(err, &he) {
				return he.StatusCode, ""
			}
			if err != nil {
				t.Fatalf("ServeHTTP: %v", err)
			}
			return w.Code, w.Header().Get("Etag")
		}
		before := readMetrics(t)

		// answered at once (the watch's first poll: changed)
		code, etag := send("5", "")
		if code != http.StatusOK {
			t.Fatalf("first long-poll: %d, want 200", code)
		}
		// held until the wait ends
		if code, _ := send("1", etag); code != http.StatusNotModified {
			t.Fatalf("held long-poll: %d, want 304", code)
		}
		// held, then released by a change
		done := make(chan int, 1)
		go func() { c, _ := send("30", etag); done <- c }()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		held := gauges(t)
		up.version.Store(2)
		if code := <-done; code != http.StatusOK {
			t.Fatalf("long-poll released by a change: %d, want 200", code)
		}
		_, etag = send("5", "")
		// held while the upstream fails: 502 when the wait ends
		up.down.Store(true)
		if code, _ := send("10", etag); code != http.StatusBadGateway {
			t.Fatalf("long-poll while the upstream fails: %d, want 502", code)
		}
		// held while it recovers: nothing changed, 304 when the wait ends
		up.down.Store(false)
		if code, _ := send("30", etag); code != http.StatusNotModified {
			t.Fatalf("long-poll while the upstream recovers: %d, want 304", code)
		}

		if held["held_requests"] != 1 || held["watches/active"] != 1 {
			t.Errorf("gauges while one request was held: %v, want 1 held request, 1 active watch", held)
		}
		// a poll due at the instant the last answer was may still be
		// running: let it end, so that its counts are read whole
		synctest.Wait()
		got := readMetrics(t).delta(before)
		want := map[string]float64{
			"answers/immediate": 2, "answers/timeout": 2, "answers/changed": 1, "answers/error": 1,
			"held/timeout_count": 2, "held/changed_count": 1, "held/error_count": 1,
			"change_to_answer_count": 1,
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s moved by %v, want %v (all moves: %v)", k, got[k], v, got)
			}
		}
		for k, v := range got {
			if (strings.HasPrefix(k, "answers/") || strings.HasPrefix(k, "held/")) && want[k] == 0 {
				t.Errorf("%s moved by %v, want no move (all moves: %v)", k, v, got)
			}
		}
		// polls: two changes found, unchanged ones in between (this
		// upstream ignores If-None-Match, so never a 304), one or more
		// failures; every one timed
		if got["polls/changed"] != 2 || got["polls/unchanged"] < 2 || got["polls/error"] < 3 || got["polls/not_modified"] != 0 {
			t.Errorf("polls moved by %v, want 2 changed, 2 or more unchanged, 3 or more error, no not_modified", got)
		}
		var polls float64
		for _, r := range longpoll.PollResults() {
			polls += got["polls/"+r.String()]
		}
		if got["poll_duration_count"] != polls || int32(polls) != up.polls.Load() {
			t.Errorf("poll_duration_count moved by %v, polls by %v, the upstream saw %d: want all equal",
				got["poll_duration_count"], polls, up.polls.Load())
		}

		answered := logs.FilterMessage("long-poll answered").All()
		if len(answered) != 6 {
			t.Errorf("'long-poll answered' logged %d times, want once per request (6)", len(answered))
		}
		for _, e := range answered {
			if e.Level != zapcore.DebugLevel {
				t.Errorf("per-request log line at %v, want debug", e.Level)
			}
		}
		failing := logs.FilterMessage("upstream poll failing").All()
		recovered := logs.FilterMessage("upstream poll recovered").All()
		if len(failing) != 1 || failing[0].Level != zapcore.ErrorLevel || len(recovered) != 1 || recovered[0].Level != zapcore.WarnLevel {
			t.Errorf("for %v failed polls: 'upstream poll failing' %d times, 'recovered' %d times; want each once, at error and warn",
				got["polls/error"], len(failing), len(recovered))
		}
		if len(failing) == 1 && failing[0].ContextMap()["topic"] != "/orders/42" {
			t.Errorf("failure line %v, want the watch's topic", failing[0].ContextMap())
		}
		if n := logs.Len() - len(answered) - len(failing) - len(recovered); n != 0 {
			t.Errorf("%d other log lines (%v), want none", n, logs.All())
		}
		for _, e := range logs.All() {
			line := fmt.Sprint(e.Message, e.ContextMap())
			if strings.Contains(line, "s3cr3t") {
				t.Errorf("log line %q holds the request's credentials", line)
			}
		}
	})
}

// gauges reads the held-request and watch gauges, by collecting them.
func gauges(t *testing.T) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(metrics.gauges); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	v := map[string]float64{}
	for _, mf := range mfs {
		name := strings.TrimPrefix(mf.GetName(), "caddy_longpoll_")
		for _, m := range mf.GetMetric() {
			key := name
			for _, l := range m.GetLabel() {
				key += "/" + l.GetValue()
			}
			v[key] = m.GetGauge().GetValue()
		}
	}
	return v
}

// TestMetricsRegistration registers the metrics as every handler of every
// config does: twice in one registry (two handlers of one config), and in a
// new registry (a reload) that a scrape then gathers without error.
func TestMetricsRegistration(t *testing.T) {
	for round := range 3 {
		reg := prometheus.NewPedanticRegistry()
		for range 2 {
			if err := metrics.register(reg); err != nil {
				t.Fatalf("round %d: register: %v, want no error", round, err)
			}
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatalf("round %d: gather: %v", round, err)
		}
		var names []string
		for _, mf := range mfs {
			names = append(names, mf.GetName())
		}
		want := "caddy_longpoll_answers_total caddy_longpoll_change_to_answer_seconds caddy_longpoll_cluster_alone caddy_longpoll_compressions_total caddy_longpoll_held_requests " +
			"caddy_longpoll_held_seconds caddy_longpoll_poll_duration_seconds caddy_longpoll_polls_total caddy_longpoll_private_polls_total caddy_longpoll_rejected_total " +
			"caddy_longpoll_stream_events_total caddy_longpoll_streams caddy_longpoll_streams_ended_total " +
			"caddy_longpoll_watch_bytes caddy_longpoll_watches caddy_longpoll_watches_evicted_total"
		if got := strings.Join(names, " "); got != want {
			t.Errorf("round %d: families %s, want %s", round, got, want)
		}
	}
}

// TestMetricsDisabled checks that a handler with disable_metrics registers
// nothing in its config's registry, counts none of its requests or polls,
// and leaves its hub out of the gauges.
func TestMetricsDisabled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := new(versioned)
		up.version.Store(1)
		ctx := newTestContext(t)
		h := &Handler{DisableMetrics: true}
		provision(t, ctx, h)
		before := readMetrics(t)
		req, w, _ := prepare(t, http.MethodGet, "http://example.com/quiet", http.Header{"Prefer": {"wait=5"}})
		if err := h.ServeHTTP(w, req, up); err != nil || w.Code != http.StatusOK {
			t.Fatalf("long-poll: %d, %v; want 200", w.Code, err)
		}
		req, w, _ = prepare(t, http.MethodGet, "http://example.com/quiet",
			http.Header{"Prefer": {"wait=1"}, "If-None-Match": {w.Header().Get("Etag")}})
		if err := h.ServeHTTP(w, req, up); err != nil || w.Code != http.StatusNotModified {
			t.Fatalf("held long-poll: %d, %v; want 304", w.Code, err)
		}
		if d := readMetrics(t).delta(before); len(d) != 0 {
			t.Errorf("metrics moved by %v for a handler with disable_metrics, want no move", d)
		}
		mfs, err := ctx.GetMetricsRegistry().Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), "caddy_longpoll_") {
				t.Errorf("config registry has %s, want no longpoll metric with disable_metrics", mf.GetName())
			}
		}
		if h.hub.metrics.Load() {
			t.Error("hub of a handler with disable_metrics reports to the gauges, want it left out")
		}
	})
}

// TestMetricsOutcomes follows the request paths TestMetricsScenario does
// not take, and checks for each that the outcome set for the access log is
// the one counted, once, with the time held when it was held.
func TestMetricsOutcomes(t *testing.T) {
	tests := []struct {
		name string
		want string
		held bool
		run  func(t *testing.T, h *Handler, up *versioned, etag string) *caddy.Replacer
	}{
		{name: "rejected", want: outcomeRejected, run: func(t *testing.T, h *Handler, up *versioned, etag string) *caddy.Replacer {
			ticket, err := h.hub.limiter.Acquire("", longpoll.KeyOf("x"), longpoll.Caps{Total: 1}) // the one place max_waiters 1 allows
			if err != nil {
				t.Fatal(err)
			}
			defer ticket.Release()
			req, w, repl := prepare(t, http.MethodGet, "http://example.com/o", http.Header{"Prefer": {"wait=5"}})
			if err := h.ServeHTTP(w, req, up); err == nil {
				t.Fatal("over max_waiters: no error, want 503")
			}
			return repl
		}},
		{name: "passthrough", want: outcomePassthrough, run: func(t *testing.T, h *Handler, up *versioned, etag string) *caddy.Replacer {
			req, w, repl := prepare(t, http.MethodGet, "http://example.com/o", http.Header{"Prefer": {"wait=5"}, "Range": {"bytes=0-1"}})
			if err := h.ServeHTTP(w, req, up); err != nil {
				t.Fatal(err)
			}
			return repl
		}},
		{name: "canceled", want: outcomeCanceled, held: true, run: func(t *testing.T, h *Handler, up *versioned, etag string) *caddy.Replacer {
			req, w, repl := prepare(t, http.MethodGet, "http://example.com/o", http.Header{"Prefer": {"wait=30"}, "If-None-Match": {etag}})
			ctx, cancel := context.WithCancel(req.Context())
			time.AfterFunc(2*time.Second, cancel)
			if err := h.ServeHTTP(w, req.WithContext(ctx), up); err != nil {
				t.Fatal(err)
			}
			return repl
		}},
		{name: "shutdown", want: outcomeShutdown, held: true, run: func(t *testing.T, h *Handler, up *versioned, etag string) *caddy.Replacer {
			req, w, repl := prepare(t, http.MethodGet, "http://example.com/o", http.Header{"Prefer": {"wait=30"}, "If-None-Match": {etag}})
			time.AfterFunc(2*time.Second, func() { _ = h.hub.engine.Close() })
			if err := h.ServeHTTP(w, req, up); err != nil || w.Code != http.StatusNotModified {
				t.Fatalf("held when the engine closed: %d, %v; want 304", w.Code, err)
			}
			return repl
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				up := new(versioned)
				up.version.Store(1)
				h := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}", MaxWaiters: 1}
				provision(t, newTestContext(t), h)
				req, w, _ := prepare(t, http.MethodGet, "http://example.com/o", http.Header{"Prefer": {"wait=5"}})
				if err := h.ServeHTTP(w, req, up); err != nil {
					t.Fatal(err)
				}
				before := readMetrics(t)
				repl := tt.run(t, h, up, w.Header().Get("Etag"))
				if got := outcome(repl); got != tt.want {
					t.Errorf("outcome %q, want %q", got, tt.want)
				}
				want := map[string]float64{"answers/" + tt.want: 1}
				if tt.held {
					want["held/"+tt.want+"_count"] = 1
				}
				got := readMetrics(t).delta(before)
				for k := range got {
					if strings.HasPrefix(k, "polls/") || k == "poll_duration_count" {
						delete(got, k) // the watch's own polls
					}
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("metrics moved by %v, want %v", got, want)
				}
			})
		})
	}
}

// TestNoRequestLinesAboveDebug checks that with the logger above debug,
// as Caddy's default is, answering long-polls logs nothing and asks the
// logger nothing: even the level check costs a released request's stack.
func TestNoRequestLinesAboveDebug(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		up := new(versioned)
		up.version.Store(1)
		h := &Handler{Key: "test:" + t.Name() + ":{http.request.uri}"}
		provision(t, newTestContext(t), h)
		core, logs := observer.New(zapcore.InfoLevel)
		checks := &checkCounter{Core: core}
		h.useLogger(zap.New(checks))
		checks.n.Store(0) // useLogger asks once, at load
		req, w, _ := prepare(t, http.MethodGet, "http://example.com/q", http.Header{"Prefer": {"wait=5"}})
		if err := h.ServeHTTP(w, req, up); err != nil {
			t.Fatal(err)
		}
		req, w, _ = prepare(t, http.MethodGet, "http://example.com/q", http.Header{"Prefer": {"wait=2"}, "If-None-Match": {w.Header().Get("Etag")}})
		if err := h.ServeHTTP(w, req, up); err != nil || w.Code != http.StatusNotModified {
			t.Fatalf("held long-poll: %d, %v; want 304", w.Code, err)
		}
		if h.debug || logs.Len() != 0 || checks.n.Load() != 0 {
			t.Errorf("logger at info: debug %v, lines %v, %d level checks; want no debug, no line, no check",
				h.debug, logs.All(), checks.n.Load())
		}
	})
}

// checkCounter is a zapcore.Core that counts the lines it is asked about.
type checkCounter struct {
	zapcore.Core
	n atomic.Int64
}

func (c *checkCounter) Enabled(l zapcore.Level) bool {
	c.n.Add(1)
	return c.Core.Enabled(l)
}

func (c *checkCounter) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	c.n.Add(1)
	return c.Core.Check(e, ce)
}
