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

use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::{Error, Result};

/// The shared pub/sub connection and the channels waiters listen on.
#[derive(Debug)]
pub(crate) struct Waiters {
    conn: ConnectionManager,
    channels: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
}

/// One subscribed channel.
#[derive(Debug, Default)]
struct Channel {
    /// Woken on every message and on disconnection.
    notify: Notify,
    /// Live [`Subscription`]s; guarded by the map's mutex.
    refs: std::sync::atomic::AtomicUsize,
    /// Serializes `SUBSCRIBE`/`UNSUBSCRIBE` of this channel, so they reach Redis in the order the
    /// reference count changed. The flag says whether Redis has (or may have) us subscribed.
    subscribed: tokio::sync::Mutex<bool>,
}

/// A waiter's interest in a channel; dropping it gives the interest back.
#[derive(Debug)]
pub(crate) struct Subscription {
    name: String,
    channel: Arc<Channel>,
    waiters: Arc<Mutex<HashMap<String, Arc<Channel>>>>,
    conn: ConnectionManager,
}

impl Waiters {
    /// Wraps a RESP3 connection manager whose pushes arrive on `pushes`.
    pub(crate) fn new(conn: ConnectionManager, pushes: UnboundedReceiver<PushInfo>) -> Waiters {
        let channels = Arc::new(Mutex::new(HashMap::new()));
        // The dispatcher ends when the connection manager (the sender's owner) is dropped.
        tokio::spawn(dispatch(pushes, Arc::downgrade(&channels)));
        Waiters { conn, channels }
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
        };
        let mut subscribed = sub.channel.subscribed.lock().await;
        if !*subscribed {
            // Set first: if this call is cancelled or fails, Redis may still have subscribed us,
            // and the last one out must then send UNSUBSCRIBE.
            *subscribed = true;
            let mut conn = self.conn.clone();
            conn.subscribe(name).await.map_err(Error::Redis)?;
        }
        drop(subscribed);
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
        let (name, channel, waiters, mut conn) = (
            self.name.clone(),
            self.channel.clone(),
            self.waiters.clone(),
            self.conn.clone(),
        );
        rt.spawn(async move {
            let mut subscribed = channel.subscribed.lock().await;
            let still_unused = || channel.refs.load(std::sync::atomic::Ordering::SeqCst) == 0;
            if *subscribed && still_unused() {
                // Best effort: a failed UNSUBSCRIBE only leaves a channel nobody listens to.
                let _ = conn.unsubscribe(&name).await;
                *subscribed = false;
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
            PushKind::Message => {
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
