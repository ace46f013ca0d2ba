//! `--processes P`: the likers in P separate OS processes, to show the lock works across them.
//!
//! The parent re-runs its own binary as `deadbolt demo likes-worker …` (a hidden subcommand), once
//! per process, each with a share of the user ids. A worker opens its own database pool and its
//! own deadbolt client, as a separate service instance would, and talks over its standard streams:
//!
//! ```text
//! worker → parent   ready                      connected; its likers wait at the start line
//! parent → worker   go                         sent to every worker once all are ready
//! worker → parent   +                          one line per finished like (progress)
//! worker → parent   {"ok":…,"errors":{…},…}    its tally, last
//! ```
//!
//! A worker whose parent goes away sees its standard input close and stops; the parent kills its
//! workers when it stops early (`kill_on_drop`).

use std::io::Write as _;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::Barrier;
use tokio::time::Instant;

use super::db::{DbKind, DemoDb, Sql};
use super::likes::Likes;
use super::tally::Tally;
use super::{Mode, connect_locks};
use crate::connect::Topology;

/// How long the parent waits for a worker to connect and say `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Options of the hidden `deadbolt demo likes-worker`, set by the parent.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkerArgs {
    /// The database URL the parent's pools use
    #[arg(long)]
    database_url: String,
    /// The schema or database the parent created ("" for SQLite)
    #[arg(long, default_value = "")]
    namespace: String,
    /// The Redis servers the parent uses
    #[arg(long, required_unless_present = "cluster")]
    redis: Vec<String>,
    /// Whether they are sharded rather than a Redlock
    #[arg(long)]
    sharded: bool,
    /// The Redis Cluster nodes the parent uses
    #[arg(long)]
    cluster: Vec<String>,
    /// The mode to run
    #[arg(long, value_enum)]
    mode: Mode,
    /// The movie
    #[arg(long)]
    movie: i64,
    /// The first user id of this worker's share
    #[arg(long)]
    first_user: i64,
    /// The last user id of this worker's share
    #[arg(long)]
    last_user: i64,
    /// Database connections of this worker
    #[arg(long)]
    pool: u32,
    /// The pause inside every transaction
    #[arg(long, value_parser = humantime::parse_duration)]
    think: Duration,
}

/// Runs one worker: connect, say `ready`, wait for `go`, run the likes, print the tally.
///
/// # Errors
///
/// The database or Redis could not be reached, or the parent did not say `go`.
pub(crate) async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let kind = DbKind::of_url(&args.database_url)?;
    let db = DemoDb::existing(kind, &args.database_url, &args.namespace);
    let pool = db.pool(args.pool).await?;
    let locks = connect_locks(&Topology::from_flags(
        &args.redis,
        args.sharded,
        &args.cluster,
        None,
    )?)
    .await?;
    let likes = Arc::new(Likes {
        db: pool,
        locks,
        sql: Sql::new(kind),
        think: args.think,
    });
    let users = args.first_user..=args.last_user;
    let start = Arc::new(Barrier::new(users.clone().count() + 1));
    let run = tokio::spawn(likes.run(args.mode, args.movie, users, start.clone(), || {
        // Progress for the parent's bar; `println!` flushes each line.
        println!("+");
    }));
    println!("ready");
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .context("cannot read the parent's go")?;
    if line.trim() != "go" {
        bail!("the parent went away before the start");
    }
    start.wait().await;
    let tally = run.await.context("the likers failed")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", tally.to_json())?;
    out.flush()?;
    Ok(())
}

/// What the parent needs to start workers.
#[derive(Debug)]
pub(crate) struct Spawn<'a> {
    /// The demo's database.
    pub(crate) db: &'a DemoDb,
    /// The Redis servers every process uses.
    pub(crate) redis: &'a Topology,
    /// The mode.
    pub(crate) mode: Mode,
    /// The movie.
    pub(crate) movie: i64,
    /// All user ids, split over the workers.
    pub(crate) users: RangeInclusive<i64>,
    /// Number of worker processes.
    pub(crate) processes: u32,
    /// Connections per worker.
    pub(crate) pool: u32,
    /// The pause inside every transaction.
    pub(crate) think: Duration,
}

/// One running worker, as the parent sees it.
#[derive(Debug)]
struct Worker {
    child: Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// Everything it writes to stderr, read as it comes so a chatty worker never blocks on a
    /// full pipe.
    stderr: tokio::task::JoinHandle<String>,
}

impl Worker {
    /// What the worker said on stderr, as the reason it failed (without its `deadbolt: `).
    async fn failure(&mut self, index: usize) -> anyhow::Error {
        let text = (&mut self.stderr).await.unwrap_or_default();
        let status = self.child.wait().await.ok();
        // Its own one-line error if it wrote one; otherwise (a panic) all it said, on one line.
        let reason = match text
            .lines()
            .rev()
            .find(|line| line.starts_with("deadbolt: "))
        {
            Some(line) => line.trim_start_matches("deadbolt: ").to_owned(),
            None if !text.trim().is_empty() => text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" "),
            None => format!("exited with {status:?}"),
        };
        anyhow::anyhow!("worker process {index} failed: {reason}")
    }
}

/// Reads a worker's stderr to the end in the background.
fn drain(stderr: Option<ChildStderr>) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text).await;
        }
        text
    })
}

/// Runs one mode's likes in worker processes; returns the summed tally and the wall time from the
/// `go` to the last worker's tally.
///
/// # Errors
///
/// A worker could not be started, failed, or did not answer in time.
pub(crate) async fn run_processes(
    spawn: Spawn<'_>,
    progress: &ProgressBar,
) -> anyhow::Result<(Tally, Duration)> {
    let exe: PathBuf = std::env::current_exe().context("cannot find this program's own path")?;
    let first = *spawn.users.start();
    let total = spawn.users.clone().count() as i64;
    let processes = i64::from(spawn.processes);
    let mut workers = Vec::new();
    for index in 0..processes {
        // Contiguous shares; the first `total % processes` workers take one user more.
        let share = total / processes + i64::from(index < total % processes);
        let before = index * (total / processes) + index.min(total % processes);
        if share == 0 {
            continue;
        }
        let mut child = Command::new(&exe)
            .args(["demo", "likes-worker", "--database-url", &spawn.db.url])
            .args(["--namespace", &spawn.db.namespace])
            .args(spawn.redis.to_args())
            .args(["--mode", spawn.mode.name()])
            .args(["--movie", &spawn.movie.to_string()])
            .args(["--first-user", &(first + before).to_string()])
            .args(["--last-user", &(first + before + share - 1).to_string()])
            .args(["--pool", &spawn.pool.to_string()])
            .args(["--think", &format!("{}us", spawn.think.as_micros())])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start worker process {}", exe.display()))?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let stderr = drain(child.stderr.take());
        workers.push(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr,
        });
    }
    for (index, worker) in workers.iter_mut().enumerate() {
        let line = tokio::time::timeout(READY_TIMEOUT, worker.lines.next_line()).await;
        match line {
            Ok(Ok(Some(line))) if line == "ready" => {}
            Ok(_) => return Err(worker.failure(index).await),
            Err(_) => bail!("worker process {index} was not ready within {READY_TIMEOUT:?}"),
        }
    }
    let started = Instant::now();
    for worker in &mut workers {
        let stdin = worker.child.stdin.as_mut().context("worker stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
    }
    let mut readers = tokio::task::JoinSet::new();
    for (index, mut worker) in workers.into_iter().enumerate() {
        let progress = progress.clone();
        readers.spawn(async move {
            while let Some(line) = worker.lines.next_line().await? {
                if line == "+" {
                    progress.inc(1);
                    continue;
                }
                let tally = serde_json::from_str(&line)
                    .ok()
                    .and_then(|value| Tally::from_json(&value));
                let Some(tally) = tally else {
                    bail!("worker process {index} said `{line}`");
                };
                let done = started.elapsed();
                // Pass on what it logged (deadbolt warnings), then let it exit.
                worker.child.wait().await?;
                eprint!("{}", (&mut worker.stderr).await.unwrap_or_default());
                return Ok((tally, done));
            }
            Err(worker.failure(index).await)
        });
    }
    let mut sum = Tally::default();
    let mut wall = Duration::ZERO;
    while let Some(joined) = readers.join_next().await {
        let (tally, done) = joined.context("a worker reader panicked")??;
        sum.merge(tally);
        wall = wall.max(done);
    }
    Ok((sum, wall))
}
