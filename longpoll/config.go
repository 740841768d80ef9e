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

// MaxRetryAfter bounds the delay an upstream can impose with Retry-After, so
// that a bogus header cannot park a watch for hours.
const MaxRetryAfter = 5 * time.Minute

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
