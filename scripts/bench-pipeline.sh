#!/usr/bin/env bash
# Benchmarks the read path of the whole pipeline (not a test: it prints figures).
#   scripts/bench-pipeline.sh [RATE] [SECONDS] [BACKLOG_EVENTS]
# 1. A nisshi broker (in-memory storage) on 127.0.0.1:19092, fresh bench databases, and the
#    release relay, projector, command API (:18080) and query API (:18081).
# 2. `bench pipeline`: RATE commands/s for SECONDS, each timed from accepted by the command API
#    to visible in the query API (the query API waits for ?min_version=).
# 3. `bench catch-up`: BACKLOG_EVENTS events produced to a fresh topic, the raw consume rate of
#    the same broker, then the projector's apply rate on a fresh read database.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_nisshi
rate="${1:-500}"
seconds="${2:-20}"
backlog="${3:-200000}"
broker=127.0.0.1:19092
write="$POSTGRES_URL/delivery_bench_write"
read="$POSTGRES_URL/delivery_bench_read"
logs=.stack/bench
mkdir -p "$logs"

cargo build --release -q -p migrations -p command-api -p projector -p query-api -p bench
pids=()
trap 'for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT

"$NISSHI_BIN" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" \
    --storage-engine memory://nisshi/ --cluster-id bench >"$logs/nisshi.log" 2>&1 &
pids+=($!)
wait_for_port "$broker" 30
for topic in delivery.events bench.catchup; do
    "$NISSHI_BIN" topic create "$topic" --partitions 6 --broker "tcp://$broker" >/dev/null
done

for db in delivery_bench_write delivery_bench_read delivery_bench_catchup; do
    psql -q "$POSTGRES_URL/postgres" -c "drop database if exists $db with (force)"
done
psql -q "$POSTGRES_URL/postgres" \
    -c "do \$\$ begin create role query_api login in role delivery_reader; exception when others then null; end \$\$"
WRITE_DATABASE_URL="$write" READ_DATABASE_URL="$read" target/release/migrate >/dev/null

export RUST_LOG=warn KAFKA_BROKERS=$broker KAFKA_TOPIC=delivery.events
export COMMAND_API_TOKENS="dev-dispatcher-token=dispatcher:desk-1,dev-rider-42-token=rider:rider-42"
target/release/command-api --database-url "$write" relay --http-listen 127.0.0.1:0 \
    >"$logs/relay.log" 2>&1 &
pids+=($!)
target/release/projector --database-url "$read" run --http-listen 127.0.0.1:0 \
    >"$logs/projector.log" 2>&1 &
pids+=($!)
target/release/command-api --database-url "$write" serve --listen 127.0.0.1:18080 \
    --db-connections 16 >"$logs/command-api.log" 2>&1 &
pids+=($!)
QUERY_API_DATABASE_URL="postgres://query_api@127.0.0.1:5432/delivery_bench_read" \
QUERY_API_LISTEN=127.0.0.1:18081 QUERY_API_TOKENS=dev-reader-token \
    target/release/query-api >"$logs/query-api.log" 2>&1 &
pids+=($!)
wait_for_port 127.0.0.1:18080 30
wait_for_port 127.0.0.1:18081 30

echo "== command accepted -> visible in the query API ($rate commands/s for ${seconds}s)"
target/release/bench pipeline --command-url http://127.0.0.1:18080 \
    --query-url http://127.0.0.1:18081 --rate "$rate" --seconds "$seconds"

# The catch-up runs alone: stop the services of the latency run first.
for pid in "${pids[@]:1}"; do kill "$pid" 2>/dev/null || true; done
echo "== projector catch-up on a backlog of $backlog events"
target/release/bench catch-up --brokers "$broker" --topic bench.catchup --events "$backlog" \
    --read-database-url "$POSTGRES_URL/delivery_bench_catchup"
