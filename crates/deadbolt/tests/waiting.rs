use std::time::{Duration, Instant};

use deadbolt::Client;

use crate::util::{assert_clean, client, eventually, ms, setup, subscribers};

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
    // The waiter: SET (held), SUBSCRIBE, SET (held), SET (acquired), its release (EVALSHA, GET,
    // DEL, PUBLISH) and UNSUBSCRIBE; the holder's release (EVALSHA, GET, DEL, PUBLISH). The
    // holder's PUBSUB NUMSUB (its PUBLISH reached someone) is left out above with the test's own.
    assert_eq!(calls[2], 13, "{calls:?}");
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
