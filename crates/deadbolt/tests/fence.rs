use deadbolt::fence;

use crate::util::{ms, setup};

/// A holder that paused past its lease writes after the next holder did: the resource refuses it.
#[tokio::test]
async fn a_stale_holder_is_refused_by_the_resource() {
    let (_server, locks) = setup().await;
    let mut store = locks.connection();
    let stale = locks
        .lock("stock")
        .fenced()
        .lease(ms(50))
        .acquire()
        .await
        .unwrap();
    let stale_token = stale.fencing_token().await.unwrap();
    tokio::time::sleep(ms(100)).await; // the "GC pause"
    // Too late to mint now: a lazily minted token needs the lock to be ours.
    let late = locks.lock("late").lease(ms(50)).acquire().await.unwrap();
    tokio::time::sleep(ms(100)).await;
    assert!(matches!(
        late.fencing_token().await,
        Err(deadbolt::Error::LockLost { .. })
    ));
    let fresh = locks.lock("stock").acquire().await.unwrap();
    let fresh_token = fresh.fencing_token().await.unwrap();
    assert!(fresh_token > stale_token);

    assert!(
        fence::set_if_newer(&mut store, "count", fresh_token, b"41")
            .await
            .unwrap()
    );
    // The same holder may write again.
    assert!(
        fence::set_if_newer(&mut store, "count", fresh_token, b"40")
            .await
            .unwrap()
    );
    assert!(
        !fence::set_if_newer(&mut store, "count", stale_token, b"99")
            .await
            .unwrap()
    );
    let (value, token) = fence::get(&mut store, "count").await.unwrap().unwrap();
    assert_eq!((value.as_slice(), token), (&b"40"[..], fresh_token));
    // Beyond 2^53 the comparison is still exact.
    assert!(
        fence::set_if_newer(&mut store, "big", u64::MAX - 1, b"a")
            .await
            .unwrap()
    );
    assert!(
        !fence::set_if_newer(&mut store, "big", u64::MAX - 2, b"b")
            .await
            .unwrap()
    );
    assert!(
        fence::set_if_newer(&mut store, "big", u64::MAX, b"c")
            .await
            .unwrap()
    );
    let _ = stale.release().await.unwrap();
    let _ = fresh.release().await.unwrap();
}
