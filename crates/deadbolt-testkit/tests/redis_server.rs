//! Exercises `RedisServer` against a real `redis-server`.

use std::time::{Duration, Instant};

use deadbolt_testkit::{RedisServer, redis_server_available};
use nix::sys::signal;
use nix::unistd::Pid;

fn ping(conn: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(conn)
}

#[test]
fn redis_server_is_on_path() {
    assert!(redis_server_available());
}

#[test]
fn starts_and_answers_ping() {
    let server = RedisServer::start().unwrap();
    assert_eq!(server.addr(), format!("127.0.0.1:{}", server.port()));
    assert_eq!(server.url(), format!("redis://127.0.0.1:{}", server.port()));
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
}

#[test]
fn parallel_starts_get_distinct_ports() {
    let servers: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| RedisServer::start().unwrap()))
        .map(|h| h.join().unwrap())
        .collect();
    let mut ports: Vec<_> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), servers.len());
    // Started on threads that have exited: the death signal must not fire.
    for s in &servers {
        assert_eq!(ping(&mut s.connection()).unwrap(), "PONG");
    }
}

#[test]
fn password_is_required() {
    let server = RedisServer::builder().password("s3cr@t").start().unwrap();
    assert_eq!(
        server.url(),
        format!("redis://:s3cr%40t@127.0.0.1:{}", server.port())
    );
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");

    let client = redis::Client::open(format!("redis://{}", server.addr())).unwrap();
    let unauthenticated = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .and_then(|mut c| ping(&mut c));
    let err = unauthenticated.expect_err("ping without password must fail");
    assert!(err.to_string().contains("NOAUTH"), "{err}");
}

#[test]
fn kill_and_restart_keep_the_port() {
    let mut server = RedisServer::builder().password("pw").start().unwrap();
    let (port, pid) = (server.port(), server.pid());
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .exec(&mut server.connection())
        .unwrap();

    server.kill();
    server.kill(); // idempotent
    assert!(!server.is_running());
    let client = redis::Client::open(server.url()).unwrap();
    assert!(
        client
            .get_connection_with_timeout(Duration::from_millis(200))
            .is_err()
    );

    server.restart().unwrap();
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
    assert!(server.keys().is_empty(), "no persistence across restarts");

    // Restarting a running server works too.
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
}

#[test]
fn pause_times_out_and_resume_restores() {
    let server = RedisServer::start().unwrap();
    let mut conn = server.connection();
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    server.pause();
    let started = Instant::now();
    assert!(ping(&mut conn).is_err(), "paused server must not answer");
    assert!(started.elapsed() < Duration::from_secs(1));

    server.resume();
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
}

#[test]
fn command_calls_and_keys() {
    let server = RedisServer::start().unwrap();
    server.reset_stats();
    let mut conn = server.connection();
    redis::cmd("SET").arg("b").arg("1").exec(&mut conn).unwrap();
    redis::cmd("SET").arg("a").arg("2").exec(&mut conn).unwrap();
    redis::cmd("GET").arg("a").exec(&mut conn).unwrap();

    let calls = server.command_calls();
    assert_eq!(calls.get("set"), Some(&2));
    assert_eq!(calls.get("get"), Some(&1));
    assert_eq!(server.keys(), ["a", "b"]);

    server.reset_stats();
    assert_eq!(server.command_calls().get("set"), None);
}

#[test]
fn extra_args_are_passed() {
    let server = RedisServer::builder()
        .arg("--enable-debug-command")
        .arg("yes")
        .start()
        .unwrap();
    let mut conn = server.connection();
    redis::cmd("DEBUG")
        .arg("SLEEP")
        .arg("0")
        .exec(&mut conn)
        .unwrap();
}

#[test]
fn drop_kills_the_process() {
    let server = RedisServer::start().unwrap();
    let pid = Pid::from_raw(server.pid().try_into().unwrap());
    server.pause(); // a stopped process must still be killed and reaped
    assert!(signal::kill(pid, None).is_ok());
    drop(server);
    assert!(signal::kill(pid, None).is_err(), "process still exists");
}

#[test]
fn drop_kills_during_panic() {
    let pid = std::panic::catch_unwind(|| {
        let server = RedisServer::start().unwrap();
        let pid = server.pid();
        std::panic::panic_any(pid);
    })
    .unwrap_err();
    let pid = *pid.downcast::<u32>().unwrap();
    let pid = Pid::from_raw(pid.try_into().unwrap());
    assert!(signal::kill(pid, None).is_err(), "process still exists");
}

#[test]
fn restart_waits_for_a_busy_port() {
    let mut server = RedisServer::start().unwrap();
    server.kill();
    let squatter = std::net::TcpListener::bind(server.addr()).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(squatter);
    });
    let started = Instant::now();
    server.restart().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    release.join().unwrap();
    assert_eq!(ping(&mut server.connection()).unwrap(), "PONG");
}

#[test]
fn acl_user_gets_exactly_the_rights_given() {
    let server = RedisServer::builder().password("admin").start().unwrap();
    let url = server.acl_user("locker", "p@ss word", &["~*", "+@all"]);
    assert_eq!(
        url,
        format!("redis://locker:p%40ss%20word@127.0.0.1:{}", server.port())
    );
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap();
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut conn).unwrap();
    assert_eq!(who, "locker");
    redis::cmd("SET").arg("k").arg("v").exec(&mut conn).unwrap();

    // Redis 7 grants no channels by default (acl-pubsub-default resetchannels).
    let err = redis::cmd("PUBLISH")
        .arg("ch")
        .arg("x")
        .exec(&mut conn)
        .expect_err("no channel rights");
    assert_eq!(err.code(), Some("NOPERM"), "{err}");

    // Redefining the user adds rights; the open connection sees them at once.
    server.acl_user("locker", "p@ss word", &["&*"]);
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg("ch")
        .arg("x")
        .query(&mut conn)
        .unwrap();
    assert_eq!(receivers, 0);
}

#[test]
#[should_panic(expected = "failed a query")]
fn acl_user_panics_on_a_bad_rule() {
    let server = RedisServer::start().unwrap();
    server.acl_user("u", "pw", &["no-such-rule"]);
}
