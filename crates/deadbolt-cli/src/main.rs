//! `deadbolt`: distributed locks from the shell.
//!
//! - `deadbolt run --key NAME -- CMD ARGS…` runs a command while holding a lock: flock across
//!   machines.
//! - `deadbolt status NAME` shows whether a lock is held, its TTL and its fencing counter.
//! - `deadbolt bench` measures the lock against a raw `SET NX PX` floor.
//! - `deadbolt demo likes` shows, on a real database, why the lock goes around the transaction.
//! - `deadbolt check` runs a recorded workload (under injected faults, on private servers) and
//!   checks that no two holders ever believed they held one lock.
//!
//! `run` and `status` use the Redis of `--redis` (or `DEADBOLT_REDIS_URL`), by default
//! `redis://127.0.0.1:6379` as `redis-cli` does, and fail when nothing answers there. Several
//! `--redis` (with `demo likes` too) make a Redlock over them, or with `--sharded` spread the
//! locks over them (see [`connect::Topology`]). `bench` and `demo` start a private
//! `redis-server` when no URL is given, and say so; `bench`'s Redlock workloads start five.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod bench;
mod check;
mod connect;
mod demo;
mod embedded;
mod exit;
mod human;
mod run;
mod status;

/// How long, at most, clean-ups the library left running may take before the process exits,
/// after a command dropped lock state midway (an error, a signal).
const DRAIN: Duration = Duration::from_secs(2);
/// How long a command that finished everything it started still lets stray clean-ups run:
/// enough for a release on a nearby server, short enough not to be noticed.
const SETTLE: Duration = Duration::from_millis(20);

/// Distributed locks on Redis, from the shell.
#[derive(Debug, Parser)]
#[command(name = "deadbolt", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The text under `deadbolt --help`.
const AFTER_HELP: &str = "\
Environment:
  DEADBOLT_REDIS_URL  the Redis URL when no --redis, --cluster or --sentinel is given, or a
                      comma-separated list (a Redlock, as several --redis); run and status
                      default to
                      redis://127.0.0.1:6379 (as redis-cli), bench and demo start a private
                      redis-server
  DEADBOLT_LOG        what to log on stderr, as a tracing filter: warn (the default), info,
                      debug, deadbolt=debug, …
  NO_COLOR            when set, log lines have no colours (they only get colours on a terminal)

Exit status: 0 on success; 2 for a usage error (an unknown option, a bad value); 70 when deadbolt
failed (Redis unreachable or refusing, a database failing); 130 when interrupted with Ctrl-C.
`deadbolt run` exits with the command's status, or 75 and 76: see `deadbolt run --help`.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a command while holding a lock, renewing it; flock across machines
    Run(run::Args),
    /// Show whether a lock is held, its TTL and its fencing counter
    Status(status::Args),
    /// Measure lock throughput and latency against a raw SET NX PX floor
    Bench(bench::Args),
    /// Demonstrations on a real database: `deadbolt demo likes`
    Demo(demo::Args),
    /// Prove a deployment never lets two holders hold one lock: a recorded workload, checked
    Check(check::Args),
}

fn main() -> ExitCode {
    // Usage errors exit 2 here, as documented.
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("deadbolt: cannot start the async runtime: {err}");
            return ExitCode::from(exit::EXIT_INTERNAL);
        }
    };
    // The command runs on this (the main) thread: `run` forks its command from here, which ties
    // the command's parent-death signal to a thread that lives as long as the process.
    let result = runtime.block_on(async {
        let result = match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Status(args) => status::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => bench::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Demo(args) => demo::run(args).await,
            Command::Check(args) => check::run(args).await.map(|ok| match ok {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            }),
        };
        // Every client is dropped by now, but clean-ups it spawned may still be on their way to
        // Redis: the release of an acquisition abandoned on a signal, a dropped guard's release.
        // A runtime shutting down cancels its tasks, so let them land first. (The wait ends as
        // soon as no task is left; a client's idle heartbeat can outlive it by up to a second,
        // and while Redis is down its reconnection attempts never end, which is why a clean exit
        // does not wait for the full limit.) A caller's deadline (`run --wait`) bounds the wait
        // too: past it, the lease releases what a clean-up could not.
        let mut limit = if result.is_err() || exit::was_abandoned() {
            DRAIN
        } else {
            SETTLE
        };
        if let Some(deadline) = exit::deadline() {
            limit = limit.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(SETTLE),
            );
        }
        drain_tasks(limit).await;
        result
    });
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("deadbolt: {}", exit::chain(&err));
            exit::code_of(&err)
        }
    }
}

/// Waits until no task is left on the runtime, or `limit` has passed.
async fn drain_tasks(limit: Duration) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let start = Instant::now();
    while metrics.num_alive_tasks() > 0 && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What is logged without `DEADBOLT_LOG`.
const DEFAULT_LOG: &str = "warn,sqlx=error";

/// Logs go to stderr, filtered by `DEADBOLT_LOG` (default: warnings, and only errors from sqlx,
/// whose statement logs would land in the middle of the demo's table), with colours only on a
/// terminal and without `NO_COLOR`.
fn init_logging() {
    let filter = match std::env::var("DEADBOLT_LOG") {
        Ok(spec) if !spec.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&spec)
            .unwrap_or_else(|err| {
                eprintln!("deadbolt: warning: ignoring DEADBOLT_LOG=`{spec}`: {err}");
                DEFAULT_LOG.into()
            }),
        _ => DEFAULT_LOG.into(),
    };
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .init();
}
