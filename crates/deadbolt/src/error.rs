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
    #[error("timed out after {waited:?} waiting for lock `{name}`")]
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

    /// A Redis command failed or timed out. When a command times out, Redis may still have run
    /// it; the lock's scripts are written so that retrying or releasing stays correct.
    #[error("redis command failed")]
    Redis(#[source] redis::RedisError),
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
        Error::Redis(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no reply within the command timeout",
        )))
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
