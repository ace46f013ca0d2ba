//! `deadbolt check --private MODE`: servers started for the run, each behind a fault proxy, and
//! one more, never faulted, for the resource the holders write to.

use std::sync::Arc;

use anyhow::Context;
use deadbolt_testkit::{FaultProxy, RedisServer, redis_server_available};

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
}

/// The private servers of a run; they stop when dropped, and die with this process.
#[derive(Debug)]
pub(crate) struct Private {
    mode: PrivateMode,
    /// Held for their lifetime: the proxies forward to them.
    _servers: Vec<RedisServer>,
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
        let n = match mode {
            PrivateMode::Single => 1,
            PrivateMode::Sharded | PrivateMode::Redlock3 => 3,
            PrivateMode::Redlock5 => 5,
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
            _servers: servers,
            proxies,
            resource,
        })
    }

    /// The deployment as clients see it: through the proxies.
    pub(crate) fn topology(&self) -> anyhow::Result<Topology> {
        let nodes = self
            .proxies
            .iter()
            .map(|p| Redis::given(&p.url()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(match self.mode {
            PrivateMode::Single => Topology::Single(nodes.into_iter().next().expect("one node")),
            PrivateMode::Sharded => Topology::Sharded(nodes),
            PrivateMode::Redlock3 | PrivateMode::Redlock5 => Topology::Redlock(nodes),
        })
    }

    /// The proxies the fault schedule may hit: every one, but only a minority of a Redlock's
    /// (a majority faulted at once is outside what Redlock promises to survive).
    pub(crate) fn faultable(&self) -> Vec<Arc<FaultProxy>> {
        let n = match self.mode {
            PrivateMode::Single | PrivateMode::Sharded => self.proxies.len(),
            PrivateMode::Redlock3 | PrivateMode::Redlock5 => (self.proxies.len() - 1) / 2,
        };
        self.proxies[..n].to_vec()
    }
}
