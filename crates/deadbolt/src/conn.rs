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

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to the servers of a [`Client`](crate::Client), for commands of your own: one
/// server's (it reconnects by itself), or a Redis Cluster's (it routes each command by its key
/// and follows `MOVED`, `ASK` and failovers). Use it with [`redis::AsyncCommands`]; its
/// commands have no response timeout of their own, so bound them with `tokio::time::timeout`.
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

/// A replaceable connection. Clones share it.
#[derive(Clone)]
pub(crate) struct Conn {
    shared: Arc<Shared>,
}

struct Shared {
    current: RwLock<Connection>,
    /// How to make a new one; `None` for a Cluster connection, which repairs itself.
    source: Option<(redis::Client, ConnectionManagerConfig)>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects (waiting for the first connection), so a wrong address fails here.
    pub(crate) async fn connect(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<Conn> {
        let manager = ConnectionManager::new_with_config(client.clone(), config.clone()).await?;
        Ok(Conn {
            shared: Arc::new(Shared {
                current: RwLock::new(Connection(Kind::Server(manager))),
                source: Some((client, config)),
            }),
        })
    }

    /// A connection made on first use (a server that did not answer at connect time).
    pub(crate) fn lazy(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<Conn> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Conn {
            shared: Arc::new(Shared {
                current: RwLock::new(Connection(Kind::Server(manager))),
                source: Some((client, config)),
            }),
        })
    }

    /// Wraps a Redis Cluster connection.
    pub(crate) fn cluster(conn: ClusterConnection) -> Conn {
        Conn {
            shared: Arc::new(Shared {
                current: RwLock::new(Connection(Kind::Cluster(conn))),
                source: None,
            }),
        }
    }

    /// The connection to send commands on (a cheap clone).
    pub(crate) fn get(&self) -> Connection {
        self.shared
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops the current connection and starts a new one (connected on first use). Commands in
    /// flight on the old one finish or time out on their own.
    pub(crate) fn replace(&self) {
        let Some((client, config)) = &self.shared.source else {
            return;
        };
        match ConnectionManager::new_lazy_with_config(client.clone(), config.clone()) {
            Ok(fresh) => {
                *self
                    .shared
                    .current
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Connection(Kind::Server(fresh));
            }
            // Only possible for configurations `connect` already accepted; keep the old one.
            Err(err) => tracing::warn!(error = %err, "cannot make a new connection"),
        }
    }

    /// Whether the server answers a `PING` within `limit`.
    pub(crate) async fn ping(&self, limit: Duration) -> PingOutcome {
        let mut conn = self.get();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<()>(&mut conn);
        match tokio::time::timeout(limit, ping).await {
            Ok(Ok(())) => PingOutcome::Answered,
            // Refused or reset: the manager knows and is reconnecting already.
            Ok(Err(_)) => PingOutcome::Failed,
            Err(_) => PingOutcome::Silent,
        }
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
