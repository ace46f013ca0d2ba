use std::time::Duration;

use deadbolt::{Client, Error, Lease, LockOptions, ReleaseOutcome};
use deadbolt_testkit::RedisServer;

use crate::util::{ms, setup};

fn assert_invalid<T: std::fmt::Debug>(r: deadbolt::Result<T>, what: &str) {
    match r {
        Err(Error::InvalidArgument {
            what: w,
            ref reason,
        }) => {
            assert_eq!(w, what, "{reason}");
            let msg = r.unwrap_err().to_string();
            assert!(msg.starts_with("invalid "), "{msg}");
        }
        other => panic!("expected InvalidArgument({what}), got {other:?}"),
    }
}

#[tokio::test]
async fn bad_names_and_durations_are_refused_and_leave_nothing() {
    let (server, locks) = setup().await;
    assert_invalid(locks.lock("").acquire().await, "lock name");
    assert_invalid(locks.lock("x".repeat(1025)).acquire().await, "lock name");
    assert_invalid(locks.lock("a{b}").try_acquire().await, "lock name");
    assert_invalid(
        locks.lock("a").lease(Duration::ZERO).acquire().await,
        "lease",
    );
    assert_invalid(locks.lock("a").lease(ms(9)).acquire().await, "lease");
    assert_invalid(
        locks
            .lock("a")
            .lease(Duration::from_secs(86_401))
            .acquire()
            .await,
        "lease",
    );
    assert_invalid(
        locks
            .lock("a")
            .lease(ms(100))
            .renew_every(ms(100))
            .acquire()
            .await,
        "renewal interval",
    );
    assert_invalid(
        locks
            .lock("a")
            .wait(Duration::from_secs(86_401))
            .acquire()
            .await,
        "wait",
    );
    let bad = LockOptions::new(ms(10), Lease::Fixed(ms(1)));
    assert_invalid(locks.lock("a").options(bad).acquire().await, "lease");
    assert_invalid(locks.inspect("").await, "lock name");
    assert!(server.keys().is_empty(), "{:?}", server.keys());
}

#[tokio::test]
async fn bad_urls_and_unreachable_servers_fail_fast() {
    assert_invalid(Client::connect("not a url").await, "redis url");
    assert_invalid(Client::connect("http://127.0.0.1:1").await, "redis url");
    let err = Client::connect("redis://:s3cret@127.0.0.1:notaport")
        .await
        .unwrap_err();
    assert!(
        !err.to_string().contains("s3cret"),
        "password in message: {err}"
    );

    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = std::time::Instant::now();
    let err = Client::connect(&format!("redis://:s3cret@127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        !format!("{err} {err:?}").contains("s3cret"),
        "password leaked: {err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("cannot connect to redis at 127.0.0.1:{port}")
    );
}

/// No error shows a password from the URL: not its message, not its `Debug`, not any error
/// in its `source()` chain, whatever the password looks like and however the connect failed.
#[tokio::test]
async fn no_error_shows_the_password() {
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = RedisServer::builder().password("right").start().unwrap();
    for (secret, encoded) in [
        ("s3cret", "s3cret"),
        ("p@ss:w/rd", "p%40ss%3Aw%2Frd"),
        ("hunter2-ünïcode", "hunter2-%C3%BCn%C3%AFcode"),
    ] {
        let urls = [
            format!("redis://:{encoded}@127.0.0.1:{free_port}"),
            format!("redis://bob:{encoded}@127.0.0.1:{free_port}/0"),
            format!("redis://:{encoded}@127.0.0.1:notaport"),
            format!("redis://:{encoded}@{}", server.addr()),
            format!("redis://:{encoded}@127.0.0.1:{free_port}/not-a-db"),
            format!(":{encoded}@127.0.0.1"),
        ];
        for url in urls {
            let err = Client::connect(&url).await.unwrap_err();
            let mut shown = format!("{err} {err:?}");
            let mut source = std::error::Error::source(&err);
            while let Some(e) = source {
                shown.push_str(&format!(" {e} {e:?}"));
                source = e.source();
            }
            for needle in [secret, encoded] {
                assert!(!shown.contains(needle), "{url}: {needle} in {shown}");
            }
        }
    }
}

#[tokio::test]
async fn wrong_password_is_a_connect_error() {
    let server = RedisServer::builder().password("right").start().unwrap();
    let url = format!("redis://:wrong@{}", server.addr());
    let err = Client::connect(&url).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong@"), "{err:?}");
    // And the right one works.
    let locks = Client::connect(&server.url()).await.unwrap();
    crate::util::take_and_release(&locks, "a").await;
}

#[tokio::test]
async fn a_key_of_another_type_is_a_typed_error() {
    let (server, locks) = setup().await;
    crate::util::raw(&server, &["HSET", "deadbolt:{h}", "f", "v"]);
    let err = locks.lock("h").acquire().await.unwrap_err();
    assert!(
        matches!(err, Error::WrongType { ref key } if key == "deadbolt:{h}"),
        "{err:?}"
    );
    let err = locks.lock("h").try_acquire().await.unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err:?}");
    // Nothing was created beside the foreign key, and the local queue is free again.
    assert_eq!(server.keys(), ["deadbolt:{h}"]);
    crate::util::raw(&server, &["DEL", "deadbolt:{h}"]);
    crate::util::take_and_release(&locks, "h").await;
}

#[tokio::test]
async fn bad_client_settings_are_refused() {
    let server = RedisServer::start().unwrap();
    let r = Client::builder(&server.url())
        .key_prefix("a{")
        .connect()
        .await;
    assert_invalid(r, "key prefix");
    let r = Client::builder(&server.url())
        .command_timeout(Duration::ZERO)
        .connect()
        .await;
    assert_invalid(r, "command timeout");
}

/// A fence key of another type is refused before anything is written: no lock is left taken by
/// a fenced acquisition, and a token minted on first use is refused with the same error.
#[tokio::test]
async fn a_fence_key_of_another_type_takes_no_lock() {
    let (server, locks) = setup().await;
    crate::util::raw(&server, &["HSET", "deadbolt:{a}:fence", "f", "v"]);
    let guard = locks.lock("a").acquire().await.unwrap();
    let err = guard.fencing_token().await.unwrap_err();
    assert!(
        matches!(err, Error::WrongType { ref key } if key == "deadbolt:{a}:fence"),
        "{err:?}"
    );
    guard.release().await.unwrap();
    let err = locks
        .lock("a")
        .fenced()
        .lease(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::WrongType { ref key } if key == "deadbolt:{a}:fence"),
        "{err:?}"
    );
    assert_eq!(
        server.keys(),
        ["deadbolt:{a}:fence"],
        "a lock was left taken"
    );
}

/// Commands the server has run since `reset_stats`, leaving out the test's own (`CONFIG`,
/// `INFO`) and the clients' heartbeat pings.
fn commands_since_reset(server: &RedisServer) -> Vec<(String, u64)> {
    server
        .command_calls()
        .into_iter()
        .filter(|(c, _)| !c.starts_with("config") && c != "info" && c != "ping")
        .collect()
}

/// A fence TTL outside 1 s to [`deadbolt::MAX_FENCE_TTL`] is refused by `connect` before it
/// reaches the server; both ends of the range are accepted, and the longest one really is the
/// counter's expiry.
#[tokio::test]
async fn a_fence_ttl_out_of_range_is_refused_before_connecting() {
    let server = RedisServer::start().unwrap();
    server.reset_stats();
    for ttl in [
        Duration::ZERO,
        ms(999),
        deadbolt::MAX_FENCE_TTL + ms(1),
        Duration::MAX,
    ] {
        let r = Client::builder(&server.url())
            .fence_ttl(ttl)
            .connect()
            .await;
        assert_invalid(r, "fence ttl");
    }
    assert_eq!(commands_since_reset(&server), []);
    assert!(server.keys().is_empty(), "{:?}", server.keys());

    for ttl in [Duration::from_secs(1), deadbolt::MAX_FENCE_TTL] {
        let locks = Client::builder(&server.url())
            .fence_ttl(ttl)
            .connect()
            .await
            .unwrap_or_else(|e| panic!("fence ttl {ttl:?}: {e:?}"));
        let guard = locks.lock("a").fenced().acquire().await.unwrap();
        guard.release().await.unwrap();
        let pttl: i64 = redis::cmd("PTTL")
            .arg("deadbolt:{a}:fence")
            .query(&mut server.connection())
            .unwrap();
        let expected = ttl.as_millis() as i64;
        assert!(
            pttl > expected - 500 && pttl <= expected,
            "fence ttl {ttl:?}: counter expires in {pttl} ms"
        );
    }
}

/// Every option of an acquisition or an `extend` is checked before any command is sent: a bad
/// one leaves no key and Redis sees nothing but the clients' heartbeats; the held lock an
/// `extend` was refused for keeps its lease.
#[tokio::test]
async fn bad_options_send_no_command() {
    let (server, locks) = setup().await;
    let mut guard = locks
        .lock("held")
        .lease(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    let valid_until = guard.valid_until();
    server.reset_stats();

    assert_invalid(
        locks.lock("a").lease(Duration::ZERO).acquire().await,
        "lease",
    );
    assert_invalid(
        locks.lock("a").lease(Duration::ZERO).try_acquire().await,
        "lease",
    );
    assert_invalid(locks.lock("a").watchdog(ms(5)).acquire().await, "lease");
    assert_invalid(
        locks
            .lock("a")
            .fenced()
            .lease(Duration::ZERO)
            .acquire()
            .await,
        "lease",
    );
    assert_invalid(
        locks
            .lock("a")
            .watchdog(ms(300))
            .renew_every(ms(300))
            .acquire()
            .await,
        "renewal interval",
    );
    assert_invalid(
        locks
            .lock("a")
            .watchdog(ms(300))
            .renew_every(ms(301))
            .try_acquire()
            .await,
        "renewal interval",
    );
    assert_invalid(
        locks
            .lock("a")
            .watchdog(ms(300))
            .renew_every(Duration::ZERO)
            .acquire()
            .await,
        "renewal interval",
    );
    assert_invalid(
        locks
            .lock("a")
            .wait(deadbolt::MAX_WAIT + ms(1))
            .acquire()
            .await,
        "wait",
    );
    assert_invalid(locks.lock("a}").try_acquire().await, "lock name");
    // Another task of this client waits for "held" in its local line, not at Redis: a bad lease
    // is refused before it queues there.
    assert_invalid(locks.lock("held").lease(ms(1)).acquire().await, "lease");
    assert_invalid(guard.extend(Duration::ZERO).await, "lease");
    assert_invalid(guard.extend(deadbolt::MAX_LEASE + ms(1)).await, "lease");

    assert_eq!(commands_since_reset(&server), []);
    assert_eq!(server.keys(), ["deadbolt:{held}"]);
    assert_eq!(
        guard.valid_until(),
        valid_until,
        "a refused extend moved the lease"
    );
    assert!(guard.is_held());
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    crate::util::assert_clean(&server);
}
