// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// Pointer syntax errors are refused, naming the pointer.
func TestParseIgnoreErrors(t *testing.T) {
	for _, p := range []string{"", "items/0", "/a~2b", "/a~"} {
		_, err := longpoll.ParseIgnore([]string{"/ok", p})
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", p)) {
			t.Errorf("ParseIgnore(%q): got %v, want an error naming it", p, err)
		}
	}
	if ig, err := longpoll.ParseIgnore(nil); ig != nil || err != nil {
		t.Errorf("ParseIgnore(nil) = %v, %v; want nil, nil", ig, err)
	}
}

func jsonSnapshot(t *testing.T, body string) *longpoll.Snapshot {
	t.Helper()
	s, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"application/json"}}, []byte(body), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// Two bodies are the same under an Ignore when they differ only in the
// fields it names; anything else, another status or content type, or a
// body that is not JSON, is a change.
func TestIgnoreSame(t *testing.T) {
	ig, err := longpoll.ParseIgnore([]string{"/generated_at", "/items/*/updated_at", "/meta/a~1b", "/list/0"})
	if err != nil {
		t.Fatal(err)
	}
	base := `{"generated_at": "10:00", "items": [{"id": 1, "updated_at": 5}, {"id": 2, "updated_at": 6}], "meta": {"a/b": 1, "c": 1}, "list": [9, 8]}`
	tests := []struct {
		name, body string
		same       bool
	}{
		{"only ignored fields", `{"generated_at": "10:01", "items": [{"id": 1, "updated_at": 7}, {"id": 2, "updated_at": 8}], "meta": {"a/b": 2, "c": 1}, "list": [0, 8]}`, true},
		{"members reordered, spaces", `{"items":[{"updated_at":5,"id":1},{"id":2,"updated_at":6}],"generated_at":"x","list":[1,8],"meta":{"c":1,"a/b":1}}`, true},
		{"an ignored field gone", `{"items": [{"id": 1}, {"id": 2}], "meta": {"c": 1}, "list": [7, 8]}`, true},
		{"a field that counts", `{"generated_at": "10:00", "items": [{"id": 1, "updated_at": 5}, {"id": 3, "updated_at": 6}], "meta": {"a/b": 1, "c": 1}, "list": [9, 8]}`, false},
		{"an item more", `{"generated_at": "10:00", "items": [{"id": 1}, {"id": 2}, {"id": 3}], "meta": {"a/b": 1, "c": 1}, "list": [9, 8]}`, false},
		{"a number written otherwise", `{"generated_at": "10:00", "items": [{"id": 1.0, "updated_at": 5}, {"id": 2, "updated_at": 6}], "meta": {"a/b": 1, "c": 1}, "list": [9, 8]}`, false},
		{"the second list item", `{"generated_at": "10:00", "items": [{"id": 1, "updated_at": 5}, {"id": 2, "updated_at": 6}], "meta": {"a/b": 1, "c": 1}, "list": [9, 7]}`, false},
		{"not JSON", `{"generated_at": `, false},
	}
	a := jsonSnapshot(t, base)
	for _, tt := range tests {
		if got := longpoll.IgnoreSame(ig, a, jsonSnapshot(t, tt.body)); got != tt.same {
			t.Errorf("%s: same = %v, want %v", tt.name, got, tt.same)
		}
	}
	other, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"text/plain"}}, []byte(base), nil)
	if err != nil {
		t.Fatal(err)
	}
	if longpoll.IgnoreSame(ig, a, other) {
		t.Error("another content type: same, want a change")
	}
}

// A watch whose upstream stamps the time into every body, ignored, is not
// changed by 30 polls; then one real change releases its subscribers with
// the new body. The snapshot and its ETag stay those of the first body.
func TestIgnoreInEngine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ig, err := longpoll.ParseIgnore([]string{"/at"})
		if err != nil {
			t.Fatal(err)
		}
		var shipped atomic.Bool
		f := newFake(func(_ context.Context, _ *longpoll.Snapshot, call int64) (*longpoll.Snapshot, error) {
			status := "open"
			if shipped.Load() {
				status = "shipped"
			}
			return longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"application/json"}},
				fmt.Appendf(nil, `{"status": %q, "at": %d}`, status, call), nil)
		})
		e := newEngine(t, longpoll.Config{Interval: time.Second, Ignore: ig})
		defer e.Close()
		sub := subscribe(t, e, testKey, f)
		defer sub.Close()
		synctest.Wait()
		first := sub.State()
		for range 30 {
			time.Sleep(time.Second)
			synctest.Wait()
		}
		if calls := f.calls.Load(); calls < 30 {
			t.Fatalf("%d polls in 30 s, want 30 or more", calls)
		}
		if isClosed(first.Changed()) || sub.State().Snapshot != first.Snapshot {
			t.Fatalf("after 30 polls that changed only the ignored field: released, or the snapshot replaced")
		}
		if got := bodyOf(first); got != `{"status": "open", "at": 1}` {
			t.Errorf("kept body: %s, want the first poll's", got)
		}
		shipped.Store(true)
		time.Sleep(time.Second)
		synctest.Wait()
		if !isClosed(first.Changed()) || !strings.Contains(bodyOf(sub.State()), "shipped") {
			t.Errorf("after a real change (%d calls): not released, or body %s", f.calls.Load(), bodyOf(sub.State()))
		}
	})
}

// BenchmarkIgnore100KiB is what Config.Ignore costs a poll of a 100 KiB
// JSON list: parsing the new body, removing two ignored fields from each
// item and the top, and hashing the rest in a canonical form (the
// snapshot's side is made once per snapshot).
func BenchmarkIgnore100KiB(b *testing.B) {
	ig, err := longpoll.ParseIgnore([]string{"/generated_at", "/items/*/updated_at"})
	if err != nil {
		b.Fatal(err)
	}
	var body strings.Builder
	body.WriteString(`{"generated_at": "2026-12-02T12:00:00Z", "items": [`)
	for i := 0; body.Len() < 100<<10; i++ {
		if i > 0 {
			body.WriteString(", ")
		}
		fmt.Fprintf(&body, `{"id": %d, "name": "item %d", "status": "open", "price": %d.%02d, "updated_at": "2026-12-02T11:%02d:00Z"}`, i, i, i, i%100, i%60)
	}
	body.WriteString("]}")
	p := []byte(body.String())
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if !longpoll.IgnoreDigest(ig, p) {
			b.Fatal("not JSON")
		}
	}
}
