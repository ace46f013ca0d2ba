use std::future::Future;
use std::task::{Context, Waker};
use std::time::Duration;

use deadbolt::Client;
use deadbolt_testkit::RedisServer;

use crate::util::{assert_clean, client, eventually, ms, setup, subscribers};

/// Stalls the server for `secs` from another thread (`DEBUG SLEEP`), and returns once the sleep
/// has begun: commands sent meanwhile sit unanswered, so a future can be dropped at a known
/// point, after its command was sent and before the reply.
fn stall(server: &RedisServer, secs: f64) -> std::thread::JoinHandle<()> {
    let mut conn = server.connection();
    let busy = std::thread::spawn(move || {
        let _: () = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(secs)
            .query(&mut conn)
            .unwrap();
    });
    // The sleep has begun once a PING from another connection goes unanswered for a while.
    std::thread::sleep(Duration::from_millis(50));
    busy
}

fn debug_server() -> RedisServer {
    RedisServer::builder()
        .arg("--enable-debug-command")
        .arg("yes")
        .start()
        .unwrap()
}

/// An `acquire` dropped after its `SET` was sent and before the reply (the server is stalled
/// in between) leaves no lock behind: the `SET` lands after the drop, and the release sent on
/// drop follows it on the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_dropped_with_its_set_in_flight_leaves_no_lock() {
    let server = debug_server();
    let locks = Client::connect(&server.url()).await.unwrap();
    let stalled = stall(&server, 0.3);
    let mut acquire = Box::pin(locks.lock("a").lease(Duration::from_secs(30)).acquire());
    // One poll runs the acquisition up to its first await: the SET is sent.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(acquire.as_mut().poll(&mut cx).is_pending());
    tokio::time::sleep(ms(50)).await;
    drop(acquire);
    stalled.join().unwrap();
    assert!(
        eventually(ms(2000), || server.keys().is_empty()).await,
        "a lock was left behind: {:?}",
        server.keys()
    );
    // The SET did run (this is the case under test), and so did the release after it.
    let calls = server.command_calls();
    assert_eq!(calls.get("set"), Some(&1), "{calls:?}");
    assert!(
        calls.contains_key("evalsha") || calls.contains_key("eval"),
        "{calls:?}"
    );
    crate::util::take_and_release(&locks, "a").await;
}

/// A `MultiLock::acquire` dropped while its one-script try is in flight (sent, not answered)
/// leaves none of its keys held: the release sent on drop follows the script on its
/// connection, and the same client can take the names again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_lock_dropped_with_its_script_in_flight_leaves_no_lock() {
    let server = debug_server();
    let locks = Client::connect(&server.url()).await.unwrap();
    let stalled = stall(&server, 0.3);
    let mut acquire = Box::pin(
        locks
            .multi_lock(["m1", "m2", "m3"])
            .lease(Duration::from_secs(30))
            .acquire(),
    );
    let mut cx = Context::from_waker(Waker::noop());
    assert!(acquire.as_mut().poll(&mut cx).is_pending());
    tokio::time::sleep(ms(50)).await;
    drop(acquire);
    stalled.join().unwrap();
    assert!(
        eventually(ms(2000), || server.keys().is_empty()).await,
        "locks were left behind: {:?}",
        server.keys()
    );
    let again = locks
        .multi_lock(["m1", "m2", "m3"])
        .wait(ms(500))
        .acquire()
        .await
        .expect("the same client takes its names again");
    again.release().await.unwrap();
    assert_clean(&server);
}

/// When the deadline passes while an attempt is in flight (the holder's key expires while the
/// server is stalled, so the attempt lands late), `acquire` returns either the lock or an
/// error — and in the error case nothing holds its token when it returns: the clean-up is
/// awaited, not left to a background task that a process exiting right after would never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_passing_mid_attempt_leaves_no_lock_behind() {
    let server = debug_server();
    let locks = Client::connect(&server.url()).await.unwrap();
    for round in 0..3u64 {
        // A peer's lock (no deadbolt token: the waiter re-checks every ~50 ms) that expires
        // during the stall.
        crate::util::raw(&server, &["SET", "deadbolt:{a}", "peer", "PX", "150"]);
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock("a").wait(ms(120 + round * 10)).acquire().await })
        };
        tokio::time::sleep(ms(90)).await;
        let stalled = stall(&server, 0.25);
        let outcome = waiter.await.unwrap();
        stalled.join().unwrap();
        let left = server.keys();
        match outcome {
            Ok(guard) => {
                assert_eq!(left, ["deadbolt:{a}"]);
                guard.release().await.unwrap();
            }
            Err(err) => {
                assert!(err.is_contention(), "{err:?}");
                let holder: Option<String> = redis::cmd("GET")
                    .arg("deadbolt:{a}")
                    .query(&mut server.connection())
                    .unwrap();
                assert!(
                    !holder.as_deref().unwrap_or("").starts_with("dbt2-"),
                    "round {round}: a deadbolt token was left after {err}"
                );
            }
        }
        crate::util::raw(&server, &["DEL", "deadbolt:{a}"]);
    }
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

/// A `release()` dropped after its script was sent and before the reply falls back to the
/// guard's drop, which releases again: the lock is free long before its 30 s lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_release_still_releases() {
    let server = debug_server();
    let locks = Client::connect(&server.url()).await.unwrap();
    let guard = locks
        .lock("a")
        .lease(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let stalled = stall(&server, 0.3);
    let mut release = Box::pin(guard.release());
    let mut cx = Context::from_waker(Waker::noop());
    assert!(release.as_mut().poll(&mut cx).is_pending());
    tokio::time::sleep(ms(50)).await;
    drop(release);
    stalled.join().unwrap();
    assert!(
        eventually(ms(2000), || server.keys().is_empty()).await,
        "the lock was left for its lease: {:?}",
        server.keys()
    );
    let other = client(&server).await;
    crate::util::take_and_release(&other, "a").await;
}

/// A guard dropped where no runtime runs (a plain thread) while a `LockScope` of it lives on
/// does not hold up this client's line: its next task gets the lock once the lease is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_dropped_outside_a_runtime_frees_the_local_line() {
    let (server, locks) = setup().await;
    let guard = locks.lock("a").lease(ms(300)).acquire().await.unwrap();
    let scope = guard.scope();
    std::thread::spawn(move || drop(guard)).join().unwrap();
    let started = std::time::Instant::now();
    let next = locks.lock("a").wait(ms(3000)).acquire().await.unwrap();
    assert!(
        started.elapsed() < ms(1500),
        "waited {:?}",
        started.elapsed()
    );
    next.release().await.unwrap();
    drop(scope);
    assert_clean(&server);
}
