//! [`Client`]: the connections, the watchdog and the waiters shared by every lock of a process.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};
use tokio::sync::Notify;

use crate::conn::{Conn, PingOutcome, Source, tcp_settings};
use crate::error::{Error, Result};
use crate::key::{self, DEFAULT_PREFIX, LockKeys};
use crate::mutex::LockBuilder;
use crate::queue::LocalQueue;
use crate::waiters::Waiters;
use crate::watchdog::Watchdog;

/// How often each connection is pinged to find one that went silent (see `conn.rs`).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The longest fence TTL accepted (one year): far beyond any lease, within what `PX` takes.
pub const MAX_FENCE_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

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
    pub(crate) conn: Conn,
    /// The server address, without credentials, for errors.
    pub(crate) addr: String,
    pub(crate) waiters: Waiters,
    pub(crate) watchdog: Watchdog,
    pub(crate) queue: LocalQueue,
    pub(crate) prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) fence_ttl: Duration,
    /// Woken when a connection dropped or was replaced.
    disconnected: Arc<Notify>,
    /// The connection for replica-synced acquisitions, which `WAIT` blocks (see `replicas.rs`);
    /// connected on first use.
    pub(crate) replicated: Conn,
    /// The Sentinels to ask whether the master moved, for a `redis+sentinel://` client.
    sentinel: Option<Arc<crate::sentinel::Sentinel>>,
    /// Ends the heartbeat task as soon as the last clone of the client is dropped.
    _heartbeat: tokio_util::sync::DropGuard,
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
    /// For a master managed by Redis Sentinel, `url` is
    /// `redis+sentinel://[user:password@]host1:port1[,host2:port2,…]/MASTER_NAME[/db]` (see
    /// [`Client::sentinel`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a malformed URL; [`Error::Connect`] when the server cannot
    /// be reached within the connect timeout or refuses the credentials;
    /// [`Error::UnknownMaster`] when no Sentinel knows the master name.
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

    /// Settings for a client of the master that the Sentinels at `sentinels` (each
    /// `host:port` or `redis://host:port`; the port defaults to 26379) monitor under
    /// `master_name`: the builder form of a `redis+sentinel://` URL, without credentials (put
    /// a master password in the URL form).
    ///
    /// # Failover
    ///
    /// At connect, the Sentinels are asked in turn for the master's address, and the node there
    /// must confirm with `ROLE` that it is the master. Then one Sentinel is asked again every
    /// 500 ms: when the Sentinels moved the master, the client's connections move to the new
    /// one, its pub/sub subscriptions are renewed there, and every held lock is checked at once.
    /// Measured on loopback: the client had moved within 0.3 s of all three Sentinels
    /// reporting the new master; an attempt already waiting on the dead master's connection
    /// waits out its command timeout first (1 s by default), so a `try_acquire` loop got its
    /// first lock about 1.0 s after the announcement.
    ///
    /// A lock that the new master has is kept; one that did not reach it before the failover
    /// (replication is asynchronous) fires its lost signal
    /// ([`LockScope::lost`](crate::LockScope::lost)), and may meanwhile be granted to another
    /// owner: [`LockBuilder::replicas`] narrows that window, fencing tokens guard the resource.
    /// Until the client has moved, commands that meet the demoted master's `READONLY` or a dead
    /// address are retried within each acquisition's wait (a `READONLY` also has the Sentinels
    /// asked at once).
    ///
    /// # Credentials
    ///
    /// The URL's user and password are the master's (and its replicas'); the Sentinels are
    /// asked without credentials. Sentinels with `requirepass` are not supported yet, and
    /// neither is TLS.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> deadbolt::Result<()> {
    /// let locks = deadbolt::Client::sentinel(["10.0.0.1:26379", "10.0.0.2:26379"], "mymaster")
    ///     .connect()
    ///     .await?;
    /// // the same as
    /// let locks = deadbolt::Client::connect(
    ///     "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
    /// )
    /// .await?;
    /// # Ok(()) }
    /// ```
    pub fn sentinel(
        sentinels: impl IntoIterator<Item = impl AsRef<str>>,
        master_name: &str,
    ) -> ClientBuilder {
        let sentinels: Vec<String> = sentinels
            .into_iter()
            .map(|s| s.as_ref().to_owned())
            .collect();
        Client::builder(&crate::sentinel::url_of(&sentinels, master_name))
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

    /// What Redis knows of lock `name`: held or not and by whom, its remaining TTL, its last
    /// fencing token.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for an invalid name; [`Error::WrongType`] when the lock key
    /// holds something else than a lock (another program uses it); [`Error::Redis`] when the
    /// command fails.
    pub async fn inspect(&self, name: &str) -> Result<LockInfo> {
        let keys = self.keys(name)?;
        let mut conn = self.inner.conn.get();
        let mut pipe = redis::pipe();
        pipe.pttl(&keys.lock).get(&keys.lock).get(&keys.fence);
        let reply = tokio::time::timeout(
            self.inner.command_timeout,
            pipe.query_async::<(i64, Option<String>, Option<String>)>(&mut conn),
        )
        .await
        .map_err(|_| Error::no_reply())?;
        let (pttl, owner, fence) = reply.map_err(|e| Error::from_redis(e, &keys.lock))?;
        let fence = match fence {
            Some(f) => Some(f.parse().map_err(|_| Error::WrongType {
                key: keys.fence.clone(),
            })?),
            None => None,
        };
        Ok(LockInfo {
            locked: pttl != -2,
            ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
            owner,
            fence,
        })
    }

    /// A connection for commands of your own on the same server (the scripts of
    /// [`fence`](crate::fence), inspection, tests). It reconnects by itself; its commands have
    /// no response timeout of their own, so bound them with `tokio::time::timeout`. After a
    /// Sentinel failover it still talks to the old master: ask for a new one.
    pub fn connection(&self) -> ConnectionManager {
        self.inner.conn.get()
    }
}

/// What [`Client::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether the lock key exists.
    pub locked: bool,
    /// Its remaining time to live; `None` when not locked or when the key has no expiry.
    pub ttl: Option<Duration>,
    /// The holder's owner token: `dbt1-…` for a deadbolt client, anything else for a peer.
    pub owner: Option<String>,
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

    /// How long a lock's fencing counter outlives its last use; the default is 7 days, the
    /// allowed range 1 s to [`MAX_FENCE_TTL`] (a year).
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
        if self.fence_ttl < Duration::from_secs(1) || self.fence_ttl > MAX_FENCE_TTL {
            return Err(Error::invalid(
                "fence ttl",
                format!("{:?} is outside 1s to {MAX_FENCE_TTL:?}", self.fence_ttl),
            ));
        }
        let (source, addr, sentinel) = if crate::sentinel::is_sentinel_url(&self.url) {
            // Sentinel hook: the master is found through the Sentinels (see `sentinel.rs`).
            #[cfg(feature = "tls")]
            if self.tls_root_cert.is_some() {
                return Err(Error::invalid(
                    "tls root certificate",
                    "one is set, but redis+sentinel:// connects without TLS",
                ));
            }
            let url = crate::sentinel::parse(&self.url)?;
            let sentinel = crate::sentinel::Sentinel::resolve(
                &url,
                tcp_settings(),
                self.connect_timeout,
                self.command_timeout,
            )
            .await?;
            let addr = sentinel.describe();
            (Source::Sentinel(sentinel.clone()), addr, Some(sentinel))
        } else {
            let info = parse_url(&self.url)?;
            let addr = info.addr().to_string();
            let redis_settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let info = info
                .set_redis_settings(redis_settings)
                .set_tcp_settings(tcp_settings());
            #[cfg(feature = "tls")]
            let client = crate::tls::open_client(info, self.tls_root_cert)?;
            #[cfg(not(feature = "tls"))]
            let client = redis::Client::open(info)
                .map_err(|e| Error::invalid("redis url", e.to_string()))?;
            (Source::Fixed(Box::new(client)), addr, None)
        };
        let client = source.client();
        let connect_err = |source| Error::Connect {
            addr: addr.clone(),
            source,
        };

        // One plain attempt first, so a wrong address or password fails fast with its own
        // error instead of after the manager's reconnect back-off.
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let mut conn = tokio::time::timeout(
            self.connect_timeout + self.command_timeout,
            client.get_multiplexed_async_connection_with_config(&probe),
        )
        .await
        .map_err(|_| connect_err(crate::error::no_reply_error()))?
        .map_err(connect_err)?;
        check_server(&mut conn, &addr).await.map_err(|e| match e {
            Error::Redis(source) => connect_err(source),
            other => other,
        })?;
        // Whether this user may use deadbolt's channels: without rights, waiters re-check on a
        // timer, and the operator should hear of it once, now.
        let probe_channel = LockKeys::new(&self.prefix, "connect-check").channel;
        let may_publish = match conn
            .publish::<_, _, i64>(&probe_channel, "connect-check")
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some("NOPERM") => false,
            Err(e) => return Err(connect_err(e)),
        };
        drop(conn);

        // No response timeout in the manager: every command deadbolt sends has its own bound
        // (a second timer per command would only cost time).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None)
            // Reconnect attempts after a drop come at most this far apart: a restarted Redis
            // is found again (and every held lock checked) within about this long.
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(usize::MAX);
        let conn = Conn::connect(source.clone(), config.clone())
            .await
            .map_err(connect_err)?;
        let replicated = Conn::lazy(source.clone(), config.clone()).map_err(connect_err)?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pubsub = Conn::connect(
            source,
            config.set_push_sender(tx).set_automatic_resubscription(),
        )
        .await
        .map_err(connect_err)?;

        let disconnected = Arc::new(Notify::new());
        let waiters = Waiters::new(
            pubsub.clone(),
            rx,
            self.command_timeout,
            disconnected.clone(),
        );
        if !may_publish {
            tracing::warn!(
                %addr,
                "this redis user may not publish or subscribe to deadbolt's channels: waiters \
                 will re-check every 100 ms instead of being woken by a release; grant them with \
                 `ACL SETUSER <user> &{}:*`",
                self.prefix
            );
            waiters.degrade();
        }
        let watchdog = Watchdog::start(conn.clone(), self.command_timeout, disconnected.clone());
        let stop = tokio_util::sync::CancellationToken::new();
        tracing::debug!(%addr, "connected");
        let inner = Arc::new(Inner {
            watchdog,
            waiters,
            queue: LocalQueue::default(),
            conn,
            addr,
            prefix: self.prefix,
            command_timeout: self.command_timeout,
            fence_ttl: self.fence_ttl,
            disconnected,
            replicated,
            sentinel,
            _heartbeat: stop.clone().drop_guard(),
        });
        // Sentinel hook: a task of its own asks whether the master moved (see `sentinel.rs`).
        if let Some(sentinel) = inner.sentinel.clone() {
            let client = Arc::downgrade(&inner);
            let moved = move || client.upgrade().map(|inner| inner.master_moved()).is_some();
            tokio::spawn(crate::sentinel::follow(sentinel, moved, stop.clone()));
        }
        tokio::spawn(heartbeat(Arc::downgrade(&inner), stop));
        Ok(Client { inner })
    }
}

/// Checks that the server is a Redis 7 or later (`SET … NX … GET` needs it), and loads every
/// script, so the first call of each pays no `NOSCRIPT` round trip: one round trip for both.
async fn check_server(conn: &mut redis::aio::MultiplexedConnection, addr: &str) -> Result<()> {
    let mut pipe = crate::scripts::load_all();
    pipe.cmd("INFO").arg("server");
    let (info,): (String,) = pipe.query_async(conn).await?;
    let version = info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("0")
        .trim()
        .to_owned();
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if major < 7 {
        return Err(Error::invalid(
            "redis server",
            format!("{addr} runs Redis {version}; deadbolt needs Redis 7.0 or later"),
        ));
    }
    Ok(())
}

impl Inner {
    /// Sentinel hook: the master moved (see `sentinel.rs`). Both connections go to the new one,
    /// subscriptions are renewed there, and every held lock is checked at once: a lock the new
    /// master lacks is lost.
    fn master_moved(&self) {
        self.conn.replace();
        self.waiters.conn().replace();
        self.waiters.resubscribe_all();
        self.disconnected.notify_one();
    }
}

/// Pings every connection of a client each [`HEARTBEAT`]. One that stays silent for a command
/// timeout is replaced (see `conn.rs`), and every held lock is then checked at once. Ends when
/// the client is dropped.
async fn heartbeat(client: std::sync::Weak<Inner>, stop: tokio_util::sync::CancellationToken) {
    // Said once per outage, not twice a second: `silent` remembers what was already said.
    let mut silent = [false; 2];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        let Some(inner) = client.upgrade() else {
            return;
        };
        let limit = inner.command_timeout.min(HEARTBEAT);
        let (commands, pubsub) = (inner.conn.clone(), inner.waiters.conn().clone());
        // Not holding the client while waiting for replies: dropping it must end this task.
        drop(inner);
        let (c, p) = tokio::select! {
            _ = stop.cancelled() => return,
            outcomes = async { tokio::join!(commands.ping(limit), pubsub.ping(limit)) } => outcomes,
        };
        let Some(inner) = client.upgrade() else {
            return;
        };
        for (i, (outcome, what)) in [(c, "command"), (p, "pub/sub")].into_iter().enumerate() {
            if outcome != PingOutcome::Silent {
                silent[i] = false;
                continue;
            }
            if !std::mem::replace(&mut silent[i], true) {
                tracing::warn!(addr = %inner.addr, "the {what} connection did not answer a ping within {limit:?}; reconnecting");
            }
            if i == 0 {
                inner.conn.replace();
            } else {
                pubsub.replace();
                inner.waiters.resubscribe_all();
            }
            inner.disconnected.notify_one();
        }
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
    const SCHEMES: &str = "redis://[USER][:PASSWORD@]HOST[:PORT][/DB], rediss:// (TLS), \
                           unix:///PATH/TO/SOCKET or \
                           redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB]";
    if !["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        return Err(Error::invalid(
            "redis url",
            format!("`{}`: expected {SCHEMES}", redact_url(url)),
        ));
    }
    url.into_connection_info().map_err(|e| {
        Error::invalid(
            "redis url",
            format!(
                "`{}`: {}; expected {SCHEMES}",
                redact_url(url),
                e.kind_name()
            ),
        )
    })
}

/// A Redis URL fit to show in a message or log: its password (if any) replaced by `***`. Also
/// for a string that is not a URL, so that a mistyped one can be shown as typed.
///
/// ```
/// assert_eq!(deadbolt::redact_url("redis://bob:hunter2@h:6379/0"), "redis://bob:***@h:6379/0");
/// assert_eq!(deadbolt::redact_url("redis://hunter2@h"), "redis://***@h");
/// ```
pub fn redact_url(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{prefix}{user}:***@{host}{path}")
            } else {
                // `redis://word@host` and `word@host`: the word may be a password (redis-rs
                // reads the first one as a password without a user).
                format!("{prefix}***@{host}{path}")
            }
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
            Some(detail) if !detail.contains('@') => detail.to_owned(),
            _ => "malformed".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url as redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:hunter2@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("rediss://bob:pw@h"), "rediss://bob:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("nonsense"), "nonsense");
        assert_eq!(redact("pw@host:1"), "***@host:1");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("bob:pw@h:1"), "bob:***@h:1");
        assert_eq!(
            redact("redis+sentinel://bob:pw@h:1,h:2/mymaster"),
            "redis+sentinel://bob:***@h:1,h:2/mymaster"
        );
    }
}
