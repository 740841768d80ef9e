// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"context"
	"sync"
	"unsafe"
)

// Every long-poll request joins a watch and leaves it. With one lock over
// all the watches, every join and leave of every key would wait on every
// other: invisible on two cores, a queue on thirty-two. So the engine's map
// of watches is split by key into shards, each with its own lock: requests
// for different keys meet only when their keys fall in the same shard (one
// in shardCount), and then only to make or drop a watch: joining one that
// exists takes the shard's lock shared, and leaving it takes only the
// watch's. Requests for one key meet on its watch's lock, as they must. Keys are SHA-256 hashes, so their first byte spreads them
// evenly. Each shard also has its own context for the polls of its
// watches: a poll's context is registered with its parent's, under that
// parent's lock, and ten thousand watches polling at once would otherwise
// all take one.

// shardCount is how many shards the engine's watches are split into.
const shardCount = 64

// shard is one part of the engine's watches. It is padded to its own cache
// lines, so that cores taking neighbouring shards' locks do not pass one
// line between them.
type shard struct {
	shardFields
	_ [128 - unsafe.Sizeof(shardFields{})%128]byte
}

type shardFields struct {
	mu      sync.RWMutex
	watches map[Key]*watch // nil once closed
	closed  bool
	ctx     context.Context // parent of the polls of the shard's watches; ends at Close
	cancel  context.CancelFunc
}

// shardOf returns the shard that holds the watch of k.
func (e *Engine) shardOf(k Key) *shard { return &e.shards[int(k[0])%shardCount] }
