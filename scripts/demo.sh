#!/usr/bin/env bash
# The main job: installs redis-server if missing, builds, and runs `deadbolt demo likes`
# (1000 users like one movie at the same instant; SQLite by default). Extra arguments go to the
# demo, e.g. --database-url postgres://user:password@127.0.0.1/db or --processes 4.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_cargo
ensure_redis
bin=${CARGO_TARGET_DIR:-target}/release/deadbolt
# A release build: the demo's numbers are timings. The first one compiles every dependency,
# so say so and let cargo show its progress instead of sitting silent for minutes.
if [ ! -x "$bin" ]; then
  echo "deadbolt: building deadbolt (first run: 2 to 4 minutes on 2 cores)…" >&2
fi
cargo build --release --locked -p deadbolt-cli --bin deadbolt
exec "$bin" demo likes "$@"
