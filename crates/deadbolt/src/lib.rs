//! Distributed locks on Redis that engineers can bet their data on.
//!
//! ```no_run
//! # async fn do_work(_fence: u64) -> Result<(), Box<dyn std::error::Error>> { Ok(()) }
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! let locks = deadbolt::Client::connect("redis://127.0.0.1:6379").await?;
//! let guard = locks
//!     .lock("movie-likes:42")
//!     .wait(Duration::from_secs(10)) // Err(Timeout) if not ours within 10 s
//!     .lease(Duration::from_secs(3)) // fixed lease; leave unset and the watchdog renews
//!     .fenced()                      // mint the fencing token with the acquisition
//!     .acquire()
//!     .await?;
//! let fence = guard.fencing_token().await?;
//! tokio::select! {
//!     r = do_work(fence) => r?,
//!     _ = guard.lost() => return Err("lock lost".into()),
//! }
//! guard.release().await?; // Released | AlreadyExpired | NotOwner
//! # Ok(()) }
//! ```
//!
//! # What you get
//!
//! - **One Redis, done right.** `SET key token NX PX lease` semantics with a 128-bit random
//!   owner token; release by compare-and-delete that tells *released*, *already expired* and
//!   *held by someone else* apart ([`ReleaseOutcome`]).
//! - **Waiting without polling.** Waiters sleep until a release is published on the lock's
//!   channel or the holder's TTL runs out; one pub/sub connection per [`Client`].
//! - **A watchdog** renews every held lock's lease in batched round trips while the guard
//!   lives, and a **lost signal** ([`LockScope::lost`]) fires when it cannot, never later than
//!   [`LockScope::valid_until`].
//! - **Fencing tokens** ([`LockScope::fencing_token`], minted on first use or with
//!   [`LockBuilder::fenced`]) strictly increasing per lock name, and a resource-side check ([`fence::set_if_newer`], and an SQL pattern) that refuses stale
//!   holders.
//! - **Cancel safety**: dropping an `acquire` future leaves no subscription behind, and no lock
//!   once the release it sends in the background lands (the lease is the backstop).
//! - **Beyond one Redis**, on the same engine: [`Client::redlock`] (a majority of independent
//!   masters), [`Client::sharded`] (names spread over independent servers),
//!   [`Client::cluster`] (Redis Cluster, sharded pub/sub), and [`Client::multi_lock`] (several
//!   names, all or nothing, deadlock-free).
//!
//! # Which mode?
//!
//! | mode | survives | can lose a lock when |
//! |---|---|---|
//! | [`Client::connect`] | restarts with persistence | the server restarts without it |
//! | [`Client::cluster`] | a master failure | the key had not reached the promoted replica |
//! | [`Client::sharded`] | one server down costs only its names | as a single server, per server |
//! | [`Client::redlock`] | ⌊(N−1)/2⌋ masters down or restarted | more restart without persistence within a lease |
//!
//! Start with one server; the repository's `docs/2026-11-30-which-mode.md` says what each mode
//! guarantees, loses and costs, and how to configure Redis for it.
//!
//! # Guarantees, and their limits
//!
//! - Mutual exclusion holds while the Redis server keeps its data and its clock runs at a sane
//!   rate. A failover to a replica that had not yet received the lock (replication is
//!   asynchronous) can hand the lock to a second owner; a restart without persistence likewise.
//!   A client of a Sentinel-managed master ([`Client::sentinel`]) follows a failover by itself
//!   and checks every held lock on the new master: one it lacks fires [`LockScope::lost`].
//!   [`LockBuilder::replicas`] has each acquisition confirmed by `WAIT` on replicas first, which
//!   narrows the window without closing it (a replica that acknowledged may still not be the
//!   one promoted).
//! - Leases expire by the *server's* wall clock: a clock jump forward on the server shortens
//!   every lease.
//! - A holder can pause (GC, swap, SIGSTOP) past its lease and keep working unaware. The lost
//!   signal tells it as soon as the process runs again; only fencing stops its late writes.
//!
//! # Interoperability
//!
//! The lock key (see [`key`]) is a plain string holding the owner token with a `PX` expiry, as
//! redsync, node-redlock and redis-py's `Lock` use: a peer locking the same key is mutually
//! excluded with deadbolt. Peers publish nothing on release, so while a peer holds the lock
//! (its token is not a `dbt2-…` one) our waiters re-check every 50 ms ± 20 % instead of sleeping
//! until woken, with or without a TTL on the peer's key; peers mint no fencing tokens.
//!
//! # Faults
//!
//! Except on a Redis Cluster (whose client reconnects by itself), every connection is pinged
//! each second and replaced when it stays silent for the command timeout; after a dropped or
//! replaced connection every held lock is checked at once, so a Redis restart that lost the
//! locks fires [`LockScope::lost`] about a second after Redis answers again. A try whose reply
//! was lost is counted from its send: a later try that finds the lock already ours does not
//! claim more validity than the key has. Transient errors inside a wait are retried; an outage that outlasts the wait is
//! [`Error::Unavailable`], never [`Error::Timeout`]. Redis 7.0 or later is required.
//!
//! # Defaults and limits
//!
//! Wait [`DEFAULT_WAIT`] (10 s) up to [`MAX_WAIT`]; without a lease, the watchdog keeps a
//! [`DEFAULT_WATCHDOG_LEASE`] (30 s) lease renewed every 10 s; fixed leases from [`MIN_LEASE`]
//! to [`MAX_LEASE`]; lock names up to [`key::MAX_NAME_LEN`] bytes.
//!
//! # The `#[locked]` attribute
//!
//! With the `macros` feature (on by default), [`locked`] runs an `async fn` under a lock named
//! from its parameters: `#[deadbolt::locked(key = "movie-likes:{movie_id}", client = self.locks,
//! lease = "3s")]`. It expands to [`Client::with_lock`].

mod client;
mod conn;
mod engine;
mod error;
pub mod fence;
mod guard;
mod held;
mod identity;
pub mod key;
mod multi;
mod mutex;
mod node;
mod options;
mod place;
mod queue;
mod replicas;
mod scope;
mod scripts;
mod sentinel;
#[cfg(feature = "tls")]
mod tls;
mod token;
mod waiters;
mod watchdog;

pub use client::{Client, ClientBuilder, LockInfo, MAX_FENCE_TTL, MAX_NODES, redact_url};
pub use conn::Connection;
pub use error::{Error, LostReason, NodeOutcome, Result, Vote};
pub use guard::{LockGuard, ReleaseOutcome};
pub use multi::{MAX_MULTI, MultiGuard, MultiLock};
pub use mutex::LockBuilder;
pub use options::{
    DEFAULT_WAIT, DEFAULT_WATCHDOG_LEASE, Lease, LockOptions, MAX_LEASE, MAX_WAIT, MIN_LEASE,
};
pub use replicas::{MAX_REPLICA_WAIT, MAX_REPLICAS};
pub use scope::LockScope;

#[cfg(feature = "macros")]
pub use deadbolt_macros::locked;
