//! [`LockGuard`]: a held lock, its fencing token, its lost signal and its release.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, timeout};

use crate::client::Client;
use crate::error::{Error, LostReason, Result};
use crate::key::LockKeys;
use crate::options::Lease;
use crate::scope::LockScope;
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
/// Redis failover. [`LockScope::lost`] resolves when that is known, no later than
/// [`LockScope::valid_until`]. Pair it with the critical section in `tokio::select!`, and hand
/// [`LockScope::fencing_token`] to the resource you write, so it can refuse a stale holder.
#[derive(Debug)]
#[must_use = "if unused the lock will immediately be released"]
#[clippy::has_significant_drop]
pub struct LockGuard {
    scope: LockScope,
    client: Client,
    keys: LockKeys,
    token: String,
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
            scope: LockScope { name, fence, held },
            client,
            keys,
            token,
            id,
            lease,
            released: false,
        }
    }

    /// What the critical section may see of the lock, without the power to release it.
    pub fn scope(&self) -> LockScope {
        self.scope.clone()
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
    /// Cancel safe: if dropped or failed, the lease may or may not have been changed in Redis,
    /// and [`LockScope::valid_until`] counts with the shorter of the two.
    pub async fn extend(&mut self, by: Duration) -> Result<()> {
        let lease = match self.lease {
            Lease::Fixed(_) => Lease::Fixed(by),
            Lease::Renewed { .. } => Lease::renewed(by),
        };
        lease.validate()?;
        if self.scope.held.lost.is_cancelled() {
            return Err(self.lost_error());
        }
        let mut conn = self.client.inner.conn.clone();
        let sent = Instant::now();
        // Before sending: if the reply never comes, Redis may still have applied `by`, which
        // can be shorter than the old lease; and a renewal in flight must not overwrite it.
        let generation = self.scope.held.begin_extend(sent, by);
        self.lease = lease;
        self.client.inner.watchdog.set_lease(self.id, lease, sent);
        let mut call = RENEW.prepare_invoke();
        call.key(&self.keys.lock)
            .arg(&self.token)
            .arg(by.as_millis() as u64);
        let call = call.invoke_async::<Vec<i64>>(&mut conn);
        let codes = timeout(self.client.inner.command_timeout, call)
            .await
            .map_err(|_| Error::no_reply())??;
        if let Some(&code) = codes.first().filter(|&&c| c != 1) {
            self.scope.held.mark_lost(if code == 0 {
                LostReason::Expired
            } else {
                LostReason::Taken
            });
            return Err(self.lost_error());
        }
        self.scope.held.renewed(generation, sent, by);
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
        // Held until the reply (the next local task would find the lock still ours), and given
        // up on every way out of this function, errors and cancellation included.
        let mut ticket = self.scope.held.take_ticket();
        let mut conn = inner.conn.clone();
        let call = scripts::release(&mut conn, &self.keys, &self.token);
        let (code, woken) = timeout(inner.command_timeout, call)
            .await
            .map_err(|_| Error::no_reply())?
            .map_err(|e| Error::from_redis(e, &self.keys.lock))?;
        if let (1.., Some(ticket)) = (woken, ticket.as_mut()) {
            ticket.hand_off();
        }
        drop(ticket);
        let outcome = match code {
            1 => ReleaseOutcome::Released,
            0 => ReleaseOutcome::AlreadyExpired,
            _ => ReleaseOutcome::NotOwner,
        };
        tracing::debug!(lock = %self.scope.name, ?outcome, "released");
        Ok(outcome)
    }

    fn lost_error(&self) -> Error {
        Error::LockLost {
            name: self.scope.name.clone(),
        }
    }
}

impl std::ops::Deref for LockGuard {
    type Target = LockScope;

    /// The guard's read-only side: [`LockScope::fencing_token`], [`LockScope::lost`], …
    fn deref(&self) -> &LockScope {
        &self.scope
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.client.inner.watchdog.remove(self.id);
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(lock = %self.scope.name, "guard dropped outside a runtime; the lease will expire");
            return;
        };
        let mut conn = self.client.inner.conn.clone();
        let keys = std::mem::take(&mut self.keys);
        let token = std::mem::take(&mut self.token);
        // The ticket goes with the release, so this client's next task tries after it.
        let mut ticket = self.scope.held.take_ticket();
        let limit = self.client.inner.command_timeout;
        tracing::debug!(lock = %self.scope.name, "guard dropped without release; releasing in the background");
        rt.spawn(async move {
            let reply = timeout(limit, scripts::release(&mut conn, &keys, &token)).await;
            if let (Ok(Ok((_, 1..))), Some(ticket)) = (reply, ticket.as_mut()) {
                ticket.hand_off();
            }
            drop(ticket);
        });
    }
}
