//! Replica-synced acquisitions: [`LockBuilder::replicas`] sends `WAIT` after the acquisition's
//! write and refuses a lock that too few replicas confirmed.
//!
//! Redis replicates asynchronously: a master that dies right after granting a lock may take it
//! along, and the replica promoted in its place grants it to a second owner. `WAIT n timeout`
//! narrows that window (it does not close it: a replica may still lose the write, and Sentinel
//! may promote one that did not get it). Two properties of `WAIT` shape the code:
//!
//! - It counts only the writes of the connection it is sent on. So the acquisition's `SET` (or
//!   the fenced acquisition's script) and the `WAIT` go together, pipelined, on one connection.
//! - It blocks that connection in Redis until the replicas answer or the timeout passes. Sent
//!   on the client's shared multiplexed connection, it would stall every other lock of the
//!   process. So replica-synced acquisitions have a connection of their own, one per client,
//!   made on first use. They queue behind each other's `WAIT` on it; plain acquisitions, renewals
//!   and releases never do.
//!
//! An attempt that finds the lock held waits for nothing: `WAIT` returns at once when the
//! connection's earlier writes are already replicated, which is the case unless a replica is
//! missing, and then replica-synced locks fail anyway.

use std::time::Duration;

use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind, Value};

use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::mutex::LockBuilder;
use crate::scope::LockScope;
use crate::scripts::Lua;

/// The most replicas [`LockBuilder::replicas`] may ask for.
pub const MAX_REPLICAS: u32 = 16;

/// The longest time [`LockBuilder::replicas`] may wait for the replicas.
pub const MAX_REPLICA_WAIT: Duration = Duration::from_secs(60);

/// How many replicas must confirm an acquisition, within how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replicas {
    pub(crate) wanted: u32,
    pub(crate) timeout: Duration,
}

impl LockBuilder<'_> {
    /// Confirms each acquisition on `n` replicas: right after the lock is taken, `WAIT n
    /// timeout` waits until `n` replicas have the lock key. If fewer confirm within `timeout`,
    /// the lock is released again and `acquire` fails with [`Error::NotReplicated`]. The guard
    /// reports how many confirmed ([`LockScope::replicas`]).
    ///
    /// The default is no `WAIT`: Redis replicates asynchronously, so a failover right after an
    /// acquisition can lose the lock (see the crate docs). Redisson's setting when enabled is 1
    /// replica within 1 s: `.replicas(1, Duration::from_secs(1))`. Allowed: 1 to
    /// [`MAX_REPLICAS`] replicas, 1 ms to [`MAX_REPLICA_WAIT`]. A master with fewer replicas
    /// than `n` fails every acquisition after `timeout`.
    ///
    /// This is a setting of the lock, not of the client, because of its cost: each acquisition
    /// waits for a replica round trip, and replica-synced acquisitions of one client are sent on
    /// one connection of their own (`WAIT` blocks the connection it is sent on), where they
    /// queue behind each other. Locks that do not need it keep the plain, cheaper path.
    /// Renewals are not confirmed: a lease renewed on the master only is still held there.
    ///
    /// For one master (a single server, a Sentinel-managed one, or a shard of
    /// [`Client::sharded`](crate::Client::sharded)); a Redlock's masters have no replicas to
    /// wait for, and on a Redis Cluster it is not supported yet: `acquire` refuses it there with
    /// [`Error::InvalidArgument`] before sending anything.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: deadbolt::Client) -> deadbolt::Result<()> {
    /// use std::time::Duration;
    /// let guard = locks
    ///     .lock("payouts")
    ///     .replicas(1, Duration::from_secs(1))
    ///     .acquire()
    ///     .await?;
    /// assert!(guard.replicas() >= Some(1));
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn replicas(mut self, n: u32, timeout: Duration) -> Self {
        self.replicas = Some(Replicas { wanted: n, timeout });
        self
    }
}

impl Replicas {
    /// Checks the range of both settings.
    pub(crate) fn validate(&self) -> Result<()> {
        if !(1..=MAX_REPLICAS).contains(&self.wanted) {
            return Err(Error::invalid(
                "replicas",
                format!("{} is outside 1 to {MAX_REPLICAS}", self.wanted),
            ));
        }
        if self.timeout < Duration::from_millis(1) || self.timeout > MAX_REPLICA_WAIT {
            return Err(Error::invalid(
                "replica timeout",
                format!("{:?} is outside 1ms to {MAX_REPLICA_WAIT:?}", self.timeout),
            ));
        }
        Ok(())
    }
}

/// Sends `write` (the acquisition: `SET … NX` or the acquire script's `EVALSHA`) and `WAIT`,
/// pipelined, on the client's connection for replica-synced acquisitions. Returns the write's
/// reply and how many replicas acknowledged it. `script`: the script `write` calls, sent as
/// `EVAL` if the server lacks it. Not bounded here: the caller bounds the whole attempt by the
/// command timeout plus the replica timeout.
pub(crate) async fn send(
    conn: &Conn,
    write: &Cmd,
    script: Option<&Lua>,
    replicas: Replicas,
) -> RedisResult<(Value, u32)> {
    let mut conn = conn.get();
    let with_wait = |write: &Cmd| {
        let mut pipe = redis::pipe();
        pipe.add_command(write.clone())
            .cmd("WAIT")
            .arg(replicas.wanted)
            .arg(replicas.timeout.as_millis() as u64);
        pipe
    };
    match with_wait(write).query_async(&mut conn).await {
        Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => match script {
            Some(script) => with_wait(&script.eval(write)).query_async(&mut conn).await,
            None => Err(err),
        },
        reply => reply,
    }
}

/// The error for an acquisition that `confirmed` replicas acknowledged where `replicas` asked
/// for more; `None` when enough did (or none were asked for).
pub(crate) fn shortfall(
    name: &str,
    replicas: Option<Replicas>,
    confirmed: Option<u32>,
) -> Option<Error> {
    let (replicas, confirmed) = (replicas?, confirmed?);
    (confirmed < replicas.wanted).then(|| Error::NotReplicated {
        name: name.to_owned(),
        wanted: replicas.wanted,
        confirmed,
    })
}

impl LockScope {
    /// How many replicas confirmed the acquisition, for a lock taken with
    /// [`LockBuilder::replicas`]: at least the number asked for (`WAIT` may count more). `None`
    /// for a lock taken without.
    pub fn replicas(&self) -> Option<u32> {
        self.replicas
    }
}
