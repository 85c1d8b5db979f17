#!/usr/bin/env bash
# bench/s3job.sh: CPU seconds one job on S3 costs its node: fetch the input, convert it in the
# sandbox child, store the output and the manifest (issue: s3keep).
#
#   bench/s3job.sh [SIZE [RUNS]]   a checkpoint of SIZE tensor bytes (default 512M), RUNS jobs (3)
#
# It builds ./cmd/converter and bench/gen, writes one real torch zip checkpoint (fp16, 16
# tensors) into a scratch directory under $TMPDIR (removed at the end) and starts versitygw
# v1.8.0 (the tests' S3 server) on loopback. For each run, a fresh node (serve --workers 1, on
# SQLite) takes the upload (streamed to S3) and works the job. The node's CPU seconds (user and
# system, with the sandbox child's, from /proc/PID/stat) from the moment the upload's answer
# arrives (the job is queued, and starts) until the job is listed succeeded are the job's cost.
# CPU seconds, not wall time: the machine is shared.
#
# Environment: KEEP [0]: keep the scratch dir.  Needs: go, curl, python3.
set -uo pipefail

cd "$(dirname "$0")/.."
SIZE=${1:-512M}
RUNS=${2:-3}
KEEP=${KEEP:-0}

# shellcheck source=bench/common.sh
. bench/common.sh
need go curl python3
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/s3jobbench.XXXXXX") || die "cannot create a scratch directory"
PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
	wait 2>/dev/null
	if [ "$KEEP" = 1 ]; then log "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# shellcheck source=bench/versitygw.sh
. bench/versitygw.sh
# shellcheck source=bench/node.sh
. bench/node.sh
build_nodes
"$SCRATCH/gen" -o "$SCRATCH/c.bin" -size "$SIZE" -tensors 16 2>/dev/null || die "cannot write the checkpoint"
versitygw_start
PIDS+=("$VERSITYGW_PID")
export AWS_ENDPOINT_URL=$ENDPOINT

# state URL ID: the job's state.
state() { curl -sf "$1/v1/jobs/$2" | python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])'; }
# cpu PID: the process's user and system CPU seconds, with its waited-for children's.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15 + $16 + $17) / hz }' "/proc/$1/stat"; }

for run in $(seq 1 "$RUNS"); do
	data=$SCRATCH/data-$run
	flags=(--addr 127.0.0.1:0 --data "$data" --store "s3://bench/jobs-$run")
	start "node-$run" serve --workers 1 "${flags[@]}"
	curl -sSf -o "$SCRATCH/job.json" -H 'Content-Type: application/octet-stream' --data-binary "@$SCRATCH/c.bin" \
		"$NODE_URL/v1/jobs?filename=c.bin" || die "upload failed"
	before=$(cpu "$NODE_PID") # at once: the job started as the answer left
	id=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])' <"$SCRATCH/job.json")
	until s=$(state "$NODE_URL" "$id") && [ "$s" = succeeded ]; do
		case $s in failed | canceled | "") die "run $run: job $id is ${s:-unknown}; see $SCRATCH (KEEP=1)" ;; esac
		sleep 0.05
	done
	secs=$(awk -v a="$before" -v b="$(cpu "$NODE_PID")" 'BEGIN { printf "%.2f", b - a }')
	kill -TERM "$NODE_PID" && wait "$NODE_PID" 2>/dev/null
	log "run $run: $secs CPU seconds"
	echo "$secs"
	rm -rf "$data" "$SCRATCH/s3/bench/jobs-$run"
done >"$SCRATCH/secs"
echo "s3job: one job of a $SIZE checkpoint ($(stat -c %s "$SCRATCH/c.bin") bytes) on S3 (versitygw v1.8.0, loopback), $(nproc) CPUs"
echo "CPU seconds of the node from upload answered to job succeeded (sandbox child included), per run: $(paste -sd' ' "$SCRATCH/secs")"
sort -n "$SCRATCH/secs" | awk '{ a[NR] = $1 } END { printf "median %.2f\n", a[int((NR + 1) / 2)] }'
