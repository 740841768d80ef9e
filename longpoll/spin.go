// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import "time"

// A client that long-polls without naming the version it has (no
// If-None-Match) is answered at once, every time: a loop that forgets to
// send the ETag back spins, one upstream-free request per round trip, with
// no sign but a counter. A watch notices the same client asking for the
// same version that way several times in a row and says so once.

// Limits of the check: spinRepeats requests in a row from one client for
// one version, each within spinGap of the one before.
const (
	spinRepeats = 3
	spinGap     = 10 * time.Second
)

// spinCheck is a watch's record of the last requests that named no version.
type spinCheck struct {
	client, etag string
	count        int
	last         time.Time
	reported     bool
}

// AskedWithoutVersion records that the subscription's request named no
// version and was answered at once with etag. client tells clients apart
// (an address). It reports true once in the life of the watch: when the
// same client has asked for the same version that way several times in a
// row, seconds apart at most, which a client's first request, or a few
// clients starting together, never do.
func (s *Subscription) AskedWithoutVersion(client, etag string) bool {
	w := s.w
	w.mu.Lock()
	defer w.mu.Unlock()
	c := &w.spin
	if c.reported {
		return false
	}
	now := time.Now()
	if c.client != client || c.etag != etag || now.Sub(c.last) > spinGap {
		c.client, c.etag, c.count = client, etag, 0
	}
	c.count++
	c.last = now
	if c.count >= spinRepeats {
		c.reported = true
		c.client, c.etag = "", ""
		return true
	}
	return false
}
