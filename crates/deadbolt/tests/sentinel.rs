use std::time::{Duration, Instant};

use deadbolt::{Client, Error, LostReason, ReleaseOutcome};
use deadbolt_testkit::{RedisSentinels, RedisServer};

use crate::util::{ms, take_and_release};

/// Held by each test that starts a topology (five servers): one at a time, so that they do not
/// starve the timing-sensitive tests that run beside them on a 2-core machine.
static ONE_TOPOLOGY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `redis+sentinel://` for the kit's Sentinels and master name.
fn sentinel_url(topology: &RedisSentinels) -> String {
    let hosts: Vec<String> = topology
        .sentinels()
        .iter()
        .map(|s| format!("127.0.0.1:{}", s.port()))
        .collect();
    format!(
        "redis+sentinel://{}/{}",
        hosts.join(","),
        topology.master_name()
    )
}

fn exists(server: &RedisServer, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(&mut server.connection())
        .unwrap()
        == 1
}

#[tokio::test]
async fn a_sentinel_url_reaches_the_master_and_an_unknown_name_is_a_typed_error() {
    let _one = ONE_TOPOLOGY.lock().await;
    let topology = RedisSentinels::start().unwrap();
    let locks = Client::connect(&sentinel_url(&topology)).await.unwrap();
    let guard = locks.lock("via-sentinel").try_acquire().await.unwrap();
    let key = locks.keys("via-sentinel").unwrap().lock;
    assert!(exists(topology.master(), &key), "not on the master");
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);

    // The builder form, with the kit's `redis://` Sentinel URLs.
    let locks = Client::sentinel(topology.sentinel_urls(), topology.master_name())
        .connect()
        .await
        .unwrap();
    take_and_release(&locks, "via-builder").await;
    // A Sentinel that is down is skipped.
    let url =
        sentinel_url(&topology).replacen("redis+sentinel://", "redis+sentinel://127.0.0.1:1,", 1);
    let locks = Client::connect(&url).await.unwrap();
    take_and_release(&locks, "skipping").await;

    let url = sentinel_url(&topology).replace("/mymaster", "/nosuchmaster");
    let err = Client::connect(&url).await.unwrap_err();
    assert!(
        matches!(&err, Error::UnknownMaster { name } if name == "nosuchmaster"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "no sentinel knows a master named `nosuchmaster`"
    );
}

#[tokio::test]
async fn unreachable_sentinels_fail_to_connect_without_the_password() {
    let server = RedisServer::start().unwrap();
    let port = server.port();
    drop(server);
    let err = Client::builder(&format!(
        "redis+sentinel://:hunter2@127.0.0.1:{port}/mymaster"
    ))
    .connect_timeout(ms(200))
    .connect()
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
    assert!(err.to_string().contains("mymaster"), "{err}");

    let err = Client::connect("redis+sentinel://:hunter2@127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidArgument { reason, .. }
            if reason.contains("no master name") && !reason.contains("hunter2")),
        "{err:?}"
    );
}

/// Kills the master and waits (off the runtime) until the Sentinels report the replica as the
/// new master; returns when they did.
async fn fail_over(topology: RedisSentinels) -> (RedisSentinels, Instant) {
    tokio::task::spawn_blocking(move || {
        let mut topology = topology;
        topology.kill_master();
        topology
            .wait_for_failover(Duration::from_secs(15))
            .expect("failover");
        let announced = Instant::now();
        (topology, announced)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_follows_a_failover() {
    let _one = ONE_TOPOLOGY.lock().await;
    let topology = RedisSentinels::start().unwrap();
    let url = sentinel_url(&topology);
    let locks = Client::connect(&url).await.unwrap();
    let other = Client::connect(&url).await.unwrap();

    // Held across the failover: `kept` is on the replica (confirmed by `WAIT`), `dropped` is
    // deleted from the replica, as if the failover beat its replication.
    let kept = locks
        .lock("kept")
        .replicas(1, Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    let dropped = locks.lock("dropped").acquire().await.unwrap();
    let dropped_key = locks.keys("dropped").unwrap().lock;
    {
        let mut replica = topology.replica().connection();
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("replica-read-only")
            .arg("no")
            .query(&mut replica)
            .unwrap();
        let end = Instant::now() + Duration::from_secs(5);
        while !exists(topology.replica(), &dropped_key) {
            assert!(Instant::now() < end, "the lock never reached the replica");
            std::thread::sleep(ms(10));
        }
        let _: () = redis::cmd("DEL")
            .arg(&dropped_key)
            .query(&mut replica)
            .unwrap();
    }

    let killed = Instant::now();
    let (topology, announced) = fail_over(topology).await;
    // The same client value takes and releases locks on the promoted replica.
    let follow = loop {
        match locks.lock("after").try_acquire().await {
            Ok(guard) => {
                let follow = announced.elapsed();
                assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
                break follow;
            }
            Err(err) => {
                assert!(
                    announced.elapsed() < Duration::from_secs(5),
                    "not following the failover: {err:?}"
                );
                tokio::time::sleep(ms(20)).await;
            }
        }
    };
    eprintln!(
        "failover: sentinels announced it {:?} after the kill; the client took a lock {follow:?} after that",
        announced - killed
    );
    assert!(follow < Duration::from_secs(3), "followed after {follow:?}");
    let key = locks.keys("after").unwrap().lock;
    assert!(
        !exists(topology.replica(), &key),
        "released on the new master"
    );

    // Each held lock went the way its data says: checked on the new master right after the move.
    tokio::time::timeout(Duration::from_secs(3), dropped.lost())
        .await
        .expect("the lock the new master lacks fires its lost signal");
    assert_eq!(dropped.lost_reason(), Some(LostReason::Expired));
    assert!(kept.is_held(), "the replicated lock is kept");
    assert_eq!(kept.lost_reason(), None);
    assert!(exists(
        topology.replica(),
        &locks.keys("kept").unwrap().lock
    ));
    // Still exclusive on the new master, and its release wakes a waiter of another client
    // there (pub/sub followed too).
    let err = other.lock("kept").try_acquire().await.unwrap_err();
    assert!(matches!(err, Error::WouldBlock { .. }), "{err:?}");
    let waiter = crate::util::waiter(&other, "kept", Duration::from_secs(10));
    tokio::time::sleep(ms(300)).await;
    let released = Instant::now();
    assert_eq!(kept.release().await.unwrap(), ReleaseOutcome::Released);
    let (guard, at) = waiter.await.unwrap();
    let guard = guard.unwrap();
    assert!(
        at.duration_since(released) < ms(500),
        "the waiter was not woken: {:?}",
        at.duration_since(released)
    );
    guard.release().await.unwrap();
    assert_eq!(
        dropped.release().await.unwrap(),
        ReleaseOutcome::AlreadyExpired
    );
}

/// The URL's password is the master's: the Sentinels are asked without one, the master (found
/// through them) with it; a missing or wrong one is a connect error that does not show it.
#[tokio::test]
async fn the_url_password_is_the_masters() {
    let _one = ONE_TOPOLOGY.lock().await;
    let topology = RedisSentinels::start().unwrap();
    let set = |server: &RedisServer, args: &[&str]| {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query(&mut server.connection()).unwrap();
    };
    for sentinel in topology.sentinels() {
        set(
            sentinel,
            &["SENTINEL", "SET", "mymaster", "auth-pass", "s3cret"],
        );
    }
    set(
        topology.replica(),
        &["CONFIG", "SET", "masterauth", "s3cret"],
    );
    set(
        topology.replica(),
        &["CONFIG", "SET", "requirepass", "s3cret"],
    );
    set(
        topology.master(),
        &["CONFIG", "SET", "requirepass", "s3cret"],
    );

    let url = sentinel_url(&topology);
    let with = |password: &str| {
        url.replacen(
            "redis+sentinel://",
            &format!("redis+sentinel://:{password}@"),
            1,
        )
    };
    let locks = Client::connect(&with("s3cret")).await.unwrap();
    take_and_release(&locks, "authenticated").await;

    for url in [url.clone(), with("n0tit")] {
        let err = Client::connect(&url).await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        let shown = format!("{err} {err:?}");
        assert!(
            !shown.contains("n0tit") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
