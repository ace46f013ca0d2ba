//! N independent masters, the topology Redlock runs on.
//!
//! Redlock takes a lock by majority over servers that know nothing of each
//! other, so its tests need several plain servers rather than a cluster. Each
//! one is an ordinary [`RedisServer`], so a test can kill, pause or restart
//! any of them to take away a vote.

use std::io;

use crate::{RedisServer, RedisServerBuilder};

/// `n` independent `redis-server`s (no replication, no cluster), all killed
/// and their directories removed when this value is dropped.
///
/// Use it for Redlock and for anything that spreads keys over independent
/// nodes; use [`RedisCluster`](crate::RedisCluster) for Redis Cluster and
/// [`RedisSentinels`](crate::RedisSentinels) for a monitored master.
#[derive(Debug)]
pub struct RedisMasters {
    servers: Vec<RedisServer>,
}

impl RedisMasters {
    /// Starts `n` servers with default settings.
    ///
    /// # Errors
    ///
    /// See [`RedisServerBuilder::start`]; servers already started are
    /// stopped again.
    pub fn start(n: usize) -> io::Result<Self> {
        Self::with_builder(n, &RedisServer::builder())
    }

    /// Starts `n` servers, each configured like `builder` (password, extra
    /// arguments, TLS).
    ///
    /// # Errors
    ///
    /// See [`RedisServerBuilder::start`]; servers already started are
    /// stopped again.
    pub fn with_builder(n: usize, builder: &RedisServerBuilder) -> io::Result<Self> {
        let servers = (0..n)
            .map(|_| builder.clone().start())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self { servers })
    }

    /// The servers, in start order.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The servers, mutably, to [`kill`](RedisServer::kill) or
    /// [`restart`](RedisServer::restart) one of them.
    pub fn servers_mut(&mut self) -> &mut [RedisServer] {
        &mut self.servers
    }

    /// Each server's [`url`](RedisServer::url), in start order.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisServer::url).collect()
    }
}
