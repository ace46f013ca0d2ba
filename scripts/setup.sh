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

apt_install() {
  need_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# PostgreSQL and MariaDB for the movie-likes demo's tests. Each function installs the server from
# Debian's packages if missing, starts it, makes a login the tests can use over 127.0.0.1, and
# exports its URL; on failure it says so loudly and returns 1 (the tests then skip).

ensure_postgres() {
  local url=postgres://postgres:postgres@127.0.0.1:5432/test
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "deadbolt: installing postgresql from Debian's packages" >&2
    apt_install postgresql postgresql-client || return 1
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    need_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || return 1
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  if ! psql "$url" -qAtc 'select 1' >/dev/null 2>&1; then
    # A fresh install authenticates by password over TCP: give postgres one, create `test`.
    need_root su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null || return 1
    need_root su postgres -c "createdb test" 2>/dev/null || true
    psql "$url" -qAtc 'select 1' >/dev/null 2>&1 || return 1
  fi
  export DEADBOLT_TEST_POSTGRES_URL=$url
}

ensure_mariadb() {
  if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    echo "deadbolt: installing mariadb-server from Debian's packages" >&2
    apt_install mariadb-server mariadb-client || return 1
  fi
  if ! mariadb-admin -h 127.0.0.1 -uroot ping >/dev/null 2>&1 \
      && ! mariadb-admin -h 127.0.0.1 -udeadbolt -pdeadbolt ping >/dev/null 2>&1; then
    need_root service mariadb start >/dev/null 2>&1 || {
      need_root install -d -o mysql -g mysql /run/mysqld
      need_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    }
    for _ in $(seq 50); do
      need_root mariadb-admin ping >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  if mariadb -h 127.0.0.1 -uroot -e 'select 1' >/dev/null 2>&1; then
    export DEADBOLT_TEST_MYSQL_URL=mysql://root@127.0.0.1:3306/test
    mariadb -h 127.0.0.1 -uroot -e 'CREATE DATABASE IF NOT EXISTS test'
    return 0
  fi
  # A fresh install lets root in through the socket only: make a TCP login for the tests.
  need_root mariadb -e "CREATE USER IF NOT EXISTS 'deadbolt'@'127.0.0.1' IDENTIFIED BY 'deadbolt';
    GRANT ALL PRIVILEGES ON *.* TO 'deadbolt'@'127.0.0.1' WITH GRANT OPTION;
    CREATE DATABASE IF NOT EXISTS test;" || return 1
  export DEADBOLT_TEST_MYSQL_URL=mysql://deadbolt:deadbolt@127.0.0.1:3306/test
}

ensure_databases() {
  ensure_postgres || echo "deadbolt: WARNING: PostgreSQL is not available; its demo tests will be SKIPPED" >&2
  ensure_mariadb || echo "deadbolt: WARNING: MariaDB is not available; its demo tests will be SKIPPED" >&2
}
