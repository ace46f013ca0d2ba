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
    /// The line's subscriptions to the lock's release channel (one per node of the lock), once
    /// someone had to wait.
    pub(crate) subscriptions: Vec<Subscription>,
}

/// One line per name.
type Slot = Arc<tokio::sync::Mutex<Line>>;
/// The names are shared with the tickets (one allocation per line, not one per ticket).
type Slots = Arc<Mutex<HashMap<Arc<str>, Slot>>>;

/// The per-client table of local lines, one per lock name in use.
#[derive(Debug, Default)]
pub(crate) struct LocalQueue {
    slots: Slots,
}

/// A place at the head of a line. The line moves on when the ticket is dropped, that is when the
/// lock is released (or the attempt gives up).
#[derive(Debug)]
pub(crate) struct Ticket {
    name: Arc<str>,
    guard: Option<OwnedMutexGuard<Line>>,
    slots: Slots,
}

impl LocalQueue {
    /// The line of `name`, made if there is none, and the name as the table keeps it.
    fn slot(&self, name: &str) -> (Arc<str>, Slot) {
        let mut slots = self.slots.lock().unwrap();
        if let Some((name, slot)) = slots.get_key_value(name) {
            return (name.clone(), slot.clone());
        }
        let name: Arc<str> = Arc::from(name);
        let slot = Slot::default();
        slots.insert(name.clone(), slot.clone());
        (name, slot)
    }

    /// Waits for the head of the line of `name`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped future leaves the line.
    pub(crate) async fn enter(&self, name: &str) -> Ticket {
        let (name, slot) = self.slot(name);
        let mut ticket = Ticket {
            name,
            guard: None,
            slots: self.slots.clone(),
        };
        ticket.guard = Some(slot.lock_owned().await);
        ticket
    }

    /// Takes the head of the line of `name` if nobody is in it.
    pub(crate) fn try_enter(&self, name: &str) -> Option<Ticket> {
        let (name, slot) = self.slot(name);
        let guard = slot.try_lock_owned().ok();
        let ticket = Ticket {
            name,
            guard,
            slots: self.slots.clone(),
        };
        // On failure the ticket's Drop still tidies the slot it created.
        ticket.guard.is_some().then_some(ticket)
    }
}

impl Ticket {
    /// Marks the line: the release that ends this ticket woke waiters of other clients.
    pub(crate) fn hand_off(&mut self) {
        if let Some(guard) = self.guard.as_mut() {
            guard.hand_off = true;
        }
    }

    /// Whether the previous holder left a hand-off mark; clears it.
    pub(crate) fn take_hand_off(&mut self) -> bool {
        self.guard
            .as_mut()
            .is_some_and(|guard| std::mem::take(&mut guard.hand_off))
    }

    /// The line's state; the ticket holder has it to itself.
    pub(crate) fn line(&mut self) -> &mut Line {
        // A ticket exists only with its guard: `try_enter` hands out none without one.
        self.guard.as_mut().expect("a ticket holds its line")
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Let the next task in, then forget the line if nobody else is in it, so a million lock
        // names used once do not stay in memory. Clones are only made under the table's lock,
        // so a count of one (the table's own) cannot grow behind our back.
        drop(self.guard.take());
        let mut slots = self.slots.lock().unwrap();
        if slots
            .get(&self.name)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn line_is_fifo_and_forgotten_when_empty() {
        let q = LocalQueue::default();
        let mut first = q.enter("a").await;
        assert!(!first.take_hand_off());
        first.hand_off();
        assert!(q.try_enter("a").is_none(), "the line is taken");
        let second = tokio::spawn({
            let slots = q.slots.clone();
            async move {
                let q = LocalQueue { slots };
                q.enter("a").await
            }
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
        drop(second);
        assert!(
            q.slots.lock().unwrap().is_empty(),
            "empty lines are forgotten"
        );
        assert!(q.try_enter("a").is_some());
    }
}
