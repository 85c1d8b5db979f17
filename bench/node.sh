# bench/node.sh, sourced by the benchmarks that start converter nodes (nodes.sh, s3job.sh). The
# sourcing script defines die, SCRATCH (a directory removed at its end) and PIDS, the processes
# its end kills.

# build_nodes: builds the converter and bench/gen into $SCRATCH.
build_nodes() {
	go build -o "$SCRATCH/converter" ./cmd/converter || die "cannot build the converter"
	go build -o "$SCRATCH/gen" ./bench/gen || die "cannot build bench/gen"
}

# start NAME ARGS...: starts a node logging to $SCRATCH/NAME.log; sets NODE_URL to the URL it
# serves on and NODE_PID.
start() {
	local name=$1
	shift
	"$SCRATCH/converter" "$@" >"$SCRATCH/$name.out" 2>"$SCRATCH/$name.log" &
	NODE_PID=$!
	PIDS+=("$NODE_PID")
	for _ in $(seq 600); do
		NODE_URL=$(grep -o 'http://[^ ]*' "$SCRATCH/$name.out" 2>/dev/null) && return
		kill -0 "$NODE_PID" 2>/dev/null || break
		sleep 0.1
	done
	die "$name did not start: $(tail -3 "$SCRATCH/$name.log")"
}
