//! Faults between a client and Redis, on real servers: a restart that forgets every lock, a
//! connection that goes silent, resets, an outage, latency. Each test bounds every wait, and
//! checks what a holder may rely on rather than sleeping and hoping.

use std::time::{Duration, Instant};

use deadbolt::{Client, Error, LockScope, LostReason, ReleaseOutcome};
use deadbolt_testkit::{FaultProxy, RedisServer};
use tokio::task::{JoinHandle, block_in_place};

use crate::util::{assert_clean, channel, client, eventually, ms, setup, subscribers, waiter};

/// A task that resolves with the moment `scope` is lost.
fn when_lost(scope: LockScope) -> JoinHandle<Instant> {
    tokio::spawn(async move {
        scope.lost().await;
        Instant::now()
    })
}

/// A restart without persistence forgets every lock, and another client may take them at once.
/// The holder hears of it as soon as Redis answers again (the dropped pub/sub connection makes
/// the watchdog check every held lock, retrying until Redis is back), not at its next renewal (a
/// third of the 10 s lease) nor, for a fixed lease, at the end of the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_learns_within_1s_that_a_restart_lost_its_locks() {
    let (mut server, holder) = setup().await;
    let renewed = holder
        .lock("renewed")
        .watchdog(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let fixed = holder
        .lock("fixed")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let lost = [when_lost(renewed.scope()), when_lost(fixed.scope())];

    block_in_place(|| server.restart()).unwrap();
    // `restart` returns once the new server answers PING.
    let back = Instant::now();
    let other = client(&server).await;
    let mut theirs = Vec::new();
    for name in ["renewed", "fixed"] {
        let guard = other.lock(name).try_acquire().await;
        theirs.push(guard.unwrap_or_else(|e| panic!("{name}: Redis forgot it, yet {e:?}")));
    }

    // Waited for longer than the bound, so a miss reports how late it was.
    let limit = back + Duration::from_secs(4);
    for (task, guard) in lost.into_iter().zip([&renewed, &fixed]) {
        let name = guard.name();
        let at = tokio::time::timeout_at(limit.into(), task)
            .await
            .unwrap_or_else(|_| panic!("{name}: not lost within 4 s of the restart"))
            .unwrap();
        let latency = at.saturating_duration_since(back);
        println!("{name}: lost {latency:?} after Redis answered again");
        assert!(
            latency <= Duration::from_secs(1),
            "{name}: lost {latency:?} after Redis answered again"
        );
        let reason = guard.lost_reason();
        assert!(
            matches!(reason, Some(LostReason::Expired | LostReason::Taken)),
            "{name}: {reason:?}"
        );
        assert!(!guard.is_held());
    }
    // The old holder's release leaves the new owner alone.
    for guard in [renewed, fixed] {
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::NotOwner);
    }
    for guard in theirs {
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    }
    assert_clean(&server);
}

/// A connection that silently stops carrying bytes (no reply, no reset: a NAT or load balancer
/// that forgot the flow) is found by the heartbeat and replaced while the fault lasts. Through
/// it all the holder's guard never claims a lock Redis no longer gives it; after the fault the
/// lock is renewed again or reported lost, the client works again, and a waiter is woken by a
/// release instead of sleeping out the holder's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced_and_the_guard_never_overclaims() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let direct = client(&server).await;
    let proxied = Client::connect(&proxy.url()).await.unwrap();

    let held = proxied
        .lock("held")
        .watchdog(ms(3000))
        .acquire()
        .await
        .unwrap();
    let token = direct.inspect("held").await.unwrap().owner.unwrap();
    let blocker = direct
        .lock("wanted")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let wanted = waiter(&proxied, "wanted", Duration::from_secs(8));
    assert!(eventually(ms(2000), || subscribers(&server, &channel("wanted")) == 1).await);

    // Whenever the guard says held, Redis holds our token: read Redis first, then ask the
    // guard, so a lease running out in between cannot fail the check.
    let mut observer = server.connection();
    let mut check_truthful = || {
        let owner: Option<String> = redis::cmd("GET")
            .arg("deadbolt:{held}")
            .query(&mut observer)
            .unwrap();
        if held.is_held() {
            assert_eq!(
                owner.as_deref(),
                Some(token.as_str()),
                "held, says the guard"
            );
        }
    };

    let before = proxy.accepted();
    proxy.blackhole();
    let start = Instant::now();
    // A ping goes out every second and gets a command timeout (1 s) to answer: the connection is
    // replaced within about two seconds, and the new one shows up at the proxy.
    while proxy.accepted() == before && start.elapsed() < Duration::from_secs(3) {
        check_truthful();
        tokio::time::sleep(ms(20)).await;
    }
    let detected = start.elapsed();
    assert!(
        proxy.accepted() > before,
        "no new connection within {detected:?} of the blackhole"
    );
    println!("silent connection replaced after {detected:?}");
    assert!(detected < ms(2500), "replaced after {detected:?}");

    block_in_place(|| proxy.heal());
    let healed = Instant::now();

    // The client works through the proxy again.
    let mut works = false;
    while !works && healed.elapsed() < Duration::from_secs(3) {
        check_truthful();
        if let Ok(guard) = proxied.lock("probe").try_acquire().await {
            assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
            works = true;
        } else {
            tokio::time::sleep(ms(50)).await;
        }
    }
    assert!(works, "no lock through the proxy within 3 s of the heal");
    println!("client works again {:?} after the heal", healed.elapsed());

    // The held lock is renewed again (its validity now counts from a renewal sent after the
    // heal) or reported lost; never kept on the strength of the old lease.
    let renewed_after_heal = || held.valid_until() > healed + ms(2500);
    while held.lost_reason().is_none()
        && !renewed_after_heal()
        && healed.elapsed() < Duration::from_secs(3)
    {
        check_truthful();
        tokio::time::sleep(ms(20)).await;
    }
    check_truthful();
    match held.lost_reason() {
        Some(reason) => println!("held lock reported lost ({reason:?})"),
        None => {
            assert!(
                renewed_after_heal(),
                "neither renewed nor lost 3 s after the heal"
            );
            println!("held lock renewed {:?} after the heal", healed.elapsed());
        }
    }
    let was_lost = held.lost_reason().is_some();
    let outcome = held.release().await.unwrap();
    if !was_lost {
        assert_eq!(outcome, ReleaseOutcome::Released);
    }

    // The waiter: its connections were replaced too, and a release wakes it.
    let released = Instant::now();
    assert_eq!(blocker.release().await.unwrap(), ReleaseOutcome::Released);
    let (guard, acquired) = tokio::time::timeout(Duration::from_secs(8), wanted)
        .await
        .expect("the waiter ends within its deadline")
        .unwrap();
    let guard = guard.expect("the waiter gets the lock");
    let latency = acquired.saturating_duration_since(released);
    println!("waiter acquired {latency:?} after the release");
    assert!(latency < ms(1000), "acquired {latency:?} after the release");
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    assert_clean(&server);
}

/// Every connection of a waiting client is reset (RST) at once. The waiter reconnects,
/// subscribes again, and gets the lock when the holder releases it, whether the release comes
/// at once or a little later: never by sleeping out the holder's 10 s lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_whose_connections_are_reset_acquires_after_the_release() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let holder = client(&server).await;
    let proxied = Client::connect(&proxy.url()).await.unwrap();
    for release_after in [ms(0), ms(100), ms(300)] {
        let guard = holder
            .lock("a")
            .lease(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        let task = waiter(&proxied, "a", Duration::from_secs(3));
        assert!(eventually(ms(2000), || subscribers(&server, &channel("a")) == 1).await);
        let before = proxy.accepted();
        block_in_place(|| proxy.reset());
        tokio::time::sleep(release_after).await;
        let released = Instant::now();
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
        let (guard, acquired) = task.await.unwrap();
        let guard = guard.unwrap_or_else(|e| panic!("release {release_after:?} after: {e:?}"));
        let latency = acquired.saturating_duration_since(released);
        println!("reset, release {release_after:?} later: acquired {latency:?} after it");
        assert!(latency < ms(1000), "acquired {latency:?} after the release");
        assert!(proxy.accepted() > before, "the client did not reconnect");
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    }
    assert_clean(&server);
}

/// Redis dies while a client waits: the wait ends with `Unavailable` naming the server, not
/// with `Timeout` (which says the lock was seen held), no later than the deadline plus one
/// command timeout. A `try_acquire` against the dead server says the same.
#[tokio::test]
async fn an_outage_during_a_wait_is_unavailable_not_timeout() {
    let (mut server, holder) = setup().await;
    let locks = client(&server).await;
    let addr = server.addr();
    let _guard = holder
        .lock("a")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let wait = ms(1500);
    let start = Instant::now();
    let task = waiter(&locks, "a", wait);
    // The waiter has seen the lock held and sleeps on its channel.
    assert!(eventually(ms(1000), || subscribers(&server, &channel("a")) == 1).await);
    server.kill();
    let (r, returned) = task.await.unwrap();
    let waited = returned - start;
    println!("wait of {wait:?} during an outage ended after {waited:?}");
    let err = r.expect_err("no lock from a dead server");
    assert!(
        matches!(err, Error::Unavailable { addr: ref a, .. } if *a == addr),
        "{err:?}"
    );
    assert!(!err.is_contention());
    assert_eq!(err.to_string(), format!("redis at {addr} is unavailable"));
    // The default command timeout is 1 s.
    assert!(
        waited >= wait && waited <= wait + ms(1000) + ms(250),
        "returned after {waited:?}"
    );

    for name in ["a", "b"] {
        let start = Instant::now();
        let err = locks
            .lock(name)
            .try_acquire()
            .await
            .expect_err("dead server");
        let took = start.elapsed();
        assert!(
            matches!(err, Error::Unavailable { addr: ref a, .. } if *a == addr),
            "try_acquire({name}): {err:?}"
        );
        assert!(took <= ms(1250), "try_acquire({name}) took {took:?}");
    }
}

/// A wait that spans a short outage (Redis killed, back 300 ms later without the holder's
/// lock) gets the lock before its deadline: the refused attempts are retried within the wait.
/// The old holder's release then leaves the new owner alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_spanning_a_short_outage_acquires_before_its_deadline() {
    let (mut server, holder) = setup().await;
    let locks = client(&server).await;
    let old = holder
        .lock("a")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let wait = Duration::from_secs(5);
    let start = Instant::now();
    let task = waiter(&locks, "a", wait);
    assert!(eventually(ms(1000), || subscribers(&server, &channel("a")) == 1).await);
    server.kill();
    tokio::time::sleep(ms(300)).await;
    block_in_place(|| server.restart()).unwrap();
    let back = Instant::now();
    let (r, acquired) = task.await.unwrap();
    let guard = r.expect("the lock, after the outage");
    let after = acquired.saturating_duration_since(back);
    println!("acquired {after:?} after Redis answered again");
    assert!(acquired - start < wait);
    assert!(after < ms(2000), "acquired {after:?} after Redis was back");
    assert_eq!(old.release().await.unwrap(), ReleaseOutcome::NotOwner);
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    assert_clean(&server);
}

/// Warms Redis's script cache, as any earlier use of the scripts does.
async fn load_scripts(locks: &Client) {
    let mut guard = locks.lock("warm-up").fenced().acquire().await.unwrap();
    guard.extend(Duration::from_secs(5)).await.unwrap();
    guard.release().await.unwrap();
    let guard = locks.lock("warm-up").acquire().await.unwrap();
    guard.fencing_token().await.unwrap();
    guard.release().await.unwrap();
}

/// 300 ms of latency each way (600 ms round trips) against a 1 s command timeout: acquire,
/// renewals, fencing, release and a woken waiter all work, and no heartbeat mistakes the slow
/// connection for a silent one (no reconnect).
#[tokio::test]
async fn locks_work_through_300ms_of_latency() {
    let server = RedisServer::start().unwrap();
    let direct = client(&server).await;
    load_scripts(&direct).await;
    let proxy = FaultProxy::start(&server).unwrap();
    let proxied = Client::connect(&proxy.url()).await.unwrap();
    proxy.delay(ms(300));
    let connections = proxy.accepted();

    // A watchdog lease of 2 s, renewed every 667 ms, each renewal a 600 ms round trip.
    let guard = proxied
        .lock("a")
        .watchdog(ms(2000))
        .acquire()
        .await
        .unwrap();
    guard.fencing_token().await.unwrap();
    tokio::select! {
        _ = tokio::time::sleep(ms(2500)) => {}
        _ = guard.lost() => panic!("lost through latency: {:?}", guard.lost_reason()),
    }
    assert!(guard.is_held());
    assert!(direct.inspect("a").await.unwrap().ttl.unwrap() > ms(500));
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);

    // A waiter through the latency is woken by a release.
    let blocker = direct
        .lock("b")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let task = waiter(&proxied, "b", Duration::from_secs(5));
    assert!(eventually(ms(3000), || subscribers(&server, &channel("b")) == 1).await);
    let released = Instant::now();
    assert_eq!(blocker.release().await.unwrap(), ReleaseOutcome::Released);
    let (r, acquired) = task.await.unwrap();
    let theirs = r.expect("the waiter gets the lock");
    let latency = acquired - released;
    println!("through 300 ms latency: acquired {latency:?} after the release");
    // The publish (300 ms) and one more SET round trip (600 ms).
    assert!(latency < ms(1500), "acquired {latency:?} after the release");
    assert_eq!(theirs.release().await.unwrap(), ReleaseOutcome::Released);

    assert_eq!(
        proxy.accepted(),
        connections,
        "a slow connection was replaced"
    );
    assert_clean(&server);
}

/// The same latency when Redis has no script cached: right after it started, and after a
/// restart or failover emptied its cache under a connected client (`SCRIPT FLUSH` here). The
/// first `extend` and `release` must still succeed with a 1 s command timeout, although a
/// script unknown to the server needs two round trips (`EVALSHA`, then `EVAL`), 1.2 s here:
/// each round trip gets the command timeout, not the call as a whole.
#[tokio::test]
async fn extend_and_release_work_through_300ms_of_latency_with_no_script_cached() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let proxied = Client::connect(&proxy.url()).await.unwrap();
    proxy.delay(ms(300));
    // Every step runs, and the failure lists all that went wrong.
    let mut problems = Vec::new();
    let mut guard = proxied.lock("a").lease(ms(5000)).acquire().await.unwrap();
    if let Err(err) = guard.extend(ms(5000)).await {
        problems.push(format!("fresh server: extend: {err:?}"));
    }
    match guard.release().await {
        Ok(ReleaseOutcome::Released) => {}
        other => problems.push(format!("fresh server: release: {other:?}")),
    }

    crate::util::raw(&server, &["SCRIPT", "FLUSH"]);
    // Another lock: a failed release above leaves "a" taken until its lease ends.
    let guard = proxied.lock("b").lease(ms(5000)).acquire().await.unwrap();
    match guard.release().await {
        Ok(ReleaseOutcome::Released) => {}
        other => problems.push(format!("cache flushed: release: {other:?}")),
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_clean(&server);
}
