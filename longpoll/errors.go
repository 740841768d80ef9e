// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"errors"
	"strconv"
	"time"
)

// ErrClosed is returned by Subscribe once the engine is closed.
var ErrClosed = errors.New("longpoll: engine closed")

// ErrTooManyWatches is returned by Subscribe when Config.MaxActive watches
// have subscribers already and the subscription would make one more.
var ErrTooManyWatches = errors.New("longpoll: too many watches polling")

// ErrPollTimeout is the error of a poll that did not end within
// Config.PollTimeout, whatever stage it reached.
var ErrPollTimeout = errors.New("longpoll: no complete response within the poll timeout")

// ErrOverBudget is the error of a poll whose representation does not fit
// in Config.MaxMemory beside those of the watches with subscribers: the
// watch fails the poll (and backs off) rather than keep it.
var ErrOverBudget = errors.New("longpoll: the watches with subscribers hold the memory budget already")

// ErrUncacheable is returned (wrapped) by a Fetcher when the upstream's
// response cannot be held and shared safely: a body over the size limit, a
// response that sets cookies, a streamed response. The watch then stops
// polling and tells its subscribers to pass their requests through.
var ErrUncacheable = errors.New("longpoll: response cannot be shared")

// UpstreamError is a poll that failed: a transport error, a timeout, or an
// upstream status that is not a representation (5xx, 429, 408).
type UpstreamError struct {
	// Status is the upstream's status code, or 0 for a transport error.
	Status int
	// RetryAfter is the delay the upstream asked for with Retry-After, or 0.
	RetryAfter time.Duration
	// Err is the underlying error, if any.
	Err error
}

func (e *UpstreamError) Error() string {
	switch {
	case e.Err != nil && e.Status != 0:
		return "upstream status " + strconv.Itoa(e.Status) + ": " + e.Err.Error()
	case e.Err != nil:
		return "upstream: " + e.Err.Error()
	default:
		return "upstream status " + strconv.Itoa(e.Status)
	}
}

func (e *UpstreamError) Unwrap() error { return e.Err }
