#!/usr/bin/env bash
# Runs every test: installs redis-server (and PostgreSQL and MariaDB, for the demo's tests) if
# missing, then the workspace's tests against real servers. The Redis servers are started by the
# tests themselves on free loopback ports; the databases are the machine's, on their standard
# ports, reached as the login deadbolt_test (see setup.sh), and the demo creates and drops a
# schema or database of its own there.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_cargo
ensure_redis
ensure_databases
exec cargo test --workspace --locked "$@"
