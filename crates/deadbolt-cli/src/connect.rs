//! Where Redis is, and errors a user can act on when it does not answer as it should.
//!
//! One `--redis` is one server; several are a Redlock over them, or with `--sharded` a set of
//! servers each holding its share of the locks ([`Topology`]). `DEADBOLT_REDIS_URL` may hold a
//! comma-separated list.
//!
//! `run` and `status` follow `redis-cli`: without `--redis` (or `DEADBOLT_REDIS_URL`) they use
//! `redis://127.0.0.1:6379`, and fail when nothing answers there. A lock is only as good as the
//! Redis every holder shares, so they never fall back to a private server, which would exclude
//! nobody (`bench` and `demo` do start one; see [`crate::embedded`]).

use std::time::Duration;

use deadbolt::{Client, ClientBuilder, redact_url as redact};
use redis::{ErrorKind, IntoConnectionInfo as _};

use crate::exit::usage;

/// The Redis of `run` and `status` when none is given, as `redis-cli`'s.
pub(crate) const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// How long a command of deadbolt's own (outside the library) waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// The URL schemes deadbolt takes.
const SCHEMES: [&str; 5] = ["redis", "rediss", "unix", "redis+unix", "redis+sentinel"];

/// Where the shared Redis servers are (`run`, `status`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RedisArgs {
    /// Redis URL: redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://… for TLS,
    /// unix:///PATH, or redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME[/DB] for a master
    /// managed by Redis Sentinel. Repeat it (or give a comma-separated list) for a Redlock over
    /// several independent servers: each lock is then taken on all of them and held by a
    /// majority [default: redis://127.0.0.1:6379, as redis-cli; DEADBOLT_REDIS_URL when set]
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Vec<String>,
    /// With several --redis: put each lock on one of the servers (chosen by its name) instead of
    /// taking it on a majority of them; a server that is down fails only its own locks
    #[arg(long)]
    pub(crate) sharded: bool,
    /// A node of a Redis Cluster (repeat it, or give a comma-separated list, for more seeds):
    /// each lock lives on the master of its hash slot
    #[arg(long, value_name = "URL")]
    pub(crate) cluster: Vec<String>,
    /// Redis Sentinels and the master they watch: HOST:PORT[,HOST:PORT…]/MASTER_NAME, or a
    /// redis+sentinel:// URL; the client follows a failover
    #[arg(long, value_name = "SENTINELS")]
    pub(crate) sentinel: Option<String>,
}

impl RedisArgs {
    /// The servers to use: `--redis` (repeated), else `DEADBOLT_REDIS_URL`, else
    /// [`DEFAULT_URL`].
    ///
    /// # Errors
    ///
    /// A usage error for a URL without a scheme deadbolt knows, or `--sharded` without several
    /// URLs.
    pub(crate) fn resolve(&self) -> anyhow::Result<Topology> {
        Topology::from_flags(
            &self.redis,
            self.sharded,
            &self.cluster,
            self.sentinel.as_deref(),
        )
    }
}

/// The servers locks are taken on, and how: the one place that turns URLs into a
/// [`ClientBuilder`]. A Sentinel-monitored master is a `Single` server whose URL is
/// `redis+sentinel://…`.
#[derive(Debug, Clone)]
pub(crate) enum Topology {
    /// One server: one `--redis`, or the default.
    Single(Redis),
    /// Redlock over independent masters: several `--redis`. A lock is held when a majority of
    /// them granted it.
    Redlock(Vec<Redis>),
    /// Several independent servers, each lock on one of them by its name: several `--redis`
    /// and `--sharded`.
    Sharded(Vec<Redis>),
    /// A Redis Cluster, found from one or more of its nodes: `--cluster`.
    Cluster(Vec<Redis>),
}

impl Topology {
    /// The topology of `values` (each a URL or a comma-separated list of them), and `sharded`.
    ///
    /// # Errors
    ///
    /// A usage error for a malformed URL, or `--sharded` without several URLs.
    pub(crate) fn resolve(values: &[String], sharded: bool) -> anyhow::Result<Topology> {
        let urls = split_urls(values);
        if sharded && urls.len() < 2 {
            return Err(usage(format!(
                "--sharded needs several --redis URLs to spread locks over, not {}",
                match urls.len() {
                    0 => "none".to_owned(),
                    _ => "one".to_owned(),
                }
            )));
        }
        match urls.as_slice() {
            [] => Ok(Topology::Single(resolve(None)?)),
            [url] => Ok(Topology::Single(resolve(Some(url))?)),
            _ => {
                let nodes = urls
                    .iter()
                    .map(|url| Redis::given(url))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(if sharded {
                    Topology::Sharded(nodes)
                } else {
                    Topology::Redlock(nodes)
                })
            }
        }
    }

    /// The servers, in the order given.
    pub(crate) fn nodes(&self) -> &[Redis] {
        match self {
            Topology::Single(redis) => std::slice::from_ref(redis),
            Topology::Redlock(nodes) | Topology::Sharded(nodes) | Topology::Cluster(nodes) => nodes,
        }
    }

    /// The topology of `--cluster` (seed URLs) or `--sentinel` (a Sentinel URL, or
    /// `HOST:PORT[,HOST:PORT…]/MASTER_NAME`) when one is given, else of `--redis` and
    /// `--sharded` (see [`Topology::resolve`]).
    ///
    /// # Errors
    ///
    /// A usage error for a malformed URL or flags that do not go together.
    pub(crate) fn from_flags(
        redis: &[String],
        sharded: bool,
        cluster: &[String],
        sentinel: Option<&str>,
    ) -> anyhow::Result<Topology> {
        let given_redis = redis.iter().any(|u| !u.trim().is_empty());
        let cluster = split_urls(cluster);
        match (cluster.is_empty(), sentinel) {
            // DEADBOLT_REDIS_URL stands in for --redis only when no server is given at all: an
            // explicit --cluster or --sentinel takes precedence over the environment.
            (true, None) => Topology::resolve(&redis_or_env(redis), sharded),
            (false, Some(_)) => Err(usage("--cluster and --sentinel do not go together")),
            (false, None) => {
                if given_redis || sharded {
                    return Err(usage(
                        "--cluster names the cluster's nodes itself: leave out --redis and --sharded",
                    ));
                }
                let seeds = cluster
                    .iter()
                    .map(|url| Redis::given(url))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(Topology::Cluster(seeds))
            }
            (true, Some(sentinel)) => {
                if given_redis || sharded {
                    return Err(usage(
                        "--sentinel finds the master itself: leave out --redis and --sharded",
                    ));
                }
                let sentinel = sentinel.trim();
                let url = if sentinel.starts_with("redis+sentinel://") {
                    sentinel.to_owned()
                } else {
                    format!("redis+sentinel://{sentinel}")
                };
                Ok(Topology::Single(Redis::given(&url)?))
            }
        }
    }

    /// The library's builder for this topology, with its defaults.
    pub(crate) fn builder(&self) -> ClientBuilder {
        let urls = || self.nodes().iter().map(|n| n.url.clone());
        match self {
            Topology::Single(redis) => Client::builder(&redis.url),
            Topology::Redlock(_) => Client::redlock(urls()),
            Topology::Sharded(_) => Client::sharded(urls()),
            Topology::Cluster(_) => Client::cluster(urls()),
        }
    }

    /// One line for people: the server, or the mode and every server (passwords hidden).
    pub(crate) fn describe(&self) -> String {
        let list = || {
            self.nodes()
                .iter()
                .map(|n| redact(&n.url))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Topology::Single(redis) => redact(&redis.url),
            Topology::Redlock(nodes) => format!(
                "redlock over {} servers, {} needed: {}",
                nodes.len(),
                nodes.len() / 2 + 1,
                list()
            ),
            Topology::Sharded(nodes) => {
                format!("sharded over {} servers: {}", nodes.len(), list())
            }
            Topology::Cluster(_) => format!("redis cluster via {}", list()),
        }
    }

    /// The options that give this topology to another deadbolt process (`--redis` for each
    /// server, `--sharded`), passwords included: pass them to a child, never print them.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let flag = match self {
            Topology::Cluster(_) => "--cluster",
            _ => "--redis",
        };
        for node in self.nodes() {
            args.push(flag.to_owned());
            args.push(node.url.clone());
        }
        if matches!(self, Topology::Sharded(_)) {
            args.push("--sharded".to_owned());
        }
        args
    }

    /// Connects a client configured by `builder` (made from [`Topology::builder`]), turning a
    /// failure into a message that says what to do and, with several servers, which ones
    /// failed.
    ///
    /// # Errors
    ///
    /// A server is unreachable, refuses the credentials, or is not Redis.
    pub(crate) async fn connect(&self, builder: ClientBuilder) -> anyhow::Result<Client> {
        match self {
            Topology::Single(redis) => redis.connect(builder).await,
            Topology::Redlock(nodes) | Topology::Sharded(nodes) => match builder.connect().await {
                Ok(client) => Ok(client),
                Err(err @ deadbolt::Error::Connect { .. }) => {
                    Err(self.failed_nodes(nodes, err).await)
                }
                Err(err) => Err(self.explain(err)),
            },
            Topology::Cluster(_) => builder.connect().await.map_err(|err| self.explain(err)),
        }
    }

    /// Connects a client with key prefix `prefix` and the library's other defaults.
    ///
    /// # Errors
    ///
    /// As [`Topology::connect`].
    pub(crate) async fn client(&self, prefix: &str) -> anyhow::Result<Client> {
        self.connect(self.builder().key_prefix(prefix)).await
    }

    /// The library starts with a minority of a redlock's servers down (one of a sharded set
    /// suffices), and stops at the first failure otherwise; to name every server that is down
    /// (not only the first), try each on its own.
    async fn failed_nodes(&self, nodes: &[Redis], first: deadbolt::Error) -> anyhow::Error {
        let tries = futures_util::future::join_all(
            nodes
                .iter()
                .map(|node| node.connect(Client::builder(&node.url))),
        )
        .await;
        let failed: Vec<String> = tries
            .into_iter()
            .filter_map(Result::err)
            .map(|err| crate::exit::chain(&err))
            .collect();
        if failed.is_empty() {
            // They all answer now: say what failed the first time.
            return self.explain(first);
        }
        let why = match self {
            Topology::Redlock(_) => {
                "a redlock needs a majority of its servers to answer when it starts"
            }
            _ => "at least one server must answer when deadbolt starts",
        };
        anyhow::anyhow!(
            "cannot connect to {} of {} redis servers ({why}): {}",
            failed.len(),
            nodes.len(),
            failed.join("; ")
        )
    }

    /// `err` as a message a user can act on: for a server's connection error, as
    /// [`Redis::explain`] says it for that server.
    pub(crate) fn explain(&self, err: deadbolt::Error) -> anyhow::Error {
        let addr = match &err {
            deadbolt::Error::Connect { addr, .. } => addr,
            _ => return self.nodes()[0].explain(err),
        };
        match self
            .nodes()
            .iter()
            .find(|node| node.addr().as_deref() == Some(addr))
        {
            Some(node) => node.explain(err),
            None => self.nodes()[0].explain(err),
        }
    }
}

/// A Redis URL to connect to, and whether it is the default nobody asked for.
#[derive(Debug, Clone)]
pub(crate) struct Redis {
    /// The URL, password included: never print it, print [`redact`]ed.
    pub(crate) url: String,
    /// Whether no URL was given and this is [`DEFAULT_URL`]: errors then say how to give one.
    pub(crate) defaulted: bool,
}

impl Redis {
    /// A URL the user gave.
    ///
    /// # Errors
    ///
    /// A usage error for a URL without a scheme deadbolt knows.
    pub(crate) fn given(url: &str) -> anyhow::Result<Redis> {
        check_url(url)?;
        Ok(Redis {
            url: url.to_owned(),
            defaulted: false,
        })
    }

    /// The server's address as the library names it in errors (`host:port`), without
    /// credentials.
    fn addr(&self) -> Option<String> {
        self.url
            .as_str()
            .into_connection_info()
            .ok()
            .map(|info| info.addr().to_string())
    }

    /// Whether the URL asks for TLS.
    fn tls(&self) -> bool {
        scheme(&self.url).is_some_and(|s| s.eq_ignore_ascii_case("rediss"))
    }

    /// Connects a client configured by `builder` (which was made from `self.url`), turning a
    /// failure into a message that says what to do.
    ///
    /// # Errors
    ///
    /// Redis is unreachable, refuses the credentials, or is not Redis.
    pub(crate) async fn connect(&self, builder: ClientBuilder) -> anyhow::Result<Client> {
        builder.connect().await.map_err(|err| self.explain(err))
    }

    /// Connects a client with key prefix `prefix` and the library's other defaults.
    ///
    /// # Errors
    ///
    /// As [`Redis::connect`].
    pub(crate) async fn client(&self, prefix: &str) -> anyhow::Result<Client> {
        self.connect(Client::builder(&self.url).key_prefix(prefix))
            .await
    }

    /// `err` as a message a user can act on; the library's own error where it already is one.
    pub(crate) fn explain(&self, err: deadbolt::Error) -> anyhow::Error {
        let deadbolt::Error::Connect { addr, source } = &err else {
            return err.into();
        };
        let scheme = scheme(&self.url).unwrap_or("redis");
        let message = if source.code() == Some("NOAUTH") {
            format!(
                "redis at {addr} requires a password: pass it in the URL, \
                 {scheme}://:PASSWORD@{addr} or {scheme}://USER:PASSWORD@{addr}"
            )
        } else if source.code() == Some("WRONGPASS")
            || source.kind() == ErrorKind::AuthenticationFailed
        {
            format!(
                "redis at {addr} refused the credentials (wrong password, or unknown or disabled \
                 user): check the URL's {scheme}://USER:PASSWORD@{addr}"
            )
        } else if source.is_connection_refusal() {
            let mut message = format!("cannot connect to redis at {addr}: connection refused");
            if self.defaulted {
                message.push_str(&default_hint());
            }
            message
        } else if self.tls()
            && (source.is_timeout() || source.is_connection_dropped() || is_garbled(source))
        {
            format!(
                "no redis answered at {addr} over TLS: is it a plain-text port? then use \
                 redis:// instead of rediss://"
            )
        } else if source.is_connection_dropped() || is_garbled(source) {
            let what = if is_garbled(source) {
                "its reply is not the redis protocol"
            } else {
                "it closed the connection"
            };
            format!(
                "{addr} did not answer like a redis server ({what}): is it the right port? (a \
                 TLS-only redis port needs rediss://)"
            )
        } else if source.is_timeout() {
            let mut message = format!(
                "no answer from {addr} in time: is the host reachable, and a redis server \
                 running there (not paused or overloaded)?"
            );
            if self.defaulted {
                message.push_str(&default_hint());
            }
            message
        } else {
            return err.into();
        };
        anyhow::anyhow!(message)
    }
}

/// What a refused default says: which URL was tried and how to give another.
fn default_hint() -> String {
    format!(
        " (no --redis given, so deadbolt tried the default {DEFAULT_URL}: pass --redis URL or \
         set DEADBOLT_REDIS_URL)"
    )
}

/// Whether the server answered something that is not RESP (another protocol on that port).
fn is_garbled(err: &redis::RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType | ErrorKind::RESP3NotSupported
    )
}

/// `given` (from `--redis` or the environment), else the default.
fn resolve(given: Option<&str>) -> anyhow::Result<Redis> {
    match given.map(str::trim).filter(|url| !url.is_empty()) {
        Some(url) => Redis::given(url),
        None => Ok(Redis {
            url: DEFAULT_URL.to_owned(),
            defaulted: true,
        }),
    }
}

/// `redis` (the `--redis` values), or `DEADBOLT_REDIS_URL` when there are none.
pub(crate) fn redis_or_env(redis: &[String]) -> Vec<String> {
    if redis.iter().any(|u| !u.trim().is_empty()) {
        return redis.to_vec();
    }
    std::env::var("DEADBOLT_REDIS_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .into_iter()
        .collect()
}

/// The URLs in `values`, each a URL or a comma-separated list of them (as `DEADBOLT_REDIS_URL`
/// may hold). A comma starts a new URL only where a scheme follows, so a password with a comma
/// in it stays in its URL; blanks around the commas and empty items are dropped.
pub(crate) fn split_urls(values: &[String]) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for value in values {
        let mut current: Option<String> = None;
        for piece in value.split(',') {
            match &mut current {
                Some(url) if !url.trim().is_empty() && !has_scheme(piece.trim_start()) => {
                    url.push(',');
                    url.push_str(piece);
                }
                _ => {
                    urls.extend(current.take());
                    current = Some(piece.to_owned());
                }
            }
        }
        urls.extend(current);
    }
    urls.into_iter()
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty())
        .collect()
}

/// Whether `text` starts with something shaped like a URL scheme and `://`.
fn has_scheme(text: &str) -> bool {
    scheme(text).is_some_and(|s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}

/// The scheme of `url`, if it has one.
fn scheme(url: &str) -> Option<&str> {
    url.split_once("://").map(|(scheme, _)| scheme)
}

/// Refuses a URL whose scheme deadbolt does not take, showing it as typed (password hidden).
fn check_url(url: &str) -> anyhow::Result<()> {
    let valid = "use redis://HOST[:PORT], rediss://HOST[:PORT] (TLS), unix:///PATH or \
                 redis+sentinel://HOST:PORT[,HOST:PORT…]/MASTER_NAME";
    match scheme(url) {
        Some(s) if SCHEMES.iter().any(|known| s.eq_ignore_ascii_case(known)) => {
            // A comma after the password: a list item without a scheme of its own.
            let rest = &url[s.len() + 3..];
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            // A Sentinel URL lists its Sentinels with commas.
            if host.contains(',') && !s.eq_ignore_ascii_case("redis+sentinel") {
                return Err(usage(format!(
                    "invalid redis url `{}`: a list of URLs needs a scheme on each, e.g. \
                     redis://10.0.0.5,redis://10.0.0.6",
                    redact(url)
                )));
            }
            Ok(())
        }
        Some(s) => Err(usage(format!(
            "invalid redis url `{}`: unknown scheme `{s}://`; {valid}",
            redact(url)
        ))),
        None => Err(usage(format!(
            "invalid redis url `{}`: it has no scheme; {valid}, e.g. redis://{}",
            redact(url),
            redact(url)
        ))),
    }
}

/// The Redis type of `key` (`string`, `hash`, …) on the first of `client`'s servers where it
/// is neither a string nor missing: with several servers, the one holding something else.
///
/// # Errors
///
/// Redis failed or did not answer within [`REPLY_TIMEOUT`].
async fn key_type(client: &Client, key: &str) -> anyhow::Result<String> {
    let mut kind = None;
    for mut conn in client.connections() {
        let mut cmd = redis::cmd("TYPE");
        cmd.arg(key);
        let found = tokio::time::timeout(REPLY_TIMEOUT, cmd.query_async::<String>(&mut conn))
            .await
            .map_err(|_| anyhow::anyhow!("no reply to TYPE {key}"))??;
        if found != "string" && found != "none" {
            return Ok(found);
        }
        kind.get_or_insert(found);
    }
    kind.ok_or_else(|| anyhow::anyhow!("no server to ask"))
}

/// The error for a lock key that holds a value of another type: someone else uses that key.
fn wrong_type(key: &str, kind: Option<&str>) -> anyhow::Error {
    let holds = match kind {
        Some(kind) => format!("holds a {kind}"),
        None => "holds a value of another type".to_owned(),
    };
    anyhow::anyhow!(
        "key `{key}` {holds}, not a deadbolt lock: another program uses it; pick another lock \
         name or --key-prefix"
    )
}

/// Turns the library's [`deadbolt::Error::WrongType`] into [`wrong_type`], naming the key's
/// type; any other error as [`Redis::explain`] does.
pub(crate) async fn explain_on(
    redis: &Topology,
    client: &Client,
    err: deadbolt::Error,
) -> anyhow::Error {
    match &err {
        deadbolt::Error::WrongType { key } => {
            let kind = key_type(client, key).await.ok();
            wrong_type(key, kind.as_deref())
        }
        _ => redis.explain(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_url_the_default_is_redis_cli_s() {
        for given in [None, Some(""), Some("  ")] {
            let redis = resolve(given).unwrap();
            assert_eq!(redis.url, "redis://127.0.0.1:6379");
            assert!(redis.defaulted);
        }
        let redis = resolve(Some("redis://10.0.0.5:6380/2")).unwrap();
        assert_eq!(redis.url, "redis://10.0.0.5:6380/2");
        assert!(!redis.defaulted);
    }

    #[test]
    fn every_documented_scheme_is_taken() {
        for url in [
            "redis://h",
            "rediss://:pw@h:1",
            "unix:///run/redis.sock",
            "redis+unix:///run/redis.sock",
            "redis+sentinel://:pw@h1:26379,h2:26379/mymaster",
            "REDIS://h",
        ] {
            assert!(resolve(Some(url)).is_ok(), "{url}");
        }
    }

    #[test]
    fn a_bad_scheme_shows_the_url_as_typed_without_its_password() {
        let err = resolve(Some("http://bob:hunter2@h:1/0")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`http://bob:***@h:1/0`"), "{text}");
        assert!(text.contains("redis://"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let err = resolve(Some("hunter2@10.0.0.5:6379")).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`***@10.0.0.5:6379`"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(
            crate::exit::code_of(&err),
            std::process::ExitCode::from(crate::exit::EXIT_USAGE)
        );
    }

    fn urls(values: &[&str]) -> Vec<String> {
        split_urls(&values.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn lists_split_where_a_scheme_follows_a_comma() {
        assert_eq!(
            urls(&["redis://a:1, redis://b:2,rediss://c", "unix:///s"]),
            ["redis://a:1", "redis://b:2", "rediss://c", "unix:///s"]
        );
        // A comma in a password stays in its URL.
        assert_eq!(
            urls(&["redis://:p,w@a,redis://b"]),
            ["redis://:p,w@a", "redis://b"]
        );
        assert_eq!(urls(&["", " , "]), Vec::<String>::new());
        // A list item without a scheme is refused, not glued to the host before it.
        let err = Topology::resolve(&["redis://a,b:2".to_owned()], false).unwrap_err();
        assert!(err.to_string().contains("a scheme on each"), "{err}");
    }

    #[test]
    fn one_url_is_one_server_several_a_redlock_or_sharded() {
        let resolve = |values: &[&str], sharded| {
            let values: Vec<String> = values.iter().map(|v| (*v).to_owned()).collect();
            Topology::resolve(&values, sharded)
        };
        assert!(matches!(resolve(&[], false), Ok(Topology::Single(r)) if r.defaulted));
        assert!(matches!(
            resolve(&["redis://a"], false),
            Ok(Topology::Single(_))
        ));
        let redlock = resolve(&["redis://a", "redis://:pw@b"], false).unwrap();
        assert!(matches!(&redlock, Topology::Redlock(nodes) if nodes.len() == 2));
        assert_eq!(
            redlock.describe(),
            "redlock over 2 servers, 2 needed: redis://a, redis://:***@b"
        );
        assert_eq!(
            redlock.to_args(),
            ["--redis", "redis://a", "--redis", "redis://:pw@b"]
        );
        let sharded = resolve(&["redis://a,redis://b"], true).unwrap();
        assert!(matches!(&sharded, Topology::Sharded(nodes) if nodes.len() == 2));
        assert_eq!(sharded.to_args().last().unwrap(), "--sharded");
        for one in [&[][..], &["redis://a"][..]] {
            let err = resolve(one, true).unwrap_err();
            assert!(err.to_string().contains("--sharded needs several"), "{err}");
            assert_eq!(
                crate::exit::code_of(&err),
                std::process::ExitCode::from(crate::exit::EXIT_USAGE)
            );
        }
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:pw@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact("rediss://bob:pw@h"), "rediss://bob:***@h");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
        assert_eq!(redact("bob:pw@h:1"), "bob:***@h:1");
    }
}
