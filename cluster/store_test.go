// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package cluster_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-longpoll/caddy-longpoll/cluster"
	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

func newStore(t *testing.T) (*cluster.Store, *miniredis.Miniredis, *redis.Client) {
	t.Helper()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { rdb.Close() })
	return cluster.NewStore(rdb, "ns1"), mr, rdb
}

func snap(t *testing.T, body string) *longpoll.Snapshot {
	t.Helper()
	s, err := longpoll.NewSnapshot(http.StatusOK, http.Header{"Content-Type": {"application/json"}}, []byte(body), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var key = longpoll.KeyOf("GET", "example.com", "/orders/42", "Bearer secret-token")

// One instance holds a key's lease at a time; it renews it, and another
// takes it, with a newer fence, only once it expired or was given back.
func TestLease(t *testing.T) {
	s, mr, _ := newStore(t)
	ctx := context.Background()
	a, b := cluster.NewHolder(), cluster.NewHolder()
	const ttl = 3 * time.Second
	must := func(holder string, want int64) {
		t.Helper()
		got, err := s.Acquire(ctx, key, holder, ttl, time.Minute)
		if err != nil || got != want {
			t.Fatalf("Acquire = %d, %v, want %d", got, err, want)
		}
	}
	must(a, 1)
	must(b, 0) // a holds it
	mr.FastForward(2 * time.Second)
	must(a, 1) // renewed: the same fence, a new expiry
	mr.FastForward(2 * time.Second)
	must(b, 0) // still a's, thanks to the renewal
	mr.FastForward(2 * time.Second)
	must(b, 2) // a's lease expired: b takes it, with a newer fence
	must(a, 0)
	if err := s.Release(ctx, key, a, 1); err != nil {
		t.Fatal(err)
	}
	must(a, 0) // a cannot give back what is b's
	if err := s.Release(ctx, key, b, 1); err != nil {
		t.Fatal(err)
	}
	must(a, 0) // nor b a lease of an older fence than its own
	if err := s.Release(ctx, key, b, 2); err != nil {
		t.Fatal(err)
	}
	must(a, 3) // given back: taken at once
}

// A holder that lost its lease never overwrites what its successor wrote,
// and a reader gets the successor's representation.
func TestFencedWrite(t *testing.T) {
	s, mr, _ := newStore(t)
	ctx := context.Background()
	a, b := cluster.NewHolder(), cluster.NewHolder()
	fa, _ := s.Acquire(ctx, key, a, time.Second, time.Minute)
	if err := s.Write(ctx, key, a, fa, snap(t, `{"v":1}`), time.Minute); err != nil {
		t.Fatalf("the holder's write: %v", err)
	}
	mr.FastForward(2 * time.Second) // a pauses past its lease
	fb, _ := s.Acquire(ctx, key, b, time.Second, time.Minute)
	if err := s.Write(ctx, key, a, fa, snap(t, `{"v":"late"}`), time.Minute); !errors.Is(err, cluster.ErrFenced) {
		t.Errorf("a deposed holder's write while another holds the lease: %v, want ErrFenced", err)
	}
	v2 := snap(t, `{"v":2}`)
	if err := s.Write(ctx, key, b, fb, v2, time.Minute); err != nil {
		t.Fatalf("the new holder's write: %v", err)
	}
	mr.FastForward(2 * time.Second) // b's lease lapses too; nobody holds it
	if err := s.Write(ctx, key, a, fa, snap(t, `{"v":"late"}`), time.Minute); !errors.Is(err, cluster.ErrFenced) {
		t.Errorf("a deposed holder's write over a newer fence: %v, want ErrFenced", err)
	}
	got, err := s.Read(ctx, key, nil)
	if err != nil || got.ETag != v2.ETag || string(got.Body) != `{"v":2}` {
		t.Fatalf("Read = %v, %v, want the new holder's version", got, err)
	}
	if again, err := s.Read(ctx, key, got); err != nil || again != got {
		t.Errorf("Read with the current version = %p, %v, want that version itself", again, err)
	}
}

// A representation expires after its ttl, and a key nobody wrote has none.
func TestReadExpired(t *testing.T) {
	s, mr, _ := newStore(t)
	ctx := context.Background()
	if _, err := s.Read(ctx, key, nil); !errors.Is(err, cluster.ErrNoSnapshot) {
		t.Errorf("Read of a key never written: %v, want ErrNoSnapshot", err)
	}
	h := cluster.NewHolder()
	f, _ := s.Acquire(ctx, key, h, time.Second, time.Minute)
	if err := s.Write(ctx, key, h, f, snap(t, `{}`), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	mr.FastForward(11 * time.Second)
	if _, err := s.Read(ctx, key, nil); !errors.Is(err, cluster.ErrNoSnapshot) {
		t.Errorf("Read past the ttl: %v, want ErrNoSnapshot", err)
	}
}

// Each write is announced on the namespace's channel with the key's hash
// and the ETag; no credential of the key appears in Redis.
func TestAnnouncementsAndHashedKeys(t *testing.T) {
	s, mr, rdb := newStore(t)
	ctx := context.Background()
	sub := rdb.Subscribe(ctx, s.Channel())
	defer sub.Close()
	if _, err := sub.Receive(ctx); err != nil { // the subscription's confirmation
		t.Fatal(err)
	}
	h := cluster.NewHolder()
	f, _ := s.Acquire(ctx, key, h, time.Second, time.Minute)
	v := snap(t, `{"v":1}`)
	if err := s.Write(ctx, key, h, f, v, time.Minute); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-sub.Channel():
		a, ok := cluster.ParseAnnouncement(m.Payload)
		if !ok || a.KeyHash != s.KeyHash(key) || a.ETag != v.ETag {
			t.Errorf("announcement %q, want the key's hash and %s", m.Payload, v.ETag)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no announcement within 5s")
	}
	for _, k := range mr.Keys() {
		if strings.Contains(k, "secret") || strings.Contains(k, "orders") {
			t.Errorf("Redis key %q holds a part of the watch key", k)
		}
	}
	other := cluster.NewStore(rdb, "ns2")
	if other.KeyHash(key) == s.KeyHash(key) {
		t.Error("two namespaces hash one key alike: their watches would collide")
	}
}

func TestParseURL(t *testing.T) {
	for _, u := range []string{"redis://localhost:6379/0", "redis://:pw@10.0.0.5:6379/2", "rediss://app:pw@redis.example.com:6380/1"} {
		if _, err := cluster.ParseURL(u); err != nil {
			t.Errorf("ParseURL(%q): %v, want none", u, err)
		}
	}
	opts, err := cluster.ParseURL("rediss://app:pw@redis.example.com:6380/1")
	if err != nil || opts.TLSConfig == nil || opts.Username != "app" || opts.Password != "pw" || opts.DB != 1 {
		t.Errorf("rediss URL: %+v, %v, want TLS, user app, db 1", opts, err)
	}
	for name, tc := range map[string]struct{ url, want string }{
		"another scheme":  {"http://u:hunter2@localhost:6379", `scheme "http"`},
		"unix socket":     {"unix:///run/redis.sock", `scheme "unix"`},
		"no host":         {"redis://:hunter2@/0", "no host"},
		"does not parse":  {"redis://u:hunter2 x@local host:6379", "does not parse"},
		"database number": {"redis://u:hunter2@localhost:6379/db", "database"},
	} {
		_, err := cluster.ParseURL(tc.url)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error naming %q", name, err, tc.want)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error %q holds the password", name, err)
		}
	}
}
