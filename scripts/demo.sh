#!/usr/bin/env bash
# Walks a few deliveries through their lifecycle on a running stack (scripts/stack.sh) and
# shows them in the query API. Each read passes the version the command API returned
# (?min_version=), so it waits for the projection instead of showing stale data.
set -euo pipefail
COMMANDS="${COMMANDS:-http://127.0.0.1:8080}"
QUERIES="${QUERIES:-http://127.0.0.1:8081}"
DISPATCHER="${DISPATCHER_TOKEN:-dev-dispatcher-token}"
READER="${READER_TOKEN:-dev-reader-token}"

command() { # PATH TOKEN [BODY] -> prints the new version
    local path=$1 token=$2 body=${3:-}
    local args=(-sS -X POST "$COMMANDS$path" -H "Authorization: Bearer $token")
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
    local response
    response=$(curl "${args[@]}")
    echo "  POST $path -> $response" >&2
    python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])' <<<"$response"
}
show() { # PATH
    echo "GET $1"
    curl -sS "$QUERIES$1" -H "Authorization: Bearer $READER" | python3 -m json.tool
}
create() { # ID ORDER
    command /deliveries "$DISPATCHER" "{\"delivery_id\":\"$1\",\"order_ref\":\"$2\",\"customer_id\":\"customer-7\",
        \"pickup\":{\"line\":\"Store 12, Main St 1\",\"lat\":52.52,\"lon\":13.405},
        \"dropoff\":{\"line\":\"Elm St 9\",\"lat\":52.51,\"lon\":13.39}}"
}
new_id() { cat /proc/sys/kernel/random/uuid; }

delivered=$(new_id) cancelled=$(new_id) on_the_way=$(new_id)
echo "delivery $delivered: created -> assigned -> picked up -> completed" >&2
create "$delivered" "order-$RANDOM" >/dev/null
command "/deliveries/$delivered/assign" "$DISPATCHER" '{"rider_id":"rider-42"}' >/dev/null
command "/deliveries/$delivered/pickup" dev-rider-42-token >/dev/null
done_version=$(command "/deliveries/$delivered/complete" dev-rider-42-token)

echo "delivery $cancelled: created -> assigned -> cancelled" >&2
create "$cancelled" "order-$RANDOM" >/dev/null
command "/deliveries/$cancelled/assign" "$DISPATCHER" '{"rider_id":"rider-7"}' >/dev/null
cancel_version=$(command "/deliveries/$cancelled/cancel" "$DISPATCHER" '{"reason":"customer asked"}')

echo "delivery $on_the_way: created -> assigned -> picked up" >&2
create "$on_the_way" "order-$RANDOM" >/dev/null
command "/deliveries/$on_the_way/assign" "$DISPATCHER" '{"rider_id":"rider-42"}' >/dev/null
way_version=$(command "/deliveries/$on_the_way/pickup" dev-rider-42-token)

show "/deliveries/$delivered?min_version=$done_version"
show "/deliveries/$cancelled?min_version=$cancel_version"
show "/deliveries/$on_the_way/history?min_version=$way_version"
show "/riders/rider-42/deliveries"
show "/stats"
