#!/usr/bin/env bash
# Starts the whole platform on this machine with one command and keeps it running until Ctrl-C:
#   - PostgreSQL (the machine's own cluster is started if down), nisshi installed once per
#     machine (cached outside the repo) and started with durable storage in the `nisshi` database;
#   - the write and read databases, migrated, with the query API's read-only login;
#   - the topic `delivery.events` (KAFKA_PARTITIONS partitions, default 6);
#   - relay (/metrics on :8082), projector (/metrics on :8083), command API (:8080) and query
#     API (:8081), each serving GET /metrics.
# Then, in another shell: scripts/demo.sh
#
# Every part runs under a supervisor: a part that exits is restarted (after a backoff that
# grows while it keeps failing) and the stack says so on stderr and in $STACK_DIR/stack.log.
# While $STACK_DIR/hold/PART exists, PART is not restarted (for maintenance and fault tests).
# Each part's pid is in $STACK_DIR/pids/PART.pid; its output in $STACK_DIR/logs/PART.log,
# kept under STACK_LOG_MAX_MB (the previous part in PART.log.1). The broker logs at warn
# (NISSHI_LOG): at info it logs every span of every request, gigabytes in minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

stack_dir="${STACK_DIR:-.stack}"
logs="$stack_dir/logs"
mkdir -p "$logs" "$stack_dir/pids" "$stack_dir/hold"
min_free_gb="${STACK_MIN_FREE_GB:-5}"
log_max_bytes=$(( ${STACK_LOG_MAX_MB:-50} * 1024 * 1024 ))
require_free_disk "$stack_dir" "$min_free_gb"
ensure_postgres
ensure_nisshi

export WRITE_DATABASE_URL="${WRITE_DATABASE_URL:-$POSTGRES_URL/delivery_write}"
export READ_DATABASE_URL="${READ_DATABASE_URL:-$POSTGRES_URL/delivery_read}"
export QUERY_API_DB_USER="${QUERY_API_DB_USER:-query_api}"
export QUERY_API_DATABASE_URL="${QUERY_API_DATABASE_URL:-postgres://$QUERY_API_DB_USER@$POSTGRES_HOSTPORT/delivery_read}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export KAFKA_TOPIC="${KAFKA_TOPIC:-delivery.events}"
export COMMAND_API_LISTEN="${COMMAND_API_LISTEN:-127.0.0.1:8080}"
export QUERY_API_LISTEN="${QUERY_API_LISTEN:-127.0.0.1:8081}"
# The relay's and the projector's /metrics and /health.
export RELAY_HTTP_LISTEN="${RELAY_HTTP_LISTEN:-127.0.0.1:8082}"
export PROJECTOR_HTTP_LISTEN="${PROJECTOR_HTTP_LISTEN:-127.0.0.1:8083}"
export COMMAND_API_TOKENS="${COMMAND_API_TOKENS:-dev-dispatcher-token=dispatcher:desk-1,dev-admin-token=admin:root,dev-rider-42-token=rider:rider-42,dev-rider-7-token=rider:rider-7}"
export QUERY_API_TOKENS="${QUERY_API_TOKENS:-dev-reader-token}"
export RUST_LOG="${RUST_LOG:-info}"
nisshi_log="${NISSHI_LOG:-warn}"
nisshi_database="${NISSHI_DATABASE:-nisshi}"
# durable (the default, what users run) or memory: only for benchmarks that print the
# in-memory figure beside the durable one (scripts/bench-all.sh).
broker_storage="${STACK_BROKER_STORAGE:-durable}"
partitions="${KAFKA_PARTITIONS:-6}"
# The projector's 100 ms fetch wait is for the durable broker, which reads records for only
# part of a fetch's wait (a shorter wait halved its catch-up). The in-memory one reads them at
# once, and there a shorter wait halves accepted -> visible (docs/benchmarks.md).
if [ "$broker_storage" = memory ] && [ -z "${KAFKA_CONSUMER_SETTINGS+set}" ]; then
    export KAFKA_CONSUMER_SETTINGS=fetch.wait.max.ms=20
fi

# The Postgres data directory's file system matters as much as ours (a full one crashes it);
# it is only checkable when that cluster runs on this machine and we may read its settings.
data_dir=$(psql -qAt "$POSTGRES_URL/postgres" -c "show data_directory" 2>/dev/null || true)
if [ -n "$data_dir" ] && [ -d "$data_dir" ]; then
    require_free_disk "$data_dir" "$min_free_gb"
fi

say() { echo "$(date -u +%FT%TZ) $*" | tee -a "$stack_dir/stack.log" >&2; }

supervisors=()
stop_all() { # EXIT-STATUS
    local status=$1
    trap - EXIT INT TERM
    say "stopping the stack"
    # Supervisors first, so nothing is restarted; each stops its own part.
    for pid in "${supervisors[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    exit "$status"
}
# On Ctrl-C or TERM stop and exit at once (not only after the command running then); on any
# other exit, stop everything and keep the script's status.
trap 'stop_all 0' INT TERM
trap 'stop_all $?' EXIT

# Runs `NAME COMMAND...` in the background and keeps it running: restarts it whenever it exits,
# waiting 1 s, doubling up to 10 s while it keeps dying within a minute of its start.
supervise() {
    local name=$1
    shift
    (
        child=""
        trap '[ -n "$child" ] && kill "$child" 2>/dev/null; wait; exit 0' TERM INT
        backoff=1
        while true; do
            while [ -e "$stack_dir/hold/$name" ]; do sleep 0.5; done
            started=$SECONDS
            "$@" >>"$logs/$name.log" 2>&1 &
            child=$!
            echo "$child" >"$stack_dir/pids/$name.pid"
            status=0
            wait "$child" || status=$?
            child=""
            if [ $((SECONDS - started)) -ge 60 ]; then backoff=1; fi
            say "$name exited with status $status; restarting it in ${backoff}s (log: $logs/$name.log)"
            sleep "$backoff" &
            wait $! || true
            backoff=$((backoff * 2 > 10 ? 10 : backoff * 2))
        done
    ) &
    supervisors+=($!)
}

echo "building release binaries" >&2
cargo build --release -q -p migrations -p command-api -p projector -p query-api
bin="${CARGO_TARGET_DIR:-target}/release"

broker="${KAFKA_BROKERS%%,*}"
if ! (exec 3<>"/dev/tcp/${broker%:*}/${broker#*:}") 2>/dev/null; then
    case "$broker_storage" in
        durable)
            psql -qAt "$POSTGRES_URL/postgres" -c "select 1 from pg_database where datname = '$nisshi_database'" \
                | grep -q 1 || psql -q "$POSTGRES_URL/postgres" -c "create database $nisshi_database"
            storage="$POSTGRES_URL/$nisshi_database?sslmode=disable"
            say "starting nisshi on $broker (durable: database $nisshi_database, log level $nisshi_log)" ;;
        memory)
            storage=memory://nisshi/
            say "starting nisshi on $broker (IN MEMORY: nothing survives it; log level $nisshi_log)" ;;
        *) echo "STACK_BROKER_STORAGE must be durable or memory, not $broker_storage" >&2; exit 2 ;;
    esac
    supervise nisshi env RUST_LOG="$nisshi_log" "$NISSHI_BIN" broker \
        --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" \
        --storage-engine "$storage" --cluster-id dev
    wait_for_port "$broker" 30
fi
if "$NISSHI_BIN" topic create "$KAFKA_TOPIC" --partitions "$partitions" --broker "tcp://$broker" \
    >"$logs/topic.log" 2>&1; then
    say "created topic $KAFKA_TOPIC ($partitions partitions)"
elif grep -qi "exist" "$logs/topic.log"; then
    echo "topic $KAFKA_TOPIC already exists" >&2
else
    cat "$logs/topic.log" >&2
    exit 1
fi

"$bin"/migrate
supervise relay "$bin"/command-api relay
supervise projector "$bin"/projector run
supervise command-api "$bin"/command-api serve
supervise query-api "$bin"/query-api
wait_for_port "$COMMAND_API_LISTEN" 30
wait_for_port "$QUERY_API_LISTEN" 30

cat <<INFO
The delivery platform is running (logs in $logs/, Ctrl-C stops everything):
  command API  http://$COMMAND_API_LISTEN   tokens: $COMMAND_API_TOKENS
  query API    http://$QUERY_API_LISTEN   token: $QUERY_API_TOKENS
  metrics      http://$COMMAND_API_LISTEN/metrics http://$QUERY_API_LISTEN/metrics
               http://$RELAY_HTTP_LISTEN/metrics http://$PROJECTOR_HTTP_LISTEN/metrics
  Kafka        $broker   topic $KAFKA_TOPIC
  write DB     $WRITE_DATABASE_URL
  read DB      $READ_DATABASE_URL
Try: scripts/demo.sh
INFO
# Keep the logs bounded and warn before the disk fills, for as long as the stack runs.
while true; do
    for log in "$logs"/*.log "$stack_dir/stack.log"; do cap_log "$log" "$log_max_bytes"; done
    if ! require_free_disk "$stack_dir" 1 2>/dev/null; then
        say "WARNING: less than 1 GB free on the file system of $stack_dir"
    fi
    sleep 5 &
    wait $! || true
done
