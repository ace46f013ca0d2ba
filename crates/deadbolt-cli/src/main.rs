//! `deadbolt`: distributed locks from the shell.
//!
//! - `deadbolt run --key NAME -- CMD ARGS…` runs a command while holding a lock: flock across
//!   machines.
//! - `deadbolt status NAME` shows whether a lock is held, its TTL and its fencing counter.
//! - `deadbolt bench` measures the lock against a raw `SET NX PX` floor.
//!
//! Without `--redis` (or `DEADBOLT_REDIS_URL`) each command starts a private `redis-server` on
//! a free loopback port for its own duration, and says so.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod embedded;
mod run;
mod status;

/// Distributed locks on Redis, from the shell.
#[derive(Debug, Parser)]
#[command(name = "deadbolt", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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
}

/// Where the Redis server is.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RedisArgs {
    /// Redis URL, e.g. redis://:password@10.0.0.5:6379/0 [default: a private redis-server
    /// started for this command]
    #[arg(long, env = "DEADBOLT_REDIS_URL", value_name = "URL")]
    pub(crate) redis: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DEADBOLT_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("deadbolt: cannot start the async runtime: {err}");
            return ExitCode::from(run::EXIT_INTERNAL);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(args).await,
            Command::Status(args) => status::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Bench(args) => bench::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Demo(args) => demo::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("deadbolt: {}", chain(&err));
            ExitCode::from(run::EXIT_INTERNAL)
        }
    }
}

/// An error and its causes on one line: "cannot connect to redis at 127.0.0.1:1: connection refused".
pub(crate) fn chain(err: &anyhow::Error) -> String {
    err.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
