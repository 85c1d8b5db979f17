# bench/common.sh, sourced first by every benchmark script: how they stop and log, and the check
# of the tools they need.

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# need TOOL...: stops the benchmark unless every TOOL is on PATH (or, given a path, there).
need() {
	local tool hint
	for tool in "$@"; do
		hint=
		[ "$tool" = /usr/bin/time ] && hint=" (GNU time: apt-get install time)"
		command -v "$tool" >/dev/null || die "$tool is missing$hint"
	done
}
