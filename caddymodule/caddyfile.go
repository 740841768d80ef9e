// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"math"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("longpoll", parseCaddyfile)
	// After the authentication handlers (earlier in Caddy's order), so that
	// every held request is authorised on its own, and after encode, so
	// that what is released is compressed per client.
	httpcaddyfile.RegisterDirectiveOrder("longpoll", httpcaddyfile.After, "encode")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	lp := new(Handler)
	err := lp.UnmarshalCaddyfile(h.Dispenser)
	return lp, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	longpoll [<matcher>] {
//		interval      <duration>
//		max_wait      <duration>
//		idle_ttl      <duration>
//		poll_timeout  <duration>
//		key           <template...>
//		max_body      <size>
//		max_waiters   <n>
//		max_waiters_per_client <n>
//		query_params  <wait-name> <etag-name>
//		topic         <template...>
//		group         <name>
//	}
//
// Every subdirective is optional and may appear once.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		name := d.Val()
		if seen[name] {
			return d.Errf("%s already specified", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "interval":
			err = parseDuration(d, &h.Interval)
		case "max_wait":
			err = parseDuration(d, &h.MaxWait)
		case "idle_ttl":
			err = parseDuration(d, &h.IdleTTL)
		case "poll_timeout":
			err = parseDuration(d, &h.PollTimeout)
		case "key":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Key = strings.Join(args, " ")
		case "max_body":
			err = parseSize(d, &h.MaxBody)
		case "max_waiters":
			err = parseInt(d, &h.MaxWaiters)
		case "max_waiters_per_client":
			err = parseInt(d, &h.MaxWaitersPerClient)
		case "topic":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Topic = strings.Join(args, " ")
		case "group":
			val, err := oneArg(d)
			if err != nil {
				return err
			}
			h.Group = val
		case "query_params":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.ArgErr()
			}
			h.QueryParams = &QueryParams{Wait: args[0], ETag: args[1]}
		default:
			return d.Errf("unrecognized subdirective '%s'", name)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// oneArg reads exactly one argument of the current subdirective.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	val := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return val, nil
}

func parseDuration(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	val, err := oneArg(d)
	if err != nil {
		return err
	}
	v, err := caddy.ParseDuration(val)
	if err != nil {
		return d.Errf("invalid %s '%s': %v", name, val, err)
	}
	if v == 0 {
		return d.Errf("invalid %s '%s': must not be zero", name, val)
	}
	*dst = caddy.Duration(v)
	return nil
}

func parseInt(d *caddyfile.Dispenser, dst *int) error {
	name := d.Val()
	val, err := oneArg(d)
	if err != nil {
		return err
	}
	v, err := strconv.Atoi(val)
	if err != nil {
		return d.Errf("invalid %s '%s': not a whole number", name, val)
	}
	*dst = v
	return nil
}

func parseSize(d *caddyfile.Dispenser, dst *int64) error {
	name := d.Val()
	val, err := oneArg(d)
	if err != nil {
		return err
	}
	v, err := humanize.ParseBytes(val)
	if err != nil || v == 0 || v > math.MaxInt64 {
		return d.Errf("invalid %s '%s': want a size such as 512KiB or 2MB", name, val)
	}
	*dst = int64(v)
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
