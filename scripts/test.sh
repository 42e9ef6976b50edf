#!/usr/bin/env bash
# Runs every test against the local Postgres: unit tests, property tests and the HTTP-level
# integration tests (each of those gets a fresh, migrated database from sqlx::test), and the
# relay tests, which start their own nisshi broker (installed on first use), the dashboard's
# test in headless chromium (installed on first use); the APIs' spec tests run
# openapi-spec-validator (installed on first use into a venv, see lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
ensure_nisshi
ensure_chromium
ensure_api_tools
export DATABASE_URL="${DATABASE_URL:-$POSTGRES_URL/postgres}"
# Roles are shared by every database of the cluster, and tests running in parallel would race
# to create them on a fresh machine: create them once, up front.
for role in "delivery_reader nologin" "query_api login in role delivery_reader"; do
    psql -q -d "$DATABASE_URL" -c "do \$\$ begin create role $role; exception when duplicate_object then null; end \$\$"
done
cargo test --workspace --all-targets "$@"
