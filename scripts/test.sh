#!/usr/bin/env bash
# Runs every test: installs redis-server if missing, then the workspace's tests against real
# redis-server processes that the tests start on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_cargo
ensure_redis
exec cargo test --workspace --locked "$@"
