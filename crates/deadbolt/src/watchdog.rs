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

use crate::options::{Lease, drift};
use crate::queue::Ticket;
use crate::scripts::RENEW;

/// Most locks renewed by one script call (Redisson's `lockWatchdogBatchSize`).
const BATCH: usize = 100;

/// What a held lock shares between its guard and the watchdog.
#[derive(Debug)]
pub(crate) struct Held {
    /// Until when the lock is known to be ours, by the local monotonic clock.
    valid_until: Mutex<Instant>,
    /// Cancelled when the lock is lost.
    pub(crate) lost: CancellationToken,
    /// The holder's place in its client's local line. It is given up when the lock is released
    /// or lost, so a holder stuck past its lease does not block its own process's other tasks
    /// longer than it blocks other processes.
    ticket: Mutex<Option<Ticket>>,
}

impl Held {
    pub(crate) fn new(valid_until: Instant, ticket: Ticket) -> Held {
        Held {
            valid_until: Mutex::new(valid_until),
            lost: CancellationToken::new(),
            ticket: Mutex::new(Some(ticket)),
        }
    }

    /// Fires the lost signal and lets the next local task in.
    pub(crate) fn mark_lost(&self) {
        self.lost.cancel();
        self.take_ticket();
    }

    /// Gives up the place in the local line (after a release, or when lost).
    pub(crate) fn take_ticket(&self) -> Option<Ticket> {
        self.ticket.lock().unwrap().take()
    }

    pub(crate) fn valid_until(&self) -> Instant {
        *self.valid_until.lock().unwrap()
    }

    /// Records a successful renewal sent at `sent` that set the TTL to `lease`.
    pub(crate) fn renewed(&self, sent: Instant, lease: Duration) {
        *self.valid_until.lock().unwrap() = sent + lease - drift(lease);
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
                        self.mark_lost();
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
    entries: Mutex<HashMap<u64, Entry>>,
    /// Woken when an entry is added, so the task can sleep until the earliest deadline.
    changed: Notify,
    next_id: AtomicU64,
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
        self.shared.entries.lock().unwrap().insert(id, entry);
        self.shared.changed.notify_one();
        id
    }

    /// Changes the lease a lock is kept at (after an `extend`).
    pub(crate) fn set_lease(&self, id: u64, lease: Lease, now: Instant) {
        if let Some(entry) = self.shared.entries.lock().unwrap().get_mut(&id) {
            entry.lease = lease;
            entry.next_due = match lease {
                Lease::Fixed(_) => None,
                Lease::Renewed { every, .. } => Some(now + every),
            };
        }
        self.shared.changed.notify_one();
    }

    /// Stops looking after a lock (it is being released).
    pub(crate) fn remove(&self, id: u64) {
        self.shared.entries.lock().unwrap().remove(&id);
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
        }
    }
}

/// The earliest renewal or validity deadline of any entry.
fn next_wake(shared: &Shared) -> Instant {
    let entries = shared.entries.lock().unwrap();
    entries
        .values()
        .flat_map(|e| [e.next_due, Some(e.held.valid_until())])
        .flatten()
        .min()
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
}

/// Fires the lost signal of every lock whose validity has passed, and forgets it.
fn expire(shared: &Shared, now: Instant) {
    shared.entries.lock().unwrap().retain(|_, e| {
        let alive = e.held.valid_until() > now;
        if !alive {
            tracing::warn!(lock = %e.name, "lock lost: validity passed without a successful renewal");
            e.held.mark_lost();
        }
        alive
    });
}

/// Picks the renewals due now, and those due within a quarter interval so that locks taken at
/// about the same time share a round trip.
fn take_due(shared: &Shared, now: Instant) -> Vec<Due> {
    let mut entries = shared.entries.lock().unwrap();
    let mut due = Vec::new();
    for (&id, e) in entries.iter_mut() {
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
                    d.held.renewed(sent, d.lease);
                    tracing::trace!(key = %d.key, "lease renewed");
                    continue;
                }
                // Released meanwhile? Then the entry is gone and there is nothing to report.
                if entries.remove(&d.id).is_some() {
                    let why = if code == 0 {
                        "expired"
                    } else {
                        "taken by another owner"
                    };
                    tracing::warn!(key = %d.key, "lock lost: renewal found it {why}");
                    d.held.mark_lost();
                }
            }
        }
        Err(err) => {
            // Retry soon; the validity deadline decides when the lock counts as lost.
            tracing::warn!(error = %err, locks = batch.len(), "lease renewal failed; retrying");
            let retry = Instant::now() + (batch[0].every / 4).min(Duration::from_secs(1));
            for d in batch {
                if let Some(e) = entries.get_mut(&d.id) {
                    e.next_due = Some(retry);
                }
            }
        }
    }
}
