//! [`Client`]: the connections, the watchdog and the waiters shared by every lock of a process.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use crate::error::{Error, Result};
use crate::key::{self, DEFAULT_PREFIX, LockKeys};
use crate::mutex::LockBuilder;
use crate::queue::LocalQueue;
use crate::waiters::Waiters;
use crate::watchdog::Watchdog;

/// A handle to one Redis server, from which locks are taken.
///
/// Make one per process and clone it freely: clones share two connections (one for commands,
/// one for pub/sub wake-ups), one watchdog task that renews every held lock, and the local
/// queues that hand a lock to this process's tasks in FIFO order.
///
/// Connections reconnect on their own after a Redis restart. Every command is bounded by the
/// command timeout, and every wait by the caller's deadline.
///
/// # Examples
///
/// ```no_run
/// # async fn demo() -> deadbolt::Result<()> {
/// use std::time::Duration;
///
/// let locks = deadbolt::Client::connect("redis://127.0.0.1:6379").await?;
/// let guard = locks.lock("movie-likes:42").wait(Duration::from_secs(10)).acquire().await?;
/// // … the critical section …
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) conn: ConnectionManager,
    pub(crate) waiters: Waiters,
    pub(crate) watchdog: Watchdog,
    pub(crate) queue: LocalQueue,
    pub(crate) prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) fence_ttl: Duration,
}

/// Settings for a [`Client`], from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    fence_ttl: Duration,
    #[cfg(feature = "tls")]
    pub(crate) tls_root_cert: Option<crate::tls::RootCert>,
}

impl Client {
    /// Connects to the Redis server at `url` with default settings.
    ///
    /// `url` is `redis://[user][:password@]host[:port][/db]`; `rediss://` (TLS) needs the `tls`
    /// feature. The server must speak RESP3 (Redis 6 or later).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a malformed URL; [`Error::Connect`] when the server cannot
    /// be reached within the connect timeout or refuses the credentials.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is left behind.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::builder(url).connect().await
    }

    /// Settings for a client of the Redis server at `url`.
    pub fn builder(url: &str) -> ClientBuilder {
        ClientBuilder {
            url: url.to_owned(),
            prefix: DEFAULT_PREFIX.to_owned(),
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            fence_ttl: Duration::from_secs(7 * 24 * 60 * 60),
            #[cfg(feature = "tls")]
            tls_root_cert: None,
        }
    }

    /// Starts building a lock on `name`; see [`LockBuilder`] for the defaults.
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder<'_> {
        LockBuilder::new(self, name.into())
    }

    /// The Redis keys of lock `name`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an invalid name.
    pub fn keys(&self, name: &str) -> Result<LockKeys> {
        key::validate_name(name)?;
        Ok(LockKeys::new(&self.inner.prefix, name))
    }

    /// Whether someone (any owner, any library) holds lock `name` right now.
    ///
    /// The answer may be stale by the time it arrives; use it for monitoring, never to decide
    /// whether to enter a critical section.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an invalid name; [`Error::Redis`] when the command fails.
    pub async fn is_locked(&self, name: &str) -> Result<bool> {
        Ok(self.inspect(name).await?.locked)
    }

    /// What Redis knows of lock `name`: held or not, its remaining TTL, its last fencing token.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an invalid name; [`Error::Redis`] when the command fails.
    pub async fn inspect(&self, name: &str) -> Result<LockInfo> {
        let keys = self.keys(name)?;
        let mut conn = self.inner.conn.clone();
        let mut pipe = redis::pipe();
        pipe.pttl(&keys.lock).get(&keys.fence);
        let (pttl, fence): (i64, Option<u64>) =
            tokio::time::timeout(self.inner.command_timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| Error::no_reply())?
                .map_err(|e| Error::from_redis(e, &keys.fence))?;
        Ok(LockInfo {
            locked: pttl != -2,
            ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
            fence,
        })
    }

    /// A connection for commands of your own on the same server (the scripts of
    /// [`fence`](crate::fence), inspection, tests).
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }
}

impl Inner {
    pub(crate) fn keys(&self, name: &str) -> LockKeys {
        LockKeys::new(&self.prefix, name)
    }
}

/// What [`Client::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether the lock key exists.
    pub locked: bool,
    /// Its remaining time to live; `None` when not locked or when the key has no expiry.
    pub ttl: Option<Duration>,
    /// The last fencing token issued for this name, if the counter still exists.
    pub fence: Option<u64>,
}

impl ClientBuilder {
    /// The prefix of every key; the default is `"deadbolt"`. Use `""` for none.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for the reply to any one command; the default is 1 s. A command that
    /// timed out may still have run: lock scripts are idempotent per owner token for that reason.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How long one connection attempt may take; the default is 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a lock's fencing counter outlives its last acquisition; the default is 7 days.
    /// After that the counter is gone and tokens continue from the server clock (see
    /// [`LockScope::fencing_token`](crate::LockScope::fencing_token)).
    pub fn fence_ttl(mut self, ttl: Duration) -> Self {
        self.fence_ttl = ttl;
        self
    }

    /// Connects, checks the credentials, and starts the watchdog.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a malformed URL or out-of-range setting;
    /// [`Error::Connect`] when the server cannot be reached or refuses the credentials.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn connect(self) -> Result<Client> {
        #[cfg(feature = "tls")]
        if self
            .url
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
        {
            crate::tls::ensure_crypto_provider();
        }
        key::validate_prefix(&self.prefix)?;
        for (what, d) in [
            ("command timeout", self.command_timeout),
            ("connect timeout", self.connect_timeout),
        ] {
            if d < Duration::from_millis(1) || d > Duration::from_secs(600) {
                return Err(Error::invalid(
                    what,
                    format!("{d:?} is outside 1ms to 10min"),
                ));
            }
        }
        if self.fence_ttl < Duration::from_secs(1) {
            return Err(Error::invalid("fence ttl", "must be at least 1s"));
        }
        let info = parse_url(&self.url)?;
        let addr = info.addr().to_string();
        let redis_settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let info = info.set_redis_settings(redis_settings);
        #[cfg(feature = "tls")]
        let client = crate::tls::open_client(info, self.tls_root_cert)?;
        #[cfg(not(feature = "tls"))]
        let client =
            redis::Client::open(info).map_err(|e| Error::invalid("redis url", e.to_string()))?;
        let connect_err = |source| Error::Connect {
            addr: addr.clone(),
            source,
        };

        // One plain attempt first, so a wrong address or password fails fast with its own
        // error instead of after the manager's reconnect back-off.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&probe)
            .await
            .map_err(connect_err)?;
        let _: () = conn.ping().await.map_err(connect_err)?;
        drop(conn);

        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout))
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_with_config(client.clone(), config.clone())
            .await
            .map_err(connect_err)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pubsub = ConnectionManager::new_with_config(
            client,
            config.set_push_sender(tx).set_automatic_resubscription(),
        )
        .await
        .map_err(connect_err)?;

        tracing::debug!(%addr, "connected");
        Ok(Client {
            inner: Arc::new(Inner {
                watchdog: Watchdog::start(conn.clone(), self.command_timeout),
                waiters: Waiters::new(pubsub, rx, self.command_timeout),
                queue: LocalQueue::default(),
                conn,
                prefix: self.prefix,
                command_timeout: self.command_timeout,
                fence_ttl: self.fence_ttl,
            }),
        })
    }
}

/// Parses a Redis URL, keeping any password out of the error message.
fn parse_url(url: &str) -> Result<ConnectionInfo> {
    if url.starts_with("rediss://") && !cfg!(feature = "tls") {
        return Err(Error::invalid(
            "redis url",
            "rediss:// (TLS) needs deadbolt's `tls` feature",
        ));
    }
    url.into_connection_info().map_err(|e| {
        Error::invalid(
            "redis url",
            format!(
                "`{}` is not a valid redis url ({})",
                redact(url),
                e.kind_name()
            ),
        )
    })
}

/// `url` with its password (if any) replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<unparsable>".to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        None => url.to_owned(),
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for redis::RedisError {
    /// The error's kind and detail, which name what is wrong without echoing the URL.
    fn kind_name(&self) -> String {
        match self.detail() {
            Some(detail) if !detail.contains('@') => format!("{:?}: {detail}", self.kind()),
            _ => format!("{:?}", self.kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:hunter2@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("rediss://bob:pw@h"), "rediss://bob:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("nonsense"), "<unparsable>");
    }
}
