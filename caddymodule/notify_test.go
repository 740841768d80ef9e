// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TestNotifyCaddyfile checks the longpoll_notify parser: each subdirective,
// repeats, arguments, and unknown subdirectives.
func TestNotifyCaddyfile(t *testing.T) {
	tests := []struct {
		name, input string
		want        NotifyHandler
		wantErr     string
	}{
		{"secret and group", "longpoll_notify {\n\tsecret {env.S}\n\tgroup orders\n}", NotifyHandler{Secret: "{env.S}", Group: "orders"}, ""},
		{"no_secret", "longpoll_notify {\n\tno_secret\n}", NotifyHandler{NoSecret: true}, ""},
		{"no_secret with an argument", "longpoll_notify {\n\tno_secret yes\n}", NotifyHandler{}, "wrong argument count"},
		{"secret twice", "longpoll_notify {\n\tsecret a\n\tsecret b\n}", NotifyHandler{}, "secret already specified"},
		{"secret without value", "longpoll_notify {\n\tsecret\n}", NotifyHandler{}, "wrong argument count"},
		{"unknown", "longpoll_notify {\n\tsecrets a\n}", NotifyHandler{}, "unrecognized subdirective 'secrets'"},
		{"inline argument", "longpoll_notify x", NotifyHandler{}, "wrong argument count"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got NotifyHandler
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tt.input))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parse %q: got error %v, want one containing %q", tt.input, err, tt.wantErr)
				}
				return
			}
			if err != nil || got.Secret != tt.want.Secret || got.NoSecret != tt.want.NoSecret || got.Group != tt.want.Group {
				t.Errorf("parse %q: got %+v, %v; want %+v", tt.input, got, err, tt.want)
			}
		})
	}
}

// TestNotifyValidate checks that an endpoint without a secret refuses to
// load unless no_secret says so, and that a secret any placeholder of which
// expands to nothing (an unset environment variable, a literal brace) is
// refused rather than shortened in silence: "p{env.UNSET}" must not accept
// the token "p".
func TestNotifyValidate(t *testing.T) {
	t.Setenv("LONGPOLL_TEST_SECRET", "s3cret")
	tests := []struct {
		name       string
		h          NotifyHandler
		wantErr    string
		wantSecret string // the expanded secret, when it loads
	}{
		{"secret", NotifyHandler{Secret: "literal"}, "", "literal"},
		{"secret from env", NotifyHandler{Secret: "{env.LONGPOLL_TEST_SECRET}"}, "", "s3cret"},
		{"env inside a literal", NotifyHandler{Secret: "a-{env.LONGPOLL_TEST_SECRET}-b"}, "", "a-s3cret-b"},
		{"no_secret", NotifyHandler{NoSecret: true}, "", ""},
		{"neither", NotifyHandler{}, "secret is required", ""},
		{"both", NotifyHandler{Secret: "x", NoSecret: true}, "exclusive", ""},
		{"unset env", NotifyHandler{Secret: "{env.LONGPOLL_TEST_UNSET}"}, "{env.LONGPOLL_TEST_UNSET} expands to nothing", ""},
		{"unset env after a literal", NotifyHandler{Secret: "p{env.LONGPOLL_TEST_UNSET}"}, "{env.LONGPOLL_TEST_UNSET} expands to nothing", ""},
		{"a literal brace", NotifyHandler{Secret: "p{abc}q"}, "{abc} expands to nothing", ""},
		{"an escaped brace", NotifyHandler{Secret: `p\{abc\}q`}, "", "p{abc}q"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := tt.h
			err := h.Provision(newTestContext(t))
			if err == nil {
				err = h.Validate()
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("loading %+v: got %v, want %q", tt.h, err, tt.wantErr)
			}
			if err == nil && string(h.secret) != tt.wantSecret {
				t.Errorf("loading %+v: got the secret %q, want %q", tt.h, h.secret, tt.wantSecret)
			}
		})
	}
}

// TestNotifyAuthorization checks the bearer token: the expanded secret is
// accepted, anything else (another token, another scheme, none) is 401.
func TestNotifyAuthorization(t *testing.T) {
	t.Setenv("LONGPOLL_TEST_SECRET", "s3cret")
	h := NotifyHandler{Secret: "{env.LONGPOLL_TEST_SECRET}", Group: "nobody-" + t.Name()}
	if err := h.Provision(newTestContext(t)); err != nil {
		t.Fatal(err)
	}
	for auth, want := range map[string]int{
		"Bearer s3cret":  http.StatusAccepted,
		"bearer s3cret":  http.StatusAccepted, // the scheme is case-insensitive
		"Bearer s3cret2": http.StatusUnauthorized,
		"Basic s3cret":   http.StatusUnauthorized,
		"":               http.StatusUnauthorized,
	} {
		req := httptest.NewRequest(http.MethodPost, "/_notify", strings.NewReader(`{"topics": ["/x"]}`))
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, req, nil); err != nil {
			t.Fatal(err)
		}
		if w.Code != want {
			t.Errorf("Authorization %q: got %d %q, want %d", auth, w.Code, w.Body.String(), want)
		}
	}
}
