//! The Lua scripts, loaded once per process. Their sources sit in `scripts/*.lua`, each with a
//! header naming its keys, arguments and replies.
//!
//! `redis::Script` runs `EVALSHA` and falls back to loading the script on `NOSCRIPT` (after a
//! Redis restart or `SCRIPT FLUSH`), so callers never handle that case.

use std::sync::LazyLock;

use redis::Script;

/// `SET NX PX` plus a fencing token: see `scripts/acquire.lua`.
pub(crate) static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));

/// Owner-checked minting of a fencing token on first use: see `scripts/mint.lua`.
pub(crate) static MINT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/mint.lua")));

/// Compare-and-delete plus publish: see `scripts/release.lua`.
pub(crate) static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/release.lua")));

/// Owner-checked `PEXPIRE` over a batch: see `scripts/renew.lua`.
pub(crate) static RENEW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));

/// Write-if-not-older for the protected resource: see `scripts/fenced_set.lua`.
pub(crate) static FENCED_SET: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("scripts/fenced_set.lua")));

/// Runs `release.lua` for one lock: 1 released, 2 released with other clients waiting, 3
/// released without telling waiters (no channel rights), 0 already expired, -1 held by another
/// owner. `own_subscription`: this client is subscribed to the lock's channel itself, which is
/// not someone to wake.
pub(crate) async fn release(
    conn: &mut impl redis::aio::ConnectionLike,
    key: &str,
    token: &str,
    own_subscription: bool,
) -> redis::RedisResult<i64> {
    let mut call = RELEASE.prepare_invoke();
    call.key(key).arg(token).arg(u8::from(own_subscription));
    call.invoke_async(conn).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash `EVALSHA` sends is the one Redis computes, so no call pays a `NOSCRIPT` round
    /// trip after the first load (redsync's check).
    #[test]
    fn script_hashes_match_what_redis_computes() {
        let server = deadbolt_testkit::RedisServer::start().unwrap();
        let mut conn = server.connection();
        for script in [&*ACQUIRE, &*MINT, &*RELEASE, &*RENEW, &*FENCED_SET] {
            assert_eq!(script.load(&mut conn).unwrap(), script.get_hash());
        }
    }
}
