//! [`MultiLock`]: several locks taken all together or not at all, and held as one.
//!
//! Two rules make it safe:
//!
//! - **One order.** The names are taken in one canonical order (sorted by bytes), whatever order
//!   the caller gave, so two clients asking for overlapping sets never each hold a part the
//!   other waits for: no deadlock.
//! - **All or nothing.** If any name cannot be had within the wait, every name taken so far is
//!   released before `acquire` returns.
//!
//! When every name lives on one server (a single server, or one shard), the set is first tried
//! in one round trip with one script that takes all the keys or none; only if one is held does
//! the acquisition fall back to taking the names one by one in order, waiting for each like
//! [`LockBuilder::acquire`](crate::LockBuilder::acquire). On a Redis Cluster each name has its
//! own hash slot, and under Redlock each lock is a quorum of its own: there the names are always
//! taken one by one in order.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::future::{join_all, select_all};
use tokio::time::{Instant, timeout};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::guard::{LockGuard, ReleaseOutcome};
use crate::key::{lock_key, validate_name};
use crate::mutex::{Taken, adopt};
use crate::options::{Lease, LockOptions};
use crate::place::Placement;
use crate::scripts::ACQUIRE_ALL;
use crate::token::new_token;

/// The most names one [`MultiLock`] takes.
pub const MAX_MULTI: usize = 1000;

/// Options for taking several locks at once, from [`Client::multi_lock`].
#[derive(Debug)]
#[must_use = "a MultiLock does nothing until `acquire` is awaited"]
pub struct MultiLock<'a> {
    client: &'a Client,
    names: Vec<String>,
    options: LockOptions,
}

/// Every lock of a [`MultiLock`], held together. Release it with [`MultiGuard::release`];
/// dropping it drops each guard (a background release, see [`LockGuard`]).
#[derive(Debug)]
#[must_use = "if unused the locks will immediately be released"]
#[clippy::has_significant_drop]
pub struct MultiGuard {
    /// In canonical order.
    guards: Vec<LockGuard>,
}

impl Client {
    /// Starts building a lock on all of `names` at once; see [`MultiLock`].
    ///
    /// ```no_run
    /// # async fn demo(locks: deadbolt::Client) -> deadbolt::Result<()> {
    /// // Move stock between two warehouses: both counts under lock, in any order.
    /// let both = locks.multi_lock(["stock:berlin:7", "stock:lyon:7"]).acquire().await?;
    /// // … the transfer …
    /// both.release().await?;
    /// # Ok(()) }
    /// ```
    pub fn multi_lock<I, S>(&self, names: I) -> MultiLock<'_>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        MultiLock {
            client: self,
            names: names.into_iter().map(Into::into).collect(),
            options: LockOptions::default(),
        }
    }
}

impl MultiLock<'_> {
    /// How long `acquire` waits for all the locks together; the default is 10 s.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.options.wait = wait;
        self
    }

    /// A fixed lease for every lock; the default is a watchdog lease (see
    /// [`LockBuilder::lease`](crate::LockBuilder::lease)).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.options.lease = Lease::Fixed(lease);
        self
    }

    /// A lease the watchdog renews every third of its length; the default is 30 s.
    pub fn watchdog(mut self, lease: Duration) -> Self {
        self.options.lease = Lease::renewed(lease);
        self
    }

    /// Takes wait and lease from a preset.
    pub fn options(mut self, options: LockOptions) -> Self {
        self.options = options;
        self
    }

    /// Waits up to the wait time for every lock.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for no name, a name twice, more than [`MAX_MULTI`] names, a
    /// bad name or option (nothing is sent then); otherwise as
    /// [`LockBuilder::acquire`](crate::LockBuilder::acquire) for the first lock that could not
    /// be had. Either way no lock of the set is left held.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: locks already taken are released in the background, as dropped guards are.
    pub async fn acquire(self) -> Result<MultiGuard> {
        let MultiLock {
            client,
            mut names,
            options,
        } = self;
        check(&names)?;
        options.validate()?;
        names.sort_unstable();
        let deadline = Instant::now() + options.wait;
        if let Some(guards) = take_at_once(client, &names, options.lease).await? {
            return Ok(MultiGuard { guards });
        }
        let start = Instant::now();
        'set: loop {
            let mut guards: Vec<LockGuard> = Vec::with_capacity(names.len());
            for name in &names {
                let wait = deadline.saturating_duration_since(Instant::now());
                let taken = client
                    .lock(name.as_str())
                    .options(LockOptions::new(wait, options.lease))
                    .acquire()
                    .await;
                match taken {
                    Ok(guard) => guards.push(guard),
                    Err(err) => {
                        release_all(guards).await;
                        return Err(err);
                    }
                }
                // A lock taken earlier may have expired while this one was waited for (a fixed
                // lease shorter than the wait): then the set was never held all at once. Give
                // it back and start over, within the wait.
                if let Some(lost) = guards.iter().find(|g| !g.is_held()) {
                    let name = lost.name().to_owned();
                    release_all(guards).await;
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout {
                            name,
                            waited: start.elapsed(),
                        });
                    }
                    continue 'set;
                }
            }
            return Ok(MultiGuard { guards });
        }
    }
}

/// Checks the name list before anything is sent.
fn check(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Err(Error::invalid("lock names", "at least one is needed"));
    }
    if names.len() > MAX_MULTI {
        return Err(Error::invalid(
            "lock names",
            format!("{} given, the most is {MAX_MULTI}", names.len()),
        ));
    }
    let mut seen = HashSet::with_capacity(names.len());
    for name in names {
        validate_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(Error::invalid(
                "lock names",
                format!("`{name}` is given twice"),
            ));
        }
    }
    Ok(())
}

/// The fast path: when every name lives on one plain server and this client's lines for them
/// are free, one script takes all the keys or none. `None` when it does not apply or a key is
/// held: then the names are taken one by one.
async fn take_at_once(
    client: &Client,
    names: &[String],
    lease: Lease,
) -> Result<Option<Vec<LockGuard>>> {
    let inner = &client.inner;
    let place = inner.place(&names[0]);
    let Placement::One(node) = place else {
        return Ok(None);
    };
    if names.len() < 2 || inner.nodes[node].cluster || names.iter().any(|n| inner.place(n) != place)
    {
        return Ok(None);
    }
    // The local lines first, in the same order: another task of this client may hold one.
    let mut tickets = Vec::with_capacity(names.len());
    for name in names {
        match inner.queue.try_enter(name) {
            Some(ticket) => tickets.push(ticket),
            None => return Ok(None),
        }
    }
    let duration = lease.duration();
    let token = new_token(duration, inner.degraded(place));
    let keys: Vec<String> = names.iter().map(|n| lock_key(&inner.prefix, n)).collect();
    let mut call = ACQUIRE_ALL.call(keys.len());
    for key in &keys {
        call.arg(key);
    }
    call.arg(&token).arg(duration.as_millis() as u64);
    let sent = Instant::now();
    let mut conn = inner.nodes[node].conn.get();
    let limit = inner.command_timeout;
    // Until the reply is read, the script may have taken every key: if this future is dropped
    // meanwhile, they are released in the background.
    let mut in_flight = InFlight {
        client,
        place,
        keys: &keys,
        token: &token,
        armed: true,
    };
    let reply = timeout(limit, ACQUIRE_ALL.run::<Vec<i64>>(&call, &mut conn, None)).await;
    // Without a reply, the script may have taken the keys: armed until they are given back.
    in_flight.armed = match &reply {
        Ok(Ok(_)) => false,
        Ok(Err(err)) => crate::error::is_transient(err),
        Err(_) => true,
    };
    if !in_flight.armed {
        drop(in_flight);
    } else {
        // No reply: the script may have run. Give back whatever it took (our token only), then
        // go the slow way, which retries and reports as a single lock does. What is not
        // confirmed (or all of it, if this future is dropped meanwhile) is released in the
        // background.
        let nodes = &inner.nodes;
        let released = join_all(
            keys.iter()
                .map(|key| crate::engine::release(nodes, place, key, key, &token, false, limit)),
        )
        .await;
        in_flight.armed = !released.iter().all(Result::is_ok);
        return Ok(None);
    }
    match reply {
        Ok(Ok(codes)) if codes.first() == Some(&1) => {
            let guards = names
                .iter()
                .zip(keys)
                .zip(tickets)
                .map(|((name, key), ticket)| {
                    let taken = Taken {
                        name: name.clone(),
                        key,
                        token: token.clone(),
                        place,
                        fence: None,
                        sent,
                    };
                    adopt(client, taken, lease, ticket)
                })
                .collect();
            Ok(Some(guards))
        }
        // A key is held: take them one by one, waiting.
        Ok(Ok(_)) => Ok(None),
        Ok(Err(err)) => Err(Error::from_redis(err, &keys[0])),
        // Handled above.
        Err(_) => Ok(None),
    }
}

/// The one-script try of [`take_at_once`] while its outcome is unknown: dropped armed (the
/// `acquire` future was dropped mid-flight), it releases every key in the background.
struct InFlight<'a> {
    client: &'a Client,
    place: Placement,
    keys: &'a [String],
    token: &'a str,
    armed: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = &self.client.inner;
        let (nodes, place, limit) = (inner.nodes.clone(), self.place, inner.command_timeout);
        let (keys, token) = (self.keys.to_vec(), self.token.to_owned());
        tracing::debug!(
            locks = keys.len(),
            "multi-lock abandoned; releasing in the background"
        );
        rt.spawn(async move {
            let release =
                |key| crate::engine::release(&nodes, place, key, key, &token, false, limit);
            join_all(keys.iter().map(|key| release(key))).await;
        });
    }
}

/// Releases every guard at once, ignoring failures (the leases are the backstop).
async fn release_all(guards: Vec<LockGuard>) {
    join_all(guards.into_iter().map(LockGuard::release)).await;
}

impl MultiGuard {
    /// The guards, in canonical order (sorted by name): fencing tokens, validity, lost signals
    /// of each lock.
    pub fn guards(&self) -> &[LockGuard] {
        &self.guards
    }

    /// Resolves when any lock of the set is lost: the set as a whole is then no longer held.
    pub async fn lost(&self) {
        select_all(self.guards.iter().map(|g| Box::pin(g.lost()))).await;
    }

    /// Until when every lock of the set is known to be held (the earliest of their validities).
    pub fn valid_until(&self) -> std::time::Instant {
        self.guards
            .iter()
            .map(|g| g.valid_until())
            .min()
            .unwrap_or_else(std::time::Instant::now)
    }

    /// Releases every lock at once.
    ///
    /// # Errors
    ///
    /// The first error of any release; every lock is released all the same (or expires at the
    /// end of its lease).
    pub async fn release(self) -> Result<Vec<ReleaseOutcome>> {
        join_all(self.guards.into_iter().map(LockGuard::release))
            .await
            .into_iter()
            .collect()
    }
}
