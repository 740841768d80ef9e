#!/usr/bin/env bash
# demo.sh: the README's demo. It builds Caddy with this module from the
# working tree with build.sh (as xcaddy.md says), checks Caddyfile.example with
# `caddy validate` and `caddy fmt`, runs it over a scratch copy of demo/, and
# shows with curl the README's session: a request held and then released by a
# change to a file, and a 304 Not Modified after the wait; then what an
# operator sees. It exits non-zero if anything is not as shown, so CI runs it
# too.
set -euo pipefail
cd "$(dirname "$0")"
. ./progress.sh

BASE=http://localhost:8080

# Caddyfile.example listens on port 8080 and its admin API on 2019, on the
# loopback interface: another program there would answer in Caddy's place.
for port in 8080 2019; do
	for host in 127.0.0.1 ::1; do
		if (: <>"/dev/tcp/$host/$port") 2>/dev/null; then
			fail "port $port is in use on $host by another program (Caddyfile.example needs 8080 and 2019): stop it, then run ./demo.sh again"
		fi
	done
done

bash ./build.sh

# The notify endpoint's secret is read from the environment when the config
# loads ({env.LONGPOLL_NOTIFY_SECRET}), so that it is never written into the
# config. The demo draws a random one for this run: it exists only here.
LONGPOLL_NOTIFY_SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
export LONGPOLL_NOTIFY_SECRET

say "checking Caddyfile.example"
./caddy validate --config Caddyfile.example --adapter caddyfile 2>/dev/null
./caddy fmt Caddyfile.example | diff -u Caddyfile.example - || fail "Caddyfile.example is not caddy fmt clean"

scratch=$(mktemp -d)
cp -R demo/. "$scratch/"
LONGPOLL_DEMO_ROOT=$scratch ./caddy run --config Caddyfile.example >"$scratch/caddy.log" 2>&1 &
caddy_pid=$!
trap 'kill $caddy_pid 2>/dev/null; wait $caddy_pid 2>/dev/null; rm -rf "$scratch"' EXIT
for _ in $(seq 50); do
	curl -fs -o /dev/null "$BASE/status.txt" && break
	kill -0 $caddy_pid 2>/dev/null || break
	sleep 0.2
done
curl -fs -o /dev/null "$BASE/status.txt" || { cat "$scratch/caddy.log"; fail "Caddy did not start"; }

etag_of() { tr -d '\r' <"$1" | sed -n 's/^[Ee][Tt]ag: //p'; }
status_of() { head -n1 "$1" | cut -d' ' -f2; }

say "1. a long-poll without If-None-Match is answered at once, with the current ETag"
echo "\$ curl -i -H 'Prefer: wait=30' $BASE/status.txt"
curl -si -H 'Prefer: wait=30' "$BASE/status.txt" | tee "$scratch/first"
etag=$(etag_of "$scratch/first")
[ -n "$etag" ] || fail "no ETag"

say "2. with that ETag the request is held... (the demo edits the file 2 seconds later)"
echo "\$ curl -i -H 'Prefer: wait=30' -H 'If-None-Match: $etag' $BASE/status.txt"
curl -si -H 'Prefer: wait=30' -H "If-None-Match: $etag" -w '\n[held for %{time_total}s]\n' \
	"$BASE/status.txt" >"$scratch/held" &
held_pid=$!
sleep 2
kill -0 $held_pid 2>/dev/null || fail "the request was not held"
echo '$ echo "version 2" > status.txt'
echo "version 2" >"$scratch/status.txt"
wait $held_pid
cat "$scratch/held"
[ "$(status_of "$scratch/held")" = 200 ] || fail "the held request was not released with 200"
grep -q '^version 2' "$scratch/held" || fail "the held request did not get the new content"
etag2=$(etag_of "$scratch/held")
[ "$etag2" != "$etag" ] || fail "the ETag did not change"

say "3. ...and when nothing changes, the wait ends with 304 Not Modified"
echo "\$ curl -i -H 'Prefer: wait=2' -H 'If-None-Match: $etag2' $BASE/status.txt"
curl -si -H 'Prefer: wait=2' -H "If-None-Match: $etag2" -w '\n[held for %{time_total}s]\n' \
	"$BASE/status.txt" | tee "$scratch/timeout"
[ "$(status_of "$scratch/timeout")" = 304 ] || fail "no 304 after the wait"

say "4. the same watch as a stream: every version, as it comes (the demo edits the file twice)"
# A WebSocket client from npm's packages, if node is there (npx fetches it).
ws_pid=""
if command -v npx >/dev/null; then
	echo "\$ npx --yes wscat@6.1.0 --connect ws://localhost:8080/status.txt"
	mkfifo "$scratch/ws-in" # its input: open until the demo closes it
	npx --yes wscat@6.1.0 --connect ws://localhost:8080/status.txt <"$scratch/ws-in" >"$scratch/ws" 2>&1 &
	ws_pid=$!
	exec 3>"$scratch/ws-in"
	for _ in $(seq 300); do # until the stream is open (npx may fetch wscat first)
		curl -s localhost:2019/metrics | grep -q '^caddy_longpoll_streams{delivery="websocket"} 1' && break
		sleep 0.2
	done
fi
echo "\$ curl -N -H 'Accept: text/event-stream' $BASE/status.txt"
curl -sN --max-time 4 -H 'Accept: text/event-stream' "$BASE/status.txt" >"$scratch/sse" &
sse_pid=$!
sleep 1.5
echo "version 3" >"$scratch/status.txt"
sleep 1.5
echo "version 4" >"$scratch/status.txt"
wait $sse_pid || true # curl stops after 4 seconds
cat "$scratch/sse"
for v in 2 3 4; do
	grep -q "^data: version $v" "$scratch/sse" || fail "the event stream did not carry version $v"
done
if [ -n "$ws_pid" ]; then
	exec 3>&- # wscat's input ends: it leaves
	wait $ws_pid || true
	echo "(wscat)"
	cat "$scratch/ws"
	grep -q '"body":"version 4' "$scratch/ws" || fail "the WebSocket did not carry version 4"
fi

say "5. what the operator sees: metrics, watches, the access log, the module's log lines"
echo '$ curl -s localhost:2019/metrics | grep ^caddy_longpoll_answers_total'
curl -s localhost:2019/metrics | grep '^caddy_longpoll_answers_total' | tee "$scratch/metrics"
for outcome in immediate changed timeout; do
	grep -q "outcome=\"$outcome\"} 1\$" "$scratch/metrics" || fail "the $outcome answer was not counted once"
done
echo '$ curl -s localhost:2019/longpoll/watches'
curl -s localhost:2019/longpoll/watches | tee "$scratch/watches"
echo
grep -q '"topic":"/status.txt"' "$scratch/watches" || fail "the watch of /status.txt is not listed"
echo '$ grep longpoll_outcome caddy.log  # the access log, a few of its fields'
grep '"longpoll_outcome":"' "$scratch/caddy.log" |
	grep -o '"uri":"[^"]*"\|"longpoll_[a-z]*":[^,}]*\|"status":[0-9]*' | paste -d' ' - - - - | tee "$scratch/access"
grep -q '"longpoll_outcome":"changed"' "$scratch/access" || fail "the access log has no changed outcome"
echo '$ grep http.handlers.longpoll caddy.log  # the module'"'"'s own lines: level and message'
grep '"logger":"http.handlers.longpoll"' "$scratch/caddy.log" |
	sed -n 's/.*"level":"\([a-z]*\)".*"msg":"\([^"]*\)".*/\1 \2/p' | tee "$scratch/module"
grep -qx 'info longpoll engine started' "$scratch/module" || fail "the module's log has no start line"

curl -s localhost:2019/config/ | grep -qF "$LONGPOLL_NOTIFY_SECRET" && fail "the notify secret is in the running config"

say "demo passed"
