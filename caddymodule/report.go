// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// answered sets the outcome of a long-poll request that finish does not
// answer, and reports it.
func (h *Handler) answered(repl *caddy.Replacer, outcome string, end *holdEnd, sub *longpoll.Subscription) {
	repl.Set("http.longpoll.outcome", outcome)
	h.delivered(outcome, end, sub)
}

// delivered reports a long-poll request's outcome to the metrics and, at
// debug level only, to the log: end is how its wait ended (nil if it never
// waited), sub its subscription (nil if it had none). The log line names the
// watch by its short hash, never by its key.
func (h *Handler) delivered(outcome string, end *holdEnd, sub *longpoll.Subscription) {
	held := end != nil && end.held
	if !h.DisableMetrics {
		var heldFor time.Duration
		if held {
			heldFor = end.heldFor
		}
		metrics.answered(outcome, heldFor, held)
		if outcome == outcomeChanged && end != nil && end.st != nil && !end.st.Since.IsZero() {
			metrics.delivery.Observe(time.Since(end.st.Since).Seconds())
		}
	}
	if ce := h.logger.Check(zapcore.DebugLevel, "long-poll answered"); ce != nil {
		fields := []zap.Field{zap.String("outcome", outcome), zap.Bool("held", held)}
		if held {
			fields = append(fields, zap.Duration("held_for", end.heldFor))
		}
		if sub != nil {
			fields = append(fields, zap.String("watch", sub.Key().Short()))
		}
		ce.Write(fields...)
	}
}
