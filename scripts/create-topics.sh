#!/usr/bin/env bash
# Creates the event topic on a running local nisshi broker. The relay creates nothing by
# guessing; on a real Kafka cluster create it with your own tooling (see README, "Topics").
#   scripts/create-topics.sh [BROKER] [PARTITIONS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_nisshi
broker="${1:-127.0.0.1:9092}"
partitions="${2:-6}"
"$NISSHI_BIN" topic create "${KAFKA_TOPIC:-delivery.events}" --partitions "$partitions" \
    --broker "tcp://$broker"
