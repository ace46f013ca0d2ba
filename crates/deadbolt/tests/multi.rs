use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadbolt::{Client, Error};
use deadbolt_testkit::RedisMasters;

use crate::util::{assert_clean, client, ms, setup};

/// Two clients take overlapping sets in opposite orders, over and over: every acquisition
/// succeeds (no deadlock: each would otherwise hold a part the other waits for), no name ever
/// has two holders, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_sets_in_opposite_orders_never_deadlock() {
    let (server, a) = setup().await;
    let b = client(&server).await;
    let holders: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let sets: [(Client, usize, Vec<&str>); 4] = [
        (a.clone(), 0, vec!["a", "b", "c"]),
        (b.clone(), 1, vec!["c", "b", "a"]),
        (a.clone(), 2, vec!["d", "b"]),
        (b.clone(), 3, vec!["b", "d", "a"]),
    ];
    let mut tasks = Vec::new();
    for (locks, who, names) in sets {
        let holders = holders.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let all = locks
                    .multi_lock(names.clone())
                    .wait(Duration::from_secs(10))
                    .lease(Duration::from_secs(5))
                    .acquire()
                    .await
                    .unwrap();
                for name in &names {
                    let before = holders.lock().unwrap().insert(name.to_string(), who);
                    assert!(before.is_none(), "{name} held by {before:?} and {who}");
                }
                tokio::task::yield_now().await;
                for name in &names {
                    holders.lock().unwrap().remove(*name);
                }
                all.release().await.unwrap();
            }
        }));
    }
    let all = async {
        for task in tasks {
            task.await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("deadlocked");
    assert_clean(&server);
}

/// One name of the set held elsewhere: the wait runs out, and no other name stays held.
#[tokio::test]
async fn all_or_nothing() {
    let (server, a) = setup().await;
    let b = client(&server).await;
    let held = b.lock("b").acquire().await.unwrap();
    let err = a
        .multi_lock(["c", "b", "a"])
        .wait(ms(300))
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { ref name, .. } if name == "b"),
        "{err:?}"
    );
    for name in ["a", "c"] {
        assert!(!a.is_locked(name).await.unwrap(), "{name} was left held");
    }
    held.release().await.unwrap();
    assert_clean(&server);
}

/// Uncontended on one server, the whole set costs one script call, not one command per name.
#[tokio::test]
async fn one_round_trip_on_one_server() {
    let (server, locks) = setup().await;
    server.reset_stats();
    let all = locks
        .multi_lock(["x", "y", "z", "w"])
        .acquire()
        .await
        .unwrap();
    let calls = server.command_calls();
    let count = |c: &str| calls.get(c).copied().unwrap_or(0);
    assert_eq!(count("evalsha") + count("eval"), 1, "{calls:?}");
    assert_eq!(count("set"), 4, "{calls:?}"); // inside the script
    assert_eq!(all.guards().len(), 4);
    all.release().await.unwrap();
    assert_clean(&server);
}

/// Losing any one lock of the set fires the set's lost signal.
#[tokio::test]
async fn losing_one_lock_loses_the_set() {
    let (server, locks) = setup().await;
    let all = locks
        .multi_lock(["p", "q"])
        .watchdog(ms(600))
        .acquire()
        .await
        .unwrap();
    crate::util::raw(&server, &["DEL", "deadbolt:{q}"]);
    tokio::time::timeout(Duration::from_secs(2), all.lost())
        .await
        .expect("lost signal");
    drop(all);
}

/// Under Redlock each name is a quorum lock of its own, taken in order.
#[tokio::test]
async fn multi_lock_over_redlock() {
    let masters = RedisMasters::start(3).unwrap();
    let locks = Client::redlock(masters.urls()).connect().await.unwrap();
    let all = locks.multi_lock(["m1", "m2"]).acquire().await.unwrap();
    let other = Client::redlock(masters.urls()).connect().await.unwrap();
    let err = other
        .multi_lock(["m2", "m3"])
        .wait(ms(200))
        .acquire()
        .await
        .unwrap_err();
    assert!(err.is_contention(), "{err:?}");
    all.release().await.unwrap();
    other
        .multi_lock(["m2", "m3"])
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    for server in masters.servers() {
        assert_clean(server);
    }
}

#[tokio::test]
async fn bad_sets_are_refused_before_anything_is_sent() {
    let (server, locks) = setup().await;
    let none: [&str; 0] = [];
    for err in [
        locks.multi_lock(none).acquire().await.unwrap_err(),
        locks.multi_lock(["a", "a"]).acquire().await.unwrap_err(),
        locks.multi_lock(["a", ""]).acquire().await.unwrap_err(),
    ] {
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    }
    assert!(server.keys().is_empty());
}

/// A lock of the set taken early whose fixed lease runs out while a later one is waited for is
/// not handed out expired: the set is taken again, and every guard returned is held.
#[tokio::test]
async fn no_lock_of_a_returned_set_has_expired() {
    let (server, locks) = setup().await;
    let other = client(&server).await;
    let b = other.lock("b").lease(ms(600)).acquire().await.unwrap();
    let set = locks
        .multi_lock(["a", "b"])
        .lease(ms(300))
        .wait(Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    for guard in set.guards() {
        assert!(guard.is_held(), "{} was handed out expired", guard.name());
    }
    set.release().await.unwrap();
    drop(b);
}
