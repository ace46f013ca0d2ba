//! Taking a lock: [`LockBuilder`] and the wait loop behind `acquire`.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use redis::AsyncCommands;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};

use crate::client::{Client, Inner};
use crate::error::{Error, Result, is_transient};
use crate::guard::LockGuard;
use crate::held::{Held, HeldParts};
use crate::key::{channel, fence_key, lock_key, validate_name};
use crate::options::{Lease, LockOptions, drift};
use crate::scripts::{self, ACQUIRE};

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
    /// option (nothing is sent then); [`Error::NotReplicated`] when fewer replicas than asked
    /// with [`LockBuilder::replicas`] confirmed the lock (it was released again);
    /// [`Error::WrongType`] when the lock key holds another type; [`Error::Redis`] when Redis
    /// fails.
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

/// What one attempt found.
enum Attempt {
    Acquired {
        /// Minted with the acquisition (fenced), or `None` to mint on first use.
        fence: Option<u64>,
        /// How many replicas `WAIT` counted, for a replica-synced acquisition.
        replicas: Option<u32>,
    },
    Held(Holder),
}

/// Who holds the lock, as far as an attempt could tell.
enum Holder {
    /// A deadbolt client, whose token carries its lease: no release message can be later than
    /// that (the TTL bound), and its release will be published unless it is `quiet` (its user
    /// may not publish: then it is re-checked like a peer).
    Deadbolt { lease: Duration, quiet: bool },
    /// Another library, with the key's remaining TTL in ms (-1: no expiry).
    Peer { pttl: i64 },
    /// The key vanished between the attempt and the look at its TTL: try again at once.
    Gone,
}

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
    if let Some(r) = &replicas {
        r.validate()?;
    }
    let inner = &client.inner;
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

    let mut ticket = if try_only {
        inner
            .queue
            .try_enter(&name)
            .ok_or_else(|| Error::WouldBlock { name: name.clone() })?
    } else {
        timeout_at(deadline, inner.queue.enter(&name))
            .await
            .map_err(|_| timed_out())?
    };

    let lease = options.lease.duration();
    let mut pending = Pending {
        inner: inner.clone(),
        key: lock_key(&inner.prefix, &name),
        token: new_token(lease, inner.waiters.is_degraded()),
        armed: false,
    };
    // Once the lock was seen held, waiting is contention; before, only Redis's answer counts.
    let mut busy = false;
    let mut backoff = BACKOFF_MIN;

    if !try_only && ticket.take_hand_off() {
        // The release that let us in found waiters of other clients. Trying at once would beat
        // them every time (they need a pub/sub hop first) and starve other processes: give them
        // a moment to take the lock, then try like them (at least once, whatever the deadline).
        // A plain sleep: the release message itself reaches this client's own subscription too.
        tracing::debug!(lock = %name, "handing off to waiters of other clients");
        busy = true;
        sleep_until((Instant::now() + HAND_OFF).min(deadline)).await;
    }
    loop {
        if busy && ticket.line().subscription.is_none() {
            // Subscribe, then try once more: a release between the last try and the
            // subscription would otherwise go unseen.
            subscribe(inner, &mut ticket, &channel(&pending.key), deadline).await;
        }
        let notify = ticket.line().subscription.as_ref().map(|s| s.notify());
        let notified = notify.as_ref().map(|n| n.notified());
        let mut notified = pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            // Register before trying, so a release published during the try is not missed.
            n.enable();
        }
        let sent = Instant::now();
        let holder = match pending.attempt(lease, fenced, replicas).await {
            Ok(Attempt::Acquired {
                fence,
                replicas: confirmed,
            }) => {
                // Replica-synced: too few replicas confirmed, so the lock is given back.
                if let Some(err) = crate::replicas::shortfall(&name, replicas, confirmed) {
                    pending.clean_up(inner.command_timeout).await;
                    return Err(err);
                }
                pending.armed = false;
                let valid_until = sent + lease - drift(lease);
                let parts = HeldParts {
                    name,
                    key: std::mem::take(&mut pending.key),
                    token: std::mem::take(&mut pending.token),
                    fence,
                    conn: inner.conn.clone(),
                    fence_ttl: inner.fence_ttl,
                    command_timeout: inner.command_timeout,
                };
                let held = Arc::new(Held::new(parts, valid_until, ticket));
                let id = inner.watchdog.register(options.lease, sent, held.clone());
                tracing::debug!(lock = %held.name, waited_us = start.elapsed().as_micros() as u64, "acquired");
                let mut guard = LockGuard::new(client.clone(), held, id, options.lease);
                guard.set_replicas(confirmed);
                return Ok(guard);
            }
            Ok(Attempt::Held(holder)) => {
                backoff = BACKOFF_MIN;
                holder
            }
            Err(err) if err.is_transient() => {
                // The deadline passing now means Redis did not answer, not that the lock was held.
                let now = Instant::now();
                if try_only || now >= deadline {
                    // Briefly: Redis just failed to answer, so a long wait would only delay the
                    // error; an attempt it cannot clean up now is released in the background.
                    pending.clean_up(CLEAN_UP_AFTER_FAILURE).await;
                    return Err(unavailable(inner, err));
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
        let recheck = if inner.waiters.is_degraded() || notify.is_none() {
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
            _ = async {
                match notified.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            } => tracing::trace!("woken by a release"),
            _ = sleep_until(wake.min(deadline)) => tracing::trace!("re-checking"),
        }
    }
}

/// Subscribes the line to the lock's release channel, unless it is already; returns what to
/// wait on, or `None` when waiting must re-check on a timer (no channel rights, or Redis did not
/// confirm in time: the next round tries again).
async fn subscribe(
    inner: &Inner,
    ticket: &mut crate::queue::Ticket,
    channel: &str,
    deadline: Instant,
) -> Option<Arc<tokio::sync::Notify>> {
    // Never past the caller's deadline: without a subscription the wait re-checks on a timer.
    let limit = deadline.min(Instant::now() + inner.command_timeout);
    if ticket.line().subscription.is_none() && limit > Instant::now() {
        match timeout_at(limit, inner.waiters.subscribe(channel)).await {
            Ok(Ok(sub)) => ticket.line().subscription = sub,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "cannot subscribe; re-checking on a timer")
            }
            Err(_) => tracing::debug!("no subscription confirmed in time; re-checking on a timer"),
        }
    }
    ticket.line().subscription.as_ref().map(|s| s.notify())
}

fn unavailable(inner: &Inner, err: Error) -> Error {
    match err {
        Error::Redis(source)
        | Error::Unavailable { source, .. }
        | Error::Connect { source, .. } => Error::Unavailable {
            addr: inner.addr.clone(),
            source,
        },
        other => other,
    }
}

/// `d` ± 20 %.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// An acquisition in flight. If a script call may have taken the lock (it timed out, or its
/// connection dropped) and the acquisition then gives up, the lock is released: awaited before
/// `acquire` returns, or in the background if `acquire` is dropped.
struct Pending {
    inner: Arc<Inner>,
    key: String,
    token: String,
    armed: bool,
}

impl Pending {
    /// One try, bounded by the command timeout. After a failure of the connection the outcome
    /// is unknown; the next try uses the same token, which Redis then recognizes as ours.
    async fn attempt(
        &mut self,
        lease: Duration,
        fenced: bool,
        replicas: Option<crate::replicas::Replicas>,
    ) -> Result<Attempt> {
        self.armed = true;
        let limit = self.inner.command_timeout + replicas.map_or(Duration::ZERO, |r| r.timeout);
        let mut conn = self.inner.conn.get();
        let attempt = async {
            // Replica-synced: the write goes with a `WAIT` on the client's own connection for
            // that (see `replicas.rs`); `confirmed` is what `WAIT` counted.
            let mut confirmed = None;
            if fenced {
                let mut call = ACQUIRE.call(2);
                call.arg(&self.key)
                    .arg(fence_key(&self.key))
                    .arg(&self.token)
                    .arg(lease.as_millis() as u64)
                    .arg(self.inner.fence_ttl.as_millis() as u64);
                // {1, fence} or {0, pttl, holder}.
                // The whole attempt is bounded below.
                let reply: Vec<redis::Value> = match replicas {
                    None => ACQUIRE.run(&call, &mut conn, None).await?,
                    Some(r) => {
                        let sent =
                            crate::replicas::send(&self.inner.replicated, &call, Some(&ACQUIRE), r);
                        let (reply, n) = sent.await?;
                        confirmed = Some(n);
                        redis::FromRedisValue::from_redis_value(reply)?
                    }
                };
                let int = |i: usize| match reply.get(i) {
                    Some(redis::Value::Int(n)) => *n,
                    _ => -2,
                };
                return Ok(if int(0) == 1 {
                    Attempt::Acquired {
                        fence: Some(int(1) as u64),
                        replicas: confirmed,
                    }
                } else {
                    let holder = match reply.get(2) {
                        Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
                        _ => None,
                    };
                    Attempt::Held(holder_of(holder.as_deref(), int(1)))
                });
            }
            // Nil: set, the lock is ours. A value: the holder's token, left alone (NX).
            let mut set = redis::cmd("SET");
            set.arg(&self.key)
                .arg(&self.token)
                .arg("NX")
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .arg("GET");
            let previous: Option<String> = match replicas {
                None => set.query_async(&mut conn).await?,
                Some(r) => {
                    let (reply, n) =
                        crate::replicas::send(&self.inner.replicated, &set, None, r).await?;
                    confirmed = Some(n);
                    redis::FromRedisValue::from_redis_value(reply)?
                }
            };
            let acquired = Attempt::Acquired {
                fence: None,
                replicas: confirmed,
            };
            Ok(match previous {
                None => acquired,
                // A retry after an ambiguous outcome: the earlier try landed.
                Some(holder) if holder == self.token => acquired,
                Some(holder) => match holder_of(Some(&holder), 0) {
                    Holder::Peer { .. } => {
                        let pttl: i64 = conn.pttl(&self.key).await?;
                        Attempt::Held(holder_of(Some(&holder), pttl))
                    }
                    deadbolt => Attempt::Held(deadbolt),
                },
            })
        };
        let reply: redis::RedisResult<Attempt> = match timeout(limit, attempt).await {
            Ok(reply) => reply,
            Err(_) => return Err(Error::no_reply()),
        };
        match reply {
            Ok(attempt) => {
                if matches!(attempt, Attempt::Held(_)) {
                    self.armed = false;
                }
                Ok(attempt)
            }
            Err(err) if is_transient(&err) => {
                // Failover hook: `READONLY` means the node was demoted (see `conn.rs`).
                self.inner.conn.saw_error(&err);
                Err(Error::Redis(err))
            }
            // Redis refused the command (say WRONGTYPE): nothing was written.
            Err(err) => {
                self.armed = false;
                Err(Error::from_redis(err, &self.key))
            }
        }
    }

    /// Releases what an attempt with an unknown outcome may have taken, within `limit`; left to
    /// the background (see `Drop`) if that fails too.
    async fn clean_up(&mut self, limit: Duration) {
        if !self.armed {
            return;
        }
        let mut conn = self.inner.conn.get();
        if scripts::release(&mut conn, &self.key, &self.token, false, limit)
            .await
            .is_ok()
        {
            self.armed = false;
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (conn, limit, key, token) = (
            self.inner.conn.clone(),
            self.inner.command_timeout,
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        tracing::debug!(%key, "acquisition abandoned; releasing in the background");
        rt.spawn(async move {
            let mut conn = conn.get();
            let _ = scripts::release(&mut conn, &key, &token, false, limit).await;
        });
    }
}

/// The prefix of every deadbolt owner token, which tells our holders from peers'.
const TOKEN_PREFIX: &str = "dbt1-";

/// A fresh owner token: 128 random bits from the thread-local CSPRNG, and the lease, so a waiter
/// that reads the token knows how long to wait at most: `dbt1-<32 hex digits>-<lease in ms>`,
/// with `-q` after it when this client may not publish its releases (`quiet`).
fn new_token(lease: Duration, quiet: bool) -> String {
    // By hand, a byte at a time: `format!("{:032x}")` costs more than the rest of the
    // acquisition's bookkeeping.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let random = rand::rng().random::<u128>().to_be_bytes();
    let mut token = Vec::with_capacity(TOKEN_PREFIX.len() + 32 + 1 + 20);
    token.extend_from_slice(TOKEN_PREFIX.as_bytes());
    for byte in random {
        token.extend_from_slice(&[HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]]);
    }
    token.push(b'-');
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut ms = lease.as_millis() as u64;
    loop {
        at -= 1;
        digits[at] = b'0' + (ms % 10) as u8;
        ms /= 10;
        if ms == 0 {
            break;
        }
    }
    token.extend_from_slice(&digits[at..]);
    if quiet {
        token.extend_from_slice(b"-q");
    }
    // Only ASCII was written.
    String::from_utf8(token).unwrap_or_default()
}

/// Reads a holder's token (`None`: the key is gone) and the key's TTL.
fn holder_of(token: Option<&str>, pttl: i64) -> Holder {
    let Some(token) = token else {
        return Holder::Gone;
    };
    let lease = token
        .strip_prefix(TOKEN_PREFIX)
        .and_then(|rest| rest.split_once('-'))
        .filter(|(random, _)| random.len() == 32)
        .and_then(|(_, rest)| {
            let (lease, quiet) = match rest.strip_suffix("-q") {
                Some(lease) => (lease, true),
                None => (rest, false),
            };
            Some((lease.parse::<u64>().ok()?, quiet))
        });
    match (lease, pttl) {
        (_, -2) => Holder::Gone,
        (Some((ms, quiet)), _) => Holder::Deadbolt {
            lease: Duration::from_millis(ms),
            quiet,
        },
        (None, pttl) => Holder::Peer { pttl },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_tell_deadbolt_holders_from_peers() {
        let token = new_token(Duration::from_millis(1500), false);
        assert_eq!(token.len(), 5 + 32 + 1 + 4);
        assert!(token.ends_with("-1500"), "{token}");
        assert!(new_token(Duration::ZERO, false).ends_with("-0"));
        assert!(matches!(
            holder_of(Some(&token), 1000),
            Holder::Deadbolt { lease, quiet: false } if lease == Duration::from_millis(1500)
        ));
        let quiet = new_token(Duration::from_millis(20), true);
        assert!(matches!(
            holder_of(Some(&quiet), 10),
            Holder::Deadbolt { lease, quiet: true } if lease == Duration::from_millis(20)
        ));
        // redis-py's token is uuid1().hex: 32 hex digits, no prefix.
        let peer = "0123456789abcdef0123456789abcdef";
        assert!(matches!(
            holder_of(Some(peer), -1),
            Holder::Peer { pttl: -1 }
        ));
        assert!(matches!(
            holder_of(Some("dbt1-short-10"), 5),
            Holder::Peer { pttl: 5 }
        ));
        assert!(matches!(holder_of(None, 5), Holder::Gone));
        assert!(matches!(holder_of(Some(&token), -2), Holder::Gone));
    }
}
