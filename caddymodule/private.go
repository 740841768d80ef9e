// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// A long-poll whose watch cannot share a representation with it (the
// upstream sets cookies, varies on a request header whose value the client
// does not share, sends a body over max_body) is held all the same, on its
// client's behalf: a private hold. The module polls with the client's own
// request, at most once an interval (the first poll an interval after the
// request came, or at the end of a shorter wait), compares what it gets
// with the version the client named, by the module's ETag (computed from
// the status, the content headers and the body, never from Set-Cookie or
// the other per-response fields), and answers:
//
//   - with the response whole, its Set-Cookie included, when it differs;
//   - with the response as it comes, never held whole, when its body is
//     over max_body (the poll's answer is passed on: the client is paced);
//   - with 304 when the wait ends, carrying the last poll's Set-Cookie;
//   - with 502 when the wait ends while the last poll failed, or at once
//     for a client that named no version.
//
// Whatever a client's loop, it causes no more than one upstream request an
// interval through its held requests, as short polling at that interval
// would. Nothing of one client's polls reaches another.

// privateHold is the state of one private hold.
type privateHold struct {
	h       *Handler
	r       *http.Request
	f       *fetcher
	sub     *longpoll.Subscription
	lp      *longPoll
	start   time.Time
	ends    time.Time // the end of the wait
	latest  *longpoll.Snapshot
	cookies []string // the Set-Cookie of the last poll
	failed  error    // the last poll's failure, if it failed
	closed  bool     // the engine closed: answer now
	route   *route   // the rest of the client's route, which polls go through
}

// servePrivately holds a long-poll privately (see privateHold) and answers
// it. heldFor is how long it was held on its watch before.
//
//go:noinline
func (h *Handler) servePrivately(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler,
	repl *caddy.Replacer, sub *longpoll.Subscription, lp *longPoll, heldFor time.Duration,
) error {
	start := time.Now().Add(-heldFor)
	p := &privateHold{
		h: h, r: r, f: newFetcher(r, h.MaxBody), sub: sub, lp: lp, start: start,
		route: &route{h: h},
		// shortened by up to a tenth, as a shared wait is
		ends: start.Add(lp.wait - rand.N(lp.wait/10+1)),
	}
	p.route.server, _ = r.Context().Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	p.route.next.Store(&next)
	outcome, err := p.serve(w, next)
	end := holdEnd{held: true, heldFor: time.Since(start), private: true}
	repl.Set("http.longpoll.wait", int(lp.wait/time.Second))
	repl.Set("http.longpoll.held", end.heldFor)
	repl.Set("http.longpoll.outcome", outcome)
	h.delivered(outcome, &end, sub)
	return err
}

// serve polls, once an interval, until the client's answer is known, and
// writes it.
func (p *privateHold) serve(w http.ResponseWriter, next caddyhttp.Handler) (string, error) {
	interval := time.Duration(p.h.Interval)
	pollAt := p.start.Add(interval)
	for {
		if p.closed {
			p.ends = time.Now()
		}
		polled := p.latest != nil || p.failed != nil
		switch {
		case polled && (pollAt.After(p.ends) || !time.Now().Before(p.ends)):
			// the wait ends before the next poll is due (or a slow poll
			// took it to its end): nothing more to learn
			if !p.sleepUntil(p.ends) {
				return outcomeCanceled, nil
			}
			return p.timeout(w)
		case pollAt.After(p.ends):
			pollAt = p.ends // a wait shorter than an interval: one poll at its end
		}
		if !p.sleepUntil(pollAt) {
			return outcomeCanceled, nil
		}
		pollAt = time.Now().Add(interval)
		if !p.h.DisableMetrics {
			metrics.privatePolls.Inc()
		}
		snap, rec, err := p.poll(w)
		switch {
		case rec.Passed():
			if err != nil {
				// the response was cut short, as the next handler
				// would have cut it: abort the client's too
				panic(http.ErrAbortHandler)
			}
			return outcomePassthrough, nil
		case errors.Is(err, longpoll.ErrUncacheable):
			// a response no recorder keeps whole (trailers, an event
			// stream, a protocol switch): the next handler serves it
			return outcomePassthrough, p.h.passOn(w, p.r, next, time.Until(p.ends))
		case err != nil:
			p.latest, p.failed = nil, err
			if len(p.lp.inm) == 0 {
				return p.fail(w)
			}
		case !longpoll.MatchETag(p.lp.inm, snap.ETag):
			return outcomeChanged, writeSnapshot(w, p.r, snap, p.h.variantFor(w, p.r, snap), p.lp.wait, true)
		default:
			p.cookies = snap.Header["Set-Cookie"]
			if snap == p.latest {
				p.cookies = rec.Header()["Set-Cookie"] // the upstream's 304's own, if any
			}
			p.latest, p.failed = snap, nil
		}
	}
}

// sleepUntil waits until t, and reports false if the client left first.
// The engine closing ends the wait early, setting closed.
func (p *privateHold) sleepUntil(t time.Time) bool {
	st := p.sub.State()
	for {
		d := time.Until(t)
		if d <= 0 || p.closed {
			return true
		}
		select {
		case <-p.h.hub.deadlines.After(d):
			// up to a granularity early: the loop waits out the rest
		case <-st.Changed():
			if st = p.sub.State(); st.Closed {
				p.closed = true
			}
		case <-p.r.Context().Done():
			return false
		}
	}
}

// poll polls once with the client's own request, into a recorder that
// passes a body over max_body on to w. The poll has until the end of the
// wait and poll_timeout beyond, as a request passed on would; it ends when
// the client leaves.
//
//go:noinline
func (p *privateHold) poll(w http.ResponseWriter) (*longpoll.Snapshot, *longpoll.Recorder, error) {
	limit := max(time.Until(p.ends), 0) + time.Duration(p.h.PollTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	stop := context.AfterFunc(p.r.Context(), cancel)
	defer stop()
	rec := longpoll.NewRecorder(p.h.MaxBody)
	rec.Private()
	rec.PassOn(w)
	snap, err := p.f.poll(ctx, p.route, p.latest, rec)
	return snap, rec, err
}

// timeout answers at the end of the wait: 304, with the last poll's
// Set-Cookie, or 502 if it failed.
func (p *privateHold) timeout(w http.ResponseWriter) (string, error) {
	if p.failed != nil {
		return p.fail(w)
	}
	if len(p.cookies) > 0 {
		w.Header()["Set-Cookie"] = p.cookies
	}
	writeNotModified(w, p.h.notModifiedFor(w, p.r, p.latest), p.lp.wait)
	return outcomeTimeout, nil
}

// fail answers with the last poll's failure, as a shared hold does.
func (p *privateHold) fail(w http.ResponseWriter) (string, error) {
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(time.Duration(p.h.Interval).Seconds()+0.5))))
	return outcomeError, caddyhttp.Error(http.StatusBadGateway, pollFailure{p.failed})
}
