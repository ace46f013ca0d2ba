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
//! - Every 500 ms (a task of its own, started by `client.rs`), one Sentinel is asked again,
//!   over a connection kept open for it. When the address changed and the new node confirms it is the master, the
//!   generation goes up: every [`Conn`](crate::conn::Conn) built on this source replaces its
//!   connection on next use, and the heartbeat replaces the command and pub/sub connections at
//!   once, resubscribes, and has the watchdog check every held lock.
//!
//! A client thus follows a failover within about 500 ms of the Sentinels announcing it
//! (measured: see `tests/sentinel.rs`). Subscribing to the Sentinels' `+switch-master` would
//! save that half second, at the cost of a pub/sub connection per client to a Sentinel. Meanwhile `READONLY` replies count as transient errors:
//! an acquisition retries them within its wait, and the watchdog retries a renewal.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    ConnectionAddr, ConnectionInfo, ErrorKind, IntoConnectionInfo, RedisConnectionInfo, RedisError,
};

use crate::client::redact_url;
use crate::error::{Error, Result};

/// The scheme of a Sentinel URL.
pub(crate) const SCHEME: &str = "redis+sentinel://";

/// The port of a Sentinel given without one.
const DEFAULT_PORT: u16 = 26379;

const EXPECTED: &str =
    "expected redis+sentinel://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER_NAME[/DB]";

/// Whether `url` names a Sentinel-managed master.
pub(crate) fn is_sentinel_url(url: &str) -> bool {
    url.get(..SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
}

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SentinelUrl {
    /// The Sentinels' host and port, in the order given.
    pub(crate) sentinels: Vec<(String, u16)>,
    /// The name the Sentinels monitor the master under.
    pub(crate) master: String,
    pub(crate) db: i64,
    /// The master's credentials (the Sentinels get none).
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
}

impl std::fmt::Debug for SentinelUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelUrl")
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Parses `redis+sentinel://[user:password@]host1:port1[,host2:port2,…]/MASTER_NAME[/db]`. The
/// error never shows the password.
pub(crate) fn parse(url: &str) -> Result<SentinelUrl> {
    let bad = |why: &str| {
        Error::invalid(
            "redis url",
            format!("`{}`: {why}; {EXPECTED}", redact_url(url)),
        )
    };
    if !is_sentinel_url(url) {
        return Err(bad("not a sentinel url"));
    }
    let rest = &url[SCHEME.len()..];
    if rest.contains(['?', '#']) {
        return Err(bad("query parameters are not supported"));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(userinfo) => {
            // `user:password`, `:password`, or a lone word, which redis-rs reads as a password.
            let (user, pass) = match userinfo.split_once(':') {
                Some((user, pass)) => (user, Some(pass)),
                None => ("", Some(userinfo)),
            };
            let decode = |s: &str| percent_decode(s).ok_or_else(|| bad("bad percent-encoding"));
            let user = Some(decode(user)?).filter(|u| !u.is_empty());
            let pass = pass.map(decode).transpose()?.filter(|p| !p.is_empty());
            (user, pass)
        }
    };
    let mut sentinels = Vec::new();
    for host in hosts.split(',') {
        sentinels.push(parse_host(host).map_err(|why| bad(&why))?);
    }
    let mut segments = path.trim_start_matches('/').split('/');
    let master = segments.next().unwrap_or("");
    if master.is_empty() {
        return Err(bad("no master name"));
    }
    let master = percent_decode(master).ok_or_else(|| bad("bad percent-encoding"))?;
    let db = match segments.next() {
        None | Some("") => 0,
        Some(db) => db
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| bad(&format!("`{db}` is not a database number")))?,
    };
    if segments.any(|s| !s.is_empty()) {
        return Err(bad("too many path segments"));
    }
    Ok(SentinelUrl {
        sentinels,
        master,
        db,
        username,
        password,
    })
}

/// `host[:port]` or `[v6]:port`; the port defaults to 26379.
fn parse_host(host: &str) -> std::result::Result<(String, u16), String> {
    if host.is_empty() {
        return Err("an empty sentinel address".to_owned());
    }
    let (name, port) = if let Some(v6) = host.strip_prefix('[') {
        let (name, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{host}` lacks a `]`"))?;
        (name, after.strip_prefix(':'))
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if name.is_empty() {
        return Err(format!("`{host}` has no host name"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{host}` has a bad port"))?,
    };
    Ok((name.to_owned(), port))
}

/// Decodes `%XX` escapes; `None` for a malformed one or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// The Sentinel URL for [`Client::sentinel`](crate::Client::sentinel): each entry is
/// `host:port` or `redis://host:port`.
pub(crate) fn url_of(sentinels: &[String], master: &str) -> String {
    let hosts: Vec<&str> = sentinels
        .iter()
        .map(|s| {
            let s = s.trim();
            let s = s.split_once("://").map_or(s, |(_, rest)| rest);
            s.trim_end_matches('/')
        })
        .collect();
    format!("{SCHEME}{}/{master}", hosts.join(","))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_parse() {
        let url = parse("redis+sentinel://bob:p%40ss@h1:1,[::1]:2,h3/mymaster/3").unwrap();
        assert_eq!(
            url.sentinels,
            [
                ("h1".to_owned(), 1),
                ("::1".to_owned(), 2),
                ("h3".to_owned(), DEFAULT_PORT)
            ]
        );
        assert_eq!(url.master, "mymaster");
        assert_eq!(url.db, 3);
        assert_eq!(url.username.as_deref(), Some("bob"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        let bare = parse("REDIS+SENTINEL://h:5/m").unwrap();
        assert_eq!((bare.db, bare.username, bare.password), (0, None, None));
        assert_eq!(
            parse("redis+sentinel://pw@h/m")
                .unwrap()
                .password
                .as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn bad_sentinel_urls_are_refused_without_the_password() {
        for (url, why) in [
            ("redis+sentinel://:hunter2@h:1", "no master name"),
            ("redis+sentinel://:hunter2@h:1/", "no master name"),
            ("redis+sentinel://:hunter2@/m", "empty sentinel address"),
            (
                "redis+sentinel://:hunter2@h:1,,h:2/m",
                "empty sentinel address",
            ),
            ("redis+sentinel://:hunter2@h:x/m", "bad port"),
            ("redis+sentinel://:hunter2@h:0/m", "bad port"),
            ("redis+sentinel://:hunter2@h:1/m/x", "not a database number"),
            (
                "redis+sentinel://:hunter2@h:1/m/1/2",
                "too many path segments",
            ),
            ("redis+sentinel://:hunter2@h:1/m?x=1", "query parameters"),
            ("redis+sentinel://:hunter2@[::1/m", "lacks a `]`"),
            ("redis+sentinel://:hunter2%zz@h/m", "percent-encoding"),
        ] {
            let err = parse(url).unwrap_err().to_string();
            assert!(err.contains(why), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
            assert!(err.contains("redis+sentinel://"), "{url}: {err}");
        }
    }

    #[test]
    fn builder_form_makes_a_url() {
        let url = url_of(
            &["redis://127.0.0.1:1".to_owned(), " h:2/ ".to_owned()],
            "mymaster",
        );
        assert_eq!(url, "redis+sentinel://127.0.0.1:1,h:2/mymaster");
        assert_eq!(parse(&url).unwrap().sentinels.len(), 2);
    }
}
