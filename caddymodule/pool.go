// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/cluster"
	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// hubs holds the running engines so that they survive config reloads: a
// handler whose watches would be the same (see identity) joins the engine of
// its predecessor, with its warm watches, held requests and streams, and
// its other settings apply to them from then on.
var hubs = caddy.NewUsagePool()

// hub is what handlers whose watches are the same share across reloads.
// Its settings are those of the newest handler still provisioned: a reload
// that succeeds brings its own, one that fails (cleaned up before it
// served) gives the running config's back.
type hub struct {
	engine  *longpoll.Engine
	limiter longpoll.Limiter
	// deadlines ends the waits of held requests, one timer per tenth of a
	// second rather than one per request
	deadlines   longpoll.Deadlines
	lastCapWarn atomic.Int64 // unix nanoseconds
	stop        chan struct{}
	id          uint64 // tells hubs apart in listings

	openSSE, openWS atomic.Int64 // streams open now

	mu       sync.Mutex
	handlers []*Handler // provisioned and not cleaned up, oldest first

	// The newest handler's settings, read without a lock. log: a hub
	// outlives the config that made it, and its lines (an upstream failing)
	// go where the running config's logging says.
	// member is the hub's part in its cluster, nil without one; redisKey
	// the key of its Redis client in redisClients
	member   *cluster.Member
	redisKey string

	log     atomic.Pointer[zap.Logger]
	group   atomic.Pointer[string] // its notification group
	metrics atomic.Bool            // reported in the metrics
	server  atomic.Pointer[string] // the name of its handlers' server, for the admin view
}

// join adds h to the handlers of the hub; its settings are the hub's from
// now on.
func (hb *hub) join(h *Handler) error {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.handlers = append(hb.handlers, h)
	return hb.apply()
}

// leave removes h from the handlers of the hub; the newest handler left
// gives its settings again.
func (hb *hub) leave(h *Handler) {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	if i := slices.Index(hb.handlers, h); i >= 0 {
		hb.handlers = slices.Delete(hb.handlers, i, i+1)
	}
	if len(hb.handlers) > 0 {
		_ = hb.apply() // validated when it joined
	}
}

// apply makes the newest handler's settings the hub's. It must be called
// with hb.mu held.
func (hb *hub) apply() error {
	n := hb.handlers[len(hb.handlers)-1]
	if err := hb.engine.SetConfig(n.engineConfig()); err != nil {
		return err
	}
	hb.log.Store(n.logger)
	hb.group.Store(&n.Group)
	hb.metrics.Store(!n.DisableMetrics)
	hb.server.Store(&n.serverName)
	if hb.member != nil {
		hb.member.SetConfig(n.clusterConfig(hb))
	}
	return nil
}

// streams returns the count of open streams of delivery d.
func (hb *hub) streams(d string) *atomic.Int64 {
	if d == deliveryWebSocket {
		return &hb.openWS
	}
	return &hb.openSSE
}

// groupName returns the hub's notification group.
func (hb *hub) groupName() string {
	if g := hb.group.Load(); g != nil {
		return *g
	}
	return ""
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

// exitCheckInterval is how often a hub checks whether the process is
// exiting, to answer its held requests at once rather than keep the server's
// shutdown waiting for them.
const exitCheckInterval = 200 * time.Millisecond

// exitOnce registers closeAtExit with Caddy, once per process.
var exitOnce sync.Once

// closeAtExit runs as Caddy exits, after its servers have stopped: their
// graceful shutdown does not wait for WebSocket connections (hijacked), so
// it closes every engine and gives their streams up to a second to send
// their close frames.
func closeAtExit(context.Context) {
	hbs := runningHubs()
	for _, hb := range hbs {
		_ = hb.engine.Close()
	}
	deadline := time.Now().Add(time.Second)
	for _, hb := range hbs {
		for hb.openWS.Load() > 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func newHub(h *Handler, server, namespace string) (*hub, error) {
	exitOnce.Do(func() { caddy.OnExit(closeAtExit) })
	hb := &hub{stop: make(chan struct{}), id: hubIDs.Add(1)}
	hb.log.Store(h.logger)
	opts := []longpoll.Option{longpoll.WithLoggerFunc(hb.log.Load), longpoll.WithObserver(pollObserver{metrics, hb})}
	e, err := longpoll.New(h.engineConfig(), opts...)
	if err != nil {
		return nil, err
	}
	hb.engine = e // Provision's join gives it its settings
	if h.clusterURL != "" {
		rdb, key, err := acquireRedis(h.clusterURL)
		if err != nil {
			_ = e.Close()
			return nil, err
		}
		hb.redisKey = key
		hb.member = cluster.Join(rdb, namespace, notifyChannel(h, namespace), e, h.clusterConfig(hb))
	}
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

// Destruct closes the engine when the last handler using it is cleaned up.
func (hb *hub) Destruct() error {
	close(hb.stop)
	err := hb.engine.Close()
	if hb.member != nil {
		hb.member.Leave()
		_, _ = redisClients.Delete(hb.redisKey)
	}
	return err
}

// identity is what makes a watch what it is: what selects it (the key,
// with the query parameters left out of it), its topic, and what it holds
// (max_body). Handlers with the same identity, in the same server and place,
// share a hub across reloads; every other setting is applied to the
// running engine.
type identity struct {
	Key         string       `json:"key,omitempty"`
	Topic       string       `json:"topic,omitempty"`
	MaxBody     int64        `json:"max_body,omitempty"`
	QueryParams *QueryParams `json:"query_params,omitempty"`
}

// watchIdentity is what hubs of h's identity are told apart by: its
// identity, its server's addresses; with the Redis URL of its cluster,
// which the hub's member holds (a reload that joins another cluster starts
// a new engine).
func watchIdentity(ctx caddy.Context, h *Handler) ([]byte, string, error) {
	conf, err := json.Marshal(identity{Key: h.Key, Topic: h.Topic, MaxBody: h.MaxBody, QueryParams: h.QueryParams})
	if err != nil {
		return nil, "", err
	}
	// Servers provision their handlers with contexts of their own, so the
	// ordinal counts per server; the server's addresses keep handlers of
	// different servers apart.
	server := ""
	if srv, ok := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server); ok {
		conf = append(conf, strings.Join(srv.Listen, ",")...)
		server = srv.Name()
	}
	return conf, server, nil
}

// acquireHub returns the hub for h's identity, creating it if no earlier
// config has one. Handlers are told apart by their identity and server
// and, among handlers with the same identity in one server, by their order.
func acquireHub(ctx caddy.Context, h *Handler) (*hub, string, error) {
	conf, server, err := watchIdentity(ctx, h)
	if err != nil {
		return nil, "", err
	}
	sum := sha256.Sum256(conf)
	id := hex.EncodeToString(sum[:16])
	n := strconv.Itoa(ordinal(ctx.Context, id))
	// The cluster's namespace: what makes the watches what they are, the
	// server's addresses and the handler's place among its like (n): the
	// same on every instance with this Caddyfile whatever else a rolling
	// deploy changes, and two handlers of one server whose keys could
	// collide never share one. A group names it instead of the addresses,
	// for instances that listen on different ones; it names the channel on
	// which an application may publish notifications too.
	namespace := id + "#" + n
	if h.Group != "" {
		nsConf, _ := json.Marshal(identity{Key: h.Key, Topic: h.Topic, MaxBody: h.MaxBody, QueryParams: h.QueryParams})
		nsSum := sha256.Sum256(nsConf)
		namespace = "group:" + h.Group + ":" + hex.EncodeToString(nsSum[:16]) + "#" + n
	}
	if h.clusterURL != "" {
		us := sha256.Sum256([]byte(h.clusterURL))
		id += "@" + hex.EncodeToString(us[:8])
	}
	key := "longpoll:" + id + "#" + n
	val, _, err := hubs.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newHub(h, server, namespace)
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
