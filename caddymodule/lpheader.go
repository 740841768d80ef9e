// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"net/http"
	"slices"
	"strconv"
	"strings"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// lpHeader is what a long-poll answer's header holds, derived once per
// representation (longpoll.Snapshot.Derived) and shared by every answer:
// the representation's header with its ETag, the body's Content-Length (for
// HEAD, the upstream's, which the snapshot keeps) and Vary: Prefer; and the
// fields of it that a 304 repeats.
type lpHeader struct {
	full, notModified http.Header
}

// lpHeaderKey is the key of a snapshot's lpHeader; lpHeaderAcceptKey that
// of its variant with Vary: Accept too, for a handler that serves event
// streams (its answer to the URL depends on Accept).
type (
	lpHeaderKey       struct{}
	lpHeaderAcceptKey struct{}
)

// longPollHeader returns the long-poll header of s.
func longPollHeader(s *longpoll.Snapshot) *lpHeader {
	return s.Derived(lpHeaderKey{}, makeLongPollHeader).(*lpHeader)
}

// notModifiedHeaders are the fields RFC 9110, section 15.4.5 asks a 304 to
// repeat from the 200 it stands for.
var notModifiedHeaders = []string{"Etag", "Vary", "Cache-Control", "Expires", "Content-Location"}

func makeLongPollHeader(s *longpoll.Snapshot) any { return makeHeaders(s, "Prefer") }

func makeLongPollHeaderAccept(s *longpoll.Snapshot) any { return makeHeaders(s, "Prefer", "Accept") }

// makeHeaders makes the headers of s, with the fields named in vary added
// to its Vary field.
func makeHeaders(s *longpoll.Snapshot, vary ...string) *lpHeader {
	full := make(http.Header, len(s.Header)+3)
	for k, v := range s.Header {
		full[k] = slices.Clip(v)
	}
	full["Etag"] = []string{s.ETag}
	if !s.Head {
		full["Content-Length"] = []string{strconv.Itoa(len(s.Body))}
	}
	for _, name := range vary {
		// long-polls and plain requests of one URL get different answers
		if !varies(full, name) {
			full["Vary"] = append(slices.Clip(full["Vary"]), name)
		}
	}
	return &lpHeader{full: full, notModified: notModifiedOf(full)}
}

// notModifiedOf returns the fields of full that a 304 repeats.
func notModifiedOf(full http.Header) http.Header {
	nm := make(http.Header, len(notModifiedHeaders))
	for _, k := range notModifiedHeaders {
		if v, ok := full[k]; ok {
			nm[k] = v
		}
	}
	return nm
}

// cloneHeader returns a copy of h that shares its values, clipped so that
// an append to one copies it.
func cloneHeader(h http.Header) http.Header {
	c := make(http.Header, len(h)+2)
	for k, v := range h {
		c[k] = slices.Clip(v)
	}
	return c
}

// answerHeader returns the headers of s for the long-poll answers of h.
func (h *Handler) answerHeader(s *longpoll.Snapshot) *lpHeader {
	if h.SSE {
		return s.Derived(lpHeaderAcceptKey{}, makeLongPollHeaderAccept).(*lpHeader)
	}
	return longPollHeader(s)
}

// varies reports whether the Vary field of header names name.
func varies(header http.Header, name string) bool {
	for _, line := range header.Values("Vary") {
		for field := range strings.SplitSeq(line, ",") {
			if strings.EqualFold(strings.TrimSpace(field), name) {
				return true
			}
		}
	}
	return false
}
