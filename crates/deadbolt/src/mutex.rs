//! Taking a lock: [`LockBuilder`] and the wait loop behind `acquire`.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use tokio::time::{Instant, sleep_until, timeout_at};
use tracing::Instrument;

use crate::client::{Client, Inner};
use crate::error::{Error, Result};
use crate::guard::LockGuard;
use crate::key::{LockKeys, validate_name};
use crate::options::{Lease, LockOptions, drift};
use crate::scripts::{self, ACQUIRE};
use crate::waiters::Subscription;
use crate::watchdog::Held;

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
}

impl<'a> LockBuilder<'a> {
    pub(crate) fn new(client: &'a Client, name: String) -> Self {
        LockBuilder {
            client,
            name,
            options: LockOptions::default(),
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
        acquire(self.client, self.name, self.options, false).await
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
        acquire(self.client, self.name, self.options, true).await
    }
}

/// How long a task that inherits a lock's line from a release that woke other clients' waiters
/// lets them go first (see `queue.rs`). A woken waiter needs one pub/sub delivery and one round
/// trip; this leaves room for a busy machine.
const HAND_OFF: Duration = Duration::from_millis(5);

/// What one attempt found.
enum Attempt {
    Acquired {
        fence: u64,
    },
    /// Held by another owner, with its remaining TTL in ms (-1: no expiry, -2: just vanished).
    Held {
        pttl: i64,
    },
}

async fn acquire(
    client: &Client,
    name: String,
    options: LockOptions,
    try_only: bool,
) -> Result<LockGuard> {
    let span = tracing::debug_span!("acquire", lock = %name);
    acquire_in_span(client, name, options, try_only)
        .instrument(span)
        .await
}

async fn acquire_in_span(
    client: &Client,
    name: String,
    options: LockOptions,
    try_only: bool,
) -> Result<LockGuard> {
    validate_name(&name)?;
    options.validate()?;
    let inner = &client.inner;
    let start = Instant::now();
    // The wait bounds the whole call, but the first try always gets one command timeout to hear
    // back, so `wait(0)` behaves as a try instead of giving up before Redis could answer.
    let deadline = start
        + if try_only {
            Duration::ZERO
        } else {
            options.wait
        };
    let first_try_deadline = deadline.max(start + inner.command_timeout);
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

    let keys = inner.keys(&name);
    let mut pending = Pending {
        inner: inner.clone(),
        keys,
        token: new_token(),
        armed: false,
    };
    let mut subscription: Option<Subscription> = None;
    let mut busy = false;
    if ticket.take_hand_off() {
        // The release that let us in also woke waiters of other clients. Trying at once would
        // beat them every time (they need a pub/sub hop first) and starve other processes: give
        // them a moment to take the lock, then wait our turn like them.
        tracing::debug!("handing off to waiters of other clients");
        busy = true;
        let sub = timeout_at(deadline, inner.waiters.subscribe(&pending.keys.channel));
        let sub = subscription.insert(sub.await.map_err(|_| timed_out())??);
        let until = (Instant::now() + HAND_OFF).min(deadline);
        tokio::select! {
            _ = sub.notify().notified() => {}
            _ = sleep_until(until) => {}
        }
    }
    loop {
        if busy && subscription.is_none() {
            // Subscribe, then try once more: a release between the first try and the
            // subscription would otherwise go unseen.
            tracing::debug!("lock busy; waiting for a release");
            let sub = timeout_at(deadline, inner.waiters.subscribe(&pending.keys.channel));
            subscription = Some(sub.await.map_err(|_| timed_out())??);
        }
        let notified = subscription.as_ref().map(|s| s.notify().notified());
        let mut notified = pin!(notified);
        if let Some(n) = notified.as_mut().as_pin_mut() {
            // Register before trying, so a release published during the try is not missed.
            n.enable();
        }
        let sent = Instant::now();
        let limit = if busy { deadline } else { first_try_deadline };
        let attempt = match timeout_at(limit, pending.attempt(options.lease.duration())).await {
            Ok(attempt) => attempt?,
            // Once the lock was seen held, running out of time is contention; before, it is a
            // Redis that does not answer.
            Err(_) if busy => return Err(timed_out()),
            Err(_) => return Err(Error::no_reply()),
        };
        let pttl = match attempt {
            Attempt::Acquired { fence } => {
                pending.armed = false;
                let lease = options.lease;
                let valid_until = sent + lease.duration() - drift(lease.duration());
                let held = Arc::new(Held::new(valid_until, ticket));
                let id = inner.watchdog.register(
                    &pending.keys.lock,
                    &name,
                    &pending.token,
                    lease,
                    sent,
                    held.clone(),
                );
                tracing::debug!(
                    fence,
                    waited_us = start.elapsed().as_micros() as u64,
                    "acquired"
                );
                return Ok(LockGuard::new(
                    client.clone(),
                    name,
                    std::mem::take(&mut pending.keys),
                    std::mem::take(&mut pending.token),
                    fence,
                    held,
                    id,
                    lease,
                ));
            }
            Attempt::Held { pttl } => pttl,
        };
        if try_only {
            return Err(Error::WouldBlock { name });
        }
        if !busy {
            busy = true;
            continue;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(timed_out());
        }
        let wake = match pttl {
            // Just expired between the GET and the PTTL: try again at once.
            -2 => continue,
            // No expiry (a peer that sets none): only a release or the deadline can help.
            -1 => deadline,
            ms => (now + Duration::from_millis(ms as u64)).min(deadline),
        };
        tokio::select! {
            _ = async {
                match notified.as_mut().as_pin_mut() {
                    Some(n) => n.await,
                    None => std::future::pending().await,
                }
            } => tracing::trace!("woken by a release"),
            _ = sleep_until(wake) => tracing::trace!("holder's ttl ran out"),
        }
    }
}

/// An acquisition in flight. If it is dropped while a script call may have taken the lock
/// (cancelled, timed out, or failed with an unknown outcome), it releases in the background.
struct Pending {
    inner: Arc<Inner>,
    keys: LockKeys,
    token: String,
    armed: bool,
}

impl Pending {
    /// One try. After a dropped connection or timeout the outcome is unknown, so it tries once
    /// more with the same token: the script treats a lock already holding it as ours.
    async fn attempt(&mut self, lease: Duration) -> Result<Attempt> {
        self.armed = true;
        let mut conn = self.inner.conn.clone();
        let mut call = ACQUIRE.prepare_invoke();
        call.key(&self.keys.lock)
            .key(&self.keys.fence)
            .arg(&self.token)
            .arg(lease.as_millis() as u64)
            .arg(self.inner.fence_ttl.as_millis() as u64);
        let reply: (i64, i64) = match call.invoke_async(&mut conn).await {
            Ok(reply) => reply,
            Err(err) if err.is_io_error() || err.is_timeout() || err.is_connection_dropped() => {
                tracing::debug!(error = %err, "acquire outcome unknown; retrying once");
                call.invoke_async(&mut conn).await.map_err(Error::Redis)?
            }
            // Redis refused the script (say WRONGTYPE). The script writes nothing before its
            // checks pass, but stay armed: a release of a lock we do not hold is harmless.
            Err(err) => return Err(Error::from_redis(err, &self.keys.lock)),
        };
        match reply {
            (1, fence) => Ok(Attempt::Acquired {
                fence: fence as u64,
            }),
            (_, pttl) => {
                self.armed = false;
                Ok(Attempt::Held { pttl })
            }
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
        let (inner, mut conn, keys, token) = (
            self.inner.clone(),
            self.inner.conn.clone(),
            std::mem::take(&mut self.keys),
            std::mem::take(&mut self.token),
        );
        tracing::debug!(key = %keys.lock, "acquisition abandoned; releasing in the background");
        rt.spawn(async move {
            let limit = inner.command_timeout;
            let _ = tokio::time::timeout(limit, scripts::release(&mut conn, &keys, &token)).await;
        });
    }
}

/// 128 random bits from the thread-local CSPRNG, as 32 hex digits: unique per acquisition.
fn new_token() -> String {
    format!("{:032x}", rand::rng().random::<u128>())
}
