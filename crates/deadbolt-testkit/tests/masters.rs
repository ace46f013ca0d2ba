//! Exercises `RedisMasters` against real `redis-server`s.

use deadbolt_testkit::{RedisMasters, RedisServer};

use crate::topology::Footprint;

#[test]
fn masters_are_independent_and_leave_no_process_or_directory() {
    let mut masters = RedisMasters::start(3).unwrap();
    assert_eq!(masters.servers().len(), 3);
    let urls = masters.urls();
    let mut distinct = urls.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{urls:?}");

    let mut first = masters.servers()[0].connection();
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query::<()>(&mut first)
        .unwrap();
    assert_eq!(masters.servers()[0].keys(), ["k"]);
    assert!(masters.servers()[1].keys().is_empty());
    assert!(masters.servers()[2].keys().is_empty());

    let footprint = Footprint::of(masters.servers().iter().map(RedisServer::pid));
    masters.servers_mut()[1].kill();
    assert!(!masters.servers_mut()[1].is_running());
    drop(masters);
    footprint.assert_gone();
}

#[test]
fn masters_share_the_builder_settings() {
    let masters = RedisMasters::with_builder(2, &RedisServer::builder().password("pw")).unwrap();
    for (server, url) in masters.servers().iter().zip(masters.urls()) {
        assert_eq!(url, format!("redis://:pw@127.0.0.1:{}", server.port()));
        let mut conn = redis::Client::open(url).unwrap().get_connection().unwrap();
        assert_eq!(
            redis::cmd("PING").query::<String>(&mut conn).unwrap(),
            "PONG"
        );
    }
}
