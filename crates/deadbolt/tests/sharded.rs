use std::collections::HashMap;

use deadbolt::{Client, Error};
use deadbolt_testkit::RedisMasters;

use crate::util::{lock_keys, ms};

/// Each name lives on exactly one node, and every node gets a share.
#[tokio::test]
async fn each_name_lives_on_one_node() {
    let masters = RedisMasters::start(3).unwrap();
    let locks = Client::sharded(masters.urls()).connect().await.unwrap();
    let mut guards = Vec::new();
    for i in 0..30 {
        guards.push(locks.lock(format!("order:{i}")).acquire().await.unwrap());
    }
    let mut owners: HashMap<String, usize> = HashMap::new();
    for (n, server) in masters.servers().iter().enumerate() {
        let keys = lock_keys(server);
        assert!(!keys.is_empty(), "node {n} got no names");
        for key in keys {
            assert!(
                owners.insert(key.clone(), n).is_none(),
                "{key} is on two nodes"
            );
        }
    }
    assert_eq!(owners.len(), 30);
    // A client that lists the nodes in another order places names the same way.
    let mut reversed = masters.urls();
    reversed.reverse();
    let other = Client::sharded(reversed).connect().await.unwrap();
    for i in 0..30 {
        let err = other
            .lock(format!("order:{i}"))
            .try_acquire()
            .await
            .unwrap_err();
        assert!(matches!(err, Error::WouldBlock { .. }), "{err:?}");
    }
    for guard in guards {
        guard.release().await.unwrap();
    }
    for server in masters.servers() {
        assert!(lock_keys(server).is_empty());
    }
}

/// A node down fails only its own names, with an error that names it; the others still work.
#[tokio::test]
async fn a_dead_node_fails_only_its_names() {
    let mut masters = RedisMasters::start(3).unwrap();
    let locks = Client::sharded(masters.urls()).connect().await.unwrap();
    // Where each name lives, found by taking it.
    let mut home = HashMap::new();
    for i in 0..30 {
        let name = format!("n{i}");
        let guard = locks.lock(&name).acquire().await.unwrap();
        let node = masters
            .servers()
            .iter()
            .position(|s| !lock_keys(s).is_empty())
            .unwrap();
        home.insert(name, node);
        guard.release().await.unwrap();
    }
    let dead = masters.servers()[1].addr();
    masters.servers_mut()[1].kill();
    let (mut failed, mut worked) = (0, 0);
    for (name, node) in &home {
        let result = locks.lock(name).wait(ms(300)).acquire().await;
        if *node == 1 {
            let err = result.unwrap_err();
            let Error::Unavailable { addr, .. } = &err else {
                panic!("{name}: expected unavailable, got {err:?}");
            };
            assert_eq!(addr, &dead);
            failed += 1;
        } else {
            result.unwrap().release().await.unwrap();
            worked += 1;
        }
    }
    assert!(failed > 0 && worked > 0, "{failed} failed, {worked} worked");
}

/// A node down when the client starts: its names fail, naming it, the others work from the
/// start, and its names work once it is back.
#[tokio::test]
async fn a_node_down_at_start_fails_only_its_names_until_it_is_back() {
    let mut masters = RedisMasters::start(3).unwrap();
    let dead = masters.servers()[0].addr();
    masters.servers_mut()[0].kill();
    let locks = Client::sharded(masters.urls()).connect().await.unwrap();
    let mut failed = Vec::new();
    for i in 0..30 {
        let name = format!("s{i}");
        match locks.lock(&name).wait(ms(200)).acquire().await {
            Ok(guard) => {
                guard.release().await.unwrap();
            }
            Err(Error::Unavailable { addr, .. }) => {
                assert_eq!(addr, dead);
                failed.push(name);
            }
            Err(err) => panic!("{name}: {err:?}"),
        }
    }
    assert!(!failed.is_empty() && failed.len() < 30, "{failed:?}");
    masters.servers_mut()[0].restart().unwrap();
    for name in &failed {
        let guard = locks
            .lock(name.as_str())
            .wait(std::time::Duration::from_secs(5))
            .acquire()
            .await
            .unwrap();
        guard.release().await.unwrap();
    }
}

/// Two services that spell the same servers differently (`127.0.0.1:P`, `localhost:P`) place
/// every name on the same server: one holds, the other is refused.
#[tokio::test]
async fn spellings_of_one_server_place_names_alike() {
    let masters = RedisMasters::start(2).unwrap();
    let spelled: Vec<String> = masters
        .urls()
        .iter()
        .map(|u| u.replace("127.0.0.1", "localhost"))
        .collect();
    let one = Client::sharded(masters.urls()).connect().await.unwrap();
    let other = Client::sharded(spelled).connect().await.unwrap();
    let mut guards = Vec::new();
    for i in 0..20 {
        let name = format!("order:{i}");
        guards.push(one.lock(&name).try_acquire().await.unwrap());
        let err = other.lock(&name).try_acquire().await.unwrap_err();
        assert!(matches!(err, Error::WouldBlock { .. }), "{name}: {err:?}");
    }
    for guard in guards {
        guard.release().await.unwrap();
    }
}

/// A client that calls the servers by other identities than another client does (here: names
/// given to one, not to the other) is refused at connect, before it can place a lock on a
/// server the other does not.
#[tokio::test]
async fn a_client_that_names_the_shards_differently_is_refused() {
    let masters = RedisMasters::start(2).unwrap();
    let named: Vec<String> = masters
        .urls()
        .iter()
        .zip(["a", "b"])
        .map(|(u, n)| format!("{u}#{n}"))
        .collect();
    let first = Client::sharded(named.clone()).connect().await.unwrap();
    let err = Client::sharded(masters.urls()).connect().await.unwrap_err();
    let Error::InvalidArgument { reason: detail, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        detail.contains("is shard `#a` to another client"),
        "{detail}"
    );
    // The same names are accepted.
    let again = Client::sharded(named).connect().await.unwrap();
    drop((first, again));
}

/// One server under two URLs that the spelling cannot tell apart (directly, and through a
/// proxy) is refused after connecting: its `run_id` gives it away.
#[tokio::test]
async fn one_server_behind_two_addresses_is_refused() {
    let masters = RedisMasters::start(2).unwrap();
    let proxy = deadbolt_testkit::FaultProxy::start(&masters.servers()[0]).unwrap();
    for urls in [vec![
        masters.urls()[0].clone(),
        proxy.url(),
        masters.urls()[1].clone(),
    ]] {
        for builder in [Client::sharded(urls.clone()), Client::redlock(urls.clone())] {
            let err = builder.connect().await.unwrap_err();
            assert!(
                matches!(&err, Error::InvalidArgument { reason: detail, .. } if detail.contains("reach the same server")),
                "{err:?}"
            );
        }
    }
}
