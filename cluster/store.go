// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

// Package cluster is the Redis side of several instances serving the same
// watches: one instance polls a key at a time, under a lease, and writes
// what it finds for the others to serve.
//
// For each watch key, in a namespace that the instances sharing watches
// agree on, Redis holds:
//
//	<prefix>:lease   "<holder>:<fence>", expiring: the instance that polls
//	<prefix>:fence   a counter: each new lease takes the next fence
//	<prefix>:snap    hash: fence, etag, meta, body (the last representation),
//	                 expiring after the watch's idle_ttl
//
// and every new representation is announced on <namespace>:changed as
// "<key hash> <etag>". <prefix> is longpoll:<namespace>:<key hash>, the key
// hash a SHA-256 of the namespace and the watch key (itself a hash of its
// parts): no credential of a key is ever written to Redis.
//
// Fencing: a holder writes with the fence its lease was given. A write is
// refused when the lease is another holder's, or when the stored snapshot
// was written under a newer fence, so that a holder that lost its lease (a
// pause, a partition) can never overwrite what its successor wrote.
package cluster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// ParseURL reads a cluster URL: redis://[user:password@]host:port/db, or
// rediss:// for TLS. Its errors never hold the password.
func ParseURL(raw string) (*redis.Options, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error quotes the whole URL, password and all
		return nil, errors.New("cluster: the URL does not parse (redis://[user:password@]host:port/db)")
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("cluster: scheme %q: want redis:// or rediss:// (TLS)", u.Scheme)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("cluster: %s has no host", u.Redacted())
	}
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("cluster: %s: %s", u.Redacted(), strings.TrimPrefix(redactedError(err, u), "redis: "))
	}
	return opts, nil
}

// redactedError is err's message with u's password, if any, taken out.
func redactedError(err error, u *url.URL) string {
	msg := err.Error()
	if p, ok := u.User.Password(); ok && p != "" {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	return msg
}

// Store is a namespace of watches in Redis.
type Store struct {
	rdb redis.UniversalClient
	ns  string
}

// NewStore returns the store of namespace ns in rdb.
func NewStore(rdb redis.UniversalClient, ns string) *Store {
	return &Store{rdb: rdb, ns: ns}
}

// KeyHash is what Redis knows a watch key by.
func (s *Store) KeyHash(k longpoll.Key) string {
	h := sha256.New()
	h.Write([]byte(s.ns))
	h.Write([]byte{0})
	h.Write(k[:])
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func (s *Store) prefix(k longpoll.Key) string { return "longpoll:" + s.ns + ":" + s.KeyHash(k) }

// Channel is where the namespace's new representations are announced.
func (s *Store) Channel() string { return "longpoll:" + s.ns + ":changed" }

// acquire takes the lease (KEYS[1]) for holder ARGV[1] for ARGV[2]
// milliseconds, drawing a new fence from KEYS[2] if it was free, or renews
// it if the holder has it. It returns the fence, or 0 if another holds it.
// The counter expires after ARGV[3] milliseconds without a new lease (a
// key nobody watches costs Redis nothing for ever); a fence is never below
// the stored representation's (KEYS[3]), so that fencing never goes back.
var acquire = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then
	local fence = redis.call('INCR', KEYS[2])
	local stored = tonumber(redis.call('HGET', KEYS[3], 'fence') or '0')
	if fence <= stored then
		fence = stored + 1
		redis.call('SET', KEYS[2], fence)
	end
	redis.call('PEXPIRE', KEYS[2], ARGV[3])
	redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
	return fence
end
local holder, fence = string.match(cur, '^(.*):(%d+)$')
if holder == ARGV[1] then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
	return tonumber(fence)
end
return 0
`)

// Acquire takes the lease on k for holder, or renews it, for ttl. It
// returns the lease's fence, or 0 if another instance holds it. keep is
// how long the fence counter outlives its last lease: at least as long as
// a stored representation.
func (s *Store) Acquire(ctx context.Context, k longpoll.Key, holder string, ttl, keep time.Duration) (int64, error) {
	p := s.prefix(k)
	return acquire.Run(ctx, s.rdb, []string{p + ":lease", p + ":fence", p + ":snap"},
		holder, ttl.Milliseconds(), max(keep, ttl).Milliseconds()).Int64()
}

// release gives the lease (KEYS[1]) back if it is holder ARGV[1]'s under
// fence ARGV[2].
var release = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] .. ':' .. ARGV[2] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

// Release gives the lease on k back, if holder has it under fence, so
// that another instance with subscribers takes it at its next poll rather
// than after the lease expires. A lease taken since, under a newer fence,
// stays.
func (s *Store) Release(ctx context.Context, k longpoll.Key, holder string, fence int64) error {
	return release.Run(ctx, s.rdb, []string{s.prefix(k) + ":lease"}, holder, fence).Err()
}

// write stores a snapshot (KEYS[1]) under fence ARGV[2] for holder ARGV[1],
// if the lease (KEYS[2]) is the holder's with that fence (or free) and no
// newer fence wrote before, and announces it on ARGV[7] as ARGV[8] and the
// ETag. It returns 1 if written, 0 if fenced off.
var write = redis.NewScript(`
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[1] .. ':' .. ARGV[2] then
	return 0
end
local stored = redis.call('HGET', KEYS[1], 'fence')
if stored and tonumber(stored) > tonumber(ARGV[2]) then
	return 0
end
redis.call('HSET', KEYS[1], 'fence', ARGV[2], 'etag', ARGV[3], 'meta', ARGV[4], 'body', ARGV[5])
redis.call('HDEL', KEYS[1], 'failure')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PUBLISH', ARGV[7], ARGV[8] .. ' ' .. ARGV[3])
return 1
`)

// ErrFenced is returned by Write when the holder's lease is gone, or a
// newer holder has written: the snapshot was not stored.
var ErrFenced = errors.New("cluster: another instance holds the lease")

// Write stores snap as k's representation, written by holder under fence,
// kept for ttl after the write, and announces it. It returns ErrFenced if
// the holder's lease is no longer its own.
func (s *Store) Write(ctx context.Context, k longpoll.Key, holder string, fence int64, snap *longpoll.Snapshot, ttl time.Duration) error {
	meta, err := snap.MarshalMeta()
	if err != nil {
		return err
	}
	p := s.prefix(k)
	n, err := write.Run(ctx, s.rdb, []string{p + ":snap", p + ":lease"},
		holder, fence, snap.ETag, meta, snap.Body, max(ttl.Milliseconds(), 1), s.Channel(), s.KeyHash(k)).Int64()
	switch {
	case err != nil:
		return err
	case n == 0:
		return ErrFenced
	}
	return nil
}

// mark records that the holder's last poll (KEYS[1], under the lease
// KEYS[2], by holder ARGV[1] with fence ARGV[2]) found no representation to
// share: ARGV[3] says what, kept for ARGV[4] milliseconds, announced on
// ARGV[5] as ARGV[6] and "!". Fenced as write is.
var mark = redis.NewScript(`
local cur = redis.call('GET', KEYS[2])
if cur and cur ~= ARGV[1] .. ':' .. ARGV[2] then
	return 0
end
local stored = redis.call('HGET', KEYS[1], 'fence')
if stored and tonumber(stored) > tonumber(ARGV[2]) then
	return 0
end
redis.call('HSET', KEYS[1], 'fence', ARGV[2], 'failure', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' !')
return 1
`)

// Outcome kinds of a poll that found nothing to share, as Mark records
// them.
const (
	markFailed      = "failed"
	markUncacheable = "uncacheable"
)

// Mark records that the holder's poll of k failed (err is an
// *longpoll.UpstreamError) or found a response that cannot be shared (err
// wraps longpoll.ErrUncacheable), so that the other instances answer as it
// does rather than from the last representation. The representation stays
// stored for when the upstream is back. It returns ErrFenced as Write does.
func (s *Store) Mark(ctx context.Context, k longpoll.Key, holder string, fence int64, err error, ttl time.Duration) error {
	failure := markFailed + " 502 0"
	var ue *longpoll.UpstreamError
	switch {
	case errors.Is(err, longpoll.ErrUncacheable):
		failure = markUncacheable
	case errors.As(err, &ue):
		status := ue.Status
		if status == 0 {
			status = 502
		}
		failure = fmt.Sprintf("%s %d %d", markFailed, status, ue.RetryAfter.Milliseconds())
	}
	p := s.prefix(k)
	n, err := mark.Run(ctx, s.rdb, []string{p + ":snap", p + ":lease"},
		holder, fence, failure, max(ttl.Milliseconds(), 1), s.Channel(), s.KeyHash(k)).Int64()
	switch {
	case err != nil:
		return err
	case n == 0:
		return ErrFenced
	}
	return nil
}

// Touch keeps k's representation for ttl more: the holder found it
// unchanged.
func (s *Store) Touch(ctx context.Context, k longpoll.Key, ttl time.Duration) error {
	return s.rdb.PExpire(ctx, s.prefix(k)+":snap", max(ttl, time.Millisecond)).Err()
}

// ErrNoSnapshot is returned by Read when no instance has written a
// representation of the key (or it expired).
var ErrNoSnapshot = errors.New("cluster: no representation stored")

// ErrHolderFailing is what Read's *longpoll.UpstreamError wraps when the
// instance that polls the key found the upstream failing.
var ErrHolderFailing = errors.New("cluster: the polling instance finds the upstream failing")

// Read returns k's stored representation, or have itself when the stored
// one has have's ETag (nothing is read but the ETag then). It returns
// ErrNoSnapshot when there is none, an *longpoll.UpstreamError or an error
// wrapping longpoll.ErrUncacheable as the polling instance found (see
// Mark), and an error for a representation that does not restore (see
// longpoll.RestoreSnapshot).
func (s *Store) Read(ctx context.Context, k longpoll.Key, have *longpoll.Snapshot) (*longpoll.Snapshot, error) {
	key := s.prefix(k) + ":snap"
	vals, err := s.rdb.HMGet(ctx, key, "etag", "failure").Result()
	if err != nil {
		return nil, err
	}
	etag, _ := vals[0].(string)
	if failure, ok := vals[1].(string); ok {
		return nil, markError(failure)
	}
	switch {
	case etag == "":
		return nil, ErrNoSnapshot
	case have != nil && etag == have.ETag:
		return have, nil
	}
	vals, err = s.rdb.HMGet(ctx, key, "meta", "body").Result()
	if err != nil {
		return nil, err
	}
	meta, ok1 := vals[0].(string)
	body, ok2 := vals[1].(string)
	if !ok1 || !ok2 {
		return nil, ErrNoSnapshot // expired between the two reads
	}
	snap, err := longpoll.RestoreSnapshot([]byte(meta), []byte(body))
	if err != nil {
		// not Redis failing: an entry that does not restore (another
		// version of the module wrote it, say) is as good as none
		return nil, errors.Join(ErrNoSnapshot, err)
	}
	return snap, nil
}

// markError is the error of a recorded failure.
func markError(failure string) error {
	if failure == markUncacheable {
		return fmt.Errorf("%w: the polling instance found it so", longpoll.ErrUncacheable)
	}
	ue := &longpoll.UpstreamError{Status: 502, Err: ErrHolderFailing}
	var kind string
	var retry int64
	if _, err := fmt.Sscanf(failure, "%s %d %d", &kind, &ue.Status, &retry); err == nil {
		ue.RetryAfter = time.Duration(retry) * time.Millisecond
	}
	return ue
}

// Announcement is a new representation of a key, as announced.
type Announcement struct {
	KeyHash, ETag string
}

// ParseAnnouncement reads a message of Channel.
func ParseAnnouncement(payload string) (Announcement, bool) {
	h, etag, ok := strings.Cut(payload, " ")
	if !ok || len(h) != 32 || etag == "" { // "!": a failure, see Mark
		return Announcement{}, false
	}
	return Announcement{KeyHash: h, ETag: etag}, true
}

// NewHolder returns a new holder name, unique to one run of one instance.
func NewHolder() string {
	var b [12]byte
	rand.Read(b[:]) // never fails (crypto/rand, Go 1.24 and later)
	return hex.EncodeToString(b[:])
}
