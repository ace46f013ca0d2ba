//! The embedded default: without `--redis`, a private `redis-server` for this command only.

use anyhow::{Context, bail};
use deadbolt_testkit::{RedisServer, redis_server_available};

use crate::RedisArgs;

/// The Redis to use, and the private server behind it if one had to be started (it stops when
/// dropped).
#[derive(Debug)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) server: Option<RedisServer>,
}

impl RedisArgs {
    /// Resolves `--redis`, starting a private server when none is given.
    pub(crate) fn target(&self) -> anyhow::Result<Target> {
        if let Some(url) = &self.redis {
            return Ok(Target {
                url: url.clone(),
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
            "deadbolt: no --redis given; started a private redis-server on {} for this command \
             (locks are private to it: pass --redis or set DEADBOLT_REDIS_URL to share them)",
            server.addr()
        );
        Ok(Target {
            url: server.url(),
            server: Some(server),
        })
    }
}
