//! Exercises `RedisCluster`: a real 3 + 3 node Redis Cluster.

use std::time::{Duration, Instant};

use deadbolt_testkit::{RedisCluster, RedisServer};

use crate::topology::Footprint;

#[test]
fn cluster_routes_keys_by_slot_and_leaves_no_process_or_directory() {
    let cluster = RedisCluster::start().unwrap();
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.urls().len(), 6);
    let masters: Vec<u16> = cluster
        .masters()
        .unwrap()
        .iter()
        .map(|n| n.port())
        .collect();
    assert_eq!(masters.len(), 3, "{masters:?}");
    assert_eq!(cluster.replicas().len(), 3);

    let key = "deadbolt:{route}:k";
    let slot = cluster.slot_of(key).unwrap();
    assert_eq!(
        slot,
        cluster.slot_of("{route}").unwrap(),
        "hash tag decides the slot"
    );
    let owner = cluster.master_for_key(key).unwrap();
    redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query::<()>(&mut owner.connection())
        .unwrap();

    // Another master redirects to the owner; following the redirection finds the key.
    let other = cluster
        .masters()
        .unwrap()
        .into_iter()
        .find(|n| n.port() != owner.port())
        .unwrap();
    let err = redis::cmd("GET")
        .arg(key)
        .query::<Option<String>>(&mut other.connection())
        .unwrap_err();
    let (addr, moved_slot) = err.redirect_node().expect("a MOVED error");
    assert_eq!(moved_slot, slot);
    assert_eq!(addr, owner.addr());
    let mut conn = redis::Client::open(format!("redis://{addr}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let value: Option<String> = redis::cmd("GET").arg(key).query(&mut conn).unwrap();
    assert_eq!(value.as_deref(), Some("v"));

    let footprint = Footprint::of(cluster.nodes().iter().map(RedisServer::pid));
    drop(cluster);
    footprint.assert_gone();
}

#[test]
fn killing_a_cluster_master_promotes_its_replica_within_15_s() {
    let mut cluster = RedisCluster::start().unwrap();
    let key = "deadbolt:{failover}:k";
    let slot = cluster.slot_of(key).unwrap();
    let old = cluster.master_of_slot(slot).unwrap();
    let old_port = old.port();
    let mut conn = old.connection();
    redis::cmd("SET")
        .arg(key)
        .arg("v")
        .query::<()>(&mut conn)
        .unwrap();
    // Make sure the replica has the key before its master dies.
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(acked, 1);

    let killed = Instant::now();
    cluster.kill(old_port);
    cluster
        .wait_for_failover(old_port, Duration::from_secs(15))
        .unwrap();
    let took = killed.elapsed();

    let new = cluster.master_of_slot(slot).unwrap();
    assert_ne!(new.port(), old_port);
    let value: Option<String> = redis::cmd("GET")
        .arg(key)
        .query(&mut new.connection())
        .unwrap();
    assert_eq!(value.as_deref(), Some("v"), "failover after {took:?}");
    assert_eq!(cluster.masters().unwrap().len(), 3);
}
