//! Wake-ups without polling: one pub/sub connection per client, shared by every waiter.
//!
//! A waiter subscribes to its lock's release channel, tries the lock once more (so a release
//! between its first try and the subscription is not missed), then sleeps until a release is
//! published or the holder's TTL runs out, whichever comes first. Subscriptions are
//! reference-counted per channel: the first waiter sends `SUBSCRIBE`, the last one to leave
//! `UNSUBSCRIBE`.
//!
//! Messages published while the connection is down are lost. Two things bound the damage: on a
//! disconnection every waiter is woken to re-check, and no waiter sleeps past the TTL it saw.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

use crate::error::{Error, Result};

/// The shared pub/sub connection and the channels waiters listen on.
#[derive(Debug)]
pub(crate) struct Waiters {
    conn: ConnectionManager,
    channels: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
    command_timeout: Duration,
}

/// One subscribed channel.
#[derive(Debug, Default)]
struct Channel {
    /// Woken on every message and on disconnection.
    notify: Notify,
    /// Live [`Subscription`]s; guarded by the map's mutex.
    refs: std::sync::atomic::AtomicUsize,
    /// Serializes `SUBSCRIBE`/`UNSUBSCRIBE` of this channel, so they reach Redis in the order the
    /// reference count changed, and says where Redis stands.
    state: tokio::sync::Mutex<State>,
}

/// Whether Redis has us subscribed to a channel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Unsubscribed,
    /// A `SUBSCRIBE` was sent but not confirmed (it failed or was cancelled): the next
    /// subscriber sends it again, the last one out sends `UNSUBSCRIBE` to be sure.
    Unknown,
    Subscribed,
}

/// A waiter's interest in a channel; dropping it gives the interest back.
#[derive(Debug)]
pub(crate) struct Subscription {
    name: String,
    channel: Arc<Channel>,
    waiters: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
    conn: ConnectionManager,
    command_timeout: Duration,
}

impl Waiters {
    /// Wraps a RESP3 connection manager whose pushes arrive on `pushes`.
    pub(crate) fn new(
        conn: ConnectionManager,
        pushes: UnboundedReceiver<PushInfo>,
        command_timeout: Duration,
    ) -> Waiters {
        let channels = Arc::new(Mutex::new(HashMap::new()));
        // The dispatcher ends when the connection manager (the sender's owner) is dropped.
        tokio::spawn(dispatch(pushes, Arc::downgrade(&channels)));
        Waiters {
            conn,
            channels,
            command_timeout,
        }
    }

    /// Subscribes to `name` (or joins an existing subscription). When this returns, Redis has
    /// confirmed the subscription, so every later publish on `name` wakes the subscriber.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the interest is given back when the future is dropped.
    pub(crate) async fn subscribe(&self, name: &str) -> Result<Subscription> {
        let channel = {
            let mut map = self.channels.lock().unwrap();
            let channel = map.entry(name.to_owned()).or_default().clone();
            channel
                .refs
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            channel
        };
        // Built before the await, so its Drop gives the interest back even if we are cancelled.
        let sub = Subscription {
            name: name.to_owned(),
            channel,
            waiters: self.channels.clone(),
            conn: self.conn.clone(),
            command_timeout: self.command_timeout,
        };
        let mut state = sub.channel.state.lock().await;
        if *state != State::Subscribed {
            // Unknown until confirmed: if this call is cancelled or fails, Redis may still have
            // subscribed us.
            *state = State::Unknown;
            let mut conn = self.conn.clone();
            timeout(self.command_timeout, conn.subscribe(name))
                .await
                .map_err(|_| Error::no_reply())?
                .map_err(Error::Redis)?;
            *state = State::Subscribed;
        }
        drop(state);
        Ok(sub)
    }
}

impl Subscription {
    /// The `Notify` woken on every release published on this channel.
    pub(crate) fn notify(&self) -> &Notify {
        &self.channel.notify
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let _map = self.waiters.lock().unwrap();
            self.channel
                .refs
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
                == 1
        };
        if !last {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (name, channel, waiters, mut conn, limit) = (
            self.name.clone(),
            self.channel.clone(),
            self.waiters.clone(),
            self.conn.clone(),
            self.command_timeout,
        );
        rt.spawn(async move {
            let mut state = channel.state.lock().await;
            let still_unused = || channel.refs.load(std::sync::atomic::Ordering::SeqCst) == 0;
            if *state != State::Unsubscribed && still_unused() {
                // Best effort: a failed UNSUBSCRIBE only leaves a channel nobody listens to.
                let _ = timeout(limit, conn.unsubscribe(&name)).await;
                *state = State::Unsubscribed;
            }
            let mut map = waiters.lock().unwrap();
            if still_unused() && map.get(&name).is_some_and(|c| Arc::ptr_eq(c, &channel)) {
                map.remove(&name);
            }
        });
    }
}

/// Routes pushes to the waiters of their channel.
async fn dispatch(
    mut pushes: UnboundedReceiver<PushInfo>,
    channels: std::sync::Weak<Mutex<HashMap<String, Arc<Channel>>>>,
) {
    while let Some(push) = pushes.recv().await {
        let Some(channels) = channels.upgrade() else {
            return;
        };
        let map = channels.lock().unwrap();
        match push.kind {
            // A release; or a (re)subscription confirmed, after which a release published while
            // we were not subscribed would go unseen: wake the waiters to re-check either way.
            PushKind::Message | PushKind::Subscribe => {
                let name = match push.data.first() {
                    Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes),
                    _ => continue,
                };
                if let Some(channel) = map.get(name.as_ref()) {
                    channel.notify.notify_waiters();
                }
            }
            PushKind::Disconnection => {
                // Messages may be lost until the manager reconnects and resubscribes: let every
                // waiter re-check the lock now rather than sleep out its TTL.
                tracing::debug!("pub/sub connection lost; waking all waiters to re-check");
                for channel in map.values() {
                    channel.notify.notify_waiters();
                }
            }
            _ => {}
        }
    }
}
