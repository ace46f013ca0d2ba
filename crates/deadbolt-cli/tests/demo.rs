//! `deadbolt demo likes`, run as a user runs it: the built binary, its own private redis-server,
//! and real databases.
//!
//! SQLite always runs. PostgreSQL and MariaDB run where they are reachable, at
//! `DEADBOLT_TEST_POSTGRES_URL` / `DEADBOLT_TEST_MYSQL_URL` (default: the login `deadbolt_test`
//! and its database `deadbolt_test` on the local servers, which `scripts/test.sh` creates); when
//! one is not, its tests print `SKIPPED: …` and pass, unless `DEADBOLT_REQUIRE_DATABASES=1`, which
//! makes them fail. The rights the login needs: on PostgreSQL, to create schemas in its database
//! (the demo makes one there); on MariaDB, all on the databases `deadbolt_demo_*` (the demo makes
//! one of those) and on its own.
//!
//! The demos are heavy (hundreds of concurrent transactions each) and the machines have 2 cores,
//! so the tests take turns through [`turn`] instead of competing for the CPU and timing out.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::Connection as _;

/// The longest a demo may run before the test kills it and fails.
const DEMO_LIMIT: Duration = Duration::from_secs(120);

/// One demo at a time: see the module docs.
static TURN: Mutex<()> = Mutex::new(());

/// Waits for this test's turn; a test that failed in its turn does not block the others.
fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a demo run left.
#[derive(Debug)]
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The `--json` lines, by mode.
    fn rows(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|err| panic!("not JSON ({err}): {line}\n{self:?}"))
            })
            .collect()
    }

    /// Asserts the run failed with exactly one `deadbolt: ` line on stderr, and returns it.
    fn one_line_error(&self) -> String {
        assert!(!self.status.success(), "expected a failure: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "expected one stderr line: {self:?}");
        assert!(lines[0].starts_with("deadbolt: "), "{self:?}");
        lines[0].to_owned()
    }
}

/// Runs `deadbolt demo likes ARGS` with a private redis-server (no `DEADBOLT_REDIS_URL`), killing
/// it after [`DEMO_LIMIT`].
fn demo(args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deadbolt"))
        .args(["demo", "likes"])
        .args(args)
        .env_remove("DEADBOLT_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the deadbolt binary runs");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        stdout.read_to_string(&mut text).ok();
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        stderr.read_to_string(&mut text).ok();
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > DEMO_LIMIT {
            child.kill().ok();
            panic!("deadbolt demo likes {args:?} ran longer than {DEMO_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        status,
        stdout: out.join().expect("reader"),
        stderr: err.join().expect("reader"),
    }
}

/// Finds the row of `mode`.
fn row<'a>(rows: &'a [Value], mode: &str) -> &'a Value {
    rows.iter()
        .find(|row| row["mode"] == mode)
        .unwrap_or_else(|| panic!("no row for {mode} in {rows:?}"))
}

/// The sum of a row's error counts.
fn errors(row: &Value) -> u64 {
    row["errors"]
        .as_object()
        .expect("errors is an object")
        .values()
        .map(|n| n.as_u64().expect("a count"))
        .sum()
}

/// Asserts a correct mode counted every like once, without a single error.
fn assert_exact(row: &Value, users: i64) {
    assert_eq!(row["like_counts"], users, "{row}");
    assert_eq!(row["likes_rows"], users, "{row}");
    assert_eq!(errors(row), 0, "{row}");
}

/// Asserts an unprotected mode's numbers are at least consistent: nothing counted that was not
/// sent, and every like accounted for as a committed row or an error.
fn assert_consistent(row: &Value, users: i64) {
    let count = row["like_counts"].as_i64().expect("like_counts");
    let rows = row["likes_rows"].as_i64().expect("likes_rows");
    assert!((0..=users).contains(&count), "{row}");
    assert!((0..=users).contains(&rows), "{row}");
    assert!(count <= rows, "a count above the committed likes: {row}");
    assert_eq!(rows as u64 + errors(row), users as u64, "{row}");
    assert_eq!(row["expected"], users, "{row}");
    assert!(row["wall_s"].as_f64().expect("wall_s") > 0.0, "{row}");
    assert!(row["likes_per_s"].as_f64().is_some(), "{row}");
}

/// The demo's temporary directories that exist now.
fn sqlite_leftovers() -> BTreeSet<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .map(|dir| {
            dir.filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| name.starts_with("deadbolt-demo-"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

/// A database server of the tests, reached with sqlx to look behind the demo.
#[derive(Debug, Clone, Copy)]
enum Server {
    Postgres,
    Mysql,
}

impl Server {
    fn url(self) -> String {
        let (var, default) = match self {
            Server::Postgres => (
                "DEADBOLT_TEST_POSTGRES_URL",
                "postgres://deadbolt_test:deadbolt_test@127.0.0.1:5432/deadbolt_test",
            ),
            Server::Mysql => (
                "DEADBOLT_TEST_MYSQL_URL",
                "mysql://deadbolt_test:deadbolt_test@127.0.0.1:3306/deadbolt_test",
            ),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    /// Runs `f` on a connection to the server, or `None` if it cannot be reached.
    fn with<T>(self, f: impl AsyncFnOnce(&mut sqlx::AnyConnection) -> T) -> Option<T> {
        sqlx::any::install_default_drivers();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let connect = sqlx::AnyConnection::connect(&self.url());
            let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .ok()?
                .ok()?;
            let out = f(&mut conn).await;
            conn.close().await.ok();
            Some(out)
        })
    }

    /// Whether the server answers; if not, fails under `DEADBOLT_REQUIRE_DATABASES=1` and
    /// otherwise says loudly that the test is skipped.
    fn reachable(self) -> bool {
        if self.with(async |_| ()).is_some() {
            return true;
        }
        let message = format!("{self:?} is not reachable at {}", self.url());
        if std::env::var("DEADBOLT_REQUIRE_DATABASES").as_deref() == Ok("1") {
            panic!("{message}, and DEADBOLT_REQUIRE_DATABASES=1");
        }
        eprintln!("SKIPPED: {message}; set DEADBOLT_REQUIRE_DATABASES=1 to make this fail");
        false
    }

    /// The demo namespaces on the server now.
    fn leftovers(self) -> BTreeSet<String> {
        let sql = match self {
            Server::Postgres => {
                "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'deadbolt_demo_%'"
            }
            Server::Mysql => {
                "SELECT CAST(SCHEMA_NAME AS CHAR) FROM information_schema.SCHEMATA \
                 WHERE SCHEMA_NAME LIKE 'deadbolt\\_demo\\_%'"
            }
        };
        self.with(async |conn| {
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(conn)
                .await
                .expect("list the namespaces")
        })
        .expect("the server answered a moment ago")
        .into_iter()
        .collect()
    }
}

/// Runs every mode of `server` with 200 users and checks the correct ones counted exactly, and
/// that the demo dropped its namespace.
fn all_modes_on(server: Server, correct: &[&str]) {
    let _turn = turn();
    if !server.reachable() {
        return;
    }
    let before = server.leftovers();
    let run = demo(&["--users", "200", "--json", "--database-url", &server.url()]);
    assert!(run.status.success(), "{run:?}");
    let rows = run.rows();
    assert_eq!(rows.len(), 2 + correct.len(), "{run:?}");
    for mode in ["no-lock", "lock-inside-tx"] {
        assert_consistent(row(&rows, mode), 200);
    }
    for mode in correct {
        assert_exact(row(&rows, mode), 200);
    }
    assert_eq!(
        server.leftovers(),
        before,
        "the demo left its namespace behind"
    );
}

#[test]
fn sqlite_lock_around_tx_counts_every_like_and_the_others_stay_consistent() {
    let _turn = turn();
    let before = sqlite_leftovers();
    let run = demo(&["--users", "200", "--json"]);
    assert!(run.status.success(), "{run:?}");
    let rows = run.rows();
    assert_eq!(rows.len(), 3, "{run:?}");
    for row in &rows {
        assert_eq!(row["database"], "sqlite", "{row}");
    }
    assert_consistent(row(&rows, "no-lock"), 200);
    assert_consistent(row(&rows, "lock-inside-tx"), 200);
    let around = row(&rows, "lock-around-tx");
    assert_consistent(around, 200);
    assert_exact(around, 200);
    assert_eq!(
        sqlite_leftovers(),
        before,
        "the demo left its SQLite directory behind"
    );
}

#[test]
fn the_lock_works_across_processes() {
    let _turn = turn();
    let run = demo(&[
        "--processes",
        "3",
        "--users",
        "150",
        "--mode",
        "lock-around-tx",
        "--json",
    ]);
    assert!(run.status.success(), "{run:?}");
    let rows = run.rows();
    assert_eq!(rows.len(), 1, "{run:?}");
    assert_exact(row(&rows, "lock-around-tx"), 150);
}

/// With several `--redis`, every process takes the lock as a Redlock over them (the workers get
/// the same servers), and every like is counted once.
#[test]
fn the_lock_works_across_processes_on_a_redlock() {
    let _turn = turn();
    let masters = deadbolt_testkit::RedisMasters::start(3).unwrap();
    let mut args: Vec<String> = masters
        .urls()
        .into_iter()
        .flat_map(|url| ["--redis".to_owned(), url])
        .collect();
    args.extend(
        [
            "--processes",
            "2",
            "--users",
            "60",
            "--mode",
            "lock-around-tx",
            "--json",
        ]
        .map(str::to_owned),
    );
    let run = demo(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(run.status.success(), "{run:?}");
    let rows = run.rows();
    assert_eq!(rows.len(), 1, "{run:?}");
    assert_exact(row(&rows, "lock-around-tx"), 60);
}

#[test]
fn postgres_correct_modes_count_every_like_and_the_schema_is_dropped() {
    all_modes_on(
        Server::Postgres,
        &["lock-around-tx", "select-for-update", "pg-advisory-lock"],
    );
}

#[test]
fn mariadb_correct_modes_count_every_like_and_the_database_is_dropped() {
    all_modes_on(
        Server::Mysql,
        &["lock-around-tx", "select-for-update", "mysql-named-lock"],
    );
}

#[test]
fn bad_input_is_one_line_and_leaves_nothing_behind() {
    let _turn = turn();
    let before = sqlite_leftovers();

    let zero = demo(&["--users", "0"]).one_line_error();
    assert!(zero.contains("--users"), "{zero}");

    let oracle = demo(&["--database-url", "oracle://x"]).one_line_error();
    assert!(oracle.contains("oracle"), "{oracle}");

    let wrong_mode = demo(&["--mode", "pg-advisory-lock"]).one_line_error();
    assert!(wrong_mode.contains("sqlite"), "{wrong_mode}");

    let url = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
    let refused = demo(&["--users", "10", "--database-url", &url]).one_line_error();
    assert!(refused.contains("cannot connect to postgres"), "{refused}");

    // The SQLite file is made before Redis is tried: it must be gone again.
    let redis = format!("redis://127.0.0.1:{}", closed_port());
    let no_redis = demo(&["--users", "10", "--redis", &redis]).one_line_error();
    assert!(no_redis.contains("redis"), "{no_redis}");

    assert_eq!(
        sqlite_leftovers(),
        before,
        "a failed demo left its SQLite directory"
    );
}

#[test]
fn postgres_failures_after_connecting_leave_no_schema() {
    let _turn = turn();
    if !Server::Postgres.reachable() {
        return;
    }
    let before = Server::Postgres.leftovers();

    // Unreachable Redis: the schema already exists when Redis is tried.
    let redis = format!("redis://127.0.0.1:{}", closed_port());
    let url = Server::Postgres.url();
    let no_redis = demo(&["--users", "10", "--database-url", &url, "--redis", &redis]);
    let line = no_redis.one_line_error();
    assert!(line.contains("redis"), "{line}");

    // A session that logs in but may not create a schema: the same login, read-only. (A role
    // without rights would take CREATEROLE to make, which on PostgreSQL 15 can grant itself
    // pg_execute_server_program: more than a test login should hold.)
    let read_only = format!(
        "{url}{}options[default_transaction_read_only]=on",
        if url.contains('?') { '&' } else { '?' }
    );
    let line = demo(&["--users", "10", "--database-url", &read_only]).one_line_error();
    assert!(line.contains("cannot create schema"), "{line}");
    assert!(line.contains("read-only"), "{line}");

    assert_eq!(
        Server::Postgres.leftovers(),
        before,
        "a failed demo left its schema"
    );
}

/// `--processes 8` with the default `--pool 16` asks for 128 connections where Postgres allows
/// 100: the pools are sized to fit, with a note, instead of failing with "timed out"; and sqlx's
/// slow-statement warnings, with their colour codes, stay out of the output.
#[test]
fn postgres_pools_are_sized_to_the_connection_limit() {
    let _turn = turn();
    if !Server::Postgres.reachable() {
        return;
    }
    let max: i64 = Server::Postgres
        .with(async |conn| {
            sqlx::query_scalar("SELECT CAST(current_setting('max_connections') AS BIGINT)")
                .fetch_one(conn)
                .await
                .expect("max_connections")
        })
        .expect("the server answered a moment ago");
    // Enough processes that 16 connections each cannot fit.
    let processes = (max / 16 + 1).clamp(2, 32).to_string();
    let run = demo(&[
        "--users",
        "400",
        "--processes",
        &processes,
        "--mode",
        "lock-around-tx",
        "--json",
        "--database-url",
        &Server::Postgres.url(),
    ]);
    assert!(run.status.success(), "{run:?}");
    assert_exact(row(&run.rows(), "lock-around-tx"), 400);
    assert!(run.stderr.contains("would not fit"), "{run:?}");
    assert!(!run.stderr.contains("slow statement"), "{run:?}");
    assert!(!run.stderr.contains('\x1b'), "{run:?}");
}

/// Ctrl-C stops the demo with 130, after it removed its SQLite directory.
#[test]
fn interrupted_exits_130_and_leaves_nothing_behind() {
    let _turn = turn();
    let before = sqlite_leftovers();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deadbolt"))
        .args([
            "demo", "likes", "--users", "2000", "--think", "20ms", "--json",
        ])
        .env_remove("DEADBOLT_REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the deadbolt binary runs");
    // Running once its SQLite directory exists (and then for a moment).
    let started = Instant::now();
    while sqlite_leftovers() == before {
        assert!(started.elapsed() < DEMO_LIMIT, "the demo never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .ok();
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("deadbolt: interrupted"), "{stderr}");
    assert_eq!(
        sqlite_leftovers(),
        before,
        "the demo left its SQLite directory"
    );
}
