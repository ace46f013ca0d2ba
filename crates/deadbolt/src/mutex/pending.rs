//! [`Pending`]: an acquisition in flight, and the clean-up of an attempt whose outcome is
//! unknown.

use std::sync::Arc;
use std::time::Duration;

use crate::client::Inner;
use crate::engine::{self, Attempt};
use crate::error::Result;
use crate::place::Placement;
use crate::replicas::Replicas;
use crate::token::new_token;

/// An acquisition in flight. If an attempt may have taken the lock (it timed out, or its
/// connection dropped) and the acquisition then gives up, the lock is released: awaited before
/// `acquire` returns, or in the background if `acquire` is dropped.
pub(crate) struct Pending {
    pub(crate) inner: Arc<Inner>,
    pub(crate) place: Placement,
    pub(crate) key: String,
    pub(crate) token: String,
    pub(crate) armed: bool,
}

impl Pending {
    /// One try, bounded by the command timeout (on a quorum, by the node timeout). After a
    /// failure of the connection the outcome is unknown; the next try uses the same token, which
    /// Redis then recognizes as ours.
    pub(crate) async fn attempt(
        &mut self,
        name: &str,
        lease: Duration,
        fenced: bool,
        replicas: Option<Replicas>,
        mark: bool,
    ) -> Result<Attempt> {
        self.armed = true;
        let inner = &self.inner;
        match self.place {
            Placement::One(i) => {
                let fence_ttl = fenced.then_some(inner.fence_ttl);
                let node = &inner.nodes[i];
                let limit = inner.command_timeout;
                let (key, token) = (&self.key, &self.token);
                let how = engine::Try {
                    lease,
                    fence_ttl,
                    replicas,
                    mark,
                };
                let attempt = engine::attempt_on(node, key, token, how, limit).await;
                if !matches!(attempt, Err(ref e) if e.is_transient()) {
                    // Held, or refused by Redis: nothing of ours was written.
                    self.armed = matches!(attempt, Ok(Attempt::Acquired { .. }));
                }
                attempt
            }
            Placement::Quorum => {
                let (attempt, cleaned) = engine::attempt_quorum(
                    &inner.nodes,
                    name,
                    &self.key,
                    &self.token,
                    lease,
                    mark,
                    inner.command_timeout,
                )
                .await;
                if matches!(attempt, Ok(Attempt::Acquired { .. })) {
                    return attempt;
                }
                // The next try gets a token of its own, so a copy of this one that a node still
                // holds (its clean-up was not confirmed, or its write lands late) can never
                // count as a vote for it: a vote must come from that try's own send.
                let old = std::mem::replace(
                    &mut self.token,
                    new_token(lease, inner.degraded(self.place)),
                );
                if !cleaned {
                    self.release_in_background(old);
                }
                self.armed = false;
                attempt
            }
        }
    }

    /// Releases what an attempt with an unknown outcome may have taken, within `limit`; left to
    /// the background (see `Drop`) if that fails too.
    pub(crate) async fn clean_up(&mut self, limit: Duration) {
        if !self.armed {
            return;
        }
        let nodes = &self.inner.nodes;
        let (place, key, token) = (self.place, &self.key, &self.token);
        if engine::release(nodes, place, key, key, token, false, limit)
            .await
            .is_ok()
        {
            self.armed = false;
        }
    }
}

impl Pending {
    /// Releases what `token` may hold, in the background: one try, bounded by the command
    /// timeout; the lease is the backstop.
    fn release_in_background(&self, token: String) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (nodes, place, limit, key) = (
            self.inner.nodes.clone(),
            self.place,
            self.inner.command_timeout,
            self.key.clone(),
        );
        rt.spawn(async move {
            let _ = engine::release(&nodes, place, &key, &key, &token, false, limit).await;
        });
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::debug!(key = %self.key, "acquisition abandoned; releasing in the background");
        let token = std::mem::take(&mut self.token);
        self.release_in_background(token);
    }
}
