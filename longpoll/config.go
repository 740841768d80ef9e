// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"errors"
	"fmt"
	"time"
)

// Defaults for the zero values of Config.
const (
	DefaultInterval    = time.Second
	DefaultIdleTTL     = 30 * time.Second
	DefaultPollTimeout = 10 * time.Second
	DefaultMaxBackoff  = 30 * time.Second
	// DefaultNotifyWindow: notifications within this of a poll they caused
	// wait for its end and cause one more poll together.
	DefaultNotifyWindow = 100 * time.Millisecond
)

// MaxRetryAfter bounds the delay one upstream answer can impose with
// Retry-After (or Config.MaxBackoff, if that is longer), so that a bogus or
// pessimistic header (Retry-After: 300 from an upstream back a second
// later) cannot keep a watch down for minutes.
const MaxRetryAfter = 30 * time.Second

// Config holds the engine's tunables. Zero values take the defaults.
type Config struct {
	// Interval is how often a watch polls while it has subscribers.
	Interval time.Duration
	// IdleTTL is how long a watch lingers, not polling, after its last
	// subscriber leaves, so that clients coming straight back find it warm.
	IdleTTL time.Duration
	// PollTimeout bounds one poll of the upstream.
	PollTimeout time.Duration
	// MaxBackoff caps the delay between polls while the upstream fails.
	MaxBackoff time.Duration
	// NotifyWindow is the shortest time between two polls caused by
	// notifications (Notify, Trigger): a burst of them is coalesced into
	// one poll at once and at most one per window after it.
	NotifyWindow time.Duration
	// MaxMemory bounds, in bytes, what the watches hold (snapshots, and
	// about 1 KiB per watch): past it, idle watches are forgotten, the
	// longest idle first, and a snapshot that the watches with subscribers
	// leave no room for is not kept (the poll fails with ErrOverBudget).
	// 0 or less: no bound.
	MaxMemory int64
	// MaxActive bounds the watches with subscribers, which poll: a
	// subscription that would make one more fails with ErrTooManyWatches.
	// 0 or less: no bound.
	MaxActive int
	// Ignore names JSON fields whose changes are no change (see Ignore);
	// nil ignores nothing.
	Ignore *Ignore
}

func (c *Config) applyDefaults() {
	if c.Interval == 0 {
		c.Interval = DefaultInterval
	}
	if c.IdleTTL == 0 {
		c.IdleTTL = DefaultIdleTTL
	}
	if c.PollTimeout == 0 {
		c.PollTimeout = DefaultPollTimeout
	}
	if c.NotifyWindow == 0 {
		c.NotifyWindow = DefaultNotifyWindow
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = max(DefaultMaxBackoff, c.Interval)
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval must not be negative, got %v", c.Interval))
	}
	if c.IdleTTL < 0 {
		errs = append(errs, fmt.Errorf("idle TTL must not be negative, got %v", c.IdleTTL))
	}
	if c.PollTimeout < 0 {
		errs = append(errs, fmt.Errorf("poll timeout must not be negative, got %v", c.PollTimeout))
	}
	if c.NotifyWindow < 0 {
		errs = append(errs, fmt.Errorf("notify window must not be negative, got %v", c.NotifyWindow))
	}
	if c.MaxBackoff < c.Interval {
		errs = append(errs, fmt.Errorf("max backoff %v must not be below the interval %v", c.MaxBackoff, c.Interval))
	}
	return errors.Join(errs...)
}
