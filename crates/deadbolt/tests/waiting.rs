use std::time::{Duration, Instant};

use deadbolt::Client;

use crate::util::{assert_clean, client, eventually, ms, raw, setup, subscribers, waiter};

/// A waiter wakes on the release message, not at the end of the holder's 10 s lease.
#[tokio::test]
async fn waiter_wakes_on_release_not_on_ttl() {
    let (server, locks) = setup().await;
    let other = client(&server).await;
    let guard = locks
        .lock("a")
        .lease(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let start = Instant::now();
        let g = other
            .lock("a")
            .wait(Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        let waited = start.elapsed();
        g.release().await.unwrap();
        waited
    });
    tokio::time::sleep(ms(200)).await;
    guard.release().await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited >= ms(200) && waited < ms(1000), "waited {waited:?}");
    assert_clean(&server);
}

/// Without a release message (a peer that does not publish, or a crashed holder), the waiter
/// still gets the lock when the TTL it saw runs out.
#[tokio::test]
async fn waiter_gets_an_expired_lock_at_the_ttl_bound() {
    let (server, locks) = setup().await;
    let mut conn = server.connection();
    let _: () = redis::cmd("SET")
        .arg("deadbolt:{a}")
        .arg("peer-token")
        .arg("PX")
        .arg(300)
        .query(&mut conn)
        .unwrap();
    let start = Instant::now();
    let guard = locks
        .lock("a")
        .wait(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    let waited = start.elapsed();
    assert!(waited >= ms(250) && waited < ms(800), "waited {waited:?}");
    guard.release().await.unwrap();
    assert_clean(&server);
}

/// A deadbolt holder that crashed late in a 30 s lease: its key has 300 ms left. The waiter
/// sleeps for what the key has left, not for the lease in the holder's token.
#[tokio::test]
async fn waiter_behind_a_crashed_holder_wakes_at_the_keys_expiry_not_its_lease() {
    let (server, locks) = setup().await;
    let token = format!("dbt2-{}-30000", "7".repeat(32));
    let _: () = redis::cmd("SET")
        .arg("deadbolt:{a}")
        .arg(&token)
        .arg("PX")
        .arg(300)
        .query(&mut server.connection())
        .unwrap();
    let start = Instant::now();
    let guard = locks.lock("a").wait(ms(5000)).acquire().await.unwrap();
    let waited = start.elapsed();
    assert!(waited >= ms(250) && waited < ms(800), "waited {waited:?}");
    guard.release().await.unwrap();
    assert_clean(&server);
}

/// A holder whose process dies (here: its runtime is torn down, connections and watchdog with
/// it, without a release) loses the lock when its lease runs out; the next waiter gets it
/// within the lease plus a small margin.
#[test]
fn next_waiter_acquires_within_the_lease_after_the_holder_dies() {
    let server = deadbolt_testkit::RedisServer::start().unwrap();
    let lease = ms(600);
    let crashed = tokio::runtime::Runtime::new().unwrap();
    let guard = crashed.block_on(async {
        let locks = Client::connect(&server.url()).await.unwrap();
        locks.lock("a").watchdog(lease).acquire().await.unwrap()
    });
    let died = Instant::now();
    drop(crashed);
    // Dropped outside any runtime: no release can be sent, as after a crash.
    drop(guard);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let locks = Client::connect(&server.url()).await.unwrap();
        let g = locks
            .lock("a")
            .wait(Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        let after = died.elapsed();
        assert!(
            after < lease + ms(300),
            "acquired {after:?} after the holder died"
        );
        g.release().await.unwrap();
    });
    assert_clean(&server);
}

/// Redis sees a constant number of commands per contended acquisition, however long the wait:
/// waiters sleep on pub/sub, bounded by the holder's TTL (10 s here), they do not poll.
#[tokio::test]
async fn commands_per_acquisition_do_not_grow_with_wait_time() {
    let (server, holder) = setup().await;
    let waiter = client(&server).await;
    let mut calls = Vec::new();
    // The first round loads the scripts (NOSCRIPT, SCRIPT LOAD); compare the next two.
    for hold in [ms(100), ms(300), ms(1500)] {
        let guard = holder
            .lock("a")
            .lease(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        server.reset_stats();
        let w = {
            let waiter = waiter.clone();
            tokio::spawn(async move {
                waiter
                    .lock("a")
                    .wait(Duration::from_secs(5))
                    .acquire()
                    .await
            })
        };
        tokio::time::sleep(hold).await;
        guard.release().await.unwrap();
        w.await.unwrap().unwrap().release().await.unwrap();
        // The last waiter unsubscribes in the background.
        let channel = "deadbolt:{a}:released";
        assert!(eventually(ms(2000), || subscribers(&server, channel) == 0).await);
        let stats = server.command_calls();
        // Leave out the test's own commands and the clients' heartbeat pings (a constant rate
        // per connection, not per acquisition).
        let ours = |c: &&String| {
            !c.starts_with("config") && !c.starts_with("pubsub|numsub") && c.as_str() != "ping"
        };
        calls.push(
            stats
                .iter()
                .filter(|(c, _)| ours(c))
                .map(|(_, n)| n)
                .sum::<u64>(),
        );
    }
    assert_eq!(
        calls[1], calls[2],
        "waiter commands grew with the wait: {calls:?}"
    );
    // The waiter: SET (held), SUBSCRIBE, its subscribed try that marks the holder (EVALSHA,
    // SET, GET, SET KEEPTTL, PTTL: the key's TTL bounds its sleep), its subscribed try that acquires (EVALSHA, SET), its release
    // (EVALSHA, GET, DEL: nobody marked it, so no PUBLISH) and UNSUBSCRIBE; the holder's release
    // (EVALSHA, GET, DEL, PUBLISH: marked). The holder's PUBSUB NUMSUB (its PUBLISH reached
    // someone) is left out above with the test's own.
    assert_eq!(calls[2], 17, "{calls:?}");
    assert_clean(&server);
}

/// Tasks of one client are served in the order they asked.
#[tokio::test]
async fn tasks_of_one_client_are_served_fifo() {
    let (server, locks) = setup().await;
    let first = locks.lock("a").acquire().await.unwrap();
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (locks, order) = (locks.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let g = locks.lock("a").acquire().await.unwrap();
            order.lock().unwrap().push(i);
            g.release().await.unwrap();
        }));
        // Let task i queue up before task i + 1.
        tokio::time::sleep(ms(20)).await;
    }
    first.release().await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
    assert_clean(&server);
}

/// After a Redis restart the client reconnects; locks work again.
#[tokio::test]
async fn client_recovers_after_a_redis_restart() {
    let (mut server, locks) = setup().await;
    crate::util::take_and_release(&locks, "a").await;
    server.restart().unwrap();
    // The first command may see the dropped connection; within a second it must work again.
    let mut ok = false;
    for _ in 0..20 {
        if let Ok(g) = locks.lock("a").wait(ms(500)).acquire().await {
            g.release().await.unwrap();
            ok = true;
            break;
        }
        tokio::time::sleep(ms(50)).await;
    }
    assert!(ok, "no lock after the restart");
    assert_clean(&server);
}

/// What the key of lock `name` (default prefix) holds.
fn stored(server: &deadbolt_testkit::RedisServer, name: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("deadbolt:{{{name}}}"))
        .query(&mut server.connection())
        .unwrap()
}

/// Nobody waits, so a release publishes nothing: to Redis it is a bare compare-and-delete, plain
/// or fenced, also by a client whose line is still subscribed after contention.
#[tokio::test]
async fn an_uncontended_release_publishes_nothing() {
    let (server, locks) = setup().await;
    let other = client(&server).await;
    // Contention first, so that the scripts are loaded and a line was subscribed once.
    let guard = locks.lock("a").acquire().await.unwrap();
    let task = waiter(&other, "a", Duration::from_secs(5));
    assert!(
        eventually(ms(2000), || subscribers(&server, "deadbolt:{a}:released")
            == 1)
        .await
    );
    guard.release().await.unwrap();
    let (theirs, _) = task.await.unwrap();
    theirs.unwrap().release().await.unwrap();

    server.reset_stats();
    for fenced in [false, true] {
        for client in [&locks, &other] {
            let builder = client.lock("a").lease(Duration::from_secs(30));
            let builder = if fenced { builder.fenced() } else { builder };
            let guard = builder.acquire().await.unwrap();
            guard.fencing_token().await.unwrap();
            assert_eq!(
                guard.release().await.unwrap(),
                deadbolt::ReleaseOutcome::Released
            );
        }
    }
    let calls = server.command_calls();
    assert_eq!(calls.get("publish"), None, "{calls:?}");
    assert_eq!(calls.get("del"), Some(&4), "{calls:?}");
    assert_clean(&server);
}

/// A subscribed waiter marks its holder's token (`+w`), plain or fenced; the mark survives the
/// holder's extend and minting, `inspect` shows the token without it, and the release publishes
/// once and wakes the waiter at once, long before the holder's 30 s lease.
#[tokio::test]
async fn a_waiter_marks_its_holder_whose_release_then_wakes_it() {
    let (server, holder) = setup().await;
    let other = client(&server).await;
    for fenced in [false, true] {
        let mut guard = holder
            .lock("a")
            .lease(Duration::from_secs(30))
            .acquire()
            .await
            .unwrap();
        let token = stored(&server, "a").unwrap();
        assert!(
            token.starts_with("dbt2-") && !token.ends_with("+w"),
            "{token}"
        );
        let task = {
            let other = other.clone();
            tokio::spawn(async move {
                let builder = other.lock("a").wait(Duration::from_secs(10));
                let builder = if fenced { builder.fenced() } else { builder };
                let r = builder.acquire().await;
                (r, Instant::now())
            })
        };
        let marked = format!("{token}+w");
        assert!(
            eventually(ms(2000), || stored(&server, "a").as_deref()
                == Some(&marked))
            .await,
            "fenced {fenced}: not marked: {:?}",
            stored(&server, "a")
        );
        let info = holder.inspect("a").await.unwrap();
        assert_eq!(info.owner.as_deref(), Some(token.as_str()));
        guard.extend(Duration::from_secs(30)).await.unwrap();
        guard.fencing_token().await.unwrap();
        assert_eq!(stored(&server, "a").as_deref(), Some(marked.as_str()));
        // Past its last try: asleep on the channel, bounded only by the 30 s lease.
        tokio::time::sleep(ms(100)).await;
        server.reset_stats();
        let released = Instant::now();
        assert_eq!(
            guard.release().await.unwrap(),
            deadbolt::ReleaseOutcome::Released
        );
        let (theirs, acquired) = task.await.unwrap();
        let latency = acquired - released;
        assert!(
            latency < ms(500),
            "fenced {fenced}: woken {latency:?} after the release"
        );
        assert_eq!(server.command_calls().get("publish"), Some(&1));
        theirs.unwrap().release().await.unwrap();
    }
    assert_clean(&server);
}

/// Values a waiter leaves alone: an older deadbolt's token (it compares its own exactly), a
/// quiet holder's (it cannot publish) and a peer's. The waiter re-checks them instead.
#[tokio::test]
async fn a_waiter_marks_no_older_quiet_or_peer_token() {
    let (server, locks) = setup().await;
    let random = "0123456789abcdef0123456789abcdef";
    for value in [
        format!("dbt1-{random}-30000"),
        format!("dbt2-{random}-30000-q"),
        random.to_owned(),
    ] {
        raw(&server, &["SET", "deadbolt:{a}", &value, "PX", "30000"]);
        let task = waiter(&locks, "a", Duration::from_secs(5));
        assert!(
            eventually(ms(2000), || subscribers(&server, "deadbolt:{a}:released")
                == 1)
            .await
        );
        // Several re-checks.
        tokio::time::sleep(ms(200)).await;
        assert_eq!(stored(&server, "a"), Some(value.clone()));
        raw(&server, &["DEL", "deadbolt:{a}"]);
        let (r, _) = task.await.unwrap();
        r.unwrap().release().await.unwrap();
    }
    assert_clean(&server);
}
