use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deadbolt::{Client, ReleaseOutcome};
use deadbolt_testkit::RedisCluster;
use tokio::time::Instant;

use crate::util::ms;

async fn cluster_client(cluster: &RedisCluster) -> Client {
    Client::cluster(cluster.urls())
        .connect()
        .await
        .expect("connect")
}

/// Lock keys (not fencing counters) left on any master.
fn lock_keys(cluster: &RedisCluster) -> Vec<String> {
    let mut keys = Vec::new();
    for master in cluster.masters().unwrap() {
        keys.extend(crate::util::lock_keys(master));
    }
    keys
}

/// Many names over every master: each lock key lands on the master of its slot, fencing and
/// renewal work (renewal batches hold keys of one slot each, or the Cluster refuses them with
/// CROSSSLOT), and release leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_spread_over_every_master_and_renew_per_slot() {
    let cluster = RedisCluster::start().unwrap();
    let locks = cluster_client(&cluster).await;
    let mut guards = Vec::new();
    for i in 0..40 {
        let guard = locks
            .lock(format!("movie:{i}"))
            .watchdog(ms(600))
            .acquire()
            .await
            .unwrap();
        guard.fencing_token().await.unwrap();
        guards.push(guard);
    }
    let mut masters = HashSet::new();
    for i in 0..40 {
        let key = locks.keys(&format!("movie:{i}")).unwrap().lock;
        let master = cluster.master_for_key(&key).unwrap();
        assert!(
            master.keys().contains(&key),
            "{key} is not on its slot's master"
        );
        masters.insert(master.port());
    }
    assert_eq!(masters.len(), 3, "40 names should reach every master");
    // Several renewals (every 200 ms): a CROSSSLOT batch would fail and lose every lock.
    tokio::time::sleep(ms(1500)).await;
    for guard in guards {
        assert!(guard.lost_reason().is_none(), "{} was lost", guard.name());
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    }
    assert!(lock_keys(&cluster).is_empty());
}

/// Two clients, several tasks, one name: one holder at a time; a waiter is woken by the release
/// over sharded pub/sub, not by the holder's lease running out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_locks_exclude_and_wake_waiters() {
    let cluster = RedisCluster::start().unwrap();
    let (a, b) = (
        cluster_client(&cluster).await,
        cluster_client(&cluster).await,
    );
    let inside = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for locks in [&a, &b] {
        for _ in 0..3 {
            let (locks, inside, done) = (locks.clone(), inside.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..20 {
                    let guard = locks
                        .lock("stock")
                        .lease(Duration::from_secs(30))
                        .wait(Duration::from_secs(20))
                        .acquire()
                        .await
                        .unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    tokio::task::yield_now().await;
                    inside.store(false, Ordering::SeqCst);
                    guard.release().await.unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
    }
    let started = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 120);
    // With 30 s leases, any wait that missed its wake-up would take 30 s.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(lock_keys(&cluster).is_empty());
}

/// Kill the master of a lock's slot: once its replica is promoted, the same client takes and
/// releases locks on that slot again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_keep_working_after_a_failover() {
    let mut cluster = RedisCluster::start().unwrap();
    let locks = cluster_client(&cluster).await;
    let key = locks.keys("after-failover").unwrap().lock;
    let port = cluster.master_for_key(&key).unwrap().port();
    locks
        .lock("after-failover")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    cluster.kill(port);
    cluster
        .wait_for_failover(port, Duration::from_secs(20))
        .unwrap();
    let guard = locks
        .lock("after-failover")
        .wait(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    assert_ne!(cluster.master_for_key(&key).unwrap().port(), port);
    guard.fencing_token().await.unwrap();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
}
