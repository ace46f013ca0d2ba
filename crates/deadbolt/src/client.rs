//! [`Client`]: the connections, the watchdog and the waiters shared by every lock of a process.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::conn::Connection;
use crate::error::{Error, Result};
use crate::key::{self, LockKeys};
use crate::mutex::LockBuilder;
use crate::node::Node;
use crate::place::{Mode, Placement};
use crate::queue::LocalQueue;
use crate::watchdog::Watchdog;

mod builder;

pub use builder::ClientBuilder;

/// The most nodes a client takes.
pub const MAX_NODES: usize = 64;

/// The longest fence TTL accepted (one year): far beyond any lease, within what `PX` takes.
pub const MAX_FENCE_TTL: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// A handle to the Redis servers locks are taken on: one server ([`Client::connect`]), a
/// majority of independent masters ([`Client::redlock`]), or one of several servers by name
/// ([`Client::sharded`]).
///
/// Make one per process and clone it freely: clones share two connections per server (one for
/// commands, one for pub/sub wake-ups), one watchdog task that renews every held lock, and the
/// local queues that hand a lock to this process's tasks in FIFO order.
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
    /// The servers, in the order given.
    pub(crate) nodes: Arc<[Node]>,
    /// Each node's identity, which sharded placement hashes (see `identity.rs`).
    ids: Vec<String>,
    mode: Mode,
    pub(crate) watchdog: Watchdog,
    pub(crate) queue: LocalQueue,
    pub(crate) prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) fence_ttl: Duration,
    /// A known bug brought back for the history checker's negative control (see
    /// [`ClientBuilder`]'s `negative-control` setter); always `false` otherwise.
    pub(crate) validity_from_retry: bool,
}

impl Client {
    /// Connects to the Redis server at `url` with default settings.
    ///
    /// `url` is `redis://[user][:password@]host[:port][/db]`; `rediss://` (TLS) needs the `tls`
    /// feature. The server must be Redis 7 or later.
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
        ClientBuilder::new(vec![url.to_owned()], Mode::Single)
    }

    /// Settings for a client whose locks are Redlock locks over independent masters: each lock
    /// is taken on all of them at once and held when a majority (N/2 + 1) took it within its
    /// validity (the lease less the time taking it took, less a clock drift allowance of 1 % +
    /// 2 ms). A minority of the masters may be down, slow or restarted without harm.
    ///
    /// The masters must be independent (no replication between them), and every client of a
    /// lock must list the same ones. Use an odd number, 3 or 5. Each node gets 5 % of the lease
    /// (at least 50 ms, at most the command timeout) to answer each step.
    ///
    /// ```no_run
    /// # async fn demo() -> deadbolt::Result<()> {
    /// let locks = deadbolt::Client::redlock(["redis://10.0.0.1", "redis://10.0.0.2", "redis://10.0.0.3"])
    ///     .connect()
    ///     .await?;
    /// let guard = locks.lock("invoice:7").acquire().await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn redlock<I, S>(urls: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder::new(urls.into_iter().map(Into::into).collect(), Mode::Redlock)
    }

    /// Settings for a client whose locks are spread over independent servers: each name lives on
    /// exactly one of them, chosen by rendezvous hashing of the name and the servers' addresses
    /// (so every client that lists the same servers, in any order, picks the same one, and a
    /// server added or removed moves only its own share of the names). When one server is
    /// down, only its names fail, with an error that names it.
    pub fn sharded<I, S>(urls: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder::new(urls.into_iter().map(Into::into).collect(), Mode::Sharded)
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

    /// Settings for a client of a Redis Cluster (Redis 7 or later), found from one or more of
    /// its nodes (`seeds`). Each lock lives on the master of its hash slot (all its keys share
    /// the tag `{name}`); waiters are woken over sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`) on
    /// that shard; renewals are batched per slot. After a failover the client follows the
    /// promoted replica. Replication is asynchronous: a lock taken just before its master died
    /// can be missing on the replica that replaces it (see the guarantees in the crate docs).
    pub fn cluster<I, S>(seeds: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder::new(seeds.into_iter().map(Into::into).collect(), Mode::Cluster)
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
        let inner = &self.inner;
        let nodes = crate::engine::nodes_of(&inner.nodes, inner.place(name));
        let replies = join_all(
            nodes
                .iter()
                .map(|node| inspect_node(node, &keys, inner.command_timeout)),
        )
        .await;
        let mut found = Vec::with_capacity(replies.len());
        let mut first_err = None;
        for reply in replies {
            match reply {
                Ok(info) => found.push(info),
                Err(err) => {
                    first_err.get_or_insert(err);
                }
            }
        }
        // On a quorum, the owner is the one a majority names; the TTL the shortest of theirs.
        let needed = crate::place::quorum(nodes.len());
        if found.len() < needed {
            return Err(first_err.unwrap_or_else(Error::no_reply));
        }
        let owner = found
            .iter()
            .filter_map(|i| i.owner.clone())
            .max_by_key(|o| found.iter().filter(|i| i.owner.as_ref() == Some(o)).count())
            .filter(|o| found.iter().filter(|i| i.owner.as_ref() == Some(o)).count() >= needed);
        let ttl = found
            .iter()
            .filter(|i| owner.is_some() && i.owner == owner)
            .filter_map(|i| i.ttl)
            .min();
        Ok(LockInfo {
            locked: owner.is_some(),
            ttl,
            owner,
            fence: found.iter().filter_map(|i| i.fence).max(),
        })
    }

    /// A connection for commands of your own on the same server (the scripts of
    /// [`fence`](crate::fence), inspection, tests). It reconnects by itself. Each command waits
    /// at most the command timeout for its reply (while reconnecting, one connection attempt
    /// more), except on a Redlock's servers, where bound them with `tokio::time::timeout`.
    ///
    /// With several servers, this is the first one given.
    pub fn connection(&self) -> Connection {
        self.inner.nodes[0].conn.get()
    }

    /// A connection to each server, in the order given (one for a single server); see
    /// [`Client::connection`].
    pub fn connections(&self) -> Vec<Connection> {
        self.inner.nodes.iter().map(|n| n.conn.get()).collect()
    }
}

/// What one node knows of a lock.
async fn inspect_node(node: &Node, keys: &LockKeys, limit: Duration) -> Result<LockInfo> {
    let mut conn = node.conn.get();
    let mut pipe = redis::pipe();
    pipe.pttl(&keys.lock).get(&keys.lock).get(&keys.fence);
    let reply = tokio::time::timeout(
        limit,
        pipe.query_async::<(i64, Option<String>, Option<String>)>(&mut conn),
    )
    .await
    .map_err(|_| node.unavailable(Error::no_reply()))?;
    let (pttl, owner, fence) = reply.map_err(|e| match Error::from_redis(e, &keys.lock) {
        Error::Redis(e) => node.unavailable(Error::Redis(e)),
        other => other,
    })?;
    let fence = match fence {
        Some(f) => Some(f.parse().map_err(|_| Error::WrongType {
            key: keys.fence.clone(),
        })?),
        None => None,
    };
    Ok(LockInfo {
        locked: pttl != -2,
        ttl: u64::try_from(pttl).ok().map(Duration::from_millis),
        // Without a waiter's mark: the token its holder knows.
        owner: owner.map(|o| crate::token::unmarked(&o).to_owned()),
        fence,
    })
}

impl Inner {
    /// Where lock `name` lives.
    pub(crate) fn place(&self, name: &str) -> Placement {
        Placement::of(self.mode, name, &self.ids)
    }

    /// Whether waiters of a lock on `place` must re-check on a timer because a node's user may
    /// not subscribe (and releases there are not published).
    pub(crate) fn degraded(&self, place: Placement) -> bool {
        crate::engine::nodes_of(&self.nodes, place)
            .iter()
            .any(|n| n.waiters.is_degraded())
    }
}

/// What [`Client::inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether the lock key exists.
    pub locked: bool,
    /// Its remaining time to live; `None` when not locked or when the key has no expiry.
    pub ttl: Option<Duration>,
    /// The holder's owner token: `dbt2-…` for a deadbolt client (as the holder wrote it, without
    /// the `+w` a waiter appends to have its release published), anything else for a peer.
    pub owner: Option<String>,
    /// The last fencing token issued for this name, if the counter still exists.
    pub fence: Option<u64>,
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
