// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// ParseWait decides whether a request is held and for how long; a value it
// should ignore (RFC 7240 says invalid preferences are ignored) must never
// turn into a hold, and a valid one must never be missed.
func TestParseWait(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		prefer []string
		want   time.Duration
		wantOK bool
	}{
		{name: "simple", prefer: []string{"wait=10"}, want: 10 * time.Second, wantOK: true},
		{name: "case and spaces", prefer: []string{"WAIT = 5"}, want: 5 * time.Second, wantOK: true},
		{name: "after another preference", prefer: []string{"return=minimal, wait=3"}, want: 3 * time.Second, wantOK: true},
		{name: "zero", prefer: []string{"wait=0"}, want: 0, wantOK: true},
		{name: "quoted", prefer: []string{`wait="7"`}, want: 7 * time.Second, wantOK: true},
		{name: "multiple header lines", prefer: []string{"respond-async", "wait=4"}, want: 4 * time.Second, wantOK: true},
		{name: "with parameter", prefer: []string{"wait=6;foo=bar"}, want: 6 * time.Second, wantOK: true},
		{name: "first wins", prefer: []string{"wait=5, wait=10"}, want: 5 * time.Second, wantOK: true},
		{name: "first line wins", prefer: []string{"wait=5", "wait=10"}, want: 5 * time.Second, wantOK: true},
		{name: "largest delta-seconds", prefer: []string{"wait=2147483647"}, want: 2147483647 * time.Second, wantOK: true},
		{name: "not a number", prefer: []string{"wait=abc"}},
		{name: "negative", prefer: []string{"wait=-1"}},
		{name: "plus sign", prefer: []string{"wait=+5"}},
		{name: "fraction", prefer: []string{"wait=1.5"}},
		{name: "overflow", prefer: []string{"wait=99999999999"}},
		{name: "just over 31 bits", prefer: []string{"wait=2147483648"}},
		{name: "missing value", prefer: []string{"wait"}},
		{name: "empty value", prefer: []string{"wait="}},
		{name: "empty quoted value", prefer: []string{`wait=""`}},
		{name: "unbalanced quote", prefer: []string{`wait="7`}},
		{name: "invalid first instance is not skipped", prefer: []string{"wait=abc, wait=5"}},
		{name: "valueless first instance is not skipped", prefer: []string{"wait, wait=5"}},
		{name: "parameter of another preference", prefer: []string{"return=minimal; wait=3"}},
		{name: "similar name", prefer: []string{"waits=3, x-wait=4"}},
		{name: "other preferences only", prefer: []string{"return=minimal", "handling=lenient"}},
		{name: "empty line", prefer: []string{""}},
		{name: "nil"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := longpoll.ParseWait(tt.prefer)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("ParseWait(%q) = %v, %v, want %v, %v", tt.prefer, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// etagList returns n distinct entity-tags joined in one header value, with
// match at position at (counting from 1; 0 for none).
func etagList(n, at int, match string) string {
	tags := make([]string, n)
	for i := range tags {
		tags[i] = fmt.Sprintf(`"other-%d"`, i)
	}
	if at > 0 {
		tags[at-1] = match
	}
	return strings.Join(tags, ", ")
}

// MatchETag decides between "304, nothing new" (and holding the request)
// and sending the representation: a false match holds a client that is out
// of date; a missed match answers it needlessly.
func TestMatchETag(t *testing.T) {
	t.Parallel()
	const etag = `"abc"`
	tests := []struct {
		name        string
		ifNoneMatch []string
		etag        string
		want        bool
	}{
		{name: "exact", ifNoneMatch: []string{`"abc"`}, etag: etag, want: true},
		{name: "different", ifNoneMatch: []string{`"abd"`}, etag: etag, want: false},
		{name: "prefix is not a match", ifNoneMatch: []string{`"ab"`}, etag: etag, want: false},
		{name: "weak in request", ifNoneMatch: []string{`W/"abc"`}, etag: etag, want: true},
		{name: "weak etag", ifNoneMatch: []string{`"abc"`}, etag: `W/"abc"`, want: true},
		{name: "weak on both sides", ifNoneMatch: []string{`W/"abc"`}, etag: `W/"abc"`, want: true},
		{name: "in a list", ifNoneMatch: []string{`"x", "y",W/"abc"`}, etag: etag, want: true},
		{name: "list with tabs", ifNoneMatch: []string{"\t\"x\"\t,\t\"abc\""}, etag: etag, want: true},
		{name: "list without match", ifNoneMatch: []string{`"x", "y"`}, etag: etag, want: false},
		{name: "on a later header line", ifNoneMatch: []string{`"x"`, `"abc"`}, etag: etag, want: true},
		{name: "star", ifNoneMatch: []string{"*"}, etag: etag, want: true},
		{name: "star after a tag", ifNoneMatch: []string{`"x", *`}, etag: etag, want: true},
		{name: "comma inside a tag", ifNoneMatch: []string{`"a,b"`}, etag: `"a,b"`, want: true},
		// hand-written clients send tags without quotes: read them as tags
		{name: "unquoted", ifNoneMatch: []string{"abc"}, etag: etag, want: true},
		{name: "unquoted, different", ifNoneMatch: []string{"abd"}, etag: etag, want: false},
		{name: "unquoted prefix is not a match", ifNoneMatch: []string{"ab"}, etag: etag, want: false},
		{name: "unquoted in a list", ifNoneMatch: []string{`x, "y" abc`}, etag: etag, want: true},
		{name: "unquoted weak", ifNoneMatch: []string{"W/abc"}, etag: etag, want: true},
		{name: "unquoted with encode's suffix", ifNoneMatch: []string{"y89PCoXva9PuEz7Mq07TSyx9-gzip"}, etag: `"y89PCoXva9PuEz7Mq07TSyx9"`, want: true},
		// a client that had the gzip variant of a version, asking without
		// encode in front to undo the suffix (or for another encoding)
		{name: "quoted with a compressed variant's suffix", ifNoneMatch: []string{`"y89PCoXva9PuEz7Mq07TSyx9-gzip"`}, etag: `"y89PCoXva9PuEz7Mq07TSyx9"`, want: true},
		{name: "quoted, another version's variant", ifNoneMatch: []string{`"z89PCoXva9PuEz7Mq07TSyx9-zstd"`}, etag: `"y89PCoXva9PuEz7Mq07TSyx9"`, want: false},
		{name: "unquoted with a suffix on a short tag", ifNoneMatch: []string{"abc-gzip"}, etag: etag, want: false},
		{name: "quote inside an unquoted tag", ifNoneMatch: []string{`a"bc, "abc"`}, etag: etag, want: false},
		{name: "unterminated", ifNoneMatch: []string{`"abc`}, etag: etag, want: false},
		{name: "malformed before the match", ifNoneMatch: []string{`"ab, "abc"`}, etag: etag, want: false},
		{name: "garbage after a tag", ifNoneMatch: []string{`"x"y, "abc"`}, etag: etag, want: false},
		{name: "weak prefix alone", ifNoneMatch: []string{`W/`}, etag: etag, want: false},
		{name: "lower-case weak prefix", ifNoneMatch: []string{`w/"abc"`}, etag: etag, want: false},
		{name: "empty tag does not match", ifNoneMatch: []string{`""`}, etag: etag, want: false},
		{name: "empty line", ifNoneMatch: []string{""}, etag: etag, want: false},
		{name: "only separators", ifNoneMatch: []string{" , ,"}, etag: etag, want: false},
		{name: "nil", ifNoneMatch: nil, etag: etag, want: false},
		{name: "32 entries, match last", ifNoneMatch: []string{etagList(longpoll.MaxETags, longpoll.MaxETags, etag)}, etag: etag, want: true},
		{name: "33 entries, match last", ifNoneMatch: []string{etagList(longpoll.MaxETags+1, longpoll.MaxETags+1, etag)}, etag: etag, want: false},
		{name: "40 entries, match at 40", ifNoneMatch: []string{etagList(40, 40, etag)}, etag: etag, want: false},
		{name: "40 entries, match at 10", ifNoneMatch: []string{etagList(40, 10, etag)}, etag: etag, want: true},
		{name: "40 entries over lines, match at 40", ifNoneMatch: []string{etagList(20, 0, etag), etagList(20, 20, etag)}, etag: etag, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := longpoll.MatchETag(tt.ifNoneMatch, tt.etag); got != tt.want {
				t.Errorf("MatchETag(%q, %q) = %v, want %v", tt.ifNoneMatch, tt.etag, got, tt.want)
			}
		})
	}
}

// MatchETag runs for every held request on every wake; it is documented not
// to allocate. Not parallel: AllocsPerRun counts the whole process.
func TestMatchETagDoesNotAllocate(t *testing.T) {
	inm := []string{etagList(longpoll.MaxETags, longpoll.MaxETags, `W/"abc"`)}
	allocs := testing.AllocsPerRun(100, func() {
		if !longpoll.MatchETag(inm, `"abc"`) {
			t.Fatal(`MatchETag(list ending in W/"abc", "abc") = false, want true`)
		}
	})
	if allocs != 0 {
		t.Errorf("MatchETag of a %d-entry list: got %v allocations, want 0", longpoll.MaxETags, allocs)
	}
}

// QueryETag accepts the ETag a client copied from a response, quoted or
// not, and undoes the suffix Caddy's encode adds to it.
func TestQueryETag(t *testing.T) {
	t.Parallel()
	tag := `"0123456789abcdefghijklmn"` // 24 characters, like the module's
	tests := []struct{ in, want string }{
		{`0123456789abcdefghijklmn`, tag},
		{tag, tag},
		{`0123456789abcdefghijklmn-gzip`, tag},
		{`"0123456789abcdefghijklmn-zstd"`, tag},
		{`W/"0123456789abcdefghijklmn"`, `W/` + tag},
		{`short-gzip`, `"short-gzip"`},
	}
	for _, tt := range tests {
		if got := longpoll.QueryETag(tt.in); got != tt.want {
			t.Errorf("QueryETag(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
