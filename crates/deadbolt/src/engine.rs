//! The steps of a lock on its nodes, written once for every placement: take, release, renew,
//! mint a fencing token. On one node each step is one command; on a quorum (Redlock) it is one
//! parallel fan-out to every node, and the votes decide.
//!
//! The wait loop (`mutex.rs`), the watchdog, the guard and the held lock's state call these and
//! nothing else, so what a lock *is* (its keys, scripts and nodes) stays apart from how it is
//! waited for, kept, lost and released.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use redis::AsyncCommands;
use tokio::time::{Instant, timeout};

mod mint;
mod quorum;

pub(crate) use mint::{Minted, mint};
pub(crate) use quorum::attempt_quorum;
use quorum::{answered_if_up, join_until, no_quorum, release_until, vote_of};

use crate::error::{Error, Result, Vote, is_transient};
use crate::key::fence_key;
use crate::node::Node;
use crate::place::{Placement, quorum};
use crate::replicas::Replicas;
use crate::scripts::{self, ACQUIRE, Lua, RELEASE, RENEW, WAIT};
use crate::token::{Holder, holder_of, unmarked};

/// What one attempt found.
#[derive(Debug)]
pub(crate) enum Attempt {
    Acquired {
        /// Minted with the acquisition (fenced), or `None` to mint on first use.
        fence: Option<u64>,
        /// How many replicas `WAIT` counted, for a replica-synced acquisition.
        replicas: Option<u32>,
    },
    Held(Holder),
}

/// What a renewal (or a check) found for one lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    Ours,
    Expired,
    Taken,
    /// Too few nodes answered to tell: try again soon.
    Unknown,
}

impl Renewal {
    /// Why the lock is lost, if this says it is.
    pub(crate) fn reason(self) -> Option<crate::error::LostReason> {
        use crate::error::LostReason;
        match self {
            Renewal::Expired => Some(LostReason::Expired),
            Renewal::Taken => Some(LostReason::Taken),
            Renewal::Ours | Renewal::Unknown => None,
        }
    }
}

/// The nodes of placement `place`.
pub(crate) fn nodes_of(nodes: &[Node], place: Placement) -> &[Node] {
    match place {
        Placement::One(i) => std::slice::from_ref(&nodes[i]),
        Placement::Quorum => nodes,
    }
}

/// The time each node of a quorum gets to answer one step: 5 % of the lease, at least 50 ms and
/// at most the command timeout. Short against the lease, so a dead node costs little of it (the
/// Redlock algorithm's advice), long enough for a busy loopback.
pub(crate) fn node_timeout(lease: Duration, command_timeout: Duration) -> Duration {
    (lease / 20)
        .max(Duration::from_millis(50))
        .min(command_timeout)
}

/// How an attempt is made: the lease to set, and what comes with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Try {
    pub(crate) lease: Duration,
    /// Mint the fencing token with the acquisition, the counter to live this long.
    pub(crate) fence_ttl: Option<Duration>,
    /// Confirm the write on replicas (`WAIT`).
    pub(crate) replicas: Option<Replicas>,
    /// Mark a deadbolt holder for its release to publish (a subscribed waiter).
    pub(crate) mark: bool,
}

/// One try on one node, bounded by `limit` (plus the replica timeout): `SET key token NX PX
/// lease GET`, or `acquire.lua` when `fence_ttl` is given (a fenced acquisition). A retry after an
/// unknown outcome uses the same token, which the node then recognizes as ours.
///
/// `mark`: the caller is a waiter subscribed to the lock's channel, so the try is `wait.lua`
/// (or `acquire.lua` asked to mark), which marks a deadbolt holder's token for its release to
/// publish (see `scripts/release.lua`: an unmarked release publishes nothing).
///
/// Replica-synced (`replicas`), the write goes pipelined with a `WAIT` on the node's connection
/// for that (see `replicas.rs`), and the reply says how many replicas confirmed.
pub(crate) async fn attempt_on(
    node: &Node,
    key: &str,
    token: &str,
    how: Try,
    limit: Duration,
) -> Result<Attempt> {
    let write = TryWrite::new(key, token, how);
    let attempt = try_on(node, &write, how);
    // Replica-synced, the write goes on the `WAIT` connection, which has no bound of its own.
    let reply = match how.replicas {
        Some(r) => timeout(limit + r.timeout, attempt).await.ok(),
        None => match node.timer_for(limit) {
            Some(limit) => timeout(limit, attempt).await.ok(),
            None => Some(attempt.await),
        },
    };
    outcome(node, key, reply)
}

/// The command of a try, built once for all the nodes it goes to.
pub(super) struct TryWrite<'a> {
    key: &'a str,
    token: &'a str,
    call: redis::Cmd,
    /// The script `call` runs, if it is one: `acquire.lua` (fenced) or `wait.lua` (marking).
    script: Option<&'static Lua>,
}

impl<'a> TryWrite<'a> {
    pub(super) fn new(key: &'a str, token: &'a str, how: Try) -> TryWrite<'a> {
        let lease = how.lease.as_millis() as u64;
        let (call, script) = if let Some(fence_ttl) = how.fence_ttl {
            let mut call = ACQUIRE.call(2);
            call.arg(key)
                .arg(fence_key(key))
                .arg(token)
                .arg(lease)
                .arg(fence_ttl.as_millis() as u64)
                .arg(u8::from(how.mark));
            (call, Some(&*ACQUIRE))
        } else if how.mark {
            let mut call = WAIT.call(1);
            call.arg(key).arg(token).arg(lease);
            (call, Some(&*WAIT))
        } else {
            let mut call = redis::Cmd::with_capacity(7, 128);
            call.arg("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(lease)
                .arg("GET");
            (call, None)
        };
        TryWrite {
            key,
            token,
            call,
            script,
        }
    }
}

/// [`attempt_on`] without its bound, for a fan-out that bounds all nodes at once.
pub(super) async fn try_on(
    node: &Node,
    write: &TryWrite<'_>,
    how: Try,
) -> redis::RedisResult<Attempt> {
    let TryWrite {
        key,
        token,
        ref call,
        script,
    } = *write;
    let mut conn = node.conn.get();
    let mut confirmed = None;
    // Sent with a `WAIT` when replica-synced.
    let reply = match (how.replicas, &node.replicated) {
        (Some(r), Some(sync)) => {
            let (reply, n) = crate::replicas::send(sync, call, script, r).await?;
            confirmed = Some(n);
            reply
        }
        _ => match script {
            Some(script) => script.run(call, &mut conn, None).await?,
            None => call.query_async(&mut conn).await?,
        },
    };
    if how.fence_ttl.is_some() {
        // {1, fence} or {0, pttl, holder}.
        let reply: Vec<redis::Value> = redis::FromRedisValue::from_redis_value(reply)?;
        let int = |i: usize| match reply.get(i) {
            Some(redis::Value::Int(n)) => *n,
            _ => -2,
        };
        return Ok(if int(0) == 1 {
            Attempt::Acquired {
                fence: Some(int(1) as u64),
                replicas: confirmed,
            }
        } else {
            let holder = match reply.get(2) {
                Some(redis::Value::BulkString(b)) => String::from_utf8(b.clone()).ok(),
                _ => None,
            };
            Attempt::Held(holder_of(holder.as_deref(), int(1)))
        });
    }
    // The holder's value (nil: the lock is now ours) and, from `wait.lua`, a peer's PTTL.
    let (previous, pttl): (Option<String>, Option<i64>) = if how.mark {
        // nil, or {holder, pttl}.
        let reply: Option<Vec<redis::Value>> = redis::FromRedisValue::from_redis_value(reply)?;
        match reply.as_deref() {
            None => (None, None),
            Some([holder, rest @ ..]) => {
                let holder: String = redis::FromRedisValue::from_redis_value(holder.clone())?;
                let pttl = match rest.first() {
                    Some(redis::Value::Int(n)) => Some(*n),
                    _ => None,
                };
                (Some(holder), pttl)
            }
            Some([]) => (Some(String::new()), None),
        }
    } else {
        (redis::FromRedisValue::from_redis_value(reply)?, None)
    };
    let acquired = Attempt::Acquired {
        fence: None,
        replicas: confirmed,
    };
    Ok(match previous {
        None => acquired,
        // A retry after an ambiguous outcome: the earlier try landed (and a waiter may have
        // marked it since).
        Some(holder) if unmarked(&holder) == token => acquired,
        // Without a TTL in the reply (a plain `SET … GET`): a deadbolt holder's token bounds the
        // wait; a peer's key is asked for its TTL.
        Some(holder) => match holder_of(Some(&holder), pttl.unwrap_or(-1)) {
            Holder::Peer { .. } if pttl.is_none() => {
                let pttl: i64 = conn.pttl(key).await?;
                Attempt::Held(holder_of(Some(&holder), pttl))
            }
            held => Attempt::Held(held),
        },
    })
}

/// An attempt's reply (`None`: none in time) as the engine reports it.
fn outcome(node: &Node, key: &str, reply: Option<redis::RedisResult<Attempt>>) -> Result<Attempt> {
    match reply {
        None => Err(Error::no_reply()),
        Some(Ok(attempt)) => Ok(attempt),
        Some(Err(err)) if is_transient(&err) => {
            // `READONLY` means the node was demoted by a failover (see `conn.rs`).
            node.conn.saw_error(&err);
            Err(Error::Redis(crate::error::as_no_reply(err)))
        }
        // Redis refused the command (say WRONGTYPE): nothing was written.
        Some(Err(err)) => Err(Error::from_redis(err, key)),
    }
}

/// Releases the lock on its nodes if it is still ours there, waking waiters: the code of
/// `release.lua` (1 released, 2 released with other clients waiting, 3 released without telling
/// waiters, 0 already expired, -1 held by another owner). On a quorum, released means released
/// by a majority; nodes that fail expire the key at the end of its lease.
///
/// A node whose user may not publish (code 3) has its waiters degraded to re-checks.
pub(crate) async fn release(
    nodes: &Arc<[Node]>,
    place: Placement,
    name: &str,
    key: &str,
    token: &str,
    own_subscription: bool,
    limit: Duration,
) -> Result<i64> {
    // Built once, sent to every node.
    let call = scripts::release_call(key, token, own_subscription, nodes[0].cluster);
    let i = match place {
        // No fan-out machinery for the common case: a release is on every acquisition's path.
        // Bounded by the node's connection, if that is enough.
        Placement::One(i) => i,
        Placement::Quorum => {
            return release_quorum(nodes, name, call, limit).await;
        }
    };
    let node = &nodes[i];
    release_on(node, &call, node.timer_for(limit))
        .await
        .map_err(|e| Error::from_redis(e, key))
}

/// Runs the release script `call` on `node`, bounded by `bound` if given, and notes what its
/// answer says of the node: a connection-level failure, or a user that may not publish.
pub(super) async fn release_on(
    node: &Node,
    call: &redis::Cmd,
    bound: Option<Duration>,
) -> redis::RedisResult<i64> {
    let code = RELEASE.run::<i64>(call, &mut node.conn.get(), bound).await;
    if let Err(err) = &code
        && is_transient(err)
    {
        node.conn.saw_error(err);
    }
    if let Ok(3) = code {
        // Redis refused the PUBLISH: this user may not use the channels (any more). Later
        // tokens say so, so waiters re-check instead of waiting for a message.
        node.waiters.degrade();
    }
    code
}

/// [`release`] on every node of a quorum, over once a majority released it or can no longer;
/// releases still in flight then finish in the background.
async fn release_quorum(
    nodes: &Arc<[Node]>,
    name: &str,
    call: redis::Cmd,
    limit: Duration,
) -> Result<i64> {
    // Over once every node known to be up answered; the others finish in the background.
    let up: Vec<bool> = nodes.iter().map(|n| n.conn.is_up()).collect();
    let codes = release_until(
        nodes,
        (0..nodes.len()).collect(),
        Arc::new(call),
        Instant::now() + limit,
        move |r| {
            let answered = r.iter().filter(|c| c.is_some()).count();
            answered >= quorum(r.len()) && r.iter().zip(&up).all(|(c, up)| c.is_some() || !up)
        },
    )
    .await;
    let codes: Vec<redis::RedisResult<i64>> = codes
        .into_iter()
        .map(|c| c.unwrap_or_else(|| Err(crate::error::no_reply_error())))
        .collect();
    let needed = quorum(nodes.len());
    let released = codes.iter().filter(|c| matches!(c, Ok(1..))).count();
    if released >= needed {
        let code = codes.iter().filter_map(|c| c.as_ref().ok()).copied();
        return Ok(code.clone().find(|&c| c == 2).or(code.max()).unwrap_or(1));
    }
    let failed = codes.iter().filter(|c| c.is_err()).count();
    if released + failed >= needed {
        // The nodes that failed might have said "released": nobody can tell.
        let votes = codes.iter().map(|c| match c {
            Ok(1..) => Vote::Ours,
            Ok(0) => Vote::Gone,
            Ok(_) => Vote::Held,
            Err(e) => vote_of(&Error::Redis(e.clone())),
        });
        return Err(no_quorum(nodes, name, votes));
    }
    let taken = codes.iter().filter(|c| matches!(c, Ok(-1))).count();
    Ok(if taken > 0 { -1 } else { 0 })
}

/// Renews (`lease` > 0) or checks (`lease` = 0) many locks of one placement in one script call
/// per node, and counts the votes of a quorum. `locks` holds each lock's key, token and lease.
pub(crate) async fn renew<'a>(
    nodes: &'a [Node],
    place: Placement,
    locks: &[(&str, &str, Duration)],
    limit: Duration,
) -> Vec<Renewal> {
    let nodes = nodes_of(nodes, place);
    let mut call = RENEW.call(locks.len());
    for (key, _, _) in locks {
        call.arg(*key);
    }
    for (_, token, lease) in locks {
        call.arg(*token).arg(lease.as_millis() as u64);
    }
    let call = &call;
    let renew_on = |node: &'a Node| async move {
        let bound = match place {
            Placement::One(_) => node.timer_for(limit),
            // The fan-out's one timer bounds them all.
            Placement::Quorum => None,
        };
        let reply = RENEW
            .run::<Vec<i64>>(call, &mut node.conn.get(), bound)
            .await;
        match &reply {
            Err(err) => {
                if is_transient(err) {
                    node.conn.saw_error(err);
                }
                // Once per outage of the node, not once per batch and retry.
                if !node.renewals_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(node = %node.addr, error = %err, "lease renewals fail on this node; retrying until they work or the locks are lost");
                }
            }
            Ok(_) => {
                if node.renewals_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(node = %node.addr, "lease renewals work again");
                }
            }
        }
        reply.ok()
    };
    let replies: Vec<Option<Vec<i64>>> = match place {
        Placement::One(_) => join_all(nodes.iter().map(renew_on)).await,
        // Over once every node known to be up answered.
        Placement::Quorum => {
            let replies = join_until(Instant::now() + limit, nodes.iter().map(renew_on), |r| {
                answered_if_up(nodes, r)
            })
            .await;
            for (node, reply) in nodes.iter().zip(&replies) {
                if reply.is_none() {
                    node.conn.saw_silence();
                }
            }
            replies.into_iter().map(Option::flatten).collect()
        }
    };
    let needed = quorum(nodes.len());
    (0..locks.len())
        .map(|i| {
            let codes = replies.iter().map(|r| r.as_ref().map(|c| c[i]));
            let (mut ours, mut gone, mut taken) = (0, 0, 0);
            for code in codes {
                match code {
                    Some(1) => ours += 1,
                    Some(0) => gone += 1,
                    Some(_) => taken += 1,
                    None => {}
                }
            }
            if ours >= needed {
                Renewal::Ours
            } else if gone + taken > nodes.len() - needed {
                // A majority can no longer agree that it is ours.
                if taken > 0 {
                    Renewal::Taken
                } else {
                    Renewal::Expired
                }
            } else {
                Renewal::Unknown
            }
        })
        .collect()
}
