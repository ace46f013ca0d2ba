//! `deadbolt check --private MODE`: servers started for the run, each behind a fault proxy, and
//! one more, never faulted, for the resource the holders write to.

use std::sync::Arc;

use anyhow::Context;
use deadbolt_testkit::{FaultProxy, RedisCluster, RedisServer, redis_server_available};

use crate::connect::{Redis, Topology};

/// The deployments `--private` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PrivateMode {
    /// One server.
    Single,
    /// Three servers, each name on one of them.
    Sharded,
    /// A Redlock over three masters.
    Redlock3,
    /// A Redlock over five masters.
    Redlock5,
    /// A Redis Cluster of 3 masters and 3 replicas (not behind proxies: its nodes announce
    /// their own addresses, so it takes no network faults).
    Cluster,
}

/// The private servers of a run; they stop when dropped, and die with this process.
#[derive(Debug)]
pub(crate) struct Private {
    mode: PrivateMode,
    /// Held for their lifetime: the proxies forward to them.
    servers: Vec<RedisServer>,
    /// The private Cluster, for `cluster`.
    cluster: Option<RedisCluster>,
    proxies: Vec<Arc<FaultProxy>>,
    /// The resource's server, not behind a proxy.
    pub(crate) resource: RedisServer,
}

impl Private {
    /// Starts the servers of `mode` and their proxies.
    pub(crate) fn start(mode: PrivateMode) -> anyhow::Result<Private> {
        if !redis_server_available() {
            anyhow::bail!(
                "--private needs redis-server, and it is not on PATH; install it with \
                 `sudo apt-get install -y redis-server`"
            );
        }
        if mode == PrivateMode::Cluster {
            let cluster = RedisCluster::start().context("cannot start a private Redis Cluster")?;
            let resource = RedisServer::start().context("cannot start redis-server")?;
            eprintln!(
                "deadbolt: started a private Redis Cluster of 6 redis-servers and one server for \
                 the resource"
            );
            return Ok(Private {
                mode,
                servers: Vec::new(),
                cluster: Some(cluster),
                proxies: Vec::new(),
                resource,
            });
        }
        let n = match mode {
            PrivateMode::Single => 1,
            PrivateMode::Sharded | PrivateMode::Redlock3 => 3,
            // (A Cluster returned above.)
            PrivateMode::Redlock5 | PrivateMode::Cluster => 5,
        };
        let servers = (0..n)
            .map(|_| RedisServer::start())
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot start redis-server")?;
        let proxies = servers
            .iter()
            .map(|s| FaultProxy::start(s).map(Arc::new))
            .collect::<std::io::Result<Vec<_>>>()
            .context("cannot start a fault proxy")?;
        let resource = RedisServer::start().context("cannot start redis-server")?;
        let ports: Vec<String> = servers.iter().map(|s| s.port().to_string()).collect();
        eprintln!(
            "deadbolt: started {n} private redis-server(s) behind fault proxies (127.0.0.1, ports \
             {}) and one for the resource (port {})",
            ports.join(", "),
            resource.port()
        );
        Ok(Private {
            mode,
            servers,
            cluster: None,
            proxies,
            resource,
        })
    }

    /// The lock servers themselves (not the proxies), for their command counts: the Cluster's
    /// masters and replicas, or every server.
    pub(crate) fn servers(&self) -> &[RedisServer] {
        match &self.cluster {
            Some(cluster) => cluster.nodes(),
            None => &self.servers,
        }
    }

    /// The deployment as clients see it: through the proxies.
    pub(crate) fn topology(&self) -> anyhow::Result<Topology> {
        let given = |urls: Vec<String>| {
            urls.iter()
                .map(|u| Redis::given(u))
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let mut nodes = given(self.proxies.iter().map(|p| p.url()).collect())?;
        Ok(match self.mode {
            PrivateMode::Single => Topology::Single(nodes.remove(0)),
            PrivateMode::Sharded => Topology::Sharded(nodes),
            PrivateMode::Redlock3 | PrivateMode::Redlock5 => Topology::Redlock(nodes),
            PrivateMode::Cluster => {
                let urls = self.cluster.as_ref().map(RedisCluster::urls);
                Topology::Cluster(given(urls.unwrap_or_default())?)
            }
        })
    }

    /// The proxies the fault schedule may hit: every one, but only a minority of a Redlock's
    /// (a majority faulted at once is outside what Redlock promises to survive).
    pub(crate) fn faultable(&self) -> Vec<Arc<FaultProxy>> {
        let n = match self.mode {
            PrivateMode::Single | PrivateMode::Sharded => self.proxies.len(),
            PrivateMode::Redlock3 | PrivateMode::Redlock5 => (self.proxies.len() - 1) / 2,
            PrivateMode::Cluster => 0,
        };
        self.proxies[..n].to_vec()
    }
}
