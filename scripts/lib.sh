# Shared by the scripts: where Postgres is, and how to make sure it runs.
POSTGRES_URL="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
# host:port of POSTGRES_URL, for pg_isready and for URLs with another user.
POSTGRES_HOSTPORT="${POSTGRES_URL##*@}"
POSTGRES_HOSTPORT="${POSTGRES_HOSTPORT%%/*}"

ensure_postgres() {
    local host=${POSTGRES_HOSTPORT%:*} port=${POSTGRES_HOSTPORT##*:}
    if ! pg_isready -q -h "$host" -p "$port"; then
        # Only the machine's own cluster is ours to start; any other is the caller's.
        [ "$port" = 5432 ] || { echo "PostgreSQL at $POSTGRES_HOSTPORT is down" >&2; return 1; }
        echo "starting PostgreSQL" >&2
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
        for _ in $(seq 1 30); do pg_isready -q -h "$host" -p "$port" && return 0; sleep 1; done
        echo "PostgreSQL did not start" >&2
        return 1
    fi
}

# Refuses (returns 1 with a clear message) when the file system holding DIR has less than
# MIN_GB gigabytes free: a full disk crashes Postgres, and with it every part of the stack.
require_free_disk() {
    local dir=$1 min_gb=$2 free_kb
    free_kb=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
    if [ "$free_kb" -lt $((min_gb * 1024 * 1024)) ]; then
        echo "refusing to start: only $((free_kb / 1024 / 1024)) GB free on the file system of $dir" \
            "(at least $min_gb GB needed; free some space or set STACK_MIN_FREE_GB)" >&2
        return 1
    fi
}

# Keeps LOG at most MAX_BYTES (plus what is written between two checks): once larger, it is
# copied to LOG.1 (replacing the previous one) and truncated in place. Writers must open the
# log with O_APPEND (`>>`), so they go on at the new end instead of leaving a hole.
cap_log() {
    local log=$1 max_bytes=$2 size
    [ -f "$log" ] || return 0
    size=$(stat -c %s "$log")
    if [ "$size" -gt "$max_bytes" ]; then
        cp "$log" "$log.1"
        : >"$log"
        echo "$(date -u +%FT%TZ) log rotated at $size bytes; the previous part is in $(basename "$log").1" >>"$log"
    fi
}

# nisshi, a Kafka-protocol broker, installed once per machine into a cache outside the repo
# (about 16 minutes to build on 2 cores). Our code only speaks the Kafka protocol through
# rdkafka; nisshi is just the broker these machines can run.
NISSHI_VERSION=0.8.1
NISSHI_ROOT="${NISSHI_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/delivery-platform/nisshi}"

ensure_nisshi() {
    export NISSHI_BIN="$NISSHI_ROOT/bin/nisshi"
    if [ -x "$NISSHI_BIN" ] && "$NISSHI_BIN" --version 2>/dev/null | grep -q "$NISSHI_VERSION"; then
        return 0
    fi
    echo "installing nisshi $NISSHI_VERSION into $NISSHI_ROOT (once per machine)" >&2
    cargo install nisshi --version "$NISSHI_VERSION" --locked --ignore-rust-version \
        --root "$NISSHI_ROOT" >&2
}

# Headless chromium and its WebDriver, for the dashboard's browser test
# (tests/tests/e2e/live.rs). Debian's packages; installed once per machine.
ensure_chromium() {
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        return 0
    fi
    echo "installing chromium and chromium-driver (once per machine)" >&2
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >&2
}

# Waits until HOST:PORT accepts TCP connections, for at most SECONDS.
wait_for_port() {
    local address=$1 seconds=$2
    for _ in $(seq 1 $((seconds * 10))); do
        if (exec 3<>"/dev/tcp/${address%:*}/${address#*:}") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $address after ${seconds}s" >&2
    return 1
}

# sqlx-cli, for `cargo sqlx prepare`: installed once per machine into a cache outside the repo,
# Postgres support only (a few minutes on 2 cores). Its version is the sqlx of Cargo.lock: the
# offline data it writes must be what that sqlx's macros read.
SQLX_CLI_VERSION=0.8.6
SQLX_CLI_ROOT="${SQLX_CLI_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/delivery-platform/sqlx-cli}"

ensure_sqlx_cli() {
    export PATH="$SQLX_CLI_ROOT/bin:$PATH"
    if [ -x "$SQLX_CLI_ROOT/bin/cargo-sqlx" ] && sqlx --version 2>/dev/null | grep -q " $SQLX_CLI_VERSION\$"; then
        return 0
    fi
    echo "installing sqlx-cli $SQLX_CLI_VERSION into $SQLX_CLI_ROOT (once per machine)" >&2
    cargo install sqlx-cli --version "$SQLX_CLI_VERSION" --locked --no-default-features \
        --features postgres --root "$SQLX_CLI_ROOT" >&2
}

# (Re)creates database NAME with every table the compile-checked statements use. Write and read are separate databases in production, each with its own migration
# history, so each is migrated into a database of its own first (by sqlx's migrator, from the
# same migrations/ directories `migrate` embeds); their schemas, without the migration
# bookkeeping, are then restored into NAME with ON_ERROR_STOP, so a table, function or index
# name both sides define fails here instead of silently hiding one of them. The projections'
# tables come from their current DDL in projector/sql (ADR 0008), created in a schema that
# comes first on NAME's search_path, so statements are checked against the tables a rebuild
# would make, not only the migrations' first definitions. Needs ensure_sqlx_cli.
create_sqlx_check_database() {
    local name=$1 part ddl
    check_db_psql() { PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning" psql -q -v ON_ERROR_STOP=1 "$@" >/dev/null; }
    for part in "$name" "${name}_write" "${name}_read"; do
        check_db_psql -d "$POSTGRES_URL/postgres" -c "drop database if exists \"$part\" with (force)" \
            -c "create database \"$part\""
    done
    sqlx migrate run --source migrations/write --database-url "$POSTGRES_URL/${name}_write" >&2
    sqlx migrate run --source migrations/read --database-url "$POSTGRES_URL/${name}_read" >&2
    for part in write read; do
        pg_dump --schema-only --no-owner --exclude-table=_sqlx_migrations \
            "$POSTGRES_URL/${name}_$part" | check_db_psql -d "$POSTGRES_URL/$name"
        check_db_psql -d "$POSTGRES_URL/postgres" -c "drop database \"${name}_$part\""
    done
    check_db_psql -d "$POSTGRES_URL/$name" -c "create schema projection_ddl"
    # Tables first, then their indexes (a unique index may be what an ON CONFLICT names).
    for ddl in $(ls projector/sql/*.sql | grep -v '\.indexes\.sql$') projector/sql/*.indexes.sql; do
        PGOPTIONS="-c search_path=projection_ddl" check_db_psql -d "$POSTGRES_URL/$name" -f "$ddl"
    done
    check_db_psql -d "$POSTGRES_URL/postgres" \
        -c "alter database \"$name\" set search_path = projection_ddl, public"
}

# The API contract's Python tools, in a venv installed once per machine outside the repo:
# openapi-spec-validator (the APIs' spec tests run it on the generated specs) and schemathesis
# (scripts/fuzz.sh). Exports their paths, which the tests read.
API_TOOLS_ROOT="${API_TOOLS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/delivery-platform/api-tools}"
OPENAPI_SPEC_VALIDATOR_VERSION=0.9.0
SCHEMATHESIS_VERSION=4.32.5

ensure_api_tools() {
    export OPENAPI_SPEC_VALIDATOR="$API_TOOLS_ROOT/bin/openapi-spec-validator"
    export SCHEMATHESIS="$API_TOOLS_ROOT/bin/schemathesis"
    local stamp="$API_TOOLS_ROOT/installed-$OPENAPI_SPEC_VALIDATOR_VERSION-$SCHEMATHESIS_VERSION"
    [ -f "$stamp" ] && return 0
    echo "installing openapi-spec-validator and schemathesis into $API_TOOLS_ROOT (once per machine)" >&2
    python3 -m venv "$API_TOOLS_ROOT" >&2
    "$API_TOOLS_ROOT/bin/pip" install -q --disable-pip-version-check \
        "openapi-spec-validator==$OPENAPI_SPEC_VALIDATOR_VERSION" \
        "schemathesis==$SCHEMATHESIS_VERSION" >&2
    touch "$stamp"
}
