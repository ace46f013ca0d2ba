//! The steps of a lock on its nodes, written once for every placement: take, release, renew,
//! mint a fencing token. On one node each step is one command; on a quorum (Redlock) it is one
//! parallel fan-out to every node, and the votes decide.
//!
//! The wait loop (`mutex.rs`), the watchdog, the guard and the held lock's state call these and
//! nothing else, so what a lock *is* (its keys, scripts and nodes) stays apart from how it is
//! waited for, kept, lost and released.

use std::time::Duration;

use futures_util::future::join_all;
use redis::AsyncCommands;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::Poll;

use tokio::time::{Instant, sleep_until, timeout};

use crate::error::{Error, NodeOutcome, Result, Vote, is_transient};
use crate::key::fence_key;
use crate::node::Node;
use crate::options::drift;
use crate::place::{Placement, quorum};
use crate::replicas::Replicas;
use crate::scripts::{self, ACQUIRE, FENCE_QUORUM, Lua, MINT, RENEW, WAIT};
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
    let limit = limit + how.replicas.map_or(Duration::ZERO, |r| r.timeout);
    outcome(
        node,
        key,
        timeout(limit, try_on(node, key, token, how)).await.ok(),
    )
}

/// [`attempt_on`] without its bound, for a fan-out that bounds all nodes at once.
async fn try_on(node: &Node, key: &str, token: &str, how: Try) -> redis::RedisResult<Attempt> {
    let Try {
        lease,
        fence_ttl,
        replicas,
        mark,
    } = how;
    let mut conn = node.conn.get();
    let attempt = async {
        let mut confirmed = None;
        // Sends `write` (of `script`, if one), with a `WAIT` when replica-synced.
        let mut send =
            async |write: &redis::Cmd, script: Option<&Lua>| -> redis::RedisResult<redis::Value> {
                match (replicas, &node.replicated) {
                    (Some(r), Some(sync)) => {
                        let (reply, n) = crate::replicas::send(sync, write, script, r).await?;
                        confirmed = Some(n);
                        Ok(reply)
                    }
                    _ => match script {
                        Some(script) => script.run(write, &mut conn, None).await,
                        None => write.query_async(&mut conn).await,
                    },
                }
            };
        if let Some(fence_ttl) = fence_ttl {
            let mut call = ACQUIRE.call(2);
            call.arg(key)
                .arg(fence_key(key))
                .arg(token)
                .arg(lease.as_millis() as u64)
                .arg(fence_ttl.as_millis() as u64)
                .arg(u8::from(mark));
            // {1, fence} or {0, pttl, holder}. The whole attempt is bounded below.
            let reply: Vec<redis::Value> =
                redis::FromRedisValue::from_redis_value(send(&call, Some(&ACQUIRE)).await?)?;
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
        let (previous, pttl): (Option<String>, Option<i64>) = if mark {
            let mut call = WAIT.call(1);
            call.arg(key).arg(token).arg(lease.as_millis() as u64);
            // nil, {holder} or {holder, pttl}.
            let reply: Option<Vec<redis::Value>> =
                redis::FromRedisValue::from_redis_value(send(&call, Some(&WAIT)).await?)?;
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
            let mut set = redis::cmd("SET");
            set.arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(lease.as_millis() as u64)
                .arg("GET");
            let reply = send(&set, None).await?;
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
            Some(holder) => match holder_of(Some(&holder), pttl.unwrap_or(0)) {
                Holder::Peer { .. } if pttl.is_none() => {
                    let pttl: i64 = conn.pttl(key).await?;
                    Attempt::Held(holder_of(Some(&holder), pttl))
                }
                held => Attempt::Held(held),
            },
        })
    };
    attempt.await
}

/// An attempt's reply (`None`: none in time) as the engine reports it.
fn outcome(node: &Node, key: &str, reply: Option<redis::RedisResult<Attempt>>) -> Result<Attempt> {
    match reply {
        None => Err(Error::no_reply()),
        Some(Ok(attempt)) => Ok(attempt),
        Some(Err(err)) if is_transient(&err) => {
            // `READONLY` means the node was demoted by a failover (see `conn.rs`).
            node.conn.saw_error(&err);
            Err(Error::Redis(err))
        }
        // Redis refused the command (say WRONGTYPE): nothing was written.
        Some(Err(err)) => Err(Error::from_redis(err, key)),
    }
}

/// One try on every node at once. Acquired when a majority took the lock and its validity
/// (`lease − elapsed − drift`) is still positive. Otherwise the lock is released on every node
/// that may have it (those that took it, and those whose reply never came: their `SET` may have
/// landed) before this returns, and the second value says whether that clean-up was confirmed.
///
/// The error, when too few nodes answered, is [`Error::NoQuorum`] with each node's outcome.
pub(crate) async fn attempt_quorum(
    nodes: &[Node],
    name: &str,
    key: &str,
    token: &str,
    lease: Duration,
    mark: bool,
    command_timeout: Duration,
) -> (Result<Attempt>, bool) {
    let limit = node_timeout(lease, command_timeout);
    let how = Try {
        lease,
        fence_ttl: None,
        replicas: None,
        mark,
    };
    let sent = Instant::now();
    let replies = join_until(
        sent + limit,
        nodes.iter().map(|n| try_on(n, key, token, how)),
    )
    .await;
    let replies: Vec<Result<Attempt>> = nodes
        .iter()
        .zip(replies)
        .map(|(node, reply)| outcome(node, key, reply))
        .collect();
    let needed = quorum(nodes.len());
    let won = replies
        .iter()
        .filter(|r| matches!(r, Ok(Attempt::Acquired { .. })))
        .count();
    if won >= needed && Instant::now() + drift(lease) < sent + lease {
        let acquired = Attempt::Acquired {
            fence: None,
            replicas: None,
        };
        return (Ok(acquired), true);
    }
    // Give back what we may hold: every node but those another owner holds.
    let mine: Vec<&Node> = nodes
        .iter()
        .zip(&replies)
        .filter(|(_, r)| !matches!(r, Ok(Attempt::Held(_))))
        .map(|(n, _)| n)
        .collect();
    // Bounded like the attempt: a silent node must not hold up the wait. What is not confirmed
    // is released again when the acquisition ends (see `Pending` in `mutex.rs`).
    let released = join_until(
        Instant::now() + limit,
        mine.iter().map(|n| async move {
            scripts::release(&mut n.conn.get(), key, token, false, n.cluster, None).await
        }),
    )
    .await;
    let cleaned = released.iter().all(|r| matches!(r, Some(Ok(_))));
    let answered = replies.iter().filter(|r| r.is_ok()).count();
    if answered < needed || won >= needed {
        // Too few answers, or a majority that came too late to leave any validity.
        let votes = replies.iter().map(|r| match r {
            Ok(Attempt::Acquired { .. }) => Vote::Ours,
            Ok(Attempt::Held(_)) => Vote::Held,
            Err(e) => vote_of(e),
        });
        return (Err(no_quorum(nodes, name, votes)), cleaned);
    }
    let holder = replies
        .into_iter()
        .filter_map(|r| match r {
            Ok(Attempt::Held(h)) => Some(h),
            _ => None,
        })
        .fold(Holder::Gone, Holder::longest);
    (Ok(Attempt::Held(holder)), cleaned)
}

/// Runs `futures` at once until all are done or `deadline` passes, with one timer for all of
/// them (a fan-out to N nodes would otherwise start N): `None` for those not done in time.
async fn join_until<F: Future>(
    deadline: Instant,
    futures: impl Iterator<Item = F>,
) -> Vec<Option<F::Output>> {
    let mut running: Vec<Option<Pin<Box<F>>>> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut done: Vec<Option<F::Output>> = running.iter().map(|_| None).collect();
    let mut expired = pin!(sleep_until(deadline));
    poll_fn(|cx| {
        let mut all = true;
        for (slot, out) in running.iter_mut().zip(done.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *out = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => all = false,
                }
            }
        }
        if all || expired.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done
}

/// The vote of a node whose step failed.
fn vote_of(err: &Error) -> Vote {
    match err {
        Error::Redis(e) if e.is_timeout() => Vote::TimedOut,
        Error::Redis(e) => Vote::Failed(e.to_string()),
        other => Vote::Failed(other.to_string()),
    }
}

/// Releases the lock on its nodes if it is still ours there, waking waiters: the code of
/// `release.lua` (1 released, 2 released with other clients waiting, 3 released without telling
/// waiters, 0 already expired, -1 held by another owner). On a quorum, released means released
/// by a majority; nodes that fail expire the key at the end of its lease.
///
/// A node whose user may not publish (code 3) has its waiters degraded to re-checks.
pub(crate) async fn release<'a>(
    nodes: &'a [Node],
    place: Placement,
    name: &str,
    key: &'a str,
    token: &'a str,
    own_subscription: bool,
    limit: Duration,
) -> Result<i64> {
    // Bounded here on one node; by the fan-out's single timer on a quorum.
    let bound = matches!(place, Placement::One(_)).then_some(limit);
    let release_on = move |node: &'a Node| async move {
        let mut conn = node.conn.get();
        let code =
            scripts::release(&mut conn, key, token, own_subscription, node.cluster, bound).await;
        if let Ok(3) = code {
            // Redis refused the PUBLISH: this user may not use the channels (any more). Later
            // tokens say so, so waiters re-check instead of waiting for a message.
            node.waiters.degrade();
        }
        code
    };
    let nodes = match place {
        // No fan-out machinery for the common case: a release is on every acquisition's path.
        Placement::One(i) => {
            return release_on(&nodes[i])
                .await
                .map_err(|e| Error::from_redis(e, key));
        }
        Placement::Quorum => nodes,
    };
    let codes: Vec<redis::RedisResult<i64>> =
        join_until(Instant::now() + limit, nodes.iter().map(release_on))
            .await
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
pub(crate) async fn renew(
    nodes: &[Node],
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
    let replies = join_all(nodes.iter().map(|node| {
        let call = &call;
        async move {
            let reply = RENEW
                .run::<Vec<i64>>(call, &mut node.conn.get(), Some(limit))
                .await;
            if let Err(err) = &reply {
                tracing::warn!(node = %node.addr, error = %err, locks = locks.len(), "lease renewal failed; retrying");
            }
            reply.ok()
        }
    }))
    .await;
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

/// What minting a fencing token found.
#[derive(Debug)]
pub(crate) enum Minted {
    Token(u64),
    Lost(Renewal),
}

/// Mints the fencing token of a lock held on `place`.
///
/// On one node: `mint.lua`, owner-checked. On a quorum, in two fan-outs: every node where the
/// lock is ours proposes `max(its counter + 1, its clock in µs)`; the token is the largest
/// proposal of a majority, and it is written back to every node before it is returned, at least a
/// majority confirming. Any two majorities share a node, so the next holder's proposals include
/// a counter at least this token: tokens increase across holders as long as no node forgets its
/// counter (a restart without persistence) while the majorities it was part of still count.
pub(crate) async fn mint(
    nodes: &[Node],
    place: Placement,
    name: &str,
    key: &str,
    token: &str,
    fence_ttl: Duration,
    limit: Duration,
) -> Result<Minted> {
    let fence_key = fence_key(key);
    if let Placement::One(i) = place {
        let mut call = MINT.call(2);
        call.arg(key)
            .arg(&fence_key)
            .arg(token)
            .arg(fence_ttl.as_millis() as u64);
        let mut reply: redis::RedisResult<Vec<i64>> = Err(crate::error::no_reply_error());
        // One retry after a connection-level failure: minting twice only skips a token.
        for _ in 0..2 {
            reply = MINT.run(&call, &mut nodes[i].conn.get(), Some(limit)).await;
            if !reply.as_ref().is_err_and(is_transient) {
                break;
            }
        }
        let reply = reply.map_err(|e| Error::from_redis(e, &fence_key))?;
        return minted(&reply);
    }
    let step = |value: u64| {
        let mut call = FENCE_QUORUM.call(2);
        call.arg(key)
            .arg(&fence_key)
            .arg(token)
            .arg(fence_ttl.as_millis() as u64)
            .arg(value);
        let fence_key = &fence_key;
        join_all(nodes.iter().map(move |node| {
            let call = call.clone();
            async move {
                FENCE_QUORUM
                    .run::<Vec<i64>>(&call, &mut node.conn.get(), Some(limit))
                    .await
                    .map_err(|e| Error::from_redis(e, fence_key))
            }
        }))
    };
    let proposals = step(0).await;
    let fence = match tally(nodes, name, &proposals)? {
        Minted::Token(fence) => fence,
        lost => return Ok(lost),
    };
    let written = step(fence).await;
    tally(nodes, name, &written)
}

/// The largest token a majority of nodes answered, or why there is none.
fn tally(nodes: &[Node], name: &str, replies: &[Result<Vec<i64>>]) -> Result<Minted> {
    let needed = quorum(nodes.len());
    let mut best = None;
    let (mut ours, mut gone, mut taken) = (0, 0, 0);
    for reply in replies {
        match reply.as_deref() {
            Ok([1, value]) => {
                ours += 1;
                best = best.max(Some(*value as u64));
            }
            Ok([0, ..]) => gone += 1,
            Ok(_) => taken += 1,
            Err(Error::WrongType { key }) => return Err(Error::WrongType { key: key.clone() }),
            Err(_) => {}
        }
    }
    match best {
        Some(fence) if ours >= needed => Ok(Minted::Token(fence)),
        _ if gone + taken > replies.len() - needed => Ok(Minted::Lost(if taken > 0 {
            Renewal::Taken
        } else {
            Renewal::Expired
        })),
        _ => Err(no_quorum(
            nodes,
            name,
            replies.iter().map(|r| match r.as_deref() {
                Ok([1, ..]) => Vote::Ours,
                Ok([0, ..]) => Vote::Gone,
                Ok(_) => Vote::Held,
                Err(e) => vote_of(e),
            }),
        )),
    }
}

/// [`Error::NoQuorum`] for lock `name`, with each node's vote.
fn no_quorum(nodes: &[Node], name: &str, votes: impl Iterator<Item = Vote>) -> Error {
    Error::NoQuorum {
        name: name.to_owned(),
        needed: quorum(nodes.len()),
        nodes: nodes
            .iter()
            .zip(votes)
            .map(|(node, vote)| NodeOutcome {
                addr: node.addr.clone(),
                vote,
            })
            .collect(),
    }
}

/// Reads `mint.lua`'s reply.
fn minted(reply: &[i64]) -> Result<Minted> {
    match reply {
        [1, fence] => Ok(Minted::Token(*fence as u64)),
        [0, ..] => Ok(Minted::Lost(Renewal::Expired)),
        [_, ..] => Ok(Minted::Lost(Renewal::Taken)),
        [] => Err(Error::Redis(redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "empty reply from the fencing script",
        )))),
    }
}
