#!/usr/bin/env bash
# Benchmarks `projector rebuild` (not a test: it prints figures).
#   scripts/bench-rebuild.sh [EVENTS] [PARTITIONS]
# A nisshi broker (in-memory storage) on 127.0.0.1:19093 with a fresh topic; `bench rebuild`
# produces EVENTS events (whole lifecycles), measures the raw rdkafka consume rate, brings the
# live projector to the end of the topic, then times the release `projector rebuild` of every
# projection and reports its events/s and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_nisshi
events="${1:-1000000}"
partitions="${2:-6}"
broker=127.0.0.1:19093
logs=.stack/bench
mkdir -p "$logs"

cargo build --release -q -p projector -p bench
"$NISSHI_BIN" broker --listener-url "tcp://$broker" --advertised-listener-url "tcp://$broker" \
    --storage-engine memory://nisshi/ --cluster-id bench-rebuild >"$logs/nisshi-rebuild.log" 2>&1 &
nisshi=$!
trap 'kill $nisshi 2>/dev/null || true; wait 2>/dev/null || true' EXIT
wait_for_port "$broker" 30
"$NISSHI_BIN" topic create bench.rebuild --partitions "$partitions" --broker "tcp://$broker" >/dev/null

echo "== projector rebuild of $events events ($partitions partitions)"
RUST_LOG=warn target/release/bench rebuild --brokers "$broker" --topic bench.rebuild \
    --events "$events" --read-database-url "$POSTGRES_URL/delivery_bench_rebuild"
