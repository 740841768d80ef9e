// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
)

// A snapshot can leave the process: a cluster backend stores the
// representation one instance polled for the others to serve. It goes as
// two parts, its metadata (MarshalMeta, a small JSON object) and its body
// as it is, and comes back with RestoreSnapshot, which recomputes the ETag
// from the content and refuses a snapshot whose ETag does not match: a
// corrupted or foreign entry is never served as a version.

// snapshotMeta is a snapshot less its body, as MarshalMeta writes it.
type snapshotMeta struct {
	Status       int         `json:"status"`
	Header       http.Header `json:"header,omitempty"`
	ErrorStatus  bool        `json:"error_status,omitempty"`
	Head         bool        `json:"head,omitempty"`
	ETag         string      `json:"etag"`
	UpstreamETag string      `json:"upstream_etag,omitempty"`
	LastModified string      `json:"last_modified,omitempty"`
	Vary         []VaryField `json:"vary,omitempty"`
}

// ErrNotShareable is returned by MarshalMeta for a private snapshot (see
// Snapshot.Private), which must never reach another client.
var ErrNotShareable = errors.New("longpoll: a private snapshot is not shared")

// MarshalMeta returns the snapshot's metadata, everything but its body, as
// JSON.
func (s *Snapshot) MarshalMeta() ([]byte, error) {
	if s.Private {
		return nil, ErrNotShareable
	}
	// The values of the request headers a representation varies on may
	// be credentials (Vary: Authorization, Cookie): only their hashes
	// leave the process, which VaryMatches compares against.
	vary := make([]VaryField, len(s.Vary))
	for i, f := range s.Vary {
		vary[i] = VaryField{Name: f.Name, Values: f.Values, Hashed: f.Hashed}
		if !f.Hashed {
			vary[i].Values = make([]string, len(f.Values))
			for k, v := range f.Values {
				vary[i].Values[k] = hashVary(v)
			}
			vary[i].Hashed = true
		}
	}
	return json.Marshal(snapshotMeta{
		Status: s.Status, Header: s.Header, ErrorStatus: s.ErrorStatus, Head: s.Head,
		ETag: s.ETag, UpstreamETag: s.UpstreamETag, LastModified: s.LastModified, Vary: vary,
	})
}

// RestoreSnapshot rebuilds a snapshot from MarshalMeta's JSON and its body,
// which it keeps (the caller must not modify it). It returns an error if
// the metadata does not parse or the ETag is not the content's.
func RestoreSnapshot(meta, body []byte) (*Snapshot, error) {
	var m snapshotMeta
	if err := json.Unmarshal(meta, &m); err != nil {
		return nil, fmt.Errorf("longpoll: snapshot metadata: %w", err)
	}
	if m.Status < 100 || m.Status > 999 {
		return nil, fmt.Errorf("longpoll: snapshot metadata: status %d", m.Status)
	}
	if m.Header == nil {
		m.Header = make(http.Header)
	}
	for k, v := range m.Header {
		m.Header[k] = slices.Clip(v)
	}
	if body == nil {
		body = []byte{}
	}
	s := &Snapshot{
		Status: m.Status, Header: m.Header, Body: body, ErrorStatus: m.ErrorStatus, Head: m.Head,
		UpstreamETag: m.UpstreamETag, LastModified: m.LastModified, Vary: m.Vary,
	}
	if m.Head {
		s.Body = nil
	}
	if s.ETag = s.computeETag(); s.ETag != m.ETag {
		return nil, fmt.Errorf("longpoll: snapshot ETag %s does not match its content", m.ETag)
	}
	return s, nil
}
