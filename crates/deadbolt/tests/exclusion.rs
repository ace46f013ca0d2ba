use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use redis::AsyncCommands;

use crate::util::{assert_clean, client, setup};

const INCREMENTS: usize = 2000;

/// 3 clients (separate connections) × 32 tasks increment a counter in Redis with a non-atomic
/// GET, await, SET. Without mutual exclusion, updates would be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_serializes_a_non_atomic_counter_across_clients() {
    let (server, first) = setup().await;
    let clients = [first, client(&server).await, client(&server).await];
    let claimed = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::with_capacity(INCREMENTS)));

    let mut tasks = Vec::new();
    for locks in &clients {
        for _ in 0..32 {
            let (locks, claimed, inside, tokens) = (
                locks.clone(),
                claimed.clone(),
                inside.clone(),
                tokens.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut conn = locks.connection();
                while claimed.fetch_add(1, Ordering::SeqCst) < INCREMENTS {
                    let guard = locks
                        .lock("counter")
                        .wait(Duration::from_secs(30))
                        .acquire()
                        .await
                        .unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    let token = guard.fencing_token().await.unwrap();
                    tokens.lock().unwrap().push(token);
                    let n: u64 = conn.get("count").await.unwrap_or(0);
                    tokio::task::yield_now().await;
                    let _: () = conn.set("count", n + 1).await.unwrap();
                    inside.store(false, Ordering::SeqCst);
                    guard.release().await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }

    let mut conn = clients[0].connection();
    let count: usize = conn.get("count").await.unwrap();
    assert_eq!(count, INCREMENTS, "lost updates");
    let tokens = std::mem::take(&mut *tokens.lock().unwrap());
    assert_eq!(tokens.len(), INCREMENTS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens seen in the critical section must strictly increase"
    );
    let _: () = conn.del("count").await.unwrap();
    assert_clean(&server);
}

/// Different names do not exclude each other.
#[tokio::test]
async fn different_names_are_independent() {
    let (server, locks) = setup().await;
    let a = locks.lock("a").try_acquire().await.unwrap();
    let b = locks.lock("b").try_acquire().await.unwrap();
    a.release().await.unwrap();
    b.release().await.unwrap();
    assert_clean(&server);
}
