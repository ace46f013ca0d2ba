//! A master, its replica and three Sentinels watching them.
//!
//! A lock held on a Sentinel-managed master can be lost when the master dies
//! before the key reached the replica that gets promoted; tests of that need
//! a real failover. The recipe is the measured one: Sentinels declare the
//! master down after 1 s and promote the replica about 2.3 s after a
//! `SIGKILL`. Each Sentinel gets a config file of its own, because Sentinel
//! rewrites it to record what it learns.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use crate::RedisServer;
use crate::wait::{self, info_field};

/// The name the Sentinels monitor the master under.
const MASTER_NAME: &str = "mymaster";
/// Number of Sentinels.
const SENTINELS: usize = 3;
/// How long replication and Sentinel discovery may take at start-up.
const READY_LIMIT: Duration = Duration::from_secs(20);

/// One master, one replica (`--replicaof`) and three Sentinels monitoring
/// them with a quorum of 2, all killed and their directories removed when
/// this value is dropped.
///
/// Use it for locks on a Sentinel-managed deployment; use
/// [`RedisMasters`](crate::RedisMasters) for Redlock and
/// [`RedisCluster`](crate::RedisCluster) for Redis Cluster.
///
/// # Failover
///
/// Sentinels use `down-after-milliseconds 1000` and `failover-timeout 3000`:
/// after [`kill_master`](Self::kill_master) the replica is promoted in about
/// 2.5 s; [`wait_for_failover`](Self::wait_for_failover) waits for it.
/// [`master`](Self::master) and [`replica`](Self::replica) keep naming the
/// servers by the roles they started with.
#[derive(Debug)]
pub struct RedisSentinels {
    master: RedisServer,
    replica: RedisServer,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    /// Starts the master, then the replica and waits until its link is up,
    /// then the Sentinels, and waits until each knows the master, the
    /// replica and the two other Sentinels. Takes about 2–3 s.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] when `redis-server` is not on `PATH`;
    /// [`io::ErrorKind::TimedOut`], with the unmet condition and the log
    /// tails, when replication or discovery does not settle within 20 s;
    /// any start-up error of a server.
    pub fn start() -> io::Result<Self> {
        let master = RedisServer::builder()
            .args(["--repl-diskless-sync-delay", "0"])
            .start()?;
        let master_port = master.port().to_string();
        let replica = RedisServer::builder()
            .args([
                "--repl-diskless-sync-delay",
                "0",
                "--replicaof",
                "127.0.0.1",
            ])
            .arg(master_port.as_str())
            .start()?;
        // Sentinels learn replicas from the master's INFO, which they fetch
        // on connecting and then only every 10 s: start them once the
        // replica is attached, so they see it at once.
        wait::until(READY_LIMIT, || replica_linked(&replica)).map_err(|why| {
            timed_out(&format!("replica not linked: {why}"), &[&master, &replica])
        })?;
        let config = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 3000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n"
        );
        // Port, bind address and directory come from the command line that
        // every server gets; Sentinel writes them into the file too.
        let sentinels = (0..SENTINELS)
            .map(|_| {
                RedisServer::builder()
                    .config_file(config.as_str())
                    .arg("--sentinel")
                    .start()
            })
            .collect::<io::Result<Vec<_>>>()?;
        let topology = Self {
            master,
            replica,
            sentinels,
        };
        wait::until(READY_LIMIT, || topology.discovered()).map_err(|why| {
            timed_out(&format!("sentinels not ready: {why}"), &topology.servers())
        })?;
        Ok(topology)
    }

    /// The server started as master; after a failover it is no longer the
    /// master (see [`current_master_port`](Self::current_master_port)).
    pub fn master(&self) -> &RedisServer {
        &self.master
    }

    /// The server started as the master's replica; it becomes the master on
    /// failover.
    pub fn replica(&self) -> &RedisServer {
        &self.replica
    }

    /// The three Sentinel processes.
    pub fn sentinels(&self) -> &[RedisServer] {
        &self.sentinels
    }

    /// The Sentinels' URLs, `redis://127.0.0.1:PORT`, for a Sentinel-aware
    /// client.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The name the master is monitored under: `mymaster`.
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The master's port according to the first Sentinel that answers
    /// `SENTINEL GET-MASTER-ADDR-BY-NAME`.
    ///
    /// # Errors
    ///
    /// When no Sentinel answers with an address.
    pub fn current_master_port(&self) -> io::Result<u16> {
        let mut last = String::from("no sentinel");
        for sentinel in &self.sentinels {
            match master_port_of(sentinel) {
                Ok(port) => return Ok(port),
                Err(e) => last = e,
            }
        }
        Err(io::Error::other(format!(
            "no sentinel reports the master: {last}"
        )))
    }

    /// Kills the master with `SIGKILL` and reaps it, to start a failover.
    pub fn kill_master(&mut self) {
        self.master.kill();
    }

    /// Waits until every Sentinel reports the replica as the master and the
    /// replica reports `role:master`; returns its port.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`], with the unmet condition and the log
    /// tails, when that does not happen within `limit`.
    pub fn wait_for_failover(&self, limit: Duration) -> io::Result<u16> {
        let new_port = self.replica.port();
        wait::until(limit, || {
            for sentinel in &self.sentinels {
                let port = master_port_of(sentinel)?;
                if port != new_port {
                    return Err(format!(
                        "sentinel {} still reports port {port}",
                        sentinel.port()
                    ));
                }
            }
            let info: String = self
                .replica
                .try_query(redis::cmd("INFO").arg("replication"))
                .map_err(|e| format!("replica: INFO replication: {e}"))?;
            match info_field(&info, "role") {
                Some("master") => Ok(new_port),
                role => Err(format!("replica reports role {role:?}")),
            }
        })
        .map_err(|why| {
            timed_out(
                &format!("no failover within {limit:?}: {why}"),
                &self.servers(),
            )
        })
    }

    /// `Ok` when every Sentinel knows the master, one replica and the two
    /// other Sentinels.
    fn discovered(&self) -> Result<(), String> {
        for sentinel in &self.sentinels {
            let port = sentinel.port();
            let fields: Vec<String> = sentinel
                .try_query(redis::cmd("SENTINEL").arg("MASTER").arg(MASTER_NAME))
                .map_err(|e| format!("sentinel {port}: SENTINEL MASTER: {e}"))?;
            let field = |name: &str| {
                fields
                    .chunks(2)
                    .find(|pair| pair[0] == name)
                    .and_then(|pair| pair.get(1))
                    .map(String::as_str)
            };
            if field("num-slaves") != Some("1") {
                return Err(format!("sentinel {port} does not know the replica yet"));
            }
            if field("num-other-sentinels") != Some("2") {
                return Err(format!(
                    "sentinel {port} knows {:?} other sentinels, not 2",
                    field("num-other-sentinels")
                ));
            }
        }
        Ok(())
    }

    /// Master, replica and Sentinels, for error messages.
    fn servers(&self) -> Vec<&RedisServer> {
        let mut all = vec![&self.master, &self.replica];
        all.extend(&self.sentinels);
        all
    }
}

/// `Ok` when `replica` reports `master_link_status:up`.
fn replica_linked(replica: &RedisServer) -> Result<(), String> {
    let info: String = replica
        .try_query(redis::cmd("INFO").arg("replication"))
        .map_err(|e| format!("INFO replication: {e}"))?;
    match info_field(&info, "master_link_status") {
        Some("up") => Ok(()),
        status => Err(format!("master_link_status is {status:?}")),
    }
}

/// The master port `sentinel` reports for [`MASTER_NAME`].
fn master_port_of(sentinel: &RedisServer) -> Result<u16, String> {
    let port = sentinel.port();
    let addr: Vec<String> = sentinel
        .try_query(
            redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(MASTER_NAME),
        )
        .map_err(|e| format!("sentinel {port}: {e}"))?;
    addr.get(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("sentinel {port} answered {addr:?}"))
}

/// A [`io::ErrorKind::TimedOut`] error with `what` and each server's log
/// tail.
fn timed_out(what: &str, servers: &[&RedisServer]) -> io::Error {
    let mut message = format!("{what}; logs:\n");
    for server in servers {
        let _ = write!(
            message,
            "--- port {} ---\n{}",
            server.port(),
            server.log_tail()
        );
    }
    io::Error::new(io::ErrorKind::TimedOut, message)
}
