//! Exit statuses, and the errors that choose them.
//!
//! Every command ends through `main`, which maps an error to its status with [`code_of`]: a usage
//! error is 2 (as clap's own, and as most tools), an interruption 130, anything else 70.
//! `deadbolt run` adds its own: the command's status, 75 and 76.

use std::fmt;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// Bad options or values, whether clap or deadbolt found them (`EX_USAGE` is 64, but clap and
/// most tools use 2).
pub(crate) const EXIT_USAGE: u8 = 2;
/// deadbolt itself failed: Redis unreachable or refusing, a database failing, a command that
/// cannot be started (`EX_SOFTWARE`).
pub(crate) const EXIT_INTERNAL: u8 = 70;
/// The lock was not acquired within `--wait` (`EX_TEMPFAIL`; `flock -E` style).
pub(crate) const EXIT_NOT_ACQUIRED: u8 = 75;
/// The lock was lost while the command ran; the command was stopped.
pub(crate) const EXIT_LOCK_LOST: u8 = 76;
/// Interrupted by SIGINT (Ctrl-C), after cleaning up: 128 + 2, as a shell reports it.
pub(crate) const EXIT_INTERRUPTED: u8 = 130;

/// Set when work that holds lock state was dropped rather than finished (see [`abandoned`]).
static ABANDONED: AtomicBool = AtomicBool::new(false);

/// Records that a command dropped an acquisition or a guard midway (a signal while waiting, an
/// error): the library then releases in the background, and `main` must give that time to land
/// before the runtime shuts down. `main` assumes as much after any error.
pub(crate) fn abandoned() {
    ABANDONED.store(true, Ordering::Relaxed);
}

/// Whether [`abandoned`] was called.
pub(crate) fn was_abandoned() -> bool {
    ABANDONED.load(Ordering::Relaxed)
}

/// The caller's deadline for the whole command, if it has one (see [`set_deadline`]).
static DEADLINE: Mutex<Option<Instant>> = Mutex::new(None);

/// Sets (or, with `None`, lifts) the deadline the whole command must end by, background
/// clean-ups included: `deadbolt run` while it waits for the lock, by `--wait`. `main` lets
/// clean-ups the library left running go on no later than that (or than its own limit); what
/// they could not release then, the lease does.
pub(crate) fn set_deadline(deadline: Option<Instant>) {
    *DEADLINE.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
}

/// The deadline set by [`set_deadline`].
pub(crate) fn deadline() -> Option<Instant> {
    *DEADLINE.lock().unwrap_or_else(|e| e.into_inner())
}

/// A usage error found after parsing (a value out of range, a malformed URL): exit 2.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A usage error with `message`, as an `anyhow::Error` for `?`.
pub(crate) fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Usage(message.into()))
}

/// Ctrl-C (SIGINT) stopped the command, after its clean-up: exit 130.
#[derive(Debug)]
pub(crate) struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The exit status for `err`: 130 when interrupted, 2 for a usage error (ours, or an invalid
/// argument the library refused before sending anything), 70 otherwise.
pub(crate) fn code_of(err: &anyhow::Error) -> ExitCode {
    let code = if err.chain().any(|e| e.is::<Interrupted>()) {
        EXIT_INTERRUPTED
    } else if err.chain().any(|e| {
        e.is::<Usage>()
            || matches!(
                e.downcast_ref::<deadbolt::Error>(),
                Some(deadbolt::Error::InvalidArgument { .. })
            )
    }) {
        EXIT_USAGE
    } else {
        EXIT_INTERNAL
    };
    ExitCode::from(code)
}

/// An error and its causes on one line, "cannot connect to redis at 127.0.0.1:1: connection
/// refused", leaving out a cause whose text is already on the line: redis-rs and sqlx errors
/// print their source in their own message too, which would say everything twice.
pub(crate) fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(err);
    while let Some(cause) = next {
        let text = cause.to_string();
        if !text.is_empty() && !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

/// [`one_line`] for an `anyhow::Error` (its context messages come first).
pub(crate) fn chain(err: &anyhow::Error) -> String {
    one_line(err.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Repeats(std::io::Error);

    impl fmt::Display for Repeats {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "io: {}", self.0)
        }
    }

    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_on_the_line_is_not_repeated() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = anyhow::Error::new(Repeats(refused)).context("cannot connect to redis at h:1");
        assert_eq!(chain(&err), "cannot connect to redis at h:1: io: refused");
    }

    #[test]
    fn usage_errors_and_interruptions_have_their_own_status() {
        assert_eq!(code_of(&usage("bad")), ExitCode::from(EXIT_USAGE));
        let invalid = deadbolt::Error::InvalidArgument {
            what: "lease",
            reason: "too short".into(),
        };
        let invalid = anyhow::Error::new(invalid).context("while starting");
        assert_eq!(code_of(&invalid), ExitCode::from(EXIT_USAGE));
        let interrupted = anyhow::Error::new(Interrupted);
        assert_eq!(code_of(&interrupted), ExitCode::from(EXIT_INTERRUPTED));
        assert_eq!(
            code_of(&anyhow::anyhow!("redis is down")),
            ExitCode::from(EXIT_INTERNAL)
        );
    }
}
