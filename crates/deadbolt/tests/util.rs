use std::time::Duration;

use deadbolt::Client;
use deadbolt_testkit::RedisServer;

/// A fresh server and a client of it.
pub(crate) async fn setup() -> (RedisServer, Client) {
    let server = RedisServer::start().expect("start redis-server");
    let client = Client::connect(&server.url()).await.expect("connect");
    (server, client)
}

/// Another client of the same server: separate connections, watchdog and local queue.
pub(crate) async fn client(server: &RedisServer) -> Client {
    Client::connect(&server.url()).await.expect("connect")
}

/// The key where a sharded server keeps its identity (default prefix): metadata, not a lock.
pub(crate) const SHARD_KEY: &str = "deadbolt:shard";

/// Asserts that no lock key is left and that every key left (fencing counters) expires.
pub(crate) fn assert_clean(server: &RedisServer) {
    let mut conn = server.connection();
    for key in server.keys() {
        if key == SHARD_KEY {
            continue;
        }
        assert!(key.ends_with(":fence"), "key left behind: {key}");
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
        assert!(ttl > 0, "fencing counter {key} has no expiry");
    }
}

/// Lock keys (not fencing counters) on `server`.
pub(crate) fn lock_keys(server: &RedisServer) -> Vec<String> {
    let mut keys = server.keys();
    keys.retain(|k| !k.ends_with(":fence") && k != SHARD_KEY);
    keys
}

/// Polls `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
/// For conditions that settle in the background (a spawned release, an unsubscribe).
pub(crate) async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Subscribers of `channel` on the server, by `PUBSUB NUMSUB`.
pub(crate) fn subscribers(server: &RedisServer, channel: &str) -> i64 {
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut server.connection())
        .unwrap();
    n
}

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A client whose commands time out after `timeout`, for tests that stall Redis.
pub(crate) async fn client_with_timeout(server: &RedisServer, timeout: Duration) -> Client {
    Client::builder(&server.url())
        .command_timeout(timeout)
        .connect()
        .await
        .expect("connect")
}

/// Takes lock `name` without waiting and releases it: the lock was free.
pub(crate) async fn take_and_release(locks: &Client, name: &str) {
    let guard = locks
        .lock(name)
        .try_acquire()
        .await
        .expect("the lock is free");
    assert_eq!(
        guard.release().await.unwrap(),
        deadbolt::ReleaseOutcome::Released
    );
}

/// Runs a raw command on the server, ignoring its reply.
pub(crate) fn raw(server: &RedisServer, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    let _: redis::Value = cmd.query(&mut server.connection()).unwrap();
}

/// A task that waits up to `wait` for lock `name`, and resolves with the outcome and the moment
/// `acquire` returned.
pub(crate) fn waiter(
    locks: &Client,
    name: &'static str,
    wait: Duration,
) -> tokio::task::JoinHandle<(deadbolt::Result<deadbolt::LockGuard>, std::time::Instant)> {
    let locks = locks.clone();
    tokio::spawn(async move {
        let r = locks.lock(name).wait(wait).acquire().await;
        (r, std::time::Instant::now())
    })
}

/// The release channel of lock `name` (default prefix).
pub(crate) fn channel(name: &str) -> String {
    format!("deadbolt:{{{name}}}:released")
}
