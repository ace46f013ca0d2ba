use std::time::Duration;

use crate::util::{assert_clean, ms, setup};

/// A peer library (redsync, node-redlock, redis-py) takes the lock with `SET key token NX PX`
/// and releases it by compare-and-delete, publishing nothing.
#[tokio::test]
async fn a_peer_using_set_nx_px_is_excluded_both_ways() {
    let (server, locks) = setup().await;
    let mut peer = server.connection();
    let key = locks.keys("shared").unwrap().lock;

    // We hold it: the peer's SET NX fails.
    let guard = locks.lock("shared").acquire().await.unwrap();
    let taken: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("peer")
        .arg("NX")
        .arg("PX")
        .arg(5000)
        .query(&mut peer)
        .unwrap();
    assert!(taken.is_none(), "peer took a lock we hold");
    guard.release().await.unwrap();

    // The peer holds it: we wait; the peer deletes without publishing; we get it when the TTL we
    // saw runs out (the TTL bound), here 400 ms.
    let taken: Option<String> = redis::cmd("SET")
        .arg(&key)
        .arg("peer")
        .arg("NX")
        .arg("PX")
        .arg(400)
        .query(&mut peer)
        .unwrap();
    assert!(taken.is_some());
    assert!(matches!(
        locks.lock("shared").try_acquire().await,
        Err(deadbolt::Error::WouldBlock { .. })
    ));
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .lock("shared")
                .wait(Duration::from_secs(5))
                .acquire()
                .await
        })
    };
    tokio::time::sleep(ms(100)).await;
    let _: () = redis::cmd("DEL").arg(&key).query(&mut peer).unwrap();
    let guard = waiter.await.unwrap().unwrap();
    guard.release().await.unwrap();
    assert_clean(&server);
}
