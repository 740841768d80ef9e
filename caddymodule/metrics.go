// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/caddy-longpoll/caddy-longpoll/cluster"
	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// The module's metrics. They are made once per process and registered in
// the metrics registry of every config that has a longpoll handler with
// metrics on, so that counters carry on across reloads and appear on Caddy's
// own metrics endpoints (the admin API's /metrics, the metrics handler).
// Label values are fixed sets: never a key, a path or a client address.
var metrics = newMetricSet()

// outcomes are the values of {http.longpoll.outcome}, and of the outcome
// label.
var outcomes = []string{
	outcomeImmediate, outcomeChanged, outcomeTimeout, outcomePassthrough,
	outcomeRejected, outcomeError, outcomeShutdown, outcomeCanceled, outcomeStream,
}

type metricSet struct {
	pollsVec     *prometheus.CounterVec
	polls        []prometheus.Counter // by longpoll.PollResult
	pollDuration prometheus.Histogram
	privatePolls prometheus.Counter
	alone        prometheus.Gauge
	answersVec   *prometheus.CounterVec
	heldVec      *prometheus.HistogramVec
	byOutcome    map[string]outcomeMetrics
	delivery     prometheus.Histogram
	rejectedVec  *prometheus.CounterVec
	byCap        map[string]prometheus.Counter
	evicted      prometheus.Counter
	eventsVec    *prometheus.CounterVec
	events       map[string]prometheus.Counter // by delivery, looked up once
	endedVec     *prometheus.CounterVec
	compressions *prometheus.CounterVec
	gauges       gaugeCollector
}

// outcomeMetrics are the series of one outcome, looked up once.
type outcomeMetrics struct {
	answers prometheus.Counter
	held    prometheus.Observer
}

func newMetricSet() *metricSet {
	const ns, sub = "caddy", "longpoll"
	m := &metricSet{
		pollsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "polls_total",
			Help: "Polls of the upstream made for held requests, by what they found: changed, unchanged, not_modified (the upstream answered 304), error, uncacheable.",
		}, []string{"result"}),
		alone: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "cluster_alone",
			Help: "Engines with a cluster that cannot reach its Redis, and poll on their own meanwhile.",
		}),
		privatePolls: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "private_polls_total",
			Help: "Polls of the upstream made with one client's own request, for a long-poll held privately (its watch cannot share a representation with it).",
		}),
		pollDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "poll_duration_seconds",
			Help:    "How long polls of the upstream took.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		answersVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "answers_total",
			Help: "Long-poll requests answered, by outcome: immediate, changed, timeout, passthrough, rejected, error, shutdown, canceled.",
		}, []string{"outcome"}),
		heldVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "held_seconds",
			Help:    "How long long-poll requests were held before their answer, by outcome.",
			Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 20, 30, 45, 60, 120},
		}, []string{"outcome"}),
		delivery: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "change_to_answer_seconds",
			Help:    "Time from the poll that found a change to the held request's answer being written.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		rejectedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "rejected_total",
			Help: "Long-poll requests rejected, by the cap they were over: max_waiters, max_watches (503), max_waiters_per_client, max_watches_per_client (429).",
		}, []string{"cap"}),
		byCap: make(map[string]prometheus.Counter, len(capNames)),
		evicted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "watches_evicted_total",
			Help: "Idle watches dropped before their idle_ttl to keep within max_memory.",
		}),
		eventsVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "stream_events_total",
			Help: "Versions sent to streams, by delivery: sse, websocket.",
		}, []string{"delivery"}),
		endedVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "streams_ended_total",
			Help: "Streams ended, by delivery and reason: client, write_error, heartbeat, duration, reload, shutdown, passthrough, policy.",
		}, []string{"delivery", "reason"}),
		compressions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "compressions_total",
			Help: "Versions compressed for long-poll answers, once per version and encoding that some client asked for, by encoding.",
		}, []string{"encoding"}),
		byOutcome: make(map[string]outcomeMetrics, len(outcomes)),
		gauges: gaugeCollector{
			held: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "held_requests"),
				"Long-poll requests held now (admitted, not yet answered).", nil, nil),
			watches: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "watches"),
				"Watches kept, by state: active (polling for held requests) or idle (kept warm for idle_ttl).", []string{"state"}, nil),
			bytes: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "watch_bytes"),
				"Memory the watches hold (representations, and about 1 KiB a watch), as counted against max_memory.", nil, nil),
			clusterWatches: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "cluster_watches"),
				"Watches of engines with a cluster, by what this instance did at their last poll: polls (it holds the key's lease), follows (another instance polls; this one reads Redis), alone (Redis could not be reached), none (no poll yet).", []string{"role"}, nil),
			streams: prometheus.NewDesc(prometheus.BuildFQName(ns, sub, "streams"),
				"Streams open now, by delivery: sse, websocket.", []string{"delivery"}, nil),
		},
	}
	m.events = make(map[string]prometheus.Counter, 2)
	for _, d := range []string{deliverySSE, deliveryWebSocket} {
		m.events[d] = m.eventsVec.WithLabelValues(d)
		for _, r := range endReasons {
			m.endedVec.WithLabelValues(d, r)
		}
	}
	for _, c := range capNames {
		m.byCap[c] = m.rejectedVec.WithLabelValues(c)
	}
	for _, e := range []string{"gzip", "zstd"} { // Caddy's own; a plugin's appears when used
		m.compressions.WithLabelValues(e)
	}
	// Every series exists from the start, at zero, so that rates and
	// ratios need no special case for a series not yet seen.
	for _, r := range longpoll.PollResults() {
		m.polls = append(m.polls, m.pollsVec.WithLabelValues(r.String()))
	}
	for _, o := range outcomes {
		m.byOutcome[o] = outcomeMetrics{
			answers: m.answersVec.WithLabelValues(o),
			held:    m.heldVec.WithLabelValues(o),
		}
	}
	return m
}

// register adds the metrics to reg, a config's registry. A collector that
// reg already has (another longpoll handler of the same config registered
// it) is no error.
func (m *metricSet) register(reg prometheus.Registerer) error {
	var errs []error
	for _, c := range []prometheus.Collector{m.pollsVec, m.privatePolls, m.alone, m.pollDuration, m.answersVec, m.heldVec, m.delivery, m.rejectedVec, m.evicted, m.eventsVec, m.endedVec, m.compressions, m.gauges} {
		var already prometheus.AlreadyRegisteredError
		if err := reg.Register(c); err != nil && !errors.As(err, &already) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// answered counts a long-poll request's answer, with how long it was held
// and, for a change, how long its answer took from the poll that found the
// change; end is nil for a request that never waited.
func (m *metricSet) answered(outcome string, end *holdEnd) {
	om, ok := m.byOutcome[outcome]
	if !ok {
		return
	}
	om.answers.Inc()
	if end == nil || !end.held {
		return
	}
	om.held.Observe(end.heldFor.Seconds())
	if outcome == outcomeChanged && end.st != nil && !end.st.Since.IsZero() {
		m.delivery.Observe(time.Since(end.st.Since).Seconds())
	}
}

// sent counts a version sent to a stream of delivery d.
func (m *metricSet) sent(d string, disabled bool) {
	if c, ok := m.events[d]; ok && !disabled {
		c.Inc()
	}
}

// opened counts a stream of delivery d that starts, in its hub (for the
// gauge and the admin view) and, with metrics on, in the answers.
func (m *metricSet) opened(d string, disabled bool, hb *hub) {
	hb.streams(d).Add(1)
	if !disabled {
		m.answered(outcomeStream, nil)
	}
}

// closed counts a stream of delivery d that ends, and why.
func (m *metricSet) closed(d, reason string, disabled bool, hb *hub) {
	hb.streams(d).Add(-1)
	if !disabled {
		m.endedVec.WithLabelValues(d, reason).Inc()
	}
}

// rejected counts a request rejected by the cap named c.
func (m *metricSet) rejected(c string) {
	if n, ok := m.byCap[c]; ok {
		n.Inc()
	}
}

// pollObserver reports an engine's polls, while its hub has metrics on.
type pollObserver struct {
	m  *metricSet
	hb *hub
}

// Polled implements longpoll.Observer.
func (o pollObserver) Polled(r longpoll.PollResult, took time.Duration) {
	if !o.hb.metrics.Load() {
		return
	}
	if int(r) < len(o.m.polls) {
		o.m.polls[r].Inc()
	}
	o.m.pollDuration.Observe(took.Seconds())
}

// Evicted implements longpoll.Observer.
func (o pollObserver) Evicted(n int) {
	if o.hb.metrics.Load() {
		o.m.evicted.Add(float64(n))
	}
}

// gaugeCollector reports the held requests and watches of every running
// hub with metrics on, read when the metrics are scraped: nothing is counted
// on the request path, and a gauge cannot drift from what it measures.
type gaugeCollector struct {
	held, watches, bytes, streams, clusterWatches *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c gaugeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.held
	ch <- c.watches
	ch <- c.bytes
	ch <- c.streams
	ch <- c.clusterWatches
}

// Collect implements prometheus.Collector.
func (c gaugeCollector) Collect(ch chan<- prometheus.Metric) {
	var held, active, all int
	var bytes, sse, ws int64
	var roles [4]int // by cluster.Role
	clustered := false
	for _, hb := range runningHubs() {
		if hb.metrics.Load() && hb.member != nil {
			clustered = true
			for info := range hb.engine.Watches() {
				if f, ok := info.Fetcher.(*cluster.Fetcher); ok && int(f.Role()) < len(roles) {
					roles[f.Role()]++
				}
			}
		}
		if hb.metrics.Load() {
			st := hb.engine.Stats()
			held += hb.limiter.Held()
			active += st.Active
			all += st.Watches
			bytes += st.Bytes
			sse += hb.openSSE.Load()
			ws += hb.openWS.Load()
		}
	}
	ch <- prometheus.MustNewConstMetric(c.streams, prometheus.GaugeValue, float64(sse), deliverySSE)
	ch <- prometheus.MustNewConstMetric(c.streams, prometheus.GaugeValue, float64(ws), deliveryWebSocket)
	if clustered {
		for r, n := range roles {
			ch <- prometheus.MustNewConstMetric(c.clusterWatches, prometheus.GaugeValue, float64(n), cluster.Role(r).String())
		}
	}
	ch <- prometheus.MustNewConstMetric(c.held, prometheus.GaugeValue, float64(held))
	ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.GaugeValue, float64(bytes))
	ch <- prometheus.MustNewConstMetric(c.watches, prometheus.GaugeValue, float64(active), "active")
	// a watch dropped while requests still held it is active, not kept
	ch <- prometheus.MustNewConstMetric(c.watches, prometheus.GaugeValue, float64(max(all-active, 0)), "idle")
}

// Interface guards
var (
	_ prometheus.Collector = gaugeCollector{}
	_ longpoll.Observer    = pollObserver{}
)

// clusterAlone counts an engine that loses its cluster's Redis (alone) or
// has it again.
func (m *metricSet) clusterAlone(alone bool) {
	if alone {
		m.alone.Inc()
	} else {
		m.alone.Dec()
	}
}
