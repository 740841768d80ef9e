// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strings"

	"github.com/wI2L/jsondiff"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// Deltas: a stream client that asked for them gets each change of a JSON
// representation as an RFC 6902 JSON Patch from the version before it,
//
//	id: 4cX8YfxFJtjMkDYC6eDtxZjg     SSE: the new version's ETag
//	event: patch
//	data: [{"value":"shipped","op":"replace","path":"/items/17/status"}]
//
//	{"etag": "\"4cX8...\"", "status": 200, "content_type": "application/json",
//	 "patch": [{"op": "replace", ...}]}                     WebSocket
//
// made once per change, on the new snapshot, and shared by every stream
// that had the version it replaced. A patch no smaller than the new body,
// a status or content type that changed, a body that is not JSON, or a
// client further behind: the full version, as without deltas.

// deltasJSONPatch is the one kind of delta, the value of the deltas
// setting and of a client's opt-in.
const deltasJSONPatch = "json-patch"

// wantsDeltas reports whether a stream request asks for deltas: the query
// parameter deltas=json-patch, which it removes from r (the key and the
// polls must not see it), or, for an event stream, the media type
// parameter deltas=json-patch in Accept.
func wantsDeltas(r *http.Request) bool {
	asked := false
	if strings.Contains(r.URL.RawQuery, "deltas=") {
		var kept []string
		for part := range strings.SplitSeq(r.URL.RawQuery, "&") {
			if name, val, _ := strings.Cut(part, "="); name == "deltas" && val == deltasJSONPatch {
				asked = true
				continue
			}
			kept = append(kept, part)
		}
		if asked {
			setRawQuery(r, strings.Join(kept, "&"))
		}
	}
	for _, line := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(line, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err == nil && mt == "text/event-stream" && params["deltas"] == deltasJSONPatch {
				asked = true
			}
		}
	}
	return asked
}

// setRawQuery sets r's query, and the query in its RequestURI.
func setRawQuery(r *http.Request, q string) {
	r.URL.RawQuery = q
	if path, _, found := strings.Cut(r.RequestURI, "?"); found {
		if q != "" {
			path += "?" + q
		}
		r.RequestURI = path
	}
}

// delta is a change sent as a patch, as each delivery writes it; nil
// fields: the change goes as a full version.
type delta struct {
	sse, ws []byte
}

// deltaKey is the key of a snapshot's delta (Snapshot.Derived).
type deltaKey struct{}

// deltaTo returns the delta that takes a client from prev, the version
// the snapshot s replaced, to s: made by the first stream that asks, and
// shared by every other.
func deltaTo(s, prev *longpoll.Snapshot) *delta {
	return s.Derived(deltaKey{}, func(s *longpoll.Snapshot) any { return makeDelta(prev, s) }).(*delta)
}

// makeDelta makes the delta from prev to s, empty if s is to go whole.
func makeDelta(prev, s *longpoll.Snapshot) *delta {
	ct := s.Header.Get("Content-Type")
	if s.Status != prev.Status || s.Status < 200 || s.Status > 299 ||
		ct != prev.Header.Get("Content-Type") || !isJSONType(ct) {
		return &delta{}
	}
	patch, err := jsondiff.CompareJSON(prev.Body, s.Body, jsondiff.UnmarshalFunc(unmarshalNumbers))
	if err != nil {
		return &delta{} // not JSON after all: the full version
	}
	p, err := json.Marshal(patch)
	if err != nil || len(p) >= len(s.Body) {
		return &delta{}
	}
	var b bytes.Buffer
	b.Grow(len(p) + 64)
	b.WriteString("id: ")
	b.WriteString(strings.Trim(s.ETag, `"`))
	b.WriteString("\nevent: patch\ndata: ")
	b.Write(p) // one line: json.Marshal writes no line break
	b.WriteString("\n\n")
	ws, _ := json.Marshal(struct {
		ETag        string          `json:"etag"`
		Status      int             `json:"status"`
		ContentType string          `json:"content_type,omitempty"`
		Patch       json.RawMessage `json:"patch"`
	}{s.ETag, s.Status, ct, p})
	return &delta{sse: b.Bytes(), ws: ws}
}

// unmarshalNumbers decodes JSON keeping numbers as they were written: an
// id past 2^53 must reach the client whole, not as the nearest float.
func unmarshalNumbers(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errTrailingData
	}
	return nil
}

var errTrailingData = errors.New("data after the JSON value")

// isJSONType reports whether a Content-Type is JSON.
func isJSONType(ct string) bool {
	mt, _, _ := mime.ParseMediaType(ct)
	return mt == "application/json" || strings.HasSuffix(mt, "+json")
}
