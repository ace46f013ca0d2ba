//! [`Held`]: what a held lock shares between its guard, its scopes and the watchdog.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::engine::{self, Minted};
use crate::error::{Error, LostReason, Result};
use crate::node::Node;
use crate::options::drift;
use crate::place::Placement;
use crate::queue::Ticket;

/// One acquisition of a lock, from the moment Redis said it is ours.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) name: String,
    /// The lock key.
    pub(crate) key: String,
    /// The owner token in the lock key.
    pub(crate) token: String,
    /// Where it is held.
    pub(crate) place: Placement,
    /// Until when the lock is known to be ours, by the local monotonic clock, and the generation
    /// of the lease (bumped by every `extend`): a renewal reply is applied only if no `extend`
    /// was sent since the renewal was, because Redis may have run them in either order.
    valid_until: Mutex<(Instant, u64)>,
    /// Notified when `valid_until` moves earlier (an `extend` to a shorter lease), so every
    /// wait on it follows; a later deadline needs no wake-up, as a wait re-reads it on waking.
    shortened: std::sync::Arc<Notify>,
    /// Cancelled when the lock is lost; made on first use (most locks are released without
    /// anyone watching for a loss).
    lost: OnceLock<CancellationToken>,
    /// Why it was lost, and when that was known; set once, before `lost` is cancelled.
    reason: OnceLock<(LostReason, Instant)>,
    /// Stops the task that cancels `lost` at `valid_until`, if one was started (see
    /// [`Held::lost_token`]).
    timer: OnceLock<DropGuard>,
    /// The holder's place in its client's local line. It is given up when the lock is released
    /// or lost, so a holder stuck past its lease does not block its own process's other tasks
    /// longer than it blocks other processes.
    ticket: Mutex<Option<Ticket>>,
    /// The fencing token, minted by the acquisition (fenced) or on first use.
    fence: OnceCell<u64>,
    /// The client's nodes, for minting on first use.
    pub(crate) nodes: std::sync::Arc<[Node]>,
    fence_ttl: Duration,
    command_timeout: Duration,
}

/// What makes a [`Held`], besides its validity and ticket.
#[derive(Debug)]
pub(crate) struct HeldParts {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) place: Placement,
    pub(crate) fence: Option<u64>,
    pub(crate) nodes: std::sync::Arc<[Node]>,
    pub(crate) fence_ttl: Duration,
    pub(crate) command_timeout: Duration,
}

impl Held {
    pub(crate) fn new(parts: HeldParts, valid_until: Instant, ticket: Ticket) -> Held {
        Held {
            name: parts.name,
            key: parts.key,
            token: parts.token,
            place: parts.place,
            valid_until: Mutex::new((valid_until, 0)),
            shortened: std::sync::Arc::new(Notify::new()),
            lost: OnceLock::new(),
            reason: OnceLock::new(),
            timer: OnceLock::new(),
            ticket: Mutex::new(Some(ticket)),
            fence: OnceCell::new_with(parts.fence),
            nodes: parts.nodes,
            fence_ttl: parts.fence_ttl,
            command_timeout: parts.command_timeout,
        }
    }

    /// Fires the lost signal and lets the next local task in. The first reason given sticks.
    pub(crate) fn mark_lost(&self, reason: LostReason) {
        let _ = self.reason.set((reason, Instant::now()));
        self.lost_signal().cancel();
        self.take_ticket();
    }

    /// Whether the lock is known to be lost.
    pub(crate) fn is_lost(&self) -> bool {
        self.reason.get().is_some()
    }

    fn lost_signal(&self) -> &CancellationToken {
        self.lost.get_or_init(CancellationToken::new)
    }

    /// Why the lock was lost, once it was.
    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        self.reason.get().map(|(reason, _)| *reason)
    }

    /// When the lock was known to be lost, once it was.
    pub(crate) fn lost_at(&self) -> Option<Instant> {
        self.reason.get().map(|(_, at)| *at)
    }

    /// Gives up the place in the local line (after a release, or when lost).
    pub(crate) fn take_ticket(&self) -> Option<Ticket> {
        self.ticket.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Whether the holder's local line is subscribed to the lock's channel.
    pub(crate) fn has_subscription(&self) -> bool {
        self.ticket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .is_some_and(|t| !t.line().subscriptions.is_empty())
    }

    pub(crate) fn valid_until(&self) -> Instant {
        self.valid_until.lock().unwrap().0
    }

    /// The current lease generation, to hand to [`Held::renewed`].
    pub(crate) fn generation(&self) -> u64 {
        self.valid_until.lock().unwrap().1
    }

    /// Records a successful renewal of generation `generation`, sent at `sent`, that set the TTL
    /// to `lease`. Ignored if the lease changed generation since.
    pub(crate) fn renewed(&self, generation: u64, sent: Instant, lease: Duration) {
        let mut valid = self.valid_until.lock().unwrap();
        if valid.1 == generation {
            valid.0 = sent + lease - drift(lease);
        }
    }

    /// Starts a new lease generation before an `extend` that sets the TTL to `lease`: until the
    /// reply, the lock counts as valid only as long as both the old and the new TTL say. Returns
    /// the new generation.
    pub(crate) fn begin_extend(&self, sent: Instant, lease: Duration) -> u64 {
        let mut valid = self.valid_until.lock().unwrap();
        let until = sent + lease - drift(lease);
        if until < valid.0 {
            valid.0 = until;
            self.shortened.notify_waiters();
        }
        valid.1 += 1;
        valid.1
    }

    /// Sleeps until `valid_until`, following every change of it; returns once it has passed
    /// (or at once if it has).
    async fn until_invalid(&self) {
        loop {
            // Registered before the deadline is read, so a shortening in between is not missed.
            let shortened = self.shortened.notified();
            let mut shortened = std::pin::pin!(shortened);
            shortened.as_mut().enable();
            let until = self.valid_until();
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = shortened => {}
                _ = sleep_until(until) => {}
            }
        }
    }

    /// Waits until the lock is lost, by signal or by the clock. Never later than `valid_until`,
    /// whatever changes it meanwhile.
    pub(crate) async fn lost(&self) {
        tokio::select! {
            _ = self.lost_signal().cancelled() => {}
            _ = self.until_invalid() => self.mark_lost(LostReason::NotRenewed),
        }
    }

    /// A token cancelled when the lock is lost, by the watchdog or by the clock: a task on the
    /// current runtime watches `valid_until` for it, started on first use and stopped when the
    /// lock's state is dropped.
    pub(crate) fn lost_token(self: &std::sync::Arc<Self>) -> CancellationToken {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return self.lost_signal().child_token();
        };
        self.timer.get_or_init(|| {
            let stop = CancellationToken::new();
            let (held, lost, stopped, shortened) = (
                std::sync::Arc::downgrade(self),
                self.lost_signal().clone(),
                stop.clone(),
                self.shortened.clone(),
            );
            rt.spawn(async move {
                // Holds only a weak reference, so the lock's state can go while this waits: it
                // wakes at each deadline (or its shortening) and looks again.
                while let Some(h) = held.upgrade() {
                    let shortened = shortened.notified();
                    let mut shortened = std::pin::pin!(shortened);
                    shortened.as_mut().enable();
                    let until = h.valid_until();
                    if Instant::now() >= until {
                        h.mark_lost(LostReason::NotRenewed);
                        return;
                    }
                    drop(h);
                    tokio::select! {
                        _ = lost.cancelled() => return,
                        _ = stopped.cancelled() => return,
                        _ = shortened => {}
                        _ = sleep_until(until) => {}
                    }
                }
            });
            stop.drop_guard()
        });
        self.lost_signal().child_token()
    }

    /// The fencing token: the one minted with the acquisition, or one minted now by an
    /// owner-checked script (and kept for later calls).
    pub(crate) async fn fencing_token(&self) -> Result<u64> {
        self.fence.get_or_try_init(|| self.mint()).await.copied()
    }

    async fn mint(&self) -> Result<u64> {
        let lost = || Error::LockLost {
            name: self.name.clone(),
        };
        if self.is_lost() {
            return Err(lost());
        }
        let minted = engine::mint(
            &self.nodes,
            self.place,
            &self.name,
            &self.key,
            &self.token,
            self.fence_ttl,
            self.command_timeout,
        )
        .await?;
        match minted {
            Minted::Token(fence) => Ok(fence),
            Minted::Lost(found) => {
                self.mark_lost(found.reason().unwrap_or(LostReason::NotRenewed));
                Err(lost())
            }
        }
    }
}
