//! `deadbolt demo likes`: why a lock must be taken *before* the transaction begins and given back
//! *after* it commits, shown on a real database.
//!
//! # The story
//!
//! A movie service keeps a denormalized `like_counts` on `movies`. A like is one transaction,
//! written as an ORM writes it ([`likes::like_in_tx`]): check the user has not liked the movie
//! (`movie_likes` holds one row per movie and user), read the movie, insert the like, update the
//! user's score for the movie's genre (`genre_scores`: read, then write), and write
//! `like_counts + 1`, computed in the application from the value it read. `--users` users (1000
//! by default) like the same movie at the same instant: every like is a task, and all of them wait
//! behind one barrier until the last is ready.
//!
//! The transaction is the same function in every mode; the modes differ only in what wraps it:
//!
//! | mode | around the transaction | expect |
//! |---|---|---|
//! | `no-lock` | nothing | lost updates, or errors (deadlock, serialization, busy) |
//! | `lock-inside-tx` | begin → deadbolt lock → work → **unlock → commit** | still below N: the next holder reads the count before this one commits |
//! | `lock-around-tx` | deadbolt lock → begin → work → commit → unlock, by `#[deadbolt::locked]` | exactly N |
//! | `select-for-update` | Postgres, MariaDB: the movie row `FOR UPDATE` first in the transaction | exactly N |
//! | `pg-advisory-lock` | Postgres: `pg_advisory_xact_lock(movie_id)` first in the transaction | exactly N |
//! | `mysql-named-lock` | MariaDB: `GET_LOCK` before begin, `RELEASE_LOCK` after commit | exactly N |
//!
//! Nothing is rigged: no mode gets a pause or a retry the others do not. `--think` adds the same
//! pause inside every transaction, between reading the movie and writing the count, for a machine
//! so fast that the race is hard to see; it is 0 by default and the header says when it is not.
//!
//! # What each database does without the lock
//!
//! - **Postgres** (READ COMMITTED): the `UPDATE` waits for the row lock of the transaction before
//!   it, then writes the count it computed from the old value: silent lost updates,
//!   `like_counts` far below `likes_rows`.
//! - **MariaDB** (InnoDB, REPEATABLE READ): the same lost updates; deadlocks can show up too.
//! - **SQLite** (WAL, `busy_timeout` 5 s) has one writer at a time, and a transaction that has
//!   read cannot wait to become the writer: when it tries to write while another transaction
//!   holds the write lock it gets `SQLITE_BUSY` at once (the busy handler is skipped, since
//!   waiting could deadlock), and when another writer committed since its read it gets
//!   `SQLITE_BUSY_SNAPSHOT`. SQLite refuses rather than loses: the failure shows as `busy` errors
//!   and `likes_rows` below N, with `like_counts` equal to `likes_rows`.
//!
//! With the lock inside the transaction, a like is lost when the next holder reads the count
//! before the previous holder's commit lands, so how many are lost depends on how long a commit
//! takes next to one lock hand-over (a Redis round trip): many on a server that flushes its log
//! slowly, a handful where commits are quick. It is a race, not a bug that shows every time, which
//! is why it survives testing.
//!
//! # Reading the table
//!
//! One row per mode, each run on a freshly reset movie: `expected` is the number of likes sent,
//! `like_counts` the movie's counter at the end, `likes_rows` the rows in `movie_likes` (the likes
//! that committed). `like_counts < likes_rows` means lost updates; `likes_rows < expected` means
//! failed likes, counted by kind in `errors`; `wall` runs from the start signal to the last like,
//! and `likes/s` is `likes_rows / wall`. The lock works when `lock-around-tx` shows N, N, none.
//!
//! # Isolation
//!
//! The demo works in its own schema (Postgres), database (MariaDB) or temporary file (SQLite),
//! and drops it at the end, also after an error or Ctrl-C; see [`db`].

mod db;
mod likes;
mod report;
mod tally;
mod worker;

use std::ops::RangeInclusive;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use tokio::sync::Barrier;
use tokio::time::Instant;

use self::db::{DbKind, DemoDb, Sql};
use self::likes::Likes;
use self::report::Row;
use self::tally::Tally;
use crate::connect::Topology;
use crate::embedded::PrivateTopologyArgs;
use crate::exit::{Interrupted, usage};

/// Options of `deadbolt demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: DemoCommand,
}

/// The demos.
#[derive(Debug, Subcommand)]
enum DemoCommand {
    /// N users like one movie at once: without a lock, with the lock inside the transaction, and
    /// with the lock around it
    Likes(LikesArgs),
    /// One worker process of `likes --processes` (started by it)
    #[command(hide = true)]
    LikesWorker(worker::WorkerArgs),
}

/// Options of `deadbolt demo likes`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
One row per mode: expected = likes sent, like_counts = the movie's counter at the end, \
likes_rows = likes that committed. like_counts < likes_rows means lost updates; likes_rows < \
expected means failed likes, by kind under errors. Exit status 0 when the demo ran (whatever \
the modes without a correct lock showed), 2 on bad input, 70 when a database or Redis failed, \
130 when interrupted (the demo's schema, database or file is dropped first).")]
pub(crate) struct LikesArgs {
    #[command(flatten)]
    redis: PrivateTopologyArgs,

    /// Users liking the movie at the same instant, one like each
    #[arg(long, value_name = "N", default_value_t = 1000)]
    users: u32,

    /// sqlite:PATH (a file that does not exist yet), postgres://USER@HOST/DB or
    /// mysql://USER@HOST/DB (MariaDB) [default: a SQLite file in a fresh temporary directory]
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,

    /// Mode to run; repeat for several [default: every mode the database has]
    #[arg(long = "mode", value_name = "MODE", value_enum, value_delimiter = ',')]
    modes: Vec<Mode>,

    /// OS processes to run the likers in, each with its own pool and deadbolt client
    #[arg(long, value_name = "P", default_value_t = 1)]
    processes: u32,

    /// Database connections per process; fewer, with a note, when the server's connection limit
    /// (max_connections, 100 by default on Postgres) would not hold them for every process
    #[arg(long, value_name = "N", default_value_t = 16)]
    pool: u32,

    /// The movie's id (also the lock name: movie-likes:ID)
    #[arg(long, value_name = "ID", default_value_t = 42)]
    movie: i64,

    /// A pause inside every transaction, in every mode alike, between reading the movie and
    /// writing its count
    #[arg(long, value_name = "DURATION", default_value = "0ms", value_parser = humantime::parse_duration)]
    think: Duration,

    /// Print one JSON object per mode per line instead of the table
    #[arg(long)]
    json: bool,
}

/// What wraps the one like transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Mode {
    /// begin → work → commit.
    NoLock,
    /// begin → deadbolt lock → work → unlock → commit (the wrong order).
    LockInsideTx,
    /// deadbolt lock → begin → work → commit → unlock.
    LockAroundTx,
    /// begin → `SELECT … FOR UPDATE` of the movie → work → commit (Postgres, MariaDB).
    SelectForUpdate,
    /// begin → `pg_advisory_xact_lock(movie)` → work → commit (Postgres).
    PgAdvisoryLock,
    /// `GET_LOCK` → begin → work → commit → `RELEASE_LOCK` (MariaDB).
    MysqlNamedLock,
}

impl Mode {
    /// The name on the command line, in the table and in `--json`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Mode::NoLock => "no-lock",
            Mode::LockInsideTx => "lock-inside-tx",
            Mode::LockAroundTx => "lock-around-tx",
            Mode::SelectForUpdate => "select-for-update",
            Mode::PgAdvisoryLock => "pg-advisory-lock",
            Mode::MysqlNamedLock => "mysql-named-lock",
        }
    }

    /// The modes `kind` has, in the order they run by default.
    fn available(kind: DbKind) -> &'static [Mode] {
        const DEADBOLT: [Mode; 3] = [Mode::NoLock, Mode::LockInsideTx, Mode::LockAroundTx];
        match kind {
            DbKind::Sqlite => &DEADBOLT,
            DbKind::Postgres => &[
                Mode::NoLock,
                Mode::LockInsideTx,
                Mode::LockAroundTx,
                Mode::SelectForUpdate,
                Mode::PgAdvisoryLock,
            ],
            DbKind::Mysql => &[
                Mode::NoLock,
                Mode::LockInsideTx,
                Mode::LockAroundTx,
                Mode::SelectForUpdate,
                Mode::MysqlNamedLock,
            ],
        }
    }
}

/// Runs `deadbolt demo …`.
///
/// # Errors
///
/// Bad input, or a database or Redis that failed; the demo's namespace is dropped first.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        DemoCommand::Likes(args) => likes(args).await.map(|()| ExitCode::SUCCESS),
        DemoCommand::LikesWorker(args) => {
            worker::run_worker(args).await.map(|()| ExitCode::SUCCESS)
        }
    }
}

/// Connects the one deadbolt client of a process.
///
/// # Errors
///
/// Redis is unreachable or refuses.
pub(crate) async fn connect_locks(redis: &Topology) -> anyhow::Result<deadbolt::Client> {
    redis.connect(redis.builder()).await
}

/// An error and its causes as one message, leaving out a cause whose text the message already
/// holds: sqlx and redis errors print their source in their own message too, so the usual
/// cause-by-cause line would say "connection refused" twice.
pub(crate) fn flat(err: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    anyhow::anyhow!(crate::exit::one_line(err))
}

/// `deadbolt demo likes`: checks the input, creates the namespace, runs, and drops the namespace
/// whatever happened.
async fn likes(args: LikesArgs) -> anyhow::Result<()> {
    // Everything that can be checked without a server is, before anything is created.
    if args.users == 0 {
        return Err(usage("--users must be at least 1"));
    }
    if args.processes == 0 || args.pool == 0 {
        return Err(usage("--processes and --pool must be at least 1"));
    }
    let kind = match &args.database_url {
        Some(url) => DbKind::of_url(url)?,
        None => DbKind::Sqlite,
    };
    let available = Mode::available(kind);
    let mut modes: Vec<Mode> = Vec::new();
    for mode in &args.modes {
        if !available.contains(mode) {
            return Err(usage(format!(
                "mode {} is not available on {}; its modes are {}",
                mode.name(),
                kind.name(),
                available
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if !modes.contains(mode) {
            modes.push(*mode);
        }
    }
    if modes.is_empty() {
        modes = available.to_vec();
    }

    // The database first, Redis second: a private redis-server announces itself on stderr, and
    // a database error should be the only line there.
    let db = DemoDb::create(args.database_url.as_deref()).await?;
    let outcome = tokio::select! {
        outcome = run_modes(&args, &db, &modes) => outcome,
        _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
    };
    let dropped = db
        .drop_namespace()
        .await
        .with_context(|| format!("cannot drop the demo's {}", db.namespace));
    outcome.and(dropped)
}

/// Everything a mode's run needs, set up once.
#[derive(Debug)]
struct Setup<'a> {
    args: &'a LikesArgs,
    db: &'a DemoDb,
    /// The Redis servers of every process.
    redis: Topology,
    /// This process's likers (with one process) and the pool that resets and counts.
    likes: Arc<Likes>,
    /// Database connections per liker process: `--pool`, or fewer to fit the server's limit.
    pool: u32,
}

/// Connects Redis, runs every mode and prints a row for each.
async fn run_modes(args: &LikesArgs, db: &DemoDb, modes: &[Mode]) -> anyhow::Result<()> {
    // Kept to the end: a private redis-server stops when its target is dropped.
    let target = args.redis.target()?;
    let locks = connect_locks(&target.topology).await?;
    let pool = fit_pool(args, db, db.connection_budget().await?)?;
    // With worker processes, this pool only resets and counts.
    let pool_size = if args.processes == 1 { pool } else { 1 };
    let setup = Setup {
        args,
        db,
        redis: target.topology.clone(),
        likes: Arc::new(Likes {
            db: db.pool(pool_size).await?,
            locks,
            sql: Sql::new(db.kind),
            think: args.think,
        }),
        pool,
    };
    if !args.json {
        print_header(args, db, &target, pool);
        println!("{}", report::table_header());
    }
    let mut rows = Vec::new();
    for &mode in modes {
        let row = run_mode(&setup, mode).await?;
        if args.json {
            println!("{}", row.json());
        } else {
            println!("{}", report::table_row(&row));
        }
        rows.push(row);
    }
    if !args.json {
        println!();
        println!("{}", report::LEGEND);
        for row in &rows {
            if let Some(message) = &row.tally.first_other {
                println!("first `other` error in {}: {message}", row.mode.name());
            }
        }
        if let Some(row) = rows.iter().find(|row| row.mode == Mode::LockAroundTx) {
            let verdict = if row.exact() {
                "every like counted once"
            } else {
                "NOT exact: see the errors"
            };
            println!(
                "lock-around-tx: {}/{} counted, {}/{} rows: {verdict}",
                row.like_counts, row.expected, row.likes_rows, row.expected
            );
        }
    }
    setup.likes.db.close().await;
    drop(target);
    Ok(())
}

/// Connections left free on a database server for everyone else (an admin's psql, monitoring).
const HEADROOM: i64 = 5;

/// The database connections each liker process may open: `--pool`, or fewer when the server's
/// limit would not hold `--processes` × `--pool` (pools that cannot open their connections
/// would fail with a bare "timed out").
///
/// # Errors
///
/// The server does not have even one connection per process to spare.
fn fit_pool(args: &LikesArgs, db: &DemoDb, budget: Option<db::Budget>) -> anyhow::Result<u32> {
    let Some(budget) = budget else {
        return Ok(args.pool);
    };
    // With worker processes the parent keeps one connection of its own to reset and count.
    let parent = i64::from(args.processes > 1);
    let free = budget.max - budget.in_use - HEADROOM - parent;
    let per_process = (free / i64::from(args.processes)).clamp(0, i64::from(args.pool));
    let limit = format!(
        "{} at {} allows {} connections and {} are in use",
        db.kind.name(),
        db.shown,
        budget.max,
        budget.in_use
    );
    if per_process == 0 {
        bail!(
            "{limit}: not even one per process for {} processes (keeping {HEADROOM} free); \
             lower --processes, or raise the server's max_connections",
            args.processes
        );
    }
    let per_process = per_process as u32;
    if per_process < args.pool {
        eprintln!(
            "deadbolt: demo: {limit}: {} × --pool {} would not fit (keeping {HEADROOM} free), so \
             each process gets {per_process} connections",
            args.processes, args.pool
        );
    }
    Ok(per_process)
}

/// The lines above the table: what runs where.
fn print_header(args: &LikesArgs, db: &DemoDb, target: &crate::embedded::Target, pool: u32) {
    let where_db = match db.kind {
        DbKind::Sqlite => format!(
            "sqlite, {} (WAL, busy_timeout {:?})",
            db.shown,
            db::SQLITE_BUSY_TIMEOUT
        ),
        _ => format!("{}, {} in {}", db.kind.name(), db.namespace, db.shown),
    };
    let where_redis = match &target.server {
        Some(server) => format!("a private redis-server on {}", server.addr()),
        None => target.topology.describe(),
    };
    let processes = match args.processes {
        1 => "1 process".to_owned(),
        p => format!("{p} processes"),
    };
    let think = if args.think.is_zero() {
        "no pause inside the transaction".to_owned()
    } else {
        format!(
            "--think {}: the same pause in every mode's transaction, between reading the movie \
             and writing its count",
            humantime::format_duration(args.think)
        )
    };
    println!(
        "{} users like movie {} at the same instant, once per mode",
        args.users, args.movie
    );
    println!("  database: {where_db}");
    println!(
        "  redis:    {where_redis} (lock movie-likes:{})",
        args.movie
    );
    println!("  likers:   {processes}, {pool} database connections each; {think}");
    println!();
}

/// Resets the movie, runs one mode's likes (here or in worker processes), and reads the result.
async fn run_mode(setup: &Setup<'_>, mode: Mode) -> anyhow::Result<Row> {
    let args = setup.args;
    let likes = &setup.likes;
    db::reset(&likes.db, &likes.sql, args.movie)
        .await
        .context("cannot reset the demo's tables")?;
    let users: RangeInclusive<i64> = 1..=i64::from(args.users);
    let progress = report::progress_bar(mode, u64::from(args.users), args.json);
    let (tally, wall) = if args.processes == 1 {
        in_process(likes.clone(), mode, args.movie, users, &progress).await
    } else {
        let spawn = worker::Spawn {
            db: setup.db,
            redis: &setup.redis,
            mode,
            movie: args.movie,
            users,
            processes: args.processes,
            pool: setup.pool,
            think: args.think,
        };
        let ran = worker::run_processes(spawn, &progress).await;
        progress.finish_and_clear();
        ran?
    };
    progress.finish_and_clear();
    let (like_counts, likes_rows) = db::final_counts(&likes.db, &likes.sql, args.movie)
        .await
        .context("cannot read the final counts")?;
    Ok(Row {
        mode,
        database: setup.db.kind,
        expected: u64::from(args.users),
        like_counts,
        likes_rows,
        tally,
        wall,
    })
}

/// Runs the likes in this process: one task per user, released together.
async fn in_process(
    likes: Arc<Likes>,
    mode: Mode,
    movie: i64,
    users: RangeInclusive<i64>,
    progress: &indicatif::ProgressBar,
) -> (Tally, Duration) {
    let start = Arc::new(Barrier::new(users.clone().count() + 1));
    let bar = progress.clone();
    // In a JoinSet, so that dropping this future (Ctrl-C) aborts the likers and their open
    // transactions roll back before the namespace is dropped.
    let mut run = tokio::task::JoinSet::new();
    run.spawn(likes.run(mode, movie, users, start.clone(), move || bar.inc(1)));
    start.wait().await;
    let started = Instant::now();
    let tally = match run.join_next().await {
        Some(Ok(tally)) => tally,
        Some(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        // Cancelled: only when the runtime shuts down, and then nobody reads the tally.
        _ => Tally::default(),
    };
    (tally, started.elapsed())
}
