//! How long to wait for a lock and how long to hold it: [`LockOptions`] and [`Lease`].

use std::time::Duration;

use crate::error::{Error, Result};

/// The shortest lease accepted. Shorter leases expire before a round trip to Redis completes.
pub const MIN_LEASE: Duration = Duration::from_millis(10);
/// The longest lease accepted (one day).
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest wait accepted (one day).
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 60 * 60);
/// The wait used when none is given.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);
/// The lease the watchdog keeps renewing when no lease is given (Redisson's `lockWatchdogTimeout`).
pub const DEFAULT_WATCHDOG_LEASE: Duration = Duration::from_secs(30);

/// How a held lock's lease is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// The lock expires `lease` after it was taken unless [`extend`](crate::LockGuard::extend)ed.
    /// Use it when the critical section has a known upper bound.
    Fixed(Duration),
    /// The client's watchdog renews the lease every `every` for as long as the guard lives. If
    /// the holder's process dies, the lock expires at most `lease` later.
    Renewed {
        /// The lease set on every renewal.
        lease: Duration,
        /// How often it is renewed; must be shorter than `lease`.
        every: Duration,
    },
}

impl Lease {
    /// A watchdog lease renewed every third of its length, as Redisson does.
    pub const fn renewed(lease: Duration) -> Lease {
        Lease::Renewed {
            lease,
            every: Duration::from_nanos((lease.as_nanos() / 3) as u64),
        }
    }

    /// The length of the lease set in Redis.
    pub const fn duration(&self) -> Duration {
        match *self {
            Lease::Fixed(lease) | Lease::Renewed { lease, .. } => lease,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let lease = self.duration();
        if lease < MIN_LEASE || lease > MAX_LEASE {
            return Err(Error::invalid(
                "lease",
                format!("{lease:?} is outside the allowed range {MIN_LEASE:?} to {MAX_LEASE:?}"),
            ));
        }
        if let Lease::Renewed { every, .. } = *self {
            if every >= lease {
                return Err(Error::invalid(
                    "renewal interval",
                    format!("{every:?} must be shorter than the lease ({lease:?})"),
                ));
            }
            if every < Duration::from_millis(1) {
                return Err(Error::invalid("renewal interval", "must be at least 1ms"));
            }
        }
        Ok(())
    }
}

/// A named (wait, lease) pair, checked once and reused.
///
/// ```
/// use std::time::Duration;
/// use deadbolt::{Lease, LockOptions};
///
/// // Wait up to 1 s for the lock, hold it for at most 3 s.
/// const LIKES: LockOptions = LockOptions::new(Duration::from_secs(1), Lease::Fixed(Duration::from_secs(3)));
/// assert_eq!(LIKES, LockOptions::SHORT);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOptions {
    /// How long `acquire` waits for the lock before it returns [`Error::Timeout`].
    pub wait: Duration,
    /// How the lease is kept while the lock is held.
    pub lease: Lease,
}

impl LockOptions {
    /// Wait 1 s, fixed lease 3 s: a short critical section such as one database transaction.
    pub const SHORT: LockOptions =
        LockOptions::new(Duration::from_secs(1), Lease::Fixed(Duration::from_secs(3)));

    /// Wait [`DEFAULT_WAIT`] (10 s); the watchdog renews a [`DEFAULT_WATCHDOG_LEASE`] (30 s)
    /// lease every 10 s. This is [`LockOptions::default`].
    pub const WATCHDOG: LockOptions =
        LockOptions::new(DEFAULT_WAIT, Lease::renewed(DEFAULT_WATCHDOG_LEASE));

    /// Options with the given wait and lease.
    pub const fn new(wait: Duration, lease: Lease) -> LockOptions {
        LockOptions { wait, lease }
    }

    /// Checks every value against the documented limits.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the value that is out of range.
    pub fn validate(&self) -> Result<()> {
        if self.wait > MAX_WAIT {
            return Err(Error::invalid(
                "wait",
                format!("{:?} exceeds the maximum of {MAX_WAIT:?}", self.wait),
            ));
        }
        self.lease.validate()
    }
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions::WATCHDOG
    }
}

/// The clock drift allowance subtracted from a lease to get its local validity: 1 % of the lease
/// plus 2 ms, as the Redlock algorithm and its ports use.
pub(crate) fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced() {
        let ms = Duration::from_millis;
        assert!(Lease::Fixed(ms(0)).validate().is_err());
        assert!(Lease::Fixed(ms(9)).validate().is_err());
        assert!(Lease::Fixed(ms(10)).validate().is_ok());
        assert!(Lease::Fixed(MAX_LEASE + ms(1)).validate().is_err());
        let every_too_long = Lease::Renewed {
            lease: ms(100),
            every: ms(100),
        };
        assert!(every_too_long.validate().is_err());
        assert!(
            LockOptions::new(MAX_WAIT + ms(1), Lease::Fixed(ms(100)))
                .validate()
                .is_err()
        );
        assert_eq!(
            Lease::renewed(ms(30)),
            Lease::Renewed {
                lease: ms(30),
                every: ms(10)
            }
        );
        assert!(LockOptions::default().validate().is_ok());
        assert!(LockOptions::SHORT.validate().is_ok());
    }
}
