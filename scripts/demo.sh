#!/usr/bin/env bash
# The main job: installs redis-server if missing, builds, and runs `deadbolt demo likes`
# (1000 users like one movie at the same instant; SQLite by default). Extra arguments go to the
# demo, e.g. --database-url postgres://postgres@127.0.0.1/test or --processes 4.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_cargo
ensure_redis
exec cargo run --release --locked -q -p deadbolt-cli -- demo likes "$@"
