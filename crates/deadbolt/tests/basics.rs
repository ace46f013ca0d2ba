use std::time::Duration;

use deadbolt::{Error, ReleaseOutcome};

use crate::util::{assert_clean, ms, setup};

#[tokio::test]
async fn acquire_then_release_leaves_only_the_fence_counter() {
    let (server, locks) = setup().await;
    let guard = locks.lock("a").acquire().await.unwrap();
    assert!(locks.is_locked("a").await.unwrap());
    assert!(guard.is_held());
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    assert!(!locks.is_locked("a").await.unwrap());
    assert_clean(&server);
}

#[tokio::test]
async fn try_acquire_on_a_held_lock_would_block() {
    let (server, locks) = setup().await;
    let other = crate::util::client(&server).await;
    let guard = locks.lock("a").try_acquire().await.unwrap();
    let err = other.lock("a").try_acquire().await.unwrap_err();
    assert!(
        matches!(err, Error::WouldBlock { ref name } if name == "a"),
        "{err:?}"
    );
    // Another task of the same client is refused too, without asking Redis.
    assert!(matches!(
        locks.lock("a").try_acquire().await,
        Err(Error::WouldBlock { .. })
    ));
    guard.release().await.unwrap();
    crate::util::take_and_release(&other, "a").await;
    assert_clean(&server);
}

#[tokio::test]
async fn acquire_times_out_within_its_wait() {
    let (server, locks) = setup().await;
    let other = crate::util::client(&server).await;
    let guard = locks.lock("a").acquire().await.unwrap();
    let start = std::time::Instant::now();
    let err = other.lock("a").wait(ms(200)).acquire().await.unwrap_err();
    let waited = start.elapsed();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_contention());
    assert!(waited >= ms(200) && waited < ms(400), "waited {waited:?}");
    guard.release().await.unwrap();
    assert_clean(&server);
}

#[tokio::test]
async fn release_after_expiry_is_an_outcome_not_an_error() {
    let (server, locks) = setup().await;
    let guard = locks.lock("a").lease(ms(50)).acquire().await.unwrap();
    tokio::time::sleep(ms(120)).await;
    assert!(!guard.is_held());
    assert_eq!(
        guard.release().await.unwrap(),
        ReleaseOutcome::AlreadyExpired
    );

    // Expired, then taken by another owner: release must leave the new owner alone.
    let guard = locks.lock("b").lease(ms(50)).acquire().await.unwrap();
    tokio::time::sleep(ms(120)).await;
    let other = crate::util::client(&server).await;
    let theirs = other.lock("b").acquire().await.unwrap();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::NotOwner);
    assert!(other.is_locked("b").await.unwrap());
    assert_eq!(theirs.release().await.unwrap(), ReleaseOutcome::Released);
    assert_clean(&server);
}

#[tokio::test]
async fn fencing_tokens_strictly_increase_even_after_the_counter_is_lost() {
    let (server, locks) = setup().await;
    let mut last = 0;
    for i in 0..20 {
        if i == 10 {
            // A failover that lost the counter, or its expiry: tokens must still go up.
            let _: () = redis::cmd("FLUSHALL")
                .query(&mut server.connection())
                .unwrap();
        }
        // Minted with the acquisition and on first use, alternately: one order for both.
        let builder = locks.lock("f");
        let builder = if i % 2 == 0 {
            builder.fenced()
        } else {
            builder
        };
        let guard = builder.acquire().await.unwrap();
        let token = guard.fencing_token().await.unwrap();
        assert!(token > last, "token {token} after {last}");
        assert_eq!(guard.fencing_token().await.unwrap(), token, "minted once");
        last = token;
        guard.release().await.unwrap();
    }
    assert_eq!(locks.inspect("f").await.unwrap().fence, Some(last));
}

#[tokio::test]
async fn extend_moves_validity_and_fails_once_the_lock_is_gone() {
    let (server, locks) = setup().await;
    let mut guard = locks.lock("a").lease(ms(200)).acquire().await.unwrap();
    let before = guard.valid_until();
    guard.extend(ms(2000)).await.unwrap();
    assert!(guard.valid_until() > before + ms(1000));
    let ttl = locks.inspect("a").await.unwrap().ttl.unwrap();
    assert!(ttl > ms(1500), "ttl {ttl:?}");

    crate::util::raw(&server, &["DEL", "deadbolt:{a}"]);
    let err = guard.extend(ms(2000)).await.unwrap_err();
    assert!(matches!(err, Error::LockLost { .. }), "{err:?}");
    assert!(!guard.is_held());
    assert_eq!(
        guard.release().await.unwrap(),
        ReleaseOutcome::AlreadyExpired
    );
}

#[tokio::test]
async fn inspect_reports_ttl_and_fence() {
    let (_server, locks) = setup().await;
    let info = locks.inspect("a").await.unwrap();
    assert!(!info.locked && info.ttl.is_none() && info.fence.is_none());
    let guard = locks.lock("a").lease(ms(5000)).acquire().await.unwrap();
    let info = locks.inspect("a").await.unwrap();
    assert!(info.locked);
    assert!(info.ttl.unwrap() > ms(4000));
    assert_eq!(info.fence, None, "nothing minted before first use");
    assert!(info.owner.unwrap().starts_with("dbt2-"));
    let token = guard.fencing_token().await.unwrap();
    assert_eq!(locks.inspect("a").await.unwrap().fence, Some(token));
    guard.release().await.unwrap();
}

#[tokio::test]
async fn key_prefix_is_applied() {
    let server = deadbolt_testkit::RedisServer::start().unwrap();
    let locks = deadbolt::Client::builder(&server.url())
        .key_prefix("app")
        .connect()
        .await
        .unwrap();
    let guard = locks.lock("x").acquire().await.unwrap();
    assert!(
        server.keys().contains(&"app:{x}".to_owned()),
        "{:?}",
        server.keys()
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn a_zero_wait_is_one_try() {
    let (server, locks) = setup().await;
    let guard = locks
        .lock("a")
        .wait(Duration::ZERO)
        .acquire()
        .await
        .unwrap();
    let other = crate::util::client(&server).await;
    let start = std::time::Instant::now();
    let err = other
        .lock("a")
        .wait(Duration::ZERO)
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(start.elapsed() < ms(100));
    guard.release().await.unwrap();
    assert_clean(&server);
}

/// An `extend` that shortens the lease and gets no reply may still have been applied: the guard
/// must count with the shorter lease, or a second owner could take the lock while it says held.
#[tokio::test]
async fn an_unanswered_extend_counts_with_the_shorter_lease() {
    let server = deadbolt_testkit::RedisServer::start().unwrap();
    let locks = crate::util::client_with_timeout(&server, ms(300)).await;
    let mut guard = locks
        .lock("a")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    guard.extend(Duration::from_secs(10)).await.unwrap(); // loads the script
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(500)
        .arg("WRITE")
        .query(&mut server.connection())
        .unwrap();
    let sent = std::time::Instant::now();
    let err = guard.extend(ms(200)).await.unwrap_err();
    assert!(matches!(err, Error::Redis(_)), "{err:?}");
    assert!(
        guard.valid_until() <= sent + ms(200),
        "validity not shortened"
    );
    tokio::time::sleep(ms(500)).await;
    let other = crate::util::client(&server).await;
    let theirs = other.lock("a").wait(ms(500)).acquire().await.unwrap();
    assert!(!guard.is_held(), "two holders");
    theirs.release().await.unwrap();
}
