use std::collections::HashMap;

use deadbolt::{Client, Error};
use deadbolt_testkit::RedisMasters;

use crate::util::ms;

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
        let keys = server.keys();
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
        assert!(server.keys().is_empty());
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
            .position(|s| !s.keys().is_empty())
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
