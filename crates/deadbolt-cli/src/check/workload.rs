//! The workload of `deadbolt check`: clients × tasks that take, use and give back locks, and
//! record each step in the history.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use deadbolt::{Client, Connection, LockGuard};
use deadbolt_testkit::SplitMix64;
use deadbolt_testkit::history::{Acq, History};
use tokio::time::Instant;

use super::Args;
use crate::connect::Topology;

/// What each holding does, from the arguments.
#[derive(Debug, Clone, Copy)]
struct Plan {
    wait: Duration,
    /// `Some`: a fixed lease; else the watchdog keeps `watchdog`.
    lease: Option<Duration>,
    watchdog: Duration,
    hold: Duration,
    fenced: bool,
    extend: bool,
    multi: Option<usize>,
    hold_to_end: bool,
}

/// The clients, the names, and where the record goes.
pub(super) struct Workload {
    clients: Vec<Client>,
    names: Arc<[String]>,
    prefix: String,
    history: Arc<History>,
    /// Where fenced writes go: the private resource server, or the first server given.
    resource: Connection,
    /// One connection per server, for the key check after the run (none on a Cluster).
    servers: Vec<Connection>,
    tasks: usize,
    /// Which process of the run this is (0: the parent), so each task's stream differs.
    process: u64,
    plan: Plan,
}

impl Workload {
    /// Connects the clients (and the resource) for `args` on `topology`.
    pub(super) async fn new(
        args: &Args,
        topology: &Topology,
        history: Arc<History>,
        resource_url: Option<&str>,
        process: u16,
    ) -> anyhow::Result<Workload> {
        super::prefix_ok(&args.key_prefix)?;
        let mut clients = Vec::with_capacity(usize::from(args.clients));
        for _ in 0..args.clients {
            let builder = topology.builder().key_prefix(&args.key_prefix);
            clients.push(topology.connect(builder).await?);
        }
        let resource = match resource_url {
            Some(url) => Client::connect(url)
                .await
                .context("cannot connect to the resource's server")?
                .connection(),
            None => clients[0].connection(),
        };
        let servers = match topology {
            Topology::Cluster(_) => Vec::new(),
            _ => clients[0].connections(),
        };
        let names = (0..args.names).map(|i| format!("check:{i}")).collect();
        Ok(Workload {
            clients,
            names,
            prefix: args.key_prefix.clone(),
            history,
            resource,
            servers,
            tasks: usize::from(args.tasks),
            process: u64::from(process),
            plan: Plan {
                wait: args.wait,
                lease: args.lease,
                watchdog: args.watchdog,
                hold: args.hold,
                fenced: args.fenced,
                extend: args.extend,
                multi: args.multi.map(|k| k as usize),
                hold_to_end: args.hold_to_end,
            },
        })
    }

    /// Runs every task for `duration`, or until `limit` acquisitions; returns how many there
    /// were.
    pub(super) async fn run(&self, duration: Duration, limit: Option<u64>) -> anyhow::Result<u64> {
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let end = Instant::now() + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for (c, client) in self.clients.iter().enumerate() {
            for t in 0..self.tasks {
                let task = Task {
                    client: client.clone(),
                    names: self.names.clone(),
                    prefix: self.prefix.clone(),
                    history: self.history.clone(),
                    resource: self.resource.clone(),
                    plan: self.plan,
                    rng: SplitMix64((self.process << 32) + (c * 1000 + t) as u64 + 1),
                };
                let (done, stop) = (done.clone(), stop.clone());
                tasks.spawn(
                    async move { task.run(end, limit.unwrap_or(u64::MAX), &done, &stop).await },
                );
            }
        }
        while let Some(joined) = tasks.join_next().await {
            joined.context("a task of the workload panicked")?;
        }
        Ok(done.load(Ordering::Relaxed))
    }

    /// After the run: waits (up to a lease) for lock keys left by releases that faults lost to
    /// expire, returns those still there, and deletes the run's other keys (fencing counters,
    /// resource values).
    pub(super) async fn clean_up(&self) -> anyhow::Result<Vec<String>> {
        let lease = self.plan.lease.unwrap_or(self.plan.watchdog);
        let until = Instant::now() + lease + Duration::from_millis(500);
        let mut left = Vec::new();
        for conn in &self.servers {
            let mut conn = conn.clone();
            loop {
                let keys = scan(&mut conn, &self.prefix).await?;
                left = keys.iter().filter(|k| is_lock(k)).cloned().collect();
                if left.is_empty() || Instant::now() >= until {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let others: Vec<String> = scan(&mut conn, &self.prefix).await?;
            for key in others.iter().filter(|k| !is_lock(k)) {
                let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
            }
            if !left.is_empty() {
                break;
            }
        }
        let mut resource = self.resource.clone();
        for name in self.names.iter() {
            let key = resource_key(&self.prefix, name);
            let _: () = redis::cmd("DEL")
                .arg(&key)
                .query_async(&mut resource)
                .await?;
        }
        Ok(left)
    }
}

/// Whether `key` of the run is a lock key (not a fencing counter, a resource value or a shard
/// identity).
fn is_lock(key: &str) -> bool {
    key.ends_with('}')
}

/// Every key under `prefix`, by `SCAN` (bounded work per call).
async fn scan(conn: &mut Connection, prefix: &str) -> anyhow::Result<Vec<String>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The resource value of lock `name`, in the lock's hash slot.
fn resource_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:{{{name}}}:resource")
}

/// One task's loop.
struct Task {
    client: Client,
    names: Arc<[String]>,
    prefix: String,
    history: Arc<History>,
    resource: Connection,
    plan: Plan,
    /// A seeded, repeatable stream for picking names and holds.
    rng: SplitMix64,
}

impl Task {
    async fn run(mut self, end: Instant, limit: u64, done: &AtomicU64, stop: &AtomicBool) {
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            let taken = match self.plan.multi {
                Some(k) => self.multi(k).await,
                None => self.single().await,
            };
            if taken > 0 && done.fetch_add(taken, Ordering::Relaxed) + taken >= limit {
                stop.store(true, Ordering::Relaxed);
            }
        }
    }

    /// One holding of one name; returns 1 if it was acquired.
    async fn single(&mut self) -> u64 {
        let name = self.names[self.rng.below(self.names.len() as u64) as usize].clone();
        let acq = self.history.begin(&name);
        let builder = self.client.lock(name.as_str()).wait(self.plan.wait);
        let builder = match self.plan.lease {
            Some(lease) => builder.lease(lease),
            None => builder.watchdog(self.plan.watchdog),
        };
        let builder = if self.plan.fenced {
            builder.fenced()
        } else {
            builder
        };
        let mut guard = match builder.acquire().await {
            Ok(guard) => guard,
            Err(err) => return self.gave_up(&acq, &err).await,
        };
        // Already minted when fenced: no round trip.
        let fence = match self.plan.fenced {
            true => guard.fencing_token().await.ok(),
            false => None,
        };
        self.history.acquired(&acq, guard.valid_until(), fence);
        self.use_lock(&acq, &mut guard).await;
        self.record_loss(&acq, &guard);
        self.history.release_sent(&acq);
        let outcome = guard.release().await;
        self.history.release_returned(&acq, &outcome_text(&outcome));
        1
    }

    /// One holding of `k` names at once (a MultiLock); returns `k` if they were acquired.
    async fn multi(&mut self, k: usize) -> u64 {
        let mut picked: Vec<String> = Vec::with_capacity(k);
        while picked.len() < k {
            let name = &self.names[self.rng.below(self.names.len() as u64) as usize];
            if !picked.contains(name) {
                picked.push(name.clone());
            }
        }
        picked.sort();
        let acqs: Vec<Acq> = picked.iter().map(|n| self.history.begin(n)).collect();
        let builder = self.client.multi_lock(&picked).wait(self.plan.wait);
        let builder = match self.plan.lease {
            Some(lease) => builder.lease(lease),
            None => builder.watchdog(self.plan.watchdog),
        };
        let multi = match builder.acquire().await {
            Ok(multi) => multi,
            Err(err) => {
                for acq in &acqs {
                    self.gave_up(acq, &err).await;
                }
                return 0;
            }
        };
        // The guards come in name order, as `picked` is.
        for (acq, guard) in acqs.iter().zip(multi.guards()) {
            self.history.acquired(acq, guard.valid_until(), None);
        }
        for (acq, guard) in acqs.iter().zip(multi.guards()) {
            self.write(acq, guard).await;
        }
        let held: Vec<(&Acq, &LockGuard)> = acqs.iter().zip(multi.guards()).collect();
        self.hold(&held).await;
        for (acq, guard) in &held {
            self.history.valid(acq, guard.valid_until());
        }
        for (acq, guard) in acqs.iter().zip(multi.guards()) {
            self.record_loss(acq, guard);
            self.history.release_sent(acq);
        }
        let outcome = multi.release().await.map(|_| ());
        for acq in &acqs {
            self.history.release_returned(acq, &format!("{outcome:?}"));
        }
        k as u64
    }

    /// What a holder does with its lock: a fenced write, maybe an `extend`, a hold.
    async fn use_lock(&mut self, acq: &Acq, guard: &mut LockGuard) {
        self.write(acq, guard).await;
        if self.plan.extend && guard.is_held() {
            let lease = self.plan.lease.unwrap_or(self.plan.watchdog);
            // Before sending: until the reply, the lock counts with the shorter validity.
            if guard.extend(lease).await.is_ok() {
                self.history.valid(acq, guard.valid_until());
            }
        }
        self.hold(&[(acq, guard)]).await;
        // The watchdog may have moved the validity since.
        self.history.valid(acq, guard.valid_until());
    }

    /// A write to the resource with the lock's fencing token, if the holder still believes it
    /// holds the lock (an application that checks nothing is not what is under test).
    async fn write(&mut self, acq: &Acq, guard: &LockGuard) {
        if !guard.is_held() {
            return;
        }
        let Ok(token) = guard.fencing_token().await else {
            return;
        };
        if !guard.is_held() {
            return;
        }
        let key = resource_key(&self.prefix, guard.name());
        let sent = std::time::Instant::now();
        let value = acq.id().as_bytes();
        let written = tokio::time::timeout(
            Duration::from_secs(1),
            deadbolt::fence::set_if_newer(&mut self.resource, &key, token, value),
        )
        .await;
        if let Ok(Ok(accepted)) = written {
            self.history.write(acq, sent, token, accepted);
        }
    }

    /// Holds for a random time up to the plan's hold (with `--hold-to-end`, until 5 ms before
    /// the validity it was acquired with), or until a lock is lost. Every 20 ms it records the
    /// validity each holder sees, so the checker follows its renewals.
    async fn hold(&mut self, held: &[(&Acq, &LockGuard)]) {
        let first = held[0].1;
        let stop = match self.plan.hold_to_end {
            true => Instant::from_std(first.valid_until()) - Duration::from_millis(5),
            false => Instant::now() + self.plan.hold.mul_f64(self.rng.unit()),
        };
        while Instant::now() < stop && held.iter().all(|(_, g)| g.is_held()) {
            let step = stop.min(Instant::now() + Duration::from_millis(20));
            tokio::select! {
                _ = first.lost() => break,
                _ = tokio::time::sleep_until(step) => {}
            }
            for (acq, guard) in held {
                self.history.valid(acq, guard.valid_until());
            }
        }
    }

    /// Records the loss of the lock, if it was lost, at the moment the library fired its lost
    /// signal (`lost_at`): the end of the holder's belief, exactly.
    fn record_loss(&self, acq: &Acq, guard: &LockGuard) {
        if let Some(at) = guard.lost_at() {
            self.history.lost_at(acq, at);
        }
    }

    /// Records a failed acquisition; after a failure that is not contention, pauses a little
    /// so a server that is down is not hammered.
    async fn gave_up(&self, acq: &Acq, err: &deadbolt::Error) -> u64 {
        self.history.gave_up(acq, &err.to_string());
        if !matches!(err, deadbolt::Error::Timeout { .. }) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        0
    }
}

fn outcome_text(outcome: &deadbolt::Result<deadbolt::ReleaseOutcome>) -> String {
    match outcome {
        Ok(outcome) => format!("{outcome:?}"),
        Err(err) => format!("error: {err}"),
    }
}
