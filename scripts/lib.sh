# Shared by the scripts: where Postgres is, and how to make sure it runs.
POSTGRES_URL="${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"

ensure_postgres() {
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        echo "starting PostgreSQL" >&2
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 1; done
        echo "PostgreSQL did not start" >&2
        return 1
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
