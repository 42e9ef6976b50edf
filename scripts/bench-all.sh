#!/usr/bin/env bash
# Every benchmark, against the stack exactly as scripts/stack.sh starts it (durable broker),
# then the same against the in-memory broker beside it; prints one table of every figure with
# its baseline measured in the same run. Not a test: it prints figures and asserts nothing.
#   scripts/bench-all.sh [--quick]
# --quick: shorter runs and a smaller backlog (a smoke run of the script, not figures to quote).
#
# For each broker storage (durable, then memory) it starts scripts/stack.sh on ports of its
# own (28080-28083, broker 29092) with fresh databases, then measures:
#   1. the command API, closed loop (bench commands), at 16 and 64 clients: its maximum rate;
#   2. accepted -> visible at 500 commands/s (bench pipeline), and accepted -> published from
#      the outbox's own timestamps;
#   3. sustained: 60 s at 80% of the command API's maximum, with the projector's lag sampled
#      every second and every process's peak RSS read at the end;
#   4. (durable only: reads do not touch the broker) queries: 2,000 requests/s of reads by id
#      and listing pages over a read model of 1,000,000 deliveries (bench queries, which
#      seeds it), then pgbench's primary-key select at the same rate on the same table;
#   5. catch-up: a backlog produced straight to a fresh topic, the broker's raw consume rate,
#      then the projector's (bench catch-up, the projector's shipped settings);
# and once, on Postgres alone: pgbench's event + outbox insert with and without a NOTIFY in
# each transaction, at 16 and 64 clients (the baselines of 1).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_nisshi

quick=false
[ "${1:-}" = --quick ] && quick=true
if $quick; then
    closed_secs=5 pipeline_secs=5 sustained_secs=10 backlog=20000 query_rows=100000
else
    closed_secs=20 pipeline_secs=20 sustained_secs=60 backlog=100000 query_rows=1000000
fi
out=.stack/bench-all
mkdir -p "$out"
results="$out/results.tsv"
: >"$results"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
bin="$CARGO_TARGET_DIR/release"
# The services exactly as scripts/stack.sh builds them, so that its own build finds them
# built: built together with `bench`, cargo unifies features differently and the stack's
# build would compile everything again (minutes on a fresh machine, past the wait below).
cargo build --release -q -p migrations -p command-api -p projector -p query-api
cargo build --release -q -p bench

# record STORAGE NAME VALUE: one figure of the table.
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; }
# field LINE KEY: the value of KEY=VALUE in a bench's output line (units stripped).
field() { sed -nE "s/.*[ (]$2=([0-9.]+).*/\1/p" <<<"$1" | head -n1; }

# not_visible LINES CODE: how many reads bench pipeline counted not visible for problem CODE.
not_visible() {
    sed -nE "s/^not visible: ([0-9]+) x .* $2\$/\1/p" <<<"$1" | awk '{n += $1} END {print n + 0}'
}

stack_pid=""
stop_stack() {
    if [ -n "$stack_pid" ]; then
        kill "$stack_pid" 2>/dev/null || true
        wait "$stack_pid" 2>/dev/null || true
        stack_pid=""
    fi
}
trap stop_stack EXIT

start_stack() { # STORAGE
    local storage=$1
    for db in bench_all_write bench_all_read bench_all_nisshi; do
        psql -q "$POSTGRES_URL/postgres" -c "drop database if exists $db with (force)"
    done
    rm -rf "$out/stack-$storage"
    STACK_DIR="$out/stack-$storage" STACK_BROKER_STORAGE=$storage RUST_LOG=warn \
        WRITE_DATABASE_URL="$POSTGRES_URL/bench_all_write" \
        READ_DATABASE_URL="$POSTGRES_URL/bench_all_read" \
        QUERY_API_DATABASE_URL="postgres://query_api@$POSTGRES_HOSTPORT/bench_all_read" \
        NISSHI_DATABASE=bench_all_nisshi KAFKA_BROKERS=127.0.0.1:29092 \
        COMMAND_API_LISTEN=127.0.0.1:28080 QUERY_API_LISTEN=127.0.0.1:28081 \
        RELAY_HTTP_LISTEN=127.0.0.1:28082 PROJECTOR_HTTP_LISTEN=127.0.0.1:28083 \
        scripts/stack.sh >"$out/stack-$storage.log" 2>&1 &
    stack_pid=$!
    wait_for_port 127.0.0.1:28080 120
    wait_for_port 127.0.0.1:28081 60
    wait_for_port 127.0.0.1:28083 60
}

# The projector's total lag (messages), as its /metrics says.
projector_lag() {
    curl -fs http://127.0.0.1:28083/metrics 2>/dev/null \
        | awk '/^projector_lag_messages/ {sum += $2} END {print sum + 0}'
}

# Waits (up to 10 minutes) until the stack has caught up with what the last phase sent: no
# outbox row unpublished and no projector lag. Each phase then measures its own load, not the
# drain of the one before (a relay or projector still catching up shares the 2 cores).
settle() { # STORAGE PHASE
    local started=$SECONDS unpublished lag
    while [ $((SECONDS - started)) -lt 600 ]; do
        unpublished=$(psql -qAt "$POSTGRES_URL/bench_all_write" \
            -c "select count(*) from outbox where published_at is null" 2>/dev/null || echo -1)
        lag=$(projector_lag)
        [ "$unpublished" = 0 ] && [ "$lag" = 0 ] && break
        sleep 1
    done
    echo "settled before $2 in $((SECONDS - started))s (unpublished=$unpublished lag=$lag)"
    record "$1" "settle_before_$2" "$((SECONDS - started))"
}

# Accepted -> published percentiles (ms) of the outbox rows created in the last SECONDS:
# from the command transaction's start (created_at) to the relay's mark after the broker's ack.
published_latency() { # SECONDS
    psql -qAt "$POSTGRES_URL/bench_all_write" -F ' ' -c "
        select round(1000 * extract(epoch from percentile_cont(0.5) within group (order by published_at - created_at))::numeric, 1),
               round(1000 * extract(epoch from percentile_cont(0.99) within group (order by published_at - created_at))::numeric, 1)
        from outbox where created_at > now() - interval '$1 seconds' and published_at is not null"
}

# pgbench's select by primary key at 2,000/s on the seeded read model: "p50 p99" in ms, from
# its per-transaction log (with --rate, latency counts from each transaction's scheduled start).
pgbench_primary_key() {
    rm -f "$out"/pgbench-pk.*
    pgbench -n -M prepared -c 8 -j 2 -R 2000 -T "$closed_secs" -D rows="$query_rows" \
        -f bench/sql/delivery-by-id.sql -l --log-prefix="$out/pgbench-pk" \
        "$POSTGRES_URL/bench_all_read" >/dev/null 2>&1
    cat "$out"/pgbench-pk.* | awk '{print $3}' | sort -n \
        | awk '{a[NR] = $1} END {printf "%.2f %.2f\n", a[int(NR * 0.5)] / 1000, a[int(NR * 0.99)] / 1000}'
}

queries() {
    local line
    echo "== queries: 2000 requests/s over $query_rows deliveries for ${closed_secs}s"
    line=$("$bin"/bench queries --query-url http://127.0.0.1:28081 --rate 2000 \
        --seconds "$closed_secs" --deliveries "$query_rows" \
        --seed-database-url "$POSTGRES_URL/bench_all_read" | tee -a /dev/stderr)
    record durable queries_p50 "$(field "$(grep "all reads" <<<"$line")" p50)"
    record durable queries_p99 "$(field "$(grep "all reads" <<<"$line")" p99)"
    record durable queries_by_id_p99 "$(field "$(grep "deliveries/{id}" <<<"$line")" p99)"
    record durable queries_list_p99 "$(field "$(grep "a page of" <<<"$line")" p99)"
    record durable queries_failed "$(field "$(grep "queries over" <<<"$line")" failed)"
    read -r p50 p99 <<<"$(pgbench_primary_key)"
    echo "pgbench primary-key select at 2000/s: p50=${p50}ms p99=${p99}ms"
    record postgres pgbench_pk_p50 "$p50"
    record postgres pgbench_pk_p99 "$p99"
}

measure() { # STORAGE
    local storage=$1 line max sustained_rate lag=0 lag_now part pid
    echo "== $storage broker: starting the stack"
    start_stack "$storage"

    for clients in 16 64; do
        line=$("$bin"/bench commands --url http://127.0.0.1:28080 --clients "$clients" \
            --seconds "$closed_secs" | tail -n1)
        echo "commands, $clients clients: $line"
        record "$storage" "commands_${clients}" "$(field "$line" throughput)"
        record "$storage" "commands_${clients}_p99" "$(field "$line" p99)"
    done

    settle "$storage" pipeline
    line=$("$bin"/bench pipeline --command-url http://127.0.0.1:28080 \
        --query-url http://127.0.0.1:28081 --rate 500 --seconds "$pipeline_secs" | tee -a /dev/stderr)
    local visible
    visible=$(grep "accepted -> visible" <<<"$line")
    record "$storage" visible_p50 "$(field "$visible" p50)"
    record "$storage" visible_p99 "$(field "$visible" p99)"
    record "$storage" visible_not_visible "$(field "$(head -n1 <<<"$line")" not_visible)"
    read -r p50 p99 <<<"$(published_latency "$pipeline_secs")"
    echo "accepted -> published: p50=${p50}ms p99=${p99}ms"
    record "$storage" published_p50 "$p50"
    record "$storage" published_p99 "$p99"

    # Sustained: 80% of the better closed-loop rate.
    max=$(awk -F'\t' -v s="$storage" '$1 == s && ($2 == "commands_16" || $2 == "commands_64") {
        if ($3 > m) m = $3} END {print int(m)}' "$results")
    sustained_rate=$((max * 8 / 10))
    settle "$storage" sustained
    echo "== sustained: $sustained_rate commands/s (80% of $max) for ${sustained_secs}s"
    (
        while true; do projector_lag; sleep 1; done
    ) >"$out/lag-$storage.txt" &
    local sampler=$!
    line=$("$bin"/bench pipeline --command-url http://127.0.0.1:28080 \
        --query-url http://127.0.0.1:28081 --rate "$sustained_rate" \
        --seconds "$sustained_secs" | tee -a /dev/stderr)
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    lag=$(sort -n "$out/lag-$storage.txt" | tail -n1)
    record "$storage" sustained_rate "$sustained_rate"
    record "$storage" sustained_not_visible "$(field "$(head -n1 <<<"$line")" not_visible)"
    record "$storage" sustained_not_projected "$(not_visible "$line" not-yet-projected)"
    record "$storage" sustained_shed_waiters "$(not_visible "$line" too-many-waiters)"
    record "$storage" sustained_failed "$(field "$(head -n1 <<<"$line")" failed)"
    record "$storage" sustained_visible_p99 "$(field "$(grep "accepted -> visible" <<<"$line")" p99)"
    record "$storage" sustained_max_lag "${lag:-0}"
    for part in command-api relay projector query-api nisshi; do
        pid=$(cat "$out/stack-$storage/pids/$part.pid" 2>/dev/null || true)
        [ -n "$pid" ] || continue
        local kib
        kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        record "$storage" "rss_$part" "$(awk -v k="$kib" 'BEGIN {printf "%.1f", k / 1024}')"
    done

    settle "$storage" queries
    [ "$storage" = durable ] && queries

    echo "== catch-up: $backlog events"
    "$NISSHI_BIN" topic create bench.catchup --partitions 6 --broker tcp://127.0.0.1:29092 >/dev/null
    line=$("$bin"/bench catch-up --brokers 127.0.0.1:29092 --topic bench.catchup \
        --events "$backlog" --read-database-url "$POSTGRES_URL/bench_all_catchup" | tee -a /dev/stderr)
    record "$storage" raw_consume "$(sed -nE 's/.*raw rdkafka consume: .*\(([0-9]+) messages\/s\).*/\1/p' <<<"$line")"
    record "$storage" catch_up "$(sed -nE 's/.*projector catch-up: .*\(([0-9]+) events\/s.*/\1/p' <<<"$line")"
    stop_stack
}

pgbench_inserts() { # CLIENTS NOTIFY(true|false) -> tx/s
    local clients=$1 notify=$2 db=bench_all_pgbench
    psql -q "$POSTGRES_URL/postgres" -c "drop database if exists $db with (force)" -c "create database $db"
    WRITE_DATABASE_URL="$POSTGRES_URL/$db" READ_DATABASE_URL="$POSTGRES_URL/${db}_read" \
        "$bin"/migrate >/dev/null
    if [ "$notify" = true ]; then
        # The trigger the outbox had before ADR 0013: a NOTIFY in every inserting transaction.
        psql -q "$POSTGRES_URL/$db" -c "create function notify_outbox() returns trigger language plpgsql as
            \$\$ begin perform pg_notify('outbox', ''); return null; end \$\$;
            create trigger outbox_notify after insert on outbox for each statement execute function notify_outbox();"
    fi
    pgbench -n -M prepared -c "$clients" -j 2 -T "$closed_secs" -f bench/sql/event-outbox-insert.sql \
        "$POSTGRES_URL/$db" 2>/dev/null | sed -nE 's/^tps = ([0-9.]+).*/\1/p'
}

echo "== Postgres alone: event + outbox insert per transaction (pgbench)"
for clients in 16 64; do
    for notify in true false; do
        tps=$(pgbench_inserts "$clients" "$notify")
        echo "pgbench $clients clients, NOTIFY in each transaction: $notify: $tps tx/s"
        record postgres "pgbench_${clients}_notify_$notify" "${tps%.*}"
    done
done

measure durable
measure memory

echo
scripts/bench-table.py "$results" | tee "$out/table.md"
