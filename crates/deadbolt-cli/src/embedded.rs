//! `bench` and `demo` without `--redis`: a private `redis-server` for this command only.
//!
//! Only these two start one: they measure or show the lock, and need no other holder. `run` and
//! `status` never do (see [`crate::connect`]): a lock nobody else can see excludes nobody.

use anyhow::{Context, bail};
use deadbolt_testkit::{RedisServer, redis_server_available};

use crate::connect::Redis;

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

/// The Redis to use, and the private server behind it if one had to be started (it stops when
/// dropped).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) redis: Redis,
    pub(crate) server: Option<RedisServer>,
}

impl Target {
    /// The URL, password included.
    pub(crate) fn url(&self) -> &str {
        &self.redis.url
    }
}

impl PrivateRedisArgs {
    /// Resolves `--redis`, starting a private server when none is given.
    pub(crate) fn target(&self) -> anyhow::Result<Target> {
        if let Some(url) = self.redis.as_deref().filter(|url| !url.trim().is_empty()) {
            return Ok(Target {
                redis: Redis::given(url.trim())?,
                server: None,
            });
        }
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
            redis: Redis::given(&server.url())?,
            server: Some(server),
        })
    }
}
