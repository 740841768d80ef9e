// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// pollLog is an Observer that records poll results.
type pollLog struct {
	mu      sync.Mutex
	results []longpoll.PollResult
	took    []time.Duration
}

func (p *pollLog) Polled(r longpoll.PollResult, took time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.results = append(p.results, r)
	p.took = append(p.took, took)
}

func (p *pollLog) Evicted(int) {}

func (p *pollLog) get() []longpoll.PollResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.results)
}

// waitPolls advances the bubble's clock until p has n results.
func (p *pollLog) waitPolls(t *testing.T, n int) []longpoll.PollResult {
	t.Helper()
	for range 600 {
		if got := p.get(); len(got) >= n {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("polls observed: %v after a minute, want %d", p.get(), n)
	return nil
}

// One run of a scripted upstream: every poll is reported with what it
// found, the watch's description follows, and the failing upstream is
// logged once when it starts failing and once when it recovers, never per
// poll, and never with the key's parts.
func TestObserverAndFailureLog(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		a1, a2, b := mustSnapshot(t, "a"), mustSnapshot(t, "a"), mustSnapshot(t, "b")
		boom := &longpoll.UpstreamError{Status: 503, Err: errors.New("upstream down")}
		steps := []struct {
			snap *longpoll.Snapshot // nil with err nil: return prev (upstream 304)
			err  error
			want longpoll.PollResult
		}{
			{snap: a1, want: longpoll.PollChanged},
			{want: longpoll.PollNotModified},
			{snap: a2, want: longpoll.PollUnchanged},
			{err: boom, want: longpoll.PollFailed},
			{err: boom, want: longpoll.PollFailed},
			{err: boom, want: longpoll.PollFailed},
			{err: boom, want: longpoll.PollFailed},
			{snap: b, want: longpoll.PollChanged},
			{err: fmt.Errorf("%w: too large", longpoll.ErrUncacheable), want: longpoll.PollUncacheable},
		}
		f := newFake(func(_ context.Context, prev *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
			s := steps[min(int(call), len(steps))-1]
			switch {
			case s.err != nil:
				return nil, s.err
			case s.snap == nil:
				return prev, nil
			}
			return s.snap, nil
		})
		core, logs := observer.New(zapcore.DebugLevel)
		polls := &pollLog{}
		e, err := longpoll.New(longpoll.Config{Interval: time.Second},
			longpoll.WithLogger(zap.New(core)), longpoll.WithObserver(polls))
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		key := longpoll.KeyOf("GET", "/orders/42", "Bearer s3cr3t-token")
		sub, err := e.Join(key, "/orders/42", f.New)
		if err != nil {
			t.Fatal(err)
		}

		start := time.Now()
		polls.waitPolls(t, 3)
		info := onlyWatch(t, e)
		if info.Key != key || info.Topic != "/orders/42" || info.Waiters != 1 ||
			info.ETag != a1.ETag || info.LastResult != longpoll.PollUnchanged || info.Failures != 0 {
			t.Errorf("after three polls: %+v, want key, topic, 1 waiter, ETag %s, last result unchanged, no failures", info, a1.ETag)
		}
		if !info.LastChange.Equal(start) || !info.LastPoll.After(start) {
			t.Errorf("last change %v, last poll %v; want the first poll's end (%v), a later poll", info.LastChange, info.LastPoll, start)
		}
		if st := e.Stats(); st.Watches != 1 || st.Active != 1 {
			t.Errorf("Stats() = %+v, want 1 watch, 1 active", st)
		}

		polls.waitPolls(t, 7)
		if info := onlyWatch(t, e); info.Failures != 4 || info.LastResult != longpoll.PollFailed || info.ETag != a1.ETag {
			t.Errorf("after four failed polls: %+v, want 4 failures, last result error, the last good ETag kept", info)
		}
		got := polls.waitPolls(t, len(steps))
		for i, s := range steps {
			if got[i] != s.want {
				t.Errorf("poll %d: %v, want %v (all: %v)", i+1, got[i], s.want, got)
			}
		}
		if info := onlyWatch(t, e); !info.Passthrough || info.Failures != 0 || info.LastChange.IsZero() {
			t.Errorf("after an uncacheable response: %+v, want pass-through, no failures", info)
		}

		failing := logs.FilterMessage("upstream poll failing").All()
		if len(failing) != 1 || failing[0].Level != zapcore.ErrorLevel {
			t.Errorf("'upstream poll failing' logged %d times (%v), want once at error for 4 failed polls", len(failing), failing)
		}
		recovered := logs.FilterMessage("upstream poll recovered").All()
		if len(recovered) != 1 || recovered[0].Level != zapcore.WarnLevel ||
			recovered[0].ContextMap()["failed_polls"] != int64(4) {
			t.Errorf("'upstream poll recovered' logged %v, want once at warn with failed_polls 4", recovered)
		}
		for _, entry := range logs.All() {
			line := fmt.Sprint(entry.Message, entry.ContextMap())
			if strings.Contains(line, "s3cr3t") {
				t.Errorf("log line %q holds a part of the key", line)
			}
			if entry.Level < zapcore.InfoLevel {
				continue
			}
			if w, _ := entry.ContextMap()["watch"].(string); w != key.Short() {
				t.Errorf("log line %q names watch %q, want %q", entry.Message, w, key.Short())
			}
		}

		sub.Close()
		if st := e.Stats(); st.Watches != 1 || st.Active != 0 {
			t.Errorf("Stats() after the last subscriber left = %+v, want 1 watch, 0 active", st)
		}
	})
}

// Watches lists every watch, and Stats counts them without visiting them:
// active ones with subscribers, idle ones until they are forgotten.
func TestWatchesAndStats(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 10 * time.Second})
		defer e.Close()
		f := newFake(serve("x"))
		var subs []*longpoll.Subscription
		for i := range 3 {
			for range i + 1 {
				sub, err := e.Join(longpoll.KeyOf(fmt.Sprint(i)), fmt.Sprint("/t/", i), f.New)
				if err != nil {
					t.Fatal(err)
				}
				subs = append(subs, sub)
			}
		}
		synctest.Wait()
		waiters := map[string]int{}
		for info := range e.Watches() {
			waiters[info.Topic] = info.Waiters
		}
		if want := map[string]int{"/t/0": 1, "/t/1": 2, "/t/2": 3}; fmt.Sprint(waiters) != fmt.Sprint(want) {
			t.Errorf("Watches() waiters by topic = %v, want %v", waiters, want)
		}
		if st := e.Stats(); st.Watches != 3 || st.Active != 3 {
			t.Errorf("Stats() = %+v, want 3 watches, 3 active", st)
		}
		subs[0].Close() // the only subscriber of /t/0
		subs[1].Close() // one of two of /t/1
		if st := e.Stats(); st.Watches != 3 || st.Active != 2 {
			t.Errorf("Stats() = %+v, want 3 watches, 2 active", st)
		}
		n := 0
		for range e.Watches() {
			n++
			break // the iterator stops when asked
		}
		if n != 1 {
			t.Errorf("Watches() went on after break: %d", n)
		}
		time.Sleep(11 * time.Second)
		if st := e.Stats(); st.Watches != 2 || st.Active != 2 {
			t.Errorf("Stats() after idle_ttl = %+v, want the idle watch forgotten: 2 watches, 2 active", st)
		}
		for _, s := range subs[2:] {
			s.Close()
		}
		if st := e.Stats(); st.Active != 0 {
			t.Errorf("Stats() with no subscriber = %+v, want 0 active", st)
		}
	})
}

func onlyWatch(t *testing.T, e *longpoll.Engine) longpoll.WatchInfo {
	t.Helper()
	var all []longpoll.WatchInfo
	for info := range e.Watches() {
		all = append(all, info)
	}
	if len(all) != 1 {
		t.Fatalf("Watches() = %+v, want one watch", all)
	}
	return all[0]
}

func TestPollResultString(t *testing.T) {
	t.Parallel()
	var names []string
	for _, r := range longpoll.PollResults() {
		names = append(names, r.String())
	}
	if got, want := strings.Join(names, ","), "changed,unchanged,not_modified,error,uncacheable"; got != want {
		t.Errorf("PollResults names = %s, want %s", got, want)
	}
	if got := longpoll.PollResult(200).String(); got != "unknown" {
		t.Errorf("PollResult(200).String() = %q, want unknown", got)
	}
}

// Stats counts a watch as active from its first subscriber to its last,
// whatever happens to the watch in between: a pass-through watch replaced
// while a subscriber still has it, the engine closing under its
// subscribers.
func TestStatsActiveAcrossRetireAndClose(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		e := newEngine(t, longpoll.Config{Interval: time.Second, IdleTTL: 5 * time.Second})
		pass := newFake(fail(fmt.Errorf("%w: sets a cookie", longpoll.ErrUncacheable)))
		a := subscribe(t, e, longpoll.KeyOf("pass"), pass)
		synctest.Wait()
		if !a.State().Passthrough {
			t.Fatalf("state %+v, want pass-through", a.State())
		}
		time.Sleep(6 * time.Second) // past idle_ttl: the next subscriber probes again
		b := subscribe(t, e, longpoll.KeyOf("pass"), pass)
		synctest.Wait()
		if st := e.Stats(); st.Watches != 1 || st.Active != 2 {
			t.Errorf("pass-through watch replaced under a subscriber: %+v, want 1 watch kept, 2 active (old and new)", st)
		}
		a.Close()
		b.Close()
		if st := e.Stats(); st.Active != 0 || st.Watches != 1 {
			t.Errorf("after a replaced pass-through watch lost its subscribers: %+v, want 1 watch, 0 active", st)
		}

		ok := newFake(serve("x"))
		c, err := e.Join(longpoll.KeyOf("ok"), "/ok", ok.New)
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		d, err := e.Join(longpoll.KeyOf("ok"), "/ok", ok.New)
		if err != nil {
			t.Fatal(err)
		}
		if st := e.Stats(); st.Active != 1 {
			t.Errorf("a watch with two subscribers: %+v, want 1 active", st)
		}
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		if st := e.Stats(); st.Active != 1 || st.Watches != 0 {
			t.Errorf("closed with subscribers: %+v, want no watch kept and 1 active until they leave", st)
		}
		d.Close()
		d.Close() // idempotent: the watch keeps its other subscriber
		if st := e.Stats(); st.Active != 1 {
			t.Errorf("one of two subscribers closed twice: %+v, want 1 active", st)
		}
		c.Close()
		if st := e.Stats(); st.Active != 0 {
			t.Errorf("closed, every subscriber gone: %+v, want 0 active", st)
		}
	})
}
