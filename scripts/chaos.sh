#!/usr/bin/env bash
# The fault-injection suite. Starts the stack exactly as scripts/stack.sh runs it (release
# binaries, nisshi on its durable Postgres storage, every part supervised), but on a Postgres
# cluster of its own, then runs `bench chaos`: lifecycle load at ~60 commands/s with retrying
# clients while it kills (-9) the relay, the projector and the command API, has a second
# projector join before the first is killed, keeps the broker down for 20 s and restarts
# Postgres in immediate mode. After each trial it checks that every acknowledged command is in
# the event store, the read model holds every stored event exactly once, nothing is parked or
# poisoned, and `projector audit verify` is clean.
#
#   scripts/chaos.sh --short            CI: 3 trials of 45 s (about 3 minutes)
#   scripts/chaos.sh                    6 trials of 60 s (the README's figures)
#   scripts/chaos.sh --seed 42 ...      the same fault schedule again
#   scripts/chaos.sh -- --rate 100      anything after -- goes to `bench chaos`
#
# Postgres is restarted in immediate mode, so never against a shared cluster: the suite creates
# (once) and uses the cluster `chaos` on port 5433 (CHAOS_PG_PORT), whose databases it drops
# and creates anew on every run. Logs in .stack-chaos/logs/. The last line is
# `chaos: N passed, M failed` (trials).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

trials=6
seconds=60
seed=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --short) trials=3 seconds=45 ;;
        --trials) trials=$2; shift ;;
        --seconds) seconds=$2; shift ;;
        --seed) seed=$2; shift ;;
        --) shift; extra=("$@"); break ;;
        *) echo "usage: $0 [--short] [--trials N] [--seconds N] [--seed N] [-- bench chaos args]" >&2; exit 2 ;;
    esac
    shift
done
[ -n "$seed" ] || seed=$(( (RANDOM << 15) | RANDOM ))

pg_version="${CHAOS_PG_VERSION:-$(ls /etc/postgresql | sort -n | tail -1)}"
pg_cluster="${CHAOS_PG_CLUSTER:-chaos}"
pg_port="${CHAOS_PG_PORT:-5433}"
if [ "$pg_port" = 5432 ]; then
    echo "chaos: refusing to restart the shared cluster on 5432; set CHAOS_PG_PORT" >&2
    exit 2
fi
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$pg_version $pg_cluster"; then
    echo "creating the Postgres cluster $pg_version/$pg_cluster on port $pg_port" >&2
    pg_createcluster "$pg_version" "$pg_cluster" -p "$pg_port" -- --auth=trust >/dev/null
fi
pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_cluster" start 2>/dev/null || true
for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p "$pg_port" && break; sleep 0.5; done
pg_isready -q -h 127.0.0.1 -p "$pg_port" || { echo "chaos: the $pg_cluster cluster did not start" >&2; exit 1; }

export POSTGRES_URL="postgres://postgres@127.0.0.1:$pg_port"
psql_chaos() { psql -q -v ON_ERROR_STOP=1 -d "$POSTGRES_URL/postgres" "$@"; }
for role in "delivery_reader nologin" "query_api login in role delivery_reader"; do
    psql_chaos -c "do \$\$ begin create role $role; exception when duplicate_object then null; end \$\$"
done
# A run starts from nothing: the broker's durable storage included, or old offsets would meet
# a new topic.
for db in delivery_write delivery_read nisshi; do
    psql_chaos -c "drop database if exists $db with (force)"
done

export STACK_DIR="${STACK_DIR:-.stack-chaos}"
export KAFKA_BROKERS="${CHAOS_KAFKA_BROKERS:-127.0.0.1:9192}"
export COMMAND_API_LISTEN="${CHAOS_COMMAND_API_LISTEN:-127.0.0.1:18080}"
export QUERY_API_LISTEN="${CHAOS_QUERY_API_LISTEN:-127.0.0.1:18081}"
export RELAY_HTTP_LISTEN="${CHAOS_RELAY_HTTP_LISTEN:-127.0.0.1:18082}"
export PROJECTOR_HTTP_LISTEN="${CHAOS_PROJECTOR_HTTP_LISTEN:-127.0.0.1:18083}"
export WRITE_DATABASE_URL="$POSTGRES_URL/delivery_write"
export READ_DATABASE_URL="$POSTGRES_URL/delivery_read"
export QUERY_API_DATABASE_URL="postgres://query_api@127.0.0.1:$pg_port/delivery_read"
export KAFKA_TOPIC=delivery.events
# Warn everywhere: the broker at info writes gigabytes, and the parts' logs are for failures.
export RUST_LOG=warn
rm -rf "$STACK_DIR/hold" "$STACK_DIR/pids" "$STACK_DIR/logs" "$STACK_DIR/stack.log"
mkdir -p "$STACK_DIR/logs"
target="${CARGO_TARGET_DIR:-target}"

echo "chaos: building release binaries" >&2
# The stack's own build, word for word (a different package set unifies features differently
# and rebuilds dependencies), then the driver on its own.
cargo build --release -q -p migrations -p command-api -p projector -p query-api
cargo build --release -q -p bench

started=$(date +%s)
# In a process group of its own, so the whole stack (supervisors and parts) is stopped by the
# group's id, whatever state stack.sh is in.
setsid scripts/stack.sh >>"$STACK_DIR/logs/stack-console.log" 2>&1 &
stack=$!
finish() {
    trap - EXIT INT TERM
    kill -TERM -- "-$stack" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 -- "-$stack" 2>/dev/null || break
        sleep 0.3
    done
    kill -KILL -- "-$stack" 2>/dev/null || true
    wait "$stack" 2>/dev/null || true
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_cluster" stop -m fast 2>/dev/null || true
}
trap finish EXIT INT TERM
for address in "$COMMAND_API_LISTEN" "$QUERY_API_LISTEN"; do
    if ! wait_for_port "$address" 180; then
        tail -n 30 "$STACK_DIR/logs/stack-console.log" >&2
        echo "chaos: 0 passed, $trials failed"
        exit 1
    fi
done

set +e
# The driver's own Postgres pools would log each "terminating connection" notice of a restart.
RUST_LOG=warn,sqlx::postgres::notice=error "$target/release/bench" chaos --seed "$seed" --trials "$trials" --seconds "$seconds" \
    --command-url "http://$COMMAND_API_LISTEN" --stack-dir "$STACK_DIR" \
    --projector-bin "$target/release/projector" \
    --postgres-restart "pg_ctlcluster --skip-systemctl-redirect $pg_version $pg_cluster restart -m immediate" \
    "${extra[@]}" | tee "$STACK_DIR/logs/chaos.out"
status=${PIPESTATUS[0]}
set -e
echo "chaos: took $(( $(date +%s) - started ))s without the build (seed $seed); logs in $STACK_DIR/logs/"
# The verdict comes last, for CI to read; if the driver died before printing it, the run failed.
verdict=$(grep '^chaos: [0-9]* passed, [0-9]* failed$' "$STACK_DIR/logs/chaos.out" | tail -n 1 || true)
echo "${verdict:-chaos: 0 passed, $trials failed}"
[ -n "$verdict" ] || status=1
exit "$status"
