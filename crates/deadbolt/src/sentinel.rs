//! Redis Sentinel: finding the master through the Sentinels, and following it through a failover.
//!
//! redis-rs resolves a Sentinel-managed master only when a connection is made, and its
//! `ConnectionManager` then reconnects to that same address for ever (redis-rs #1438): after a
//! failover it keeps knocking on the dead master, or worse, on the old master come back as a
//! replica, which answers every write with `READONLY`. So deadbolt does the resolving itself,
//! with plain commands (no redis-rs `sentinel` feature):
//!
//! - At connect, the Sentinels are asked in turn `SENTINEL GET-MASTER-ADDR-BY-NAME`, and the
//!   address one gives is confirmed with `ROLE` (a just-demoted node still answers, and must not
//!   be used). Each step is bounded by the connect and command timeouts.
//! - Every 500 ms ([`follow`], a task started by `client.rs`), one Sentinel is asked again, over
//!   a connection kept open for it. When the address changed and the new node confirms it is
//!   the master, the generation goes up: every [`Conn`](crate::conn::Conn) built on this source
//!   replaces its connection on next use, and the client replaces its command and pub/sub
//!   connections at once, resubscribes, and has the watchdog check every held lock.
//!
//! A client thus follows a failover within about 500 ms of the Sentinels announcing it
//! (measured: see `tests/sentinel.rs`). Subscribing to the Sentinels' `+switch-master` would
//! save that half second, at the cost of a pub/sub connection per client to a Sentinel.
//!
//! Meanwhile `READONLY` replies count as transient errors: an acquisition retries them within
//! its wait (and has the Sentinels asked at once, see `Conn::saw_error`), and the watchdog
//! retries a renewal.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisConnectionInfo, RedisError,
};

use crate::error::{Error, Result};

mod url;

pub(crate) use url::{SentinelUrl, is_sentinel_url, parse, url_of};

/// A master found through Sentinels, and how to find it again.
pub(crate) struct Sentinel {
    master_name: String,
    /// How to reach each Sentinel (no credentials, RESP2).
    sentinels: Vec<ConnectionInfo>,
    /// The master's settings (credentials, database, RESP3, TCP), its address left to fill in.
    template: ConnectionInfo,
    connect_timeout: Duration,
    command_timeout: Duration,
    /// The confirmed master's address and a client for it.
    current: Mutex<(String, u16, redis::Client)>,
    /// Bumped each time the master moved.
    generation: AtomicU64,
    /// The connection to the Sentinel the heartbeat asks, and which one it is.
    asking: tokio::sync::Mutex<Option<(usize, MultiplexedConnection)>>,
    /// Which Sentinel the heartbeat opens next (modulo their number).
    next: AtomicUsize,
    /// Wakes [`follow`] before its next poll: a command met a demoted master.
    nudged: tokio::sync::Notify,
}

impl std::fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Sentinel")
            .field("master_name", &self.master_name)
            .field("master", &format_args!("{}:{}", current.0, current.1))
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What asking one Sentinel found: a master address confirmed by `ROLE`, or `None` when the
/// Sentinel does not monitor a master by that name.
type Answer = Option<(String, u16, redis::Client)>;

impl Sentinel {
    /// Asks the Sentinels of `url` in turn for the master, and confirms it with `ROLE`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownMaster`] when every Sentinel that answered knows no master by that name;
    /// [`Error::Connect`] when no Sentinel answered, or none named a node that confirms it is the
    /// master.
    pub(crate) async fn resolve(
        url: &SentinelUrl,
        tcp: redis::io::tcp::TcpSettings,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Arc<Sentinel>> {
        let tcp_info = |host: &str, port: u16| {
            ConnectionAddr::Tcp(host.to_owned(), port)
                .into_connection_info()
                .map(|info| info.set_tcp_settings(tcp.clone()))
                .map_err(|e| Error::invalid("redis url", e.to_string()))
        };
        let sentinels = url
            .sentinels
            .iter()
            .map(|(host, port)| tcp_info(host, *port))
            .collect::<Result<Vec<_>>>()?;
        let mut redis = RedisConnectionInfo::default()
            .set_db(url.db)
            .set_protocol(redis::ProtocolVersion::RESP3);
        if let Some(user) = &url.username {
            redis = redis.set_username(user);
        }
        if let Some(password) = &url.password {
            redis = redis.set_password(password);
        }
        let (host, port) = url.sentinels[0].clone();
        let template = tcp_info(&host, port)?.set_redis_settings(redis);
        let placeholder = redis::Client::open(template.clone())
            .map_err(|e| Error::invalid("redis url", e.to_string()))?;
        let sentinel = Sentinel {
            master_name: url.master.clone(),
            sentinels,
            template,
            connect_timeout,
            command_timeout,
            current: Mutex::new((host, port, placeholder)),
            generation: AtomicU64::new(0),
            asking: tokio::sync::Mutex::new(None),
            next: AtomicUsize::new(0),
            nudged: tokio::sync::Notify::new(),
        };
        let mut unknown = false;
        let mut last: Option<RedisError> = None;
        for i in 0..sentinel.sentinels.len() {
            match sentinel.ask(i).await {
                Ok(Some((host, port, client))) => {
                    tracing::debug!(master = %sentinel.master_name, %host, port, "sentinel named the master");
                    *sentinel.current.lock().unwrap_or_else(|e| e.into_inner()) =
                        (host, port, client);
                    return Ok(Arc::new(sentinel));
                }
                Ok(None) => unknown = true,
                Err(err) => {
                    tracing::debug!(sentinel = i, error = %err, "sentinel did not name a master");
                    last = Some(err);
                }
            }
        }
        if unknown && last.is_none() {
            return Err(Error::UnknownMaster {
                name: sentinel.master_name,
            });
        }
        Err(Error::Connect {
            addr: sentinel.describe(),
            source: last.unwrap_or_else(|| {
                RedisError::from((ErrorKind::MasterNameNotFoundBySentinel, "no master found"))
            }),
        })
    }

    /// How errors name this master: `master `NAME` via sentinels h1:p1,h2:p2`.
    pub(crate) fn describe(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| s.addr().to_string())
            .collect();
        format!(
            "master `{}` via sentinels {}",
            self.master_name,
            hosts.join(",")
        )
    }

    /// A client for the current master.
    pub(crate) fn client(&self) -> redis::Client {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .2
            .clone()
    }

    /// How many times the master moved since connect: a connection made at an older generation
    /// talks to a node that is no longer the master.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Asks one Sentinel whether the master moved, within about `limit` (plus a connect timeout
    /// for a new Sentinel or master connection); on a move to a node that confirms it is the
    /// master, records it and returns `true`. Tries the next Sentinel when one fails to answer.
    pub(crate) async fn master_moved(&self, limit: Duration) -> bool {
        let n = self.sentinels.len();
        let bound = (self.connect_timeout + limit) * 2;
        let check = async {
            let mut asking = self.asking.lock().await;
            for _ in 0..n {
                let (i, mut conn) = match asking.take() {
                    Some(open) => open,
                    None => {
                        let i = self.next_sentinel() % n;
                        match self.open_sentinel(i).await {
                            Ok(conn) => (i, conn),
                            Err(_) => {
                                self.rotate();
                                continue;
                            }
                        }
                    }
                };
                let reply = bounded(limit, self.master_addr(&mut conn)).await;
                let (host, port) = match reply {
                    Ok(Some(addr)) => {
                        *asking = Some((i, conn));
                        addr
                    }
                    // Forgot the master, or failed: ask another Sentinel next.
                    Ok(None) | Err(_) => {
                        self.rotate();
                        continue;
                    }
                };
                {
                    let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
                    if current.0 == host && current.1 == port {
                        return false;
                    }
                }
                return match self.confirm(&host, port).await {
                    Ok(client) => {
                        tracing::warn!(master = %self.master_name, %host, port, "the sentinels moved the master; following it");
                        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
                            (host, port, client);
                        self.generation.fetch_add(1, Ordering::AcqRel);
                        true
                    }
                    Err(err) => {
                        tracing::debug!(%host, port, error = %err, "the sentinels' new master is not confirmed yet");
                        false
                    }
                };
            }
            false
        };
        tokio::time::timeout(bound, check).await.unwrap_or(false)
    }

    /// Has [`follow`] ask the Sentinels now rather than at its next poll.
    pub(crate) fn nudge(&self) {
        self.nudged.notify_one();
    }

    /// Which Sentinel the heartbeat asks next.
    fn next_sentinel(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// Moves on to the next Sentinel, after one failed to answer.
    fn rotate(&self) {
        self.next.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks Sentinel `i` for the master's address and confirms it.
    async fn ask(&self, i: usize) -> redis::RedisResult<Answer> {
        let mut conn = self.open_sentinel(i).await?;
        let addr = bounded(self.command_timeout, self.master_addr(&mut conn)).await?;
        let Some((host, port)) = addr else {
            return Ok(None);
        };
        let client = self.confirm(&host, port).await?;
        Ok(Some((host, port, client)))
    }

    /// A connection to Sentinel `i`, within the connect timeout.
    async fn open_sentinel(&self, i: usize) -> redis::RedisResult<MultiplexedConnection> {
        let client = redis::Client::open(self.sentinels[i].clone())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        bounded(
            self.connect_timeout + self.command_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
    }

    /// `SENTINEL GET-MASTER-ADDR-BY-NAME`: the address, or `None` when the Sentinel does not
    /// know the name.
    async fn master_addr(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> redis::RedisResult<Option<(String, u16)>> {
        let reply: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.master_name)
            .query_async(conn)
            .await?;
        let Some((host, port)) = reply else {
            return Ok(None);
        };
        let port = port.parse().map_err(|_| {
            RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "sentinel answered a bad port",
                port.clone(),
            ))
        })?;
        Ok(Some((host, port)))
    }

    /// Connects to `host:port` as the master's user and checks that `ROLE` says `master`: a
    /// Sentinel's answer may lag a demotion. Returns a client for it.
    async fn confirm(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        let info = self
            .template
            .clone()
            .set_addr(ConnectionAddr::Tcp(host.to_owned(), port));
        let client = redis::Client::open(info)?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.command_timeout));
        let mut conn = bounded(
            self.connect_timeout + self.command_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let role: Vec<redis::Value> = bounded(
            self.command_timeout,
            redis::cmd("ROLE").query_async(&mut conn),
        )
        .await?;
        let role = match role.first() {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(redis::Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        if role != "master" {
            return Err(RedisError::from((
                ErrorKind::Client,
                "the node the sentinels named is not a master",
                format!("{host}:{port} reports role `{role}`"),
            )));
        }
        Ok(client)
    }
}

/// How often a client asks a Sentinel whether the master moved. Half a second: a client follows
/// a failover within about that much of the Sentinels announcing it, for one tiny command.
const POLL: Duration = Duration::from_millis(500);

/// The shortest pause between two questions to the Sentinels, when nudged (see
/// [`Sentinel::nudge`]).
const MIN_GAP: Duration = Duration::from_millis(50);

/// Asks a Sentinel every [`POLL`] whether the master moved, and calls `moved` when it did; ends
/// when `stop` is cancelled or `moved` returns `false` (the client is gone).
pub(crate) async fn follow(
    sentinel: Arc<Sentinel>,
    moved: impl Fn() -> bool,
    stop: tokio_util::sync::CancellationToken,
) {
    let limit = sentinel.command_timeout.min(POLL);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(POLL) => {}
            _ = sentinel.nudged.notified() => {}
        }
        let changed = tokio::select! {
            _ = stop.cancelled() => return,
            changed = sentinel.master_moved(limit) => changed,
        };
        if changed && !moved() {
            return;
        }
        // However often commands meet a demoted master, the Sentinels are asked at most this
        // often.
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// `reply`, or a timeout error after `limit`.
async fn bounded<T>(
    limit: Duration,
    reply: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(limit, reply)
        .await
        .unwrap_or_else(|_| Err(crate::error::no_reply_error()))
}
