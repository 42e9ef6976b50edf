#!/usr/bin/env bash
# Benchmarks the command API against the raw Postgres figure for the same work.
#   scripts/bench.sh [CLIENTS] [SECONDS]
# 1. A fresh `delivery_bench` database, migrated; the release command API on 127.0.0.1:18080.
# 2. `bench`: CLIENTS concurrent HTTP clients walking deliveries through their lifecycle.
# 3. pgbench, same client count: one event insert plus one outbox insert per transaction.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
clients="${1:-16}"
seconds="${2:-20}"
db=delivery_bench
url="$POSTGRES_URL/$db"
tokens="dev-dispatcher-token=dispatcher:desk-1,dev-rider-42-token=rider:rider-42"

cargo build --release -q -p migrations -p command-api -p bench
psql -q "$POSTGRES_URL/postgres" -c "drop database if exists $db"
WRITE_DATABASE_URL="$url" READ_DATABASE_URL="$POSTGRES_URL/${db}_read" target/release/migrate >/dev/null

RUST_LOG=warn target/release/command-api --database-url "$url" serve --listen 127.0.0.1:18080 \
    --tokens "$tokens" --db-connections "$clients" &
api=$!
trap 'kill $api 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs http://127.0.0.1:18080/health >/dev/null && break; sleep 0.2; done

echo "== command API over HTTP"
target/release/bench commands --url http://127.0.0.1:18080 --clients "$clients" --seconds "$seconds"
kill $api; wait $api 2>/dev/null || true

echo "== raw Postgres (pgbench: event insert + outbox insert per transaction)"
pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" -f bench/sql/event-outbox-insert.sql "$url" \
    | grep -E "tps|latency average"
