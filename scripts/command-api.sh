#!/usr/bin/env bash
# Runs the command API against the local Postgres with one command: creates and migrates the
# databases, then serves on $COMMAND_API_LISTEN (default 127.0.0.1:8080) with dev tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_postgres
export WRITE_DATABASE_URL="${WRITE_DATABASE_URL:-$POSTGRES_URL/delivery_write}"
export READ_DATABASE_URL="${READ_DATABASE_URL:-$POSTGRES_URL/delivery_read}"
export COMMAND_API_TOKENS="${COMMAND_API_TOKENS:-dev-dispatcher-token=dispatcher:desk-1,dev-admin-token=admin:root,dev-rider-42-token=rider:rider-42}"
cargo build --release -q -p migrations -p command-api
target/release/migrate
echo "command API on http://${COMMAND_API_LISTEN:-127.0.0.1:8080} (tokens: $COMMAND_API_TOKENS)"
exec target/release/command-api serve
