//! `bench` and `demo` without `--redis`: a private `redis-server` for this command only.
//! (`bench` starts five more for its Redlock workloads, and a Redis Cluster of six for W1c.)
//!
//! Only these two start one: they measure or show the lock, and need no other holder. `run` and
//! `status` never do (see [`crate::connect`]): a lock nobody else can see excludes nobody.

use anyhow::{Context, bail};
use deadbolt_testkit::{RedisCluster, RedisMasters, RedisServer, redis_server_available};

use crate::connect::{Redis, Topology, split_urls};
use crate::exit::usage;

/// Where the Redis server is (`bench`, `demo`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PrivateRedisArgs {
    /// Redis URL, e.g. redis://:PASSWORD@10.0.0.5:6379/0 [default: a private redis-server
    /// started for this command]
    #[arg(
        long,
        env = "DEADBOLT_REDIS_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub(crate) redis: Option<String>,
}

/// Where the Redis servers are (`demo`): one, or several as `run` takes them.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PrivateTopologyArgs {
    /// Redis URL, e.g. redis://:PASSWORD@10.0.0.5:6379/0; repeat it (or give a comma-separated
    /// list) for a Redlock over several independent servers [default: a private redis-server
    /// started for this command, unless DEADBOLT_REDIS_URL is set]
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Vec<String>,
    /// With several --redis: put each lock on one of the servers instead of a majority of them
    #[arg(long)]
    pub(crate) sharded: bool,
    /// A node of a Redis Cluster to use (repeat it for more seeds)
    #[arg(long, value_name = "URL")]
    pub(crate) cluster: Vec<String>,
    /// Redis Sentinels and the master they watch: HOST:PORT[,HOST:PORT…]/MASTER_NAME
    #[arg(long, value_name = "SENTINELS")]
    pub(crate) sentinel: Option<String>,
}

impl PrivateTopologyArgs {
    /// Resolves `--redis`, `--sharded`, `--cluster` and `--sentinel`, starting a private server
    /// when none is given.
    pub(crate) fn target(&self) -> anyhow::Result<Target> {
        if crate::connect::redis_or_env(&self.redis).is_empty()
            && !self.sharded
            && self.cluster.is_empty()
            && self.sentinel.is_none()
        {
            return start_private();
        }
        let sentinel = self.sentinel.as_deref();
        Ok(Target {
            topology: Topology::from_flags(&self.redis, self.sharded, &self.cluster, sentinel)?,
            server: None,
        })
    }
}

/// The Redis servers to use, and the private server behind them if one had to be started (it
/// stops when dropped).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) topology: Topology,
    pub(crate) server: Option<RedisServer>,
}

impl Target {
    /// The first server's URL, password included (the only one for `bench`).
    pub(crate) fn url(&self) -> &str {
        &self.topology.nodes()[0].url
    }

    /// The first server (the only one for `bench`).
    pub(crate) fn redis(&self) -> &Redis {
        &self.topology.nodes()[0]
    }
}

impl PrivateRedisArgs {
    /// Resolves `--redis`, starting a private server when none is given.
    pub(crate) fn target(&self) -> anyhow::Result<Target> {
        if let Some(url) = self.redis.as_deref().filter(|url| !url.trim().is_empty()) {
            let urls = split_urls(&[url.to_owned()]);
            if urls.len() > 1 {
                return Err(usage(
                    "bench takes one --redis; its Redlock workloads (w3, floor3) start servers \
                     of their own",
                ));
            }
            return Ok(Target {
                topology: Topology::Single(Redis::given(url.trim())?),
                server: None,
            });
        }
        start_private()
    }
}

/// Starts a private server for this command.
fn start_private() -> anyhow::Result<Target> {
    if !redis_server_available() {
        bail!(
            "no --redis given and redis-server is not on PATH; install it with \
             `sudo apt-get install -y redis-server`, or pass --redis URL"
        );
    }
    let server = RedisServer::start().context("cannot start a private redis-server")?;
    eprintln!(
        "deadbolt: no --redis given; started a private redis-server on {} for this command",
        server.addr()
    );
    Ok(Target {
        topology: Topology::Single(Redis::given(&server.url())?),
        server: Some(server),
    })
}

/// Starts `n` private, independent servers for the bench's Redlock workloads; they stop when
/// dropped, and die with this process.
pub(crate) fn start_private_masters(n: usize) -> anyhow::Result<RedisMasters> {
    if !redis_server_available() {
        bail!(
            "floor3 and w3 need redis-server, and it is not on PATH; install it with \
             `sudo apt-get install -y redis-server`"
        );
    }
    let masters = RedisMasters::start(n)
        .with_context(|| format!("cannot start {n} private redis-servers"))?;
    let ports: Vec<String> = masters
        .servers()
        .iter()
        .map(|s| s.port().to_string())
        .collect();
    eprintln!(
        "deadbolt: started {n} private redis-servers for floor3 and w3 (127.0.0.1, ports {})",
        ports.join(", ")
    );
    Ok(masters)
}

/// Starts a private Redis Cluster (3 masters, 3 replicas) for the bench's W1c; it stops when
/// dropped, and dies with this process.
pub(crate) fn start_private_cluster() -> anyhow::Result<RedisCluster> {
    if !redis_server_available() {
        bail!(
            "w1c needs redis-server, and it is not on PATH; install it with \
             `sudo apt-get install -y redis-server`"
        );
    }
    // redis-cli joins the nodes; its absence is reported by `start` with the package to install.
    let cluster = RedisCluster::start().context("cannot start a private Redis Cluster")?;
    let ports: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|s| s.port().to_string())
        .collect();
    eprintln!(
        "deadbolt: started a private Redis Cluster of 6 redis-servers for w1c (127.0.0.1, ports \
         {})",
        ports.join(", ")
    );
    Ok(cluster)
}
