//! The quorum steps of a Redlock lock: one fan-out to every node, bounded by one timer, and
//! the votes of the nodes that answered.

use std::time::Duration;

use futures_util::future::join_all;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until};

use super::{Attempt, Try, TryWrite, node_timeout, outcome, release_on, try_on};
use crate::error::{Error, NodeOutcome, Result, Vote};
use crate::node::Node;
use crate::options::drift;
use crate::place::quorum;
use crate::scripts;
use crate::token::Holder;

/// One try on every node at once. Acquired when a majority took the lock and its validity
/// (`lease − elapsed − drift`) is still positive. Otherwise the lock is released on every node
/// that may have it (those that took it, and those whose reply never came: their `SET` may have
/// landed) before this returns, and the second value says whether that clean-up was confirmed.
///
/// The error, when too few nodes answered, is [`Error::NoQuorum`] with each node's outcome.
pub(crate) async fn attempt_quorum(
    nodes: &Arc<[Node]>,
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
    let tries = nodes.iter().map(|n| try_on(n, &write, how));
    let replies = join_until(sent + limit, tries, |r| answered_if_up(nodes, r)).await;
    // A node that did not answer in time is no longer counted as up: the next steps do not
    // wait for it until its heartbeat answers again.
    for (node, reply) in nodes.iter().zip(&replies) {
        if reply.is_none() {
            node.conn.saw_silence();
        }
    }
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
    // Give back what we may hold: every node but those another owner holds. Bounded like the
    // attempt, and over once every node known to be up answered: a node that is down must not
    // hold up the wait. What is not confirmed is released again in the background (see
    // `Pending` in `mutex.rs`); the try after this one has a token of its own.
    let mine: Vec<usize> = (0..nodes.len())
        .filter(|&i| !matches!(replies[i], Ok(Attempt::Held(_))))
        .collect();
    let up: Vec<bool> = mine.iter().map(|&i| nodes[i].conn.is_up()).collect();
    let call = Arc::new(scripts::release_call(key, token, false, nodes[0].cluster));
    let released = release_until(nodes, mine, call, Instant::now() + limit, move |r| {
        r.iter().zip(&up).all(|(reply, up)| reply.is_some() || !up)
    })
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

/// Runs `futures` at once until all are done, `decided` says the outputs so far settle the
/// step, or `deadline` passes, with one timer for all of them (a fan-out to N nodes would
/// otherwise start N): `None` for those not done by then.
///
/// A quorum step is over as soon as a majority decided it: a node that is down or stalled
/// must cost the others nothing. The futures still running are dropped; a command already
/// written to its connection still runs on its server (and every command of a lock is safe to
/// run late: its token is unique to the try), one still waiting for a connection is never sent.
///
/// Each future writes its output into a slot of its own, so the outputs of those done survive
/// the end; the futures live in one allocation (`join_all`'s), not one each.
pub(super) async fn join_until<F: Future>(
    deadline: Instant,
    futures: impl ExactSizeIterator<Item = F>,
    decided: impl Fn(&[Option<F::Output>]) -> bool,
) -> Vec<Option<F::Output>> {
    let slots: Mutex<Vec<Option<F::Output>>> =
        Mutex::new((0..futures.len()).map(|_| None).collect());
    let settled = Notify::new();
    let all = join_all(futures.enumerate().map(|(i, future)| {
        let (slots, settled, decided) = (&slots, &settled, &decided);
        async move {
            let output = future.await;
            let mut done = slots.lock().unwrap_or_else(|e| e.into_inner());
            done[i] = Some(output);
            if decided(&done) {
                settled.notify_one();
            }
        }
    }));
    tokio::select! {
        biased;
        _ = all => {}
        () = settled.notified() => {}
        () = sleep_until(deadline) => {}
    }
    slots.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// Releases `call` on `nodes[i]` for each `i` of `which`, at once, until `decided` says the
/// codes so far settle it or `deadline` passes. Unlike [`join_until`], a release still in
/// flight then is not dropped but finished in the background (bounded by the same deadline):
/// redis-rs does not send a command whose caller went away before it was written, and a
/// release must reach every node that may hold the key.
pub(super) async fn release_until(
    nodes: &Arc<[Node]>,
    which: Vec<usize>,
    call: Arc<redis::Cmd>,
    deadline: Instant,
    decided: impl Fn(&[Option<redis::RedisResult<i64>>]) -> bool + Send + Sync + 'static,
) -> Vec<Option<redis::RedisResult<i64>>> {
    let n = which.len();
    let slots = Arc::new(Mutex::new((0..n).map(|_| None).collect::<Vec<_>>()));
    let settled = Arc::new(Notify::new());
    let decided = Arc::new(decided);
    let all = join_all(which.into_iter().enumerate().map(|(slot, i)| {
        let (nodes, call) = (nodes.clone(), call.clone());
        let (slots, settled, decided) = (slots.clone(), settled.clone(), decided.clone());
        async move {
            let code = release_on(&nodes[i], &call, None).await;
            let mut done = slots.lock().unwrap_or_else(|e| e.into_inner());
            done[slot] = Some(code);
            if decided(&done) {
                settled.notify_one();
            }
        }
    }));
    let mut all = Box::pin(tokio::time::timeout_at(deadline, all));
    tokio::select! {
        biased;
        _ = all.as_mut() => {}
        () = settled.notified() => {
            // The rest finish in the background.
            tokio::spawn(all);
        }
    }
    let mut done = slots.lock().unwrap_or_else(|e| e.into_inner());
    done.iter_mut().map(Option::take).collect()
}

/// Whether a quorum step may end: every node of `nodes` that is known to be up has answered
/// (`replies` in the same order), and at least a majority has. A step waits for those, as
/// Redlock does, so a lock is taken and renewed on every live node, while a node that is down
/// or silent (see `Conn::is_up`) costs it nothing; the majority floor keeps a client that found
/// every node silent (a stall of its own) from ending steps at the first reply.
pub(super) fn answered_if_up<T>(nodes: &[Node], replies: &[Option<T>]) -> bool {
    let answered = replies.iter().filter(|r| r.is_some()).count();
    answered >= quorum(nodes.len())
        && nodes
            .iter()
            .zip(replies)
            .all(|(node, reply)| reply.is_some() || !node.conn.is_up())
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
