// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"go.uber.org/zap"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// delivered reports a long-poll request's outcome, the value its
// {http.longpoll.outcome} was set to, to the metrics and, at debug level
// only, to the log: end is how its wait ended (nil if it never
// waited), sub its subscription (nil if it had none).
//
// It runs on the request's goroutine right after the answer, as deep in
// the stack as the answer's own write: its frame stays small, and the log
// line is built in a call of its own, made only when debug logging is on,
// or every release would move thousands of stacks to 16 KiB ones.
func (h *Handler) delivered(outcome string, end *holdEnd, sub *longpoll.Subscription) {
	if !h.DisableMetrics {
		metrics.answered(outcome, end)
	}
	if h.debug {
		h.logAnswer(outcome, end, sub)
	}
}

// logAnswer logs one long-poll request's outcome at debug level, naming
// its watch by the short hash, never by the key.
//
//go:noinline
func (h *Handler) logAnswer(outcome string, end *holdEnd, sub *longpoll.Subscription) {
	held := end != nil && end.held
	fields := []zap.Field{zap.String("outcome", outcome), zap.Bool("held", held)}
	if held {
		fields = append(fields, zap.Duration("held_for", end.heldFor))
	}
	if end != nil && end.private {
		fields = append(fields, zap.Bool("private", true))
	}
	if sub != nil {
		fields = append(fields, zap.String("watch", sub.Key().Short()))
	}
	h.logger.Debug("long-poll answered", fields...)
}
