//! Real `redis-server` processes for deadbolt's integration tests and for the
//! CLI's private embedded Redis.
//!
//! Lock semantics depend on how a real server behaves (expiry, scripts,
//! restarts, stalls), so this crate never mocks Redis: every
//! [`RedisServer`] is a genuine `redis-server` child process with its own
//! temporary directory, no persistence, and a loopback-only listener.
//!
//! # Why ports are chosen this way
//!
//! Tests run in parallel, so a fixed port would collide. Instead the kernel is
//! asked for a free port (bind `127.0.0.1:0`, read the port, close the
//! listener) and `redis-server` is started on it. Between closing the listener
//! and Redis binding, another test may grab the same port; when that happens
//! Redis exits with "Address already in use", which is detected and retried on
//! a fresh port (up to 10 attempts). This avoids both a port registry and any
//! cross-process coordination, and it works under `cargo test` and nextest.
//!
//! # Cleanup
//!
//! A server is killed with `SIGKILL` and reaped when its [`RedisServer`] is
//! dropped, which also happens while a panicking test unwinds. As a second
//! line of defence the child asks the kernel to `SIGKILL` it when the test
//! process dies (`PR_SET_PDEATHSIG`), so even an aborted test run leaves no
//! `redis-server` behind.
//!
//! # Faults
//!
//! A server can be killed, paused and restarted in place
//! ([`RedisServer::kill`], [`pause`](RedisServer::pause),
//! [`restart`](RedisServer::restart)); the network between a client and it
//! is faulted by a [`FaultProxy`] (latency, blackhole, reset, refusal, and
//! faults on replies alone: held, dropped, or a reset right after the request,
//! so that a command runs on the server while its client never hears of it).
//! A [`FaultSchedule`] plays a seeded sequence of such faults on one or more
//! proxies, and prints its seed so that a failing run replays.
//! [`RedisServerBuilder::tls`] starts a TLS server with its own throwaway CA,
//! and [`RedisServer::acl_user`] adds users with restricted rights.
//!
//! # Topologies
//!
//! Beyond one server, the kit starts the deployments the lock types run on,
//! each torn down completely when dropped: [`RedisMasters`] (N independent
//! servers, for Redlock), [`RedisCluster`] (3 masters and 3 replicas, for
//! sharded locks) and [`RedisSentinels`] (a master, its replica and 3
//! Sentinels). The cluster and Sentinel set-ups can kill their master and
//! wait, bounded, for the failover.
//!
//! # Example
//!
//! ```no_run
//! use deadbolt_testkit::RedisServer;
//!
//! let server = RedisServer::builder()
//!     .password("s3cret")
//!     .arg("--enable-debug-command")
//!     .arg("yes")
//!     .start()?;
//! let mut conn = server.connection();
//! redis::cmd("SET").arg("key").arg("value").query::<()>(&mut conn)?;
//! assert_eq!(server.keys(), ["key"]);
//! assert_eq!(server.command_calls().get("set"), Some(&1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cluster;
pub mod history;
mod masters;
mod port;
mod proxy;
mod sentinel;
mod server;
mod spawn;
mod tls;
mod wait;

pub use cluster::RedisCluster;
pub use masters::RedisMasters;
pub use proxy::{Fault, FaultProxy, FaultSchedule, FaultStep, SplitMix64};
pub use sentinel::RedisSentinels;
pub use server::{RedisServer, RedisServerBuilder};

/// Name of the binary looked up on `PATH`.
const REDIS_SERVER_BIN: &str = "redis-server";

/// Message of the [`std::io::ErrorKind::NotFound`] error returned when the
/// binary is missing, telling the reader how to fix it.
const NOT_FOUND_MESSAGE: &str =
    "redis-server not found on PATH; install it with: sudo apt-get install -y redis-server";

/// Reports whether an executable `redis-server` is on `PATH`.
///
/// Lets callers skip or fail early with a helpful message instead of hitting
/// the [`std::io::ErrorKind::NotFound`] error from [`RedisServer::start`]
/// ("redis-server not found on PATH; install it with: sudo apt-get install -y
/// redis-server").
pub fn redis_server_available() -> bool {
    use std::os::unix::fs::PermissionsExt;

    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(REDIS_SERVER_BIN))
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
