// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// hubs holds the running engines so that they survive config reloads: a
// handler whose settings did not change joins the engine of its predecessor,
// with its warm watches and held requests.
var hubs = caddy.NewUsagePool()

// hub is what handlers with the same settings share across reloads.
type hub struct {
	group   string // the notification group of its handlers
	engine  *longpoll.Engine
	limiter longpoll.Limiter
	// deadlines ends the waits of held requests, one timer per tenth of a
	// second rather than one per request
	deadlines longpoll.Deadlines
	// gen counts the handlers that joined the hub; a watch moves to the
	// poll path (next handler) of the newest one.
	gen         atomic.Uint64
	lastCapWarn atomic.Int64 // unix nanoseconds
	stop        chan struct{}
	// log is the logger of the newest handler: a hub outlives the config
	// that made it, and its lines (an upstream failing, a config's watches
	// detached) go where the running config's logging says.
	log     atomic.Pointer[zap.Logger]
	id      uint64                 // tells hubs apart in listings
	metrics bool                   // reported in the metrics
	server  atomic.Pointer[string] // the name of its handlers' server, for the admin view
}

// hubIDs numbers hubs.
var hubIDs atomic.Uint64

// runningHubs returns the hubs of the pool, to visit them without holding
// the pool's lock (which a reload waits for).
func runningHubs() []*hub {
	var hbs []*hub
	hubs.Range(func(_, v any) bool {
		if hb, ok := v.(*hub); ok {
			hbs = append(hbs, hb)
		}
		return true
	})
	return hbs
}

// route is the path polls take through a config: the handler after a
// longpoll handler, and its server.
type route struct {
	next   caddyhttp.Handler
	server *caddyhttp.Server
}

// routeGrace is how long the watches of a cleaned-up handler may go on
// polling through its (replaced) config's route, for requests to move them
// to the new config's route, before the ones left are detached and their
// held requests answered.
const routeGrace = time.Second

// exitCheckInterval is how often a hub checks whether the process is
// exiting, to answer its held requests at once rather than keep the server's
// shutdown waiting for them.
const exitCheckInterval = 200 * time.Millisecond

func newHub(h *Handler, server string) (*hub, error) {
	hb := &hub{group: h.Group, stop: make(chan struct{}), metrics: !h.DisableMetrics, id: hubIDs.Add(1)}
	hb.log.Store(h.logger)
	opts := []longpoll.Option{longpoll.WithLoggerFunc(hb.log.Load)}
	if !h.DisableMetrics {
		opts = append(opts, longpoll.WithObserver(pollObserver{metrics}))
	}
	e, err := longpoll.New(h.engineConfig(), opts...)
	if err != nil {
		return nil, err
	}
	hb.engine = e // Provision gives it its server's name and its logger
	go hb.watchExit()
	h.logger.Info("longpoll engine started", zap.String("server", server),
		zap.Duration("interval", time.Duration(h.Interval)), zap.Duration("max_wait", time.Duration(h.MaxWait)),
		zap.String("group", h.Group))
	return hb, nil
}

// watchExit closes the engine when the process starts exiting. Caddy stops
// its servers before it cleans modules up, and a server's graceful shutdown
// waits for every request in flight: without this, held requests would hold
// up the exit until their wait ends.
func (hb *hub) watchExit() {
	t := time.NewTicker(exitCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-hb.stop:
			return
		case <-t.C:
			if caddy.Exiting() {
				_ = hb.engine.Close()
				return
			}
		}
	}
}

// retire is called when the handler of generation gen is cleaned up: a
// reload replaced its config. Watches it made move to the new config's route
// when a request for their key reaches the new config; routeGrace later,
// those still on the old route are detached, so that no poll goes through a
// replaced config and their held requests are answered within a second.
func (hb *hub) retire(gen uint64) {
	time.AfterFunc(routeGrace, func() {
		if n := hb.engine.Detach(gen); n > 0 {
			hb.log.Load().Info("watches of a replaced config detached: they poll again with their next request",
				zap.Int("watches", n))
		}
	})
}

// Destruct closes the engine when the last handler using it is cleaned up.
func (hb *hub) Destruct() error {
	close(hb.stop)
	return hb.engine.Close()
}

// acquireHub returns the hub for h's settings, creating it if no earlier
// config has one. Handlers are told apart by their settings and server and,
// among handlers with identical settings in one server, by their order.
func acquireHub(ctx caddy.Context, h *Handler) (*hub, string, error) {
	conf, err := json.Marshal(h)
	if err != nil {
		return nil, "", err
	}
	// Servers provision their handlers with contexts of their own, so the
	// ordinal below counts per server; the server's addresses keep handlers
	// of different servers apart.
	server := ""
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		conf = append(conf, strings.Join(srv.Listen, ",")...)
		server = srv.Name()
	}
	sum := sha256.Sum256(conf)
	id := hex.EncodeToString(sum[:16])
	key := "longpoll:" + id + "#" + strconv.Itoa(ordinal(ctx.Context, id))
	val, _, err := hubs.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newHub(h, server)
	})
	if err != nil {
		return nil, "", err
	}
	return val.(*hub), key, nil
}

// ordinals counts, per config load, the handlers with the same settings.
var ordinals sync.Map // context.Context -> *ordinalCounter

type ordinalCounter struct {
	mu sync.Mutex
	n  map[string]int
}

// ordinal returns how many handlers with settings id the config load of ctx
// provisioned before this one.
func ordinal(ctx context.Context, id string) int {
	v, loaded := ordinals.LoadOrStore(ctx, &ordinalCounter{n: make(map[string]int)})
	if !loaded {
		context.AfterFunc(ctx, func() { ordinals.Delete(ctx) })
	}
	c := v.(*ordinalCounter)
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n[id]
	c.n[id] = n + 1
	return n
}

// capWarnEvery limits the warning logged when max_waiters rejects requests.
const capWarnEvery = time.Minute

// capWarning reports whether to log that the cap is reached: at most once
// per capWarnEvery, never per request.
func (hb *hub) capWarning() bool {
	now := time.Now().UnixNano()
	last := hb.lastCapWarn.Load()
	return now-last >= int64(capWarnEvery) && hb.lastCapWarn.CompareAndSwap(last, now)
}
