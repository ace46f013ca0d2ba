//! The paths where a command runs but its reply is late or lost, and the history checker's
//! negative control. The test kit's `FaultProxy` holds or drops *replies only* here: Redis ran
//! the command, the client does not know it. (Stalling Redis before a command is the safe case
//! that the other fault tests cover.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadbolt::Client;
use deadbolt_testkit::history::{self, History, Report};
use deadbolt_testkit::{FaultProxy, RedisServer};

use crate::util::{assert_clean, client, ms};

/// A client whose commands go through `proxy` and time out after 100 ms, with the bug of
/// counting validity from the retry brought back when `bug` is set.
async fn through(proxy: &FaultProxy, bug: bool) -> Client {
    let builder = Client::builder(&proxy.url()).command_timeout(ms(100));
    let builder = if bug {
        builder.negative_control_validity_from_retry()
    } else {
        builder
    };
    builder.connect().await.unwrap()
}

/// Takes lock `x` while the replies of its first tries are held past the command timeout: the
/// first `SET` lands, its reply comes too late, and a later try finds its own token. Returns the
/// guard and the server's expiry of the key, read right after.
async fn acquire_after_a_late_reply(
    server: &RedisServer,
    proxy: &FaultProxy,
    locks: &Client,
) -> (deadbolt::LockGuard, Instant) {
    proxy.hold_replies(ms(300));
    let acquire = locks.lock("x").lease(ms(1000)).wait(ms(3000)).acquire();
    let heal = async {
        tokio::time::sleep(ms(150)).await;
        proxy.hold_replies(Duration::ZERO);
    };
    let (guard, ()) = tokio::join!(acquire, heal);
    let guard = guard.expect("acquired once replies flow again");
    let pttl: i64 = redis::cmd("PTTL")
        .arg("deadbolt:{x}")
        .query(&mut server.connection())
        .unwrap();
    (guard, Instant::now() + Duration::from_millis(pttl as u64))
}

/// The guard never claims validity past the key's expiry on the server, though the try that
/// took the lock found it already there from an earlier try whose reply was late. With the
/// bug brought back, the same run claims more than the server gives: the test can fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validity_after_a_late_reply_never_outlives_the_key() {
    for bug in [false, true] {
        let server = RedisServer::start().unwrap();
        let proxy = FaultProxy::start(&server).unwrap();
        let locks = through(&proxy, bug).await;
        let (guard, expires) = acquire_after_a_late_reply(&server, &proxy, &locks).await;
        // PTTL has millisecond resolution.
        let over = guard
            .valid_until()
            .saturating_duration_since(expires + ms(2));
        if bug {
            assert!(over > ms(100), "the bug went unseen: over by {over:?}");
        } else {
            assert_eq!(over, Duration::ZERO, "valid {over:?} past the key's expiry");
        }
        guard.release().await.unwrap();
        assert_clean(&server);
    }
}

/// One run of the late-reply schedule, recorded: A takes the lock through the proxy while its
/// first replies are held, and holds it for as long as it believes it may; B, direct, waits for
/// it. Returns what the checker says of the history.
async fn late_reply_history(bug: bool) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(History::create(dir.path().join("history.jsonl")).unwrap());
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let a = through(&proxy, bug).await;
    let b = client(&server).await;

    let holder = {
        let history = history.clone();
        async move {
            let acq = history.begin("x");
            history.fault("replies held 300 ms");
            let (guard, _) = acquire_after_a_late_reply(&server, &proxy, &a).await;
            history.acquired(&acq, guard.valid_until(), None);
            // Holds for as long as it believes it holds the lock.
            let until = tokio::time::Instant::from_std(guard.valid_until());
            tokio::select! {
                _ = guard.lost() => history.lost(&acq),
                _ = tokio::time::sleep_until(until - ms(5)) => {}
            }
            history.release_sent(&acq);
            let outcome = guard.release().await;
            history.release_returned(&acq, &format!("{outcome:?}"));
            server
        }
    };
    let waiter = {
        let history = history.clone();
        async move {
            // After A's first try has landed.
            tokio::time::sleep(ms(200)).await;
            let acq = history.begin("x");
            let guard = b.lock("x").lease(ms(1000)).wait(ms(3000)).acquire().await;
            let guard = guard.expect("B gets the lock once A's key expires");
            history.acquired(&acq, guard.valid_until(), None);
            tokio::time::sleep(ms(20)).await;
            history.release_sent(&acq);
            let outcome = guard.release().await;
            history.release_returned(&acq, &format!("{outcome:?}"));
        }
    };
    let (server, ()) = tokio::join!(holder, waiter);
    assert_clean(&server);
    history::check_file(history.path()).unwrap()
}

/// The checker's negative control: the same schedule, with and without the bug of counting
/// validity from the retry. Without it the checker finds nothing; with it, it finds the two
/// holders, so a clean report from the checker means something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_validity_counted_from_the_retry() {
    let sound = late_reply_history(false).await;
    println!("without the bug:\n{sound}");
    assert!(sound.is_ok(), "{sound}");
    assert_eq!(sound.acquisitions, 2);
    let buggy = late_reply_history(true).await;
    println!("with the bug:\n{buggy}");
    assert!(!buggy.is_ok(), "the checker missed the bug:\n{buggy}");
}

/// A try whose reply takes the whole lease (here: 200 ms each way, a 300 ms lease) leaves no
/// validity: it is not handed out, and the next try, which finds the key still set by that
/// send, renews it before it counts any validity. Found by `deadbolt check`: the next try used to
/// count from its own send, past the key's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_that_took_the_whole_lease_is_counted_from_its_send() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let locks = Client::builder(&proxy.url())
        .command_timeout(ms(2000))
        .connect()
        .await
        .unwrap();
    proxy.delay(ms(200));
    let acquire = locks.lock("x").lease(ms(300)).wait(ms(3000)).acquire();
    let heal = async {
        tokio::time::sleep(ms(250)).await;
        proxy.delay(Duration::ZERO);
    };
    let (guard, ()) = tokio::join!(acquire, heal);
    let guard = guard.expect("acquired once the delay is gone");
    let pttl: i64 = redis::cmd("PTTL")
        .arg("deadbolt:{x}")
        .query(&mut server.connection())
        .unwrap();
    let expires = Instant::now() + Duration::from_millis(pttl.max(0) as u64);
    assert!(guard.is_held(), "handed out without validity");
    let over = guard
        .valid_until()
        .saturating_duration_since(expires + ms(2));
    assert_eq!(over, Duration::ZERO, "valid {over:?} past the key's expiry");
    guard.release().await.unwrap();
    assert_clean(&server);
}

/// When every reply takes longer than the lease, no try leaves any validity: `acquire` gives up
/// at its deadline (Redis answers, too slowly for this lease) instead of trying forever, and
/// leaves no lock behind once its clean-up and the lease have run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_slower_than_the_lease_end_at_the_deadline() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let locks = Client::builder(&proxy.url())
        .command_timeout(ms(2000))
        .connect()
        .await
        .unwrap();
    proxy.delay(ms(100));
    let start = Instant::now();
    let taken = tokio::time::timeout(
        Duration::from_secs(5),
        locks.lock("x").lease(ms(50)).wait(ms(600)).acquire(),
    )
    .await
    .expect("acquire went on past its deadline");
    let err = taken.expect_err("a lock without validity was handed out");
    assert!(
        matches!(err, deadbolt::Error::Unavailable { .. }),
        "{err:?}"
    );
    assert!(
        start.elapsed() < ms(1500),
        "returned after {:?}",
        start.elapsed()
    );
    proxy.delay(Duration::ZERO);
    assert!(
        crate::util::eventually(ms(2000), || server.keys().is_empty()).await,
        "left behind: {:?}",
        server.keys()
    );
}
