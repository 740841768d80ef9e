// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// TestAskedWithoutVersion checks when a watch reports clients that
// long-poll without a validator: only for a loop (the same client, the same
// version, several times in a row, seconds apart), never for a client's
// first request or a few clients starting together, and once per watch, so
// that the log line it causes cannot flood.
func TestAskedWithoutVersion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e, err := longpoll.New(longpoll.Config{Interval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer e.Close()
		f := newFake(serve("x"))
		sub, err := e.Join(longpoll.KeyOf("k"), "/k", f.New)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()

		ask := func(client, etag string) bool { return sub.AskedWithoutVersion(client, etag) }
		steps := []struct {
			client, etag string
			after        time.Duration
			want         bool
		}{
			{"a", `"v1"`, 0, false},
			{"b", `"v1"`, 0, false}, // another client starting: resets
			{"a", `"v1"`, 0, false},
			{"a", `"v1"`, 0, false},
			{"a", `"v2"`, 0, false}, // a new version: the client is following
			{"a", `"v2"`, 11 * time.Second, false},
			{"a", `"v2"`, 11 * time.Second, false}, // too far apart: a page reload, not a loop
			{"a", `"v2"`, time.Second, false},
			{"a", `"v2"`, time.Second, true}, // three in a row, a second apart
			{"a", `"v2"`, 0, false},          // reported once per watch
			{"c", `"v2"`, 0, false},
			{"c", `"v2"`, 0, false},
			{"c", `"v2"`, 0, false},
		}
		for i, s := range steps {
			time.Sleep(s.after)
			if got := ask(s.client, s.etag); got != s.want {
				t.Errorf("step %d: AskedWithoutVersion(%q, %q) = %v, want %v", i, s.client, s.etag, got, s.want)
			}
		}
	})
}
