#!/usr/bin/env bash
# build.sh: builds ./caddy, Caddy with this module from the working tree, the
# way xcaddy.md says. demo.sh and the load tool (loadtest/) both use it.
set -euo pipefail
cd "$(dirname "$0")"
. ./progress.sh

CADDY_VERSION=${CADDY_VERSION:-v2.11.9}
XCADDY_VERSION=v0.4.5
MODULE=github.com/caddy-longpoll/caddy-longpoll

# xcaddy: the one on PATH, or one built once from a scratch module.
XCADDY=$(command -v xcaddy || true)
if [ -z "$XCADDY" ]; then
	XCADDY=${XDG_CACHE_HOME:-$HOME/.cache}/caddy-longpoll/xcaddy-$XCADDY_VERSION
	if [ ! -x "$XCADDY" ]; then
		say "building xcaddy $XCADDY_VERSION (once)"
		scratch=$(mktemp -d)
		quietly bash -c "cd '$scratch' && go mod init xcaddy-build &&
			go get 'github.com/caddyserver/xcaddy/cmd@$XCADDY_VERSION' &&
			go build -o '$XCADDY' github.com/caddyserver/xcaddy/cmd/xcaddy"
		rm -rf "$scratch"
	fi
fi

# A Go module proxy that refuses version-list queries (403) stops `go get`
# before it falls back to the replaced module; "|off" after the first proxy
# turns such a refusal into "not found". Harmless with a proxy that answers.
proxy=$(go env GOPROXY | cut -d, -f1 | cut -d'|' -f1)
case "$proxy" in off | direct) ;; *) export GOPROXY="$proxy|off" ;; esac

say "building Caddy $CADDY_VERSION with the module from this checkout (first build: 2 to 5 minutes)"
CADDY_VERSION=$CADDY_VERSION quietly "$XCADDY" build \
	--output ./caddy \
	--with "$MODULE/caddymodule" \
	--replace "$MODULE=."
./caddy list-modules | grep -qx 'http.handlers.longpoll' || fail "the module is not in the build"
