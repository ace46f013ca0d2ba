use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use deadbolt::{Error, Lease, LockOptions};

use crate::util::{assert_clean, client, ms, setup};

#[derive(Debug)]
enum AppError {
    Lock(Error),
    Business(&'static str),
}

impl From<Error> for AppError {
    fn from(e: Error) -> Self {
        AppError::Lock(e)
    }
}

const OPTS: LockOptions =
    LockOptions::new(Duration::from_secs(1), Lease::Fixed(Duration::from_secs(5)));

#[tokio::test]
async fn with_lock_holds_the_lock_around_the_body_and_releases_after() {
    let (server, locks) = setup().await;
    let probe = client(&server).await;
    let fence = locks
        .with_lock("a", OPTS, |scope| {
            let probe = probe.clone();
            async move {
                assert!(probe.is_locked("a").await?, "held while the body runs");
                Ok::<_, AppError>(scope.fencing_token().await?)
            }
        })
        .await
        .unwrap();
    assert!(fence > 0);
    assert!(
        !locks.is_locked("a").await.unwrap(),
        "released after the body"
    );
    // The body's own error comes back as is, and the lock is released too.
    let err = locks
        .with_lock("a", OPTS, |_| async {
            Err::<(), _>(AppError::Business("sold out"))
        })
        .await
        .unwrap_err();
    assert!(matches!(err, AppError::Business("sold out")));
    assert!(!locks.is_locked("a").await.unwrap());
    assert_clean(&server);
}

#[tokio::test]
async fn with_lock_times_out_into_the_callers_error_type() {
    let (server, locks) = setup().await;
    let other = client(&server).await;
    let guard = other.lock("a").acquire().await.unwrap();
    let ran = AtomicBool::new(false);
    let quick = LockOptions::new(ms(100), Lease::Fixed(Duration::from_secs(5)));
    let err = locks
        .with_lock("a", quick, |_| async {
            ran.store(true, Ordering::SeqCst);
            Ok::<_, AppError>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Lock(Error::Timeout { .. })),
        "{err:?}"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "the body must not run without the lock"
    );
    guard.release().await.unwrap();
    assert_clean(&server);
}

/// The lock is lost mid-body: the body is cancelled at its next await point, and the call
/// returns `LockLost`.
#[tokio::test]
async fn with_lock_cancels_the_body_when_the_lock_is_lost() {
    let (server, locks) = setup().await;
    let finished = Arc::new(AtomicBool::new(false));
    let short = LockOptions::new(ms(100), Lease::Fixed(ms(300)));
    let start = std::time::Instant::now();
    let err = locks
        .with_lock("a", short, |_| {
            let finished = finished.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                finished.store(true, Ordering::SeqCst);
                Ok::<_, AppError>(())
            }
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppError::Lock(Error::LockLost { .. })),
        "{err:?}"
    );
    assert!(
        start.elapsed() < ms(600),
        "noticed after {:?}",
        start.elapsed()
    );
    assert!(!finished.load(Ordering::SeqCst));
    tokio::time::sleep(ms(100)).await;
    assert_clean(&server);
}
