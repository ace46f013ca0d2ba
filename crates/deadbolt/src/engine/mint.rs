//! Minting fencing tokens: `mint.lua` on one node; on a quorum, proposals from a majority's
//! counters written back to a majority.

use std::time::Duration;

use tokio::time::Instant;

use super::Renewal;
use super::quorum::{answered_if_up, join_until, no_quorum, vote_of};
use crate::error::{Error, Result, Vote, is_transient};
use crate::key::fence_key;
use crate::node::Node;
use crate::place::{Placement, quorum};
use crate::scripts::{FENCE_QUORUM, MINT};

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
            let node = &nodes[i];
            reply = MINT
                .run(&call, &mut node.conn.get(), node.timer_for(limit))
                .await;
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
        // Like every quorum step: over once each node known to be up (and a majority) answered.
        let asks = nodes.iter().map(move |node| {
            let call = call.clone();
            async move {
                FENCE_QUORUM
                    .run::<Vec<i64>>(&call, &mut node.conn.get(), None)
                    .await
                    .map_err(|e| Error::from_redis(e, fence_key))
            }
        });
        async move {
            let replies = join_until(Instant::now() + limit, asks, |r| answered_if_up(nodes, r));
            let replies: Vec<Result<Vec<i64>>> = replies
                .await
                .into_iter()
                .map(|r| r.unwrap_or_else(|| Err(Error::no_reply())))
                .collect();
            replies
        }
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
