//! A Redis Cluster of 3 masters and 3 replicas.
//!
//! Sharded locks must keep every key of one lock in one slot and must survive
//! a master failing over to its replica; only a real cluster shows whether
//! they do (`MOVED` redirections, slot ownership changing under a client).
//! The recipe is the measured one: `--cluster-node-timeout 2000` so a replica
//! takes over in about 5 s, `--repl-diskless-sync-delay 0` so replicas finish
//! their first sync at once (a replica that never synced refuses to fail
//! over), and readiness means every node agrees: `cluster_state:ok`, 3
//! replicas in `CLUSTER NODES`, and every replica's link up.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis::Value;

use crate::port::CLUSTER_BUS_OFFSET;
use crate::server::PortChoice;
use crate::wait::{self, info_field};
use crate::{RedisServer, spawn};

/// Number of masters, each with one replica.
const MASTERS: usize = 3;
/// Total number of nodes.
const NODES: usize = 2 * MASTERS;
/// Number of hash slots in Redis Cluster.
const SLOTS: u32 = 16_384;
/// How long the cluster may take to agree after `--cluster create`.
const READY_LIMIT: Duration = Duration::from_secs(20);
/// How long `redis-cli --cluster create` may run.
const CREATE_LIMIT: Duration = Duration::from_secs(20);
/// How many times the whole cluster is set up again when creation fails.
const START_ATTEMPTS: usize = 3;
/// Name of the cluster creation tool looked up on `PATH`.
const REDIS_CLI_BIN: &str = "redis-cli";
/// Message of the error returned when `redis-cli` is missing.
const REDIS_CLI_NOT_FOUND: &str =
    "redis-cli not found on PATH; install it with: sudo apt-get install -y redis-tools";

/// Six `redis-server` nodes forming a Redis Cluster: 3 masters, each with one
/// replica, every slot assigned. All nodes are killed and their directories
/// removed when this value is dropped.
///
/// Use it for sharded locks and cluster routing; use
/// [`RedisMasters`](crate::RedisMasters) for Redlock and
/// [`RedisSentinels`](crate::RedisSentinels) for a monitored master.
///
/// Nodes listen on ports in 20000–45000, because each also needs its bus
/// port (port + 10000) free. Roles change on failover, so
/// [`masters`](Self::masters) and [`replicas`](Self::replicas) ask the live
/// nodes rather than remembering the start-up roles.
///
/// # Failover
///
/// Nodes use `--cluster-node-timeout 2000`: after [`kill`](Self::kill) of a
/// master its replica takes over its slots within about 5 s;
/// [`wait_for_failover`](Self::wait_for_failover) waits for that.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Holds the output of `redis-cli --cluster create`.
    dir: tempfile::TempDir,
}

/// One contiguous run of slots and the port of the master serving it.
#[derive(Debug, Clone, Copy)]
struct SlotRange {
    first: u32,
    last: u32,
    master_port: u16,
}

impl RedisCluster {
    /// Starts six nodes, joins them with `redis-cli --cluster create …
    /// --cluster-replicas 1`, and waits until every node reports
    /// `cluster_state:ok`, sees 3 replicas, and every replica's link to its
    /// master is up. Takes about 3.5 s.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::NotFound`] when `redis-server` or `redis-cli` (Debian
    /// package `redis-tools`) is not on `PATH`; [`io::ErrorKind::TimedOut`],
    /// with the unmet condition and each node's log tail, when the cluster
    /// does not agree within 20 s; any start-up error of a node.
    pub fn start() -> io::Result<Self> {
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("deadbolt-cluster-")
                .tempdir()?;
            let nodes = (0..NODES)
                .map(|_| {
                    RedisServer::builder()
                        .port_choice(PortChoice::Cluster)
                        .args([
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            "nodes.conf",
                            "--cluster-node-timeout",
                            "2000",
                            "--repl-diskless-sync-delay",
                            "0",
                        ])
                        .start()
                })
                .collect::<io::Result<Vec<_>>>()?;
            let cluster = Self { nodes, dir };
            // A node started on a port pair whose bus port was taken in the
            // meantime cannot join; a fresh set of ports fixes that.
            match create(&cluster.nodes, cluster.dir.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            }
            wait::until(READY_LIMIT, || cluster.readiness()).map_err(|why| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis cluster not ready after {READY_LIMIT:?}: {why}; node logs:\n{}",
                        cluster.logs()
                    ),
                )
            })?;
            return Ok(cluster);
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("redis cluster did not start")))
    }

    /// All six nodes, in start order (the first three started as masters).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// All six nodes, mutably, to [`pause`](RedisServer::pause) or
    /// [`restart`](RedisServer::restart) one (a restarted node keeps its
    /// `nodes.conf` and rejoins).
    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// Every node's [`url`](RedisServer::url): the seed list for a cluster
    /// client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node listening on `port`, if it is one of this cluster's.
    pub fn node(&self, port: u16) -> Option<&RedisServer> {
        self.nodes.iter().find(|n| n.port() == port)
    }

    /// The nodes currently serving slots, according to `CLUSTER SLOTS` on
    /// the first node that answers, sorted by port.
    ///
    /// # Errors
    ///
    /// When no node answers `CLUSTER SLOTS`.
    pub fn masters(&self) -> io::Result<Vec<&RedisServer>> {
        let mut ports: Vec<u16> = self.slot_ranges()?.iter().map(|r| r.master_port).collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports.into_iter().filter_map(|p| self.node(p)).collect())
    }

    /// The live nodes whose `INFO replication` reports `role:slave`.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| {
                n.try_query::<String>(redis::cmd("INFO").arg("replication"))
                    .is_ok_and(|info| info_field(&info, "role") == Some("slave"))
            })
            .collect()
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`), honouring `{hash tags}`.
    ///
    /// # Errors
    ///
    /// When no node answers.
    pub fn slot_of(&self, key: &str) -> io::Result<u16> {
        self.ask_any(|n| n.try_query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key)))
    }

    /// The master currently serving `slot`, from `CLUSTER SLOTS`.
    ///
    /// # Errors
    ///
    /// When no node answers, or no master serves the slot.
    pub fn master_of_slot(&self, slot: u16) -> io::Result<&RedisServer> {
        let slot = u32::from(slot);
        let port = self
            .slot_ranges()?
            .into_iter()
            .find(|r| (r.first..=r.last).contains(&slot))
            .map(|r| r.master_port)
            .ok_or_else(|| io::Error::other(format!("no master serves slot {slot}")))?;
        self.node(port).ok_or_else(|| {
            io::Error::other(format!("slot {slot} is served by unknown port {port}"))
        })
    }

    /// The master currently serving `key`: [`slot_of`](Self::slot_of) then
    /// [`master_of_slot`](Self::master_of_slot), so a plain connection to it
    /// can run commands on `key` without a `MOVED` redirection.
    ///
    /// # Errors
    ///
    /// As for those two.
    pub fn master_for_key(&self, key: &str) -> io::Result<&RedisServer> {
        self.master_of_slot(self.slot_of(key)?)
    }

    /// Kills the node listening on `port` with `SIGKILL` and reaps it, to
    /// simulate a crash.
    ///
    /// # Panics
    ///
    /// When no node of this cluster listens on `port`; this is a test helper.
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
            .kill();
    }

    /// Waits until the master that listened on `old_master_port` has been
    /// replaced: every slot is served by a master that answers, none by
    /// `old_master_port`, and every node that answers reports
    /// `cluster_state:ok`.
    ///
    /// Returns at once when `old_master_port` serves no slot.
    ///
    /// # Errors
    ///
    /// [`io::ErrorKind::TimedOut`], with the unmet condition and each node's
    /// log tail, when that does not happen within `limit`.
    pub fn wait_for_failover(&self, old_master_port: u16, limit: Duration) -> io::Result<()> {
        wait::until(limit, || self.failed_over(old_master_port)).map_err(|why| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no failover of the master on port {old_master_port} within {limit:?}: {why}; \
                     node logs:\n{}",
                    self.logs()
                ),
            )
        })
    }

    /// `Ok` when `old` serves no slot, every slot is served by a live master
    /// and every live node reports `cluster_state:ok`.
    fn failed_over(&self, old: u16) -> Result<(), String> {
        let ranges = self
            .nodes
            .iter()
            .filter(|n| n.port() != old)
            .find_map(|n| slot_ranges_of(n).ok())
            .ok_or("no node answers CLUSTER SLOTS")?;
        if ranges.iter().any(|r| r.master_port == old) {
            return Err(format!("port {old} still serves slots"));
        }
        let covered: u32 = ranges.iter().map(|r| r.last - r.first + 1).sum();
        if covered != SLOTS {
            return Err(format!("only {covered} of {SLOTS} slots are served"));
        }
        for range in &ranges {
            let master = self
                .node(range.master_port)
                .ok_or(format!("unknown master port {}", range.master_port))?;
            cluster_state_ok(master)?;
        }
        for node in self.nodes.iter().filter(|n| n.port() != old) {
            if node.try_query::<String>(&redis::cmd("PING")).is_ok() {
                cluster_state_ok(node)?;
            }
        }
        Ok(())
    }

    /// `Ok` when every node reports `cluster_state:ok`, lists 3 replicas in
    /// `CLUSTER NODES`, and every replica's link to its master is up.
    fn readiness(&self) -> Result<(), String> {
        let mut linked = 0;
        for node in &self.nodes {
            let port = node.port();
            cluster_state_ok(node)?;
            let table: String = node
                .try_query(redis::cmd("CLUSTER").arg("NODES"))
                .map_err(|e| format!("node {port}: CLUSTER NODES: {e}"))?;
            let replicas = table
                .lines()
                .filter(|line| {
                    line.split(' ')
                        .nth(2)
                        .is_some_and(|flags| flags.split(',').any(|f| f == "slave"))
                })
                .count();
            if replicas != MASTERS {
                return Err(format!("node {port} sees {replicas} of {MASTERS} replicas"));
            }
            let info: String = node
                .try_query(redis::cmd("INFO").arg("replication"))
                .map_err(|e| format!("node {port}: INFO replication: {e}"))?;
            if info_field(&info, "role") == Some("slave") {
                if info_field(&info, "master_link_status") != Some("up") {
                    return Err(format!("replica {port}: master link is not up"));
                }
                linked += 1;
            }
        }
        if linked != MASTERS {
            return Err(format!("{linked} of {MASTERS} replicas are linked"));
        }
        Ok(())
    }

    /// `CLUSTER SLOTS` from the first node that answers.
    fn slot_ranges(&self) -> io::Result<Vec<SlotRange>> {
        self.ask_any(slot_ranges_of)
    }

    /// The answer of the first node for which `ask` succeeds, or the last
    /// error.
    fn ask_any<T>(&self, ask: impl Fn(&RedisServer) -> redis::RedisResult<T>) -> io::Result<T> {
        let mut last = None;
        for node in &self.nodes {
            match ask(node) {
                Ok(value) => return Ok(value),
                Err(e) => last = Some(e),
            }
        }
        Err(io::Error::other(match last {
            Some(e) => format!("no cluster node answered: {e}"),
            None => "no cluster node answered".to_owned(),
        }))
    }

    /// Each node's log tail, headed by its port, for error messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let _ = write!(out, "--- node {} ---\n{}", node.port(), node.log_tail());
        }
        out
    }
}

/// `Ok` when `node` answers `CLUSTER INFO` with `cluster_state:ok`.
fn cluster_state_ok(node: &RedisServer) -> Result<(), String> {
    let port = node.port();
    let info: String = node
        .try_query(redis::cmd("CLUSTER").arg("INFO"))
        .map_err(|e| format!("node {port}: CLUSTER INFO: {e}"))?;
    match info_field(&info, "cluster_state") {
        Some("ok") => Ok(()),
        state => Err(format!("node {port}: cluster_state is {state:?}")),
    }
}

/// Parses `node`'s `CLUSTER SLOTS`: `[[first, last, [ip, port, id, …],
/// replicas…], …]`.
fn slot_ranges_of(node: &RedisServer) -> redis::RedisResult<Vec<SlotRange>> {
    let reply: Vec<Value> = node.try_query(redis::cmd("CLUSTER").arg("SLOTS"))?;
    let malformed = || {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "malformed CLUSTER SLOTS reply",
        ))
    };
    reply
        .into_iter()
        .map(|entry| {
            let Value::Array(items) = entry else {
                return Err(malformed());
            };
            let (Some(Value::Int(first)), Some(Value::Int(last)), Some(Value::Array(master))) =
                (items.first(), items.get(1), items.get(2))
            else {
                return Err(malformed());
            };
            let Some(Value::Int(port)) = master.get(1) else {
                return Err(malformed());
            };
            Ok(SlotRange {
                first: u32::try_from(*first).map_err(|_| malformed())?,
                last: u32::try_from(*last).map_err(|_| malformed())?,
                master_port: u16::try_from(*port).map_err(|_| malformed())?,
            })
        })
        .collect()
}

/// Runs `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`
/// on `nodes`, keeping its output in `dir` for the error message.
fn create(nodes: &[RedisServer], dir: &Path) -> io::Result<()> {
    let out_path = dir.join("cluster-create.log");
    let out = File::create(&out_path)?;
    let mut command = Command::new(REDIS_CLI_BIN);
    command
        .args(["--cluster", "create"])
        .args(nodes.iter().map(RedisServer::addr))
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut child = spawn::spawn_tied_to_process(command).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(io::ErrorKind::NotFound, REDIS_CLI_NOT_FOUND)
        } else {
            io::Error::new(e.kind(), format!("cannot spawn redis-cli: {e}"))
        }
    })?;
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();
    let deadline = Instant::now() + CREATE_LIMIT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let ports: Vec<String> = nodes
                .iter()
                .map(|n| format!("{}@{}", n.port(), n.port() + CLUSTER_BUS_OFFSET))
                .collect();
            return Err(io::Error::other(format!(
                "redis-cli --cluster create on ports {} failed ({status}):\n{}",
                ports.join(" "),
                output()
            )));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "redis-cli --cluster create did not finish within {CREATE_LIMIT:?}:\n{}",
                    output()
                ),
            ));
        }
        thread::sleep(Duration::from_millis(20));
    }
}
