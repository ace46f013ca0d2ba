use std::time::{Duration, Instant};

use deadbolt::ReleaseOutcome;
use deadbolt_testkit::RedisServer;

use crate::util::{assert_clean, ms, setup};

#[tokio::test]
async fn watchdog_keeps_a_lock_past_its_lease() {
    let (server, locks) = setup().await;
    let guard = locks.lock("a").watchdog(ms(300)).acquire().await.unwrap();
    tokio::select! {
        _ = tokio::time::sleep(ms(1200)) => {}
        _ = guard.lost() => panic!("lost while the watchdog renews"),
    }
    assert!(guard.is_held());
    let ttl = locks.inspect("a").await.unwrap().ttl.unwrap();
    assert!(ttl > ms(100), "ttl {ttl:?}");
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    assert_clean(&server);
}

/// Redis stops answering (SIGSTOP) past the lease: renewals time out and the lost signal
/// fires, no later than `valid_until`.
#[tokio::test]
async fn lost_fires_by_valid_until_when_redis_is_paused() {
    let server = RedisServer::start().unwrap();
    let locks = crate::util::client_with_timeout(&server, ms(2000)).await;
    let guard = locks.lock("a").watchdog(ms(500)).acquire().await.unwrap();
    let token = guard.lost_token();
    server.pause();
    let valid_until = guard.valid_until();
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("lost must fire");
    let fired = Instant::now();
    server.resume();
    assert!(
        fired <= valid_until + ms(30),
        "fired {:?} after valid_until",
        fired - valid_until
    );
    assert!(!guard.is_held());
    // The watchdog's token fires too, for tasks that were handed it.
    tokio::time::timeout(ms(200), token.cancelled())
        .await
        .expect("token must fire");
    // Redis expired the key meanwhile (its own clock kept running while stopped).
    let _ = guard.release().await.unwrap();
}

#[tokio::test]
async fn lost_fires_when_a_renewal_finds_the_lock_gone_or_taken() {
    let (server, locks) = setup().await;

    let gone = locks
        .lock("gone")
        .watchdog(ms(600))
        .acquire()
        .await
        .unwrap();
    crate::util::raw(&server, &["DEL", "deadbolt:{gone}"]);
    let start = Instant::now();
    tokio::time::timeout(ms(500), gone.lost())
        .await
        .expect("lost after the key vanished");
    assert!(
        start.elapsed() < ms(400),
        "noticed after {:?}",
        start.elapsed()
    );

    let taken = locks
        .lock("taken")
        .watchdog(ms(600))
        .acquire()
        .await
        .unwrap();
    crate::util::raw(&server, &["SET", "deadbolt:{taken}", "intruder"]);
    tokio::time::timeout(ms(500), taken.lost())
        .await
        .expect("lost after the key was taken");
    assert_eq!(taken.release().await.unwrap(), ReleaseOutcome::NotOwner);
    assert_eq!(
        gone.release().await.unwrap(),
        ReleaseOutcome::AlreadyExpired
    );
    crate::util::raw(&server, &["DEL", "deadbolt:{taken}"]);
    assert_clean(&server);
}

#[tokio::test]
async fn fixed_lease_is_lost_at_its_validity() {
    let (_server, locks) = setup().await;
    let guard = locks.lock("a").lease(ms(200)).acquire().await.unwrap();
    let valid_until = guard.valid_until();
    assert!(valid_until < Instant::now() + ms(200));
    guard.lost().await;
    let now = Instant::now();
    assert!(now >= valid_until, "fired before its validity passed");
    // Timer slack on a loaded machine, not a property of the lock: it fires at its validity.
    let late = now - valid_until;
    assert!(late < ms(150), "fired {late:?} late");
    assert!(!guard.is_held());
}

/// Many locks of one client are renewed together, not one round trip per lock per interval.
#[tokio::test]
async fn renewals_are_batched() {
    let (server, locks) = setup().await;
    let mut guards = Vec::new();
    for i in 0..50 {
        guards.push(
            locks
                .lock(format!("l{i}"))
                .watchdog(ms(600))
                .acquire()
                .await
                .unwrap(),
        );
    }
    server.reset_stats();
    tokio::time::sleep(ms(1000)).await;
    let stats = server.command_calls();
    let scripts = stats.get("evalsha").copied().unwrap_or(0);
    let renewed = stats.get("pexpire").copied().unwrap_or(0);
    // ~5 renewal rounds of 50 locks: ~250 PEXPIREs in a handful of script calls.
    assert!(renewed >= 150, "renewed {renewed}");
    assert!(
        scripts * 10 <= renewed,
        "{scripts} script calls for {renewed} renewals"
    );
    for g in guards {
        assert_eq!(g.release().await.unwrap(), ReleaseOutcome::Released);
    }
    assert_clean(&server);
}

/// A renewal in flight while `extend` shortens the lease: whichever order Redis ran them in,
/// the renewal's late reply must not give the guard back the longer validity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_reply_does_not_undo_a_shorter_extend() {
    let server = RedisServer::start().unwrap();
    let mut clients = Vec::new();
    let mut guards = Vec::new();
    for i in 0..24 {
        let c = crate::util::client(&server).await;
        guards.push(
            c.lock(format!("l{i}"))
                .watchdog(ms(3000))
                .acquire()
                .await
                .unwrap(),
        );
        clients.push(c);
    }
    // Renewals fall due 1 s after acquisition; hold writes from 0.9 s to 1.6 s.
    tokio::time::sleep(ms(900)).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(700)
        .arg("WRITE")
        .query(&mut server.connection())
        .unwrap();
    tokio::time::sleep(ms(250)).await;
    let tasks: Vec<_> = guards
        .into_iter()
        .map(|mut g| {
            tokio::spawn(async move {
                g.extend(ms(200)).await.unwrap();
                g
            })
        })
        .collect();
    let mut guards = Vec::new();
    for t in tasks {
        guards.push(t.await.unwrap());
    }
    let now = Instant::now();
    for g in &guards {
        let left = g.valid_until().saturating_duration_since(now);
        assert!(
            left <= ms(200),
            "{} claims {left:?} after a 200 ms extend",
            g.name()
        );
    }
}

/// The token of a fixed-lease lock fires at its validity, like `lost()`, though no renewal
/// runs for it; and for a hundred locks at once, none fires late because others are slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_tokens_fire_by_valid_until_for_fixed_leases() {
    let (server, locks) = setup().await;
    let mut guards = Vec::new();
    for i in 0..100 {
        let guard = locks
            .lock(format!("f{i}"))
            .lease(ms(300))
            .acquire()
            .await
            .unwrap();
        let token = guard.lost_token();
        guards.push((guard, token));
    }
    server.pause();
    for (guard, token) in &guards {
        let until = tokio::time::Instant::from_std(guard.valid_until());
        tokio::time::timeout_at(until + ms(50), token.cancelled())
            .await
            .expect("the token fired late");
        assert_eq!(guard.lost_reason(), Some(deadbolt::LostReason::NotRenewed));
    }
    server.resume();
    for (guard, _) in guards {
        let _ = guard.release().await;
    }
}

/// `extend` to a shorter fixed lease moves every wait on validity: `lost()` and the lost token,
/// both started before the extend, fire by the new deadline, before another client can take
/// the lock, not at the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_follows_an_extend_that_shortens_the_lease() {
    let (server, locks) = setup().await;
    let mut guard = locks.lock("short").lease(ms(5000)).acquire().await.unwrap();
    let scope = guard.scope();
    let token = guard.lost_token();
    let lost = tokio::spawn(async move {
        scope.lost().await;
        Instant::now()
    });
    // Both waits are asleep on the 5 s deadline now.
    tokio::time::sleep(ms(50)).await;
    guard.extend(ms(300)).await.unwrap();
    let until = guard.valid_until();

    let other = crate::util::client(&server).await;
    let theirs = other.lock("short").wait(ms(3000)).acquire().await.unwrap();
    let taken = Instant::now();
    let lost = tokio::time::timeout(ms(1000), lost)
        .await
        .expect("lost() still waits for the old deadline")
        .unwrap();
    assert!(token.is_cancelled(), "the lost token did not fire");
    assert!(
        lost <= until + ms(50),
        "lost() fired {:?} after valid_until",
        lost - until
    );
    assert!(
        lost <= taken,
        "lost() fired {:?} after another client took it",
        lost - taken
    );
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::NotOwner);
    theirs.release().await.unwrap();
    assert_clean(&server);
}
