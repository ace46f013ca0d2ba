//! `deadbolt bench`: what a deadbolt lock costs, next to the cheapest possible Redis lock.
//!
//! Every workload runs in this process, one after the other: floor, W1 and W2 against the same
//! Redis, floor3 and W3 against five private servers of their own, W1c against a private Redis
//! Cluster of its own. Each
//! measurement is preceded by a 200 ms warm-up that is not counted (it loads the Lua scripts and
//! fills the connection pools), and stops by itself after `--duration` or `--ops`.
//!
//! # The workloads
//!
//! - **`floor`**: the raw baseline, no library. Each worker loops `SET key token NX PX 30000`
//!   then `EVALSHA` of a compare-and-delete script on its own key (`bench:floor:{i}`), over one
//!   shared connection. Nothing can be cheaper and still be a lock: two round trips per cycle.
//!   The connection is W1's own command connection, which bounds each command by the client's
//!   command timeout (a response timeout, as redis-rs sets by default): the floor pays that
//!   bound as W1 does, and W1 adds no second one.
//! - **`W1`**: the library's overhead. `--workers` workers, each on its own lock (`w1:{i}`), loop
//!   acquire (fixed 30 s lease) → release through one shared [`deadbolt::Client`]. There is no
//!   contention, so `W1 / floor` is the price of fencing tokens, release notifications and the
//!   client's bookkeeping. With `--fenced`, each W1 acquisition is fenced and its token read.
//!   Floor and W1 run interleaved in `--rounds` rounds (alternating which
//!   goes first) and report the median ops/s of the rounds, so a noisy second does not decide the
//!   ratio.
//! - **`floor3`**: the raw baseline of a Redlock over 5 nodes, no library. Each worker loops
//!   `SET key token NX PX 30000` sent to the 5 nodes at once (`join_all`), then the
//!   compare-and-delete `EVALSHA` sent to the 5 at once, on its own key (`bench:floor3:{i}`), over
//!   the W3 client's own connections: two parallel round trips per cycle, five times the server
//!   work of the floor.
//! - **`W3`**: W1's loop on a Redlock client over 5 private `redis-server`s started for the
//!   bench (`w3:{i}`). `W3 / floor3` is the price of Redlock's bookkeeping (votes, validity,
//!   per-node timeouts) over the bare fan-out, and `W3 cycle / W1 cycle` (p50) what a quorum lock
//!   costs a caller next to one server. floor3 and W3 run in the same rounds as floor and W1,
//!   interleaved with them. They are not in the default set (they start 5 servers) and cannot
//!   run against `--redis`.
//! - **`W1c`**: W1's loop on a Redis Cluster client (`w1c:{i}`), over a private cluster of 3
//!   masters and 3 replicas started for the bench (it needs `redis-cli` too, and takes a few
//!   seconds to form). `W1c / W1` (ops/s, and the cycle p50/p99) is what the cluster client's
//!   routing costs next to one server; the locks spread over the 3 masters by hash slot. It
//!   runs in the same rounds as floor and W1, is not in the default set (it starts 6 servers)
//!   and cannot run against `--redis`.
//! - **`W2`**: contention and correctness. `--w2-workers` workers fight for one lock (`w2`, fixed
//!   5 s lease) and, while holding it, read a plain counter key, sleep `--hold`, and write the
//!   value plus one: a read-modify-write that loses updates as soon as two workers overlap. The
//!   workers are spread over `--clients` clients (one client is the normal one-per-process
//!   deployment; more simulate several processes).
//!
//! # Reading the numbers
//!
//! - `ops/s`: completed acquire → release cycles per second.
//! - `wait`: time spent inside `acquire` (p50/p99/max, µs). In W2 this is mostly queueing for
//!   the lock: with N workers a p50 near N × cycle is expected, and the p99 shows unfairness.
//! - `cycle`: from the start of `acquire` to the end of `release` (µs).
//! - `per-worker min/max`: acquisitions of the least and most lucky worker. Their ratio (the
//!   spread) is 1.0 for a perfectly fair lock; a large spread means starvation.
//!   With `--clients` above 1, W2 also lists acquisitions per client, which tells a client
//!   keeping the lock to itself apart from an unlucky worker.
//! - `cmds/acq`: Redis commands per acquisition, from `INFO commandstats` around the measured
//!   phase (summed over the 5 nodes for floor3 and W3, over the 3 masters for W1c). Commands run inside Lua scripts are counted by Redis too, so this is the total work
//!   for the server; the top-level part (the round trips a client pays for) comes from a short
//!   `MONITOR` census after the measurement, which tells the two apart. The census only runs
//!   against the private server, since MONITOR slows a shared one and would see its other
//!   clients, nor on the cluster, whose nodes would answer the census's end marker with a
//!   redirection. W2's own counter `GET`/`SET` are not lock costs and are left out.
//! - `lost updates` (W2): completed increments minus how far the counter moved. Anything but
//!   0 means two workers held the lock at once.
//! - `W1 / floor`: near 1.0 means the library adds (almost) nothing to the round trips. `W2 /
//!   ideal`: the ideal is one critical section plus one round trip per operation,
//!   1 / (GET + hold + SET + RTT), measured on an idle connection just before W2 (the hold as
//!   actually slept, since timers round up): how much of the hand-off between holders the lock
//!   hides. `W3 / floor3`, `W3 cycle / W1 cycle` and `W1c / W1`: see the workloads.
//!
//! # `--link-delay`
//!
//! On loopback, a Redlock's cost over one server is CPU: the five servers and their wake-ups
//! share two cores, so even floor3's cycle is well over the floor's. Between machines it is
//! latency: the five round trips overlap. `--link-delay D` puts a proxy that holds every chunk
//! `D` each way between the workloads and the private servers (floor, W1, W2, floor3, W3; not
//! W1c, whose cluster hands out its nodes' own addresses), to measure that second picture.
//!
//! Against a shared Redis (`--redis`), other clients' commands land in the command counts; the
//! statistics are then read as a difference rather than reset, so the server's own statistics are
//! left alone. Every key the bench creates is deleted at the end, also after Ctrl-C (the
//! cluster's keys go with the cluster, which is stopped like the other private servers).

mod link;
mod phase;
mod report;
mod server;

use std::time::Duration;

use anyhow::{Context as _, bail};
use deadbolt::Client;

use deadbolt_testkit::{RedisCluster, RedisMasters};

use self::link::{Links, MAX_LINK_DELAY};
use self::phase::{Floor, Floor3, Phase, Stop, Uncontended, W2, Work, run_phase};
use self::report::{Ideal, Measured, Report};
use self::server::{Census, CensusCounts, CommandCounts, ServerStats};
use crate::embedded::PrivateRedisArgs;
use crate::exit::{Interrupted, usage};
use crate::human;

/// The key prefix of every deadbolt client of the bench, so its keys never mix with real locks.
const PREFIX: &str = "bench";
/// The unmeasured run before each measurement.
const WARMUP: Duration = Duration::from_millis(200);
/// Acquisitions watched by the MONITOR census.
const CENSUS_OPS: u64 = 100;
/// The census stops after this long even if it saw fewer acquisitions (a stalled lock).
const CENSUS_MAX: Duration = Duration::from_secs(3);
/// The most workers of one workload: beyond that the bench measures the tokio scheduler.
const MAX_WORKERS: usize = 4096;
/// The most W2 clients; each holds two connections and a watchdog task.
const MAX_CLIENTS: usize = 256;
/// The longest W2 hold: it must stay far inside W2's 5 s lease.
const MAX_HOLD: Duration = Duration::from_secs(1);
/// The longest measurement of one workload.
const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most rounds of floor and W1.
const MAX_ROUNDS: usize = 100;
/// The nodes of W3's Redlock (and floor3's fan-out).
const QUORUM_NODES: usize = 5;
/// The masters of W1c's cluster (each with a replica), where its commands are counted.
const CLUSTER_MASTERS: usize = 3;

/// Options of `deadbolt bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    redis: PrivateRedisArgs,

    /// Workload to run; repeat for several. floor3 and w3 (a Redlock over 5 nodes) start 5
    /// private redis-servers of their own; w1c (W1 on a Redis Cluster) starts a private cluster
    /// of 6 (needs redis-cli) [default: floor, w1, w2]
    #[arg(long = "workload", value_name = "NAME", value_enum, ignore_case = true)]
    workloads: Vec<Workload>,

    /// Workers of W1, W3, W1c and the floors, each on its own key
    #[arg(long, value_name = "K", default_value_t = 1)]
    workers: usize,

    /// Workers of W2, all contending for one lock
    #[arg(long, value_name = "N", default_value_t = 16)]
    w2_workers: usize,

    /// deadbolt clients the W2 workers are spread over; more than one simulates several
    /// processes
    #[arg(long, value_name = "C", default_value_t = 1)]
    clients: usize,

    /// Time W2 spends inside the lock between reading and writing the counter
    #[arg(long, value_name = "DURATION", default_value = "1ms", value_parser = humantime::parse_duration)]
    hold: Duration,

    /// Measured time per workload and round, after a 200 ms warm-up
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Stop each measurement after N acquisitions (attempts, counting failed ones) instead of
    /// after --duration
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    ops: Option<u64>,

    /// Interleaved rounds of floor, W1, floor3, W3 and W1c; each reports the median ops/s of its
    /// rounds
    #[arg(long, value_name = "R", default_value_t = 3)]
    rounds: usize,

    /// W1, W3 and W1c take fenced locks and read each one's fencing token (minted with the
    /// acquisition), to measure what fencing costs over the floor
    #[arg(long)]
    fenced: bool,

    /// The workloads of the private servers (floor, W1, W2, floor3, W3) reach them through a
    /// proxy that holds every chunk this long each way, as a network link would [default: none]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    link_delay: Option<Duration>,

    /// Print one JSON object per workload per line instead of the table
    #[arg(long)]
    json: bool,
}

/// A workload of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Workload {
    /// Raw `SET NX PX` + compare-and-delete, no library.
    Floor,
    /// Uncontended acquire → release, one lock per worker.
    W1,
    /// Raw `SET NX PX` + compare-and-delete fanned out to 5 nodes, no library.
    Floor3,
    /// W1 on a Redlock over 5 nodes.
    W3,
    /// W1 on a Redis Cluster (3 masters, 3 replicas).
    W1c,
    /// Contended read-modify-write under one lock.
    W2,
}

impl Workload {
    /// The name used in the table and the JSON.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Workload::Floor => "floor",
            Workload::W1 => "W1",
            Workload::W2 => "W2",
            Workload::Floor3 => "floor3",
            Workload::W3 => "W3",
            Workload::W1c => "W1c",
        }
    }

    /// Whether it runs on the 5 private nodes rather than the one server.
    pub(crate) fn on_quorum(self) -> bool {
        matches!(self, Workload::Floor3 | Workload::W3)
    }

    /// Whether it runs on the private Redis Cluster rather than the one server.
    pub(crate) fn on_cluster(self) -> bool {
        self == Workload::W1c
    }

    /// Whether it runs on the one server (`--redis` or a private one).
    fn on_single(self) -> bool {
        !self.on_quorum() && !self.on_cluster()
    }
}

/// The validated options: what to run and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The workloads to run, deduplicated, in report order (floor, W1, floor3, W3, W1c, W2).
    pub(crate) workloads: Vec<Workload>,
    /// Workers of W1, W3, W1c and the floors.
    pub(crate) workers: usize,
    /// Workers of W2.
    pub(crate) w2_workers: usize,
    /// Clients of W2.
    pub(crate) clients: usize,
    /// W2's hold inside the lock.
    pub(crate) hold: Duration,
    /// When each measurement stops.
    pub(crate) stop: Stop,
    /// Rounds of floor, W1, floor3, W3 and W1c.
    pub(crate) rounds: usize,
    /// Whether W1's, W3's and W1c's locks are fenced.
    pub(crate) fenced: bool,
    /// How long the links to the private servers hold every chunk each way.
    pub(crate) link_delay: Option<Duration>,
}

impl Plan {
    /// Checks the options before anything is started, so bad input costs no server start.
    fn new(args: &Args) -> anyhow::Result<Plan> {
        let check = |name: &str, value: usize, max: usize| -> anyhow::Result<()> {
            if value == 0 || value > max {
                return Err(usage(format!(
                    "{name} must be between 1 and {max}, not {value}"
                )));
            }
            Ok(())
        };
        check("--workers", args.workers, MAX_WORKERS)?;
        check("--w2-workers", args.w2_workers, MAX_WORKERS)?;
        check("--clients", args.clients, MAX_CLIENTS)?;
        check("--rounds", args.rounds, MAX_ROUNDS)?;
        let mut workloads = if args.workloads.is_empty() {
            vec![Workload::Floor, Workload::W1, Workload::W2]
        } else {
            args.workloads.clone()
        };
        workloads.sort();
        workloads.dedup();
        let given = args
            .redis
            .redis
            .as_deref()
            .is_some_and(|url| !url.trim().is_empty());
        if given && workloads.iter().any(|w| w.on_quorum()) {
            return Err(usage(
                "floor3 and w3 run on 5 private redis-servers they start themselves, not on \
                 --redis (or DEADBOLT_REDIS_URL): leave it out to run them",
            ));
        }
        if given && workloads.iter().any(|w| w.on_cluster()) {
            return Err(usage(
                "w1c runs on a private Redis Cluster it starts itself, not on --redis (or \
                 DEADBOLT_REDIS_URL): leave it out to run it",
            ));
        }
        let link_delay = args.link_delay.filter(|d| !d.is_zero());
        if let Some(delay) = link_delay {
            if given && workloads.iter().any(|w| w.on_single()) {
                return Err(usage(
                    "--link-delay runs the workloads over the bench's own private servers, not \
                     --redis (or DEADBOLT_REDIS_URL): leave it out",
                ));
            }
            if workloads.iter().any(|w| w.on_cluster()) {
                return Err(usage(
                    "--link-delay cannot run w1c: a cluster tells its clients its nodes' own \
                     addresses, which no proxy stands in front of",
                ));
            }
            if delay > MAX_LINK_DELAY {
                return Err(usage(format!(
                    "--link-delay must be at most {}, not {}",
                    human::duration(MAX_LINK_DELAY),
                    human::duration(delay)
                )));
            }
        }
        // Only checked when W2 runs: `--clients 8` is harmless next to `--workload w1`.
        if workloads.contains(&Workload::W2) && args.clients > args.w2_workers {
            return Err(usage(format!(
                "--clients ({}) must not exceed --w2-workers ({}): a client without workers \
                 measures nothing",
                args.clients, args.w2_workers
            )));
        }
        if args.hold > MAX_HOLD {
            return Err(usage(format!(
                "--hold must be at most {}, not {}: W2's lease is 5 s",
                human::duration(MAX_HOLD),
                human::duration(args.hold)
            )));
        }
        let stop = match args.ops {
            Some(0) => return Err(usage("--ops must be at least 1")),
            Some(ops) => Stop::ops(ops),
            None if args.duration.is_zero() => {
                return Err(usage("--duration must be longer than 0s"));
            }
            None if args.duration > MAX_DURATION => {
                return Err(usage(format!(
                    "--duration must be at most {}, not {}",
                    human::duration(MAX_DURATION),
                    human::duration(args.duration)
                )));
            }
            None => Stop::time(args.duration),
        };
        Ok(Plan {
            workloads,
            workers: args.workers,
            w2_workers: args.w2_workers,
            clients: args.clients,
            hold: args.hold,
            stop,
            rounds: args.rounds,
            fenced: args.fenced,
            link_delay,
        })
    }

    /// Whether `workload` was asked for.
    fn has(&self, workload: Workload) -> bool {
        self.workloads.contains(&workload)
    }

    /// Whether a workload on the one server was asked for (floor, W1, W2).
    fn on_single(&self) -> bool {
        self.workloads.iter().any(|w| w.on_single())
    }

    /// Whether a workload on the 5 nodes was asked for (floor3, W3).
    fn on_quorum(&self) -> bool {
        self.workloads.iter().any(|w| w.on_quorum())
    }

    /// Whether a workload on the Redis Cluster was asked for (W1c).
    fn on_cluster(&self) -> bool {
        self.workloads.iter().any(|w| w.on_cluster())
    }
}

/// Runs `deadbolt bench`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    // Kept alive to the end: dropping them stops the private servers, on every way out
    // (an error, Ctrl-C; they also die with this process, see deadbolt-testkit).
    let target = plan.on_single().then(|| args.redis.target()).transpose()?;
    let masters = plan
        .on_quorum()
        .then(|| crate::embedded::start_private_masters(QUORUM_NODES))
        .transpose()?;
    let cluster = plan
        .on_cluster()
        .then(crate::embedded::start_private_cluster)
        .transpose()?;
    // One plain connection first, so an unreachable Redis or a wrong password fails at once, and
    // with the same message as every other command, rather than after the reconnect back-off of
    // the bench's own connections.
    if let Some(target) = &target {
        drop(target.redis().client(PREFIX).await?);
    }
    let single = target.as_ref().map(|t| (t.url(), t.server.is_some()));
    let quorum = masters.as_ref().map(RedisMasters::urls);
    let cluster_urls = cluster.as_ref().map(cluster_urls).transpose()?;
    let mut bench = Bench::connect(single, quorum.as_deref(), cluster_urls.as_ref(), &plan).await?;
    let outcome = tokio::select! {
        outcome = bench.run_all(&plan) => outcome,
        // Dropping `run_all` aborts the workers (they live in JoinSets), so the cleanup below
        // does not race them.
        _ = tokio::signal::ctrl_c() => Err(Interrupted.into()),
    };
    // Best effort and never fatal: a failed cleanup must not hide the results or the error.
    if let Err(err) = bench.cleanup().await {
        eprintln!(
            "deadbolt: warning: could not delete the bench keys: {}",
            crate::exit::chain(&err)
        );
    }
    let reports = outcome?;
    if args.json {
        for report in &reports {
            println!("{}", report.json_line());
        }
    } else {
        print!("{}", report::table(&reports));
    }
    drop(target);
    drop(masters);
    drop(cluster);
    if let Some(lost) = reports
        .iter()
        .find_map(|r| r.lost_updates.filter(|&n| n != 0))
    {
        bail!(
            "W2 lost {lost} update(s): two workers held the lock at once (or a counter write \
             failed ambiguously)"
        );
    }
    Ok(())
}

/// The servers of some workloads: a statistics connection to each, and the keys to delete.
#[derive(Debug)]
struct Servers {
    /// One connection per server for statistics, probes and cleanup, apart from every
    /// workload's.
    stats: Vec<ServerStats>,
    /// Their URLs, for the census's own connections.
    urls: Vec<String>,
    /// Whether they are our private ones (see [`ServerStats`] and the census).
    private: bool,
    /// Every key a workload may create on them (on each of them).
    keys: Vec<String>,
}

impl Servers {
    /// Connects a statistics connection to each of `urls`.
    async fn connect(urls: &[String], private: bool) -> anyhow::Result<Servers> {
        let mut stats = Vec::with_capacity(urls.len());
        for url in urls {
            stats.push(ServerStats::connect(url, private).await?);
        }
        Ok(Servers {
            stats,
            urls: urls.to_vec(),
            private,
            keys: Vec::new(),
        })
    }

    /// Starts counting commands on every server.
    async fn begin(&self) -> anyhow::Result<Vec<CommandCounts>> {
        let mut before = Vec::with_capacity(self.stats.len());
        for stats in &self.stats {
            before.push(stats.clone().begin().await?);
        }
        Ok(before)
    }

    /// The commands run on all the servers together since [`Servers::begin`].
    async fn end(&self, before: Vec<CommandCounts>) -> anyhow::Result<CommandCounts> {
        let mut sum = CommandCounts::default();
        for (stats, before) in self.stats.iter().zip(before) {
            sum.add(&stats.clone().end(before).await?);
        }
        Ok(sum)
    }

    /// Deletes the keys on every server.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        for stats in &mut self.stats {
            stats.delete(&self.keys).await?;
        }
        Ok(())
    }
}

/// The connections of one bench run and the keys it must delete.
#[derive(Debug)]
struct Bench {
    /// The floor's workload, when it runs.
    floor: Option<Work>,
    /// W1's workload, when it runs.
    w1: Option<Work>,
    /// W2's workload, when it runs.
    w2: Option<Work>,
    /// floor3's workload, when it runs.
    floor3: Option<Work>,
    /// W3's workload, when it runs.
    w3: Option<Work>,
    /// W1c's workload, when it runs.
    w1c: Option<Work>,
    /// The one server of floor, W1 and W2, when one of them runs.
    single: Option<Servers>,
    /// The 5 nodes of floor3 and W3, when one of them runs.
    quorum: Option<Servers>,
    /// The cluster's masters, when W1c runs.
    cluster: Option<Servers>,
    /// The workloads' links to their servers (`--link-delay`), kept open to the end.
    links: Links,
}

impl Bench {
    /// Connects what `plan` needs and lists the keys it will create: on `single` (its URL, and
    /// whether it is our private server), on the `quorum` nodes and on the `cluster`.
    async fn connect(
        single: Option<(&str, bool)>,
        quorum: Option<&[String]>,
        cluster: Option<&ClusterUrls>,
        plan: &Plan,
    ) -> anyhow::Result<Bench> {
        let mut bench = Bench {
            floor: None,
            w1: None,
            w2: None,
            floor3: None,
            w3: None,
            w1c: None,
            single: None,
            quorum: None,
            cluster: None,
            links: Links::new(plan.link_delay),
        };
        if let Some((url, private)) = single {
            let mut servers = Servers::connect(&[url.to_owned()], private).await?;
            let keys = &mut servers.keys;
            let url = &bench.links.route(url)?;
            // The floor runs over W1's own command connection: same socket settings, same
            // multiplexing, so the ratio is the library's cost and nothing else.
            let w1_client = connect_client(Client::builder(url)).await?;
            if plan.has(Workload::Floor) {
                let floor = Floor::new(w1_client.connection(), plan.workers);
                keys.extend(floor.keys().iter().cloned());
                bench.floor = Some(Work::Floor(floor));
            }
            if plan.has(Workload::W1) {
                let w1 = Uncontended::new(w1_client, "w1", plan.workers, plan.fenced);
                for name in w1.names() {
                    lock_keys(&w1.client, name, keys)?;
                }
                bench.w1 = Some(Work::W1(w1));
            }
            if plan.has(Workload::W2) {
                let mut clients = Vec::with_capacity(plan.clients);
                for _ in 0..plan.clients {
                    clients.push(connect_client(Client::builder(url)).await?);
                }
                let w2 = W2::new(clients, plan.w2_workers, plan.hold);
                lock_keys(&w2.clients[0], phase::W2_LOCK, keys)?;
                keys.push(w2.counter.clone());
                keys.push(w2.probe.clone());
                bench.w2 = Some(Work::W2(w2));
            }
            bench.single = Some(servers);
        }
        if let Some(urls) = quorum {
            let mut servers = Servers::connect(urls, true).await?;
            let keys = &mut servers.keys;
            let urls = &bench.links.route_all(urls)?;
            // floor3 runs over W3's own command connections, as the floor over W1's.
            let w3_client = connect_client(Client::redlock(urls.iter().cloned())).await?;
            if plan.has(Workload::Floor3) {
                let floor = Floor3::new(w3_client.connections(), plan.workers);
                keys.extend(floor.keys().iter().cloned());
                bench.floor3 = Some(Work::Floor3(floor));
            }
            if plan.has(Workload::W3) {
                let w3 = Uncontended::new(w3_client, "w3", plan.workers, plan.fenced);
                for name in w3.names() {
                    lock_keys(&w3.client, name, keys)?;
                }
                bench.w3 = Some(Work::W3(w3));
            }
            bench.quorum = Some(servers);
        }
        if let Some(cluster) = cluster {
            // Statistics on the masters only: they run every lock command (the replicas only
            // replay the writes). No keys to list: a master refuses a `DEL` of another's slot,
            // and the whole cluster is thrown away at the end anyway.
            let servers = Servers::connect(&cluster.masters, true).await?;
            let client = connect_client(Client::cluster(cluster.seeds.iter().cloned())).await?;
            let w1c = Uncontended::new(client, "w1c", plan.workers, plan.fenced);
            bench.w1c = Some(Work::W1c(w1c));
            bench.cluster = Some(servers);
        }
        Ok(bench)
    }

    /// The servers `work` runs on.
    fn servers(&self, work: &Work) -> anyhow::Result<&Servers> {
        let servers = if work.workload().on_quorum() {
            &self.quorum
        } else if work.workload().on_cluster() {
            &self.cluster
        } else {
            &self.single
        };
        servers
            .as_ref()
            .context("a workload runs without its servers")
    }

    /// Runs every planned workload and builds its report.
    async fn run_all(&mut self, plan: &Plan) -> anyhow::Result<Vec<Report>> {
        let mut floor = Vec::new();
        let mut w1 = Vec::new();
        let mut floor3 = Vec::new();
        let mut w3 = Vec::new();
        let mut w1c = Vec::new();
        for round in 0..plan.rounds {
            // Alternating who goes first cancels a drift (a warming CPU, a noisy neighbour)
            // that would otherwise always favour the same workload of a pair.
            let mut order = [
                Workload::Floor,
                Workload::W1,
                Workload::Floor3,
                Workload::W3,
                Workload::W1c,
            ];
            if round % 2 == 1 {
                order.reverse();
            }
            let last = round + 1 == plan.rounds;
            for workload in order {
                let (work, out) = match workload {
                    Workload::Floor => (&self.floor, &mut floor),
                    Workload::W1 => (&self.w1, &mut w1),
                    Workload::Floor3 => (&self.floor3, &mut floor3),
                    Workload::W3 => (&self.w3, &mut w3),
                    _ => (&self.w1c, &mut w1c),
                };
                let Some(work) = work else { continue };
                progress(workload, round, plan.rounds);
                let measured = self.measure(work, plan.stop, last).await?;
                out.push(measured);
            }
        }
        let mut reports = Vec::new();
        for (workload, rounds, clients) in [
            (Workload::Floor, &floor, None),
            (Workload::W1, &w1, Some(1)),
            (Workload::Floor3, &floor3, None),
            (Workload::W3, &w3, Some(1)),
            (Workload::W1c, &w1c, Some(1)),
        ] {
            if !rounds.is_empty() {
                reports.push(Report::new(workload, plan.workers, clients, rounds, None)?);
            }
        }
        if let Some(work) = &self.w2 {
            let Work::W2(w2) = work else {
                unreachable!("the W2 slot holds W2")
            };
            progress(Workload::W2, 0, 1);
            let ideal = self.probe_ideal(w2).await?;
            let measured = self.measure(work, plan.stop, true).await?;
            let report = Report::new(
                Workload::W2,
                plan.w2_workers,
                Some(plan.clients),
                &[measured],
                Some(ideal),
            )?;
            reports.push(report);
        }
        report::link_ratios(&mut reports);
        Ok(reports)
    }

    /// Warm-up, then the measured phase with the command counts around it, then (on request)
    /// the census.
    async fn measure(&self, work: &Work, stop: Stop, census: bool) -> anyhow::Result<Measured> {
        let servers = self.servers(work)?;
        run_phase(work, Stop::time(WARMUP)).await?;
        let before = warn_none("command statistics", servers.begin().await);
        let phase = run_phase(work, stop).await?;
        let commands = match before {
            Some(before) => warn_none("command statistics", servers.end(before).await)
                .map(|counts| counts.without_counter(phase.counter_gets, phase.counter_sets)),
            None => None,
        };
        report_first_error(work, &phase);
        // Not on the cluster: its masters answer the census's end marker with a redirection.
        let census = if census && servers.private && !work.workload().on_cluster() {
            warn_none("the MONITOR census", self.census(work).await)
        } else {
            None
        };
        Ok(Measured {
            phase,
            commands,
            census,
        })
    }

    /// Watches a short extra run with MONITOR (on each of its servers), to split top-level
    /// commands from script ones.
    async fn census(&self, work: &Work) -> anyhow::Result<(CensusCounts, u64)> {
        let servers = self.servers(work)?;
        let ignore = match work {
            // The counter's GET/SET are the workload's, not the lock's.
            Work::W2(w2) => vec![w2.counter.clone()],
            _ => Vec::new(),
        };
        let mut censuses = Vec::with_capacity(servers.urls.len());
        for url in &servers.urls {
            censuses.push(Census::start(url, ignore.clone()).await?);
        }
        let phase = run_phase(work, Stop::both(CENSUS_OPS, CENSUS_MAX)).await?;
        let mut counts = CensusCounts::default();
        for (census, stats) in censuses.into_iter().zip(&servers.stats) {
            let one = census.finish(stats).await?;
            counts.top.add(&one.top);
            counts.script.add(&one.script);
        }
        Ok((counts, phase.ops))
    }

    /// Measures W2's ideal on an idle connection of its first client.
    async fn probe_ideal(&self, w2: &W2) -> anyhow::Result<Ideal> {
        let mut conn = w2.clients[0].connection();
        server::probe_ideal(&mut conn, &w2.probe, w2.hold)
            .await
            .context("cannot measure the round trip time for W2's ideal")
    }

    /// Deletes every key the bench may have created.
    async fn cleanup(&mut self) -> anyhow::Result<()> {
        if let Some(single) = &mut self.single {
            single.cleanup().await?;
        }
        if let Some(quorum) = &mut self.quorum {
            quorum.cleanup().await?;
        }
        Ok(())
    }
}

/// The URLs of the private cluster: every node's (seeds for the client), and the masters'
/// (for the command counts).
#[derive(Debug)]
struct ClusterUrls {
    /// Every node, as seeds for the cluster client.
    seeds: Vec<String>,
    /// The masters, where the lock commands run.
    masters: Vec<String>,
}

/// The URLs of `cluster`.
fn cluster_urls(cluster: &RedisCluster) -> anyhow::Result<ClusterUrls> {
    let masters = cluster
        .masters()
        .context("cannot list the private cluster's masters")?;
    Ok(ClusterUrls {
        seeds: cluster.urls(),
        masters: masters.iter().map(|m| m.url()).collect(),
    })
}

/// Connects one deadbolt client of `builder` with the bench prefix.
async fn connect_client(builder: deadbolt::ClientBuilder) -> anyhow::Result<Client> {
    builder
        .key_prefix(PREFIX)
        // A bench killed before its cleanup leaves fencing counters behind: let them go within
        // the hour instead of the default week.
        .fence_ttl(Duration::from_secs(3600))
        .connect()
        .await
        .context("cannot connect the bench's deadbolt client")
}

/// Adds the Redis keys of lock `name` (the lock and its fencing counter) to `keys`.
fn lock_keys(client: &Client, name: &str, keys: &mut Vec<String>) -> anyhow::Result<()> {
    let k = client.keys(name)?;
    keys.push(k.lock);
    keys.push(k.fence);
    Ok(())
}

/// Tells the user what runs now, on stderr so `--json` output stays clean.
fn progress(workload: Workload, round: usize, rounds: usize) {
    if rounds > 1 {
        eprintln!(
            "deadbolt: bench: {} (round {}/{rounds})",
            workload.label(),
            round + 1
        );
    } else {
        eprintln!("deadbolt: bench: {}", workload.label());
    }
}

/// Says why a phase had errors: the count alone does not tell a timeout from a dead server.
fn report_first_error(work: &Work, phase: &Phase) {
    if let Some(err) = &phase.first_error {
        eprintln!(
            "deadbolt: bench: {}: {} error(s), the first: {err}",
            work.workload().label(),
            phase.errors
        );
    }
}

/// An optional extra that failed: warn and go on without it.
fn warn_none<T>(what: &str, result: anyhow::Result<T>) -> Option<T> {
    match result {
        Ok(value) => Some(value),
        Err(err) => {
            eprintln!(
                "deadbolt: bench: warning: {what} unavailable: {}",
                crate::exit::chain(&err)
            );
            None
        }
    }
}
