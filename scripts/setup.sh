# Sourced by the other scripts: makes sure what deadbolt needs is installed.
# Redis comes from Debian's packages; Rust must already be there (https://rustup.rs).
# Nothing here changes an existing user or password: the tests get a login of their own.

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
  apt_install redis-server redis-tools
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
# Debian's packages if missing, starts it if it is not running, and, unless it can already log in,
# creates the login `deadbolt_test` (password `deadbolt_test`) owning a database `deadbolt_test`
# and nothing more; then it exports the URL the tests read. On failure it says so and returns 1
# (the tests then skip). The password is in the open because the login can reach nothing else.

ensure_postgres() {
  local url=postgres://deadbolt_test:deadbolt_test@127.0.0.1:5432/deadbolt_test version
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    echo "deadbolt: installing postgresql from Debian's packages" >&2
    apt_install postgresql postgresql-client || return 1
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    echo "deadbolt: starting PostgreSQL ${version:-?} (cluster main)" >&2
    # pg_ctlcluster hands over to systemd where it runs, and starts the server itself where not.
    need_root pg_ctlcluster "$version" main start || return 1
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  if psql -X "$url" -qAtc 'select 1' >/dev/null 2>&1; then
    export DEADBOLT_TEST_POSTGRES_URL=$url
    return 0
  fi
  echo "deadbolt: creating the PostgreSQL login deadbolt_test and its database deadbolt_test, where missing" >&2
  # As the postgres superuser over the local socket (peer authentication); from / because
  # postgres may not read the caller's directory. Creates what is missing and alters nothing:
  # deadbolt_test gets LOGIN only (no CREATEDB, no CREATEROLE) and owns its database, so it may
  # create schemas there and nowhere else.
  (cd / && need_root runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1) >/dev/null <<'SQL' || return 1
SELECT 'CREATE ROLE deadbolt_test LOGIN PASSWORD ''deadbolt_test'''
  WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'deadbolt_test') \gexec
SELECT 'CREATE DATABASE deadbolt_test OWNER deadbolt_test'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'deadbolt_test') \gexec
SQL
  if ! psql -X "$url" -qAtc 'select 1' >/dev/null 2>&1; then
    echo "deadbolt: cannot log in as deadbolt_test; if that role existed before, it was left as it is" >&2
    return 1
  fi
  export DEADBOLT_TEST_POSTGRES_URL=$url
}

ensure_mariadb() {
  local url=mysql://deadbolt_test:deadbolt_test@127.0.0.1:3306/deadbolt_test
  local login=(mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -udeadbolt_test -pdeadbolt_test deadbolt_test)
  if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
    echo "deadbolt: installing mariadb-server from Debian's packages" >&2
    apt_install mariadb-server mariadb-client || return 1
  fi
  # `ping` succeeds whenever the server answers, even if it refuses the (anonymous) login.
  if ! mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 ping >/dev/null 2>&1; then
    echo "deadbolt: starting MariaDB" >&2
    need_root service mariadb start >/dev/null 2>&1 || {
      # No init system (a container): start the server the way its init script would.
      need_root install -d -o mysql -g mysql /run/mysqld
      need_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
    }
    for _ in $(seq 50); do
      mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 ping >/dev/null 2>&1 && break
      sleep 0.2
    done
  fi
  if "${login[@]}" -e 'select 1' >/dev/null 2>&1; then
    export DEADBOLT_TEST_MYSQL_URL=$url
    return 0
  fi
  echo "deadbolt: creating the MariaDB login deadbolt_test and its database deadbolt_test, where missing" >&2
  # As root over the local socket (how a fresh MariaDB lets root in). IF NOT EXISTS leaves an
  # existing user and its password alone. Rights: its own database, and the databases
  # deadbolt_demo_* that the demo creates and drops; no global privilege, no GRANT OPTION.
  need_root mariadb <<'SQL' || return 1
CREATE DATABASE IF NOT EXISTS deadbolt_test;
CREATE USER IF NOT EXISTS 'deadbolt_test'@'127.0.0.1' IDENTIFIED BY 'deadbolt_test';
CREATE USER IF NOT EXISTS 'deadbolt_test'@'localhost' IDENTIFIED BY 'deadbolt_test';
GRANT ALL ON deadbolt_test.* TO 'deadbolt_test'@'127.0.0.1', 'deadbolt_test'@'localhost';
GRANT ALL ON `deadbolt\_demo\_%`.* TO 'deadbolt_test'@'127.0.0.1', 'deadbolt_test'@'localhost';
SQL
  if ! "${login[@]}" -e 'select 1' >/dev/null 2>&1; then
    echo "deadbolt: cannot log in as deadbolt_test; if that user existed before, it was left as it is" >&2
    return 1
  fi
  export DEADBOLT_TEST_MYSQL_URL=$url
}

# A URL set by the caller names a server of their own: nothing is installed or created for it.
ensure_databases() {
  [ -n "${DEADBOLT_TEST_POSTGRES_URL:-}" ] || ensure_postgres ||
    echo "deadbolt: WARNING: no PostgreSQL login for the tests; its demo tests will be SKIPPED" >&2
  [ -n "${DEADBOLT_TEST_MYSQL_URL:-}" ] || ensure_mariadb ||
    echo "deadbolt: WARNING: no MariaDB login for the tests; its demo tests will be SKIPPED" >&2
}
