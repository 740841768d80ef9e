#!/usr/bin/env bash
# test.sh: the tests, `go test -race ./...` (arguments replace `./...`: e.g.
# ./test.sh -run Protocol ./caddymodule). The Go modules are downloaded
# first, quietly, and a line is printed every 20 seconds: a first run
# compiles Caddy with the race detector for minutes with no other output.
set -euo pipefail
cd "$(dirname "$0")"
. ./progress.sh

say "downloading the Go modules (once)"
quietly go mod download
say "go test -race ${*:-./...}   (first run: 5 to 7 minutes)"
with_progress go test -race "${@:-./...}"
