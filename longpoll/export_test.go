// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

// IgnoreSame exposes Ignore.same to the tests of package longpoll_test.
func IgnoreSame(ig *Ignore, a, b *Snapshot) bool {
	same, _ := ig.same(a, b)
	return same
}

// IgnoreDigest exposes Ignore.digest to the benchmarks.
func IgnoreDigest(ig *Ignore, body []byte) bool {
	_, ok := ig.digest(body)
	return ok
}
