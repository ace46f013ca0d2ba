//! [`Node`]: one Redis server as a client sees it: a command connection, a pub/sub connection
//! for wake-ups, its address for errors, and a heartbeat that replaces a connection gone silent.
//!
//! A client has one node (a single server), or several (Redlock over independent masters,
//! locks sharded over nodes); where a lock lives on them is its [`Placement`](crate::place).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::{AsyncCommands, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::client::redact_url;
use crate::conn::{Conn, PingOutcome, Source, tcp_settings};
use crate::error::{Error, Result};
use crate::key::LockKeys;
use crate::waiters::Waiters;

/// How often each connection is pinged to find one that went silent (see `conn.rs`).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// What connecting to a node needs, from the client's builder.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) prefix: String,
    pub(crate) command_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// Whether the command connection bounds each command itself (see [`Node::timer_for`]):
    /// yes where a lock lives on one node; no for Redlock, where one timer bounds each fan-out
    /// by the node timeout instead.
    pub(crate) bounded: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls_root_cert: Option<crate::tls::RootCert>,
}

/// One Redis server.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) conn: Conn,
    /// The connection for replica-synced acquisitions, which `WAIT` blocks (see
    /// `replicas.rs`); connected on first use. `None` on a Cluster.
    pub(crate) replicated: Option<Conn>,
    pub(crate) waiters: Arc<Waiters>,
    /// The server address, without credentials, for errors. For a Cluster, its first seed node.
    pub(crate) addr: String,
    /// Whether this is a Redis Cluster (sharded pub/sub, slot-bound scripts).
    pub(crate) cluster: bool,
    /// The server's `run_id` when it answered at connect time: two nodes with the same one are
    /// one server listed twice (see `identity.rs`).
    pub(crate) run_id: Option<String>,
    /// Whether lease renewals on this node are failing (said once per outage, see
    /// `engine::renew`).
    pub(crate) renewals_failing: std::sync::atomic::AtomicBool,
    /// The response timeout of the command connection, if it has one.
    bound: Option<Duration>,
    /// Ends the heartbeat and Sentinel tasks when the node is dropped.
    _heartbeat: Option<DropGuard>,
}

impl Node {
    /// Connects to the server at `url`, checks it, and starts its heartbeat. `disconnected` is
    /// notified whenever one of its connections dropped or was replaced.
    pub(crate) async fn connect(
        url: &str,
        settings: &Settings,
        disconnected: Arc<Notify>,
    ) -> Result<Node> {
        #[cfg(feature = "tls")]
        if url
            .get(..9)
            .is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
        {
            crate::tls::ensure_crypto_provider();
        }
        let (source, addr, sentinel) = if crate::sentinel::is_sentinel_url(url) {
            // The master is found through the Sentinels (see `sentinel.rs`).
            #[cfg(feature = "tls")]
            if settings.tls_root_cert.is_some() {
                return Err(Error::invalid(
                    "tls root certificate",
                    "one is set, but redis+sentinel:// connects without TLS",
                ));
            }
            let parsed = crate::sentinel::parse(url)?;
            let sentinel = crate::sentinel::Sentinel::resolve(
                &parsed,
                tcp_settings(),
                settings.connect_timeout,
                settings.command_timeout,
            )
            .await?;
            let addr = sentinel.describe();
            (Source::Sentinel(sentinel.clone()), addr, Some(sentinel))
        } else {
            let (client, addr) = open(url, settings)?;
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
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout));
        let mut conn = tokio::time::timeout(
            settings.connect_timeout + settings.command_timeout,
            client.get_multiplexed_async_connection_with_config(&probe),
        )
        .await
        .map_err(|_| connect_err(crate::error::no_reply_error()))?
        .map_err(connect_err)?;
        let run_id = check_server(&mut conn, &addr).await.map_err(|e| match e {
            Error::Redis(source) => connect_err(source),
            other => other,
        })?;
        // Whether this user may use deadbolt's channels: without rights, waiters re-check on a
        // timer, and the operator should hear of it once, now.
        let probe_channel = LockKeys::new(&settings.prefix, "connect-check").channel;
        let may_publish = match conn
            .publish::<_, _, i64>(&probe_channel, "connect-check")
            .await
        {
            Ok(_) => true,
            Err(e) if e.code() == Some("NOPERM") => false,
            Err(e) => return Err(connect_err(e)),
        };
        drop(conn);

        let (conn, replicated, waiters) = connections(source, settings, &disconnected, true)
            .await
            .map_err(connect_err)?;
        if !may_publish {
            tracing::warn!(
                %addr,
                "this redis user may not publish or subscribe to deadbolt's channels: waiters \
                 will re-check every 100 ms instead of being woken by a release; grant them with \
                 `ACL SETUSER <user> &{}:*`",
                settings.prefix
            );
            waiters.degrade();
        }
        tracing::debug!(%addr, "connected");
        let mut node = Node::watched(
            conn,
            replicated,
            waiters,
            addr,
            settings,
            disconnected,
            sentinel,
        );
        node.run_id = run_id;
        Ok(node)
    }

    /// Connects to the Redis Cluster that `seeds` belong to. The cluster client finds every
    /// master from them, routes each command by its key's slot, follows `MOVED` and `ASK`, and
    /// reconnects after a failover by itself; waiters listen on sharded channels (`SSUBSCRIBE`),
    /// which a release reaches with `SPUBLISH` on the lock's own shard.
    pub(crate) async fn connect_cluster(
        seeds: &[String],
        settings: &Settings,
        disconnected: Arc<Notify>,
    ) -> Result<Node> {
        let infos = seeds
            .iter()
            .map(|url| parse_url(url))
            .collect::<Result<Vec<_>>>()?;
        let addr = infos[0].addr().to_string();
        let connect_err = |source| Error::Connect {
            addr: addr.clone(),
            source,
        };
        let builder = || {
            redis::cluster::ClusterClientBuilder::new(infos.clone())
                .use_protocol(ProtocolVersion::RESP3)
                .tcp_settings(tcp_settings())
                .connection_timeout(settings.connect_timeout)
                // Each try of a command; deadbolt bounds every command as a whole itself.
                .response_timeout(settings.command_timeout)
                .overall_response_timeout(None)
        };
        let client = builder()
            .build()
            .map_err(|e| Error::invalid("redis url", kind_name(&e)))?;
        let connect = |client: redis::cluster::ClusterClient| async move {
            tokio::time::timeout(
                settings.connect_timeout + settings.command_timeout,
                client.get_async_connection(),
            )
            .await
            .map_err(|_| crate::error::no_reply_error())?
        };
        let mut conn = connect(client).await.map_err(connect_err)?;
        // Sent to every master; one reply each.
        let infos: std::collections::HashMap<String, String> = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(connect_err)?;
        for (master, info) in &infos {
            check_version(info, master)?;
        }
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let pubsub_client = builder()
            .push_sender(tx)
            .build()
            .map_err(|e| Error::invalid("redis url", kind_name(&e)))?;
        let pubsub = connect(pubsub_client).await.map_err(connect_err)?;
        let waiters = Arc::new(Waiters::new(
            Conn::cluster(pubsub),
            rx,
            settings.command_timeout,
            disconnected,
        ));
        tracing::debug!(%addr, "connected to a redis cluster");
        Ok(Node {
            conn: Conn::cluster(conn),
            replicated: None,
            waiters,
            addr,
            cluster: true,
            run_id: None,
            renewals_failing: Default::default(),
            // Each try of a command, not the command with its redirections: bounded by deadbolt.
            bound: None,
            _heartbeat: None,
        })
    }

    /// A node that did not answer at connect time: its connections are made on first use and
    /// retried as any dropped connection is, so it joins as soon as it answers. Its version is
    /// not checked and its scripts are loaded on first use.
    pub(crate) async fn connect_later(
        url: &str,
        settings: &Settings,
        disconnected: Arc<Notify>,
    ) -> Result<Node> {
        let (client, addr) = open(url, settings)?;
        let source = Source::Fixed(Box::new(client));
        let (conn, replicated, waiters) = connections(source, settings, &disconnected, false)
            .await
            .map_err(|source| Error::Connect {
                addr: addr.clone(),
                source,
            })?;
        Ok(Node::watched(
            conn,
            replicated,
            waiters,
            addr,
            settings,
            disconnected,
            None,
        ))
    }

    /// A node of one server, with its heartbeat started, and for a Sentinel-managed master the
    /// task that follows a failover; both end when the node is dropped.
    fn watched(
        conn: Conn,
        replicated: Conn,
        waiters: Arc<Waiters>,
        addr: String,
        settings: &Settings,
        disconnected: Arc<Notify>,
        sentinel: Option<Arc<crate::sentinel::Sentinel>>,
    ) -> Node {
        let stop = CancellationToken::new();
        tokio::spawn(heartbeat(
            conn.clone(),
            waiters.clone(),
            addr.clone(),
            settings.command_timeout,
            disconnected.clone(),
            stop.clone(),
        ));
        if let Some(sentinel) = sentinel {
            // A task of its own asks whether the master moved (see `sentinel.rs`); then both
            // connections go to the new one, subscriptions are renewed there, and every held
            // lock is checked at once: a lock the new master lacks is lost.
            let (commands, waiters) = (conn.clone(), waiters.clone());
            let moved = move || {
                commands.replace();
                waiters.conn().replace();
                waiters.resubscribe_all();
                disconnected.notify_one();
                true
            };
            tokio::spawn(crate::sentinel::follow(sentinel, moved, stop.clone()));
        }
        Node {
            conn,
            replicated: Some(replicated),
            waiters,
            addr,
            cluster: false,
            run_id: None,
            renewals_failing: Default::default(),
            bound: settings.bounded.then_some(settings.command_timeout),
            _heartbeat: Some(stop.drop_guard()),
        }
    }

    /// The timer a command on the command connection needs for its reply to come within
    /// `limit`: none when the connection gives up by then on its own (see [`command_config`])
    /// and is known to be up; while it may be connecting again, a connection attempt could come
    /// first, and the caller's timer bounds both.
    pub(crate) fn timer_for(&self, limit: Duration) -> Option<Duration> {
        match self.bound {
            Some(bound) if bound <= limit && self.conn.is_up() => None,
            _ => Some(limit),
        }
    }

    /// `err` as the error of an unavailable node, when it is about the connection.
    pub(crate) fn unavailable(&self, err: Error) -> Error {
        match err {
            Error::Redis(source)
            | Error::Unavailable { source, .. }
            | Error::Connect { source, .. } => Error::Unavailable {
                addr: self.addr.clone(),
                source,
            },
            other => other,
        }
    }
}

/// A client for the server at `url` (not a Sentinel URL), and its address for errors.
fn open(url: &str, settings: &Settings) -> Result<(redis::Client, String)> {
    let info = parse_url(url)?;
    let addr = info.addr().to_string();
    let redis_settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let info = info
        .set_redis_settings(redis_settings)
        .set_tcp_settings(tcp_settings());
    #[cfg(feature = "tls")]
    let client = crate::tls::open_client(info, settings.tls_root_cert.clone())?;
    #[cfg(not(feature = "tls"))]
    let client = {
        let _ = settings;
        redis::Client::open(info).map_err(|e| Error::invalid("redis url", e.to_string()))?
    };
    Ok((client, addr))
}

/// A node's connections to `source`: for commands (see [`command_config`]), for replica-synced
/// writes (made on first use), and for pub/sub, with the waiters on it. `now`: the command and
/// pub/sub connections are made at once, so a server that does not answer fails here; otherwise
/// on first use.
async fn connections(
    source: Source,
    settings: &Settings,
    disconnected: &Arc<Notify>,
    now: bool,
) -> redis::RedisResult<(Conn, Conn, Arc<Waiters>)> {
    let make = async |config: ConnectionManagerConfig| {
        if now {
            Conn::connect(source.clone(), config).await
        } else {
            Conn::lazy(source.clone(), config)
        }
    };
    let config = manager_config(settings);
    let conn = make(command_config(settings)).await?;
    let replicated = Conn::lazy(source.clone(), config.clone())?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let pubsub = make(config.set_push_sender(tx).set_automatic_resubscription()).await?;
    let waiters = Arc::new(Waiters::new(
        pubsub,
        rx,
        settings.command_timeout,
        disconnected.clone(),
    ));
    Ok((conn, replicated, waiters))
}

/// How the command connection of a node is set up. Where a lock lives on one node, the
/// connection bounds every command itself, as redis-rs does by default, so deadbolt arms no
/// timer of its own per command:
///
/// - a reply is awaited for at most the command timeout (the response timeout);
/// - while the connection is down, a command waits for one reconnection attempt at most (no
///   retries inside the manager: at most the connect timeout), then fails, and the next command
///   tries again. The heartbeat and the watchdog's checks keep trying while locks are held.
///
/// A Redlock's connections have neither: each fan-out has one timer for all nodes.
fn command_config(settings: &Settings) -> ConnectionManagerConfig {
    let config = manager_config(settings);
    if !settings.bounded {
        return config;
    }
    config
        .set_response_timeout(Some(settings.command_timeout))
        .set_number_of_retries(0)
}

/// How every connection manager of a node is set up. No response timeout: the pub/sub and
/// `WAIT` connections bound their commands by limits of their own.
fn manager_config(settings: &Settings) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(None)
        // Reconnect attempts after a drop come at most this far apart: a restarted Redis is
        // found again (and every held lock checked) within about this long.
        .set_max_delay(Duration::from_millis(500))
        .set_number_of_retries(usize::MAX)
}

/// Checks that the server is a Redis 7 or later (`SET … NX … GET` needs it), and loads every
/// script, so the first call of each pays no `NOSCRIPT` round trip: one round trip for both.
/// Returns the server's `run_id`.
async fn check_server(
    conn: &mut redis::aio::MultiplexedConnection,
    addr: &str,
) -> Result<Option<String>> {
    let mut pipe = crate::scripts::load_all();
    pipe.cmd("INFO").arg("server");
    let (info,): (String,) = pipe.query_async(conn).await?;
    check_version(&info, addr)?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned()))
}

/// Checks the `redis_version` of an `INFO server` reply.
fn check_version(info: &str, addr: &str) -> Result<()> {
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

/// Pings both connections of a node each [`HEARTBEAT`]. One that stays silent for a command
/// timeout is replaced (see `conn.rs`), and every held lock is then checked at once. Ends when
/// the node is dropped.
async fn heartbeat(
    commands: Conn,
    waiters: Arc<Waiters>,
    addr: String,
    command_timeout: Duration,
    disconnected: Arc<Notify>,
    stop: CancellationToken,
) {
    // Said once per outage, not twice a second: `silent` remembers what was already said.
    let mut silent = [false; 2];
    let limit = command_timeout.min(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
        let pubsub = waiters.conn();
        let (c, p) = tokio::select! {
            _ = stop.cancelled() => return,
            outcomes = async { tokio::join!(commands.ping(limit), pubsub.ping(limit)) } => outcomes,
        };
        for (i, (outcome, what)) in [(c, "command"), (p, "pub/sub")].into_iter().enumerate() {
            if outcome != PingOutcome::Silent {
                silent[i] = false;
                continue;
            }
            // Debug, not a warning: the connection is repaired here, and what an outage costs
            // reaches the caller through the API (an acquisition's error, a lost lock). While
            // Redis is down, a ping on the pub/sub connection (whose manager reconnects forever)
            // can only time out, so this would restate every outage.
            if !std::mem::replace(&mut silent[i], true) {
                tracing::debug!(%addr, "the {what} connection did not answer a ping within {limit:?}; reconnecting");
            }
            if i == 0 {
                commands.replace();
            } else {
                pubsub.replace();
                waiters.resubscribe_all();
            }
            disconnected.notify_one();
        }
    }
}

/// Parses a Redis URL, keeping any password out of the error message.
pub(crate) fn parse_url(url: &str) -> Result<ConnectionInfo> {
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
                kind_name(&e)
            ),
        )
    })
}

/// A URL error's detail, which names what is wrong without echoing the URL.
fn kind_name(err: &redis::RedisError) -> String {
    match err.detail() {
        Some(detail) if !detail.contains('@') => detail.to_owned(),
        _ => "malformed".to_owned(),
    }
}
