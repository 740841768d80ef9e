// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// rawWS is a WebSocket client on a bare connection, for what a library
// client will not do: stall in the middle of a frame, count pings.
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

// dialRawWS upgrades a connection to path of the test Caddy and reads the
// 101 answer.
func dialRawWS(t *testing.T, path string) *rawWS {
	t.Helper()
	conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", itPort()), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", path, itPort())
	br := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: got %v (error %v), want 101", resp, err)
	}
	return &rawWS{conn: conn, br: br}
}

// frame reads one frame the server sent (unmasked): its opcode and payload.
func (c *rawWS) frame(within time.Duration) (opcode byte, payload []byte, err error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(within))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		return 0, nil, err
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(c.br, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	payload = make([]byte, n)
	_, err = io.ReadFull(c.br, payload)
	return h[0] & 0x0f, payload, err
}

// send writes a masked frame (with a zero mask: the payload as it is).
func (c *rawWS) send(opcode byte, payload []byte) error {
	_, err := c.conn.Write(append([]byte{0x80 | opcode, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...))
	return err
}

const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xa
)

// TestIntegrationWebSocketMisbehaving checks two clients a library client
// would not be: one that sends the header of a long message and then
// nothing (its stream must end, its place be given back, its connection
// closed within a second or two, not wait for the rest for ever), and one
// that reads while versions keep coming (it must still be pinged every
// heartbeat, and stay while it answers).
func TestIntegrationWebSocketMisbehaving(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	itLoad(t, tc, itConfig("", streamSite(up, "heartbeat 1s")))

	t.Run("a message begun and never finished", func(t *testing.T) {
		c := dialRawWS(t, "/stall")
		if op, _, err := c.frame(5 * time.Second); err != nil || op != opText {
			t.Fatalf("first frame: opcode %d, error %v; want a text message", op, err)
		}
		// a text frame announcing 65,535 bytes, masked, then silence
		if _, err := c.conn.Write([]byte{0x81, 0x80 | 126, 0xff, 0xff, 1, 2, 3, 4}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		itWaitFor(t, "the stream's place to be given back", 5*time.Second, func() bool { return itStreams() == 0 })
		// the server said why (1008) and closed the connection
		var closed []byte
		for {
			op, p, err := c.frame(5 * time.Second)
			if err != nil {
				break
			}
			if op == opClose {
				closed = p
			}
		}
		if len(closed) < 2 || binary.BigEndian.Uint16(closed) != 1008 {
			t.Errorf("close frame: got %x, want code 1008", closed)
		}
		if d := time.Since(start); d > 4*time.Second {
			t.Errorf("connection closed %v after the stall, want within about closeWait (%v)", d, closeWait)
		}
	})

	t.Run("pinged while busy", func(t *testing.T) {
		c := dialRawWS(t, "/busy")
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { // a version every 200 ms: never a quiet heartbeat
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
					up.set("/busy", http.StatusOK, fmt.Sprintf("v%d", i))
				}
			}
		}()
		defer func() { close(stop); <-done }()
		pings, texts := 0, 0
		for end := time.Now().Add(3500 * time.Millisecond); time.Now().Before(end); {
			op, p, err := c.frame(3 * time.Second)
			if err != nil {
				t.Fatalf("after %d pings and %d messages: %v", pings, texts, err)
			}
			switch op {
			case opPing:
				pings++
				if err := c.send(opPong, p); err != nil {
					t.Fatal(err)
				}
			case opText:
				texts++
			case opClose:
				t.Fatalf("closed after %d pings and %d messages: %q", pings, texts, p)
			}
		}
		if pings < 2 || texts < 5 || itStreams() != 1 {
			t.Errorf("in 3.5 s with heartbeat 1s and a version every 200 ms: %d pings, %d messages, %d streams open; want at least 2 pings, 5 messages, the stream open",
				pings, texts, itStreams())
		}
	})
}

// itStreams is the number of streams open, over every longpoll engine.
func itStreams() int {
	n := 0
	for _, hb := range runningHubs() {
		n += hb.limiter.Streams()
	}
	return n
}

// TestIntegrationStreamsOutcomeLogged checks that a stream's access log
// line carries {http.longpoll.outcome} "stream", for each delivery, and a
// WebSocket refused for its origin "rejected".
func TestIntegrationStreamsOutcomeLogged(t *testing.T) {
	tc := itStart(t)
	up := newItUpstream(t)
	logPath := filepath.Join(t.TempDir(), "access.log")
	site := fmt.Sprintf("\tlog {\n\t\toutput file %s\n\t\tformat json\n\t}\n\tlog_append longpoll_outcome {http.longpoll.outcome}\n", logPath) +
		streamSite(up, "")
	itLoad(t, tc, itConfig("", site))

	sse := openSSE(t, "/logged-sse")
	sse.next(t, 5*time.Second)
	sse.cancel()
	ws := openWS(t, "/logged-ws")
	readWS(t, ws, 5*time.Second)
	_ = ws.Close(websocket.StatusNormalClosure, "")
	_, resp, err := websocket.Dial(context.Background(), fmt.Sprintf("ws://localhost:%d/logged-evil", itPort()),
		&websocket.DialOptions{HTTPHeader: http.Header{"Origin": {"https://evil.example.net"}}})
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("a WebSocket from another origin: got %v, want 403", err)
	}

	want := map[string]string{"/logged-sse": "stream", "/logged-ws": "stream", "/logged-evil": "rejected"}
	got := map[string]string{}
	itWaitFor(t, "the three access log lines", 10*time.Second, func() bool {
		b, _ := os.ReadFile(logPath)
		for line := range strings.SplitSeq(string(b), "\n") {
			var entry struct {
				Request struct{ URI string } `json:"request"`
				Outcome string               `json:"longpoll_outcome"`
			}
			if json.Unmarshal([]byte(line), &entry) == nil && want[entry.Request.URI] != "" {
				got[entry.Request.URI] = entry.Outcome
			}
		}
		return len(got) == len(want)
	})
	for uri, outcome := range want {
		if got[uri] != outcome {
			t.Errorf("%s: access log outcome %q, want %q", uri, got[uri], outcome)
		}
	}
}
