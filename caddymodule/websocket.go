// Copyright 2026 The caddy-longpoll Authors
// SPDX-License-Identifier: Apache-2.0

package caddymodule

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"mime"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/caddy-longpoll/caddy-longpoll/longpoll"
)

// WebSocket: a GET with Upgrade: websocket is upgraded, and gets every
// version of the resource as one text message, a JSON object:
//
//	{"etag": "\"y89PCoXva9PuEz7Mq07TSyx9\"", "status": 200,
//	 "content_type": "application/json", "body": {"order": 42}}
//
// body is the JSON value itself for a JSON content type, a string for other
// text, and absent, with body_base64, for anything else. An upstream that
// fails: {"error": "upstream failing", "retry_after": 5}. The client sends
// nothing: a data message closes the connection (1008), its content unread.
// A ping goes out every heartbeat; a client that has not answered when the
// next is due is disconnected.
//
// The WebSocket library is github.com/coder/websocket: it reaches the
// connection through http.ResponseController's Unwrap chain, as Caddy's
// wrapped response writers require.

// closeWait bounds a WebSocket's close handshake: the close frame is
// sent, and a client that does not answer within it (or is in the middle
// of a message it does not finish) is cut off.
const closeWait = time.Second

// errOrigin is the error of a WebSocket from an origin not allowed.
var errOrigin = errors.New("longpoll: WebSocket from an origin not allowed (see origins)")

// originAllowed reports whether r's Origin may open a WebSocket: none (not
// a browser), the request's own host, or one that patterns match (host
// patterns of path.Match, or with "://", scheme and host), as the
// WebSocket library checks it again at the upgrade. It is checked first,
// so that a request from another site costs no place, watch or poll.
func originAllowed(r *http.Request, patterns []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return false
	}
	if strings.EqualFold(u.Host, r.Host) {
		return true
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		if ok, _ := path.Match(strings.ToLower(p), strings.ToLower(target)); ok {
			return true
		}
	}
	return false
}

// hijackKeeper passes the upgrade's hijack on to Caddy's writer and keeps
// the connection, so that the close handshake can be given a deadline.
type hijackKeeper struct {
	http.ResponseWriter
	conn net.Conn
}

func (k *hijackKeeper) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(k.ResponseWriter).Hijack()
	k.conn = conn
	return conn, brw, err
}

func (k *hijackKeeper) Unwrap() http.ResponseWriter { return k.ResponseWriter }

// isWebSocket reports whether r asks for a WebSocket upgrade.
func isWebSocket(r *http.Request) bool {
	return headerHasToken(r.Header, "Upgrade", "websocket") && headerHasToken(r.Header, "Connection", "upgrade")
}

func headerHasToken(h http.Header, name, token string) bool {
	for _, line := range h.Values(name) {
		for v := range strings.SplitSeq(line, ",") {
			if strings.EqualFold(strings.TrimSpace(v), token) {
				return true
			}
		}
	}
	return false
}

// refuseWebSocketOverH2 answers a WebSocket over HTTP/2 or HTTP/3 (an
// extended CONNECT) with a status that says so, rather than hang or fail:
// streams of this module are served over HTTP/1.1. Other CONNECT requests
// go on.
func (h *Handler) refuseWebSocketOverH2(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if !strings.EqualFold(r.Header.Get(":protocol"), "websocket") && !strings.EqualFold(r.Proto, "websocket") &&
		r.Header.Get("Sec-Websocket-Version") == "" {
		return next.ServeHTTP(w, r)
	}
	return caddyhttp.Error(http.StatusNotImplemented,
		errors.New("longpoll: WebSocket over HTTP/2 or HTTP/3 is not served: connect over HTTP/1.1"))
}

// openWebSocket upgrades the connection of an admitted request that can be
// streamed, or returns nil if the upgrade fails (the library answered).
func (h *Handler) openWebSocket(w http.ResponseWriter, r *http.Request,
	ticket longpoll.Ticket, sub *longpoll.Subscription, have []string,
) *stream {
	// The connection is the module's from the upgrade on: the server's
	// read and write deadlines no longer apply to it (each write has its
	// own), and it is closed here, on every path.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	// Compression with context takeover would keep ~1.2 MiB a connection;
	// without, a compressor is taken from a pool for each message.
	mode := websocket.CompressionDisabled
	if h.CompressStreams {
		mode = websocket.CompressionNoContextTakeover
	}
	keeper := &hijackKeeper{ResponseWriter: w}
	conn, err := websocket.Accept(keeper, r, &websocket.AcceptOptions{
		OriginPatterns:  h.Origins,
		CompressionMode: mode,
	})
	if err != nil {
		sub.Close()
		ticket.Release()
		return nil // Accept answered the client
	}
	ctx, cancel := context.WithCancel(context.Background()) // not the request's: Accept has taken the connection
	ws := &wsWriter{conn: conn, netConn: keeper.conn, ctx: ctx, cancel: cancel, interval: time.Duration(h.Heartbeat), done: make(chan struct{})}
	go ws.read()
	return h.newStream(ctx, sub, ticket, ws, r, have, deliveryWebSocket, time.Time{})
}

// wsWriter writes a stream's messages to a WebSocket.
type wsWriter struct {
	conn     *websocket.Conn
	netConn  net.Conn // under conn, for the close handshake's deadline
	ctx      context.Context
	cancel   context.CancelFunc
	interval time.Duration // the heartbeat: a ping's time to be answered

	deadline writeDeadline // the connection's write deadline; the stream's goroutine's

	pinging atomic.Bool
	mu      sync.Mutex // guards why
	why     string     // the delivery's own reason to end, if any
	done    chan struct{}
	once    sync.Once
}

// end ends the stream for a reason of the delivery's own.
func (ws *wsWriter) end(why string) {
	ws.once.Do(func() {
		ws.mu.Lock()
		ws.why = why
		ws.mu.Unlock()
		close(ws.done)
	})
}

// read reads what the client sends: control frames (pongs, its close) are
// handled by the library while it waits; a data message ends the stream,
// as soon as its header arrives.
func (ws *wsWriter) read() {
	if _, _, err := ws.conn.Reader(ws.ctx); err == nil {
		ws.end(endPolicy)
	} else {
		ws.end(endClient) // its close, or the connection gone
	}
}

// write writes p as a text message, within the write deadline.
func (ws *wsWriter) write(p []byte) error {
	ws.moveDeadline(len(p))
	return ws.conn.Write(ws.ctx, websocket.MessageText, p)
}

func (ws *wsWriter) start() error { return nil } // the upgrade was the head

func (ws *wsWriter) send(s *longpoll.Snapshot) error { return ws.write(wsMessage(s)) }

func (ws *wsWriter) sendDelta(d *delta) error { return ws.write(d.ws) }

func (ws *wsWriter) failing(f *longpoll.Failure) error {
	return ws.write([]byte(`{"error": "upstream failing", "retry_after": ` +
		strconv.Itoa(max(1, int(f.RetryAfter.Seconds()+0.5))) + "}"))
}

// moveDeadline gives the connection the write deadline of a write of n
// bytes starting now, moved only when needed (see writeDeadline). It is
// the connection's, not a context's (which would cost each stream a
// timer and a context), so the library's own writes, a ping's, run under
// it too.
func (ws *wsWriter) moveDeadline(n int) {
	if d, moved := ws.deadline.next(time.Now(), n); moved && ws.netConn != nil {
		_ = ws.netConn.SetWriteDeadline(d)
	}
}

// heartbeat sends a ping, unless one is under way. It does not wait for the
// pong: a client that has not answered by the next heartbeat is dropped.
func (ws *wsWriter) heartbeat() error {
	if !ws.pinging.CompareAndSwap(false, true) {
		ws.end(endHeartbeat) // the last ping is still unanswered
		return nil
	}
	ws.moveDeadline(0) // for the ping's write
	go func() {
		ctx, cancel := context.WithTimeout(ws.ctx, ws.interval)
		defer cancel()
		if err := ws.conn.Ping(ctx); err != nil && ws.ctx.Err() == nil {
			ws.end(endHeartbeat)
			return
		}
		ws.pinging.Store(false)
	}()
	return nil
}

func (ws *wsWriter) gone() (<-chan struct{}, func() string) {
	return ws.done, func() string {
		ws.mu.Lock()
		defer ws.mu.Unlock()
		return ws.why
	}
}

// finish closes the connection with the close code for why, within
// closeWait: the handshake waits for the client's close, and skips the
// rest of a message the client is sending, which a client could make last
// for ever.
func (ws *wsWriter) finish(why string) {
	defer ws.cancel()
	if ws.netConn != nil {
		_ = ws.netConn.SetDeadline(time.Now().Add(closeWait))
	}
	switch why {
	case endShutdown:
		_ = ws.conn.Close(websocket.StatusGoingAway, "server shutting down")
	case endReload, endDuration, endPassthrough:
		// the client should come back: the service restarts
		_ = ws.conn.Close(websocket.StatusServiceRestart, "reconnect")
	case endPolicy:
		_ = ws.conn.Close(websocket.StatusPolicyViolation, "messages from clients are not expected")
	case endClient:
		_ = ws.conn.Close(websocket.StatusNormalClosure, "")
	default: // write error, missed heartbeat
		_ = ws.conn.CloseNow()
	}
}

// wsMessageKey is the key of a snapshot's message (Snapshot.Derived).
type wsMessageKey struct{}

// wsMessage returns the message of a snapshot, made once and shared by
// every stream of the watch.
func wsMessage(s *longpoll.Snapshot) []byte {
	return s.Derived(wsMessageKey{}, makeWSMessage).([]byte)
}

func makeWSMessage(s *longpoll.Snapshot) any {
	m := struct {
		ETag        string          `json:"etag"`
		Status      int             `json:"status"`
		ContentType string          `json:"content_type,omitempty"`
		Body        json.RawMessage `json:"body,omitempty"`
		BodyBase64  string          `json:"body_base64,omitempty"`
	}{ETag: s.ETag, Status: s.Status, ContentType: s.Header.Get("Content-Type")}
	switch mt, params, _ := mime.ParseMediaType(m.ContentType); {
	case (mt == "application/json" || strings.HasSuffix(mt, "+json")) && json.Valid(s.Body):
		m.Body = s.Body
	case isText(mt, params) && utf8.Valid(s.Body):
		m.Body, _ = json.Marshal(string(s.Body))
	case len(s.Body) > 0:
		m.BodyBase64 = base64.StdEncoding.EncodeToString(s.Body)
	default:
		m.Body = json.RawMessage(`""`)
	}
	b, _ := json.Marshal(m) // only strings, numbers and valid JSON: no error
	return b
}

// isText reports whether a media type is text.
func isText(mt string, params map[string]string) bool {
	switch {
	case strings.HasPrefix(mt, "text/"), params["charset"] != "",
		mt == "application/javascript", mt == "application/xml", strings.HasSuffix(mt, "+xml"):
		return true
	}
	return false
}
