#!/usr/bin/env bash
# bench/batch.sh: the batch benchmark (issue 12), in one command.
#
#   bench/batch.sh [N [SIZE]]   a sharded checkpoint of N shards of SIZE (default: 8 512M, 4 GiB)
#   QUICK=1 bench/batch.sh      smoke test: 4 shards of 64M, one run
#
# It writes a Hugging Face-style repository into a scratch directory under $TMPDIR (removed at
# the end): N real torch zip shards (bench/gen, internal/synth; fp16), their
# pytorch_model.bin.index.json and a config.json; starts versitygw v1.8.0 (POSIX backend, the
# tests' S3 server, built into the same cache directory the tests use) on a loopback port; and
# prints per case the median wall time over RUNS runs, the rate, the peak RSS (/usr/bin/time),
# the median CPU seconds of the command (user + system, its children included) and of the
# S3 server meanwhile, and the ratio to the case's peer, measured in the same run. On a
# machine shared with other work the CPU seconds are the steadier measure:
#   floor        cp -r the tree, then openssl dgst -sha256 of both copies (the single-file floor)
#   batch        converter batch --workers WORKERS TREE DEST: local to local, sandboxed,
#                verified; ratio to floor (target at most 1.0x)
#   rerun        the same command again over the unchanged tree: nothing to do; ratio to batch
#   manager      the SDK transfer manager's UploadDirectory of the tree, defaults
#                (bench/s3put -mode manager): the peer of the S3 cases
#   tree         internal/s3store's Put per file, WORKERS files at a time (bench/s3put -mode
#                tree): what batch does for each output, checksums and checks included
#   batch-s3     converter batch --workers WORKERS TREE s3://bench/...: local to S3; ratio to
#                manager (target at most 1.3x)
# Every run writes to a fresh destination, deleted after it.
#
# Environment (defaults in brackets): RUNS [3; QUICK: 1]  WORKERS [2]  PART_MIB [16]
#   CASES ["floor batch rerun manager tree batch-s3"]: the cases to run (a case's peer runs too)
#   CONCURRENCY [4]  KEEP [0]: keep the scratch dir
# Needs: go, curl, openssl, python3, GNU time (/usr/bin/time; Debian package "time").
set -uo pipefail

cd "$(dirname "$0")/.."
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then N=${1:-4}; SIZE=${2:-64M}; RUNS=${RUNS:-1}; else N=${1:-8}; SIZE=${2:-512M}; RUNS=${RUNS:-3}; fi
WORKERS=${WORKERS:-2}
PART_MIB=${PART_MIB:-16}
CONCURRENCY=${CONCURRENCY:-4}
KEEP=${KEEP:-0}

# shellcheck source=bench/common.sh
. bench/common.sh
need go curl openssl python3 /usr/bin/time

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/batchbench.XXXXXX") || die "cannot create a scratch directory"
VERSITYGW_PID=
cleanup() {
	[ -n "$VERSITYGW_PID" ] && kill "$VERSITYGW_PID" 2>/dev/null && wait "$VERSITYGW_PID" 2>/dev/null
	if [ "$KEEP" = 1 ]; then log "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# shellcheck source=bench/versitygw.sh
. bench/versitygw.sh
go build -o "$SCRATCH/s3put" ./bench/s3put || die "cannot build bench/s3put"
go build -o "$SCRATCH/gen" ./bench/gen || die "cannot build bench/gen"
go build -o "$SCRATCH/converter" ./cmd/converter || die "cannot build the converter"

# --- the tree: a sharded checkpoint as transformers saves it ------------------------------------
mkdir -p "$SCRATCH/tree"
log "writing $N shards of $SIZE"
for i in $(seq 1 "$N"); do
	shard=$(printf 'pytorch_model-%05d-of-%05d.bin' "$i" "$N")
	"$SCRATCH/gen" -o "$SCRATCH/tree/$shard" -size "$SIZE" -tensors 16 -first-layer $(( (i - 1) * 16 )) -seed "$i" 2>/dev/null || die "cannot write $shard"
	"$SCRATCH/converter" scan --json "$SCRATCH/tree/$shard" >"$SCRATCH/$shard.json" || die "cannot scan $shard"
done
# The index names every shard's tensors, as transformers writes it.
python3 - "$SCRATCH" "$N" <<'PY' || die "cannot write the index"
import json, sys
scratch, n = sys.argv[1], int(sys.argv[2])
weight_map, total = {}, 0
for i in range(1, n + 1):
    shard = "pytorch_model-%05d-of-%05d.bin" % (i, n)
    for t in json.load(open("%s/%s.json" % (scratch, shard)))["tensors"]:
        weight_map[t["name"]] = shard
        total += t["bytes"]
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
          open(scratch + "/tree/pytorch_model.bin.index.json", "w"), indent=2)
PY
echo '{"architectures": ["BenchModel"]}' >"$SCRATCH/tree/config.json"

# --- the server --------------------------------------------------------------------------------
versitygw_start

# --- the runs ----------------------------------------------------------------------------------
# server_ticks: the CPU time versitygw used so far, in clock ticks.
server_ticks() { awk '{ print $14 + $15 }' "/proc/$VERSITYGW_PID/stat"; }
TICKS=$(getconf CLK_TCK)

# timed NAME CMD...: runs CMD under GNU time, appends its wall seconds, peak RSS (KiB), CPU
# seconds and the server's CPU seconds to SECS, RSS, CPU and SCPU[NAME], and logs its last
# output line.
declare -A SECS RSS CPU SCPU
declare -A PEER=([floor]=floor [batch]=floor [rerun]=batch [manager]=manager [tree]=manager [batch-s3]=manager)
CASES=${CASES:-floor batch rerun manager tree batch-s3}
for c in $CASES; do
	[ -n "${PEER[$c]:-}" ] || die "unknown case $c"
	CASES+=" ${PEER[$c]}"
	[ "$c" = rerun ] && CASES+=" floor" # rerun's peer, batch, is compared with floor
done
want() { [[ " $CASES " == *" $1 "* ]]; }
timed() {
	local name=$1 t0 t1 out
	shift
	want "$name" || return 0
	sync
	cat "$SCRATCH"/tree/* >/dev/null # the same warm page cache for every run
	s0=$(server_ticks)
	t0=$(date +%s%N)
	out=$(/usr/bin/time -f "rss_kb=%M cpu=%U %S" -o "$SCRATCH/time" "$@" 2>&1) || die "$name: $(tail -3 <<<"$out")"
	t1=$(date +%s%N)
	s1=$(server_ticks)
	SECS[$name]+="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }') "
	RSS[$name]+="$(sed -n 's/rss_kb=\([0-9]*\).*/\1/p' "$SCRATCH/time") "
	CPU[$name]+="$(sed -n 's/.*cpu=//p' "$SCRATCH/time" | awk '{ printf "%.2f", $1 + $2 }') "
	SCPU[$name]+="$(awk -v a="$s0" -v b="$s1" -v hz="$TICKS" 'BEGIN { printf "%.2f", (b - a) / hz }') "
	log "run $run: $name $(tail -1 <<<"$out" | cut -c1-120) ($(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f s", (b - a) / 1e9 }'))"
}
total=$(du -cb "$SCRATCH"/tree/* | tail -1 | cut -f1)
CONV=("$SCRATCH/converter" batch --progress none --workers "$WORKERS")
for run in $(seq "$RUNS"); do
	timed floor sh -c 'cp -r "$1" "$2" && openssl dgst -sha256 "$1"/* "$2"/*' sh "$SCRATCH/tree" "$SCRATCH/copy"
	rm -rf "$SCRATCH/copy"
	timed batch "${CONV[@]}" "$SCRATCH/tree" "$SCRATCH/out"
	timed rerun "${CONV[@]}" "$SCRATCH/tree" "$SCRATCH/out"
	rm -rf "$SCRATCH/out"
	for mode in manager tree; do
		timed "$mode" "$SCRATCH/s3put" -mode "$mode" -endpoint "$ENDPOINT" -part-size "$PART_MIB" \
			-concurrency "$CONCURRENCY" -workers "$WORKERS" "$SCRATCH/tree" "s3://bench/$mode-$run"
		rm -rf "$SCRATCH/s3/bench/$mode-$run"
	done
	timed batch-s3 "${CONV[@]}" --s3-endpoint "$ENDPOINT" "$SCRATCH/tree" "s3://bench/batch-$run"
	rm -rf "$SCRATCH/s3/bench/batch-$run" "$SCRATCH/s3/bench/.sgwtmp"
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
max() { tr ' ' '\n' | grep . | sort -g | tail -1; }
echo "batch: $N shards of $SIZE + index + config.json ($total bytes); --workers $WORKERS; versitygw v1.8.0 on loopback;"
echo "median of $RUNS runs; S3 part size ${PART_MIB} MiB, $CONCURRENCY parts in flight per file"
printf '%-9s %10s %10s %12s %8s %8s %8s  %s\n' case seconds MiB/s peak_RSS_MiB cpu_s srv_cpu_s ratio "ratio to"
for name in floor batch rerun manager tree batch-s3; do
	want "$name" || continue
	s=$(median <<<"${SECS[$name]}")
	p=$(median <<<"${SECS[${PEER[$name]}]}")
	printf '%-9s %10s %10.1f %12d %8s %8s %8.2f  %s\n' "$name" "$s" "$(awk -v b="$total" -v s="$s" 'BEGIN { print b / 1048576 / s }')" \
		"$(( $(max <<<"${RSS[$name]}") / 1024 ))" "$(median <<<"${CPU[$name]}")" "$(median <<<"${SCPU[$name]}")" \
		"$(awk -v a="$s" -v b="$p" 'BEGIN { print a / b }')" "${PEER[$name]}"
done
# The per-run ratios of the S3 cases, each against the manager of its own run: on a shared
# machine, the runs' loads differ more than two cases of one run.
if want batch-s3; then
	echo "batch-s3/manager per run: $(paste -d' ' <(tr ' ' '\n' <<<"${SECS[batch-s3]}" | grep .) <(tr ' ' '\n' <<<"${SECS[manager]}" | grep .) |
		awk '{ printf "%s%.2f", sep, $1 / $2; sep = " " }')"
fi
