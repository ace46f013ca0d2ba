//! ACL users without rights on deadbolt's channels (Redis 7's default `acl-pubsub-default
//! resetchannels` gives a `~* +@all` user none): locking works, waiting falls back to
//! re-checks, the operator is told once per client; with `&deadbolt:*` granted, pub/sub again.

use std::sync::{Mutex, OnceLock};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use deadbolt::{Client, ReleaseOutcome};
use deadbolt_testkit::RedisServer;
use tracing::field::{Field, Visit};
use tracing::span;

use crate::util::{assert_clean, client, eventually, ms, subscribers, waiter};

/// Every user these tests make may touch every key and run every command.
const ALL_KEYS_AND_COMMANDS: [&str; 2] = ["~*", "+@all"];

/// The warnings logged on this thread: a current-thread runtime runs every task of its test on
/// it, so these are the warnings of one test.
///
/// A process-wide subscriber, installed once, records warnings and errors with the thread they
/// came from. (A subscriber set for this thread alone with `set_default` missed the warning now
/// and then while other tests ran on other threads.)
#[derive(Debug, Clone, Copy)]
struct Warnings {
    thread: ThreadId,
}

type Records = Mutex<Vec<(ThreadId, String)>>;

static RECORDS: OnceLock<Records> = OnceLock::new();

impl Warnings {
    /// Starts recording this thread's warnings; drops any recorded on it before.
    fn capture() -> Warnings {
        RECORDS.get_or_init(|| {
            tracing::subscriber::set_global_default(Recorder)
                .expect("no other global tracing subscriber in the tests");
            Records::default()
        });
        let thread = std::thread::current().id();
        records().retain(|(t, _)| *t != thread);
        Warnings { thread }
    }

    fn messages(&self) -> Vec<String> {
        records()
            .iter()
            .filter(|(t, _)| *t == self.thread)
            .map(|(_, m)| m.clone())
            .collect()
    }
}

fn records() -> std::sync::MutexGuard<'static, Vec<(ThreadId, String)>> {
    RECORDS
        .get()
        .expect("installed by Warnings::capture")
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The subscriber behind [`Warnings`]: records the message of every warning and error.
struct Recorder;

impl tracing::Subscriber for Recorder {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        // Levels compare by verbosity: WARN and ERROR only.
        *metadata.level() <= tracing::Level::WARN
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        struct Message<'a>(&'a mut String);
        impl Visit for Message<'_> {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    *self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        if RECORDS.get().is_some() {
            records().push((std::thread::current().id(), message));
        }
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

/// A user without channel rights: `connect` succeeds and warns once, naming the grant that
/// would help; an uncontended lock works; a release succeeds though its `PUBLISH` is refused
/// (someone is subscribed, so the script tries); a waiter of that user, never woken by a
/// release, re-checks every ~100 ms and has the lock within 200 ms of the release.
#[tokio::test]
async fn a_user_without_channel_rights_locks_and_waits_by_rechecking() {
    let warnings = Warnings::capture();
    let server = RedisServer::start().unwrap();
    let url = server.acl_user("locker", "pw", &ALL_KEYS_AND_COMMANDS);
    let locks = Client::connect(&url)
        .await
        .expect("connect without channel rights");
    assert_eq!(warnings.messages().len(), 1, "{:?}", warnings.messages());

    let guard = locks.lock("a").acquire().await.unwrap();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    assert!(!locks.is_locked("a").await.unwrap());

    // A holder of the same user, released while a waiter of that user waits and a listener
    // with rights is subscribed to the channel.
    let holder = Client::connect(&url).await.unwrap();
    let guard = holder
        .lock("a")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let channel = locks.keys("a").unwrap().channel;
    let mut listener = redis::Client::open(server.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    listener.subscribe(&channel).await.unwrap();
    let task = waiter(&locks, "a", Duration::from_secs(3));
    tokio::time::sleep(ms(200)).await;
    assert!(!task.is_finished(), "the waiter gave up: {:?}", task.await);
    // Only the listener: the waiter could not subscribe. It re-checks every 100 ms ± 20 %.
    assert_eq!(subscribers(&server, &channel), 1);
    server.reset_stats();
    tokio::time::sleep(ms(500)).await;
    let sets = server.command_calls().get("set").copied().unwrap_or(0);
    println!("no channel rights: {sets} re-checks in 500 ms");
    assert!((3..=8).contains(&sets), "{sets} re-checks in 500 ms");
    let released = Instant::now();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    let (r, acquired) = task.await.unwrap();
    let theirs = r.expect("the waiter gets the lock");
    let latency = acquired - released;
    println!("no channel rights: acquired {latency:?} after the release");
    assert!(latency <= ms(200), "acquired {latency:?} after the release");
    assert_eq!(theirs.release().await.unwrap(), ReleaseOutcome::Released);
    drop(listener);

    // Once per client, each naming the fix.
    let messages = warnings.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    for m in &messages {
        assert!(m.contains("&deadbolt:*"), "{m}");
    }
    assert_clean(&server);
}

/// A waiter with channel rights whose holder has none: the holder's release cannot publish, so
/// the waiter must not rely on being woken. It has the lock within 200 ms of the release, not
/// at its deadline or at the end of the holder's 10 s lease.
#[tokio::test]
async fn a_waiter_with_channel_rights_is_not_left_waiting_by_a_holder_without_them() {
    let server = RedisServer::start().unwrap();
    let url = server.acl_user("locker", "pw", &ALL_KEYS_AND_COMMANDS);
    let holder = Client::connect(&url).await.unwrap();
    let locks = client(&server).await;
    let guard = holder
        .lock("a")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let task = waiter(&locks, "a", Duration::from_secs(3));
    assert!(
        eventually(ms(2000), || subscribers(&server, "deadbolt:{a}:released")
            == 1)
        .await
    );
    // Past its last try after subscribing: asleep on the channel.
    tokio::time::sleep(ms(100)).await;
    let released = Instant::now();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    let (r, acquired) = task.await.unwrap();
    let theirs = r.expect("the waiter gets the lock");
    let latency = acquired - released;
    println!("holder without channel rights: waiter acquired {latency:?} after the release");
    assert!(latency <= ms(200), "acquired {latency:?} after the release");
    assert_eq!(theirs.release().await.unwrap(), ReleaseOutcome::Released);
    assert_clean(&server);
}

/// With `&deadbolt:*` granted, nothing is logged, waiters subscribe, send nothing while they
/// wait, and a release wakes them at once.
#[tokio::test]
async fn with_channel_rights_granted_waiters_are_woken_by_pubsub() {
    let warnings = Warnings::capture();
    let server = RedisServer::start().unwrap();
    let url = server.acl_user("locker", "pw", &["~*", "+@all", "&deadbolt:*"]);
    let holder = Client::connect(&url).await.unwrap();
    let locks = Client::connect(&url).await.unwrap();
    let guard = holder
        .lock("a")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let task = waiter(&locks, "a", Duration::from_secs(5));
    assert!(
        eventually(ms(2000), || subscribers(&server, "deadbolt:{a}:released")
            == 1)
        .await
    );
    server.reset_stats();
    tokio::time::sleep(ms(500)).await;
    let sets = server.command_calls().get("set").copied().unwrap_or(0);
    assert_eq!(sets, 0, "the waiter polled");
    let released = Instant::now();
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    let (r, acquired) = task.await.unwrap();
    let theirs = r.expect("the waiter gets the lock");
    let latency = acquired - released;
    println!("channel rights granted: acquired {latency:?} after the release");
    assert!(latency <= ms(50), "acquired {latency:?} after the release");
    assert_eq!(theirs.release().await.unwrap(), ReleaseOutcome::Released);
    assert!(warnings.messages().is_empty(), "{:?}", warnings.messages());
    assert_clean(&server);
}
