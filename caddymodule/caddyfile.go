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
	// that released answers are compressed as encode would (compress.go).
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
//		max_watches   <n>
//		max_watches_per_client <n>
//		max_memory    <size>
//		query_params  <wait-name> <etag-name>
//		topic         <template...>
//		group         <name>
//		disable_metrics
//		sse
//		websocket
//		heartbeat     <duration>
//		max_streams   <n>
//		max_stream_duration <duration>
//		origins       <origin...>
//		compress_streams
//		compress      off | [<formats...>] [{ <encode's subdirectives> }]
//		ignore        <json-pointer...>
//		deltas        json-patch
//		cluster       <redis-url>
//	}
//
// Every subdirective is optional and may appear once.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return eachSubdirective(d, func(name string) (bool, error) {
		switch name {
		case "interval":
			return true, parseDuration(d, &h.Interval)
		case "max_wait":
			return true, parseDuration(d, &h.MaxWait)
		case "idle_ttl":
			return true, parseDuration(d, &h.IdleTTL)
		case "poll_timeout":
			return true, parseDuration(d, &h.PollTimeout)
		case "key":
			return true, joinedArgs(d, &h.Key)
		case "max_body":
			return true, parseSize(d, &h.MaxBody)
		case "max_waiters":
			return true, parseInt(d, &h.MaxWaiters)
		case "max_waiters_per_client":
			return true, parseInt(d, &h.MaxWaitersPerClient)
		case "max_watches":
			return true, parseInt(d, &h.MaxWatches)
		case "max_watches_per_client":
			return true, parseInt(d, &h.MaxWatchesPerClient)
		case "max_memory":
			return true, parseSize(d, &h.MaxMemory)
		case "topic":
			return true, joinedArgs(d, &h.Topic)
		case "group":
			var err error
			h.Group, err = oneArg(d)
			return true, err
		case "disable_metrics":
			return true, flag(d, &h.DisableMetrics)
		case "sse":
			return true, flag(d, &h.SSE)
		case "websocket":
			return true, flag(d, &h.WebSocket)
		case "heartbeat":
			return true, parseDuration(d, &h.Heartbeat)
		case "max_streams":
			return true, parseInt(d, &h.MaxStreams)
		case "max_stream_duration":
			return true, parseDuration(d, &h.MaxStreamDuration)
		case "origins":
			return true, someArgs(d, &h.Origins)
		case "compress_streams":
			return true, flag(d, &h.CompressStreams)
		case "compress":
			var err error
			h.Compress, err = unmarshalCompress(d)
			return true, err
		case "ignore":
			return true, someArgs(d, &h.Ignore)
		case "cluster":
			var err error
			h.Cluster, err = oneArg(d)
			return true, err
		case "deltas":
			var err error
			h.Deltas, err = oneArg(d)
			return true, err
		case "query_params":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return true, d.ArgErr()
			}
			h.QueryParams = &QueryParams{Wait: args[0], ETag: args[1]}
			return true, nil
		}
		return false, nil
	})
}

// eachSubdirective consumes the directive name, refuses arguments on its
// line, and calls parse for each subdirective of its block, refusing one
// that is repeated or that parse does not know (it returns false for it).
func eachSubdirective(d *caddyfile.Dispenser, parse func(name string) (known bool, err error)) error {
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
		known, err := parse(name)
		if err != nil {
			return err
		}
		if !known {
			return d.Errf("unrecognized subdirective '%s'", name)
		}
	}
	return nil
}

// flag reads a subdirective that takes no argument, and sets dst.
func flag(d *caddyfile.Dispenser, dst *bool) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = true
	return nil
}

// someArgs reads the one or more arguments of the current subdirective.
func someArgs(d *caddyfile.Dispenser, dst *[]string) error {
	*dst = d.RemainingArgs()
	if len(*dst) == 0 {
		return d.ArgErr()
	}
	return nil
}

// joinedArgs reads the one or more arguments of the current subdirective,
// joined by a space (a template written in several tokens).
func joinedArgs(d *caddyfile.Dispenser, dst *string) error {
	var args []string
	if err := someArgs(d, &args); err != nil {
		return err
	}
	*dst = strings.Join(args, " ")
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
	if val == "-1" && name == "max_memory" {
		*dst = -1 // no bound
		return nil
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
