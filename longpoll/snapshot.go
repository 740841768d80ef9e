// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Snapshot is one representation of a resource, as a client receives it. It
// is immutable once built: every subscriber of a watch writes the same
// Snapshot, with no copy of its header or body.
type Snapshot struct {
	// Status is the upstream's status code.
	Status int
	// Header holds the upstream's response headers that describe the
	// representation: less its ETag (ETag replaces it), Date, the body's
	// Content-Length (but for HEAD) and hop-by-hop fields. Each delivery
	// adds its own (a long-poll: ETag, Content-Length, Vary: Prefer); see
	// Derived. It must not be modified.
	Header http.Header
	// Body is the full response body.
	Body []byte
	// ErrorStatus is set when the status was reported as an error by the
	// handler that made the response rather than written (see
	// Recorder.ErrorStatus): a delivery answers it as an error, so that
	// the server's error handling renders it as it would without the
	// module. The body is then empty.
	ErrorStatus bool
	// Private is set for a representation polled for one client, with its
	// own request, to be given to that client only (see Recorder.Private):
	// it may set cookies, and its Set-Cookie fields are kept in Header,
	// though the ETag, computed from the content alone, does not cover
	// them; the upstream's Vary is not read, the request being the
	// client's own.
	Private bool
	// Head is set for a representation polled with HEAD: it has no body,
	// its Content-Length is the upstream's, and its ETag is hashed from
	// what a HEAD answer shows of the body (the upstream's ETag,
	// Last-Modified and Content-Length) besides the status and content
	// headers.
	Head bool
	// ETag is the strong validator clients see, quoted.
	ETag string
	// UpstreamETag and LastModified are the upstream's own validators,
	// sent back on the next poll to make it conditional.
	UpstreamETag, LastModified string
	// Vary lists the request header fields, with the poll request's values,
	// that the upstream said the representation depends on (its Vary
	// header). A client whose values differ must not be given this snapshot.
	Vary []VaryField

	derived derivedValues // what deliveries derived from it (derived.go)
}

// VaryField is one request header field a representation depends on.
type VaryField struct {
	Name   string // canonical header name
	Values []string
	// Hashed is set when Values hold SHA-256 hashes of the values, as a
	// snapshot that left the process keeps them (see MarshalMeta): a
	// Vary on Authorization or Cookie must not carry the credential out.
	Hashed bool `json:",omitempty"`
}

// hashVary returns the hash of a Vary value, as a hashed VaryField holds.
func hashVary(v string) string {
	sum := sha256.Sum256([]byte(v))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// hashedHeaders are the response headers that describe the content, and so
// take part in the ETag along with the status and body. Headers that change
// on every response (Date, Age, request IDs) must not be among them, or every
// poll would look like a change.
var hashedHeaders = []string{
	"Content-Type", "Content-Encoding", "Content-Language", "Content-Location",
	"Content-Disposition", "Content-Range", "Location",
}

// droppedHeaders are never stored in a snapshot: the module replaces or
// recomputes them, or they describe one connection, not the representation.
var droppedHeaders = []string{
	"Etag", "Content-Length", "Date", "Connection", "Keep-Alive", "Proxy-Connection",
	"Transfer-Encoding", "Upgrade", "Te", "Trailer",
}

// NewSnapshot builds a snapshot from a complete upstream response. The
// header is taken over, not copied: the caller must not use it afterwards.
// reqHeader is the poll request's header, for the upstream's Vary fields.
// It returns an error wrapping ErrUncacheable for a response that must not
// be shared: one that sets cookies, declares trailers or varies on everything.
func NewSnapshot(status int, header http.Header, body []byte, reqHeader http.Header) (*Snapshot, error) {
	return newSnapshot(status, snapshotKind{}, header, body, reqHeader)
}

// snapshotKind says how a response was made: by an error status (see
// Snapshot.ErrorStatus), for a HEAD request (Snapshot.Head), or for one
// client (Snapshot.Private).
type snapshotKind struct{ errorStatus, head, private bool }

func newSnapshot(status int, kind snapshotKind, header http.Header, body []byte, reqHeader http.Header) (*Snapshot, error) {
	if header == nil {
		header = make(http.Header)
	}
	if len(header.Values("Set-Cookie")) > 0 && !kind.private {
		return nil, fmt.Errorf("%w: it sets cookies", ErrUncacheable)
	}
	if len(header.Values("Trailer")) > 0 {
		return nil, fmt.Errorf("%w: it has trailers", ErrUncacheable)
	}
	var vary []VaryField
	if !kind.private {
		var err error
		if vary, err = varyFields(header, reqHeader); err != nil {
			return nil, err
		}
	}
	s := &Snapshot{
		Status:       status,
		ErrorStatus:  kind.errorStatus,
		Head:         kind.head,
		Private:      kind.private,
		Body:         body,
		UpstreamETag: header.Get("Etag"),
		LastModified: strongLastModified(header),
		Vary:         vary,
	}
	length := header["Content-Length"]
	for _, h := range droppedHeaders {
		delete(header, h)
	}
	s.Header = header
	if kind.head {
		s.Body = nil
		if len(length) == 1 {
			header["Content-Length"] = length
		}
	}
	s.ETag = s.computeETag()
	for k, v := range header {
		// Full slices: a handler that appends to a value must not write
		// into the array that every client's response shares.
		header[k] = slices.Clip(v)
	}
	return s, nil
}

// computeETag hashes what a client receives: status, content headers and
// body. The hash is the same on every instance and after every restart, so
// a client can move between them and keep its version.
func (s *Snapshot) computeETag() string {
	h := sha256.New()
	s.writeMeta(h)
	h.Write(s.Body)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:etagBytes]) + `"`
}

// metaHash hashes what the ETag covers but the body.
func (s *Snapshot) metaHash() [sha256.Size]byte {
	h := sha256.New()
	s.writeMeta(h)
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// writeMeta writes to h what the ETag covers besides the body: the status,
// the content headers, and for HEAD what it shows of the body.
func (s *Snapshot) writeMeta(h hash.Hash) {
	h.Write([]byte(strconv.Itoa(s.Status)))
	if s.ErrorStatus {
		h.Write([]byte("error")) // rendered by error handling, not written
	}
	h.Write([]byte{0})
	for _, name := range hashedHeaders {
		for _, v := range s.Header.Values(name) {
			h.Write([]byte(name))
			h.Write([]byte{':'})
			h.Write([]byte(v))
			h.Write([]byte{0})
		}
	}
	h.Write([]byte{0})
	if s.Head {
		// no body to hash: what HEAD shows of it
		for _, v := range []string{s.UpstreamETag, s.Header.Get("Last-Modified"), s.Header.Get("Content-Length")} {
			h.Write([]byte(v))
			h.Write([]byte{0})
		}
	}
}

// etagBytes of the hash make an ETag of etagLen characters (144 bits).
const (
	etagBytes = 18
	etagLen   = etagBytes * 4 / 3
)

// VaryMatches reports whether a request with header reqHeader may be given
// this snapshot, that is whether it agrees with the poll request on every
// field the upstream said the representation varies on.
func (s *Snapshot) VaryMatches(reqHeader http.Header) bool {
	for _, f := range s.Vary {
		got := reqHeader.Values(f.Name)
		if len(got) != len(f.Values) {
			return false
		}
		for i := range got {
			if v := got[i]; (f.Hashed && hashVary(v) != f.Values[i]) || (!f.Hashed && v != f.Values[i]) {
				return false
			}
		}
	}
	return true
}

// varyFields reads the upstream's Vary header. Accept-Encoding is left out:
// polls ask for the identity encoding and any compression is applied per
// client afterwards. Prefer is left out: polls send no preference (the
// wait is the module's, and other preferences would shape the answer every
// waiter gets), so there is nothing to vary on.
func varyFields(header, reqHeader http.Header) ([]VaryField, error) {
	var fields []VaryField
	for _, line := range header.Values("Vary") {
		for name := range strings.SplitSeq(line, ",") {
			name = http.CanonicalHeaderKey(strings.TrimSpace(name))
			switch name {
			case "":
				continue
			case "*":
				return nil, fmt.Errorf("%w: it varies on every request (Vary: *)", ErrUncacheable)
			case "Accept-Encoding", "Prefer":
				continue
			}
			vals := reqHeader.Values(name)
			fields = append(fields, VaryField{Name: name, Values: append([]string(nil), vals...)})
		}
	}
	return fields, nil
}

// strongLastModified returns the response's Last-Modified if it can serve
// as a validator for the next poll: only when there is no ETag (which takes
// precedence anyway), and only when it is strong in the sense of RFC 9110,
// section 8.8.2.2: at least a second before the response's Date (or now,
// without one). A
// Last-Modified within the second of the response could hide a second
// change in that same second behind a 304.
func strongLastModified(header http.Header) string {
	lm := header.Get("Last-Modified")
	if lm == "" || header.Get("Etag") != "" {
		return ""
	}
	modified, err := http.ParseTime(lm)
	if err != nil {
		return ""
	}
	date, err := http.ParseTime(header.Get("Date"))
	if err != nil {
		date = time.Now() // the response was made just now
	}
	if date.Sub(modified) < time.Second {
		return ""
	}
	return lm
}
