//! The watchdog: one background task per client that renews every held lock's lease and fires
//! the lost signal of any lock it cannot keep.
//!
//! Renewals are batched: all leases due at about the same time go out in one script call (up to
//! [`BATCH`] locks each), not one timer and round trip per lock. Batches run as tasks of their
//! own, so a slow one does not delay the lost signal of any other lock. A lock is declared lost
//! when a renewal finds it gone or taken, or when its local validity (`valid_until`) passes
//! without a successful renewal, whichever comes first.
//!
//! Fixed-lease locks are registered without waking the task (an acquisition in a hot loop must
//! not cost a context switch): the watchdog never renews them, it only checks them after the
//! connection dropped, since a Redis that restarted without persistence forgot every lock and
//! the holder should hear of it at once, not at the end of its lease.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::engine::{self, Renewal};
use crate::error::LostReason;
use crate::held::Held;
use crate::key::slot;
use crate::node::Node;
use crate::options::Lease;
use crate::place::Placement;

/// Most locks renewed by one script call (Redisson's `lockWatchdogBatchSize`).
const BATCH: usize = 100;

/// How long the task keeps a plan to wake after it last saw no lock (see [`next_wake`]).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// How soon a failed renewal or check is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// One lock the watchdog looks after.
#[derive(Debug)]
struct Entry {
    lease: Lease,
    /// When the next renewal (or, for a fixed lease, check) is due; `None`: not until the
    /// connection drops.
    next_due: Option<Instant>,
    held: Arc<Held>,
}

#[derive(Debug, Default)]
struct Shared {
    entries: Mutex<Entries>,
    /// Woken when an entry needs the task earlier than it planned to wake.
    changed: Notify,
    next_id: AtomicU64,
}

/// Entry ids are a counter of our own, not input: no need for SipHash's protection, and its cost
/// showed on every acquisition.
#[derive(Debug, Default)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        // Spread sequential ids over the table's buckets (Fibonacci hashing).
        self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id;
    }
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<u64, Entry, std::hash::BuildHasherDefault<IdHasher>>,
    /// When the task plans to wake next (`None`: not until woken). An entry due later needs no
    /// wake-up: on a busy client that takes and releases locks in a loop, the task is not woken
    /// once per acquisition.
    wake_at: Option<Instant>,
    /// The last plan was made with no entries (see [`next_wake`]).
    idle: bool,
}

impl Entries {
    /// Adds or updates an entry, waking the task if the entry is due before it planned to wake.
    fn put(&mut self, id: u64, entry: Entry, changed: &Notify) {
        let due = entry.next_due;
        self.map.insert(id, entry);
        if let Some(due) = due
            && self.wake_at.is_none_or(|at| due < at)
        {
            self.wake_at = Some(due);
            changed.notify_one();
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// The handle a client keeps; dropping it stops the task.
#[derive(Debug)]
pub(crate) struct Watchdog {
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl Watchdog {
    /// Starts the task on the current tokio runtime. `disconnected` is notified when a
    /// connection of the client dropped or was replaced: every held lock is checked at once.
    pub(crate) fn start(
        nodes: Arc<[Node]>,
        command_timeout: Duration,
        disconnected: Arc<Notify>,
    ) -> Watchdog {
        let shared = Arc::new(Shared::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(run(
            shared.clone(),
            nodes,
            command_timeout,
            disconnected,
            shutdown.clone(),
        ));
        Watchdog { shared, shutdown }
    }

    /// Starts looking after a lock just acquired; returns its id for [`Watchdog::remove`].
    pub(crate) fn register(&self, lease: Lease, acquired: Instant, held: Arc<Held>) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let next_due = match lease {
            Lease::Fixed(_) => None,
            Lease::Renewed { every, .. } => Some(acquired + every),
        };
        let entry = Entry {
            lease,
            next_due,
            held,
        };
        let mut entries = self.shared.entries.lock().unwrap();
        entries.put(id, entry, &self.shared.changed);
        id
    }

    /// Changes the lease a lock is kept at (before an `extend` is sent).
    pub(crate) fn set_lease(&self, id: u64, lease: Lease, now: Instant) {
        let mut entries = self.shared.entries.lock().unwrap();
        if let Some(mut entry) = entries.map.remove(&id) {
            entry.lease = lease;
            entry.next_due = match lease {
                Lease::Fixed(_) => None,
                Lease::Renewed { every, .. } => Some(now + every),
            };
            entries.put(id, entry, &self.shared.changed);
        }
    }

    /// Stops looking after a lock (it is being released).
    pub(crate) fn remove(&self, id: u64) {
        self.shared.entries.lock().unwrap().map.remove(&id);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A lock picked for renewal (or a check) in this round.
struct Due {
    id: u64,
    /// The lease to set; zero for a check without renewal.
    lease: Duration,
    generation: u64,
    held: Arc<Held>,
}

async fn run(
    shared: Arc<Shared>,
    nodes: Arc<[Node]>,
    command_timeout: Duration,
    disconnected: Arc<Notify>,
    shutdown: CancellationToken,
) {
    loop {
        let wake = next_wake(&shared);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.changed.notified() => continue,
            _ = disconnected.notified() => {
                tracing::debug!("connection dropped; checking every held lock now");
                check_all_now(&shared);
            }
            _ = sleep_until(wake) => {}
        }
        let now = Instant::now();
        expire(&shared, now);
        let mut due = take_due(&shared, now);
        // A batch goes to the nodes of one placement (one server, or all of a quorum), and on a
        // Cluster to one hash slot: a script may only touch keys of one slot.
        let group = |d: &Due| {
            let cluster = engine::nodes_of(&nodes, d.held.place)[0].cluster;
            (d.held.place, if cluster { slot(&d.held.key) } else { 0 })
        };
        due.sort_unstable_by_key(group);
        while !due.is_empty() {
            let (place, first) = (due[0].held.place, group(&due[0]));
            let same = due
                .iter()
                .take(BATCH)
                .take_while(|d| group(d) == first)
                .count();
            let batch: Vec<Due> = due.drain(..same).collect();
            // A task per batch: a slow reply must not hold up the next batch, nor the
            // validity deadlines enforced by this loop.
            tokio::spawn(renew(
                shared.clone(),
                nodes.clone(),
                place,
                batch,
                command_timeout,
            ));
        }
    }
}

/// Makes every lock due now: renewals for watchdog leases, ownership checks for fixed ones.
fn check_all_now(shared: &Shared) {
    let now = Instant::now();
    let mut entries = shared.entries.lock().unwrap();
    for e in entries.map.values_mut() {
        e.next_due = Some(now);
    }
}

/// The earliest renewal or validity deadline of any entry, which becomes the planned wake-up.
///
/// With no entries, the task still plans to wake once more, [`IDLE_TICK`] later: a client that
/// takes and releases locks back to back often has none when the task looks, and a plan of "not
/// until woken" would make every next acquisition wake the task. Only after a second look finds
/// none does it sleep until woken.
fn next_wake(shared: &Shared) -> Instant {
    let mut entries = shared.entries.lock().unwrap();
    let earliest = entries
        .map
        .values()
        .filter_map(|e| match e.lease {
            // A fixed lease's validity is watched by its guard's own timer.
            Lease::Fixed(_) => e.next_due,
            Lease::Renewed { .. } => e.next_due.min(Some(e.held.valid_until())),
        })
        .min();
    let (plan, idle) = match earliest {
        Some(at) => (Some(at), false),
        None if !entries.idle => (Some(Instant::now() + IDLE_TICK), true),
        None => (None, true),
    };
    entries.wake_at = plan;
    entries.idle = idle;
    plan.unwrap_or_else(far_future)
}

/// Fires the lost signal of every lock whose validity has passed, and forgets it.
fn expire(shared: &Shared, now: Instant) {
    shared.entries.lock().unwrap().map.retain(|_, e| {
        let alive = e.held.valid_until() > now && !e.held.is_lost();
        if e.held.valid_until() <= now {
            tracing::info!(lock = %e.held.name, "lock lost: {}", LostReason::NotRenewed);
            e.held.mark_lost(LostReason::NotRenewed);
        }
        alive
    });
}

/// Picks the renewals due now, and those due within a quarter interval so that locks taken at
/// about the same time share a round trip.
fn take_due(shared: &Shared, now: Instant) -> Vec<Due> {
    let mut entries = shared.entries.lock().unwrap();
    let mut due = Vec::new();
    for (&id, e) in entries.map.iter_mut() {
        let Some(next) = e.next_due else { continue };
        let (lease, slack, again) = match e.lease {
            Lease::Renewed { lease, every } => (lease, every / 4, Some(now + every)),
            Lease::Fixed(_) => (Duration::ZERO, Duration::ZERO, None),
        };
        if next <= now + slack {
            // Until the reply comes, do not pick it again.
            e.next_due = again;
            due.push(Due {
                id,
                lease,
                generation: e.held.generation(),
                held: e.held.clone(),
            });
        }
    }
    due
}

/// Renews (or checks) one batch in one script call per node and applies the outcome to each
/// lock.
async fn renew(
    shared: Arc<Shared>,
    nodes: Arc<[Node]>,
    place: Placement,
    batch: Vec<Due>,
    command_timeout: Duration,
) {
    let sent = Instant::now();
    let locks: Vec<(&str, &str, Duration)> = batch
        .iter()
        .map(|d| (d.held.key.as_str(), d.held.token.as_str(), d.lease))
        .collect();
    let found = engine::renew(&nodes, place, &locks, command_timeout).await;
    let mut entries = shared.entries.lock().unwrap();
    let mut retry = false;
    for (d, found) in batch.iter().zip(found) {
        match found {
            Renewal::Ours => {
                if !d.lease.is_zero() {
                    d.held.renewed(d.generation, sent, d.lease);
                    tracing::trace!(lock = %d.held.name, "lease renewed");
                }
            }
            Renewal::Unknown => {
                // Retry soon; the validity deadline decides when the lock counts as lost.
                retry = true;
                let again = Instant::now() + RETRY;
                if let Some(e) = entries.map.get_mut(&d.id) {
                    e.next_due = Some(e.next_due.map_or(again, |n| n.min(again)));
                }
            }
            Renewal::Expired | Renewal::Taken => {
                // Released meanwhile? Then the entry is gone and there is nothing to report.
                if entries.map.remove(&d.id).is_some() {
                    let reason = found.reason().unwrap_or(LostReason::NotRenewed);
                    tracing::info!(lock = %d.held.name, "lock lost: {reason}");
                    d.held.mark_lost(reason);
                }
            }
        }
    }
    if retry {
        entries.wake_at = None;
        shared.changed.notify_one();
    }
}
