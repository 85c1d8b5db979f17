#!/usr/bin/env bash
# bench/nodes.sh: throughput of 1, 2, 3 worker nodes on one PostgreSQL and one S3 store (issue 14).
#
#   bench/nodes.sh [N [SIZE]]   N checkpoints of SIZE tensor bytes each (default: 12 of 64M)
#   QUICK=1 bench/nodes.sh      smoke test: 4 of 16M, node counts 1 and 2
#
# It builds ./cmd/converter and bench/gen, writes N real torch zip checkpoints (internal/synth,
# fp16, 16 tensors, each its own seed) into a scratch directory under $TMPDIR (removed at the
# end), starts a throwaway PostgreSQL cluster (Debian's initdb and pg_ctl, the newest under
# /usr/lib/postgresql, on a private socket directory; as root it runs as the postgres user) and
# versitygw v1.8.0 (the tests' S3 server, POSIX backend) on loopback. Then, for each node count
# K in NODES, on a fresh database and S3 prefix:
#   1. one API-only node (converter serve --workers 0) takes the N uploads: the jobs wait queued;
#   2. K worker nodes (converter worker --workers 1, each with its own --data scratch) start, and
#      the clock runs from their start until the API node lists all N jobs succeeded;
#   3. it prints jobs per minute, input MiB/s and output MiB/s for that K.
# Each conversion fetches its input from S3 to scratch, converts it in the sandbox child and
# puts the output and manifest back, all verified: what a worker pool does.
#
# Environment (defaults in brackets): NODES ["1 2 3"; QUICK: "1 2"]  KEEP [0]: keep the scratch dir
#   TIMEOUT [1800]: seconds one node count may take before the benchmark gives up
# Needs: go, curl, python3; PostgreSQL (Debian package postgresql).
set -uo pipefail

cd "$(dirname "$0")/.."
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then N=${1:-4}; SIZE=${2:-16M}; NODES=${NODES:-1 2}; else N=${1:-12}; SIZE=${2:-64M}; NODES=${NODES:-1 2 3}; fi
TIMEOUT=${TIMEOUT:-1800}
KEEP=${KEEP:-0}

# shellcheck source=bench/common.sh
. bench/common.sh
need go curl python3
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || die "PostgreSQL is missing (apt-get install postgresql)"

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/nodesbench.XXXXXX") || die "cannot create a scratch directory"
chmod 755 "$SCRATCH" # the cluster's owner reaches its directory through it
PIDS=()
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
	for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
	wait 2>/dev/null
	[ -d "$SCRATCH/pg/data" ] && as_owner "$PGBIN/pg_ctl" -D "$SCRATCH/pg/data" -m immediate -w stop >/dev/null 2>&1
	if [ "$KEEP" = 1 ]; then log "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# --- builds ------------------------------------------------------------------------------------
# shellcheck source=bench/versitygw.sh
. bench/versitygw.sh
# shellcheck source=bench/node.sh
. bench/node.sh
build_nodes

# --- the checkpoints ---------------------------------------------------------------------------
mkdir -p "$SCRATCH/in"
log "writing $N checkpoints of $SIZE"
for i in $(seq 1 "$N"); do
	"$SCRATCH/gen" -o "$SCRATCH/in/c$i.bin" -size "$SIZE" -tensors 16 -seed "$i" 2>/dev/null || die "cannot write checkpoint $i"
done
IN_BYTES=$(du -cb "$SCRATCH"/in/* | tail -1 | cut -f1)

# --- PostgreSQL and versitygw ------------------------------------------------------------------
mkdir -p "$SCRATCH/pg/sock"
[ "$(id -u)" = 0 ] && chown -R postgres "$SCRATCH/pg"
as_owner "$PGBIN/initdb" -D "$SCRATCH/pg/data" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-instructions >"$SCRATCH/initdb.log" 2>&1 ||
	die "initdb: $(tail -3 "$SCRATCH/initdb.log")"
as_owner "$PGBIN/pg_ctl" -D "$SCRATCH/pg/data" -l "$SCRATCH/pg/server.log" -o "-c listen_addresses='' -k $SCRATCH/pg/sock" -w start >/dev/null ||
	die "pg_ctl start: $(tail -3 "$SCRATCH/pg/server.log")"
PGURL="postgres://postgres@/%s?host=$SCRATCH/pg/sock"

versitygw_start
PIDS+=("$VERSITYGW_PID")
export AWS_ENDPOINT_URL=$ENDPOINT

# succeeded URL: how many jobs the node at URL lists as succeeded (failing on a failed one).
succeeded() {
	curl -sf "$1/v1/jobs?page_size=1000" | python3 -c '
import json, sys
jobs = json.load(sys.stdin)["jobs"]
failed = [j for j in jobs if j["state"] in ("failed", "canceled")]
if failed:
    sys.exit("failed: %s" % failed[0])
print(sum(j["state"] == "succeeded" for j in jobs))'
}
now() { date +%s.%N; }

declare -A SECS OUT_BYTES
for k in $NODES; do
	db=nodes$k
	as_owner "$PGBIN/createdb" -h "$SCRATCH/pg/sock" -U postgres "$db" || die "createdb $db"
	# shellcheck disable=SC2059
	flags=(--db "$(printf "$PGURL" "$db")" --store "s3://bench/nodes-$k")
	start "api-$k" serve --addr 127.0.0.1:0 --workers 0 --data "$SCRATCH/api-$k" "${flags[@]}"
	api=$NODE_URL api_pid=$NODE_PID
	for f in "$SCRATCH"/in/*; do
		curl -sSf -o /dev/null -H 'Content-Type: application/octet-stream' --data-binary "@$f" "$api/v1/jobs?filename=$(basename "$f")" ||
			die "upload of $f to the API node failed"
	done
	log "$k node(s): $N jobs queued on the API node; starting the workers"
	workers=()
	t0=$(now)
	for w in $(seq 1 "$k"); do
		start "worker-$k-$w" worker --workers 1 --health-addr 127.0.0.1:0 --data "$SCRATCH/worker-$k-$w" "${flags[@]}"
		workers+=("$NODE_PID")
	done
	until done=$(succeeded "$api") && [ "$done" = "$N" ]; do
		[ -n "$done" ] || die "$k node(s): a job failed, or the API node does not answer; see $SCRATCH (KEEP=1)"
		awk -v a="$t0" -v b="$(now)" -v t="$TIMEOUT" 'BEGIN { exit !(b - a > t) }' && die "$k node(s): not done after $TIMEOUT s"
		sleep 0.2
	done
	t1=$(now)
	SECS[$k]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
	OUT_BYTES[$k]=$(curl -sf "$api/v1/jobs?page_size=1000" | python3 -c 'import json, sys; print(sum(j["output"]["size"] for j in json.load(sys.stdin)["jobs"]))')
	log "$k node(s): $N jobs in ${SECS[$k]} s; by node: $(for w in $(seq 1 "$k"); do grep -c '"conversion succeeded"' "$SCRATCH/worker-$k-$w.log"; done | paste -sd' ')"
	kill -TERM "${workers[@]}" "$api_pid"
	wait "${workers[@]}" "$api_pid" 2>/dev/null
	rm -rf "$SCRATCH"/worker-"$k"-* "$SCRATCH/api-$k" "$SCRATCH/s3/bench/nodes-$k"
done

echo "nodes: $N checkpoints of $SIZE tensor bytes ($IN_BYTES bytes in all), queued on an API-only node, worked by K"
echo "worker nodes (--workers 1 each); PostgreSQL $("$PGBIN/postgres" --version | awk '{ print $3 }') and versitygw v1.8.0 on loopback; $(nproc) CPUs"
printf '%-6s %9s %9s %14s %15s %8s\n' workers seconds jobs/min input_MiB/s output_MiB/s speedup
for k in $NODES; do
	printf '%-6s %9s %9.1f %14.1f %15.1f %8.2f\n' "$k" "${SECS[$k]}" \
		"$(awk -v n="$N" -v s="${SECS[$k]}" 'BEGIN { print n * 60 / s }')" \
		"$(awk -v b="$IN_BYTES" -v s="${SECS[$k]}" 'BEGIN { print b / 1048576 / s }')" \
		"$(awk -v b="${OUT_BYTES[$k]}" -v s="${SECS[$k]}" 'BEGIN { print b / 1048576 / s }')" \
		"$(awk -v a="${SECS[${NODES%% *}]}" -v s="${SECS[$k]}" 'BEGIN { print a / s }')"
done
