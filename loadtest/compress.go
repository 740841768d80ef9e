// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"net/http"
	"os"
	"time"
)

// compressModes are the Caddy configs of the compress phase, in the order
// of its table: no compression at all (the clients ask for gzip all the
// same), encode compressing each answer on its own (compress off: what the
// module did before it compressed once per version), and the module's
// default behind encode (each version compressed once per encoding).
var compressModes = []struct{ mode, name string }{
	{"", "no compression"},
	{"encode-each", "encode, per answer"},
	{"encode", "encode, once per version"},
}

// compressPhase releases N clients held on one key of a JSON list of
// records (makeRecords), each
// sending Accept-Encoding: gzip, under each of compressModes, in rounds
// that rotate their order.
func compressPhase(o options) error {
	o.body = o.compressBody
	for _, n := range o.compressNs {
		runs := make([][]fanout, len(compressModes))
		for i := range o.repeat {
			for k := range compressModes {
				m := (k + i) % len(compressModes)
				f, err := compressRun(o, n, compressModes[m].mode)
				if err != nil {
					return fmt.Errorf("%d held, %s: %w", n, compressModes[m].name, err)
				}
				runs[m] = append(runs[m], f)
			}
			fmt.Fprintf(os.Stderr, "%d held on a %d-byte JSON list of records, run %d of %d: done\n", n, o.body, i+1, o.repeat)
		}
		fmt.Printf("\n## Compression: %d held on one key of a %d-byte JSON list of records, Accept-Encoding: gzip, medians of %d runs each, rotating\n\n", n, o.body, o.repeat)
		fmt.Printf("| Figure | %s | %s | %s | Per version ÷ none |\n", compressModes[0].name, compressModes[1].name, compressModes[2].name)
		fmt.Println("|---|---:|---:|---:|---:|")
		for _, fig := range []struct {
			name string
			get  func(fanout) float64
			text func(float64) string
		}{
			{"server CPU, release", figures[6].get, msText},
			{"fan-out p50", figures[1].get, msText},
			{"fan-out p99", figures[2].get, msText},
			{"bytes per answer (body)", func(f fanout) float64 { return f.bytesRel }, func(v float64) string { return fmt.Sprintf("%.0f B", v) }},
			{"clients lost", figures[4].get, figures[4].text},
		} {
			none, each, once := median(runs[0], fig.get), median(runs[1], fig.get), median(runs[2], fig.get)
			ratio := ""
			if none > 0 {
				ratio = fmt.Sprintf("%.2f×", once/none)
			}
			fmt.Printf("| %s | %s | %s | %s | %s |\n", fig.name, fig.text(none), fig.text(each), fig.text(once), ratio)
		}
	}
	return nil
}

// compressRun is one run of the compress phase.
func compressRun(o options, n int, mode string) (fanout, error) {
	compression = mode
	defer func() { compression = "" }()
	st, err := startStack(o, 30*time.Second, o.pprof != "")
	if err != nil {
		return fanout{n: n}, err
	}
	defer st.stop()
	etag, err := currentETagOf(st.caddy.addr, "/records")
	if err != nil {
		return fanout{n: n}, err
	}
	bodyLen, err := answerLength(st.caddy.addr, "/records")
	if err != nil {
		return fanout{n: n}, err
	}
	var prof *profiler
	if o.pprof != "" {
		tag := "compress-" + mode
		if mode == "" {
			tag = "compress-none"
		}
		prof = &profiler{dir: o.pprof, admin: fmt.Sprintf("127.0.0.1:%d", st.ports.admin), tag: fmt.Sprintf("%s-%d", tag, n)}
	}
	notify := fmt.Sprintf("http://127.0.0.1:%d/", st.ports.notify)
	o.holdPath, o.holdHeader = "/records", "Accept-Encoding: gzip\r\n"
	f, err := measureFanout(o, st.caddy, n, etag, func() error {
		return post("http://"+st.up.addr+"/_change", "", "", http.StatusNoContent)
	}, func() error {
		return post(notify, `{"topics": ["/records"]}`, notifySecret, http.StatusAccepted)
	}, prof)
	f.bytesRel = float64(bodyLen)
	return f, err
}

// answerLength returns the length of the body of a gzip client's answer
// for path, as it goes on the wire (compressed or not).
func answerLength(addr, path string) (int, error) {
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+path, nil)
	req.Header.Set("Accept-Encoding", "gzip") // set by hand: the transport does not decompress
	req.Header.Set("Prefer", "wait=10")       // a long-poll, answered at once (no If-None-Match)
	resp, err := controlClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n := 0
	buf := make([]byte, 32<<10)
	for {
		m, err := resp.Body.Read(buf)
		n += m
		if err != nil {
			break
		}
	}
	return n, nil
}
