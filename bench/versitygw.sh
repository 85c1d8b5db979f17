# bench/versitygw.sh, sourced by the benchmarks that need an S3 store (batch.sh, nodes.sh): the
# tests' S3 server, versitygw v1.8.0 with its POSIX backend, on a loopback port. The sourcing
# script defines die and log, and SCRATCH, a directory removed at its end.

VERSITYGW=github.com/versity/versitygw/cmd/versitygw@v1.8.0

# versitygw_start: builds versitygw into the cache directory the tests use (unless it is
# there), exports credentials of its own and keeps the user's ~/.aws out of the way, starts it
# serving the buckets under $SCRATCH/s3 (logging to $SCRATCH/versitygw.log) on $PORT (default:
# a random one), and waits until it answers. Sets ENDPOINT and VERSITYGW_PID.
versitygw_start() {
	local cache="${XDG_CACHE_HOME:-$HOME/.cache}/ptsafe-converter/versitygw-${VERSITYGW#*@}" build
	if [ ! -x "$cache/versitygw" ]; then
		log "building $VERSITYGW into $cache"
		mkdir -p "$cache" && build=$(mktemp -d "$cache/build-XXXXXX") || die "cannot create $cache"
		(cd "$build" && GOBIN="$build" GOFLAGS= GOWORK=off go install "$VERSITYGW") || die "cannot build versitygw"
		mv "$build/versitygw" "$cache/versitygw" && rm -rf "$build"
	fi
	export AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret1234 AWS_REGION=us-east-1
	export AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null
	PORT=${PORT:-$(( 20000 + RANDOM % 20000 ))}
	ENDPOINT=http://127.0.0.1:$PORT
	mkdir -p "$SCRATCH/s3/bench" "$SCRATCH/iam"
	"$cache/versitygw" --port "127.0.0.1:$PORT" --access "$AWS_ACCESS_KEY_ID" --secret "$AWS_SECRET_ACCESS_KEY" \
		--iam-dir "$SCRATCH/iam" posix "$SCRATCH/s3" >"$SCRATCH/versitygw.log" 2>&1 &
	VERSITYGW_PID=$!
	for _ in $(seq 300); do
		curl -s -o /dev/null "$ENDPOINT/" && return
		kill -0 "$VERSITYGW_PID" 2>/dev/null || die "versitygw exited: $(cat "$SCRATCH/versitygw.log")"
		sleep 0.1
	done
	die "versitygw does not answer at $ENDPOINT"
}
