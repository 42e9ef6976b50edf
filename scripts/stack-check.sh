#!/usr/bin/env bash
# Checks what scripts/stack.sh promises an operator, against the real stack (release build,
# durable broker), on ports and a directory of its own so it never meets a running dev stack:
#   1. it refuses to start, with a clear message, when free disk is below STACK_MIN_FREE_GB;
#   2. a log over its cap is rotated (cap_log);
#   3. after scripts/demo.sh the broker's log stays small (it logs at warn, not info);
#   4. a part killed with kill -9 is restarted by the stack, which says so, and works again.
# Prints `stack-check: N passed, M failed` and exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

passed=0
failed=0
check() { # NAME CONDITION-EXIT-STATUS
    if [ "$2" -eq 0 ]; then
        passed=$((passed + 1)); echo "ok: $1"
    else
        failed=$((failed + 1)); echo "FAILED: $1"
    fi
}

dir=$(mktemp -d /tmp/stack-check.XXXXXX)
export STACK_DIR="$dir/stack"
export KAFKA_BROKERS="127.0.0.1:${STACK_CHECK_BROKER_PORT:-19292}"
export COMMAND_API_LISTEN="127.0.0.1:${STACK_CHECK_COMMAND_PORT:-18180}"
export QUERY_API_LISTEN="127.0.0.1:${STACK_CHECK_QUERY_PORT:-18181}"
export RELAY_HTTP_LISTEN="127.0.0.1:${STACK_CHECK_RELAY_PORT:-18182}"
export PROJECTOR_HTTP_LISTEN="127.0.0.1:${STACK_CHECK_PROJECTOR_PORT:-18183}"
# Databases of its own, so the check never touches a developer's stack data.
export WRITE_DATABASE_URL="$POSTGRES_URL/stack_check_write"
export READ_DATABASE_URL="$POSTGRES_URL/stack_check_read"
export QUERY_API_DATABASE_URL="postgres://query_api@$POSTGRES_HOSTPORT/stack_check_read"
stack_pid=""
cleanup() {
    [ -n "$stack_pid" ] && kill "$stack_pid" 2>/dev/null && wait "$stack_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

# 1. Low disk: refused before anything starts.
out=$(STACK_MIN_FREE_GB=100000000 scripts/stack.sh 2>&1)
status=$?
[ $status -ne 0 ] && grep -q "refusing to start: only .* GB free" <<<"$out"
check "the stack refuses to start when free disk is low" $?

# 2. A log over its cap is rotated.
head -c 3000000 /dev/zero | tr '\0' 'x' >"$dir/big.log"
cap_log "$dir/big.log" 1000000
[ "$(stat -c %s "$dir/big.log")" -lt 1000 ] && [ "$(stat -c %s "$dir/big.log.1")" -eq 3000000 ]
check "a log over its cap is rotated" $?

# 3 and 4 run the real stack.
ensure_postgres
# The broker's storage gets a database of its own too, so a developer's broker is not shared.
export NISSHI_DATABASE=nisshi_stack_check
for db in stack_check_write stack_check_read "$NISSHI_DATABASE"; do
    PGOPTIONS="-c client_min_messages=warning" psql -q "$POSTGRES_URL/postgres" \
        -c "drop database if exists $db with (force)"
done
# Build first, so the wait for the stack below does not include a cold release build.
echo "building release binaries" >&2
cargo build --release -q -p migrations -p command-api -p projector -p query-api
scripts/stack.sh >"$dir/stack.out" 2>&1 &
stack_pid=$!
started=1
for _ in $(seq 1 600); do
    grep -q "The delivery platform is running" "$dir/stack.out" && break
    kill -0 "$stack_pid" 2>/dev/null || { started=0; break; }
    sleep 1
done
grep -q "The delivery platform is running" "$dir/stack.out" || started=0
check "the stack starts" $((1 - started))
if [ $started -eq 1 ]; then
    COMMANDS="http://$COMMAND_API_LISTEN" QUERIES="http://$QUERY_API_LISTEN" \
        scripts/demo.sh >"$dir/demo.out" 2>&1
    check "scripts/demo.sh runs against the stack" $?
    size=$(stat -c %s "$STACK_DIR/logs/nisshi.log")
    echo "  the broker's log after the demo: $size bytes"
    [ "$size" -lt 1000000 ]
    check "the broker's log stays small (it logs at warn)" $?

    old=$(cat "$STACK_DIR/pids/relay.pid")
    kill -9 "$old"
    restarted=1
    for _ in $(seq 1 100); do
        new=$(cat "$STACK_DIR/pids/relay.pid")
        [ "$new" != "$old" ] && kill -0 "$new" 2>/dev/null && break
        sleep 0.2
    done
    [ "$new" != "$old" ] && kill -0 "$new" 2>/dev/null || restarted=0
    grep -q "relay exited with status 137; restarting" "$STACK_DIR/stack.log" || restarted=0
    check "a killed part is restarted and the stack says so" $((1 - restarted))
    # The restarted relay publishes: a delivery created now becomes visible on the read side.
    id=$(cat /proc/sys/kernel/random/uuid)
    curl -sSf -o /dev/null -X POST "http://$COMMAND_API_LISTEN/deliveries" \
        -H "Authorization: Bearer dev-dispatcher-token" -H 'Content-Type: application/json' \
        -d "{\"delivery_id\":\"$id\",\"order_ref\":\"check-1\",\"customer_id\":\"customer-7\",
            \"pickup\":{\"line\":\"Main St 1\",\"lat\":52.52,\"lon\":13.405},
            \"dropoff\":{\"line\":\"Elm St 9\",\"lat\":52.51,\"lon\":13.39}}"
    visible=1
    for _ in $(seq 1 300); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://$QUERY_API_LISTEN/deliveries/$id" \
            -H "Authorization: Bearer dev-reader-token")
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    [ "$code" = 200 ] || visible=0
    check "a delivery created after the restart becomes visible" $((1 - visible))
else
    tail -20 "$dir/stack.out"
fi

echo "stack-check: $passed passed, $failed failed"
[ $failed -eq 0 ]
