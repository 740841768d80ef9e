// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package longpoll

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Ignore names the fields of a JSON representation that do not count as a
// change (a timestamp or a request id stamped into every body): RFC 6901
// JSON pointers, in which a "*" segment matches every member of an object
// or an array (an ignored array item keeps its place, so the others are
// compared where they are). A poll whose body differs from the snapshot's
// only in those fields is no change: the snapshot, its body and its ETag
// stay as they are. A body that is not JSON is compared whole. The zero
// value, or nil, ignores nothing.
type Ignore struct {
	pointers [][]string // unescaped segments
}

// ParseIgnore compiles JSON pointers for Config.Ignore. Each must start
// with "/" (the whole document cannot be ignored) and escape "~" and "/"
// in names as "~0" and "~1". It returns nil for no pointers.
func ParseIgnore(pointers []string) (*Ignore, error) {
	if len(pointers) == 0 {
		return nil, nil
	}
	ig := &Ignore{}
	var errs []error
	for _, p := range pointers {
		segs, err := parsePointer(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("JSON pointer %q: %w", p, err))
			continue
		}
		ig.pointers = append(ig.pointers, segs)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return ig, nil
}

func parsePointer(p string) ([]string, error) {
	if p == "" {
		return nil, errors.New(`names the whole document; a pointer starts with "/" and names a field`)
	}
	if p[0] != '/' {
		return nil, errors.New(`must start with "/"`)
	}
	segs := strings.Split(p[1:], "/")
	for i, s := range segs {
		for j := 0; j < len(s); j++ {
			if s[j] == '~' && (j+1 == len(s) || (s[j+1] != '0' && s[j+1] != '1')) {
				return nil, errors.New(`"~" must be followed by 0 (for "~") or 1 (for "/")`)
			}
		}
		segs[i] = strings.ReplaceAll(strings.ReplaceAll(s, "~1", "/"), "~0", "~")
	}
	return segs, nil
}

// digest returns a hash of body as JSON with the ignored fields removed,
// in a canonical form (object members sorted, numbers as written), and
// whether body is JSON at all.
func (ig *Ignore) digest(body []byte) ([sha256.Size]byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil || dec.More() {
		return [sha256.Size]byte{}, false
	}
	for _, p := range ig.pointers {
		doc = remove(doc, p)
	}
	canon, err := json.Marshal(doc) // map keys sorted
	if err != nil {
		return [sha256.Size]byte{}, false
	}
	return sha256.Sum256(canon), true
}

// remove returns v without the members that the pointer segments segs
// name.
func remove(v any, segs []string) any {
	seg, last := segs[0], len(segs) == 1
	switch v := v.(type) {
	case map[string]any:
		if seg == "*" {
			if last {
				return map[string]any{}
			}
			for k, m := range v {
				v[k] = remove(m, segs[1:])
			}
			return v
		}
		m, ok := v[seg]
		switch {
		case !ok:
		case last:
			delete(v, seg)
		default:
			v[seg] = remove(m, segs[1:])
		}
		return v
	case []any:
		// An ignored item is blanked, not removed: the others keep their
		// places, and the list its length.
		for i, m := range v {
			switch {
			case seg != "*" && seg != strconv.Itoa(i):
			case last:
				v[i] = nil
			default:
				v[i] = remove(m, segs[1:])
			}
		}
		return v
	}
	return v
}

// ignoreKey is the key of a snapshot's digest under an Ignore
// (Snapshot.Derived).
type ignoreKey struct{ ig *Ignore }

// ignoredDigest is what a snapshot is under an Ignore: its status and
// content headers as its ETag hashes them, and its body's digest.
type ignoredDigest struct {
	meta [sha256.Size]byte
	body [sha256.Size]byte
	json bool
}

func (ig *Ignore) of(s *Snapshot) ignoredDigest {
	return s.Derived(ignoreKey{ig}, func(s *Snapshot) any {
		d := ignoredDigest{meta: s.metaHash()}
		d.body, d.json = ig.digest(s.Body)
		return d
	}).(ignoredDigest)
}

// same reports whether b differs from a only in ignored fields, and
// whether both bodies were JSON (when not, they are compared whole).
func (ig *Ignore) same(a, b *Snapshot) (same, json bool) {
	if ig == nil || a.Head || b.Head {
		return false, true
	}
	da, db := ig.of(a), ig.of(b)
	if !da.json || !db.json {
		return false, false
	}
	return da.meta == db.meta && da.body == db.body, true
}
