//! [`LockScope`], the read-only side of a held lock, and [`Client::with_lock`], the scoped form:
//! take the lock, run a future, release, with the future cancelled if the lock is lost.

use std::future::Future;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::Client;
use crate::error::{Error, LostReason};
use crate::guard::ReleaseOutcome;
use crate::held::Held;
use crate::options::LockOptions;

/// What a critical section may see of its lock: name, fencing token, validity, lost signal.
/// Cheap to clone; it cannot release the lock. A [`LockGuard`](crate::LockGuard) derefs to it.
#[derive(Debug, Clone)]
pub struct LockScope {
    pub(crate) held: Arc<Held>,
    /// How many replicas confirmed the acquisition (see `replicas.rs`).
    pub(crate) replicas: Option<u32>,
}

impl LockScope {
    /// The lock name.
    pub fn name(&self) -> &str {
        &self.held.name
    }

    /// The fencing token of this acquisition: strictly greater than every token minted before
    /// for this name, so the resource you write can refuse a holder whose lock has passed on
    /// (see [`fence`](crate::fence)).
    ///
    /// A lock acquired with [`LockBuilder::fenced`](crate::LockBuilder::fenced) got its token
    /// with the acquisition, and this returns at once. Otherwise the first call mints it with
    /// one owner-checked script (the lock must still be ours) and later calls return the same
    /// token. Either way tokens are ordered like the holdings: a holding can only mint while it
    /// holds the lock, and holdings of one server do not overlap.
    ///
    /// A token is `max(last + 1, Redis server time in µs)`. The counter lives on for the client's
    /// fence TTL (7 days by default) after its last use; once it is gone, or lost in a failover,
    /// tokens continue from the server clock, which stays above every earlier token as long as
    /// the Redis server's clock never steps back (and a promoted replica's clock is not behind
    /// the old primary's by more than the time since the last acquisition).
    ///
    /// # Errors
    ///
    /// [`Error::LockLost`] when the lock is no longer ours (the lost signal fires too);
    /// [`Error::WrongType`] when the counter key holds something else; [`Error::Redis`] when
    /// Redis fails.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a token minted by a dropped call is skipped, never reused.
    pub async fn fencing_token(&self) -> Result<u64, Error> {
        self.held.fencing_token().await
    }

    /// Until when the lock is known to be held, by the local monotonic clock: the start of the
    /// last successful acquire or renewal, plus the lease, minus a drift allowance of 1 % + 2 ms.
    pub fn valid_until(&self) -> std::time::Instant {
        self.held.valid_until().into_std()
    }

    /// Whether the lock is still ours as far as this process can tell: not lost, validity not
    /// passed. A `true` is only as good as [`LockScope::valid_until`].
    pub fn is_held(&self) -> bool {
        !self.held.is_lost() && Instant::now() < self.held.valid_until()
    }

    /// Resolves when the lock is lost: a renewal found it expired or taken, or its validity
    /// passed without a successful renewal. Never later than [`LockScope::valid_until`].
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
    /// let guard = locks.lock("report").fenced().acquire().await?;
    /// let fence = guard.fencing_token().await?;
    /// tokio::select! {
    ///     _ = work(fence) => {}
    ///     _ = guard.lost() => return Err(deadbolt::Error::LockLost { name: "report".into() }),
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        self.held.lost().await
    }

    /// Why the lock was lost, once [`LockScope::lost`] has fired; `None` while it is held.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.held.lost_reason()
    }

    /// When this client knew the lock was lost (the moment [`LockScope::lost`] fired), once it
    /// was: the end of its belief that it holds the lock, for logs and histories.
    pub fn lost_at(&self) -> Option<std::time::Instant> {
        self.held.lost_at().map(tokio::time::Instant::into_std)
    }

    /// A token cancelled when the lock is lost (by the watchdog, or when its validity passes),
    /// to hand to spawned tasks. Cancelling it yourself does not affect the lock.
    pub fn lost_token(&self) -> CancellationToken {
        self.held.lost_token()
    }
}

impl Client {
    /// Takes lock `name`, runs `body`, then releases the lock: the scoped form of
    /// [`Client::lock`], which `#[deadbolt::locked]` expands to.
    ///
    /// `body` gets the lock's [`LockScope`] (for its fencing token). If the lock is lost while
    /// `body` runs, `body` is dropped at its next await point (a database transaction it holds
    /// rolls back) and the error is [`Error::LockLost`]. The lock is released after `body`
    /// completes, so a transaction committed inside `body` commits while the lock is held: lock →
    /// begin → commit → unlock.
    ///
    /// # Errors
    ///
    /// `body`'s own error; or, converted with `From`, [`Error::Timeout`] (or any acquire error)
    /// when the lock was not acquired, and [`Error::LockLost`] when it was lost mid-body. A failed
    /// or late release after `body` succeeded does not turn its success into an error (the work
    /// is done); it is logged.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `body` and releases the lock in the background.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(locks: deadbolt::Client) -> deadbolt::Result<()> {
    /// use deadbolt::LockOptions;
    /// let likes = locks
    ///     .with_lock("movie-likes:42", LockOptions::SHORT, |scope| async move {
    ///         // begin; read; write with the fencing token; commit
    ///         scope.fencing_token().await
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn with_lock<F, Fut, T, E>(
        &self,
        name: impl Into<String>,
        options: LockOptions,
        body: F,
    ) -> Result<T, E>
    where
        F: FnOnce(LockScope) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: From<Error>,
    {
        let guard = self.lock(name).options(options).acquire().await?;
        let body = body(guard.scope());
        let out = tokio::select! {
            // Lost first: when both are ready, the body has not completed its last step yet.
            biased;
            () = guard.lost() => {
                let name = guard.name().to_owned();
                let _ = guard.release().await;
                return Err(Error::LockLost { name }.into());
            }
            out = body => out,
        };
        let name = guard.name().to_owned();
        match guard.release().await {
            Ok(ReleaseOutcome::Released) => {}
            Ok(outcome) => {
                tracing::warn!(lock = %name, ?outcome, "lock had expired when the body completed")
            }
            Err(err) => {
                tracing::warn!(lock = %name, error = %err, "release failed; the lease will expire")
            }
        }
        out
    }
}
