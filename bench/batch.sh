#!/usr/bin/env bash
# bench/batch.sh: the local-to-S3 peer of the batch benchmark (issue 12), in one command.
#
#   bench/batch.sh [N [SIZE]]   a tree of N files of SIZE random bytes (default: 8 512M, 4 GiB)
#   QUICK=1 bench/batch.sh      smoke test: 4 files of 64M, one run
#
# It starts versitygw v1.8.0 (POSIX backend, the tests' S3 server, built into the same cache
# directory the tests use) on a loopback port, writes the tree into a scratch directory under
# $TMPDIR (removed at the end), and prints per mode the median wall time of the upload over
# RUNS runs, its rate, and the uploader's peak RSS (/usr/bin/time -v):
#   manager   the SDK transfer manager's UploadDirectory, defaults (bench/s3put -mode manager)
#   tree      internal/s3store's Put per file, WORKERS files at a time (bench/s3put -mode tree):
#             what batch does for each output, checksums and checks included
# and tree's ratio to manager. Every run uploads to a fresh prefix, deleted after it.
#
# Environment (defaults in brackets): RUNS [3; QUICK: 1]  WORKERS [2]  PART_MIB [16]
#   CONCURRENCY [4]  KEEP [0]: keep the scratch dir
# Needs: go, curl, GNU time (/usr/bin/time; Debian package "time").
set -uo pipefail

cd "$(dirname "$0")/.."
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then N=${1:-4}; SIZE=${2:-64M}; RUNS=${RUNS:-1}; else N=${1:-8}; SIZE=${2:-512M}; RUNS=${RUNS:-3}; fi
WORKERS=${WORKERS:-2}
PART_MIB=${PART_MIB:-16}
CONCURRENCY=${CONCURRENCY:-4}
KEEP=${KEEP:-0}
VERSITYGW=github.com/versity/versitygw/cmd/versitygw@v1.8.0

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

for tool in go curl /usr/bin/time; do
	command -v "$tool" >/dev/null || die "$tool is missing (GNU time: apt-get install time)"
done

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/batchbench.XXXXXX") || die "cannot create a scratch directory"
SERVER_PID=
cleanup() {
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
	if [ "$KEEP" = 1 ]; then log "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

# --- versitygw: the tests' cached build, or a build into that cache ----------------------------
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ptsafe-converter/versitygw-${VERSITYGW#*@}"
if [ ! -x "$CACHE/versitygw" ]; then
	log "building $VERSITYGW into $CACHE"
	mkdir -p "$CACHE" && build=$(mktemp -d "$CACHE/build-XXXXXX") || die "cannot create $CACHE"
	(cd "$build" && GOBIN="$build" GOFLAGS= GOWORK=off go install "$VERSITYGW") || die "cannot build versitygw"
	mv "$build/versitygw" "$CACHE/versitygw" && rm -rf "$build"
fi
go build -o "$SCRATCH/s3put" ./bench/s3put || die "cannot build bench/s3put"

# --- the tree --------------------------------------------------------------------------------
mkdir -p "$SCRATCH/tree" "$SCRATCH/s3/bench" "$SCRATCH/iam"
log "writing $N files of $SIZE"
for i in $(seq -f %05g 1 "$N"); do
	head -c "$SIZE" /dev/urandom >"$SCRATCH/tree/model-$i-of-$(printf %05d "$N").bin" || die "cannot write the tree"
done
echo '{"architectures": ["BenchModel"]}' >"$SCRATCH/tree/config.json"

# --- the server --------------------------------------------------------------------------------
export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret1234 AWS_REGION=us-east-1
export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
ENDPOINT=http://127.0.0.1:$PORT
"$CACHE/versitygw" --port "127.0.0.1:$PORT" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" \
	--iam-dir "$SCRATCH/iam" posix "$SCRATCH/s3" >"$SCRATCH/versitygw.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 300); do
	curl -s -o /dev/null "$ENDPOINT/" && break
	kill -0 "$SERVER_PID" 2>/dev/null || die "versitygw exited: $(cat "$SCRATCH/versitygw.log")"
	sleep 0.1
done
curl -s -o /dev/null "$ENDPOINT/" || die "versitygw does not answer at $ENDPOINT"

# --- the runs ----------------------------------------------------------------------------------
cat "$SCRATCH"/tree/* >/dev/null # the same warm page cache for every run
declare -A SECS RSS
for run in $(seq "$RUNS"); do
	for mode in manager tree; do
		sync
		out=$(/usr/bin/time -f "rss_kb=%M" -o "$SCRATCH/time" "$SCRATCH/s3put" -mode "$mode" -endpoint "$ENDPOINT" \
			-part-size "$PART_MIB" -concurrency "$CONCURRENCY" -workers "$WORKERS" \
			"$SCRATCH/tree" "s3://bench/$mode-$run" 2>&1) || die "s3put -mode $mode: $out"
		log "run $run: $out $(cat "$SCRATCH/time")"
		total=$(sed -n 's/.* bytes=\([0-9]*\).*/\1/p' <<<"$out")
		SECS[$mode]+="$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' <<<"$out") "
		RSS[$mode]+="$(sed -n 's/rss_kb=//p' "$SCRATCH/time") "
		rm -rf "$SCRATCH/s3/bench/$mode-$run"
	done
done

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
max() { tr ' ' '\n' | grep . | sort -g | tail -1; }
echo "local-to-S3 upload: $N files of $SIZE + config.json ($total bytes), versitygw v1.8.0 on loopback;"
echo "median of $RUNS runs; part size ${PART_MIB} MiB, $CONCURRENCY parts in flight per file, tree: $WORKERS files at a time"
printf '%-8s %10s %10s %12s %8s\n' mode seconds MiB/s peak_RSS_MiB ratio
m=$(median <<<"${SECS[manager]}")
for mode in manager tree; do
	s=$(median <<<"${SECS[$mode]}")
	printf '%-8s %10s %10.1f %12d %8.2f\n' "$mode" "$s" "$(awk -v b="$total" -v s="$s" 'BEGIN { print b / 1048576 / s }')" \
		"$(( $(max <<<"${RSS[$mode]}") / 1024 ))" "$(awk -v a="$s" -v b="$m" 'BEGIN { print a / b }')"
done
