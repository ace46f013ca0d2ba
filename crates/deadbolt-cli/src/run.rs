//! `deadbolt run`: run a command while holding a lock, like `flock`, across machines.

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use deadbolt::{Client, Error, ReleaseOutcome};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::Command;
use tokio::signal::unix::{SignalKind, signal};

use crate::RedisArgs;

/// Exit code when the lock was not acquired within `--wait` (`EX_TEMPFAIL`; `flock -E` style).
pub(crate) const EXIT_NOT_ACQUIRED: u8 = 75;
/// Exit code when the lock was lost while the command ran (the command was stopped).
pub(crate) const EXIT_LOCK_LOST: u8 = 76;
/// Exit code for deadbolt's own failures: Redis unreachable, bad arguments, spawn failure.
pub(crate) const EXIT_INTERNAL: u8 = 70;

/// Options of `deadbolt run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: the command's own (128+N if killed by signal N); 75 if the lock was not acquired \
within --wait (see --conflict-exit-code); 76 if the lock was lost while the command ran (it was \
sent SIGTERM, then SIGKILL after --grace); 70 if deadbolt itself failed (Redis unreachable, \
command not found).")]
pub(crate) struct Args {
    #[command(flatten)]
    redis: RedisArgs,
    /// The lock name
    #[arg(long, short)]
    key: String,
    /// How long to wait for the lock
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// The lease the watchdog keeps renewing, every third of it; if deadbolt dies, the lock
    /// expires this long after the last renewal
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How long the command may take to exit after SIGTERM when the lock is lost, before SIGKILL
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Put the fencing token in the command's environment, in variable VAR
    #[arg(long, value_name = "VAR", num_args = 0..=1, default_missing_value = "DEADBOLT_FENCE")]
    fence_env: Option<String>,
    /// Exit code when the lock is not acquired within --wait
    #[arg(long, default_value_t = EXIT_NOT_ACQUIRED, value_name = "CODE")]
    conflict_exit_code: u8,
    /// Key prefix of the lock's Redis keys
    #[arg(long, default_value = "deadbolt")]
    key_prefix: String,
    /// The command and its arguments
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Runs `deadbolt run`, returning the exit code to leave with.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = args.redis.target()?;
    let client = Client::builder(&target.url)
        .key_prefix(&args.key_prefix)
        .connect()
        .await?;
    // Fenced: every run gets a token (shown by `status`, passed with --fence-env) at no extra
    // round trip.
    let builder = client
        .lock(args.key.as_str())
        .wait(args.wait)
        .watchdog(args.lease)
        .fenced();
    let guard = match builder.acquire().await {
        Ok(guard) => guard,
        Err(err @ Error::Timeout { .. }) => {
            eprintln!("deadbolt: {err}");
            return Ok(ExitCode::from(args.conflict_exit_code));
        }
        Err(err) => return Err(err.into()),
    };

    let mut command = Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    if let Some(var) = &args.fence_env {
        command.env(var, guard.fencing_token().await?.to_string());
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            let _ = guard.release().await;
            return Err(err)
                .with_context(|| format!("cannot run {}", args.command[0].to_string_lossy()));
        }
    };
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            // Passed on, so the command can finish its work and exit; the lock is released then.
            _ = sigterm.recv() => forward(pid, Signal::SIGTERM),
            _ = sigint.recv() => forward(pid, Signal::SIGINT),
            _ = guard.lost() => {
                eprintln!(
                    "deadbolt: lock `{}` was lost; stopping the command (SIGTERM, SIGKILL after {})",
                    args.key,
                    humantime::format_duration(args.grace)
                );
                forward(pid, Signal::SIGTERM);
                if tokio::time::timeout(args.grace, child.wait()).await.is_err() {
                    forward(pid, Signal::SIGKILL);
                    child.wait().await?;
                }
                // Nothing to release: the lock is gone or someone else's.
                let _ = guard.release().await;
                return Ok(ExitCode::from(EXIT_LOCK_LOST));
            }
        }
    };

    match guard.release().await {
        Ok(ReleaseOutcome::Released) => {}
        Ok(outcome) => eprintln!(
            "deadbolt: lock `{}` had expired before the command ended ({outcome:?})",
            args.key
        ),
        Err(err) => eprintln!(
            "deadbolt: cannot release lock `{}` ({}); it expires within {}",
            args.key,
            crate::chain(&err.into()),
            humantime::format_duration(args.lease)
        ),
    }
    drop(target);
    Ok(exit_code(status))
}

fn forward(pid: Option<Pid>, sig: Signal) {
    if let Some(pid) = pid {
        let _ = kill(pid, sig);
    }
}

/// The command's exit code, or 128 + N when signal N ended it, as shells report it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        (None, None) => ExitCode::from(EXIT_INTERNAL),
    }
}
