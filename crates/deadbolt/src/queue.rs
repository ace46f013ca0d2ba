//! The local queue: tasks of one client that want the same lock line up here, first come first
//! served, and only the head of the line contends in Redis.
//!
//! Without it, a task that releases a lock and asks for it again would race its own client's
//! waiters with a head start of one pub/sub round trip, and win nearly every time: a busy task
//! would starve its neighbours. With it, a client hands a lock to its own tasks in FIFO order
//! (tokio's `Mutex` is fair) and Redis sees one contender per client and lock name.
//!
//! The same head start exists between clients: a client that releases while other clients wait
//! would hand the lock to its own next task every time. So a release that found waiters of other
//! clients subscribed leaves a *hand-off* mark in the line, and the next local task first gives
//! those waiters a moment to take the lock (see `mutex.rs`).
//!
//! The line also keeps the pub/sub subscription of its lock while anyone is in it: a client
//! whose tasks keep contending for one lock subscribes once, not once per acquisition, and a
//! client that is subscribed is one whose line is not empty, so a release can count the other
//! clients that wait by the channel's subscribers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

use crate::waiters::Subscription;

/// What a line keeps between its holders.
#[derive(Debug, Default)]
pub(crate) struct Line {
    /// The hand-off mark left by the last holder.
    hand_off: bool,
    /// The line's subscriptions to the lock's release channel (one per node of the lock, with
    /// the node's index), once someone had to wait.
    pub(crate) subscriptions: Vec<(usize, Subscription)>,
}

/// One line per name.
type Slot = Arc<tokio::sync::Mutex<Line>>;

/// The lines kept before the first sweep of unused ones.
const KEPT_LINES: usize = 1024;

/// The per-client table of local lines, one per lock name in use.
///
/// A line nobody is in stays in the table, so a name used again and again (the common case) is
/// found without allocating; unused lines are swept when the table has doubled since the last
/// sweep (and holds at least [`KEPT_LINES`]), so a million names used once do not stay in
/// memory, at a cost spread over the insertions that grew it.
#[derive(Debug)]
pub(crate) struct LocalQueue {
    slots: Mutex<Slots>,
}

#[derive(Debug)]
struct Slots {
    lines: HashMap<Box<str>, Slot>,
    /// The table size at which unused lines are swept next.
    sweep_at: usize,
}

impl Default for LocalQueue {
    fn default() -> Self {
        LocalQueue {
            slots: Mutex::new(Slots {
                lines: HashMap::new(),
                sweep_at: KEPT_LINES,
            }),
        }
    }
}

/// A place at the head of a line. The line moves on when the ticket is dropped, that is when the
/// lock is released (or the attempt gives up).
#[derive(Debug)]
pub(crate) struct Ticket {
    guard: OwnedMutexGuard<Line>,
}

impl LocalQueue {
    /// The line of `name`, made if there is none.
    fn slot(&self, name: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap();
        if let Some(slot) = slots.lines.get(name) {
            return slot.clone();
        }
        if slots.lines.len() >= slots.sweep_at {
            // Only the table holds an unused line, and clones are only made under its lock, so
            // a count of one cannot grow behind our back.
            slots.lines.retain(|_, slot| Arc::strong_count(slot) > 1);
            slots.sweep_at = (slots.lines.len() * 2).max(KEPT_LINES);
        }
        let slot = Slot::default();
        slots.lines.insert(name.into(), slot.clone());
        slot
    }

    /// Waits for the head of the line of `name`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves the line.
    pub(crate) async fn enter(&self, name: &str) -> Ticket {
        Ticket {
            guard: self.slot(name).lock_owned().await,
        }
    }

    /// Takes the head of the line of `name` if nobody is in it.
    pub(crate) fn try_enter(&self, name: &str) -> Option<Ticket> {
        let guard = self.slot(name).try_lock_owned().ok()?;
        Some(Ticket { guard })
    }

    #[cfg(test)]
    fn lines(&self) -> usize {
        self.slots.lock().unwrap().lines.len()
    }
}

impl Ticket {
    /// Marks the line: the release that ends this ticket woke waiters of other clients.
    pub(crate) fn hand_off(&mut self) {
        self.guard.hand_off = true;
    }

    /// Whether the previous holder left a hand-off mark; clears it.
    pub(crate) fn take_hand_off(&mut self) -> bool {
        std::mem::take(&mut self.guard.hand_off)
    }

    /// The line's state; the ticket holder has it to itself.
    pub(crate) fn line(&mut self) -> &mut Line {
        &mut self.guard
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Nobody else is in the line (only the table and this ticket hold it): what the line
        // kept for the next in line goes, so a client that is subscribed is one whose line is
        // not empty, and a later holder inherits no stale hand-off.
        if Arc::strong_count(OwnedMutexGuard::mutex(&self.guard)) <= 2 {
            self.guard.subscriptions.clear();
            self.guard.hand_off = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn line_is_fifo_and_its_mark_passes_only_to_the_next_in_line() {
        let q = Arc::new(LocalQueue::default());
        let mut first = q.enter("a").await;
        assert!(!first.take_hand_off());
        first.hand_off();
        assert!(q.try_enter("a").is_none(), "the line is taken");
        let second = tokio::spawn({
            let q = q.clone();
            async move { q.enter("a").await }
        });
        tokio::task::yield_now().await;
        drop(first);
        let mut second = second.await.unwrap();
        assert!(
            second.take_hand_off(),
            "the mark passes to the next in line"
        );
        assert!(!second.take_hand_off(), "and is cleared");
        assert!(q.try_enter("a").is_none());
        second.hand_off();
        drop(second);
        let mut third = q.try_enter("a").expect("the line is free");
        assert!(
            !third.take_hand_off(),
            "a mark left with nobody in line is dropped"
        );
    }

    #[test]
    fn unused_lines_are_swept_as_the_table_grows() {
        let q = LocalQueue::default();
        let held = q.try_enter("held").unwrap();
        for i in 0..10 * KEPT_LINES {
            drop(q.try_enter(&format!("n{i}")).unwrap());
            assert!(q.lines() <= 2 * KEPT_LINES, "{} lines", q.lines());
        }
        // A line in use is never swept.
        assert!(q.try_enter("held").is_none());
        drop(held);
        assert!(q.try_enter("held").is_some());
    }
}
