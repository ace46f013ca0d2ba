//! `deadbolt run`: run a command while holding a lock, like `flock`, across machines.
//!
//! The lock is taken, the command started in a process group of its own (see [`child`]), and
//! the lock renewed until the command exits, then released. If the lock is lost meanwhile, the
//! whole group is stopped and deadbolt exits 76, never before the group is gone.

mod child;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use deadbolt::{Error, LockGuard, LostReason, ReleaseOutcome};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

use self::child::Supervised;
use crate::connect::{self, RedisArgs};
use crate::exit::{EXIT_LOCK_LOST, EXIT_NOT_ACQUIRED};
use crate::human;

/// Options of `deadbolt run`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Exit status: the command's own (128+N if killed by signal N), also when the lock expired after \
the command ended but before deadbolt could tell (say, while deadbolt was stopped); 75 if the \
lock was not acquired within --wait (see --conflict-exit-code); 76 if the lock was lost while \
the command ran, or could no longer be confirmed held (no renewal confirmed in time); 70 if \
deadbolt itself failed (Redis unreachable or refusing, command not found); 2 for a usage error; \
128+N if signal N arrived while waiting for the lock.

Several --redis make the lock a Redlock: taken on all the servers at once and held while a \
majority of them grant it, within its lease less the time taking it took; a minority may fail or \
lose the lock while the command runs. A majority must answer when deadbolt starts (70 names \
those that do not; a minority that is down joins when it answers), and every client of a lock \
must list the same servers. With --sharded, each lock lives on one of the servers instead, \
chosen by its name. --cluster URL takes locks on a Redis Cluster (each on the master of its hash \
slot); --sentinel HOST:PORT[,HOST:PORT]/MASTER on the master a set of Sentinels watches, \
following a failover.

The command runs in a process group of its own, as with timeout(1). SIGHUP, SIGINT, SIGQUIT \
and SIGTERM sent to deadbolt are passed on to the whole group. When the lock is lost, the group \
gets SIGTERM, then SIGKILL after --grace, and deadbolt exits 76 only once no process of the group \
is left. If deadbolt is killed with SIGKILL, the command gets SIGKILL from the kernel \
(parent-death signal).

What this cannot cover: processes that leave the group (setsid, daemons) are not signalled; \
after a SIGKILL of deadbolt only the command itself gets the parent-death signal, not its own \
children; a stopped (SIGSTOP) deadbolt stops nothing while the lease runs out; and, outside the \
terminal's foreground group, the command gets Ctrl-C through deadbolt and cannot read from the \
terminal. A lock cannot stop a process that is paused or cut off: pass the fencing token \
(--fence-env) to the resource you write, and let it refuse a stale token.")]
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
    /// How long the command's process group may take to exit after SIGTERM when the lock is
    /// lost, before SIGKILL
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Put the fencing token in the command's environment, in variable VAR (DEADBOLT_FENCE when
    /// no VAR is given); not one the command needs, such as PATH or HOME
    #[arg(
        long,
        value_name = "VAR",
        num_args = 0..=1,
        default_missing_value = FENCE_ENV,
        value_parser = fence_env_name,
    )]
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

/// The variable `--fence-env` without a name puts the fencing token in.
const FENCE_ENV: &str = "DEADBOLT_FENCE";

/// Variables the token must not replace: the command, or the programs it starts, need them
/// (where to find programs, whose they are and where they live, what shell splits words on or
/// sources at start, which libraries the loader puts in).
const NEEDED: [&str; 11] = [
    "PATH", "HOME", "SHELL", "USER", "LOGNAME", "PWD", "TMPDIR", "TERM", "IFS", "ENV", "BASH_ENV",
];

/// A `--fence-env` name: a variable name as the shell takes it (`[A-Za-z_][A-Za-z0-9_]*`), and
/// not one the command needs ([`NEEDED`], `LD_*`) nor one of deadbolt's own (`DEADBOLT_*` other
/// than [`FENCE_ENV`]), which a deadbolt run by the command would read.
fn fence_env_name(name: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(
            "not a variable name: letters, digits and _, not starting with a digit".to_owned(),
        );
    }
    if NEEDED.contains(&name) || name.starts_with("LD_") {
        return Err(format!(
            "the command needs {name}, which the fencing token would replace; pick another \
             name, such as {FENCE_ENV}"
        ));
    }
    if name.starts_with("DEADBOLT_") && name != FENCE_ENV {
        return Err(format!(
            "DEADBOLT_ variables are deadbolt's own settings (DEADBOLT_REDIS_URL, DEADBOLT_LOG), \
             which a deadbolt run by the command would read; only {FENCE_ENV}, the default, is \
             free"
        ));
    }
    Ok(name.to_owned())
}

/// Connects to the lock's servers. Behind Sentinels, the master they name may be down while
/// they fail over (a new master is named within seconds): a master that does not answer is
/// asked for again until `deadline`, so the wait covers the failover. Elsewhere, a server that
/// does not answer fails at once (70): nothing names another one.
async fn connect_within(
    redis: &connect::Topology,
    prefix: &str,
    deadline: Option<Instant>,
) -> anyhow::Result<deadbolt::Client> {
    let sentinel = redis.nodes()[0].url.starts_with("redis+sentinel://");
    while sentinel && deadline.is_some_and(|d| Instant::now() + SENTINEL_RETRY < d) {
        match redis.builder().key_prefix(prefix).connect().await {
            Ok(client) => return Ok(client),
            Err(Error::Connect { .. } | Error::Unavailable { .. }) => {
                tokio::time::sleep(SENTINEL_RETRY).await;
            }
            // Wrong credentials, an unknown master name: asking again will not help.
            Err(_) => break,
        }
    }
    // Once more, with the error explained.
    redis.client(prefix).await
}

/// How often a master the Sentinels name is tried again while it does not answer.
const SENTINEL_RETRY: Duration = Duration::from_millis(200);

/// Runs `deadbolt run`, returning the exit code to leave with.
///
/// # Errors
///
/// Redis is unreachable or refuses, the command cannot be started, or waiting for it failed.
pub(crate) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Taken over first: from here on these signals no longer kill deadbolt (which would leave
    // the command running, or a lock behind); before the command runs they end the wait, then
    // they are passed on to the command's group.
    let mut signals = Signals::new()?;
    // --wait bounds the whole wait, the clean-up of a failed or interrupted one included. (A
    // wait too long for the clock is refused by the library, as any wait over a day.)
    crate::exit::set_deadline(Instant::now().checked_add(args.wait));
    let redis = args.redis.resolve()?;
    let deadline = Instant::now().checked_add(args.wait);
    let waiting = async {
        let client = connect_within(&redis, &args.key_prefix, deadline).await?;
        // Fenced: every run gets a token (shown by `status`, passed with --fence-env) at no
        // extra round trip.
        let acquire = client
            .lock(args.key.as_str())
            .wait(args.wait)
            .watchdog(args.lease)
            .fenced()
            .acquire()
            .await;
        match acquire {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::Timeout { name, waited }) => {
                eprintln!(
                    "deadbolt: timed out after {} waiting for lock `{name}`",
                    human::duration(waited)
                );
                Ok(None)
            }
            // Only a lock seen held for the whole wait is contention (75); a Redis that went
            // away or never answered is a failure (70).
            Err(err) => Err(connect::explain_on(&redis, &client, err).await),
        }
    };
    let guard = tokio::select! {
        acquired = waiting => match acquired? {
            Some(guard) => {
                // The wait is over: what follows is bounded by the command, not by --wait.
                crate::exit::set_deadline(None);
                guard
            }
            None => return Ok(ExitCode::from(args.conflict_exit_code)),
        },
        sig = signals.recv() => {
            // The acquisition in flight is dropped: its clean-up runs in the background.
            crate::exit::abandoned();
            eprintln!(
                "deadbolt: {} while waiting for lock `{}`; the command was not run",
                sig.as_str(),
                args.key
            );
            return Ok(ExitCode::from(128 + sig as u8));
        }
    };

    let env = match args.fence_env.as_deref() {
        // Minted with the acquisition: no round trip, and it cannot fail but on a lost lock.
        Some(var) => match guard.fencing_token().await {
            Ok(token) => Some((var, token.to_string())),
            Err(err) => {
                let _ = guard.release().await;
                return Err(redis.explain(err));
            }
        },
        None => None,
    };
    let mut command = match child::spawn(&args.command, env) {
        Ok(command) => command,
        Err(err) => {
            let _ = guard.release().await;
            return Err(err)
                .with_context(|| format!("cannot run {}", args.command[0].to_string_lossy()));
        }
    };

    let status = loop {
        tokio::select! {
            // The command's exit first: when it ended while deadbolt could not run (stopped,
            // starved) and the lease ran out meanwhile, both are ready at once, and the
            // command's status is the truth about the command.
            biased;
            status = command.child.wait() => break status?,
            // Passed on, so the command can finish its work and exit; the lock is released then.
            sig = signals.recv() => command.signal(sig),
            () = guard.lost() => {
                if let Some(status) = command.child.try_wait()? {
                    break status;
                }
                return stop_on_loss(&args, guard, command).await;
            }
        }
    };

    if !command.left().is_empty() {
        eprintln!(
            "deadbolt: warning: the command exited but left processes of its group running \
             ({}); they run on without the lock",
            command.describe_left()
        );
    }
    release(&args, guard).await;
    Ok(exit_code(status))
}

/// Why deadbolt can no longer vouch for a lock that is not known to be lost: its validity
/// (counted from the last renewal Redis confirmed) ran out. The key may well still be ours; only
/// Redis can tell.
const UNCONFIRMED: &str = "no renewal was confirmed before its validity ran out: Redis answered \
                           late or not at all, or deadbolt was paused";

/// The lock is lost, or can no longer be confirmed held, while the command runs: stop its whole
/// group, then exit 76.
async fn stop_on_loss(
    args: &Args,
    guard: LockGuard,
    mut command: Supervised,
) -> anyhow::Result<ExitCode> {
    let key = &args.key;
    // `lost` fires when a renewal found the lock gone or taken, or when its validity ran out
    // without one confirmed (`NotRenewed`): then it is not known whether the key is still ours,
    // but nothing vouches for it any more, so the command is stopped all the same.
    let unconfirmed = matches!(guard.lost_reason(), Some(LostReason::NotRenewed) | None);
    let what = match guard.lost_reason() {
        Some(reason) if !unconfirmed => format!("was lost ({reason})"),
        _ => format!("can no longer be confirmed held ({UNCONFIRMED})"),
    };
    eprintln!(
        "deadbolt: lock `{key}` {what}; stopping the command (SIGTERM to its process group, \
         SIGKILL after {})",
        human::duration(args.grace)
    );
    command.stop(args.grace).await?;
    // Most often nothing is left to release (the lock is gone or someone else's), but when it
    // only could not be confirmed, the release tells.
    let released = guard.release().await;
    if unconfirmed && matches!(released, Ok(ReleaseOutcome::Released)) {
        eprintln!("deadbolt: the release found lock `{key}` still ours");
    }
    Ok(ExitCode::from(EXIT_LOCK_LOST))
}

/// Releases the lock after the command exited, saying so when it was not ours to the end: known
/// lost, found gone or taken by the release, or no longer confirmed held.
async fn release(args: &Args, guard: LockGuard) {
    let key = &args.key;
    // Known lost: a renewal found the key gone or another owner's.
    let lost = guard
        .lost_reason()
        .filter(|reason| *reason != LostReason::NotRenewed);
    // Not known lost, but its validity ran out: whether it is still ours, only the release can
    // tell.
    let unconfirmed = lost.is_none() && !guard.is_held();
    let released = guard.release().await;
    if let Some(reason) = lost {
        eprintln!(
            "deadbolt: lock `{key}` was lost ({reason}); the command had ended before deadbolt \
             acted on it, so the exit status is the command's own"
        );
        return;
    }
    let found = match released {
        Ok(ReleaseOutcome::Released) if !unconfirmed => return,
        Ok(ReleaseOutcome::Released) => {
            eprintln!(
                "deadbolt: lock `{key}` was not confirmed held by the time it was released \
                 ({UNCONFIRMED}), but the release found it still ours"
            );
            return;
        }
        Ok(ReleaseOutcome::AlreadyExpired) => LostReason::Expired,
        Ok(ReleaseOutcome::NotOwner) => LostReason::Taken,
        Err(err) => {
            let err = crate::exit::one_line(&err);
            let lease = human::duration(args.lease);
            if unconfirmed {
                eprintln!(
                    "deadbolt: lock `{key}` was not confirmed held by the time it was released \
                     ({UNCONFIRMED}), and the release failed ({err}); if it is still ours, it \
                     expires within {lease}"
                );
            } else {
                eprintln!(
                    "deadbolt: cannot release lock `{key}` ({err}); it expires within {lease}"
                );
            }
            return;
        }
    };
    let unconfirmed = if unconfirmed {
        format!("; {UNCONFIRMED}")
    } else {
        String::new()
    };
    eprintln!(
        "deadbolt: lock `{key}` was no longer ours when released after the command ended \
         ({found}{unconfirmed}); the exit status is the command's own"
    );
}

/// The signals deadbolt handles instead of dying from them.
#[derive(Debug)]
struct Signals {
    hup: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal that arrives.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.quit.recv() => Signal::SIGQUIT,
            _ = self.term.recv() => Signal::SIGTERM,
        }
    }
}

/// The command's exit code, or 128 + N when signal N ended it, as shells report it.
fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from(128u8.wrapping_add(sig as u8)),
        (None, None) => ExitCode::from(crate::exit::EXIT_INTERNAL),
    }
}
