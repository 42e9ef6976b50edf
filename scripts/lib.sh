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
