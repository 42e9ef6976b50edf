#!/usr/bin/env bash
# Refreshes the sqlx offline data (.sqlx/) after a compile-checked statement or the schema
# changed: builds a check database with every table the statements use (scripts/lib.sh,
# create_sqlx_check_database) and runs `cargo sqlx prepare --workspace` against it.
# `scripts/sqlx-prepare.sh --check` (what .ci/run does) only verifies that .sqlx/ is current.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_sqlx_cli
database="${SQLX_CHECK_DATABASE:-sqlx_check}"
create_sqlx_check_database "$database"
SQLX_OFFLINE=false DATABASE_URL="$POSTGRES_URL/$database" cargo sqlx prepare --workspace "$@"
