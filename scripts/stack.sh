#!/usr/bin/env bash
# Starts the whole platform on this machine with one command and keeps it running until Ctrl-C:
#   - PostgreSQL (started if down), nisshi installed once per machine (cached outside the repo)
#     and started with durable storage in the `nisshi` database;
#   - the write and read databases, migrated, with the query API's read-only login;
#   - the topic `delivery.events` (KAFKA_PARTITIONS partitions, default 6);
#   - relay, projector, command API (:8080) and query API (:8081), logs in .stack/logs/.
# Then, in another shell: scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_nisshi

export WRITE_DATABASE_URL="${WRITE_DATABASE_URL:-$POSTGRES_URL/delivery_write}"
export READ_DATABASE_URL="${READ_DATABASE_URL:-$POSTGRES_URL/delivery_read}"
export QUERY_API_DB_USER="${QUERY_API_DB_USER:-query_api}"
export QUERY_API_DATABASE_URL="${QUERY_API_DATABASE_URL:-postgres://$QUERY_API_DB_USER@127.0.0.1:5432/delivery_read}"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}"
export KAFKA_TOPIC="${KAFKA_TOPIC:-delivery.events}"
export COMMAND_API_LISTEN="${COMMAND_API_LISTEN:-127.0.0.1:8080}"
export QUERY_API_LISTEN="${QUERY_API_LISTEN:-127.0.0.1:8081}"
export COMMAND_API_TOKENS="${COMMAND_API_TOKENS:-dev-dispatcher-token=dispatcher:desk-1,dev-admin-token=admin:root,dev-rider-42-token=rider:rider-42,dev-rider-7-token=rider:rider-7}"
export QUERY_API_TOKENS="${QUERY_API_TOKENS:-dev-reader-token}"
export RUST_LOG="${RUST_LOG:-info}"
partitions="${KAFKA_PARTITIONS:-6}"
logs=.stack/logs
mkdir -p "$logs"

pids=()
stop_all() {
    trap - EXIT INT TERM
    echo "stopping the stack" >&2
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_all EXIT INT TERM

echo "building release binaries" >&2
cargo build --release -q -p migrations -p command-api -p projector -p query-api

broker="${KAFKA_BROKERS%%,*}"
if ! (exec 3<>"/dev/tcp/${broker%:*}/${broker#*:}") 2>/dev/null; then
    psql -q -h 127.0.0.1 -U postgres -d postgres -tc "select 1 from pg_database where datname = 'nisshi'" \
        | grep -q 1 || psql -q -h 127.0.0.1 -U postgres -d postgres -c "create database nisshi"
    echo "starting nisshi on $broker (durable: database nisshi)" >&2
    "$NISSHI_BIN" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" \
        --storage-engine "$POSTGRES_URL/nisshi?sslmode=disable" --cluster-id dev \
        >"$logs/nisshi.log" 2>&1 &
    pids+=($!)
    wait_for_port "$broker" 30
fi
if "$NISSHI_BIN" topic create "$KAFKA_TOPIC" --partitions "$partitions" --broker "tcp://$broker" \
    >"$logs/topic.log" 2>&1; then
    echo "created topic $KAFKA_TOPIC ($partitions partitions)" >&2
elif grep -qi "exist" "$logs/topic.log"; then
    echo "topic $KAFKA_TOPIC already exists" >&2
else
    cat "$logs/topic.log" >&2
    exit 1
fi

target/release/migrate
start() {
    local name=$1
    shift
    "$@" >"$logs/$name.log" 2>&1 &
    pids+=($!)
}
start relay target/release/command-api relay
start projector target/release/projector run
start command-api target/release/command-api serve
start query-api target/release/query-api
wait_for_port "$COMMAND_API_LISTEN" 30
wait_for_port "$QUERY_API_LISTEN" 30

cat <<INFO
The delivery platform is running (logs in $logs/, Ctrl-C stops everything):
  command API  http://$COMMAND_API_LISTEN   tokens: $COMMAND_API_TOKENS
  query API    http://$QUERY_API_LISTEN   token: $QUERY_API_TOKENS
  Kafka        $broker   topic $KAFKA_TOPIC
  write DB     $WRITE_DATABASE_URL
  read DB      $READ_DATABASE_URL
Try: scripts/demo.sh
INFO
# Stop everything as soon as any part exits, so a failure is never silent.
wait -n "${pids[@]}" || true
echo "a part of the stack exited; see $logs/" >&2
exit 1
