//! [`LockGuard`]: a held lock, its fencing token, its lost signal and its release.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::key::LockKeys;
use crate::options::Lease;
use crate::scripts::{self, RENEW};
use crate::watchdog::Held;

/// How a release ended. None of these is an error: after a lease ran out, "already expired" is
/// a fact to report, not a reason to panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The lock was ours and is now free; waiters were woken.
    Released,
    /// The lease had run out: nobody held the lock any more.
    AlreadyExpired,
    /// The lease had run out and another owner has taken the lock since; it was left alone.
    NotOwner,
}

/// A held lock. Release it with [`LockGuard::release`].
///
/// # Dropping
///
/// Dropping a guard without releasing spawns a best-effort release on the current tokio
/// runtime; it never blocks. Outside a runtime, or if that release fails, the lease is the
/// backstop: the lock expires at the end of its lease (the watchdog stops renewing at once).
/// Prefer the explicit `release().await`, which reports how it went.
///
/// # Lost locks
///
/// A lease can run out while the holder still works: a long GC-like pause, a partition, a
/// Redis failover. [`LockGuard::lost`] resolves when that is known, no later than
/// [`LockGuard::valid_until`]. Pair it with the critical section in `tokio::select!`, and hand
/// [`LockGuard::fencing_token`] to the resource you write, so it can refuse a stale holder.
#[derive(Debug)]
#[must_use = "if unused the lock will immediately be released"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    client: Client,
    name: String,
    keys: LockKeys,
    token: String,
    fence: u64,
    held: Arc<Held>,
    id: u64,
    lease: Lease,
    released: bool,
}

impl LockGuard {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        client: Client,
        name: String,
        keys: LockKeys,
        token: String,
        fence: u64,
        held: Arc<Held>,
        id: u64,
        lease: Lease,
    ) -> LockGuard {
        LockGuard {
            client,
            name,
            keys,
            token,
            fence,
            held,
            id,
            lease,
            released: false,
        }
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this acquisition: strictly greater than every token issued before
    /// for this name.
    ///
    /// It is `max(last + 1, Redis server time in µs)`. The counter lives on for the client's
    /// fence TTL (7 days by default) after its last use; once it is gone, or lost in a failover,
    /// tokens continue from the server clock, which stays above every earlier token as long as
    /// the Redis server's clock never steps back (and a promoted replica's clock is not behind
    /// the old primary's by more than the time since the last acquisition).
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// Until when the lock is known to be held, by the local monotonic clock: the start of the
    /// last successful acquire or renewal, plus the lease, minus a drift allowance of 1 % + 2 ms.
    pub fn valid_until(&self) -> std::time::Instant {
        self.held.valid_until().into_std()
    }

    /// Whether the lock is still ours as far as this process can tell: not lost, validity not
    /// passed. A `true` is only as good as [`LockGuard::valid_until`].
    pub fn is_held(&self) -> bool {
        !self.held.lost.is_cancelled() && Instant::now() < self.held.valid_until()
    }

    /// Resolves when the lock is lost: a renewal found it expired or taken, or its validity
    /// passed without a successful renewal. Never later than [`LockGuard::valid_until`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; call it again to keep watching.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn work(_fence: u64) {}
    /// # async fn demo(locks: deadbolt::Client) -> deadbolt::Result<()> {
    /// let guard = locks.lock("report").acquire().await?;
    /// tokio::select! {
    ///     _ = work(guard.fencing_token()) => {}
    ///     _ = guard.lost() => return Err(deadbolt::Error::LockLost { name: "report".into() }),
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        self.held.lost().await
    }

    /// A token cancelled when the watchdog finds the lock lost, to hand to spawned tasks.
    /// Cancelling it yourself does not affect the lock.
    pub fn lost_token(&self) -> CancellationToken {
        self.held.lost.child_token()
    }

    /// Sets the lock's remaining lease to `by`, if it is still ours. For a watchdog lock, `by`
    /// also becomes the lease it is renewed to, every third of it.
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock expired or was taken (the lost signal fires too);
    /// [`Error::InvalidArgument`] for a lease out of range; [`Error::Redis`] when Redis fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped, the lease is either extended or unchanged.
    pub async fn extend(&mut self, by: Duration) -> Result<()> {
        let lease = match self.lease {
            Lease::Fixed(_) => Lease::Fixed(by),
            Lease::Renewed { .. } => Lease::renewed(by),
        };
        lease.validate()?;
        if self.held.lost.is_cancelled() {
            return Err(self.lost_error());
        }
        let mut conn = self.client.inner.conn.clone();
        let sent = Instant::now();
        let mut call = RENEW.prepare_invoke();
        call.key(&self.keys.lock)
            .arg(&self.token)
            .arg(by.as_millis() as u64);
        let call = call.invoke_async::<Vec<i64>>(&mut conn);
        let codes = timeout(self.client.inner.command_timeout, call)
            .await
            .map_err(|_| Error::Redis(timeout_error()))??;
        if codes.first() != Some(&1) {
            self.held.mark_lost();
            return Err(self.lost_error());
        }
        self.held.renewed(sent, by);
        self.lease = lease;
        self.client.inner.watchdog.set_lease(self.id, lease, sent);
        Ok(())
    }

    /// Releases the lock if it is still ours, and wakes its waiters.
    ///
    /// # Errors
    ///
    /// [`Error::Redis`] when Redis cannot be reached; the lock then expires at the end of its
    /// lease (the watchdog has stopped renewing it).
    ///
    /// # Cancel safety
    ///
    /// If dropped before it completes, the lock is either released or left to expire.
    pub async fn release(mut self) -> Result<ReleaseOutcome> {
        self.released = true;
        let inner = self.client.inner.clone();
        inner.watchdog.remove(self.id);
        let mut conn = inner.conn.clone();
        let call = scripts::release(&mut conn, &self.keys, &self.token);
        let code = timeout(inner.command_timeout, call)
            .await
            .map_err(|_| Error::Redis(timeout_error()))?
            .map_err(|e| Error::from_redis(e, &self.keys.lock))?;
        // Only now may this client's next task try: earlier, it would find the lock still ours.
        drop(self.held.take_ticket());
        let outcome = match code {
            1 => ReleaseOutcome::Released,
            0 => ReleaseOutcome::AlreadyExpired,
            _ => ReleaseOutcome::NotOwner,
        };
        tracing::debug!(lock = %self.name, ?outcome, "released");
        Ok(outcome)
    }

    fn lost_error(&self) -> Error {
        Error::LockLost {
            name: self.name.clone(),
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.client.inner.watchdog.remove(self.id);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(lock = %self.name, "guard dropped outside a runtime; the lease will expire");
            return;
        };
        let mut conn = self.client.inner.conn.clone();
        let keys = std::mem::take(&mut self.keys);
        let token = std::mem::take(&mut self.token);
        // The ticket goes with the release, so this client's next task tries after it.
        let ticket = self.held.take_ticket();
        let limit = self.client.inner.command_timeout;
        tracing::debug!(lock = %self.name, "guard dropped without release; releasing in the background");
        rt.spawn(async move {
            let _ = timeout(limit, scripts::release(&mut conn, &keys, &token)).await;
            drop(ticket);
        });
    }
}

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "no reply within the command timeout",
    ))
}
