use std::time::{Duration, Instant};

use deadbolt::{Client, Error};
use deadbolt_testkit::RedisServer;

use crate::util::{assert_clean, ms};

/// A master and a replica of it whose link is up, and that the master counts in `WAIT` (it
/// does so only once the replica's first acknowledgement came, after the link is up).
fn master_and_replica() -> (RedisServer, RedisServer) {
    let master = RedisServer::builder()
        .arg("--repl-diskless-sync-delay")
        .arg("0")
        .start()
        .expect("start master");
    let replica = RedisServer::builder()
        .arg("--replicaof")
        .arg("127.0.0.1")
        .arg(master.port().to_string())
        .start()
        .expect("start replica");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut replica.connection())
            .unwrap();
        if info.contains("master_link_status:up") {
            break;
        }
        assert!(Instant::now() < end, "replica not linked: {info}");
        std::thread::sleep(ms(50));
    }
    loop {
        let (_, acked, _): ((), i64, ()) = redis::pipe()
            .set("warm-up", 1)
            .cmd("WAIT")
            .arg(1)
            .arg(100)
            .del("warm-up")
            .query(&mut master.connection())
            .unwrap();
        if acked == 1 {
            break;
        }
        assert!(Instant::now() < end, "the master counts no replica in WAIT");
    }
    (master, replica)
}

fn exists(server: &RedisServer, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query::<i64>(&mut server.connection())
        .unwrap()
        == 1
}

#[tokio::test]
async fn replica_synced_locks_report_their_replicas() {
    let (master, replica) = master_and_replica();
    let locks = Client::connect(&master.url()).await.unwrap();
    let key = locks.keys("synced").unwrap().lock;

    let guard = locks
        .lock("synced")
        .replicas(1, Duration::from_secs(1))
        .acquire()
        .await
        .unwrap();
    assert_eq!(guard.replicas(), Some(1));
    assert_eq!(guard.scope().replicas(), Some(1));
    // `WAIT` returned, so the replica has the key now, not eventually.
    assert!(exists(&replica, &key));
    guard.release().await.unwrap();

    // The fenced acquisition (a script) is confirmed the same way.
    let guard = locks
        .lock("synced")
        .fenced()
        .replicas(1, Duration::from_secs(1))
        .acquire()
        .await
        .unwrap();
    assert_eq!(guard.replicas(), Some(1));
    assert!(guard.fencing_token().await.unwrap() > 0);
    guard.release().await.unwrap();

    // Without `replicas`, nothing is asked and nothing reported.
    let plain = locks.lock("synced").try_acquire().await.unwrap();
    assert_eq!(plain.replicas(), None);
    plain.release().await.unwrap();
    assert_clean(&master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_few_replicas_release_the_lock_with_a_typed_error() {
    let (master, replica) = master_and_replica();
    let locks = Client::connect(&master.url()).await.unwrap();
    let key = locks.keys("unsynced").unwrap().lock;
    replica.pause();

    let started = Instant::now();
    let pending = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.lock("unsynced").replicas(1, ms(500)).acquire().await })
    };
    // While that `WAIT` blocks its connection, plain locks of the same client go on.
    tokio::time::sleep(ms(100)).await;
    let quick = Instant::now();
    crate::util::take_and_release(&locks, "other").await;
    assert!(
        quick.elapsed() < ms(350),
        "a plain lock waited {:?} behind a WAIT",
        quick.elapsed()
    );

    let err = pending.await.unwrap().unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            &err,
            Error::NotReplicated { name, wanted: 1, confirmed: 0 } if name == "unsynced"
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "lock `unsynced` reached 0 of 1 replicas in time"
    );
    assert!(took >= ms(500) && took < ms(1500), "took {took:?}");
    assert!(
        !exists(&master, &key),
        "the unconfirmed lock was left behind"
    );
    replica.resume();
    assert_clean(&master);
}

#[tokio::test]
async fn more_replicas_than_exist_fail_after_the_timeout() {
    let (master, _replica) = master_and_replica();
    let locks = Client::connect(&master.url()).await.unwrap();
    let err = locks
        .lock("two")
        .replicas(2, ms(300))
        .acquire()
        .await
        .unwrap_err();
    // One replica exists; whether it acknowledged within the timeout depends on the load.
    assert!(
        matches!(
            err,
            Error::NotReplicated {
                wanted: 2,
                confirmed: 0 | 1,
                ..
            }
        ),
        "{err:?}"
    );
    // The lock is free again: released, not left to expire.
    crate::util::take_and_release(&locks, "two").await;
    assert_clean(&master);
}

#[tokio::test]
async fn bad_replica_settings_send_nothing() {
    let server = RedisServer::start().unwrap();
    let locks = Client::connect(&server.url()).await.unwrap();
    server.reset_stats();
    for (n, timeout, what) in [
        (0, ms(100), "replicas"),
        (deadbolt::MAX_REPLICAS + 1, ms(100), "replicas"),
        (1, Duration::ZERO, "replica timeout"),
        (1, deadbolt::MAX_REPLICA_WAIT + ms(1), "replica timeout"),
    ] {
        let err = locks
            .lock("bad")
            .replicas(n, timeout)
            .acquire()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { what: w, .. } if *w == what),
            "{n} {timeout:?}: {err:?}"
        );
    }
    let calls = server.command_calls();
    assert!(
        !calls.contains_key("set") && !calls.contains_key("wait"),
        "{calls:?}"
    );
}

/// A node demoted under a plain `redis://` client answers `READONLY`: an acquisition retries it
/// (reconnecting each time) within its wait, and succeeds once the node is a master again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_node_is_retried_within_the_wait() {
    let (master, replica) = master_and_replica();
    let locks = Client::connect(&replica.url()).await.unwrap();
    let err = locks
        .lock("demoted")
        .wait(ms(200))
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable { source, .. } if source.code() == Some("READONLY")),
        "{err:?}"
    );
    let promote = tokio::spawn(async move {
        tokio::time::sleep(ms(300)).await;
        let _: () = redis::cmd("REPLICAOF")
            .arg("NO")
            .arg("ONE")
            .query(&mut replica.connection())
            .unwrap();
        replica
    });
    let guard = locks
        .lock("demoted")
        .wait(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    guard.release().await.unwrap();
    let replica = promote.await.unwrap();
    assert_clean(&replica);
    drop(master);
}

/// `WAIT` needs one master: a Redlock refuses it before anything is sent.
#[tokio::test]
async fn replicas_on_a_redlock_are_refused() {
    let masters = deadbolt_testkit::RedisMasters::start(3).unwrap();
    let locks = deadbolt::Client::redlock(masters.urls())
        .connect()
        .await
        .unwrap();
    let err = locks
        .lock("r")
        .replicas(1, std::time::Duration::from_millis(100))
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(err, deadbolt::Error::InvalidArgument { .. }),
        "{err:?}"
    );
    for server in masters.servers() {
        assert!(server.keys().is_empty());
    }
}
