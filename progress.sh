# progress.sh: sourced by build.sh and test.sh. A first run downloads and
# compiles Caddy and its dependencies for minutes without a word; these
# helpers say what is going on, and that it is still going.

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

# with_progress [--log FILE] CMD...: runs CMD and prints a line every 20
# seconds while it runs, then how long it took; returns its status. CMD's
# output is shown as it comes, or written to FILE.
with_progress() {
	local log=""
	if [ "$1" = --log ]; then
		log=$2
		shift 2
	fi
	local start=$SECONDS next=$((SECONDS + 20)) rc=0
	if [ -n "$log" ]; then
		"$@" >>"$log" 2>&1 &
	else
		# the same output as ours: reopening /dev/stdout would give the
		# command a file offset of its own, and each would overwrite the
		# other's lines in a file
		"$@" 2>&1 &
	fi
	local pid=$!
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		if [ "$SECONDS" -ge "$next" ]; then
			printf '   ... still working (%dm%02ds)\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60))
			next=$((next + 20))
		fi
	done
	wait "$pid" || rc=$?
	printf '   (%dm%02ds)\n' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60))
	return "$rc"
}

# quietly CMD...: with_progress, CMD's output in a log: it prints how many
# Go modules CMD downloaded, and the end of the log if CMD fails.
quietly() {
	local log rc=0
	log=$(mktemp)
	with_progress --log "$log" "$@" || rc=$?
	local downloads
	downloads=$(grep -c '^go: downloading' "$log" || true)
	[ "$downloads" -eq 0 ] || printf '   (downloaded %d Go modules)\n' "$downloads"
	[ "$rc" -eq 0 ] || tail -n 40 "$log" >&2
	rm -f "$log"
	return "$rc"
}
