# Sourced by the other scripts: makes sure what deadbolt needs is installed.
# Redis comes from Debian's packages; Rust must already be there (https://rustup.rs).

need_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else
    echo "deadbolt: need root to run: $*" >&2
    exit 1
  fi
}

ensure_redis() {
  if command -v redis-server >/dev/null 2>&1; then return; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "deadbolt: redis-server is missing and apt-get is not available; install Redis >= 6 yourself" >&2
    exit 1
  fi
  echo "deadbolt: installing redis-server from Debian's packages" >&2
  need_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null
}

ensure_cargo() {
  if command -v cargo >/dev/null 2>&1; then return; fi
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; return; fi
  echo "deadbolt: cargo is missing; install Rust from https://rustup.rs first" >&2
  exit 1
}
