//! The quorum steps of a Redlock lock: one fan-out to every node, bounded by one timer, and
//! the votes of the nodes that answered.

use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::{Instant, sleep_until};

use super::{Attempt, Try, TryWrite, node_timeout, outcome, try_on};
use crate::error::{Error, NodeOutcome, Result, Vote};
use crate::node::Node;
use crate::options::drift;
use crate::place::quorum;
use crate::scripts::{self, RELEASE};
use crate::token::Holder;

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
    // Built once, sent to every node.
    let write = TryWrite::new(key, token, how);
    let sent = Instant::now();
    let replies = join_until(sent + limit, nodes.iter().map(|n| try_on(n, &write, how))).await;
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
    let call = &scripts::release_call(key, token, false, nodes[0].cluster);
    let released = join_until(
        Instant::now() + limit,
        mine.iter()
            .map(|n| async move { RELEASE.run::<i64>(call, &mut n.conn.get(), None).await }),
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
/// Each future writes its output into a slot of its own, so the outputs of those done survive
/// the deadline; the futures live in one allocation (`join_all`'s), not one each.
pub(super) async fn join_until<F: Future>(
    deadline: Instant,
    futures: impl ExactSizeIterator<Item = F>,
) -> Vec<Option<F::Output>> {
    let mut done: Vec<Option<F::Output>> = (0..futures.len()).map(|_| None).collect();
    let all = join_all(
        done.iter_mut()
            .zip(futures)
            .map(|(slot, future)| async move { *slot = Some(future.await) }),
    );
    tokio::select! {
        biased;
        _ = all => {}
        () = sleep_until(deadline) => {}
    }
    done
}

/// The vote of a node whose step failed.
pub(super) fn vote_of(err: &Error) -> Vote {
    match err {
        Error::Redis(e) if e.is_timeout() => Vote::TimedOut,
        Error::Redis(e) => Vote::Failed(e.to_string()),
        other => Vote::Failed(other.to_string()),
    }
}

/// [`Error::NoQuorum`] for lock `name`, with each node's vote.
pub(super) fn no_quorum(nodes: &[Node], name: &str, votes: impl Iterator<Item = Vote>) -> Error {
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
