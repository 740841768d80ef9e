// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"errors"
	"net/http"
	"reflect"
	"sync"
	"unsafe"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/encode"
)

// To compress a version once for every client, the module must choose as
// the `encode` in front of it would for each request: the encoding it
// negotiated, its minimum length, its content types, its compressors and
// their levels. encode keeps all of that in the response writer it hands
// down the chain (its settings, the encoding it negotiated for the
// request, its pools of compressors), and Caddy gives no exported way to
// read them. So the module reads them from that writer: the writer's type
// and the places of the three fields are found once, from a writer that a
// real encode handler made, and their types checked. A Caddy whose encode
// keeps them otherwise is found then: the module leaves compression to
// encode (each answer compressed on its own, as without this module) and
// says so once per process, at Provision. The same three reads serve the module's own
// `compress` setting, which is an encode handler's settings provisioned by
// encode itself.

// encodeLayout is where encode keeps what the module reads.
type encodeLayout struct {
	writer reflect.Type // encode's response writer, a pointer type
	config uintptr      // the writer's *encode.Encode
	name   uintptr      // the writer's negotiated encoding, a string
	pools  uintptr      // encode.Encode's compressor pools, map[string]*sync.Pool
}

// frontLayout returns encode's layout, found on first use.
var frontLayout = sync.OnceValues(findEncodeLayout)

func findEncodeLayout() (*encodeLayout, error) {
	var seen http.ResponseWriter
	r, err := http.NewRequest(http.MethodGet, "/", nil)
	if err != nil {
		return nil, err
	}
	enc := new(encode.Encode)
	_ = enc.ServeHTTP(headerOnlyWriter{make(http.Header)}, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
		seen = w
		return nil
	}))
	t := reflect.TypeOf(seen)
	if t == nil || t.Kind() != reflect.Pointer || t.Elem().Kind() != reflect.Struct {
		return nil, errors.New("encode's response writer is not a pointer to a struct")
	}
	l := &encodeLayout{writer: t}
	fields := []struct {
		in   reflect.Type
		name string
		typ  reflect.Type
		off  *uintptr
	}{
		{t.Elem(), "config", reflect.TypeFor[*encode.Encode](), &l.config},
		{t.Elem(), "encodingName", reflect.TypeFor[string](), &l.name},
		{reflect.TypeFor[encode.Encode](), "writerPools", reflect.TypeFor[map[string]*sync.Pool](), &l.pools},
	}
	for _, f := range fields {
		sf, ok := f.in.FieldByName(f.name)
		if !ok || sf.Type != f.typ || len(sf.Index) != 1 {
			return nil, errors.New("encode keeps its " + f.name + " otherwise than this module knows")
		}
		*f.off = sf.Offset
	}
	// The writer must hold the handler that made it.
	if cfg, _ := l.read(seen); cfg != enc {
		return nil, errors.New("encode's response writer does not hold its handler")
	}
	return l, nil
}

// read returns the settings and the negotiated encoding of w, which must
// be of type l.writer.
func (l *encodeLayout) read(w http.ResponseWriter) (*encode.Encode, string) {
	p := reflect.ValueOf(w).UnsafePointer()
	return *(**encode.Encode)(unsafe.Add(p, l.config)), *(*string)(unsafe.Add(p, l.name))
}

// pool returns enc's pool of compressors for an encoding, nil if it offers
// none.
func (l *encodeLayout) pool(enc *encode.Encode, name string) *sync.Pool {
	return (*(*map[string]*sync.Pool)(unsafe.Add(unsafe.Pointer(enc), l.pools)))[name]
}

// maxLayers bounds the walk down a chain of response writers.
const maxLayers = 16

// encodeInFront returns the encode handler whose response writer w is, or
// wraps through writers that pass the body on as it is, and the encoding
// it negotiated for the request ("" for none). It returns nil if there is
// none, or a writer on the way that might change or hold the body (a
// recorder with a buffer, a handler this module does not know): then the
// answer is written plain, for encode to compress or not, as without this
// module.
func encodeInFront(w http.ResponseWriter) (*encode.Encode, string) {
	l, err := frontLayout()
	if err != nil {
		return nil, ""
	}
	for range maxLayers {
		if reflect.TypeOf(w) == l.writer {
			return l.read(w)
		}
		switch ww := w.(type) {
		case *caddyhttp.ResponseWriterWrapper:
			w = ww.ResponseWriter
		case caddyhttp.ResponseRecorder:
			// Caddy's metrics wrap each handler's writer in a recorder
			// without a buffer, which writes through.
			u, ok := ww.(interface{ Unwrap() http.ResponseWriter })
			if ww.Buffer() != nil || !ok {
				return nil, ""
			}
			w = u.Unwrap()
		default:
			return nil, ""
		}
	}
	return nil, ""
}

// headerOnlyWriter is a response writer that keeps headers and drops the
// rest, for finding encode's layout.
type headerOnlyWriter struct{ h http.Header }

func (w headerOnlyWriter) Header() http.Header         { return w.h }
func (w headerOnlyWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w headerOnlyWriter) WriteHeader(int)             {}
