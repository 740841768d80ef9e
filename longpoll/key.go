// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"crypto/rand"
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

// Short returns a short name for the key, for logs and an operator's view:
// 8 hex digits of a hash of the key keyed with a secret drawn when the
// process starts. It is the same for one key throughout a process, enough
// to tell watches apart, and gives nothing to test guesses of a key's parts
// (a weak password in an Authorization header, say) against.
func (k Key) Short() string {
	// A key is itself a hash of fixed length, so hashing the secret and
	// the key together is a keyed hash that length extension cannot touch.
	var in [len(shortSecret) + sha256.Size]byte
	copy(in[:], shortSecret[:])
	copy(in[len(shortSecret):], k[:])
	sum := sha256.Sum256(in[:])
	return hex.EncodeToString(sum[:4])
}

// shortSecret keys Key.Short.
var shortSecret = func() (s [32]byte) {
	rand.Read(s[:]) // never fails (crypto/rand, Go 1.24 and later)
	return s
}()
