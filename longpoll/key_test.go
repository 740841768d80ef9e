// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"crypto/sha256"
	"encoding/hex"
	"regexp"
	"testing"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// Two requests share a watch, and so a response, only if their keys are
// equal: lists of parts that merely concatenate to the same string (a path
// and a credential split differently) must not collide.
func TestKeyOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		a, b []string
		same bool
	}{
		{name: "same parts", a: []string{"GET", "/a"}, b: []string{"GET", "/a"}, same: true},
		{name: "split moved", a: []string{"ab", "c"}, b: []string{"a", "bc"}},
		{name: "joined", a: []string{"abc"}, b: []string{"ab", "c"}},
		{name: "empty part", a: []string{"", "a"}, b: []string{"a"}},
		{name: "trailing empty part", a: []string{"a", ""}, b: []string{"a"}},
		{name: "order", a: []string{"a", "b"}, b: []string{"b", "a"}},
		{name: "length prefix lookalike", a: []string{"\x01\x00\x00\x00\x00\x00\x00\x00a"}, b: []string{"", "a"}},
		{name: "no parts vs one empty part", a: nil, b: []string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ka, kb := longpoll.KeyOf(tt.a...), longpoll.KeyOf(tt.b...)
			if same := ka == kb; same != tt.same {
				t.Errorf("KeyOf(%q) == KeyOf(%q) is %v, want %v", tt.a, tt.b, same, tt.same)
			}
		})
	}
}

// Short goes into logs and the admin view: 8 hex digits, the same for the
// same key, and keyed, so that it is neither a part of the key nor a plain
// hash of it that guesses of the key's parts could be checked against.
func TestKeyShort(t *testing.T) {
	t.Parallel()
	k := longpoll.KeyOf("GET", "/orders/42", "Bearer secret")
	got := k.Short()
	if !regexp.MustCompile(`^[0-9a-f]{8}$`).MatchString(got) {
		t.Errorf("Short() = %q, want 8 lower-case hex digits", got)
	}
	plain := sha256.Sum256(k[:])
	for _, unkeyed := range []string{hex.EncodeToString(k[:4]), hex.EncodeToString(plain[:4])} {
		if got == unkeyed {
			t.Errorf("Short() = %q, a prefix of the key or of its plain hash, want a keyed hash", got)
		}
	}
	if again := longpoll.KeyOf("GET", "/orders/42", "Bearer secret").Short(); again != got {
		t.Errorf("Short() of the same parts = %q then %q, want equal", got, again)
	}
	if other := longpoll.KeyOf("GET", "/orders/43", "Bearer secret").Short(); other == got {
		t.Errorf("Short() of different keys both %q, want different", got)
	}
}
