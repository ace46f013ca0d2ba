//! One phase (warm-up, measurement or census) of a workload: the worker loops and their tallies.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use deadbolt::Connection;
use deadbolt::{Client, ReleaseOutcome};
use futures_util::future::join_all;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use super::Workload;

/// The name of W2's one lock.
pub(crate) const W2_LOCK: &str = "w2";
/// How long one acquisition may wait, in W1, W2, W3 and W1c.
const WAIT: Duration = Duration::from_secs(10);
/// W1's (and W3's and W1c's) fixed lease: far longer than a cycle, so it never expires mid-cycle.
const W1_LEASE: Duration = Duration::from_secs(30);
/// W2's fixed lease.
const W2_LEASE: Duration = Duration::from_secs(5);
/// The floor's `PX`, W1's lease.
const FLOOR_PX_MS: u64 = 30_000;
/// The pause after a failed iteration, so an unreachable Redis makes the loops sleep, not spin.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// The floor's release: compare-and-delete, the least a safe release can do.
const FLOOR_RELEASE: &str = "if redis.call('GET',KEYS[1])==ARGV[1] then return \
                             redis.call('DEL',KEYS[1]) else return 0 end";
/// The highest latency the histograms keep apart, in µs (one hour); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// When a phase stops: after a time, after a number of iterations, or whichever comes first.
/// There is no way to build one that never stops.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stop {
    /// The phase's length.
    time: Option<Duration>,
    /// The iterations (successful or not) of all workers together.
    ops: Option<u64>,
}

impl Stop {
    /// Stop after `time`.
    pub(crate) fn time(time: Duration) -> Stop {
        Stop {
            time: Some(time),
            ops: None,
        }
    }

    /// Stop after `ops` iterations.
    pub(crate) fn ops(ops: u64) -> Stop {
        Stop {
            time: None,
            ops: Some(ops),
        }
    }

    /// Stop after `ops` iterations or `time`, whichever is first.
    pub(crate) fn both(ops: u64, time: Duration) -> Stop {
        Stop {
            time: Some(time),
            ops: Some(ops),
        }
    }
}

/// The shared countdown of a running phase; workers ask it before each iteration.
#[derive(Debug)]
struct Budget {
    /// The end of the phase, if timed.
    until: Option<Instant>,
    /// The iterations allowed, if counted.
    ops: Option<u64>,
    /// The iterations handed out so far.
    claimed: AtomicU64,
}

impl Budget {
    /// Starts the countdown of `stop` now.
    fn start(stop: Stop) -> Budget {
        Budget {
            until: stop.time.map(|t| Instant::now() + t),
            ops: stop.ops,
            claimed: AtomicU64::new(0),
        }
    }

    /// Whether the caller may run one more iteration. A started iteration always finishes, so a
    /// timed phase overruns by at most one cycle per worker; the phase's elapsed time includes it.
    fn next(&self) -> bool {
        if self.until.is_some_and(|until| Instant::now() >= until) {
            return false;
        }
        match self.ops {
            Some(ops) => self.claimed.fetch_add(1, Ordering::Relaxed) < ops,
            None => true,
        }
    }
}

/// The floor: raw `SET NX PX` + compare-and-delete on one shared connection.
#[derive(Debug, Clone)]
pub(crate) struct Floor {
    /// The shared connection, like the one command connection of a deadbolt client.
    conn: Connection,
    /// The compare-and-delete script (`EVALSHA`, loaded on first use).
    script: Arc<redis::Script>,
    /// One key per worker.
    keys: Arc<Vec<String>>,
}

impl Floor {
    /// The floor on `conn`, a deadbolt client's own command connection.
    pub(crate) fn new(conn: Connection, workers: usize) -> Floor {
        Floor {
            conn,
            script: Arc::new(redis::Script::new(FLOOR_RELEASE)),
            keys: Arc::new(
                (0..workers)
                    .map(|i| format!("{}:floor:{i}", super::PREFIX))
                    .collect(),
            ),
        }
    }

    /// The keys the floor uses.
    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }
}

/// floor3: the floor of a Redlock over several nodes, no library. Each cycle sends `SET NX PX`
/// to every node at once, then compare-and-delete to every node at once: two parallel round
/// trips, over the W3 client's own command connections.
#[derive(Debug, Clone)]
pub(crate) struct Floor3 {
    /// One connection per node, as a deadbolt client has.
    conns: Vec<Connection>,
    /// The compare-and-delete script (`EVALSHA`, loaded on first use on each node).
    script: Arc<redis::Script>,
    /// One key per worker, the same on every node.
    keys: Arc<Vec<String>>,
}

impl Floor3 {
    /// The floor on `conns`, a Redlock client's command connections.
    pub(crate) fn new(conns: Vec<Connection>, workers: usize) -> Floor3 {
        Floor3 {
            conns,
            script: Arc::new(redis::Script::new(FLOOR_RELEASE)),
            keys: Arc::new(
                (0..workers)
                    .map(|i| format!("{}:floor3:{i}", super::PREFIX))
                    .collect(),
            ),
        }
    }

    /// The keys the floor uses (on every node).
    pub(crate) fn keys(&self) -> &[String] {
        &self.keys
    }
}

/// W1, W3 and W1c: uncontended acquire → release, one lock per worker, one shared client (of
/// one server for W1, a Redlock over several for W3, a Redis Cluster for W1c).
#[derive(Debug, Clone)]
pub(crate) struct Uncontended {
    /// The one client of all workers.
    pub(crate) client: Client,
    /// One lock name per worker.
    names: Arc<Vec<String>>,
    /// Fenced acquisitions, whose tokens are read.
    fenced: bool,
}

impl Uncontended {
    /// `workers` workers on `client`, on locks `{prefix}:{i}`.
    pub(crate) fn new(client: Client, prefix: &str, workers: usize, fenced: bool) -> Uncontended {
        Uncontended {
            client,
            names: Arc::new((0..workers).map(|i| format!("{prefix}:{i}")).collect()),
            fenced,
        }
    }

    /// The lock names the workers use.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }
}

/// W2: contended read-modify-write of a counter under one lock.
#[derive(Debug, Clone)]
pub(crate) struct W2 {
    /// The clients; worker `i` uses client `i % clients.len()`.
    pub(crate) clients: Vec<Client>,
    /// Number of workers.
    workers: usize,
    /// The time between reading and writing the counter.
    pub(crate) hold: Duration,
    /// The counter key, in the lock's hash slot.
    pub(crate) counter: String,
    /// A scratch key for measuring the ideal, apart from the counter.
    pub(crate) probe: String,
}

impl W2 {
    /// W2 with `workers` workers over `clients`.
    pub(crate) fn new(clients: Vec<Client>, workers: usize, hold: Duration) -> W2 {
        let prefix = super::PREFIX;
        W2 {
            clients,
            workers,
            hold,
            counter: format!("{prefix}:{{{W2_LOCK}}}:counter"),
            probe: format!("{prefix}:{{{W2_LOCK}}}:probe"),
        }
    }

    /// The counter's value (0 when absent).
    async fn counter_value(&self) -> anyhow::Result<i64> {
        let mut conn = self.clients[0].connection();
        let value: Option<i64> = redis::cmd("GET")
            .arg(&self.counter)
            .query_async(&mut conn)
            .await
            .context("cannot read W2's counter")?;
        Ok(value.unwrap_or(0))
    }
}

/// A workload, ready to run phases.
#[derive(Debug, Clone)]
pub(crate) enum Work {
    /// See [`Floor`].
    Floor(Floor),
    /// See [`Uncontended`].
    W1(Uncontended),
    /// See [`W2`].
    W2(W2),
    /// See [`Floor3`].
    Floor3(Floor3),
    /// W1's loop on a Redlock client; see [`Uncontended`].
    W3(Uncontended),
    /// W1's loop on a Redis Cluster client; see [`Uncontended`].
    W1c(Uncontended),
}

impl Work {
    /// Which workload this is.
    pub(crate) fn workload(&self) -> Workload {
        match self {
            Work::Floor(_) => Workload::Floor,
            Work::W1(_) => Workload::W1,
            Work::W2(_) => Workload::W2,
            Work::Floor3(_) => Workload::Floor3,
            Work::W3(_) => Workload::W3,
            Work::W1c(_) => Workload::W1c,
        }
    }
}

/// What one phase measured, all workers together.
#[derive(Debug)]
pub(crate) struct Phase {
    /// Wall time from the start of the first worker to the end of the last.
    pub(crate) elapsed: Duration,
    /// Completed cycles of each worker, by worker index.
    pub(crate) per_worker: Vec<u64>,
    /// Completed cycles.
    pub(crate) ops: u64,
    /// Failed acquisitions, releases and counter commands.
    pub(crate) errors: u64,
    /// The first error, for the user.
    pub(crate) first_error: Option<String>,
    /// Releases that found the lock expired or taken over: a lease ran out mid-cycle.
    pub(crate) expired: u64,
    /// W2: counter writes that succeeded.
    pub(crate) increments: u64,
    /// W2: how far the counter moved during the phase.
    pub(crate) counter_delta: Option<i64>,
    /// W2: counter `GET`s sent, to take out of the command counts.
    pub(crate) counter_gets: u64,
    /// W2: counter `SET`s sent, likewise.
    pub(crate) counter_sets: u64,
    /// Time inside `acquire` (or the floor's `SET`), µs.
    pub(crate) wait: Histogram<u64>,
    /// Start of `acquire` to end of `release`, µs.
    pub(crate) cycle: Histogram<u64>,
}

impl Phase {
    /// An empty phase.
    pub(crate) fn empty() -> Phase {
        Phase {
            elapsed: Duration::ZERO,
            per_worker: Vec::new(),
            ops: 0,
            errors: 0,
            first_error: None,
            expired: 0,
            increments: 0,
            counter_delta: None,
            counter_gets: 0,
            counter_sets: 0,
            wait: histogram(),
            cycle: histogram(),
        }
    }

    /// Counts a failed step; the loop goes on.
    fn error(&mut self, what: &str, err: impl std::fmt::Display) {
        self.errors += 1;
        self.first_error
            .get_or_insert_with(|| format!("{what}: {err}"));
    }

    /// Counts a completed cycle.
    fn done(&mut self, start: Instant, acquired: Instant, released: Instant) {
        self.ops += 1;
        self.wait.saturating_record(micros(acquired - start));
        self.cycle.saturating_record(micros(released - start));
    }

    /// Adds `other` (another worker, or another round of the same workload) into `self`.
    pub(crate) fn absorb(&mut self, other: &Phase) -> anyhow::Result<()> {
        self.elapsed += other.elapsed;
        if self.per_worker.len() < other.per_worker.len() {
            self.per_worker.resize(other.per_worker.len(), 0);
        }
        for (sum, n) in self.per_worker.iter_mut().zip(&other.per_worker) {
            *sum += n;
        }
        self.ops += other.ops;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.expired += other.expired;
        self.increments += other.increments;
        self.counter_delta = match (self.counter_delta, other.counter_delta) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.counter_gets += other.counter_gets;
        self.counter_sets += other.counter_sets;
        self.wait.add(&other.wait).context("merging histograms")?;
        self.cycle.add(&other.cycle).context("merging histograms")?;
        Ok(())
    }

    /// Completed cycles per second.
    pub(crate) fn ops_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }
}

/// A latency histogram in µs with 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant, valid histogram bounds")
}

/// `d` in whole µs.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs one phase of `work` until `stop`, and returns what it measured.
pub(crate) async fn run_phase(work: &Work, stop: Stop) -> anyhow::Result<Phase> {
    let counter_before = match work {
        Work::W2(w2) => Some(w2.counter_value().await?),
        _ => None,
    };
    let budget = Arc::new(Budget::start(stop));
    // A JoinSet, so that dropping this future (Ctrl-C) aborts the workers too.
    let mut workers = JoinSet::new();
    let start = Instant::now();
    let count = match work {
        Work::Floor(floor) => {
            for (i, key) in floor.keys.iter().enumerate() {
                let (floor, key, budget) = (floor.clone(), key.clone(), budget.clone());
                workers.spawn(async move { (i, floor_worker(floor, key, i, budget).await) });
            }
            floor.keys.len()
        }
        Work::Floor3(floor) => {
            for (i, key) in floor.keys.iter().enumerate() {
                let (floor, key, budget) = (floor.clone(), key.clone(), budget.clone());
                workers.spawn(async move { (i, floor3_worker(floor, key, i, budget).await) });
            }
            floor.keys.len()
        }
        Work::W1(w1) | Work::W3(w1) | Work::W1c(w1) => {
            for (i, name) in w1.names.iter().enumerate() {
                let (client, name, budget) = (w1.client.clone(), name.clone(), budget.clone());
                let fenced = w1.fenced;
                workers.spawn(async move {
                    let phase = lock_worker(client, name, W1_LEASE, fenced, None, budget).await;
                    (i, phase)
                });
            }
            w1.names.len()
        }
        Work::W2(w2) => {
            for i in 0..w2.workers {
                let client = w2.clients[i % w2.clients.len()].clone();
                let section = Section {
                    conn: client.connection(),
                    counter: w2.counter.clone(),
                    hold: w2.hold,
                };
                let budget = budget.clone();
                workers.spawn(async move {
                    let name = W2_LOCK.to_owned();
                    let phase =
                        lock_worker(client, name, W2_LEASE, false, Some(section), budget).await;
                    (i, phase)
                });
            }
            w2.workers
        }
    };
    let mut total = Phase::empty();
    total.per_worker = vec![0; count];
    while let Some(joined) = workers.join_next().await {
        let (i, mut phase) = joined.context("a bench worker panicked")?;
        phase.per_worker = vec![0; count];
        phase.per_worker[i] = phase.ops;
        total.absorb(&phase)?;
    }
    // The workers' own `elapsed` is zero: the phase's is the wall time of all of them.
    total.elapsed = start.elapsed();
    if let (Work::W2(w2), Some(before)) = (work, counter_before) {
        total.counter_delta = Some(w2.counter_value().await? - before);
    }
    Ok(total)
}

/// One floor worker: `SET NX PX`, then compare-and-delete, on its own key.
async fn floor_worker(floor: Floor, key: String, worker: usize, budget: Arc<Budget>) -> Phase {
    let Floor {
        mut conn, script, ..
    } = floor;
    let mut phase = Phase::empty();
    let mut seq = 0u64;
    while budget.next() {
        seq += 1;
        // Unique per acquisition, as an owner token must be; the key is the worker's own.
        let token = format!("{worker}:{seq}");
        let start = Instant::now();
        let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(FLOOR_PX_MS)
            .query_async(&mut conn)
            .await;
        match set {
            Ok(Some(_)) => {}
            Ok(None) => {
                phase.error("floor set", "the key was already set");
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
            Err(err) => {
                phase.error("floor set", err);
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        }
        let acquired = Instant::now();
        let deleted: redis::RedisResult<i64> =
            script.key(&key).arg(&token).invoke_async(&mut conn).await;
        match deleted {
            Ok(n) => {
                if n != 1 {
                    phase.expired += 1;
                }
                phase.done(start, acquired, Instant::now());
            }
            Err(err) => {
                phase.error("floor release", err);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    phase
}

/// One floor3 worker: `SET NX PX` on every node at once, then compare-and-delete on every node
/// at once, on its own key. A cycle counts when a majority granted the `SET` (all of them, when
/// every node is up), as a Redlock's would.
async fn floor3_worker(floor: Floor3, key: String, worker: usize, budget: Arc<Budget>) -> Phase {
    let Floor3 {
        mut conns, script, ..
    } = floor;
    let needed = conns.len() / 2 + 1;
    let mut phase = Phase::empty();
    let mut seq = 0u64;
    while budget.next() {
        seq += 1;
        let token = format!("{worker}:{seq}");
        let start = Instant::now();
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(FLOOR_PX_MS);
        let replies = join_all(
            conns
                .iter_mut()
                .map(|conn| set.query_async::<Option<String>>(conn)),
        )
        .await;
        let granted = replies.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        let acquired = Instant::now();
        let mut release = script.key(&key);
        release.arg(&token);
        let deleted = join_all(
            conns
                .iter_mut()
                .map(|conn| release.invoke_async::<i64>(conn)),
        )
        .await;
        if granted < needed {
            match replies.into_iter().find_map(Result::err) {
                Some(err) => phase.error("floor3 set", err),
                None => phase.error("floor3 set", "the key was already set"),
            }
            tokio::time::sleep(ERROR_BACKOFF).await;
            continue;
        }
        let mut released = 0;
        let mut failed = None;
        for reply in deleted {
            match reply {
                Ok(n) => released += n,
                Err(err) => failed = Some(err),
            }
        }
        if let Some(err) = failed {
            phase.error("floor3 release", err);
            tokio::time::sleep(ERROR_BACKOFF).await;
            continue;
        }
        if released < granted as i64 {
            phase.expired += 1;
        }
        phase.done(start, acquired, Instant::now());
    }
    phase
}

/// W2's critical section: a deliberately non-atomic increment of a plain key.
#[derive(Debug)]
struct Section {
    /// The worker's client's connection.
    conn: Connection,
    /// The counter key.
    counter: String,
    /// The pause between read and write, which widens the window for a lost update.
    hold: Duration,
}

impl Section {
    /// `GET`, sleep, `SET` value + 1; whether the write succeeded.
    async fn run(&mut self, phase: &mut Phase) -> bool {
        phase.counter_gets += 1;
        let value: Option<i64> = match redis::cmd("GET")
            .arg(&self.counter)
            .query_async(&mut self.conn)
            .await
        {
            Ok(value) => value,
            Err(err) => {
                phase.error("counter get", err);
                return false;
            }
        };
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        phase.counter_sets += 1;
        let set: redis::RedisResult<()> = redis::cmd("SET")
            .arg(&self.counter)
            .arg(value.unwrap_or(0) + 1)
            .query_async(&mut self.conn)
            .await;
        match set {
            Ok(()) => {
                phase.increments += 1;
                true
            }
            Err(err) => {
                phase.error("counter set", err);
                false
            }
        }
    }
}

/// One W1, W2, W3 or W1c worker: acquire → (W2: the section) → release on lock `name`.
async fn lock_worker(
    client: Client,
    name: String,
    lease: Duration,
    fenced: bool,
    mut section: Option<Section>,
    budget: Arc<Budget>,
) -> Phase {
    let mut phase = Phase::empty();
    while budget.next() {
        let start = Instant::now();
        let builder = client.lock(name.as_str()).wait(WAIT).lease(lease);
        let acquired = if fenced {
            match builder.fenced().acquire().await {
                Ok(guard) => guard.fencing_token().await.map(|_| guard),
                Err(err) => Err(err),
            }
        } else {
            builder.acquire().await
        };
        let guard = match acquired {
            Ok(guard) => guard,
            Err(err) => {
                phase.error("acquire", err);
                tokio::time::sleep(ERROR_BACKOFF).await;
                continue;
            }
        };
        let acquired = Instant::now();
        let section_ok = match &mut section {
            Some(section) => section.run(&mut phase).await,
            None => true,
        };
        match guard.release().await {
            Ok(outcome) => {
                if outcome != ReleaseOutcome::Released {
                    phase.expired += 1;
                }
                if section_ok {
                    phase.done(start, acquired, Instant::now());
                }
            }
            Err(err) => {
                phase.error("release", err);
                tokio::time::sleep(ERROR_BACKOFF).await;
            }
        }
    }
    phase
}
