//! `deadbolt bench`: what a deadbolt lock costs, next to the cheapest possible Redis lock.
//!
//! Every workload runs in this process against the same Redis, one after the other. Each
//! measurement is preceded by a 200 ms warm-up that is not counted (it loads the Lua scripts and
//! fills the connection pools), and stops by itself after `--duration` or `--ops`.
//!
//! # The workloads
//!
//! - **`floor`**: the raw baseline, no library. Each worker loops `SET key token NX PX 30000`
//!   then `EVALSHA` of a compare-and-delete script on its own key (`bench:floor:{i}`), over one
//!   shared connection. Nothing can be cheaper and still be a lock: two round trips per cycle.
//! - **`W1`**: the library's overhead. `--workers` workers, each on its own lock (`w1:{i}`), loop
//!   acquire (fixed 30 s lease) → release through one shared [`deadbolt::Client`]. There is no
//!   contention, so `W1 / floor` is the price of fencing tokens, release notifications and the
//!   client's bookkeeping. With `--fenced`, each W1 acquisition is fenced and its token read.
//!   Floor and W1 run interleaved in `--rounds` rounds (alternating which
//!   goes first) and report the median ops/s of the rounds, so a noisy second does not decide the
//!   ratio.
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
//!   phase. Commands run inside Lua scripts are counted by Redis too, so this is the total work
//!   for the server; the top-level part (the round trips a client pays for) comes from a short
//!   `MONITOR` census after the measurement, which tells the two apart. The census only runs
//!   against the private server, since MONITOR slows a shared one and would see its other
//!   clients. W2's own counter `GET`/`SET` are not lock costs and are left out.
//! - `lost updates` (W2): completed increments minus how far the counter moved. Anything but
//!   0 means two workers held the lock at once.
//! - `W1 / floor`: near 1.0 means the library adds (almost) nothing to the round trips. `W2 /
//!   ideal`: the ideal is one critical section plus one round trip per operation,
//!   1 / (GET + hold + SET + RTT), measured on an idle connection just before W2 (the hold as
//!   actually slept, since timers round up): how much of the hand-off between holders the lock
//!   hides.
//!
//! Against a shared Redis (`--redis`), other clients' commands land in the command counts; the
//! statistics are then read as a difference rather than reset, so the server's own statistics are
//! left alone. Every key the bench creates is deleted at the end, also after Ctrl-C.

mod phase;
mod report;
mod server;

use std::time::Duration;

use anyhow::{Context as _, bail};
use deadbolt::Client;

use self::phase::{Floor, Phase, Stop, W1, W2, Work, run_phase};
use self::report::{Ideal, Measured, Report};
use self::server::{Census, CensusCounts, ServerStats};
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

/// Options of `deadbolt bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(flatten)]
    redis: PrivateRedisArgs,

    /// Workload to run; repeat for several [default: all: floor, w1, w2]
    #[arg(long = "workload", value_name = "NAME", value_enum, ignore_case = true)]
    workloads: Vec<Workload>,

    /// Workers of W1 and of the floor, each on its own key
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

    /// Interleaved rounds of floor and W1; each reports the median ops/s of its rounds
    #[arg(long, value_name = "R", default_value_t = 3)]
    rounds: usize,

    /// W1 takes fenced locks and reads each one's fencing token (minted with the acquisition),
    /// to measure what fencing costs over the floor
    #[arg(long)]
    fenced: bool,

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
        }
    }
}

/// The validated options: what to run and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The workloads to run, deduplicated, in report order (floor, W1, W2).
    pub(crate) workloads: Vec<Workload>,
    /// Workers of W1 and the floor.
    pub(crate) workers: usize,
    /// Workers of W2.
    pub(crate) w2_workers: usize,
    /// Clients of W2.
    pub(crate) clients: usize,
    /// W2's hold inside the lock.
    pub(crate) hold: Duration,
    /// When each measurement stops.
    pub(crate) stop: Stop,
    /// Rounds of floor and W1.
    pub(crate) rounds: usize,
    /// Whether W1's locks are fenced.
    pub(crate) fenced: bool,
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
        })
    }

    /// Whether `workload` was asked for.
    fn has(&self, workload: Workload) -> bool {
        self.workloads.contains(&workload)
    }
}

/// Runs `deadbolt bench`.
pub(crate) async fn run(args: Args) -> anyhow::Result<()> {
    let plan = Plan::new(&args)?;
    // Kept alive to the end: dropping it stops the private server.
    let target = args.redis.target()?;
    let private = target.server.is_some();
    // One plain connection first, so an unreachable Redis or a wrong password fails at once, and
    // with the same message as every other command, rather than after the reconnect back-off of
    // the bench's own connections.
    let probe = target.redis().client(PREFIX).await?;
    let mut bench = Bench::connect(target.url(), &plan, private).await?;
    drop(probe);
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

/// The connections of one bench run and the keys it must delete.
#[derive(Debug)]
struct Bench {
    /// The floor's workload, when it runs.
    floor: Option<Work>,
    /// W1's workload, when it runs.
    w1: Option<Work>,
    /// W2's workload, when it runs.
    w2: Option<Work>,
    /// The connection for statistics, probes and cleanup, apart from every workload's.
    stats: ServerStats,
    /// The URL, for the census's own connection.
    url: String,
    /// Whether the server is our private one (see [`ServerStats`] and the census).
    private: bool,
    /// Every key a workload may create.
    keys: Vec<String>,
}

impl Bench {
    /// Connects what `plan` needs and lists the keys it will create.
    async fn connect(url: &str, plan: &Plan, private: bool) -> anyhow::Result<Bench> {
        let stats = ServerStats::connect(url, private).await?;
        let mut keys = Vec::new();
        // The floor runs over W1's own command connection: same socket settings, same
        // multiplexing, so the ratio is the library's cost and nothing else.
        let w1_client = connect_client(url).await?;
        let floor = if plan.has(Workload::Floor) {
            let floor = Floor::new(w1_client.connection(), plan.workers);
            keys.extend(floor.keys().iter().cloned());
            Some(Work::Floor(floor))
        } else {
            None
        };
        let w1 = if plan.has(Workload::W1) {
            let w1 = W1::new(w1_client, plan.workers, plan.fenced);
            for name in w1.names() {
                lock_keys(&w1.client, name, &mut keys)?;
            }
            Some(Work::W1(w1))
        } else {
            None
        };
        let w2 = if plan.has(Workload::W2) {
            let mut clients = Vec::with_capacity(plan.clients);
            for _ in 0..plan.clients {
                clients.push(connect_client(url).await?);
            }
            let w2 = W2::new(clients, plan.w2_workers, plan.hold);
            lock_keys(&w2.clients[0], phase::W2_LOCK, &mut keys)?;
            keys.push(w2.counter.clone());
            keys.push(w2.probe.clone());
            Some(Work::W2(w2))
        } else {
            None
        };
        Ok(Bench {
            floor,
            w1,
            w2,
            stats,
            url: url.to_owned(),
            private,
            keys,
        })
    }

    /// Runs every planned workload and builds its report.
    async fn run_all(&mut self, plan: &Plan) -> anyhow::Result<Vec<Report>> {
        let mut floor = Vec::new();
        let mut w1 = Vec::new();
        for round in 0..plan.rounds {
            // Alternating who goes first cancels a drift (a warming CPU, a noisy neighbour)
            // that would otherwise always favour the same workload.
            let order = if round % 2 == 0 {
                [Workload::Floor, Workload::W1]
            } else {
                [Workload::W1, Workload::Floor]
            };
            let last = round + 1 == plan.rounds;
            for workload in order {
                let (work, out) = match workload {
                    Workload::Floor => (&self.floor, &mut floor),
                    _ => (&self.w1, &mut w1),
                };
                let Some(work) = work else { continue };
                progress(workload, round, plan.rounds);
                let measured = self.measure(work, plan.stop, last).await?;
                out.push(measured);
            }
        }
        let mut reports = Vec::new();
        if !floor.is_empty() {
            reports.push(Report::new(
                Workload::Floor,
                plan.workers,
                None,
                &floor,
                None,
            )?);
        }
        if !w1.is_empty() {
            reports.push(Report::new(Workload::W1, plan.workers, Some(1), &w1, None)?);
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
        run_phase(work, Stop::time(WARMUP)).await?;
        let mut stats = self.stats.clone();
        let before = warn_none("command statistics", stats.begin().await);
        let phase = run_phase(work, stop).await?;
        let commands = match before {
            Some(before) => warn_none("command statistics", stats.end(before).await)
                .map(|counts| counts.without_counter(phase.counter_gets, phase.counter_sets)),
            None => None,
        };
        report_first_error(work, &phase);
        let census = if census && self.private {
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

    /// Watches a short extra run with MONITOR, to split top-level commands from script ones.
    async fn census(&self, work: &Work) -> anyhow::Result<(CensusCounts, u64)> {
        let ignore = match work {
            // The counter's GET/SET are the workload's, not the lock's.
            Work::W2(w2) => vec![w2.counter.clone()],
            _ => Vec::new(),
        };
        let census = Census::start(&self.url, ignore).await?;
        let phase = run_phase(work, Stop::both(CENSUS_OPS, CENSUS_MAX)).await?;
        let counts = census.finish(&self.stats).await?;
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
        self.stats.delete(&self.keys).await
    }
}

/// Connects one deadbolt client with the bench prefix.
async fn connect_client(url: &str) -> anyhow::Result<Client> {
    Client::builder(url)
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
