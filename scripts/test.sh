#!/usr/bin/env bash
# Runs every test against the local Postgres: unit tests, property tests and the HTTP-level
# integration tests (each of those gets a fresh, migrated database from sqlx::test), and the
# relay tests, which start their own nisshi broker (installed on first use).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_nisshi
export DATABASE_URL="${DATABASE_URL:-$POSTGRES_URL/postgres}"
cargo test --workspace --all-targets "$@"
