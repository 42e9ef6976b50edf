#!/usr/bin/env bash
# Fuzzes both APIs with schemathesis, from the specs they serve (GET /openapi.json): every
# phase (examples, coverage, fuzzing, stateful: the links chain a created delivery's
# commands), every check. Passes only with 0 server errors and 0 responses that break the spec.
# The query API's live streams (`.../stream`) are left out: they never end, so every case
# would wait for the request timeout and fail as an error. Their tests are
# query-api/tests/api/live.rs (every answer checked against the spec) and tests/tests/e2e/live.rs.
# Two built-in checks run as stricter twins that know the answers no schema can state (a
# reused idempotency key, two fields that exclude each other): see scripts/fuzz_hooks.py.
#
# It starts what it needs on free ports, so it never meets a running stack: a broker in memory
# (nisshi), databases of its own (fuzz_write, fuzz_read, dropped first), the migrations, the
# relay, the projector and both APIs, built like the tests (debug; FUZZ_PROFILE=release for
# release binaries), and stops them at the end.
#
#   scripts/fuzz.sh            FUZZ_EXAMPLES (default 100) examples per operation and phase
#   scripts/fuzz.sh --short    20 examples (what CI runs)
#   scripts/fuzz.sh -- ARGS    more schemathesis options (e.g. --seed 7)
# Prints the figures per API and `fuzz: N passed, M failed` (APIs); reports in $FUZZ_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

examples="${FUZZ_EXAMPLES:-100}"
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --short) examples=20 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "usage: scripts/fuzz.sh [--short] [-- schemathesis options]" >&2; exit 2 ;;
    esac
    shift
done

ensure_postgres || exit 1
ensure_nisshi || exit 1
ensure_api_tools || exit 1

dir="${FUZZ_DIR:-$(mktemp -d /tmp/fuzz.XXXXXX)}"
mkdir -p "$dir/logs"
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
broker="127.0.0.1:$(free_port)"
export KAFKA_BROKERS="$broker"
export KAFKA_TOPIC=delivery.events
export WRITE_DATABASE_URL="$POSTGRES_URL/fuzz_write"
export READ_DATABASE_URL="$POSTGRES_URL/fuzz_read"
export QUERY_API_DATABASE_URL="postgres://query_api@$POSTGRES_HOSTPORT/fuzz_read"
export COMMAND_API_LISTEN="127.0.0.1:$(free_port)"
export QUERY_API_LISTEN="127.0.0.1:$(free_port)"
# An admin may give every command (for any rider), so the fuzzer reaches every rule.
export COMMAND_API_TOKENS="fuzz-admin-token=admin:fuzz"
export QUERY_API_TOKENS="fuzz-reader-token"
export RUST_LOG="${RUST_LOG:-warn}"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    for db in fuzz_write fuzz_read; do
        PGOPTIONS="-c client_min_messages=warning" psql -q "$POSTGRES_URL/postgres" \
            -c "drop database if exists $db with (force)" 2>/dev/null
    done
}
trap cleanup EXIT
start() { # NAME COMMAND...
    local name=$1
    shift
    "$@" >>"$dir/logs/$name.log" 2>&1 &
    pids+=($!)
}

for db in fuzz_write fuzz_read; do
    PGOPTIONS="-c client_min_messages=warning" psql -q "$POSTGRES_URL/postgres" \
        -c "drop database if exists $db with (force)" || exit 1
done
profile="${FUZZ_PROFILE:-debug}"
echo "building the $profile binaries" >&2
if [ "$profile" = release ]; then release=(--release); else release=(); fi
cargo build -q "${release[@]}" -p migrations -p command-api -p projector -p query-api || exit 1
bin="${CARGO_TARGET_DIR:-target}/$profile"

start nisshi env RUST_LOG=warn "$NISSHI_BIN" broker --listener-url "tcp://$broker" \
    --advertised-listener-url "tcp://$broker" --storage-engine memory://nisshi/ --cluster-id fuzz
wait_for_port "$broker" 30 || exit 1
"$NISSHI_BIN" topic create "$KAFKA_TOPIC" --partitions 3 --broker "tcp://$broker" \
    >>"$dir/logs/topic.log" 2>&1 || { cat "$dir/logs/topic.log" >&2; exit 1; }
"$bin"/migrate >>"$dir/logs/migrate.log" 2>&1 || { cat "$dir/logs/migrate.log" >&2; exit 1; }
start relay "$bin"/command-api relay
start projector "$bin"/projector run
start command-api "$bin"/command-api serve
start query-api "$bin"/query-api
wait_for_port "$COMMAND_API_LISTEN" 60 && wait_for_port "$QUERY_API_LISTEN" 60 || exit 1

passed=0
failed=0
fuzz() { # NAME ADDRESS TOKEN [SCHEMATHESIS OPTIONS...]
    local name=$1 address=$2 token=$3 report="$dir/$1.json"
    shift 3
    echo "== schemathesis: $name API at http://$address ($examples examples per operation)"
    PYTHONPATH=scripts SCHEMATHESIS_HOOKS=fuzz_hooks "$SCHEMATHESIS" run "http://$address/openapi.json" \
        --phases examples,coverage,fuzzing,stateful --checks all \
        --exclude-checks positive_data_acceptance,not_a_server_error \
        --max-examples "$examples" --header "Authorization: Bearer $token" \
        --report json --report-json-path "$report" --output-truncate true \
        "$@" "${extra[@]}" >"$dir/$name.out" 2>&1
    local status=$?
    tail -n 40 "$dir/$name.out"
    if [ $status -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
    summarize "$name" "$report"
}
# One line of figures per API, from schemathesis' JSON report.
summarize() { # NAME REPORT
    python3 - "$1" "$2" <<'PY'
import json, sys
name, path = sys.argv[1], sys.argv[2]
try:
    report = json.load(open(path))
except (OSError, ValueError) as error:
    print(f"fuzz figures: {name}: no report ({error})")
    sys.exit(0)
operations, cases = report["operations"], report["test_cases"]
print(
    f"fuzz figures: {name} API: {operations['tested']} of {operations['total']} operations, "
    f"{cases['generated']} test cases sent, {cases['unique_failures']} failures, "
    f"{len(report.get('errors', []))} errors, {report['running_time']:.0f} s"
)
PY
}
fuzz command "$COMMAND_API_LISTEN" fuzz-admin-token
fuzz query "$QUERY_API_LISTEN" fuzz-reader-token --exclude-path-regex '/stream$'

# A 5xx that schemathesis did not see as one (a panic in a background task) shows in the logs.
if grep -l "panicked" "$dir"/logs/*.log; then
    echo "a process panicked (see the logs above)" >&2
    failed=$((failed + 1))
fi
echo "reports and logs: $dir"
echo "fuzz: $passed passed, $failed failed"
[ $failed -eq 0 ]
