//! Wake-ups without polling: one pub/sub connection per client, shared by every waiter.
//!
//! A waiter subscribes to its lock's release channel, tries the lock once more (so a release
//! between its first try and the subscription is not missed), then sleeps until a release is
//! published or the holder's TTL runs out, whichever comes first. Subscriptions are
//! reference-counted per channel: the first subscriber sends `SUBSCRIBE`, the last one to leave
//! `UNSUBSCRIBE`. (A client's local line keeps its subscription while anyone is in it, see
//! `queue.rs`, so that is once per contention episode, not once per acquisition.)
//!
//! Messages published while the connection is down are lost. Two things bound the damage: on a
//! disconnection every waiter is woken to re-check (and again once the connection is back and
//! resubscribed), and no waiter sleeps past the TTL it saw.
//!
//! An ACL user without rights on the channels (Redis 7's default `acl-pubsub-default
//! resetchannels` gives `~* +@all` users none) cannot subscribe. The client then says so once
//! and its waiters fall back to bounded re-checks instead of failing.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;

use crate::conn::Conn;
use crate::error::{Error, Result};

type Channels = Arc<Mutex<HashMap<String, Arc<Channel>>>>;

/// The shared pub/sub connection and the channels waiters listen on.
#[derive(Debug)]
pub(crate) struct Waiters {
    conn: Conn,
    channels: Channels,
    command_timeout: Duration,
    /// Set when the user may not subscribe: waiters re-check on a timer instead.
    degraded: AtomicBool,
}

/// One subscribed channel.
#[derive(Debug, Default)]
struct Channel {
    /// Woken on every message, on disconnection and on resubscription.
    notify: Arc<Notify>,
    /// Live [`Subscription`]s; changed under the map's mutex.
    refs: AtomicUsize,
    /// Set on disconnection: the next subscription confirmation is a resubscription, after which
    /// a release published while we were away would go unseen, so it wakes the waiters. A first
    /// confirmation does not (the subscriber tries right after subscribing anyway).
    resubscribing: AtomicBool,
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
    channels: Channels,
    conn: Conn,
    command_timeout: Duration,
}

impl Waiters {
    /// Wraps a RESP3 connection whose pushes arrive on `pushes`. `disconnected` is notified
    /// whenever the connection drops (the watchdog then re-checks every held lock).
    pub(crate) fn new(
        conn: Conn,
        pushes: UnboundedReceiver<PushInfo>,
        command_timeout: Duration,
        disconnected: Arc<Notify>,
    ) -> Waiters {
        let channels = Channels::default();
        // The dispatcher ends when the connection manager (the sender's owner) is dropped.
        tokio::spawn(dispatch(pushes, Arc::downgrade(&channels), disconnected));
        Waiters {
            conn,
            channels,
            command_timeout,
            degraded: AtomicBool::new(false),
        }
    }

    /// The pub/sub connection.
    pub(crate) fn conn(&self) -> &Conn {
        &self.conn
    }

    /// Marks the client as unable to subscribe (see the module docs).
    pub(crate) fn degrade(&self) {
        self.degraded.store(true, Ordering::Relaxed);
    }

    /// Whether waiters must re-check on a timer because the user may not subscribe.
    pub(crate) fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Subscribes to `name` (or joins an existing subscription). When this returns `Some`,
    /// Redis has confirmed the subscription, so every later publish on `name` wakes the
    /// subscriber. `None`: the user may not subscribe; re-check on a timer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: the interest is given back when the future is dropped.
    pub(crate) async fn subscribe(&self, name: &str) -> Result<Option<Subscription>> {
        if self.is_degraded() {
            return Ok(None);
        }
        let channel = {
            let mut map = self.channels.lock().unwrap();
            let channel = map.entry(name.to_owned()).or_default().clone();
            channel.refs.fetch_add(1, Ordering::SeqCst);
            channel
        };
        // Built before the await, so its Drop gives the interest back even if we are cancelled.
        let sub = Subscription {
            name: name.to_owned(),
            channel,
            channels: self.channels.clone(),
            conn: self.conn.clone(),
            command_timeout: self.command_timeout,
        };
        let mut state = sub.channel.state.lock().await;
        if *state != State::Subscribed {
            // Unknown until confirmed: if this call is cancelled or fails, Redis may still have
            // subscribed us.
            *state = State::Unknown;
            let mut conn = self.conn.get();
            let reply = timeout(self.command_timeout, conn.subscribe(name))
                .await
                .map_err(|_| Error::no_reply())?;
            match reply {
                Ok(()) => *state = State::Subscribed,
                Err(err) if err.code() == Some("NOPERM") => {
                    tracing::warn!(
                        channel = name,
                        "this redis user may not subscribe to deadbolt's channels; waiters \
                         re-check on a timer instead of being woken (grant it `&{name}` or \
                         `&deadbolt:*`)"
                    );
                    self.degrade();
                    *state = State::Unsubscribed;
                    return Ok(None);
                }
                Err(err) => return Err(Error::Redis(err)),
            }
        }
        drop(state);
        Ok(Some(sub))
    }

    /// After the connection was replaced (it had gone silent), subscribes every channel in use
    /// again on the new one and wakes their waiters to re-check.
    pub(crate) fn resubscribe_all(&self) {
        let channels: Vec<(String, Arc<Channel>)> = self
            .channels
            .lock()
            .unwrap()
            .iter()
            .map(|(name, c)| (name.clone(), c.clone()))
            .collect();
        for (name, channel) in channels {
            channel.notify.notify_waiters();
            let (conn, limit) = (self.conn.clone(), self.command_timeout);
            tokio::spawn(async move {
                let mut state = channel.state.lock().await;
                if channel.refs.load(Ordering::SeqCst) == 0 {
                    return;
                }
                *state = State::Unknown;
                channel.resubscribing.store(true, Ordering::SeqCst);
                let mut conn = conn.get();
                if let Ok(Ok(())) = timeout(limit, conn.subscribe(&name)).await {
                    *state = State::Subscribed;
                }
            });
        }
    }
}

impl Subscription {
    /// The `Notify` woken on every release published on this channel.
    pub(crate) fn notify(&self) -> Arc<Notify> {
        self.channel.notify.clone()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let last = {
            let _map = self.channels.lock().unwrap();
            self.channel.refs.fetch_sub(1, Ordering::SeqCst) == 1
        };
        if !last {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (name, channel, channels, conn, limit) = (
            self.name.clone(),
            self.channel.clone(),
            self.channels.clone(),
            self.conn.clone(),
            self.command_timeout,
        );
        rt.spawn(async move {
            let mut state = channel.state.lock().await;
            let still_unused = || channel.refs.load(Ordering::SeqCst) == 0;
            if *state != State::Unsubscribed && still_unused() {
                // Best effort: a failed UNSUBSCRIBE only leaves a channel nobody listens to.
                let mut conn = conn.get();
                let _ = timeout(limit, conn.unsubscribe(&name)).await;
                *state = State::Unsubscribed;
            }
            let mut map = channels.lock().unwrap();
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
    disconnected: Arc<Notify>,
) {
    while let Some(push) = pushes.recv().await {
        let Some(channels) = channels.upgrade() else {
            return;
        };
        let map = channels.lock().unwrap();
        let channel = || match push.data.first() {
            Some(Value::BulkString(bytes)) => map.get(String::from_utf8_lossy(bytes).as_ref()),
            _ => None,
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                if let Some(channel) = channel() {
                    channel.notify.notify_waiters();
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                if let Some(channel) =
                    channel().filter(|c| c.resubscribing.swap(false, Ordering::SeqCst))
                {
                    channel.notify.notify_waiters();
                }
            }
            PushKind::Disconnection => {
                // Messages may be lost until the manager reconnects and resubscribes: let every
                // waiter re-check the lock now rather than sleep out its TTL, and again after
                // the resubscription.
                tracing::debug!("pub/sub connection lost; waking all waiters to re-check");
                for channel in map.values() {
                    channel.resubscribing.store(true, Ordering::SeqCst);
                    channel.notify.notify_waiters();
                }
                disconnected.notify_one();
            }
            _ => {}
        }
    }
}

/// Resolves when any of `notifies` is notified. Enable it before the try whose miss it covers.
pub(crate) fn any_notified(notifies: &[Arc<Notify>]) -> AnyNotified<'_> {
    AnyNotified {
        waits: notifies.iter().map(|n| Box::pin(n.notified())).collect(),
    }
}

/// The future of [`any_notified`]; pending forever when there is nothing to wait on.
pub(crate) struct AnyNotified<'a> {
    waits: Vec<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

impl AnyNotified<'_> {
    /// Registers every wait, so a notification from now on is not missed.
    pub(crate) fn enable(self: Pin<&mut Self>) {
        for wait in &mut self.get_mut().waits {
            wait.as_mut().enable();
        }
    }
}

impl Future for AnyNotified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        for wait in &mut self.get_mut().waits {
            if wait.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }
}
