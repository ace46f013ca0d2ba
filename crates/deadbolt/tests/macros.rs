use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadbolt::{Client, Error, locked};
use redis::AsyncCommands;

use crate::util::{assert_clean, client, ms, setup};

/// An application's error type: lock errors come in through `From`, as `#[locked]` requires.
#[derive(Debug)]
enum AppError {
    Lock(Error),
    // Only shown through `Debug` when a test fails.
    Redis(#[allow(dead_code)] redis::RedisError),
    SoldOut,
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Lock(e)
    }
}

impl From<redis::RedisError> for AppError {
    fn from(e: redis::RedisError) -> Self {
        AppError::Redis(e)
    }
}

/// A counter in Redis bumped with a non-atomic GET, yield, SET: correct only under the lock.
struct Counter {
    locks: Client,
    /// Set while a body runs, to catch two at once.
    inside: Arc<AtomicBool>,
}

impl Counter {
    #[locked(key = "counter:{id}", client = self.locks, lease = "5s", wait = "30s")]
    async fn bump(&self, id: u32) -> Result<(), AppError> {
        assert!(
            !self.inside.swap(true, Ordering::SeqCst),
            "two holders at once"
        );
        let mut conn = self.locks.connection();
        let key = format!("count:{id}");
        let n: u64 = conn.get::<_, Option<u64>>(&key).await?.unwrap_or(0);
        tokio::task::yield_now().await;
        let () = conn.set(&key, n + 1).await?;
        self.inside.store(false, Ordering::SeqCst);
        Ok(())
    }
}

const BUMPS: usize = 300;

/// 2 clients × 16 tasks bump one counter through a `#[locked]` method: no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locked_method_serializes_a_non_atomic_counter_across_clients() {
    let (server, first) = setup().await;
    let inside = Arc::new(AtomicBool::new(false));
    let counters = [first, client(&server).await].map(|locks| {
        Arc::new(Counter {
            locks,
            inside: inside.clone(),
        })
    });
    let claimed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for counter in &counters {
        for _ in 0..16 {
            let (counter, claimed) = (counter.clone(), claimed.clone());
            tasks.push(tokio::spawn(async move {
                while claimed.fetch_add(1, Ordering::SeqCst) < BUMPS {
                    counter.bump(7).await.unwrap();
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut conn = counters[0].locks.connection();
    let count: usize = conn.get("count:7").await.unwrap();
    assert_eq!(count, BUMPS, "lost updates");
    let () = conn.del("count:7").await.unwrap();
    assert_clean(&server);
}

/// Takes the lock, and tells whether `probe` (another client) saw it held from inside the body.
#[locked(key = "held:{id}", client = locks, lease = "5s")]
async fn seen_held(locks: &Client, probe: &Client, id: u32) -> Result<bool, AppError> {
    Ok(probe.is_locked(&format!("held:{id}")).await?)
}

/// Fails with the application's own error after it checked stock.
#[locked(key = "held:{id}", client = locks, lease = "5s")]
async fn sold_out(locks: &Client, id: u32) -> Result<(), AppError> {
    if id > 0 {
        return Err(AppError::SoldOut);
    }
    Ok(())
}

#[tokio::test]
async fn locked_fn_holds_the_lock_during_the_body_and_releases_after() {
    let (server, locks) = setup().await;
    let probe = client(&server).await;
    assert!(seen_held(&locks, &probe, 1).await.unwrap());
    assert!(
        !probe.is_locked("held:1").await.unwrap(),
        "released after the body"
    );
    // An early `return Err(..)` comes back as is, and releases the lock too.
    let err = sold_out(&locks, 1).await.unwrap_err();
    assert!(matches!(err, AppError::SoldOut), "{err:?}");
    assert!(!probe.is_locked("held:1").await.unwrap());
    assert_clean(&server);
}

struct Order {
    id: u64,
}

/// The key reads a field of a parameter; the body gets the lock scope as `lock`.
#[locked(key = "order:{order.id}", client = locks, wait = "1s", guard = lock)]
async fn ship(locks: &Client, probe: &Client, order: Order) -> Result<(String, bool), AppError> {
    assert!(lock.fencing_token().await? > 0);
    let held = probe.is_locked(&format!("order:{}", order.id)).await?;
    Ok((lock.name().to_owned(), held))
}

#[tokio::test]
async fn key_templates_read_fields_of_parameters() {
    let (server, locks) = setup().await;
    let probe = client(&server).await;
    let (name, held) = ship(&locks, &probe, Order { id: 42 }).await.unwrap();
    assert_eq!(name, "order:42");
    assert!(held, "the lock named from the template was held");
    assert!(!probe.is_locked("order:42").await.unwrap());
    assert_clean(&server);
}

/// A body that outlives its fixed lease.
#[locked(key = "slow", client = locks, lease = "200ms", wait = "1s")]
async fn too_slow(locks: &Client, finished: &AtomicBool) -> Result<(), AppError> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    finished.store(true, Ordering::SeqCst);
    Ok(())
}

/// The lease runs out mid-body: the body is cancelled at its await point and the function
/// returns `LockLost` through `From`, soon after the lease ends rather than when the body would
/// have finished.
#[tokio::test]
async fn a_lock_lost_mid_body_cancels_the_body_and_returns_lock_lost() {
    let (server, locks) = setup().await;
    let finished = AtomicBool::new(false);
    let start = Instant::now();
    let err = too_slow(&locks, &finished).await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(
        matches!(&err, AppError::Lock(Error::LockLost { name }) if name == "slow"),
        "{err:?}"
    );
    assert!(elapsed < ms(500), "noticed after {elapsed:?}");
    assert!(!finished.load(Ordering::SeqCst), "the body must not finish");
    tokio::time::sleep(ms(100)).await;
    assert_clean(&server);
}

/// Waits at most 100 ms for the lock.
#[locked(key = "busy:{id}", client = locks, wait = "100ms", lease = "5s")]
async fn impatient(locks: &Client, id: u32, ran: &AtomicBool) -> Result<(), AppError> {
    ran.store(true, Ordering::SeqCst);
    Ok(())
}

#[tokio::test]
async fn a_held_lock_times_out_into_the_callers_error_and_the_body_never_runs() {
    let (server, locks) = setup().await;
    let other = client(&server).await;
    let guard = other.lock("busy:3").acquire().await.unwrap();
    let ran = AtomicBool::new(false);
    let start = Instant::now();
    let err = impatient(&locks, 3, &ran).await.unwrap_err();
    assert!(
        matches!(&err, AppError::Lock(Error::Timeout { name, .. }) if name == "busy:3"),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        !ran.load(Ordering::SeqCst),
        "the body must not run without the lock"
    );
    guard.release().await.unwrap();
    assert_clean(&server);
}
