#!/usr/bin/env bash
# demo.sh: the README's demo. It builds Caddy with this module from the
# working tree (as xcaddy.md says), checks Caddyfile.example with
# `caddy validate` and `caddy fmt`, runs it over a scratch folder, and shows
# with curl a request held and then released by a change to a file, and a
# 304 Not Modified after the wait. It exits non-zero if anything is not as
# shown, so CI runs it too.
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
XCADDY_VERSION=v0.4.5
MODULE=github.com/caddy-longpoll/caddy-longpoll
BASE=http://localhost:8080

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

# xcaddy: the one on PATH, or one built once from a scratch module.
XCADDY=$(command -v xcaddy || true)
if [ -z "$XCADDY" ]; then
	XCADDY=${XDG_CACHE_HOME:-$HOME/.cache}/caddy-longpoll/xcaddy-$XCADDY_VERSION
	if [ ! -x "$XCADDY" ]; then
		say "building xcaddy $XCADDY_VERSION"
		scratch=$(mktemp -d)
		(cd "$scratch" && go mod init xcaddy-build >/dev/null 2>&1 &&
			go get "github.com/caddyserver/xcaddy/cmd@$XCADDY_VERSION" &&
			go build -o "$XCADDY" github.com/caddyserver/xcaddy/cmd/xcaddy)
		rm -rf "$scratch"
	fi
fi

# A Go module proxy that refuses version-list queries (403) stops `go get`
# before it falls back to the replaced module; "|off" after the first proxy
# turns such a refusal into "not found". Harmless with a proxy that answers.
proxy=$(go env GOPROXY | cut -d, -f1 | cut -d'|' -f1)
case "$proxy" in off | direct) ;; *) export GOPROXY="$proxy|off" ;; esac

say "building Caddy $CADDY_VERSION with the module from this checkout (first build: ~3 minutes)"
CADDY_VERSION=$CADDY_VERSION "$XCADDY" build \
	--output ./caddy \
	--with "$MODULE/caddymodule" \
	--replace "$MODULE=."
./caddy list-modules | grep -qx 'http.handlers.longpoll' || fail "the module is not in the build"

say "checking Caddyfile.example"
./caddy validate --config Caddyfile.example --adapter caddyfile 2>/dev/null
./caddy fmt Caddyfile.example | diff -u Caddyfile.example - || fail "Caddyfile.example is not caddy fmt clean"

scratch=$(mktemp -d)
echo "version 1" >"$scratch/status.txt"
LONGPOLL_DEMO_ROOT=$scratch ./caddy run --config Caddyfile.example >"$scratch/caddy.log" 2>&1 &
caddy_pid=$!
trap 'kill $caddy_pid 2>/dev/null; wait $caddy_pid 2>/dev/null; rm -rf "$scratch"' EXIT
for _ in $(seq 50); do
	curl -fs -o /dev/null "$BASE/status.txt" && break
	sleep 0.2
done
curl -fs -o /dev/null "$BASE/status.txt" || { cat "$scratch/caddy.log"; fail "Caddy did not start"; }

etag_of() { tr -d '\r' <"$1" | sed -n 's/^[Ee][Tt]ag: //p'; }
status_of() { head -n1 "$1" | cut -d' ' -f2; }

say "1. a long-poll without If-None-Match is answered at once, with the current ETag"
echo '$ curl -i -H "Prefer: wait=30" '"$BASE/status.txt"
curl -si -H 'Prefer: wait=30' "$BASE/status.txt" | tee "$scratch/first"
etag=$(etag_of "$scratch/first")
[ -n "$etag" ] || fail "no ETag"

say "2. with that ETag the request is held... (the file changes in 2 seconds)"
echo '$ curl -i -H "Prefer: wait=30" -H '"'If-None-Match: $etag' $BASE/status.txt"
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
echo '$ curl -i -H "Prefer: wait=2" -H '"'If-None-Match: $etag2' $BASE/status.txt"
curl -si -H 'Prefer: wait=2' -H "If-None-Match: $etag2" -w '\n[held for %{time_total}s]\n' \
	"$BASE/status.txt" | tee "$scratch/timeout"
[ "$(status_of "$scratch/timeout")" = 304 ] || fail "no 304 after the wait"

say "demo passed"
