//! Taking a lock: [`LockBuilder`] and the wait loop behind `acquire`.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use rand::RngExt;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::client::{Client, Inner};
use crate::engine::{self, Attempt, Renewal};
use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::held::{Held, HeldParts};
use crate::key::{channel, lock_key, validate_name};
use crate::options::{Lease, LockOptions, drift};
use crate::place::Placement;
use crate::queue::Ticket;
use crate::token::{Holder, new_token};
use crate::waiters::any_notified;

mod pending;

use pending::Pending;

/// Options for one acquisition of lock `name`, from [`Client::lock`].
///
/// The defaults are [`LockOptions::WATCHDOG`]: wait up to 10 s; no fixed lease, so the watchdog
/// keeps a 30 s lease renewed every 10 s for as long as the guard lives.
///
/// # Fairness
///
/// Tasks of one [`Client`] get the lock in the order they asked for it. Across clients there is
/// no strict order (a release wakes one waiter per client, and the first to reach Redis wins),
/// but no client starves: when a release woke waiters of other clients, the releasing client's
/// next task lets them go first for a few milliseconds instead of racing them.
#[derive(Debug)]
#[must_use = "a LockBuilder does nothing until `acquire` or `try_acquire` is awaited"]
pub struct LockBuilder<'a> {
    client: &'a Client,
    name: String,
    options: LockOptions,
    fenced: bool,
    /// Replica confirmation (`WAIT`), see `replicas.rs`.
    pub(crate) replicas: Option<crate::replicas::Replicas>,
}

impl<'a> LockBuilder<'a> {
    pub(crate) fn new(client: &'a Client, name: String) -> Self {
        LockBuilder {
            client,
            name,
            options: LockOptions::default(),
            fenced: false,
            replicas: None,
        }
    }

    /// How long `acquire` waits for the lock; the default is 10 s, the maximum
    /// [`MAX_WAIT`](crate::MAX_WAIT).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.options.wait = wait;
        self
    }

    /// A fixed lease: the lock expires `lease` after it is taken unless extended. The default is
    /// no fixed lease (see [`LockBuilder::watchdog`]). Allowed: [`MIN_LEASE`](crate::MIN_LEASE)
    /// to [`MAX_LEASE`](crate::MAX_LEASE).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.options.lease = Lease::Fixed(lease);
        self
    }

    /// A lease the watchdog renews every third of its length while the guard lives; the
    /// default is 30 s.
    pub fn watchdog(mut self, lease: Duration) -> Self {
        self.options.lease = Lease::renewed(lease);
        self
    }

    /// How often the watchdog renews the lease; the default is a third of it. Makes a fixed
    /// lease a renewed one. Must be shorter than the lease.
    pub fn renew_every(mut self, every: Duration) -> Self {
        self.options.lease = Lease::Renewed {
            lease: self.options.lease.duration(),
            every,
        };
        self
    }

    /// Takes wait and lease from a preset.
    pub fn options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// Mints the fencing token with the acquisition, in the same script, so
    /// [`LockScope::fencing_token`](crate::LockScope::fencing_token) answers without a round trip.
    /// The default is to mint it on first use, which keeps an acquisition as cheap as a plain
    /// `SET NX PX`; a lock whose token is always used should be `fenced`.
    pub fn fenced(mut self) -> Self {
        self.fenced = true;
        self
    }

    /// Waits up to the wait time for the lock.
    ///
    /// While the lock is held elsewhere, the task sleeps until a release is published or the
    /// holder's TTL runs out, whichever is first: Redis sees a constant number of commands per
    /// acquisition however long the wait.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the wait passes; [`Error::InvalidArgument`] for a bad name or
    /// option (nothing is sent then); [`Error::WrongType`] when the lock key holds another type;
    /// [`Error::Redis`] when Redis fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped after the lock was taken in Redis but before the
    /// guard was returned, a release is sent in the background; no subscription is leaked.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: deadbolt::Client) -> deadbolt::Result<()> {
    /// use std::time::Duration;
    /// let guard = locks
    ///     .lock("orders:7")
    ///     .wait(Duration::from_secs(2))
    ///     .lease(Duration::from_secs(5))
    ///     .acquire()
    ///     .await?;
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(self) -> Result<LockGuard> {
        acquire(self, false).await
    }

    /// Takes the lock if it is free right now, without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::WouldBlock`] when it is held (by another owner, or by another task of this
    /// client); otherwise as [`LockBuilder::acquire`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`LockBuilder::acquire`].
    pub async fn try_acquire(self) -> Result<LockGuard> {
        acquire(self, true).await
    }
}

/// How long a task that inherits a lock's line from a release that woke other clients' waiters
/// lets them go first (see `queue.rs`). A woken waiter needs one pub/sub delivery and one round
/// trip; this leaves room for a busy machine.
const HAND_OFF: Duration = Duration::from_millis(5);

/// How often a waiter re-checks while the holder is not a deadbolt client: peers (redis-py,
/// node-redlock, redsync) publish nothing when they release, so only a re-check notices.
/// Jittered by ±20 %, so waiters of many clients do not arrive together.
const PEER_RECHECK: Duration = Duration::from_millis(50);

/// How often a waiter re-checks when its client may not subscribe (an ACL user without channel
/// rights) and so is never woken by a release.
const DEGRADED_RECHECK: Duration = Duration::from_millis(100);

/// How long `acquire` waits for the clean-up of an attempt of unknown outcome when it gives up
/// because Redis did not answer: enough for a server that answers again, short enough not to
/// delay the error by another command timeout.
const CLEAN_UP_AFTER_FAILURE: Duration = Duration::from_millis(100);

/// The first and the longest pause after an attempt that failed for a connection-level reason
/// (refused, reset, no reply); doubled after each failure in a row, with jitter.
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The longest pause before a quorum lock is tried again after a split vote (no contender got a
/// majority): a random pause in `0..QUORUM_RETRY`, so contenders do not split again.
const QUORUM_RETRY: Duration = Duration::from_millis(20);

async fn acquire(builder: LockBuilder<'_>, try_only: bool) -> Result<LockGuard> {
    let LockBuilder {
        client,
        name,
        options,
        fenced,
        replicas,
    } = builder;
    validate_name(&name)?;
    options.validate()?;
    let inner = &client.inner;
    let place = inner.place(&name);
    if let Some(r) = &replicas {
        r.validate()?;
        if place == Placement::Quorum || inner.nodes[0].cluster {
            return Err(Error::invalid(
                "replicas",
                "WAIT needs a single master (one server, Sentinel or sharded), not Redlock or a Cluster",
            ));
        }
    }
    let start = Instant::now();
    let deadline = start
        + if try_only {
            Duration::ZERO
        } else {
            options.wait
        };
    let timed_out = || Error::Timeout {
        name: name.clone(),
        waited: start.elapsed(),
    };

    // A free line is entered at once, without arming a timer: the common, uncontended case.
    // Its first attempt then counts its validity from `start`, which is only a little earlier
    // than the send (and so on the safe side), without reading the clock again.
    let mut sent_at = None;
    let mut ticket = match inner.queue.try_enter(&name) {
        Some(ticket) => {
            sent_at = Some(start);
            ticket
        }
        None if try_only => return Err(Error::WouldBlock { name }),
        None => timeout_at(deadline, inner.queue.enter(&name))
            .await
            .map_err(|_| timed_out())?,
    };

    let lease = options.lease.duration();
    let mut pending = Pending {
        inner: inner.clone(),
        place,
        key: lock_key(&inner.prefix, &name),
        token: new_token(lease, inner.degraded(place)),
        armed: false,
    };
    // Once the lock was seen held, waiting is contention; before, only Redis's answer counts.
    let mut busy = false;
    // On one node: the send of the earliest attempt whose outcome is unknown and which may
    // still be the write that holds the key. A later try with the same token that finds it
    // did not set the TTL: the key expires a lease after *that* send, so validity counts from
    // it (see `Taken::sent`).
    let mut unknown_since: Option<Instant> = None;
    let mut backoff = BACKOFF_MIN;

    if !try_only && ticket.take_hand_off() {
        // The release that let us in found waiters of other clients. Trying at once would beat
        // them every time (they need a pub/sub hop first) and starve other processes: give them
        // a moment to take the lock, then try like them (at least once, whatever the deadline).
        // A plain sleep: the release message itself reaches this client's own subscription too.
        tracing::debug!(lock = %name, "handing off to waiters of other clients");
        busy = true;
        sent_at = None;
        sleep_until((Instant::now() + HAND_OFF).min(deadline)).await;
    }
    loop {
        if busy && !subscribed_to_all(inner, place, &mut ticket) {
            // Subscribe, then try once more: a release between the last try and the
            // subscription would otherwise go unseen. On a quorum, to every node still missing
            // (a release may reach only some of them), each round until all are.
            // On a quorum, a silent node must cost no more here than in an attempt.
            let limit = match place {
                Placement::One(_) => inner.command_timeout,
                Placement::Quorum => engine::node_timeout(lease, inner.command_timeout),
            };
            let channel = channel(&pending.key);
            subscribe(inner, place, &mut ticket, &channel, deadline, limit).await;
        }
        // Registered before trying, so a release published during the try is not missed.
        let notifies: Vec<Arc<Notify>> = ticket
            .line()
            .subscriptions
            .iter()
            .map(|(_, s)| s.notify())
            .collect();
        let mut released = pin!(any_notified(&notifies));
        released.as_mut().enable();
        // A subscribed waiter marks a deadbolt holder, so that its release publishes.
        let mark = !notifies.is_empty() && !inner.degraded(place);
        let sent = sent_at.take().unwrap_or_else(Instant::now);
        let holder = match pending.attempt(&name, lease, fenced, replicas, mark).await {
            Ok(Attempt::Acquired {
                fence,
                replicas: confirmed,
            }) => {
                // Replica-synced: too few replicas confirmed, so the lock is given back.
                if let Some(err) = crate::replicas::shortfall(&name, replicas, confirmed) {
                    pending.clean_up(inner.command_timeout).await;
                    return Err(err);
                }
                // When validity counts from: this try's send, or, after a try of unknown
                // outcome, the owner-checked renewal that follows. `None`: nothing to hand out.
                let from = match unknown_since {
                    Some(since) if !inner.validity_from_retry => {
                        // Renewed, owner-checked, so the lock gets its whole lease again; if that
                        // cannot tell, validity counts from the earliest unknown send.
                        match refresh(inner, place, &pending.key, &pending.token, lease).await {
                            (Renewal::Ours, at) => Some(at),
                            (Renewal::Unknown, _) => Some(since),
                            // Our earlier write expired meanwhile: nothing is held. A write of
                            // ours still on its way (on a connection since replaced) lands after
                            // this renewal's send, if at all.
                            (Renewal::Expired | Renewal::Taken, at) => {
                                unknown_since = Some(at);
                                None
                            }
                        }
                    }
                    _ => Some(sent),
                };
                let sent = match from {
                    Some(from) if from + lease > Instant::now() + drift(lease) => from,
                    _ => {
                        // No validity is left (the reply took the whole lease, or it counts
                        // from an unknown send): not a lock to hand out. Try again with the same
                        // token; the key may still hold it, set by that send, so the next try
                        // that finds it counts from there and renews it, owner-checked.
                        if let Some(from) = from {
                            unknown_since = Some(unknown_since.map_or(from, |u| u.min(from)));
                        }
                        if Instant::now() >= deadline {
                            // Redis answers, but slower than the lease: no lock in time.
                            pending.clean_up(CLEAN_UP_AFTER_FAILURE).await;
                            return Err(unavailable(inner, place, Error::no_reply()));
                        }
                        continue;
                    }
                };
                pending.armed = false;
                let taken = Taken {
                    name,
                    key: std::mem::take(&mut pending.key),
                    token: std::mem::take(&mut pending.token),
                    place,
                    fence,
                    sent,
                };
                let mut guard = adopt(client, taken, options.lease, ticket);
                guard.set_replicas(confirmed);
                tracing::debug!(lock = %guard.name(), waited_us = start.elapsed().as_micros() as u64, "acquired");
                if fenced && place == Placement::Quorum {
                    // A quorum's token takes two fan-outs of its own (see `engine::mint`): mint
                    // it before the guard is handed out, as `fenced` promises.
                    if let Err(err) = guard.fencing_token().await {
                        let _ = guard.release().await;
                        return Err(err);
                    }
                }
                return Ok(guard);
            }
            Ok(Attempt::Held(holder)) => {
                backoff = BACKOFF_MIN;
                // Another owner held the key when this try ran, so any copy of our token that
                // is written later was written after this send.
                if unknown_since.is_some() {
                    unknown_since = Some(sent);
                }
                holder
            }
            Err(err) if err.is_transient() => {
                if matches!(place, Placement::One(_)) {
                    unknown_since.get_or_insert(sent);
                }
                // The deadline passing now means Redis did not answer, not that the lock was held.
                let now = Instant::now();
                if try_only || now >= deadline {
                    // Briefly: Redis just failed to answer, so a long wait would only delay the
                    // error; an attempt it cannot clean up now is released in the background.
                    pending.clean_up(CLEAN_UP_AFTER_FAILURE).await;
                    return Err(unavailable(inner, place, err));
                }
                tracing::debug!(error = %err, "attempt failed; retrying");
                sleep_until((now + jitter(backoff)).min(deadline)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(err) => {
                pending.clean_up(inner.command_timeout).await;
                return Err(err);
            }
        };
        if try_only {
            return Err(Error::WouldBlock { name });
        }
        if !busy {
            busy = true;
            tracing::debug!("lock busy; waiting for a release");
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out());
        }
        // Woken by a release only when subscribed on every node of the lock that is up;
        // otherwise a release seen by no subscription must be found by re-checking.
        let recheck = if inner.degraded(place) || !subscribed_to_all(inner, place, &mut ticket) {
            Some(DEGRADED_RECHECK)
        } else {
            None
        };
        let wake = match holder {
            Holder::Gone => continue,
            Holder::Deadbolt { lease, quiet } => {
                let recheck = recheck.or(quiet.then_some(PEER_RECHECK));
                now + recheck.map_or(lease, |r| jitter(r).min(lease))
            }
            Holder::Peer { pttl } => {
                let recheck = jitter(recheck.unwrap_or(PEER_RECHECK));
                match u64::try_from(pttl) {
                    Ok(ms) => now + recheck.min(Duration::from_millis(ms)),
                    // No expiry: only a re-check can tell.
                    Err(_) => now + recheck,
                }
            }
        };
        tokio::select! {
            _ = released.as_mut() => tracing::trace!("woken by a release"),
            _ = sleep_until(wake.min(deadline)) => tracing::trace!("re-checking"),
        }
        if place == Placement::Quorum {
            // Every contender that lost a split vote released what it took, and woke us: a
            // random pause keeps them from splitting again.
            let pause = QUORUM_RETRY.mul_f64(rand::rng().random_range(0.0..1.0));
            sleep_until((Instant::now() + pause).min(deadline)).await;
        }
    }
}

/// A lock Redis just gave us.
pub(crate) struct Taken {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) place: Placement,
    /// Minted with the acquisition, if it was.
    pub(crate) fence: Option<u64>,
    /// When the command that took it was sent: validity counts from then.
    pub(crate) sent: Instant,
}

/// Makes the guard of a lock just taken, and hands it to the watchdog.
pub(crate) fn adopt(client: &Client, taken: Taken, lease: Lease, ticket: Ticket) -> LockGuard {
    let inner = &client.inner;
    let duration = lease.duration();
    let parts = HeldParts {
        name: taken.name,
        key: taken.key,
        token: taken.token,
        place: taken.place,
        fence: taken.fence,
        nodes: inner.nodes.clone(),
        fence_ttl: inner.fence_ttl,
        command_timeout: inner.command_timeout,
    };
    let valid_until = taken.sent + duration - drift(duration);
    let held = Arc::new(Held::new(parts, valid_until, ticket));
    let id = inner.watchdog.register(lease, taken.sent, held.clone());
    LockGuard::new(client.clone(), held, id, lease)
}

/// Renews lock `key` (owner-checked) after an acquisition that may have found its own token
/// from an earlier try, whose write set the TTL: what it found, and when it was sent.
async fn refresh(
    inner: &Inner,
    place: Placement,
    key: &str,
    token: &str,
    lease: Duration,
) -> (Renewal, Instant) {
    let sent = Instant::now();
    let lock = [(key, token, lease)];
    let found = engine::renew(&inner.nodes, place, &lock, inner.command_timeout).await;
    (found[0], sent)
}

/// Subscribes the line to the lock's release channel on each node of the lock where it is not
/// yet. Where a subscription fails (no channel rights, or Redis did not confirm in time), the
/// wait re-checks on a timer, and the next round tries again.
async fn subscribe(
    inner: &Inner,
    place: Placement,
    ticket: &mut Ticket,
    channel: &str,
    deadline: Instant,
    limit: Duration,
) {
    // Never past the caller's deadline: without a subscription the wait re-checks on a timer.
    let limit = deadline.min(Instant::now() + limit);
    if limit <= Instant::now() {
        return;
    }
    let missing: Vec<usize> = missing(inner, place, ticket).collect();
    let subscribed = join_all(
        missing
            .iter()
            .map(|&i| timeout_at(limit, inner.nodes[i].waiters.subscribe(channel))),
    )
    .await;
    for (i, reply) in missing.into_iter().zip(subscribed) {
        match reply {
            Ok(Ok(Some(sub))) => ticket.line().subscriptions.push((i, sub)),
            Ok(Ok(None)) => {}
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cannot subscribe; re-checking on a timer")
            }
            Err(_) => tracing::debug!("no subscription confirmed in time; re-checking on a timer"),
        }
    }
}

/// The nodes of the lock where the line should be subscribed and is not: every node of a lock
/// on one node; on a quorum, those known to be up (a node that is down publishes nothing, and
/// waiting for its subscription would cost every round).
fn missing<'a>(
    inner: &'a Inner,
    place: Placement,
    ticket: &'a mut Ticket,
) -> impl Iterator<Item = usize> + 'a {
    let (first, n) = match place {
        Placement::One(i) => (i, 1),
        Placement::Quorum => (0, inner.nodes.len()),
    };
    let line = ticket.line();
    (first..first + n)
        .filter(move |&i| place != Placement::Quorum || inner.nodes[i].conn.is_up())
        .filter(move |i| !line.subscriptions.iter().any(|(on, _)| on == i))
}

/// Whether the line is subscribed on every node where it should be (see [`missing`]).
fn subscribed_to_all(inner: &Inner, place: Placement, ticket: &mut Ticket) -> bool {
    missing(inner, place, ticket).next().is_none()
}

/// `err` as the error of the lock's node being unavailable, when it is about the connection.
fn unavailable(inner: &Inner, place: Placement, err: Error) -> Error {
    match place {
        Placement::One(i) => inner.nodes[i].unavailable(err),
        // It names every node already.
        Placement::Quorum => err,
    }
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}
