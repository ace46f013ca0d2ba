//! [`Conn`]: a Redis connection that notices when it went silent, and replaces itself.
//!
//! redis-rs's `ConnectionManager` reconnects when the socket reports an error or end of file.
//! It does not when the connection silently stops answering (a NAT or load balancer dropped the
//! flow, a failover moved the address without a reset): every command then times out, forever
//! (redis-rs #1032). So each `Conn` is pinged by the client's heartbeat task, and when a ping
//! gets no reply within the command timeout the manager is thrown away and a new one is made.
//! TCP keepalive and `TCP_USER_TIMEOUT` are set as well, so the kernel also gives up on a peer
//! that stopped acknowledging.
//!
//! Replacing is cheap (the new manager connects lazily, on the next command) and safe: lock
//! scripts are idempotent per owner token, so a command lost with the old connection is retried
//! or cleaned up like any command whose reply timed out.
//!
//! A connection is made from a [`Source`]: a fixed address, or a master found through Sentinels
//! (see `sentinel.rs`). A replacement asks the source for the current address, so after the
//! Sentinels moved the master it reaches the new one; and a `Conn` whose source moved since it
//! was made replaces itself on next use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::sentinel::Sentinel;

/// A connection to the servers of a [`Client`](crate::Client), for commands of your own: one
/// server's (it reconnects by itself), or a Redis Cluster's (it routes each command by its key
/// and follows `MOVED`, `ASK` and failovers). Use it with [`redis::AsyncCommands`]; see
/// [`Client::connection`](crate::Client::connection) for how long its commands may take.
#[derive(Clone)]
pub struct Connection(Kind);

#[derive(Clone)]
enum Kind {
    Server(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Server(_) => "Connection(server)",
            Kind::Cluster(_) => "Connection(cluster)",
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.0 {
            Kind::Server(c) => c.req_packed_command(cmd),
            Kind::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.0 {
            Kind::Server(c) => c.req_packed_commands(cmd, offset, count),
            Kind::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.0 {
            Kind::Server(c) => c.get_db(),
            Kind::Cluster(c) => c.get_db(),
        }
    }
}

impl Connection {
    /// Subscribes to a release channel: `SUBSCRIBE` on a server, `SSUBSCRIBE` (sharded, routed to
    /// the channel's slot) on a Cluster.
    pub(crate) async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match &mut self.0 {
            Kind::Server(c) => c.subscribe(channel).await,
            Kind::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    /// The reverse of [`Connection::subscribe`].
    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match &mut self.0 {
            Kind::Server(c) => c.unsubscribe(channel).await,
            Kind::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

/// Where a connection goes.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// Always the same address.
    Fixed(Box<redis::Client>),
    /// The current master of a Sentinel-managed deployment.
    Sentinel(Arc<Sentinel>),
}

impl Source {
    /// A client for the address to connect to now.
    pub(crate) fn client(&self) -> redis::Client {
        match self {
            Source::Fixed(client) => (**client).clone(),
            Source::Sentinel(sentinel) => sentinel.client(),
        }
    }

    /// Bumped whenever the address changes (a failover).
    fn generation(&self) -> u64 {
        match self {
            Source::Fixed(_) => 0,
            Source::Sentinel(sentinel) => sentinel.generation(),
        }
    }
}

/// A replaceable connection. Clones share it.
#[derive(Clone)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
}

struct Shared {
    /// The connection, and the source generation it was made at.
    current: RwLock<(Connection, u64)>,
    /// How to make a new one; `None` for a Cluster connection, which repairs itself.
    source: Option<(Source, ConnectionManagerConfig)>,
    /// Whether the connection is known to be up: it answered its last heartbeat, and was not
    /// replaced or seen failing since. See [`Conn::is_up`].
    up: AtomicBool,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects (waiting for the first connection), so a wrong address fails here.
    pub(crate) async fn connect(
        source: Source,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<Conn> {
        let generation = source.generation();
        let manager = ConnectionManager::new_with_config(source.client(), config.clone()).await?;
        let conn = Conn::wrap(manager, generation, source, config);
        conn.shared.up.store(true, Ordering::Relaxed);
        Ok(conn)
    }

    /// Like [`Conn::connect`], but connects on first use: for a server that did not answer at
    /// connect time, or a connection that may never be needed (replica-synced acquisitions).
    pub(crate) fn lazy(
        source: Source,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<Conn> {
        let generation = source.generation();
        let manager = ConnectionManager::new_lazy_with_config(source.client(), config.clone())?;
        Ok(Conn::wrap(manager, generation, source, config))
    }

    fn wrap(
        manager: ConnectionManager,
        generation: u64,
        source: Source,
        config: ConnectionManagerConfig,
    ) -> Conn {
        Conn {
            shared: Arc::new(Shared {
                current: RwLock::new((Connection(Kind::Server(manager)), generation)),
                source: Some((source, config)),
                up: AtomicBool::new(false),
            }),
        }
    }

    /// Wraps a Redis Cluster connection.
    pub(crate) fn cluster(conn: ClusterConnection) -> Conn {
        Conn {
            shared: Arc::new(Shared {
                current: RwLock::new((Connection(Kind::Cluster(conn)), 0)),
                source: None,
                up: AtomicBool::new(false),
            }),
        }
    }

    /// The connection to send commands on (a cheap clone). If the source moved since the
    /// connection was made (a Sentinel failover), a new one for the current address replaces it
    /// first.
    pub(crate) fn get(&self) -> Connection {
        let generation = self.generation();
        {
            let current = self
                .shared
                .current
                .read()
                .unwrap_or_else(|e| e.into_inner());
            if current.1 == generation {
                return current.0.clone();
            }
        }
        self.renew(Some(generation))
    }

    fn generation(&self) -> u64 {
        self.shared
            .source
            .as_ref()
            .map_or(0, |(source, _)| source.generation())
    }

    /// Drops the current connection and starts a new one to the source's current address
    /// (connected on first use). Commands in flight on the old one finish or time out on their
    /// own. For a Sentinel source, the Sentinels are also asked at once whether the master
    /// moved: a connection that went silent may be to a master that is gone.
    pub(crate) fn replace(&self) {
        if let Some((Source::Sentinel(sentinel), _)) = &self.shared.source {
            sentinel.nudge();
        }
        self.renew(None);
    }

    /// Replaces the connection, unless `stale` is given and it was already renewed for that
    /// generation by another caller. Returns the connection in place afterwards.
    fn renew(&self, stale: Option<u64>) -> Connection {
        let mut current = self
            .shared
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some((source, config)) = &self.shared.source else {
            return current.0.clone();
        };
        let generation = source.generation();
        if stale.is_some_and(|g| current.1 == g) {
            return current.0.clone();
        }
        match ConnectionManager::new_lazy_with_config(source.client(), config.clone()) {
            Ok(fresh) => {
                // Connected on first use, which may take a connection attempt.
                self.shared.up.store(false, Ordering::Relaxed);
                *current = (Connection(Kind::Server(fresh)), generation);
            }
            // Only possible for configurations `connect` already accepted; keep the old one.
            Err(err) => tracing::warn!(error = %err, "cannot make a new connection"),
        }
        current.0.clone()
    }

    /// Reacts to a connection-level error of a command sent on this connection: the connection
    /// is no longer known to be up (see [`Conn::is_up`]). `READONLY` means the node was
    /// demoted (a failover). The connection is replaced, which reaches the new master when the
    /// address is a DNS name or proxy that moved; for a Sentinel source, the Sentinels are
    /// asked at once instead of at the next poll.
    pub(crate) fn saw_error(&self, err: &redis::RedisError) {
        // Refused, reset or silent: the manager may be connecting again.
        self.shared.up.store(false, Ordering::Relaxed);
        if err.code() != Some("READONLY") {
            return;
        }
        tracing::debug!("the server answered READONLY: it was demoted; reconnecting");
        self.replace();
    }

    /// A command got no reply in time: the connection is no longer known to be up, until its
    /// next heartbeat answers.
    pub(crate) fn saw_silence(&self) {
        self.shared.up.store(false, Ordering::Relaxed);
    }

    /// Whether the server answers a `PING` within `limit`.
    pub(crate) async fn ping(&self, limit: Duration) -> PingOutcome {
        let mut conn = self.get();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<()>(&mut conn);
        let outcome = match tokio::time::timeout(limit, ping).await {
            Ok(Ok(())) => PingOutcome::Answered,
            // Refused or reset: the manager knows and is reconnecting already.
            Ok(Err(_)) => PingOutcome::Failed,
            Err(_) => PingOutcome::Silent,
        };
        self.shared
            .up
            .store(outcome == PingOutcome::Answered, Ordering::Relaxed);
        outcome
    }

    /// Whether the connection is known to be up: it answered its last heartbeat `PING` and was
    /// neither replaced nor seen failing since. A command on a connection that is up waits at
    /// most its response timeout; on one that is not, it may first wait for a connection
    /// attempt, so the caller bounds it itself (see `Node::timer_for`).
    pub(crate) fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }
}

/// What a heartbeat `PING` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PingOutcome {
    Answered,
    /// An error reply or a broken connection, which the manager repairs itself.
    Failed,
    /// No reply at all within the limit: the connection may be dead without knowing it.
    Silent,
}

/// TCP settings of every connection: no Nagle delay, keepalive probes after 5 s of silence, and
/// a `TCP_USER_TIMEOUT` so unacknowledged writes fail within 10 s instead of the kernel's 15
/// minutes.
pub(crate) fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(5);
    redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(Duration::from_secs(10))
}
