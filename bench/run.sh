#!/usr/bin/env bash
# bench/run.sh: the converter's performance benchmark (issue 5), in one command.
#
#   bench/run.sh [SIZE...]     checkpoint sizes, e.g. 1G 4G 512M (default: 1G 4G)
#   QUICK=1 bench/run.sh       smoke test: sizes 16M 64M, one run, a small service case
#
# It builds ./cmd/converter and bench/gen, writes synthetic torch checkpoints (fp16, 128 tensors,
# internal/synth) into a scratch directory under $TMPDIR (free space is checked first; the
# directory is removed at the end), and prints one table: per size and format, the median wall
# time over RUNS runs and the peak RSS (/usr/bin/time -v) of
#   floor      cp SRC DST && openssl dgst -sha256 SRC DST
#   convert    converter convert --manifest M SRC OUT
#   scan       converter scan SRC
#   baseline   bench/baseline.py SRC OUT: torch.load + safetensors as the Hugging Face convert
#              script does, with its reload-and-compare step ("w/o check" subtracts that step)
# with the ratio to the floor and to the baseline measured in the same run; then the 100,000
# small tensors case, the zip-stored vs legacy vs deflated comparison, and the service case
# (SERVICE_N concurrent uploads of a SERVICE_SIZE checkpoint to `converter serve`, polled until
# done: throughput and the server's peak RSS, VmHWM). A command that fails is reported as
# "n/a" with its error, never stops the benchmark.
#
# Environment (defaults in brackets):
#   RUNS [5; QUICK: 1]   FORMATS [zip legacy zip-deflated]   MANY [1]: the 100,000-tensor case
#   BASELINE [1]         PYTHON [/usr/bin/python3]: needs torch (Debian: python3-torch)
#   SERVICE [1]  SERVICE_N [4; QUICK: 2]  SERVICE_SIZE [256M; QUICK: 32M]  SERVICE_TIMEOUT [600]
#   BENCH_TOKEN: sent as "Authorization: Bearer" to the service   KEEP [0]: keep the scratch dir
# Needs: go, openssl, curl, GNU time (/usr/bin/time; Debian package "time").
set -uo pipefail

cd "$(dirname "$0")/.."
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
	DEFAULT_SIZES="16M 64M"; RUNS=${RUNS:-1}; SERVICE_N=${SERVICE_N:-2}; SERVICE_SIZE=${SERVICE_SIZE:-32M}
else
	DEFAULT_SIZES="1G 4G"; RUNS=${RUNS:-5}; SERVICE_N=${SERVICE_N:-4}; SERVICE_SIZE=${SERVICE_SIZE:-256M}
fi
SIZES=${*:-$DEFAULT_SIZES}
FORMATS=${FORMATS:-zip legacy zip-deflated}
MANY=${MANY:-1}
BASELINE=${BASELINE:-1}
PYTHON=${PYTHON:-/usr/bin/python3}
SERVICE=${SERVICE:-1}
SERVICE_TIMEOUT=${SERVICE_TIMEOUT:-600}
KEEP=${KEEP:-0}

# shellcheck source=bench/common.sh
. bench/common.sh
need go openssl curl /usr/bin/time

# bytes SIZE: 16M, 1G, 1.5G, 4096 -> bytes (binary multiples).
bytes() {
	awk -v s="$1" 'BEGIN { m = 1; u = toupper(substr(s, length(s)));
		if (u == "K") m = 2^10; else if (u == "M") m = 2^20; else if (u == "G") m = 2^30; else if (u == "T") m = 2^40;
		if (m > 1) s = substr(s, 1, length(s) - 1); printf "%.0f\n", s * m }'
}

# --- scratch directory, with a free-space check ------------------------------------------------
max=0
for s in $SIZES; do b=$(bytes "$s"); [ "$b" -gt "$max" ] && max=$b; done
svc=$(bytes "$SERVICE_SIZE")
# source + floor copy + converter output + baseline output, or the service's files, + 1 GiB slack
need=$(( max * 4 ))
[ "$SERVICE" = 1 ] && [ $(( svc * (2 * SERVICE_N + 1) )) -gt "$need" ] && need=$(( svc * (2 * SERVICE_N + 1) ))
need=$(( need + (1 << 30) ))
parent=${TMPDIR:-/tmp}
avail=$(( $(df -Pk "$parent" | awk 'NR == 2 { print $4 }') * 1024 ))
[ "$avail" -ge "$need" ] || die "$parent has $((avail >> 20)) MiB free, the benchmark needs $((need >> 20)) MiB (set TMPDIR or smaller sizes)"
W=$(mktemp -d "$parent/converter-bench.XXXXXX") || die "cannot create a scratch directory in $parent"
SERVER_PID=
cleanup() {
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
	if [ "$KEEP" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ---------------------------------------------------------------------------------------
mkdir -p "$W/bin"
go build -o "$W/bin/gen" ./bench/gen || die "cannot build bench/gen"
CONV="$W/bin/converter"
if ! go build -o "$CONV" ./cmd/converter 2>"$W/build.txt"; then
	log "cannot build ./cmd/converter: $(head -3 "$W/build.txt")"
	CONV=
fi
HAVE_TORCH=0
if [ "$BASELINE" = 1 ] && "$PYTHON" -c 'import torch' 2>/dev/null; then
	HAVE_TORCH=1
	TORCH_VERSION=$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)
fi

# --- measurement ---------------------------------------------------------------------------------
# measure CMD...: runs CMD RUNS times after removing the files in CLEAN, syncing and reading the
# files in WARM. Sets M_OK (1 or 0),
# M_TIME (median wall seconds), M_TIMES (all), M_RSS (largest peak RSS in MiB), M_ERR, M_OUT
# (stdout of the last run), M_RUNS (one "WALL_MS STDOUT" line per run).
CLEAN=()
WARM=()
measure() {
	local i t0 t1 times=() rss=0 r
	M_OK=0 M_TIME= M_RSS= M_ERR= M_OUT= M_RUNS=
	for ((i = 0; i < RUNS; i++)); do
		rm -f "${CLEAN[@]}"
		# Flush what the previous command left dirty (cp does not fsync), so that its writeback
		# is not charged to the command measured next; then read the input once, so that every
		# command starts on a warm page cache (this VM's kernel evicts cold file pages even with
		# free memory, and a partly evicted input costs a measured run seconds of disk reads).
		sync
		[ ${#WARM[@]} -eq 0 ] || cat "${WARM[@]}" >/dev/null
		t0=$(date +%s%N)
		if ! /usr/bin/time -v -o "$W/time.txt" "$@" >"$W/out.txt" 2>"$W/err.txt"; then
			M_ERR=$(grep -v '^\s*$' "$W/err.txt" | head -1 | cut -c1-100)
			[ -n "$M_ERR" ] || M_ERR="exit status $(awk '/exit status/ {print $NF}' "$W/time.txt")"
			rm -f "${CLEAN[@]}"
			return 1
		fi
		t1=$(date +%s%N)
		times+=("$(( (t1 - t0) / 1000000 ))")
		M_RUNS+="$(( (t1 - t0) / 1000000 )) $(tr '\n' ' ' <"$W/out.txt")"$'\n'
		r=$(awk -F: '/Maximum resident set size/ { gsub(/ /, "", $2); print $2 }' "$W/time.txt")
		[ "$r" -gt "$rss" ] && rss=$r
	done
	rm -f "${CLEAN[@]}"
	M_OUT=$(cat "$W/out.txt")
	M_TIMES=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ printf "%s%.2f", (NR > 1 ? " " : ""), $1 / 1000 }')
	M_TIME=$(printf '%s\n' "${times[@]}" | sort -n | awk '{ a[NR] = $1 } END { m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f", m / 1000 }')
	M_RSS=$(( rss / 1024 ))
	M_OK=1
}

ratio() { # ratio A B -> A/B with two decimals, or "-"
	if [ -n "${1:-}" ] && [ -n "${2:-}" ]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; else echo "-"; fi
}

ROWFMT="%-6s %-13s %-20s %9s %9s %8s %9s  %s\n"
row() { printf "$ROWFMT" "$@"; }
NOTES=()

# bench_one LABEL FORMAT FILE: the floor, convert, scan and baseline rows for one checkpoint.
# Sets FLOOR_T, CONVERT_T, BASE_T for the caller.
bench_one() {
	local label=$1 fmt=$2 src=$3 out="$W/out.safetensors" man="$W/manifest.json"
	FLOOR_T= CONVERT_T= BASE_T=${ZIP_BASE[$label]:-}
	WARM=("$src")
	CLEAN=("$W/copy.pt")
	if measure sh -c 'cp "$1" "$2" && openssl dgst -sha256 "$1" "$2"' sh "$src" "$W/copy.pt"; then
		FLOOR_T=$M_TIME
		row "$label" "$fmt" "floor (cp+sha256 x2)" "$M_TIME" "$M_RSS" "1.00x" "" "runs: $M_TIMES"
	else
		row "$label" "$fmt" "floor" "n/a" "" "" "" "$M_ERR"
	fi
	if [ "$HAVE_TORCH" = 1 ] && [ "${WANT_BASELINE:-1}" = 1 ]; then
		CLEAN=("$out")
		if measure "$PYTHON" bench/baseline.py "$src" "$out"; then
			BASE_T=$M_TIME
			ZIP_BASE[$label]=$M_TIME
			local check writer
			check=$(sed -n 's/.*"check": \([0-9.]*\).*/\1/p' <<<"$M_OUT")
			writer=$(sed -n 's/.*"writer": "\([a-z-]*\)".*/\1/p' <<<"$M_OUT")
			row "$label" "$fmt" "baseline (HF+check)" "$M_TIME" "$M_RSS" "$(ratio "$M_TIME" "$FLOOR_T")" "1.00x" "runs: $M_TIMES; writer: $writer; phases: $M_OUT"
			if [ -n "$check" ]; then
				# Each run's wall time minus its own check phase; the median of those.
				local nocheck
				nocheck=$(sed -n 's/^\([0-9]*\) .*"check": \([0-9.]*\).*/\1 \2/p' <<<"$M_RUNS" |
					awk '{ print $1 / 1000 - $2 }' | sort -n |
					awk '{ a[NR] = $1 } END { m = NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.3f", m }')
				row "$label" "$fmt" "baseline w/o check" "$nocheck" "" "$(ratio "$nocheck" "$FLOOR_T")" "$(ratio "$nocheck" "$BASE_T")" "median over runs of the run's time minus its check phase"
			fi
		else
			row "$label" "$fmt" "baseline (HF+check)" "n/a" "" "" "" "$M_ERR"
		fi
	fi
	if [ -z "$CONV" ]; then
		row "$label" "$fmt" "convert" "n/a" "" "" "" "converter did not build"
		row "$label" "$fmt" "scan" "n/a" "" "" "" "converter did not build"
		return
	fi
	CLEAN=("$out" "$man")
	if measure "$CONV" convert --manifest "$man" "$src" "$out"; then
		CONVERT_T=$M_TIME
		row "$label" "$fmt" "convert --manifest" "$M_TIME" "$M_RSS" "$(ratio "$M_TIME" "$FLOOR_T")" "$(ratio "$M_TIME" "$BASE_T")" "runs: $M_TIMES"
	else
		row "$label" "$fmt" "convert --manifest" "n/a" "" "" "" "$M_ERR"
	fi
	CLEAN=()
	if measure "$CONV" scan "$src"; then
		row "$label" "$fmt" "scan" "$M_TIME" "$M_RSS" "$(ratio "$M_TIME" "$FLOOR_T")" "$(ratio "$M_TIME" "$BASE_T")" "runs: $M_TIMES"
	else
		row "$label" "$fmt" "scan" "n/a" "" "" "" "$M_ERR"
	fi
	WARM=()
}

gen() { # gen FILE ARGS...: generate a checkpoint, or report why not
	local f=$1; shift
	if ! "$W/bin/gen" -o "$f" "$@" 2>"$W/gen.txt"; then
		log "generator failed: $(cat "$W/gen.txt")"
		return 1
	fi
	log "$(cat "$W/gen.txt")"
}

# --- header --------------------------------------------------------------------------------------
echo "# converter benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "# machine: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo) RAM; $(go version | cut -d' ' -f3-4); kernel $(uname -r)"
echo "# runs per case: $RUNS (median); page cache warm (the input is read before every run)"
echo "# checkpoints: synthetic fp16, 128 tensors, 2-D shapes (bench/gen); sizes are tensor bytes"
if [ "$HAVE_TORCH" = 1 ]; then
	echo "# baseline: $PYTHON, torch $TORCH_VERSION"
else
	echo "# baseline: skipped ($([ "$BASELINE" = 1 ] && echo "no torch in $PYTHON (Debian: apt-get install python3-torch)" || echo "BASELINE=0"))"
fi
[ -n "$CONV" ] || echo "# converter: did not build; its rows are n/a"
echo
row "size" "format" "case" "median_s" "peak_MiB" "x_floor" "x_baseline" "notes"

declare -A CONV_BY ZIP_BASE
for s in $SIZES; do
	for fmt in $FORMATS; do
		src="$W/model-$s-$fmt.pt"
		gen "$src" -size "$s" -format "$fmt" -tensors 128 -dtype F16 || { row "$s" "$fmt" "generate" "n/a" "" "" "" "see stderr"; continue; }
		# The baseline runs on the zip-stored file, the format torch.save writes today; the other
		# formats' x_baseline compares with it.
		WANT_BASELINE=$([ "$fmt" = zip ] && echo 1 || echo 0)
		bench_one "$s" "$fmt" "$src"
		CONV_BY[$s/$fmt]=$CONVERT_T
		rm -f "$src"
	done
done

[ "$HAVE_TORCH" = 1 ] && NOTES+=("x_baseline of legacy and zip-deflated rows: relative to the baseline on the zip-stored file of the same size")
if [ "$MANY" = 1 ]; then
	src="$W/many-small.pt"
	if gen "$src" -many-small; then
		WANT_BASELINE=$([ "$QUICK" = 1 ] && echo 0 || echo 1)
		bench_one "100k" "zip" "$src"
		rm -f "$src"
	fi
	[ "$QUICK" = 1 ] && NOTES+=("100k: the baseline is skipped in QUICK mode (about 30 s)")
	NOTES+=("100k: 100,000 float32 tensors of 1 KiB, mixed 1-D to 4-D shapes (synth.ManySmall)")
fi

# --- format comparison ---------------------------------------------------------------------------
echo
echo "# convert time relative to the zip-stored checkpoint of the same size (target: at most 1.50x)"
for s in $SIZES; do
	for fmt in $FORMATS; do
		[ "$fmt" = zip ] && continue
		printf "%-6s %-13s %s\n" "$s" "$fmt" "$(ratio "${CONV_BY[$s/$fmt]:-}" "${CONV_BY[$s/zip]:-}")"
	done
done

# --- service -------------------------------------------------------------------------------------
service() {
	echo
	echo "# service: $SERVICE_N concurrent uploads of a $SERVICE_SIZE checkpoint to converter serve"
	[ -n "$CONV" ] || { echo "service: n/a (converter did not build)"; return; }
	local port p
	for p in $(seq 18400 18499); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
	done
	[ -n "${port:-}" ] || { echo "service: n/a (no free port in 18400-18499)"; return; }
	local base="http://127.0.0.1:$port" auth=()
	[ -n "${BENCH_TOKEN:-}" ] && auth=(-H "Authorization: Bearer $BENCH_TOKEN")
	mkdir -p "$W/svc"
	"$CONV" serve --addr "127.0.0.1:$port" --data "$W/svc" >"$W/serve.log" 2>&1 &
	SERVER_PID=$!
	local i up=0
	for i in $(seq 1 100); do
		kill -0 "$SERVER_PID" 2>/dev/null || break
		if [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/healthz")" != 000 ]; then up=1; break; fi
		sleep 0.1
	done
	if [ "$up" = 0 ]; then
		echo "service: n/a (converter serve did not start: $(head -1 "$W/serve.log"))"
		kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
		return
	fi
	local src="$W/svc-model.pt"
	gen "$src" -size "$SERVICE_SIZE" -format zip || { echo "service: n/a (generator failed)"; return; }
	local size t0 t1 t2 pids=() ids=() code loc
	size=$(stat -c %s "$src")
	t0=$(date +%s%N)
	for i in $(seq 1 "$SERVICE_N"); do
		curl -sS -o "$W/svc-body-$i" -D "$W/svc-hdr-$i" -w '%{http_code}' -X POST "${auth[@]}" \
			-H 'Content-Type: application/octet-stream' -T "$src" \
			"$base/v1/jobs?filename=model-$i.pt" >"$W/svc-code-$i" 2>"$W/svc-err-$i" &
		pids+=($!)
	done
	wait "${pids[@]}"
	t1=$(date +%s%N)
	for i in $(seq 1 "$SERVICE_N"); do
		code=$(cat "$W/svc-code-$i")
		loc=$(tr -d '\r' <"$W/svc-hdr-$i" | awk 'tolower($1) == "location:" { print $2 }' | tail -1)
		if [ "${code:0:1}" != 2 ] || [ -z "$loc" ]; then
			echo "service: n/a (upload $i: HTTP $code, $(head -c 200 "$W/svc-body-$i" "$W/svc-err-$i" 2>/dev/null | tr '\n' ' '))"
			kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
			return
		fi
		case $loc in http*) ;; *) loc="$base$loc" ;; esac
		ids+=("$loc")
	done
	local deadline=$(( $(date +%s) + SERVICE_TIMEOUT )) pending states
	while :; do
		pending=0 states=()
		for loc in "${ids[@]}"; do
			local st
			st=$(curl -s "${auth[@]}" "$loc" | sed -n 's/.*"state"[[:space:]]*:[[:space:]]*"\([a-z]*\)".*/\1/p')
			states+=("${st:-unknown}")
			case $st in succeeded | failed | canceled) ;; *) pending=1 ;; esac
		done
		[ "$pending" = 0 ] && break
		[ "$(date +%s)" -ge "$deadline" ] && break
		sleep 0.05
	done
	t2=$(date +%s%N)
	local hwm
	hwm=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$SERVER_PID/status" 2>/dev/null)
	kill "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; SERVER_PID=
	local total=$(( size * SERVICE_N ))
	echo "uploads: $SERVICE_N x $size bytes in $(awk -v d=$((t1 - t0)) 'BEGIN { printf "%.2f", d / 1e9 }') s ($(awk -v b=$total -v d=$((t1 - t0)) 'BEGIN { printf "%.0f", b / (d / 1e9) / 1e6 }') MB/s)"
	echo "all jobs done: $(awk -v d=$((t2 - t0)) 'BEGIN { printf "%.2f", d / 1e9 }') s after the first byte; end-to-end throughput $(awk -v b=$total -v d=$((t2 - t0)) 'BEGIN { printf "%.0f", b / (d / 1e9) / 1e6 }') MB/s"
	echo "job states: $(printf '%s\n' "${states[@]}" | sort | uniq -c | awk '{ printf "%s%s %s", (NR > 1 ? ", " : ""), $1, $2 }')$([ "$pending" = 1 ] && echo " (timed out after ${SERVICE_TIMEOUT}s)")"
	echo "server peak RSS (VmHWM): ${hwm:-?} MiB"
}
[ "$SERVICE" = 1 ] && service

if [ ${#NOTES[@]} -gt 0 ]; then
	echo
	printf '# note: %s\n' "${NOTES[@]}"
fi
