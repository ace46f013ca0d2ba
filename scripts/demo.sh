#!/usr/bin/env bash
# The demo: 8 processes each add 1 to a number in a file, 10 times, with a read-sleep-write
# (as an ORM does). Without a lock, updates are lost; under `deadbolt run` none are.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
ensure_cargo
ensure_redis
cargo build --release --locked -q -p deadbolt-cli
bin=$PWD/target/release/deadbolt

work=$(mktemp -d)
port=$(( 20000 + RANDOM % 20000 ))
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work" \
  --logfile "$work/redis.log" --daemonize no &
redis_pid=$!
trap 'kill $redis_pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
export DEADBOLT_REDIS_URL="redis://127.0.0.1:$port"

increment='n=$(cat "$F"); sleep 0.01; echo $((n + 1)) > "$F"'
race() { # $1: "lock" or "nolock"
  echo 0 > "$work/count"
  for p in $(seq 8); do
    (
      for i in $(seq 10); do
        if [ "$1" = lock ]; then
          F="$work/count" "$bin" run --key demo-counter --wait 30s -- sh -c "$increment"
        else
          F="$work/count" sh -c "$increment"
        fi
      done
    ) &
  done
  wait
  cat "$work/count"
}

echo "8 processes x 10 increments of one counter file (expected: 80)"
printf '  without a lock:        %s\n' "$(race nolock)"
printf '  under deadbolt run:    %s\n' "$(race lock)"
"$bin" status demo-counter
