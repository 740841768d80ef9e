// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"
	"golang.org/x/net/http/httpguts"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// When a change releases ten thousand held requests on one key, an encode
// in front would compress the same body ten thousand times, once per
// answer. Instead, the module compresses each version once per encoding,
// when the first client that needs that encoding is answered, and every
// other client of the watch is given the same bytes: a compressed variant
// (a longpoll.Snapshot.Derived value) that lives and dies with its
// version, made only for the encodings clients asked for.
//
// The module chooses as encode would have, for each request: the encoding
// the encode in front negotiated for it (encodefront.go), and encode's
// rules for whether an answer is compressed (not already encoded, no
// Cache-Control: no-transform, longer than its minimum_length, a matching
// Content-Type), with encode's own compressors at their configured levels.
// The answer carries what encode would have set (Content-Encoding, Vary:
// Accept-Encoding, the ETag with "-<encoding>" appended, no Accept-Ranges)
// and its exact Content-Length; encode, seeing Content-Encoding set,
// passes it on as it is. Answers it would not compress are written plain,
// for encode to handle as without this module. Without an encode in front,
// the handler's own `compress` setting does the same, and without either,
// nothing is compressed.

// Compress sets how the handler's long-poll answers are compressed when no
// `encode` handler is in front of it: with the settings, and the syntax,
// of `encode`. Or, with `off`, that they are never compressed here.
type Compress struct {
	// Never compress answers here: an `encode` in front then compresses
	// each answer on its own, as it does every response.
	Off bool `json:"off,omitempty"`

	// The encodings to offer, as for `encode` (`gzip`, `zstd`, with
	// their settings).
	EncodingsRaw caddy.ModuleMap `json:"encodings,omitempty" caddy:"namespace=http.encoders"`

	// The order of preference among encodings the client accepts equally,
	// as for `encode`. Default: the order the encodings are listed in
	// the Caddyfile, else zstd, br, gzip.
	Prefer []string `json:"prefer,omitempty"`

	// Answers of this many bytes or fewer are not compressed, as for
	// `encode`. Default: 512.
	MinLength int `json:"minimum_length,omitempty"`

	// Only answers that match are compressed, as for `encode`. Default:
	// `encode`'s list of text-based content types.
	Matcher *caddyhttp.ResponseMatcher `json:"match,omitempty"`

	enc *encode.Encode // the settings, provisioned by encode
}

// provision makes c's encode settings, with encode's own defaults.
func (c *Compress) provision(ctx caddy.Context) error {
	if c.Off {
		return nil
	}
	if _, err := frontLayout(); err != nil {
		return fmt.Errorf("compress: not supported with this version of Caddy's encode (%v); use encode in front instead", err)
	}
	c.enc = &encode.Encode{
		EncodingsRaw: c.EncodingsRaw, Prefer: slices.Clone(c.Prefer),
		MinLength: c.MinLength, Matcher: c.Matcher,
	}
	if err := c.enc.Provision(ctx); err != nil {
		return fmt.Errorf("compress: %w", err)
	}
	if err := c.enc.Validate(); err != nil {
		return fmt.Errorf("compress: %w", err)
	}
	return nil
}

// validate checks c's settings that need no provisioning.
func (c *Compress) validate() error {
	switch {
	case c.Off && (len(c.EncodingsRaw) > 0 || len(c.Prefer) > 0 || c.MinLength != 0 || c.Matcher != nil):
		return errors.New("compress: off takes no other setting")
	case !c.Off && len(c.EncodingsRaw) == 0:
		return errors.New("compress: no encoding; name at least one (gzip, zstd), or say off")
	}
	return nil
}

// unmarshalCompress reads the compress subdirective: `off`, or encode's
// own syntax, which encode parses.
func unmarshalCompress(d *caddyfile.Dispenser) (*Compress, error) {
	seg := d.NewFromNextSegment()
	seg.Next()
	args := seg.RemainingArgs()
	if len(args) == 1 && args[0] == "off" {
		if seg.NextBlock(0) {
			return nil, seg.Err("compress off takes no block")
		}
		return &Compress{Off: true}, nil
	}
	if slices.Contains(args, "off") {
		return nil, seg.Err("compress off takes no other argument")
	}
	seg.Reset()
	var enc encode.Encode
	if err := enc.UnmarshalCaddyfile(seg); err != nil {
		return nil, err
	}
	return &Compress{EncodingsRaw: enc.EncodingsRaw, Prefer: enc.Prefer, MinLength: enc.MinLength, Matcher: enc.Matcher}, nil
}

// variant is a version as one encoding's answers write it: its compressed
// body and its headers, or, for a version that encoding's answers leave
// plain, only the headers (Vary: Accept-Encoding added when it applies).
type variant struct {
	compressed bool
	lh         lpHeader
	body       []byte
}

// Size is what a compressed variant holds besides its snapshot: it counts
// against max_memory while its version is current (longpoll.Sizer).
func (v *variant) Size() int64 {
	if !v.compressed {
		return 0
	}
	return int64(len(v.body)) + 256
}

// variantKey is the key of a variant among a snapshot's derived values:
// the encoding ("" for a plain answer that varies on Accept-Encoding), and
// which long-poll headers it starts from (with Vary: Accept for a handler
// that serves SSE). The settings it was made under are not in the key: a
// reload makes new ones, and must not make every current version's
// variants again (nor keep both); a version compressed at the level of
// the config before a reload is served until it changes.
type variantKey struct {
	name   string
	accept bool
}

// variantFor returns what answers r with s through w: s's variant for r's
// encoding, or s as it is. It is a call of its own, made before the answer
// is written: the answer path runs on stacks close to 8 KiB, and must not
// get a frame deeper.
//
//go:noinline
func (h *Handler) variantFor(w http.ResponseWriter, r *http.Request, s *longpoll.Snapshot) *variant {
	enc, name, ok := h.chooseEncoding(w, r, s)
	if !ok {
		return h.plainVariant(s)
	}
	v := s.Derived(variantKey{name: name, accept: h.SSE}, func(s *longpoll.Snapshot) any {
		return h.makeVariant(s, enc, name)
	}).(*variant)
	if v.lh.full == nil {
		return h.plainVariant(s) // it could not be compressed
	}
	return v
}

// notModifiedFor returns the header of a 304 that answers r for s through
// w: that of s's variant for r's encoding (its ETag, Vary), made without
// compressing anything, or s's own.
//
//go:noinline
func (h *Handler) notModifiedFor(w http.ResponseWriter, r *http.Request, s *longpoll.Snapshot) http.Header {
	_, name, ok := h.chooseEncoding(w, r, s)
	if !ok {
		return h.answerHeader(s).notModified
	}
	return s.Derived(variantHeadKey{name: name, accept: h.SSE}, func(s *longpoll.Snapshot) any {
		return notModifiedOf(h.variantHeader(s, name))
	}).(http.Header)
}

// variantHeadKey is the key of the 304 header of a variant.
type variantHeadKey variantKey

// plainKey is the key of a snapshot's plain variant.
type plainKey struct{ accept bool }

// plainVariant returns s's long-poll answer as it is, as a variant.
func (h *Handler) plainVariant(s *longpoll.Snapshot) *variant {
	return s.Derived(plainKey{h.SSE}, func(s *longpoll.Snapshot) any {
		return &variant{lh: *h.answerHeader(s), body: s.Body}
	}).(*variant)
}

// chooseEncoding returns the settings r's answer of s follows through w,
// and the encoding they choose for it ("" for none, under the handler's
// own compress); ok is false for an answer that is s's plain one: no
// compression here, an encode in front that compresses nothing for r (it
// adds Vary itself), or an answer encode would not compress.
func (h *Handler) chooseEncoding(w http.ResponseWriter, r *http.Request, s *longpoll.Snapshot) (enc *encode.Encode, name string, ok bool) {
	if r.Method == http.MethodHead || s.ErrorStatus || s.Head || (h.Compress != nil && h.Compress.Off) {
		return nil, "", false // HEAD answers have no body: see the README
	}
	enc, name = encodeInFront(w)
	if enc != nil {
		if name == "" {
			return nil, "", false
		}
	} else if c := h.Compress; c != nil && c.enc != nil {
		enc, name = c.enc, negotiate(r, c.enc)
	} else {
		return nil, "", false
	}
	// What handlers before this one set on the response (a header
	// directive's Cache-Control: no-transform) counts, as encode reads it,
	// unless the answer's own field replaces it (writeSnapshot sets every
	// field the answer has).
	own, hdr := h.answerHeader(s).full, w.Header()
	if _, set := own["Content-Encoding"]; !set && hasValue(hdr["Content-Encoding"]) {
		return nil, "", false
	}
	if _, set := own["Cache-Control"]; !set && httpguts.HeaderValuesContainsToken(hdr["Cache-Control"], "no-transform") {
		return nil, "", false
	}
	return enc, name, h.encodable(s, enc)
}

// hasValue reports whether one of a field's values is not empty.
func hasValue(values []string) bool {
	for _, v := range values {
		if v != "" {
			return true
		}
	}
	return false
}

// negotiate returns the encoding enc chooses for r, as encode does: the
// first that r accepts and enc offers; "" for none.
func negotiate(r *http.Request, enc *encode.Encode) string {
	l, _ := frontLayout()
	for _, name := range encode.AcceptedEncodings(r, enc.Prefer) {
		if l.pool(enc, name) != nil {
			return name
		}
	}
	return ""
}

// encodableKey is the key of a snapshot's encodable cache.
type encodableKey struct{ accept bool }

// encodableCache is whether a snapshot's answers are compressed under the
// settings that asked last: one entry, replaced when other settings (a
// reload's) ask, so that reloads do not lengthen the snapshot's list of
// derived values.
type encodableCache struct {
	last atomic.Pointer[encodableResult]
}

type encodableResult struct {
	enc *encode.Encode
	ok  bool
}

// encodable reports whether enc compresses answers of s, from the
// snapshot's cache.
func (h *Handler) encodable(s *longpoll.Snapshot, enc *encode.Encode) bool {
	c := s.Derived(encodableKey{h.SSE}, newEncodableCache).(*encodableCache)
	if r := c.last.Load(); r != nil && r.enc == enc {
		return r.ok
	}
	ok := encodable(enc, s, withContentType(h.answerHeader(s).full, s.Body))
	c.last.Store(&encodableResult{enc: enc, ok: ok})
	return ok
}

func newEncodableCache(*longpoll.Snapshot) any { return new(encodableCache) }

// withContentType returns header, with the Content-Type sniffed from body
// if it has none (or an empty one), as encode (and net/http) would set it.
func withContentType(header http.Header, body []byte) http.Header {
	if ct := header["Content-Type"]; len(ct) > 0 && ct[0] != "" {
		return header
	}
	h := cloneHeader(header)
	h["Content-Type"] = []string{http.DetectContentType(body)}
	return h
}

// variantHeader returns the header of s's answers in encoding name ("":
// plain, varying on Accept-Encoding), less the Content-Length of a
// compressed body.
func (h *Handler) variantHeader(s *longpoll.Snapshot, name string) http.Header {
	full := cloneHeader(h.answerHeader(s).full)
	if ct := full["Content-Type"]; len(ct) == 0 || ct[0] == "" {
		full["Content-Type"] = []string{http.DetectContentType(s.Body)} // as encode sets it
	}
	if !varies(full, "Accept-Encoding") {
		full["Vary"] = append(slices.Clip(full["Vary"]), "Accept-Encoding")
	}
	if name != "" {
		full["Content-Encoding"] = []string{name}
		delete(full, "Content-Length")
		delete(full, "Accept-Ranges")
		if etag := s.ETag; !strings.HasPrefix(etag, "W/") {
			full["Etag"] = []string{strings.TrimSuffix(etag, `"`) + "-" + name + `"`}
		}
	}
	return full
}

// makeVariant makes the variant of s in encoding name, compressed with
// enc's compressor for it.
func (h *Handler) makeVariant(s *longpoll.Snapshot, enc *encode.Encode, name string) any {
	full := h.variantHeader(s, name)
	v := &variant{body: s.Body}
	if name != "" {
		l, _ := frontLayout()
		body, err := compress(l.pool(enc, name), s.Body)
		if err != nil {
			h.logger.Error("compressing a representation: answered plain", zap.String("encoding", name), zap.Error(err))
			return &variant{}
		}
		if !h.DisableMetrics {
			metrics.compressions.WithLabelValues(name).Inc()
		}
		v.compressed, v.body = true, body
		full["Content-Length"] = []string{strconv.Itoa(len(body))}
	}
	v.lh = lpHeader{full: full, notModified: notModifiedOf(full)}
	return v
}

// encodable reports whether encode compresses an answer of s with the
// headers header: as its response writer decides, for a body written
// whole with its Content-Length.
func encodable(enc *encode.Encode, s *longpoll.Snapshot, header http.Header) bool {
	for _, v := range header["Content-Encoding"] {
		if v != "" {
			return false
		}
	}
	if httpguts.HeaderValuesContainsToken(header["Cache-Control"], "no-transform") {
		return false
	}
	if s.Status == http.StatusPartialContent || enc.MinLength <= 0 || len(s.Body) <= enc.MinLength {
		return false
	}
	return enc.Matcher == nil || enc.Matcher.Match(s.Status, header)
}

// compress compresses body whole with a compressor from pool, as encode
// would compress a response.
func compress(pool *sync.Pool, body []byte) ([]byte, error) {
	if pool == nil {
		return nil, errors.New("no compressor")
	}
	enc, ok := pool.Get().(encode.Encoder)
	if !ok {
		return nil, errors.New("not an encode.Encoder")
	}
	var buf bytes.Buffer
	buf.Grow(len(body)/3 + 64)
	enc.Reset(&buf)
	_, err := enc.Write(body)
	if cerr := enc.Close(); err == nil {
		err = cerr
	}
	enc.Reset(nil)
	pool.Put(enc)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(buf.Bytes()), nil
}
