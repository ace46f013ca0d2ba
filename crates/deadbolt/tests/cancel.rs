use std::time::Duration;

use crate::util::{assert_clean, client, eventually, ms, setup, subscribers};

/// Dropping `acquire` at any await point (here: after a random 0-1.5 ms, which lands before,
/// during and after the script call) leaves no lock behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_leaves_no_lock() {
    let (server, locks) = setup().await;
    let mut acquired = 0;
    for i in 0..300u64 {
        let limit = Duration::from_micros((i * 7919) % 1500);
        if let Ok(Ok(guard)) = tokio::time::timeout(limit, locks.lock("a").acquire()).await {
            acquired += 1;
            guard.release().await.unwrap();
        }
    }
    assert!(
        eventually(ms(2000), || server
            .keys()
            .iter()
            .all(|k| k.ends_with(":fence")))
        .await,
        "a lock was left behind: {:?}",
        server.keys()
    );
    // Nothing stuck in the local queue either: the lock is free for an immediate try.
    crate::util::take_and_release(&locks, "a").await;
    assert!(
        acquired > 0 && acquired < 300,
        "cancellation points not exercised: {acquired}"
    );
    assert_clean(&server);
}

/// Waiters dropped while they wait leave no subscription and no lock.
#[tokio::test]
async fn dropped_waiters_unsubscribe() {
    let (server, holder) = setup().await;
    let waiting = client(&server).await;
    let guard = holder.lock("a").acquire().await.unwrap();
    let channel = "deadbolt:{a}:released";
    for _ in 0..3 {
        let w = {
            let waiting = waiting.clone();
            tokio::spawn(async move { waiting.lock("a").wait(ms(5000)).acquire().await })
        };
        assert!(eventually(ms(2000), || subscribers(&server, channel) == 1).await);
        w.abort();
        assert!(w.await.unwrap_err().is_cancelled());
        assert!(
            eventually(ms(2000), || subscribers(&server, channel) == 0).await,
            "subscription leaked"
        );
    }
    guard.release().await.unwrap();
    crate::util::take_and_release(&waiting, "a").await;
    assert_clean(&server);
}

/// A guard dropped without `release` is released in the background, long before its lease.
#[tokio::test]
async fn dropped_guard_is_released_in_the_background() {
    let (server, locks) = setup().await;
    let guard = locks
        .lock("a")
        .lease(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    drop(guard);
    let other = client(&server).await;
    let g = other.lock("a").wait(ms(1000)).acquire().await.unwrap();
    g.release().await.unwrap();
    assert_clean(&server);
}

/// A release that gets no reply still frees this client's line for the lock, even while a
/// `LockScope` of it lives on: once the lease is over, the client's next task gets the lock.
#[tokio::test]
async fn a_failed_release_frees_the_local_line() {
    let server = deadbolt_testkit::RedisServer::start().unwrap();
    let locks = crate::util::client_with_timeout(&server, ms(300)).await;
    let guard = locks.lock("a").lease(ms(500)).acquire().await.unwrap();
    let scope = guard.scope();
    server.pause();
    assert!(guard.release().await.is_err());
    server.resume();
    let g = locks.lock("a").wait(ms(1500)).acquire().await.unwrap();
    g.release().await.unwrap();
    drop(scope);
    assert_clean(&server);
}
