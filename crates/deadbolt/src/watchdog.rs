//! The watchdog: one background task per client that renews every held lock's lease and fires
//! the lost signal of any lock it cannot keep.
//!
//! Renewals are batched: all leases due at about the same time go out in one script call (up to
//! [`BATCH`] locks each), not one timer and round trip per lock. A lock is declared lost when a
//! renewal finds it gone or taken, or when its local validity (`valid_until`) passes without a
//! successful renewal, whichever comes first. Fixed-lease locks are registered too, only for the
//! second rule.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::error::LostReason;
use crate::options::{Lease, drift};
use crate::queue::Ticket;
use crate::scripts::RENEW;

/// Most locks renewed by one script call (Redisson's `lockWatchdogBatchSize`).
const BATCH: usize = 100;

/// How long the task keeps a plan to wake after it last saw no lock (see [`next_wake`]).
const IDLE_TICK: Duration = Duration::from_secs(1);

/// What a held lock shares between its guard and the watchdog.
#[derive(Debug)]
pub(crate) struct Held {
    /// Until when the lock is known to be ours, by the local monotonic clock, and the generation
    /// of the lease (bumped by every `extend`): a renewal reply is applied only if no `extend`
    /// was sent since the renewal was, because Redis may have run them in either order.
    valid_until: Mutex<(Instant, u64)>,
    /// Cancelled when the lock is lost.
    pub(crate) lost: CancellationToken,
    /// Why it was lost; set once, before `lost` is cancelled.
    reason: std::sync::OnceLock<LostReason>,
    /// The holder's place in its client's local line. It is given up when the lock is released
    /// or lost, so a holder stuck past its lease does not block its own process's other tasks
    /// longer than it blocks other processes.
    ticket: Mutex<Option<Ticket>>,
}

impl Held {
    pub(crate) fn new(valid_until: Instant, ticket: Ticket) -> Held {
        Held {
            valid_until: Mutex::new((valid_until, 0)),
            lost: CancellationToken::new(),
            reason: std::sync::OnceLock::new(),
            ticket: Mutex::new(Some(ticket)),
        }
    }

    /// Fires the lost signal and lets the next local task in. The first reason given sticks.
    pub(crate) fn mark_lost(&self, reason: LostReason) {
        let _ = self.reason.set(reason);
        self.lost.cancel();
        self.take_ticket();
    }

    /// Gives up the place in the local line (after a release, or when lost).
    pub(crate) fn take_ticket(&self) -> Option<Ticket> {
        self.ticket.lock().unwrap().take()
    }

    /// Why the lock was lost, once it was.
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        self.reason.get().copied()
    }

    pub(crate) fn valid_until(&self) -> Instant {
        self.valid_until.lock().unwrap().0
    }

    /// The current lease generation, to hand to [`Held::renewed`].
    pub(crate) fn generation(&self) -> u64 {
        self.valid_until.lock().unwrap().1
    }

    /// Records a successful renewal of generation `generation`, sent at `sent`, that set the TTL
    /// to `lease`. Ignored if the lease changed generation since.
    pub(crate) fn renewed(&self, generation: u64, sent: Instant, lease: Duration) {
        let mut valid = self.valid_until.lock().unwrap();
        if valid.1 == generation {
            valid.0 = sent + lease - drift(lease);
        }
    }

    /// Starts a new lease generation before an `extend` that sets the TTL to `lease`: until the
    /// reply, the lock counts as valid only as long as both the old and the new TTL say. Returns
    /// the new generation.
    pub(crate) fn begin_extend(&self, sent: Instant, lease: Duration) -> u64 {
        let mut valid = self.valid_until.lock().unwrap();
        valid.0 = valid.0.min(sent + lease - drift(lease));
        valid.1 += 1;
        valid.1
    }

    /// Waits until the lock is lost, by signal or by the clock. Never later than `valid_until`.
    pub(crate) async fn lost(&self) {
        loop {
            let until = self.valid_until();
            tokio::select! {
                _ = self.lost.cancelled() => return,
                _ = sleep_until(until) => {
                    // A renewal may have moved the deadline while we slept.
                    if Instant::now() >= self.valid_until() {
                        self.mark_lost(LostReason::NotRenewed);
                        return;
                    }
                }
            }
        }
    }
}

/// One lock the watchdog looks after.
#[derive(Debug)]
struct Entry {
    key: String,
    name: String,
    token: String,
    lease: Lease,
    /// When the next renewal is due; `None` for fixed leases.
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

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<u64, Entry>,
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
        let due = entry
            .next_due
            .unwrap_or(far_future())
            .min(entry.held.valid_until());
        self.map.insert(id, entry);
        if self.wake_at.is_none_or(|at| due < at) {
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
    /// Starts the task on the current tokio runtime.
    pub(crate) fn start(conn: ConnectionManager, command_timeout: Duration) -> Watchdog {
        let shared = Arc::new(Shared::default());
        let shutdown = CancellationToken::new();
        tokio::spawn(run(shared.clone(), conn, command_timeout, shutdown.clone()));
        Watchdog { shared, shutdown }
    }

    /// Starts looking after a lock just acquired; returns its id for [`Watchdog::remove`].
    pub(crate) fn register(
        &self,
        key: &str,
        name: &str,
        token: &str,
        lease: Lease,
        acquired: Instant,
        held: Arc<Held>,
    ) -> u64 {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let next_due = match lease {
            Lease::Fixed(_) => None,
            Lease::Renewed { every, .. } => Some(acquired + every),
        };
        let entry = Entry {
            key: key.to_owned(),
            name: name.to_owned(),
            token: token.to_owned(),
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

/// A lock picked for renewal in this round.
struct Due {
    id: u64,
    key: String,
    token: String,
    lease: Duration,
    every: Duration,
    generation: u64,
    held: Arc<Held>,
}

async fn run(
    shared: Arc<Shared>,
    mut conn: ConnectionManager,
    command_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let wake = next_wake(&shared);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.changed.notified() => continue,
            _ = sleep_until(wake) => {}
        }
        let now = Instant::now();
        expire(&shared, now);
        let due = take_due(&shared, now);
        for batch in due.chunks(BATCH) {
            renew(&shared, &mut conn, batch, command_timeout).await;
            // A slow batch must not delay the lost signal of the locks in the next one.
            expire(&shared, Instant::now());
        }
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
        .flat_map(|e| [e.next_due, Some(e.held.valid_until())])
        .flatten()
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
        let alive = e.held.valid_until() > now;
        if !alive {
            tracing::warn!(lock = %e.name, "lock lost: validity passed without a successful renewal");
            e.held.mark_lost(LostReason::NotRenewed);
        }
        alive
    });
}

/// Picks the renewals due now, and those due within a quarter interval so that locks taken at
/// about the same time share a round trip.
fn take_due(shared: &Shared, now: Instant) -> Vec<Due> {
    let mut entries = shared.entries.lock().unwrap();
    // A lock found lost by its guard's own timer is not renewed any more.
    entries.map.retain(|_, e| !e.held.lost.is_cancelled());
    let mut due = Vec::new();
    for (&id, e) in entries.map.iter_mut() {
        let (Some(next), Lease::Renewed { lease, every }) = (e.next_due, e.lease) else {
            continue;
        };
        if next <= now + every / 4 {
            // Until the reply comes, do not pick it again.
            e.next_due = Some(now + every);
            due.push(Due {
                id,
                key: e.key.clone(),
                token: e.token.clone(),
                lease,
                every,
                generation: e.held.generation(),
                held: e.held.clone(),
            });
        }
    }
    due
}

/// Renews one batch in one script call and applies the outcome to each lock.
async fn renew(
    shared: &Shared,
    conn: &mut ConnectionManager,
    batch: &[Due],
    command_timeout: Duration,
) {
    let sent = Instant::now();
    let mut call = RENEW.prepare_invoke();
    for d in batch {
        call.key(&d.key)
            .arg(&d.token)
            .arg(d.lease.as_millis() as u64);
    }
    // Never let a hung call carry us past a validity deadline we must enforce.
    let earliest = batch
        .iter()
        .map(|d| d.held.valid_until())
        .min()
        .unwrap_or(sent);
    let limit = command_timeout.min(earliest.saturating_duration_since(sent));
    let reply: Result<Vec<i64>, String> = match timeout(limit, call.invoke_async(conn)).await {
        Ok(Ok(codes)) => Ok(codes),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no reply within {limit:?}")),
    };
    let mut entries = shared.entries.lock().unwrap();
    match reply {
        Ok(codes) => {
            for (d, code) in batch.iter().zip(codes) {
                if code == 1 {
                    d.held.renewed(d.generation, sent, d.lease);
                    tracing::trace!(key = %d.key, "lease renewed");
                    continue;
                }
                // Released meanwhile? Then the entry is gone and there is nothing to report.
                if entries.map.remove(&d.id).is_some() {
                    let reason = if code == 0 {
                        LostReason::Expired
                    } else {
                        LostReason::Taken
                    };
                    tracing::warn!(key = %d.key, "lock lost: {reason}");
                    d.held.mark_lost(reason);
                }
            }
        }
        Err(err) => {
            // Retry soon; the validity deadline decides when the lock counts as lost.
            tracing::warn!(error = %err, locks = batch.len(), "lease renewal failed; retrying");
            let retry = Instant::now() + (batch[0].every / 4).min(Duration::from_secs(1));
            for d in batch {
                if let Some(e) = entries.map.get_mut(&d.id) {
                    e.next_due = Some(retry);
                }
            }
        }
    }
}
