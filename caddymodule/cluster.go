// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"

	"github.com/caddy-longpoll/caddy-longpoll/cluster"
)

// redisClients holds the Redis clients of the clusters, one per URL,
// shared by the handlers (and the engines, across reloads) that name it.
var redisClients = caddy.NewUsagePool()

// redisClient is a pooled Redis client.
type redisClient struct{ *redis.Client }

// Destruct closes the client when its last engine is gone.
func (c redisClient) Destruct() error { return c.Close() }

// acquireRedis returns the client of url, and its key in redisClients.
// Making one does not connect: an instance whose Redis cannot be reached
// starts all the same, alone.
func acquireRedis(url string) (*redis.Client, string, error) {
	sum := sha256.Sum256([]byte(url)) // the key holds no password
	key := hex.EncodeToString(sum[:16])
	val, _, err := redisClients.LoadOrNew(key, func() (caddy.Destructor, error) {
		opts, err := cluster.ParseURL(url)
		if err != nil {
			return nil, err
		}
		// Short dial and read timeouts: a slow Redis must not hold up a
		// poll (each call also has the member's OpTimeout).
		opts.DialTimeout = time.Second
		opts.ReadTimeout = time.Second
		opts.WriteTimeout = time.Second
		opts.MaxRetries = 1
		return redisClient{redis.NewClient(opts)}, nil
	})
	if err != nil {
		return nil, "", err
	}
	return val.(redisClient).Client, key, nil
}

// notifyChannel is the channel that relays the notifications of h's
// cluster: the group's, where an application may publish too, or the
// namespace's.
func notifyChannel(h *Handler, namespace string) string {
	if h.Group != "" {
		return "longpoll:group:" + h.Group + ":notify"
	}
	return "longpoll:" + namespace + ":notify"
}

// clusterConfig is the member configuration for h's settings.
func (h *Handler) clusterConfig(hb *hub) cluster.Config {
	return cluster.Config{
		Interval:    time.Duration(h.Interval),
		SnapshotTTL: time.Duration(h.IdleTTL),
		Logger:      h.logger,
		Alone:       func(alone bool) { metrics.clusterAlone(alone) },
	}
}
