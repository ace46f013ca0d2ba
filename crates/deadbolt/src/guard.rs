//! [`LockGuard`]: a held lock, its fencing token, its lost signal and its release.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::client::Client;
use crate::engine::{self, Renewal};
use crate::error::{Error, LostReason, Result};
use crate::held::Held;
use crate::options::Lease;
use crate::queue::Ticket;
use crate::scope::LockScope;

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
    id: u64,
    lease: Lease,
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(client: Client, held: Arc<Held>, id: u64, lease: Lease) -> LockGuard {
        LockGuard {
            scope: LockScope {
                held,
                replicas: None,
            },
            client,
            id,
            lease,
            released: false,
        }
    }

    /// Records how many replicas confirmed the acquisition (see `replicas.rs`).
    pub(crate) fn set_replicas(&mut self, confirmed: Option<u32>) {
        self.scope.replicas = confirmed;
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
        let held = &self.scope.held;
        if held.is_lost() {
            return Err(self.lost_error());
        }
        let inner = &self.client.inner;
        let sent = Instant::now();
        // The watchdog's lease first, then the new generation: a renewal picked in between
        // sends the new lease under the old generation, and its reply is ignored; picked after,
        // it sends the new lease under the new one. (The other order could tag the old, longer
        // lease with the new generation, and its reply would then overclaim.)
        self.lease = lease;
        inner.watchdog.set_lease(self.id, lease, sent);
        // Before sending: if the reply never comes, Redis may still have applied `by`, which
        // can be shorter than the old lease; and a renewal in flight must not overwrite it.
        let generation = held.begin_extend(sent, by);
        let locks = [(held.key.as_str(), held.token.as_str(), by)];
        let found = engine::renew(&inner.nodes, held.place, &locks, inner.command_timeout).await;
        match found[0] {
            Renewal::Ours => {}
            Renewal::Unknown => return Err(Error::no_reply()),
            lost => {
                held.mark_lost(lost.reason().unwrap_or(LostReason::NotRenewed));
                return Err(self.lost_error());
            }
        }
        held.renewed(generation, sent, by);
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
    /// If dropped before it completes, the guard's drop takes over: the release is sent again in
    /// the background (releasing twice is harmless), and the lease is the backstop.
    pub async fn release(mut self) -> Result<ReleaseOutcome> {
        let inner = self.client.inner.clone();
        inner.watchdog.remove(self.id);
        let held = self.scope.held.clone();
        let own = held.has_subscription();
        let limit = inner.command_timeout;
        let reply = engine::release(
            &inner.nodes,
            held.place,
            &held.name,
            &held.key,
            &held.token,
            own,
            limit,
        )
        .await;
        // From here on nothing is left to do on drop: the release ran or definitely failed.
        self.released = true;
        // The local line moves on only now: until the reply, the next local task would find the
        // lock still ours.
        let ticket = held.take_ticket();
        let code = reply?;
        hand_off(ticket, code);
        let outcome = match code {
            1.. => ReleaseOutcome::Released,
            0 => ReleaseOutcome::AlreadyExpired,
            _ => ReleaseOutcome::NotOwner,
        };
        tracing::debug!(lock = %held.name, ?outcome, "released");
        Ok(outcome)
    }

    fn lost_error(&self) -> Error {
        Error::LockLost {
            name: self.scope.held.name.clone(),
        }
    }
}

/// Leaves a hand-off mark in the local line when the release (reply `code` of `release.lua`)
/// found waiters of other clients (subscribers of the channel other than this client's own
/// line, see `queue.rs`).
fn hand_off(ticket: Option<Ticket>, code: i64) {
    if let Some(mut ticket) = ticket
        && code == 2
    {
        ticket.hand_off();
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
        let inner = &self.client.inner;
        inner.watchdog.remove(self.id);
        let held = self.scope.held.clone();
        // The ticket goes with the release, so this client's next task tries after it. Without
        // a runtime it is given up at once: the next task then waits for the lease to run out,
        // like any other waiter, instead of for a release that never comes.
        let own = held.has_subscription();
        let ticket = held.take_ticket();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(lock = %held.name, "guard dropped outside a runtime; the lease will expire");
            return;
        };
        let limit = inner.command_timeout;
        tracing::debug!(lock = %held.name, "guard dropped without release; releasing in the background");
        rt.spawn(async move {
            let (place, name, key, token) = (held.place, &held.name, &held.key, &held.token);
            let reply = engine::release(&held.nodes, place, name, key, token, own, limit).await;
            if let Ok(code) = reply {
                hand_off(ticket, code);
            }
        });
    }
}
