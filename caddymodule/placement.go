// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"encoding/json"
	"strings"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// A longpoll handler placed after a handler that always answers (in a
// `route` block, say, where handlers run in the order written) loads as
// valid and holds nothing, since no request reaches it. Provision looks at
// the routes of its server and warns once per server and config load.

// terminalHandlers are the handlers that answer every request they get,
// never calling the next one. php_fastcgi is a subroute around
// reverse_proxy, found through the subroute.
var terminalHandlers = map[string]bool{
	"reverse_proxy":   true,
	"file_server":     true,
	"static_response": true, // respond
	"error":           true,
	"acme_server":     true,
}

// handlerNode is a handler of a route, as far as placement goes: its name,
// and for a subroute, its routes.
type handlerNode struct {
	name     string
	passThru bool // a file_server with pass_thru calls the next handler
	fastcgi  bool // a reverse_proxy to FastCGI: php_fastcgi's
	routes   []routeNode
}

// routeNode is a route: whether it has matchers, whether it ends its list
// (terminal), and its handlers.
type routeNode struct {
	matched, terminal bool
	handlers          []handlerNode
}

// unreachable is a longpoll handler that no request reaches, and the
// handler that answers before it.
type unreachable struct{ after string }

// warnUnreachable logs, once per server and config load, a warning for each
// longpoll handler of the server that comes after a handler answering every
// request. It runs while the server's routes are being provisioned: routes
// already provisioned are read from their handlers, the others (the route
// of this handler among them) from their JSON.
func warnUnreachable(ctx caddy.Context, logger *zap.Logger) {
	srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	if !ok || ordinal(ctx.Context, "placement:"+srv.Name()) > 0 {
		return
	}
	for _, u := range findUnreachable(routeNodes(srv.Routes), "") {
		if u.after == "php_fastcgi" {
			// its routes serve files that exist, and pass the rest on
			logger.Warn("longpoll comes after php_fastcgi, in the same route: only requests for static files that exist reach it, so it holds none of the PHP answers; put it before php_fastcgi (see the README, Caddyfile config)",
				zap.String("server", srv.Name()), zap.String("after", u.after))
			continue
		}
		logger.Warn("longpoll comes after a handler that answers every request, in the same route: no request reaches it, so it holds nothing; put it before that handler (see the README, Caddyfile config)",
			zap.String("server", srv.Name()), zap.String("after", u.after))
	}
}

// findUnreachable returns the longpoll handlers of routes that no request
// reaches. after names the handler that answers every request before the
// list, if one does.
func findUnreachable(routes []routeNode, after string) []unreachable {
	var found []unreachable
	for _, r := range routes {
		before := after
		for _, h := range r.handlers {
			switch {
			case h.name == "longpoll" && before != "":
				found = append(found, unreachable{after: before})
			case h.name == "subroute":
				found = append(found, findUnreachable(h.routes, before)...)
			}
			if before == "" {
				before = h.answerer()
			}
		}
		if after == "" && r.fastcgi() {
			// php_fastcgi's routes have matchers, but rewrite every
			// request that is not a static file to its reverse_proxy
			after = "php_fastcgi"
			continue
		}
		if after == "" && !r.matched && (before != "" || r.terminal) {
			// a route for every request that answers it, or ends the
			// list: nothing after it in the list runs
			after = before
			if after == "" {
				after = "a terminal route"
			}
		}
	}
	return found
}

// answerer returns the name of the handler that answers every request this
// one gets: itself, or for a subroute, the one inside that does; "" if none.
func (h handlerNode) answerer() string {
	if h.name != "subroute" {
		if terminalHandlers[h.name] && !h.passThru {
			return h.name
		}
		return ""
	}
	for _, r := range h.routes {
		if r.matched {
			continue
		}
		if r.terminal {
			return "a terminal route"
		}
		for _, sub := range r.handlers {
			if name := sub.answerer(); name != "" {
				return name
			}
		}
	}
	return ""
}

// fastcgi reports whether the route proxies to FastCGI.
func (r routeNode) fastcgi() bool {
	for _, h := range r.handlers {
		if h.fastcgi {
			return true
		}
	}
	return false
}

// routeNodes reads a route list, provisioned or not.
func routeNodes(routes caddyhttp.RouteList) []routeNode {
	nodes := make([]routeNode, 0, len(routes))
	for _, r := range routes {
		n := routeNode{matched: len(r.MatcherSetsRaw) > 0 || len(r.MatcherSets) > 0, terminal: r.Terminal}
		if len(r.HandlersRaw) > 0 {
			for _, raw := range r.HandlersRaw {
				n.handlers = append(n.handlers, rawHandlerNode(raw))
			}
		} else {
			for _, h := range r.Handlers {
				n.handlers = append(n.handlers, handlerNodeOf(h))
			}
		}
		nodes = append(nodes, n)
	}
	return nodes
}

// handlerNodeOf describes a provisioned handler.
func handlerNodeOf(h caddyhttp.MiddlewareHandler) handlerNode {
	switch x := h.(type) {
	case *caddyhttp.Subroute:
		return handlerNode{name: "subroute", routes: routeNodes(x.Routes)}
	case *fileserver.FileServer:
		return handlerNode{name: "file_server", passThru: x.PassThru}
	case *reverseproxy.Handler:
		t, _ := x.Transport.(caddy.Module)
		return handlerNode{name: "reverse_proxy", fastcgi: t != nil && t.CaddyModule().ID == fastcgiTransport}
	case caddy.Module:
		id := string(x.CaddyModule().ID)
		return handlerNode{name: id[strings.LastIndexByte(id, '.')+1:]}
	}
	return handlerNode{}
}

// rawRoute and rawHandler are the parts of a route's and a handler's JSON
// that placement reads.
type rawRoute struct {
	Match    []json.RawMessage `json:"match"`
	Handle   []json.RawMessage `json:"handle"`
	Terminal bool              `json:"terminal"`
}

type rawHandler struct {
	Handler   string     `json:"handler"`
	PassThru  bool       `json:"pass_thru"`
	Routes    []rawRoute `json:"routes"`
	Transport struct {
		Protocol string `json:"protocol"`
	} `json:"transport"`
}

// fastcgiTransport is the module ID of reverse_proxy's FastCGI transport.
const fastcgiTransport = "http.reverse_proxy.transport.fastcgi"

// rawHandlerNode describes a handler that is not provisioned yet.
func rawHandlerNode(raw json.RawMessage) handlerNode {
	var h rawHandler
	if json.Unmarshal(raw, &h) != nil {
		return handlerNode{}
	}
	n := handlerNode{name: h.Handler, passThru: h.PassThru, fastcgi: h.Transport.Protocol == "fastcgi"}
	for _, r := range h.Routes {
		rn := routeNode{matched: len(r.Match) > 0, terminal: r.Terminal}
		for _, raw := range r.Handle {
			rn.handlers = append(rn.handlers, rawHandlerNode(raw))
		}
		n.routes = append(n.routes, rn)
	}
	return n
}
