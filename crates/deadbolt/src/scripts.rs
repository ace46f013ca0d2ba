//! The Lua scripts, loaded once per process. Their sources sit in `scripts/*.lua`, each with a
//! header naming its keys, arguments and replies.
//!
//! A script runs as `EVALSHA`; when the server does not know it (after a restart or a `SCRIPT
//! FLUSH`), the same call is sent once more as `EVAL` with the script's source, which also caches
//! it. That is two round trips where redis-rs's `Script` takes three (`EVALSHA`, `SCRIPT LOAD`,
//! `EVALSHA`): on a slow link the difference decides whether a release fits its command timeout.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Arg, Cmd, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind};

/// A Lua script and its SHA-1.
#[derive(Debug)]
pub(crate) struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    fn new(code: &'static str) -> Lua {
        Lua {
            code,
            hash: redis::Script::new(code).get_hash().to_owned(),
        }
    }

    /// An `EVALSHA` of this script with `keys` keys; add the keys, then the arguments.
    pub(crate) fn call(&self, keys: usize) -> Cmd {
        // Room for a lock's usual call (a key, a token and a few numbers), so building it does
        // not reallocate: this runs on every acquisition and release.
        let mut cmd = Cmd::with_capacity(8, 160);
        cmd.arg("EVALSHA").arg(&self.hash).arg(keys);
        cmd
    }

    /// Runs `call` (from [`Lua::call`]), falling back to `EVAL` if the server lacks the script.
    /// Each round trip gets `limit`, if given (a reply that does not come is an I/O error of
    /// kind `TimedOut`): a slow link that needs the fallback is not failed for needing two.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        call: &Cmd,
        conn: &mut impl ConnectionLike,
        limit: Option<Duration>,
    ) -> RedisResult<T> {
        match bounded(limit, call.query_async(conn)).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                bounded(limit, self.eval(call).query_async(conn)).await
            }
            reply => reply,
        }
    }

    /// The `EVAL` form of `call` (from [`Lua::call`]), for a server that lacks the script.
    pub(crate) fn eval(&self, call: &Cmd) -> Cmd {
        let mut eval = redis::cmd("EVAL");
        eval.arg(self.code);
        // Everything after `EVALSHA <sha>`: the key count, keys and arguments.
        for arg in call.args_iter().skip(2) {
            if let Arg::Simple(bytes) = arg {
                eval.arg(bytes);
            }
        }
        eval
    }
}

/// `reply`, or a timeout error if it takes longer than `limit` (or than the connection's own
/// response timeout, which is reported the same way).
async fn bounded<T>(
    limit: Option<Duration>,
    reply: impl Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    let reply = match limit {
        Some(limit) => tokio::time::timeout(limit, reply)
            .await
            .unwrap_or_else(|_| Err(crate::error::no_reply_error())),
        None => reply.await,
    };
    reply.map_err(crate::error::as_no_reply)
}

/// A pipeline that loads every script the locks run (replies ignored), for `connect` to send
/// with its own first commands.
pub(crate) fn load_all() -> redis::Pipeline {
    let mut pipe = redis::pipe();
    for script in all() {
        pipe.cmd("SCRIPT").arg("LOAD").arg(script.code).ignore();
    }
    pipe
}

/// Every script the locks run.
fn all() -> [&'static Lua; 7] {
    [
        &ACQUIRE,
        &ACQUIRE_ALL,
        &MINT,
        &FENCE_QUORUM,
        &RELEASE,
        &RENEW,
        &WAIT,
    ]
}

/// `SET NX PX` plus a fencing token: see `scripts/acquire.lua`.
pub(crate) static ACQUIRE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/acquire.lua")));

/// All-or-nothing `SET NX PX` of several keys: see `scripts/acquire_all.lua`.
pub(crate) static ACQUIRE_ALL: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/acquire_all.lua")));

/// Owner-checked minting of a fencing token on first use: see `scripts/mint.lua`.
pub(crate) static MINT: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/mint.lua")));

/// One node's part in minting a quorum lock's fencing token: see `scripts/fence_quorum.lua`.
pub(crate) static FENCE_QUORUM: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/fence_quorum.lua")));

/// Compare-and-delete plus publish: see `scripts/release.lua`.
pub(crate) static RELEASE: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/release.lua")));

/// `SET NX PX` of a subscribed waiter, which marks a deadbolt holder so that its release
/// publishes: see `scripts/wait.lua`.
pub(crate) static WAIT: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/wait.lua")));

/// Owner-checked `PEXPIRE` over a batch: see `scripts/renew.lua`.
pub(crate) static RENEW: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/renew.lua")));

/// Write-if-not-older for the protected resource: see `scripts/fenced_set.lua`.
pub(crate) static FENCED_SET: LazyLock<Lua> =
    LazyLock::new(|| Lua::new(include_str!("scripts/fenced_set.lua")));

/// The call of `release.lua` for one lock, to [`RELEASE`]`.run` on each of its nodes. Its
/// reply: 1 released, 2 released with other clients waiting, 3 released without telling waiters
/// (no channel rights), 0 already expired, -1 held by another owner. `own_subscription`: this
/// client is subscribed to the lock's channel itself, which is not someone to wake. `sharded`:
/// waiters listen on the sharded channel (a Redis Cluster).
pub(crate) fn release_call(key: &str, token: &str, own_subscription: bool, sharded: bool) -> Cmd {
    let mut call = RELEASE.call(1);
    call.arg(key).arg(token);
    // Trailing zeros are left out (the script reads a missing flag as 0): the common release,
    // on one server with nobody local waiting, is then as short as a bare compare-and-delete.
    if own_subscription || sharded {
        call.arg(u8::from(own_subscription));
    }
    if sharded {
        call.arg(1);
    }
    call
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash `EVALSHA` sends is the one Redis computes, so no call pays a `NOSCRIPT` round
    /// trip after the first (redsync's check).
    #[test]
    fn script_hashes_match_what_redis_computes() {
        let server = deadbolt_testkit::RedisServer::start().unwrap();
        let mut conn = server.connection();
        for script in all().into_iter().chain([&*FENCED_SET]) {
            let hash: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script.code)
                .query(&mut conn)
                .unwrap();
            assert_eq!(hash, script.hash);
        }
    }
}
