//! The one error type of this crate.

use std::time::Duration;

/// A `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when taking, keeping or giving back a lock.
///
/// Each variant is something a caller can act on. Contention ([`Error::WouldBlock`],
/// [`Error::Timeout`]) is kept apart from failure ([`Error::Redis`], [`Error::Connect`]), so a
/// caller can retry the first and alert on the second.
///
/// Messages are lowercase, carry no secrets (passwords are stripped from every address), and do
/// not repeat their source: walk [`std::error::Error::source`] for the underlying Redis error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `try_acquire` found the lock held by another owner (or by another task of this client).
    #[error("lock `{name}` is held by another owner")]
    WouldBlock {
        /// The lock name.
        name: String,
    },

    /// The lock was not acquired within the wait time.
    #[error("timed out after {} waiting for lock `{name}`", Rounded(*waited))]
    Timeout {
        /// The lock name.
        name: String,
        /// How long the caller waited.
        waited: Duration,
    },

    /// The lock is no longer held: a renewal found it gone or taken, or its validity passed.
    ///
    /// Work done under the lock may have overlapped with another holder's: use the fencing
    /// token to let the protected resource refuse stale writes.
    #[error("lock `{name}` was lost")]
    LockLost {
        /// The lock name.
        name: String,
    },

    /// An argument is out of range or malformed; nothing was sent to Redis.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// What was wrong: "lock name", "lease", "wait", "redis url", …
        what: &'static str,
        /// Why, with the allowed range where there is one.
        reason: String,
    },

    /// A key the lock needs already holds a value of another type (say, a hash at the lock
    /// name): another program uses that key. Pick another name or key prefix.
    #[error("key `{key}` holds a value of another type than this lock uses")]
    WrongType {
        /// The Redis key.
        key: String,
    },

    /// The client could not connect to (or authenticate with) Redis.
    #[error("cannot connect to redis at {addr}")]
    Connect {
        /// The server address, without credentials.
        addr: String,
        /// The underlying error.
        #[source]
        source: redis::RedisError,
    },

    /// Redis did not answer (refused, reset, or silent) for as long as the caller allowed: the
    /// whole wait of an `acquire`, with retries. Unlike [`Error::Timeout`], nothing says the lock
    /// is held; the server is the problem. The source is the last error seen.
    #[error("redis at {addr} is unavailable")]
    Unavailable {
        /// The server address, without credentials.
        addr: String,
        /// The last error seen.
        #[source]
        source: redis::RedisError,
    },

    /// Too few nodes of a quorum lock (Redlock) answered for a majority to agree, for as long as
    /// the caller allowed. Each node's last outcome is in `nodes`; nothing is left locked on the
    /// nodes that answered.
    #[error("no quorum for lock `{name}`: {} of {} nodes answered, {needed} needed ({})", answered(nodes), nodes.len(), list(nodes))]
    NoQuorum {
        /// The lock name.
        name: String,
        /// The majority needed.
        needed: usize,
        /// What each node did, in the order the nodes were given.
        nodes: Vec<NodeOutcome>,
    },

    /// No Sentinel that answered knows a master by this name (`redis+sentinel://…/NAME`).
    #[error("no sentinel knows a master named `{name}`")]
    UnknownMaster {
        /// The master name the URL gave.
        name: String,
    },

    /// A lock taken with [`LockBuilder::replicas`](crate::LockBuilder::replicas) reached fewer
    /// replicas than asked within the timeout. The lock was released again (nothing of it is
    /// left on the master); a replica that did get it loses it with the release.
    #[error("lock `{name}` reached {confirmed} of {wanted} replicas in time")]
    NotReplicated {
        /// The lock name.
        name: String,
        /// How many replicas were asked for.
        wanted: u32,
        /// How many confirmed within the timeout.
        confirmed: u32,
    },

    /// A Redis command failed or timed out. When a command times out, Redis may still have run
    /// it; the lock's scripts are written so that retrying or releasing stays correct.
    #[error("redis command failed")]
    Redis(#[source] redis::RedisError),
}

/// What one node of a quorum lock did, in [`Error::NoQuorum`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOutcome {
    /// The node's address, without credentials.
    pub addr: String,
    /// What it answered.
    pub vote: Vote,
}

/// One node's answer to a step of a quorum lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Vote {
    /// The lock is ours on this node (taken, renewed, released).
    Ours,
    /// Another owner holds the lock on this node.
    Held,
    /// The lock key is gone on this node.
    Gone,
    /// No reply within the per-node timeout.
    TimedOut,
    /// The node refused or failed the command; the error's text.
    Failed(String),
}

impl Vote {
    /// Whether the node answered at all.
    pub fn answered(&self) -> bool {
        matches!(self, Vote::Ours | Vote::Held | Vote::Gone)
    }
}

impl std::fmt::Display for NodeOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.addr)?;
        match &self.vote {
            Vote::Ours => f.write_str("ours"),
            Vote::Held => f.write_str("held by another owner"),
            Vote::Gone => f.write_str("not held"),
            Vote::TimedOut => f.write_str("no reply in time"),
            Vote::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

fn answered(nodes: &[NodeOutcome]) -> usize {
    nodes.iter().filter(|n| n.vote.answered()).count()
}

fn list(nodes: &[NodeOutcome]) -> String {
    let all: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    all.join("; ")
}

/// Why a held lock was lost, from [`LockScope::lost_reason`](crate::LockScope::lost_reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LostReason {
    /// A renewal or `extend` found the lock key gone: the lease ran out, the key was deleted,
    /// or Redis restarted without persistence.
    Expired,
    /// A renewal or `extend` found another owner's token in the lock key: the lease ran out and
    /// someone else took the lock.
    Taken,
    /// The lock's validity passed without a successful renewal: Redis did not answer in time
    /// (down, partitioned, paused), or this process was paused.
    NotRenewed,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LostReason::Expired => {
                "its key was gone: the lease ran out, or the key was deleted or lost"
            }
            LostReason::Taken => "another owner has taken it",
            LostReason::NotRenewed => "it could not be renewed in time",
        })
    }
}

impl Error {
    /// `true` for [`Error::WouldBlock`] and [`Error::Timeout`]: the lock was busy, nothing failed.
    pub fn is_contention(&self) -> bool {
        matches!(self, Error::WouldBlock { .. } | Error::Timeout { .. })
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            what,
            reason: reason.into(),
        }
    }

    /// A command got no reply in time. Redis may still have run it.
    pub(crate) fn no_reply() -> Error {
        Error::Redis(no_reply_error())
    }

    /// Whether this is a connection-level failure (refused, reset, dropped, timed out) that a
    /// retry after a reconnect may cure, as opposed to Redis refusing the command itself.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Redis(e)
            | Error::Connect { source: e, .. }
            | Error::Unavailable { source: e, .. } => is_transient(e),
            // Nodes may answer again on the next try.
            Error::NoQuorum { .. } => true,
            _ => false,
        }
    }

    /// Maps a Redis error from a command on `key`, telling a wrong-type key apart. Our scripts
    /// answer `WRONGTYPE <key>` naming the key; plain commands answer `WRONGTYPE <text>`.
    pub(crate) fn from_redis(err: redis::RedisError, key: &str) -> Error {
        if err.code() != Some("WRONGTYPE") && !err.to_string().contains("WRONGTYPE") {
            return Error::Redis(err);
        }
        let named = err
            .detail()
            .filter(|d| !d.contains(' ') && d.starts_with(key));
        Error::WrongType {
            key: named.unwrap_or(key).to_owned(),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(err: redis::RedisError) -> Self {
        Error::Redis(err)
    }
}

/// The error of a command that got no reply within the command timeout.
pub(crate) fn no_reply_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no reply within the command timeout",
    ))
}

/// `e`, told as [`no_reply_error`] if it is a timeout (a connection's response timeout says
/// only "timed out").
pub(crate) fn as_no_reply(e: redis::RedisError) -> redis::RedisError {
    if e.is_timeout() { no_reply_error() } else { e }
}

/// Whether a Redis error is about the connection rather than the command: worth a retry.
pub(crate) fn is_transient(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.code(),
            // READONLY: a master demoted by a failover; the client follows the new one (see
            // `sentinel.rs`), so a retry reaches it.
            Some("LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" | "READONLY")
        )
}

/// A duration as people read it: `250ms`, `1.01s`, `2m30s`.
struct Rounded(Duration);

impl std::fmt::Display for Rounded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d < Duration::from_secs(1) {
            write!(f, "{}ms", d.as_millis())
        } else if d < Duration::from_secs(60) {
            write!(f, "{:.2}s", d.as_secs_f64())
        } else {
            write!(f, "{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_print_rounded_durations() {
        let err = |ms| Error::Timeout {
            name: "a".into(),
            waited: Duration::from_millis(ms),
        };
        assert_eq!(
            err(250).to_string(),
            "timed out after 250ms waiting for lock `a`"
        );
        assert_eq!(
            err(1014).to_string(),
            "timed out after 1.01s waiting for lock `a`"
        );
        assert_eq!(
            err(150_000).to_string(),
            "timed out after 2m30s waiting for lock `a`"
        );
    }
}
