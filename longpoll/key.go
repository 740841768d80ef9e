// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"crypto/sha256"
	"encoding/hex"
)

// Key identifies a watch. It is a SHA-256 hash of the parts that select a
// representation, so that keys holding credentials are never kept or logged
// in the clear and every key costs the same 32 bytes.
type Key [sha256.Size]byte

// KeyOf hashes parts into a Key. Parts are length-prefixed, so that no two
// different lists of parts give the same key by concatenation.
func KeyOf(parts ...string) Key {
	h := sha256.New()
	var n [8]byte
	for _, p := range parts {
		l := uint64(len(p))
		for i := range n {
			n[i] = byte(l >> (8 * i))
		}
		h.Write(n[:])
		h.Write([]byte(p))
	}
	var k Key
	h.Sum(k[:0])
	return k
}

// Short returns the first 8 hex digits of the key, for logs: enough to tell
// watches apart, nothing to recover the key from.
func (k Key) Short() string { return hex.EncodeToString(k[:4]) }
