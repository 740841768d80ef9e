// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"strconv"
	"strings"
	"time"
)

// MaxETags bounds the entity-tags read from one If-None-Match header: the
// ones after it are not read (they match nothing).
const MaxETags = 32

// ParseWait returns the wait preference of a request's Prefer header values
// (RFC 7240, section 4.3) in whole seconds. ok is false when there is none,
// or when it is not a valid delta-seconds ("abc", negative, overflowing), in
// which case the preference is ignored, as RFC 7240 asks.
func ParseWait(prefer []string) (wait time.Duration, ok bool) {
	for _, line := range prefer {
		for pref := range strings.SplitSeq(line, ",") {
			// parameters after ';' belong to the preference; wait takes none
			pref, _, _ = strings.Cut(pref, ";")
			name, val, hasVal := strings.Cut(pref, "=")
			if !strings.EqualFold(strings.TrimSpace(name), "wait") {
				continue
			}
			if !hasVal {
				return 0, false
			}
			val = strings.TrimSpace(val)
			if len(val) >= 2 && val[0] == '"' && val[len(val)-1] == '"' {
				val = val[1 : len(val)-1]
			}
			n, err := strconv.ParseUint(val, 10, 31)
			if err != nil || val == "" || val[0] == '+' {
				return 0, false
			}
			return time.Duration(n) * time.Second, true
		}
	}
	return 0, false
}

// MatchETag reports whether the If-None-Match header values match etag with
// the weak comparison of RFC 9110, section 8.8.3.2 (which If-None-Match
// uses): W/"x" matches "x". "*" matches any etag. Only the first MaxETags
// entries are read, and reading stops at one that does not parse: entries
// past either point match nothing. It does not allocate.
//
// The suffix a compressing handler appends to one of this package's ETags
// (Caddy's encode, and the adapter's compressed variants: "x-gzip") is
// removed before comparing: the variants of one version are that version,
// whichever encoding the client had it in. An entry without quotes
// (If-None-Match: abc, common in hand-written clients) is read as the tag
// "abc": refusing it would answer such a client at once, every time, and
// its loop would spin.
func MatchETag(ifNoneMatch []string, etag string) bool {
	etag = strings.TrimPrefix(etag, "W/")
	opaque := strings.Trim(etag, `"`)
	count := 0
	for _, line := range ifNoneMatch {
		rest := line
		for {
			rest = strings.TrimLeft(rest, " \t,")
			if rest == "" {
				break
			}
			if rest[0] == '*' {
				return true
			}
			tag, next, ok := scanETag(rest)
			if !ok {
				return false
			}
			count++
			if count > MaxETags {
				return false
			}
			if tag == opaque {
				return true
			}
			rest = next
		}
	}
	return false
}

// scanETag reads one entity-tag from the start of s and returns its opaque
// part without the quotes, and the rest of s. An entry without quotes runs
// to the next comma or space; it may not hold a quote.
func scanETag(s string) (opaque, rest string, ok bool) {
	s = strings.TrimPrefix(s, "W/")
	if s == "" {
		return "", "", false
	}
	if s[0] != '"' {
		end := strings.IndexAny(s, ", \t")
		if end < 0 {
			end = len(s)
		}
		opaque, rest = s[:end], s[end:]
		if strings.IndexByte(opaque, '"') >= 0 {
			return "", "", false
		}
		return trimEncodingSuffix(opaque), rest, true
	}
	end := strings.IndexByte(s[1:], '"')
	if end < 0 {
		return "", "", false
	}
	opaque, rest = s[1:end+1], s[end+2:]
	if rest != "" && rest[0] != ',' && rest[0] != ' ' && rest[0] != '\t' {
		return "", "", false // something stuck to the closing quote
	}
	return trimEncodingSuffix(opaque), rest, true
}

// trimEncodingSuffix removes from one of this package's ETags (without
// quotes) the suffix a compressing handler appended to it: Caddy's encode
// turns "x" into "x-gzip", and undoes it only in If-None-Match, only for
// the encoding it chose for that request. A client that had a compressed
// answer ("x-gzip") and now asks for a plain one still has version "x".
func trimEncodingSuffix(v string) string {
	if len(v) > etagLen && v[etagLen] == '-' {
		return v[:etagLen]
	}
	return v
}

// QueryETag turns an ETag given as a query parameter, quoted or not, into an
// entity-tag for MatchETag. A suffix that a compressing handler appended to
// one of this package's ETags (Caddy's encode turns "x" into "x-gzip", and
// undoes it only in the If-None-Match header) is removed, so that the
// client's version still matches.
func QueryETag(v string) string {
	weak := strings.HasPrefix(v, "W/")
	v = `"` + trimEncodingSuffix(strings.Trim(strings.TrimPrefix(v, "W/"), `"`)) + `"`
	if weak {
		v = "W/" + v
	}
	return v
}
