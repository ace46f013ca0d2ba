//! Exercises `RedisSentinels`: a master, its replica and three Sentinels.

use std::time::{Duration, Instant};

use deadbolt_testkit::{RedisSentinels, RedisServer};

use crate::topology::Footprint;

#[test]
fn sentinels_report_the_master_and_leave_no_process_or_directory() {
    let sentinels = RedisSentinels::start().unwrap();
    assert_eq!(sentinels.master_name(), "mymaster");
    assert_eq!(sentinels.sentinel_urls().len(), 3);
    assert_eq!(
        sentinels.current_master_port().unwrap(),
        sentinels.master().port()
    );
    let mut conn = sentinels.master().connection();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut conn)
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut conn)
        .unwrap();
    assert_eq!(acked, 1);
    assert_eq!(sentinels.replica().keys(), ["k"]);

    let mut pids = vec![sentinels.master().pid(), sentinels.replica().pid()];
    pids.extend(sentinels.sentinels().iter().map(RedisServer::pid));
    let footprint = Footprint::of(pids);
    drop(sentinels);
    footprint.assert_gone();
}

#[test]
fn killing_the_sentinel_master_promotes_the_replica_within_15_s() {
    let mut sentinels = RedisSentinels::start().unwrap();
    let killed = Instant::now();
    sentinels.kill_master();
    let port = sentinels
        .wait_for_failover(Duration::from_secs(15))
        .unwrap();
    let took = killed.elapsed();
    assert_eq!(port, sentinels.replica().port(), "after {took:?}");
    assert_eq!(sentinels.current_master_port().unwrap(), port);
    // The promoted replica accepts writes.
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut sentinels.replica().connection())
        .unwrap();
}
