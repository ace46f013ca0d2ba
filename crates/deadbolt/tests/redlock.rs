use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use deadbolt::{Client, Error, ReleaseOutcome, Vote};
use deadbolt_testkit::RedisMasters;
use tokio::time::Instant;

use crate::util::{assert_clean, lock_keys, ms};

async fn redlock(masters: &RedisMasters) -> Client {
    Client::redlock(masters.urls())
        .connect()
        .await
        .expect("connect")
}

const ROUNDS: usize = 200;

/// 3 clients × 4 tasks over 5 masters: one holder at a time, every round counted, fencing
/// tokens strictly increasing in the order the critical sections ran, nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_excludes_and_fences_across_clients() {
    let masters = RedisMasters::start(5).unwrap();
    let clients = [
        redlock(&masters).await,
        redlock(&masters).await,
        redlock(&masters).await,
    ];
    let claimed = Arc::new(AtomicUsize::new(0));
    let inside = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for locks in &clients {
        for task in 0..4 {
            let (locks, claimed, inside, tokens) = (
                locks.clone(),
                claimed.clone(),
                inside.clone(),
                tokens.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while claimed.fetch_add(1, Ordering::SeqCst) < ROUNDS {
                    let mut lock = locks.lock("stock:7").wait(Duration::from_secs(30));
                    if task % 2 == 0 {
                        lock = lock.fenced();
                    }
                    let guard = lock.acquire().await.unwrap();
                    assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                    let token = guard.fencing_token().await.unwrap();
                    tokens.lock().unwrap().push(token);
                    tokio::task::yield_now().await;
                    inside.store(false, Ordering::SeqCst);
                    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let tokens = std::mem::take(&mut *tokens.lock().unwrap());
    assert_eq!(tokens.len(), ROUNDS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens went backwards: {tokens:?}"
    );
    for server in masters.servers() {
        assert_clean(server);
    }
}

#[tokio::test]
async fn two_of_five_down_still_acquires() {
    let mut masters = RedisMasters::start(5).unwrap();
    let locks = redlock(&masters).await;
    masters.servers_mut()[0].kill();
    masters.servers_mut()[3].kill();
    for _ in 0..5 {
        let guard = locks.lock("a").wait(ms(2000)).acquire().await.unwrap();
        guard.fencing_token().await.unwrap();
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    }
    for i in [1, 2, 4] {
        assert_clean(&masters.servers()[i]);
    }
}

/// With 3 of 5 masters down, acquiring fails with a quorum error that names each node and what
/// it did, once the wait is over, and leaves no lock on the two live masters.
#[tokio::test]
async fn three_of_five_down_is_a_quorum_error_naming_each_node() {
    let mut masters = RedisMasters::start(5).unwrap();
    let locks = redlock(&masters).await;
    let dead: Vec<String> = [0, 2, 4]
        .iter()
        .map(|&i| masters.servers()[i].addr())
        .collect();
    for i in [0, 2, 4] {
        masters.servers_mut()[i].kill();
    }
    let started = Instant::now();
    let err = locks.lock("a").wait(ms(600)).acquire().await.unwrap_err();
    assert!(started.elapsed() < ms(3000), "{:?}", started.elapsed());
    let Error::NoQuorum {
        name,
        needed,
        nodes,
    } = &err
    else {
        panic!("expected a quorum error, got {err:?}");
    };
    assert_eq!((name.as_str(), *needed, nodes.len()), ("a", 3, 5));
    for node in nodes {
        let down = dead.contains(&node.addr);
        assert_eq!(!down, node.vote.answered(), "{node}");
        if !down {
            assert_eq!(node.vote, Vote::Ours, "{node}");
        }
    }
    let message = err.to_string();
    assert!(
        message.contains("2 of 5 nodes answered, 3 needed"),
        "{message}"
    );
    for i in [1, 3] {
        assert!(
            lock_keys(&masters.servers()[i]).is_empty(),
            "a lock was left on a live master"
        );
    }
}

/// After every release no master holds the lock, including the slowest.
#[tokio::test]
async fn release_leaves_no_master_locked() {
    let masters = RedisMasters::start(5).unwrap();
    let locks = redlock(&masters).await;
    for i in 0..20 {
        let guard = locks.lock(format!("n{}", i % 3)).acquire().await.unwrap();
        guard.release().await.unwrap();
        for server in masters.servers() {
            assert!(
                lock_keys(server).is_empty(),
                "round {i}: {:?}",
                server.keys()
            );
        }
    }
}

/// A waiter sleeps until the holder releases, however long the holder's lease: it is woken by
/// the release message, not by the lease running out.
#[tokio::test]
async fn a_waiter_is_woken_by_the_release() {
    let masters = RedisMasters::start(3).unwrap();
    let (a, b) = (redlock(&masters).await, redlock(&masters).await);
    let held = a
        .lock("w")
        .lease(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let guard = b
            .lock("w")
            .wait(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        let waited = started.elapsed();
        guard.release().await.unwrap();
        waited
    });
    tokio::time::sleep(ms(300)).await;
    held.release().await.unwrap();
    let waited = waiter.await.unwrap();
    assert!(waited < ms(2000), "woken after {waited:?}");
}

/// Losing the majority fires the lost signal, no later than the validity.
#[tokio::test]
async fn losing_the_majority_fires_the_lost_signal() {
    let mut masters = RedisMasters::start(3).unwrap();
    let locks = redlock(&masters).await;
    let guard = locks.lock("l").watchdog(ms(900)).acquire().await.unwrap();
    let valid_until = guard.valid_until();
    masters.servers_mut()[0].kill();
    masters.servers_mut()[1].kill();
    tokio::time::timeout(Duration::from_secs(3), guard.lost())
        .await
        .expect("the lost signal fired");
    assert!(std::time::Instant::now() < valid_until + ms(100));
}

/// Bad node lists are refused before anything is sent.
#[tokio::test]
async fn bad_node_lists_are_refused() {
    let masters = RedisMasters::start(1).unwrap();
    let url = masters.urls()[0].clone();
    let err = Client::redlock([url.clone(), url.clone()])
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(err.to_string().contains("are the same server"), "{err}");
    // One server under two spellings, beside a server that is down: were it accepted, one real
    // server of two would make a majority.
    let down = format!("redis://127.0.0.1:{}", deadbolt_testkit_free_port());
    let spelled = url.replace("127.0.0.1", "localhost");
    let err = Client::redlock([url.clone(), spelled, down])
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("are the same server"), "{err}");
    let none: [&str; 0] = [];
    let err = Client::redlock(none).connect().await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
}

/// A master down when the client starts joins when it comes back; meanwhile the majority
/// serves.
#[tokio::test]
async fn a_master_down_at_start_joins_later() {
    let mut masters = RedisMasters::start(3).unwrap();
    masters.servers_mut()[2].kill();
    let locks = redlock(&masters).await;
    locks
        .lock("j")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    masters.servers_mut()[2].restart().unwrap();
    // Once it answers, the next acquisition takes it there too.
    let mut on_third = false;
    for _ in 0..20 {
        let guard = locks.lock("j").acquire().await.unwrap();
        on_third |= !lock_keys(&masters.servers()[2]).is_empty();
        guard.release().await.unwrap();
        if on_third {
            break;
        }
        tokio::time::sleep(ms(200)).await;
    }
    assert!(on_third, "the restarted master never joined");
    // Without a majority at start, connecting fails.
    masters.servers_mut()[0].kill();
    masters.servers_mut()[1].kill();
    let err = Client::redlock(masters.urls()).connect().await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

/// Masters that go silent (connections left open, nothing answers) cost each step only the
/// per-node timeout: with 2 of 5 silent the lock is still taken quickly; with 3 of 5 the wait
/// ends with a quorum error close to its deadline, naming the silent ones as timed out, and no
/// lock is left on the masters that answered.
#[tokio::test]
async fn silent_masters_cost_only_the_node_timeout() {
    let masters = RedisMasters::start(5).unwrap();
    let proxies: Vec<deadbolt_testkit::FaultProxy> = masters
        .servers()
        .iter()
        .map(|s| deadbolt_testkit::FaultProxy::start(s).unwrap())
        .collect();
    let locks = Client::redlock(proxies.iter().map(|p| p.url()))
        .connect()
        .await
        .unwrap();
    proxies[1].blackhole();
    proxies[4].blackhole();
    let started = Instant::now();
    let guard = locks
        .lock("quiet")
        .lease(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    // One fan-out: 100 ms per silent node at most, in parallel.
    assert!(started.elapsed() < ms(600), "{:?}", started.elapsed());
    guard.release().await.unwrap();

    proxies[2].blackhole();
    let started = Instant::now();
    let err = locks
        .lock("quiet")
        .lease(Duration::from_secs(2))
        .wait(ms(500))
        .acquire()
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(waited >= ms(500) && waited < ms(1500), "{waited:?}");
    let Error::NoQuorum { nodes, .. } = &err else {
        panic!("{err:?}");
    };
    let timed_out = nodes.iter().filter(|n| n.vote == Vote::TimedOut).count();
    assert_eq!(timed_out, 3, "{err}");
    for i in [0, 3] {
        assert!(lock_keys(&masters.servers()[i]).is_empty(), "left on {i}");
    }
}

/// A port nothing listens on (bound, then closed).
fn deadbolt_testkit_free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A master known to be down costs a Redlock step nothing: with one master of five killed and
/// another frozen (SIGSTOP), once one cycle has found them silent, acquire → release cycles do
/// not wait for them. Bounded generously: each cycle would otherwise wait out a 1.5 s fan-out
/// timer on the frozen master, and its release a 5 s command timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_down_or_frozen_costs_a_cycle_nothing() {
    let mut masters = RedisMasters::start(5).unwrap();
    let locks = Client::redlock(masters.urls())
        .command_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    masters.servers_mut()[0].kill();
    masters.servers()[1].pause();
    // The first cycle finds the frozen master silent (its fan-out timer, 1.5 s).
    let guard = locks.lock("first").acquire().await.unwrap();
    guard.release().await.unwrap();
    let start = std::time::Instant::now();
    for i in 0..10 {
        let guard = locks
            .lock(format!("m{i}"))
            .watchdog(Duration::from_secs(30))
            .acquire()
            .await
            .unwrap();
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    }
    let took = start.elapsed();
    masters.servers()[1].resume();
    assert!(
        took < Duration::from_millis(1500),
        "10 cycles took {took:?}"
    );
}
