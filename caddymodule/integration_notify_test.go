// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// itNotifySite is a site with longpoll (a 30s interval: only notifications
// release clients quickly) in front of up, and the notify endpoint.
func itNotifySite(up *itUpstream) string {
	return "\thandle /_notify {\n\t\tlongpoll_notify {\n\t\t\tsecret s3cret\n\t\t}\n\t}\n" +
		itSite("interval 30s", up)
}

// itNotify posts body to the notify endpoint with the given bearer token.
func itNotify(t *testing.T, c *http.Client, token, method, body string) itReply {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, fmt.Sprintf("http://localhost:%d/_notify", itPort()), strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s /_notify: %v", method, err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	_, _ = fmt.Fprint(&b, readAllString(resp))
	return itReply{Status: resp.StatusCode, Header: resp.Header, Body: b.String(), Elapsed: time.Since(start)}
}

func readAllString(resp *http.Response) string {
	var sb strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			return sb.String()
		}
	}
}

// TestIntegrationNotifyReleases holds clients on several paths, with a 30s
// interval, and notifies some topics: the clients of matching topics (exact
// and by prefix) are released with the new data well before the interval,
// each user with their own data; the clients of other topics stay held, and
// their upstream sees no extra poll.
func TestIntegrationNotifyReleases(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	up.set("/orders/42", http.StatusOK, "order 42 v1")
	up.set("/orders/43", http.StatusOK, "order 43 v1")
	up.set("/users/1", http.StatusOK, "user 1 v1")
	itLoad(t, tc, itConfig("", itNotifySite(up)))
	c, _ := itClient(t)

	hold := func(path string, hdr ...string) <-chan itReply {
		first := itMustSend(t, c, "GET", path, append([]string{"Prefer", "wait=1"}, hdr...)...)
		return itSendAsync(t, t.Context(), c, "GET", path,
			append([]string{"Prefer", "wait=15", "If-None-Match", first.Header.Get("Etag")}, hdr...)...)
	}
	o42a := hold("/orders/42", "Authorization", "Bearer alice")
	o42b := hold("/orders/42", "Authorization", "Bearer bob")
	o43 := hold("/orders/43")
	u1 := hold("/users/1")
	itWaitHeld(t, 4)
	usersPolls := up.hitsFor("/users/1")

	up.set("/orders/42", http.StatusOK, "order 42 v2")
	up.set("/orders/43", http.StatusOK, "order 43 v2")
	start := time.Now()
	r := itNotify(t, c, "s3cret", http.MethodPost, `{"topics": ["/orders/42", "/orders/4*"]}`)
	if r.Status != http.StatusAccepted || !strings.Contains(r.Body, `"triggered": 3`) {
		t.Errorf("notify: got %d %q, want 202 with 3 watches triggered (two users on /orders/42, /orders/43)", r.Status, r.Body)
	}
	for name, ch := range map[string]<-chan itReply{"alice /orders/42": o42a, "bob /orders/42": o42b, "/orders/43": o43} {
		got := itReceive(t, ch, 5*time.Second)
		want := "order 42 v2"
		if name == "/orders/43" {
			want = "order 43 v2"
		}
		if got.Status != http.StatusOK || got.Body != want || time.Since(start) > 3*time.Second {
			t.Errorf("%s: got %d %q %v after the notification, want 200 %q well before the 30s interval",
				name, got.Status, got.Body, time.Since(start), want)
		}
	}
	select {
	case got := <-u1:
		t.Errorf("/users/1 (not notified): answered %d %q, want still held", got.Status, got.Body)
	case <-time.After(500 * time.Millisecond):
	}
	if n := up.hitsFor("/users/1") - usersPolls; n != 0 {
		t.Errorf("/users/1 (not notified): %d more polls, want 0", n)
	}
	// each user's poll carried that user's credentials
	for _, user := range []string{"alice", "bob"} {
		if len(up.seenWith("Authorization", "Bearer "+user)) < 2 {
			t.Errorf("upstream saw fewer than 2 requests with %s's credentials, want the first and the notified poll", user)
		}
	}
}

// TestIntegrationNotifyBadRequests sends each kind of bad notification: each
// gets its status and a message naming the problem, and none polls.
func TestIntegrationNotifyBadRequests(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	up.set("/thing", http.StatusOK, "v1")
	itLoad(t, tc, itConfig("", itNotifySite(up)))
	c, _ := itClient(t)
	first := itMustSend(t, c, "GET", "/thing", "Prefer", "wait=1")
	held := itSendAsync(t, t.Context(), c, "GET", "/thing", "Prefer", "wait=10", "If-None-Match", first.Header.Get("Etag"))
	itWaitHeld(t, 1)
	polls := up.hitsFor("/thing")

	many := `{"topics": [` + strings.Repeat(`"/thing",`, 1000) + `"/thing"]}`
	tests := []struct {
		name, token, method, body string
		status                    int
		message                   string
	}{
		{"no token", "", http.MethodPost, `{"topics": ["/thing"]}`, http.StatusUnauthorized, "bearer token"},
		{"wrong token", "s3cre", http.MethodPost, `{"topics": ["/thing"]}`, http.StatusUnauthorized, "bearer token"},
		{"GET", "s3cret", http.MethodGet, "", http.StatusMethodNotAllowed, "use POST"},
		{"malformed JSON", "s3cret", http.MethodPost, `{"topics": ["/thing"`, http.StatusBadRequest, "malformed JSON"},
		{"unknown field", "s3cret", http.MethodPost, `{"topic": "/thing"}`, http.StatusBadRequest, "malformed JSON"},
		{"empty list", "s3cret", http.MethodPost, `{"topics": []}`, http.StatusBadRequest, "empty"},
		{"too many topics", "s3cret", http.MethodPost, many, http.StatusBadRequest, "at most 1000"},
		{"not a path", "s3cret", http.MethodPost, `{"topics": ["thing"]}`, http.StatusBadRequest, "not a path"},
		{"star inside", "s3cret", http.MethodPost, `{"topics": ["/th*ng"]}`, http.StatusBadRequest, "not at the end"},
		{"trailing bracket", "s3cret", http.MethodPost, `{"topics": ["/thing"]}]`, http.StatusBadRequest, "malformed JSON"},
		{"too many prefixes", "s3cret", http.MethodPost, `{"topics": [` + strings.Repeat(`"/t/*",`, 16) + `"/t/*"]}`, http.StatusBadRequest, "at most 16"},
		{"body too large", "s3cret", http.MethodPost, `{"topics": ["/thing"], "pad": "` + strings.Repeat("x", 70<<10) + `"}`, http.StatusRequestEntityTooLarge, "body over"},
	}
	for _, tt := range tests {
		r := itNotify(t, c, tt.token, tt.method, tt.body)
		if r.Status != tt.status || !strings.Contains(r.Body, tt.message) {
			t.Errorf("%s: got %d %q, want %d with a message containing %q", tt.name, r.Status, r.Body, tt.status, tt.message)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if n := up.hitsFor("/thing") - polls; n != 0 {
		t.Errorf("bad notifications caused %d polls, want 0", n)
	}
	select {
	case got := <-held:
		t.Errorf("held request answered after bad notifications: %d %q", got.Status, got.Body)
	default:
	}
}

// TestIntegrationNotifyBurst sends 1,000 notifications for one watch: they
// coalesce into a bounded number of polls (one at a time, one more after).
func TestIntegrationNotifyBurst(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	up.set("/burst", http.StatusOK, "v1")
	itLoad(t, tc, itConfig("", itNotifySite(up)))
	c, _ := itClient(t)
	first := itMustSend(t, c, "GET", "/burst", "Prefer", "wait=1")
	_ = itSendAsync(t, t.Context(), c, "GET", "/burst", "Prefer", "wait=10", "If-None-Match", first.Header.Get("Etag"))
	itWaitHeld(t, 1)
	polls := up.hitsFor("/burst")
	for range 1000 {
		if r := itNotify(t, c, "s3cret", http.MethodPost, `{"topics": ["/burst"]}`); r.Status != http.StatusAccepted {
			t.Fatalf("notify: got %d %q, want 202", r.Status, r.Body)
		}
	}
	time.Sleep(500 * time.Millisecond)
	n := up.hitsFor("/burst") - polls
	t.Logf("1,000 notifications caused %d polls", n)
	if n < 1 || n > 20 {
		t.Errorf("1,000 notifications caused %d polls, want between 1 and 20 (one per 100ms window)", n)
	}
}
