//! [`ClientBuilder`]: a client's settings, checked, and the connection of its nodes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::Notify;

use super::{Client, Inner, MAX_FENCE_TTL, MAX_NODES, redact_url};
use crate::error::{Error, Result};
use crate::identity;
use crate::key::{self, DEFAULT_PREFIX};
use crate::node::{Node, Settings, parse_url};
use crate::place::Mode;
use crate::queue::LocalQueue;
use crate::watchdog::Watchdog;

/// Settings for a [`Client`], from [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    urls: Vec<String>,
    mode: Mode,
    prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    fence_ttl: Duration,
    validity_from_retry: bool,
    #[cfg(feature = "tls")]
    pub(crate) tls_root_cert: Option<crate::tls::RootCert>,
}

impl ClientBuilder {
    pub(super) fn new(urls: Vec<String>, mode: Mode) -> ClientBuilder {
        ClientBuilder {
            urls,
            mode,
            prefix: DEFAULT_PREFIX.to_owned(),
            command_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            fence_ttl: Duration::from_secs(7 * 24 * 60 * 60),
            validity_from_retry: false,
            #[cfg(feature = "tls")]
            tls_root_cert: None,
        }
    }

    /// The prefix of every key; the default is `"deadbolt"`. Use `""` for none.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long to wait for the reply to any one command; the default is 1 s. A command sent while
    /// the connection is being made again waits for that one attempt too (at most the connect
    /// timeout). A command that timed out may still have run: lock scripts are idempotent per
    /// owner token for that reason.
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

    /// Test only, never in production (the `negative-control` feature): brings back the bug
    /// of counting a lock's validity from the try that found its own token, instead of from
    /// the earliest try whose reply was lost, so that a test can show that the history checker
    /// catches it under the same faults (a checker that never fails proves nothing).
    #[cfg(feature = "negative-control")]
    #[doc(hidden)]
    pub fn negative_control_validity_from_retry(mut self) -> Self {
        self.validity_from_retry = true;
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
        let ids = self.check_nodes()?;
        let settings = Settings {
            prefix: self.prefix.clone(),
            command_timeout: self.command_timeout,
            connect_timeout: self.connect_timeout,
            bounded: self.mode != Mode::Redlock,
            #[cfg(feature = "tls")]
            tls_root_cert: self.tls_root_cert.clone(),
        };
        let disconnected = Arc::new(Notify::new());
        let nodes = if self.mode == Mode::Cluster {
            vec![Node::connect_cluster(&self.urls, &settings, disconnected.clone()).await?]
        } else {
            let tries = join_all(
                self.urls
                    .iter()
                    .map(|url| Node::connect(connect_url(url), &settings, disconnected.clone())),
            )
            .await;
            let nodes = self
                .some_may_be_down(tries, &settings, &disconnected)
                .await?;
            self.check_identities(&nodes, &ids).await?;
            nodes
        };
        let nodes: Arc<[Node]> = nodes.into();
        let watchdog = Watchdog::start(nodes.clone(), self.command_timeout, disconnected);
        let inner = Arc::new(Inner {
            nodes,
            ids,
            mode: self.mode,
            watchdog,
            queue: LocalQueue::default(),
            prefix: self.prefix,
            command_timeout: self.command_timeout,
            fence_ttl: self.fence_ttl,
            validity_from_retry: self.validity_from_retry,
        });
        Ok(Client { inner })
    }

    /// The nodes of a Redlock or sharded client, from the connection attempts to each. A node
    /// that did not answer (refused, silent) joins later, when it answers, as long as enough
    /// others did: a majority for Redlock, one for sharding. Any other failure (credentials, a
    /// Redis too old) is an error, as is a single server that did not answer.
    async fn some_may_be_down(
        &self,
        tries: Vec<Result<Node>>,
        settings: &Settings,
        disconnected: &Arc<Notify>,
    ) -> Result<Vec<Node>> {
        let needed = match self.mode {
            Mode::Redlock => crate::place::quorum(self.urls.len()),
            Mode::Sharded => 1,
            Mode::Single | Mode::Cluster => self.urls.len(),
        };
        let up = tries.iter().filter(|t| t.is_ok()).count();
        let mut nodes = Vec::with_capacity(tries.len());
        for (url, node) in self.urls.iter().zip(tries) {
            match node {
                Ok(node) => nodes.push(node),
                Err(err)
                    if up >= needed
                        && err.is_transient()
                        && !crate::sentinel::is_sentinel_url(url) =>
                {
                    tracing::warn!(url = %redact_url(url), error = %err, "redis did not answer; it joins when it does");
                    let url = connect_url(url);
                    nodes.push(Node::connect_later(url, settings, disconnected.clone()).await?);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(nodes)
    }

    /// Checks the node list of the mode: one URL for a single server, at least one for the
    /// others, each URL well-formed and no server twice (it would count twice in a quorum).
    /// Checks the list of servers before anything is sent, and returns each one's identity
    /// (see `identity.rs`); a server listed twice, under any spelling, is refused.
    fn check_nodes(&self) -> Result<Vec<String>> {
        if self.mode == Mode::Single && self.urls.len() != 1 {
            return Err(Error::invalid("redis url", "exactly one is needed"));
        }
        if self.urls.is_empty() {
            return Err(Error::invalid("redis urls", "at least one is needed"));
        }
        if self.urls.len() > MAX_NODES {
            return Err(Error::invalid(
                "redis urls",
                format!("{} given, the most is {MAX_NODES}", self.urls.len()),
            ));
        }
        let mut ids: Vec<String> = Vec::with_capacity(self.urls.len());
        for url in &self.urls {
            if crate::sentinel::is_sentinel_url(url) {
                if self.mode != Mode::Single {
                    return Err(Error::invalid(
                        "redis urls",
                        "redis+sentinel:// names one master: use it alone, not in a list",
                    ));
                }
                crate::sentinel::parse(url)?;
                ids.push(redact_url(url));
                continue;
            }
            let (plain, name) = identity::split_name(url)?;
            if name.is_some() && self.mode != Mode::Sharded {
                return Err(Error::invalid(
                    "redis urls",
                    "a server name (`#NAME`) places sharded locks; only Client::sharded takes one",
                ));
            }
            let addr = parse_url(plain)?.addr().to_string();
            let id = identity::identity(&addr, name);
            // Two spellings of one address are one server, whatever the names.
            let same = identity::identity(&addr, None);
            if let Some(i) = ids
                .iter()
                .position(|other| *other == id)
                .or_else(|| {
                    self.urls
                        .iter()
                        .position(|u| u != url && same_address(u, &same))
                })
                .filter(|&i| i < ids.len())
            {
                return Err(Error::invalid(
                    "redis urls",
                    format!(
                        "`{}` and `{}` are the same server ({same}); each node must be a different server",
                        redact_url(&self.urls[i]),
                        redact_url(url)
                    ),
                ));
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// Refuses servers that answered under two URLs (the same `run_id`), and, for sharded locks,
    /// a server that another client calls by another identity (see `identity.rs`).
    async fn check_identities(&self, nodes: &[Node], ids: &[String]) -> Result<()> {
        for (i, node) in nodes.iter().enumerate() {
            let Some(run_id) = &node.run_id else { continue };
            if let Some(j) = nodes[..i]
                .iter()
                .position(|n| n.run_id.as_ref() == Some(run_id))
            {
                return Err(Error::invalid(
                    "redis urls",
                    format!(
                        "`{}` and `{}` reach the same server (run_id {run_id}); each node must be a different server",
                        redact_url(&self.urls[j]),
                        redact_url(&self.urls[i])
                    ),
                ));
            }
        }
        if self.mode != Mode::Sharded {
            return Ok(());
        }
        let key = identity::shard_key(&self.prefix);
        for (node, id) in nodes.iter().zip(ids) {
            if node.run_id.is_none() {
                // Down at connect: checked by the clients that find it up.
                continue;
            }
            let stored: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(id)
                .arg("NX")
                .arg("GET")
                .query_async(&mut node.conn.get())
                .await
                .map_err(|e| node.unavailable(Error::from_redis(e, &key)))?;
            if let Some(stored) = stored.filter(|s| s != id) {
                return Err(Error::invalid(
                    "redis urls",
                    format!(
                        "{} is shard `{stored}` to another client (its `{key}` key) and `{id}` to this one: \
                         sharded clients must name each server alike, or they place one lock on two servers; \
                         give each server the same `#NAME` everywhere, or delete `{key}` once every client agrees",
                        node.addr
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A URL as it is connected to: without the server name (`#NAME`).
fn connect_url(url: &str) -> &str {
    url.split_once('#').map_or(url, |(url, _)| url)
}

/// Whether `url` is at address identity `addr` (any name aside).
fn same_address(url: &str, addr: &str) -> bool {
    identity::split_name(url)
        .ok()
        .and_then(|(plain, _)| parse_url(plain).ok())
        .is_some_and(|info| identity::identity(&info.addr().to_string(), None) == addr)
}
