// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(NotifyHandler{})
	httpcaddyfile.RegisterHandlerDirective("longpoll_notify", parseNotifyCaddyfile)
	// It answers every request it gets, like respond: mount it with a
	// matcher or in a handle block of its own.
	httpcaddyfile.RegisterDirectiveOrder("longpoll_notify", httpcaddyfile.Before, "respond")
}

// Limits of a notification request.
const (
	// MaxNotifyBody is the largest notification body read; a larger one is
	// answered 413.
	MaxNotifyBody = 64 << 10
	// MaxNotifyTopics is the most topics one notification may name.
	MaxNotifyTopics = 1000
	// MaxNotifyPrefixes is the most prefix topics ("/orders/*") one
	// notification may name: each is matched against every topic.
	MaxNotifyPrefixes = 16
)

// NotifyHandler lets an application say what changed, so that clients held
// by `longpoll` handlers learn of a change within one upstream round trip
// instead of at the next poll. Mount it on a route of your choice:
//
//	POST /_longpoll/notify
//	Authorization: Bearer <secret>
//	{"topics": ["/orders/42", "/orders/*"]}
//
// Each topic is an exact topic (by default a `longpoll` watch's topic is its
// request path) or a prefix followed by `*`. Every watch of a matching topic,
// in every `longpoll` handler of the running config (or of the handlers of
// `group`), polls the upstream at once; the poll decides each key's new
// representation, so a notification can never hand one user data fetched
// for another, and a false alarm costs one conditional upstream request per
// watch. Bursts coalesce: at most one poll in flight per watch, and one more
// after it however many notifications arrive meanwhile.
//
// Answers: `202 Accepted` with `{"triggered": N}` (the watches reached);
// `401` for a missing or wrong secret; `405` for a method other than POST;
// `400` for malformed JSON, an empty or too long topic list (at most 1000),
// or a topic that is not a path; `413` for a body over 64 KiB. None of the
// errors triggers a poll.
type NotifyHandler struct {
	// The bearer token clients must send (`Authorization: Bearer <secret>`),
	// compared in constant time. Placeholders are expanded once at load,
	// so `{env.LONGPOLL_NOTIFY_SECRET}` keeps it out of the config; one
	// that expands to nothing is an error. Write a literal brace as `\{`.
	// Required unless `no_secret` is set.
	Secret string `json:"secret,omitempty"`

	// Accept notifications without a secret, for an endpoint that is
	// guarded otherwise (a `remote_ip` matcher, mTLS). Default: false.
	NoSecret bool `json:"no_secret,omitempty"`

	// Notify only the `longpoll` handlers of this group. Default: every
	// `longpoll` handler.
	Group string `json:"group,omitempty"`

	secret []byte
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (NotifyHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.longpoll_notify",
		New: func() caddy.Module { return new(NotifyHandler) },
	}
}

// Provision expands the secret's placeholders, refusing one that expands
// to nothing: an unset environment variable, or a literal brace taken for a
// placeholder, would otherwise shorten the secret in silence.
func (n *NotifyHandler) Provision(ctx caddy.Context) error {
	n.logger = ctx.Logger()
	repl := caddy.NewReplacer()
	for _, ph := range placeholders(n.Secret) {
		if repl.ReplaceAll(ph, "") == "" {
			return fmt.Errorf("secret: the placeholder %s expands to nothing (an environment variable not set?); write a literal brace as \\{ or \\}", ph)
		}
	}
	n.secret = []byte(repl.ReplaceAll(n.Secret, ""))
	return nil
}

// placeholders returns the placeholders of s, braces included, leaving out
// braces escaped with a backslash, as Caddy's replacer does.
func placeholders(s string) []string {
	var out []string
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\':
			i++ // the next character is literal
		case s[i] == '{':
			end := strings.IndexByte(s[i:], '}')
			if end < 0 {
				return out
			}
			out = append(out, s[i:i+end+1])
			i += end
		}
	}
	return out
}

// Validate refuses an endpoint without a secret unless no_secret says so.
func (n *NotifyHandler) Validate() error {
	switch {
	case n.Secret == "" && !n.NoSecret:
		return errors.New("secret is required (or set no_secret for an endpoint guarded by other means)")
	case n.Secret != "" && n.NoSecret:
		return errors.New("secret and no_secret are exclusive")
	case n.Secret != "" && len(n.secret) == 0:
		return fmt.Errorf("secret %q expands to nothing: is the environment variable set?", n.Secret)
	}
	return nil
}

// ServeHTTP implements caddyhttp.MiddlewareHandler; it answers every request
// it gets.
func (n *NotifyHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return notifyAnswer(w, http.StatusMethodNotAllowed, "error", "method "+r.Method+" not allowed: use POST")
	}
	if !n.authorized(r) {
		w.Header().Set("Www-Authenticate", `Bearer realm="longpoll_notify"`)
		return notifyAnswer(w, http.StatusUnauthorized, "error", "missing or wrong bearer token")
	}
	topics, status, err := readTopics(w, r)
	if err != nil {
		return notifyAnswer(w, status, "error", err.Error())
	}
	triggered := NotifierFor(n.Group).Notify(topics)
	if c := n.logger.Check(zap.DebugLevel, "notification"); c != nil {
		c.Write(zap.Int("topics", len(topics)), zap.Int("triggered", triggered))
	}
	return notifyAnswer(w, http.StatusAccepted, "triggered", triggered)
}

func (n *NotifyHandler) authorized(r *http.Request) bool {
	if len(n.secret) == 0 {
		return n.NoSecret
	}
	auth := r.Header.Get("Authorization")
	if len(auth) < 7 || !strings.EqualFold(auth[:7], "Bearer ") { // the scheme is case-insensitive
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(auth[7:])), n.secret) == 1
}

// readTopics reads and checks a notification body, returning the status to
// answer with when it is not acceptable.
func readTopics(w http.ResponseWriter, r *http.Request) ([]string, int, error) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxNotifyBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, http.StatusRequestEntityTooLarge, fmt.Errorf("body over %d bytes", MaxNotifyBody)
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading body: %w", err)
	}
	var req struct {
		Topics []string `json:"topics"`
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, http.StatusBadRequest, fmt.Errorf(`malformed JSON, want {"topics": ["/path", "/prefix/*"]}: %w`, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, http.StatusBadRequest, errors.New("malformed JSON: something follows the object")
	}
	switch {
	case len(req.Topics) == 0:
		return nil, http.StatusBadRequest, errors.New("topics: the list is empty")
	case len(req.Topics) > MaxNotifyTopics:
		return nil, http.StatusBadRequest, fmt.Errorf("topics: %d given, at most %d", len(req.Topics), MaxNotifyTopics)
	}
	prefixes := 0
	for i, t := range req.Topics {
		if !strings.HasPrefix(t, "/") {
			return nil, http.StatusBadRequest, fmt.Errorf("topics[%d]: %q is not a path (it must start with /)", i, t)
		}
		if star := strings.IndexByte(t, '*'); star >= 0 && star != len(t)-1 {
			return nil, http.StatusBadRequest, fmt.Errorf("topics[%d]: %q has a * that is not at the end", i, t)
		} else if star >= 0 {
			prefixes++
		}
	}
	if prefixes > MaxNotifyPrefixes {
		return nil, http.StatusBadRequest, fmt.Errorf("topics: %d prefix topics (ending in *), at most %d", prefixes, MaxNotifyPrefixes)
	}
	return req.Topics, 0, nil
}

// Notifier tells the longpoll handlers of a group that topics may have
// changed: every watch of a matching topic polls at once (see
// Engine.Notify). It is what every source of change notifications feeds:
// the notify endpoint is the first; sources such as a message broker's
// channel or a database's notification channel are meant to come as Caddy
// guest modules implementing Source, each handed the Notifier of its group.
type Notifier interface {
	// Notify reaches the watches of topics (exact, or a prefix followed by
	// "*") and returns how many it reached.
	Notify(topics []string) int
}

// Source is the interface of guest modules that deliver change
// notifications from outside HTTP. Start begins delivering to n, without
// blocking; Stop ends it.
type Source interface {
	Start(n Notifier) error
	Stop() error
}

// NotifierFor returns the Notifier of the longpoll handlers of group ("":
// every longpoll handler of the running config).
func NotifierFor(group string) Notifier { return groupNotifier(group) }

type groupNotifier string

// Notify implements Notifier.
func (g groupNotifier) Notify(topics []string) int {
	n := 0
	for _, hb := range runningHubs() {
		if g == "" || hb.groupName() == string(g) {
			n += hb.engine.Notify(topics)
			if hb.member != nil {
				// to the other instances, without holding up the answer
				// (bounded all the same); one that Redis does not reach
				// polls on its own meanwhile, and catches up by polling
				go func() { _ = hb.member.Relay(context.Background(), topics) }()
			}
		}
	}
	return n
}

// notifyAnswer writes a small JSON answer: {"<field>": value}.
func notifyAnswer(w http.ResponseWriter, status int, field string, value any) error {
	var v string
	switch x := value.(type) {
	case int:
		v = strconv.Itoa(x)
	default:
		b, _ := json.Marshal(fmt.Sprint(x))
		v = string(b)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := io.WriteString(w, `{"`+field+`": `+v+"}\n")
	return err
}

func parseNotifyCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	n := new(NotifyHandler)
	err := n.UnmarshalCaddyfile(h.Dispenser)
	return n, err
}

// UnmarshalCaddyfile sets up the notify handler from Caddyfile tokens.
// Syntax:
//
//	longpoll_notify [<matcher>] {
//		secret    <token>
//		no_secret
//		group     <name>
//	}
//
// Every subdirective is optional and may appear once; one of secret and
// no_secret is required.
func (n *NotifyHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return eachSubdirective(d, func(name string) (bool, error) {
		var err error
		switch name {
		case "secret":
			n.Secret, err = oneArg(d)
		case "group":
			n.Group, err = oneArg(d)
		case "no_secret":
			if d.NextArg() {
				return true, d.ArgErr()
			}
			n.NoSecret = true
		default:
			return false, nil
		}
		return true, err
	})
}

// Interface guards
var (
	_ caddyfile.Unmarshaler       = (*NotifyHandler)(nil)
	_ caddy.Provisioner           = (*NotifyHandler)(nil)
	_ caddy.Validator             = (*NotifyHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*NotifyHandler)(nil)
)
