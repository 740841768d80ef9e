// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"net/http"
	"time"
)

// State is what a watch knows, published as one immutable value. A
// subscriber reads it, asks Decide what to do, and when told to wait,
// waits on Changed, which is closed when a state that matters to
// subscribers replaces it: a new representation (a different ETag), the
// first result of a new watch, the first failure of a run, a switch to
// pass-through, or the engine closing.
type State struct {
	// Snapshot is the last representation polled, nil before the first
	// successful poll.
	Snapshot *Snapshot
	// Failure is set while the last poll failed.
	Failure *Failure
	// Passthrough is set when the upstream's response cannot be shared:
	// subscribers must serve their request themselves.
	Passthrough bool
	// Closed is set when the engine closed: no state will follow.
	Closed bool
	// Previous is the ETag of the representation that Snapshot replaced,
	// "" for a watch's first: a delivery that sends changes as deltas
	// sends one to the subscribers that had that version (see
	// Snapshot.Derived).
	Previous string
	// Since is when the watch's representation took its current value:
	// the end of the poll that found it (or that found the response could
	// not be shared). Zero before the first result.
	Since time.Time

	changed chan struct{}
}

// Changed returns a channel that is closed when a new state matters.
func (s *State) Changed() <-chan struct{} { return s.changed }

// Pending reports whether the watch has no result yet (its first poll is
// under way).
func (s *State) Pending() bool {
	return s.Snapshot == nil && s.Failure == nil && !s.Passthrough && !s.Closed
}

// Failure describes the failing state of a watch.
type Failure struct {
	// Err is the last poll's error.
	Err error
	// RetryAfter is the delay before the watch polls again.
	RetryAfter time.Duration
	// Count is the number of polls that failed in a row.
	Count int
}

// Decision is what a subscriber should do next, given a state and what it
// has. Every delivery (a long-poll, an event stream, a WebSocket) asks
// State.Decide rather than read the state's fields on its own.
type Decision uint8

// Decisions.
const (
	// Wait: nothing new for the subscriber. Wait on Changed (or for the
	// subscriber's own deadline, a long-poll's wait or a stream's
	// heartbeat).
	Wait Decision = iota
	// Send: the state's Snapshot is new to the subscriber.
	Send
	// Fail: the upstream is failing, and the subscriber has nothing it
	// may be given: a long-poll answers with the failure; a stream waits
	// for the upstream, telling its client if it likes.
	Fail
	// PassThrough: the watch cannot share a representation with this
	// subscriber (the response cannot be shared, or varies on a request
	// header whose value differs): it must serve its request on its own.
	PassThrough
	// End: the engine closed; nothing follows. Answer now from what the
	// state holds (a long-poll: its Snapshot or Failure; a stream: close).
	End
)

var decisionNames = [...]string{"wait", "send", "fail", "passthrough", "end"}

// String returns the decision's name.
func (d Decision) String() string {
	if int(d) < len(decisionNames) {
		return decisionNames[d]
	}
	return "unknown"
}

// Decide says what a subscriber should do next in state s. have is what it
// has: the If-None-Match values of a long-poll, or the ETag a stream sent
// last (nil: nothing); header is its request's header, for the upstream's
// Vary. It does not allocate.
func (s *State) Decide(have []string, header http.Header) Decision {
	switch {
	case s.Closed:
		return End
	case s.Passthrough:
		return PassThrough
	case s.Pending():
		return Wait // the watch's first poll
	case s.Snapshot != nil && !s.Snapshot.VaryMatches(header):
		return PassThrough
	case s.Snapshot != nil && MatchETag(have, s.Snapshot.ETag):
		return Wait // it has the representation: nothing new
	case s.Failure != nil && s.Snapshot == nil && len(have) > 0:
		// The first polls failed: a subscriber with a version of its own
		// waits for the watch to reach the upstream.
		return Wait
	case s.Failure != nil:
		// The representation it does not have may be stale: the upstream
		// fails to say.
		return Fail
	}
	return Send
}
