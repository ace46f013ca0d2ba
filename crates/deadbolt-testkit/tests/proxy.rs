//! `FaultProxy` in front of a real `redis-server`: each fault, checked by what a client sees.
//!
//! Most tests speak raw RESP over a `TcpStream` (`PING\r\n` → `+PONG\r\n`), so no client
//! library adds traffic or retries of its own, and every read has a timeout.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use deadbolt_testkit::{Fault, FaultProxy, FaultSchedule, RedisServer};

/// Read timeout of the raw connections: how long a test waits for an answer that must come.
const ANSWER: Duration = Duration::from_secs(2);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A raw connection to the proxy, reads bounded by [`ANSWER`].
fn raw(proxy: &FaultProxy) -> TcpStream {
    let s = TcpStream::connect(proxy.addr()).unwrap();
    s.set_read_timeout(Some(ANSWER)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends `PING` and reads the reply, which must be `+PONG`.
fn ping(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(b"PING\r\n")?;
    let mut reply = [0; 7];
    s.read_exact(&mut reply)?;
    assert_eq!(&reply, b"+PONG\r\n");
    Ok(())
}

/// Polls `cond` every 10 ms for up to 2 s; for what settles in the proxy's threads.
fn eventually(cond: impl FnMut() -> bool) -> bool {
    eventually_within(Duration::from_secs(2), ms(10), cond)
}

/// Polls `cond` every `every` for up to `limit`.
fn eventually_within(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(every);
    }
    cond()
}

/// `GET key` straight on the server, not through the proxy.
fn get(direct: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(direct).unwrap()
}

/// Asserts that nothing arrives on `s` within `wait` and that it is still open.
fn assert_silent(s: &mut TcpStream, wait: Duration) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0; 64];
    match s.read(&mut buf) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence on an open connection, got {other:?}"),
    }
    s.set_read_timeout(Some(ANSWER)).unwrap();
}

/// Asserts that `s` was cut: its next read fails with a reset, or ends (EOF), with no data.
fn assert_cut(s: &mut TcpStream) {
    s.set_read_timeout(Some(ANSWER)).unwrap();
    let mut buf = [0; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset or EOF, got {other:?}"),
    }
}

#[test]
fn pass_through_carries_large_values_both_ways() {
    let server = RedisServer::builder().password("pw").start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    assert_eq!(
        proxy.url(),
        format!("redis://:pw@127.0.0.1:{}", proxy.addr().port())
    );
    let client = redis::Client::open(proxy.url()).unwrap();
    let mut conn = client.get_connection_with_timeout(ANSWER).unwrap();
    conn.set_read_timeout(Some(ANSWER)).unwrap();

    // Bigger than any one read or socket buffer: many chunks, reassembled in order.
    let value: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    redis::cmd("SET")
        .arg("big")
        .arg(&value)
        .exec(&mut conn)
        .unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("big").query(&mut conn).unwrap();
    assert!(back == value, "value changed on the way");
    assert_eq!((proxy.accepted(), proxy.open_connections()), (1, 1));

    drop(conn);
    assert!(eventually(|| proxy.open_connections() == 0));
    assert_eq!(proxy.accepted(), 1);
}

#[test]
fn delay_slows_each_direction() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut conn = raw(&proxy);
    ping(&mut conn).unwrap();

    let d = ms(150);
    proxy.delay(d);
    for _ in 0..3 {
        let started = Instant::now();
        ping(&mut conn).unwrap();
        let rtt = started.elapsed();
        // The request waits d on the way in, the reply d on the way out.
        assert!(rtt >= 2 * d, "round trip {rtt:?} with delay {d:?}");
        assert!(
            rtt < 2 * d + ms(1000),
            "round trip {rtt:?} with delay {d:?}"
        );
    }

    // Pipelined requests keep their order and share the delay instead of adding up.
    let started = Instant::now();
    conn.write_all(b"PING\r\nECHO a\r\nECHO b\r\n").unwrap();
    let mut reply = [0; 7 + 7 + 7];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+PONG\r\n$1\r\na\r\n$1\r\nb\r\n");
    assert!(started.elapsed() < 4 * d, "{:?}", started.elapsed());

    proxy.delay(Duration::ZERO);
    let started = Instant::now();
    ping(&mut conn).unwrap();
    assert!(
        started.elapsed() < d,
        "still delayed: {:?}",
        started.elapsed()
    );
}

#[test]
fn blackhole_swallows_bytes_and_keeps_connections_open() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut old = raw(&proxy);
    ping(&mut old).unwrap();
    server.reset_stats();

    proxy.blackhole();
    old.set_read_timeout(Some(ms(300))).unwrap();
    // No reply, and neither EOF nor a reset: the read times out on an open connection.
    let err = ping(&mut old).expect_err("a blackhole answers nothing");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    // New connections are accepted and stay just as silent.
    let mut new = raw(&proxy);
    new.set_read_timeout(Some(ms(300))).unwrap();
    let err = ping(&mut new).expect_err("a blackhole answers nothing");
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err}"
    );
    assert_eq!((proxy.accepted(), proxy.open_connections()), (2, 2));
    // The server never saw the swallowed PINGs.
    assert_eq!(server.command_calls().get("ping"), None);

    // Healing resets the connections that lost bytes; fresh ones work.
    proxy.heal();
    assert_eq!(proxy.open_connections(), 0);
    old.set_read_timeout(Some(ANSWER)).unwrap();
    let mut buf = [0; 1];
    let err = old
        .read(&mut buf)
        .expect_err("a connection with a hole is reset");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    ping(&mut raw(&proxy)).unwrap();
}

#[test]
fn blackhole_then_heal_keeps_connections_that_lost_nothing() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut idle = raw(&proxy);
    ping(&mut idle).unwrap();
    proxy.blackhole();
    proxy.heal();
    ping(&mut idle).unwrap();
    assert_eq!((proxy.accepted(), proxy.open_connections()), (1, 1));
}

#[test]
fn reset_sends_rst_to_every_open_connection() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut a = raw(&proxy);
    let mut b = raw(&proxy);
    ping(&mut a).unwrap();
    ping(&mut b).unwrap();
    let client = redis::Client::open(proxy.url()).unwrap();
    let mut conn = client.get_connection_with_timeout(ANSWER).unwrap();
    conn.set_read_timeout(Some(ANSWER)).unwrap();
    redis::cmd("PING").exec(&mut conn).unwrap();
    assert_eq!(proxy.open_connections(), 3);

    proxy.reset();
    assert_eq!(proxy.open_connections(), 0);
    for s in [&mut a, &mut b] {
        let mut buf = [0; 1];
        let err = s.read(&mut buf).expect_err("reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    }
    let err = redis::cmd("PING")
        .exec(&mut conn)
        .expect_err("the client sees the reset");
    assert!(err.is_connection_dropped(), "{err:?}");

    // New connections are accepted as before.
    ping(&mut raw(&proxy)).unwrap();
    assert_eq!(proxy.accepted(), 4);
}

#[test]
fn refuse_refuses_new_connections_and_keeps_open_ones() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut open = raw(&proxy);
    ping(&mut open).unwrap();

    proxy.refuse();
    proxy.refuse(); // idempotent
    let err = TcpStream::connect(proxy.addr()).expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    ping(&mut open).unwrap();
    assert_eq!(proxy.accepted(), 1);

    proxy.accept();
    proxy.accept(); // idempotent
    ping(&mut raw(&proxy)).unwrap();
    assert_eq!(proxy.accepted(), 2);

    // heal() also ends a refusal.
    proxy.refuse();
    assert!(TcpStream::connect(proxy.addr()).is_err());
    proxy.heal();
    ping(&mut raw(&proxy)).unwrap();
    assert_eq!(proxy.accepted(), 3);
}

#[test]
fn dead_upstream_resets_clients_until_it_is_back() {
    let mut server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    server.kill();
    let mut s = raw(&proxy);
    let err = ping(&mut s).expect_err("no upstream");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::UnexpectedEof
        ),
        "{err}"
    );
    server.restart().unwrap();
    let mut s = raw(&proxy);
    ping(&mut s).unwrap();
    assert_eq!((proxy.accepted(), proxy.open_connections()), (2, 1));
}

#[test]
fn drop_closes_everything() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let addr = proxy.addr();
    let mut s = raw(&proxy);
    ping(&mut s).unwrap();
    proxy.delay(ms(100)); // a writer waiting for a due chunk must not hold up the drop
    s.write_all(b"PING\r\n").unwrap();

    let started = Instant::now();
    drop(proxy);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let mut buf = [0; 1];
    let err = s.read(&mut buf).expect_err("reset by the drop");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    let err = TcpStream::connect(addr).expect_err("nothing listens any more");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    // The server sees its client go away (the helper's own connection is the one left).
    assert!(eventually(|| {
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut server.connection())
            .unwrap();
        clients.lines().count() == 1
    }));
}

#[test]
fn hold_replies_delays_replies_and_not_requests() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut direct = server.connection();
    let mut conn = raw(&proxy);
    ping(&mut conn).unwrap();

    let d = ms(300);
    proxy.hold_replies(d);
    let sent = Instant::now();
    conn.write_all(b"SET k v\r\n").unwrap();
    // The request passes at once: the server has run it long before the reply leaves.
    assert!(
        eventually_within(ms(200), ms(2), || get(&mut direct, "k").as_deref()
            == Some("v")),
        "SET not run within 200 ms"
    );
    let ran = sent.elapsed();
    conn.set_nonblocking(true).unwrap();
    let mut reply = [0; 5];
    let early = conn.read(&mut reply);
    conn.set_nonblocking(false).unwrap();
    assert!(
        matches!(&early, Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the reply came early ({ran:?} after sending): {early:?}"
    );
    // The reply leaves d after it arrived.
    conn.read_exact(&mut reply).unwrap();
    let replied = sent.elapsed();
    assert_eq!(&reply, b"+OK\r\n");
    assert!(replied >= d, "reply after {replied:?}, held {d:?}");
    assert!(
        replied < d + ms(1000),
        "reply after {replied:?}, held {d:?}"
    );
    assert!(ran < d, "SET ran {ran:?} after sending");

    // Zero ends it.
    proxy.hold_replies(Duration::ZERO);
    let started = Instant::now();
    ping(&mut conn).unwrap();
    assert!(started.elapsed() < d, "still held: {:?}", started.elapsed());
    assert_eq!((proxy.accepted(), proxy.open_connections()), (1, 1));
}

#[test]
fn drop_replies_runs_commands_and_swallows_their_replies() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut direct = server.connection();
    let mut conn = raw(&proxy);
    let mut idle = raw(&proxy);
    ping(&mut conn).unwrap();
    ping(&mut idle).unwrap();

    proxy.drop_replies();
    conn.write_all(b"SET k v\r\n").unwrap();
    assert!(eventually(|| get(&mut direct, "k").as_deref() == Some("v")));
    // No reply, and neither EOF nor a reset.
    assert_silent(&mut conn, ms(500));
    // New connections too: their commands run, their replies are lost.
    let mut new = raw(&proxy);
    new.write_all(b"SET j w\r\n").unwrap();
    assert!(eventually(|| get(&mut direct, "j").as_deref() == Some("w")));
    assert_silent(&mut new, ms(300));
    assert_eq!((proxy.accepted(), proxy.open_connections()), (3, 3));

    // Healing resets the connections that lost replies; the idle one carries on.
    proxy.heal();
    assert_cut(&mut conn);
    assert_cut(&mut new);
    ping(&mut idle).unwrap();
    ping(&mut raw(&proxy)).unwrap();
    assert!(eventually(|| proxy.open_connections() == 2));
}

#[test]
fn drop_replies_ended_by_another_mode_resets_what_lost_bytes() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut conn = raw(&proxy);
    ping(&mut conn).unwrap();
    proxy.drop_replies();
    conn.write_all(b"PING\r\n").unwrap();
    assert_silent(&mut conn, ms(200));
    proxy.drop_replies(); // the same mode again ends nothing
    assert_eq!(proxy.open_connections(), 1);
    proxy.delay(ms(10));
    assert_cut(&mut conn);
    assert_eq!(proxy.open_connections(), 0);
}

#[test]
fn reset_after_request_runs_the_command_then_resets() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut direct = server.connection();
    let mut conn = raw(&proxy);
    let mut idle = raw(&proxy);
    ping(&mut conn).unwrap();
    ping(&mut idle).unwrap();

    proxy.reset_after_request();
    conn.write_all(b"INCR n\r\n").unwrap();
    assert_cut(&mut conn);
    // The reset came after the server ran the command.
    assert_eq!(get(&mut direct, "n").as_deref(), Some("1"));

    // The mode stays on: a new connection gets the same after its first request.
    let mut new = raw(&proxy);
    new.write_all(b"INCR n\r\n").unwrap();
    assert_cut(&mut new);
    assert_eq!(get(&mut direct, "n").as_deref(), Some("2"));
    assert_eq!(proxy.accepted(), 3);

    // A connection that sent nothing was left alone; after heal, new connections work.
    proxy.heal();
    ping(&mut idle).unwrap();
    let mut after = raw(&proxy);
    after.write_all(b"INCR n\r\n").unwrap();
    let mut reply = [0; 4];
    after.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b":3\r\n");
    assert!(eventually(|| proxy.open_connections() == 2));
}

#[test]
fn spike_delays_the_next_chunks_only() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut conn = raw(&proxy);
    ping(&mut conn).unwrap();

    let d = ms(200);
    proxy.spike(d, 1);
    let started = Instant::now();
    ping(&mut conn).unwrap();
    let rtt = started.elapsed();
    // One request chunk and one reply chunk, each d late.
    assert!(rtt >= 2 * d, "round trip {rtt:?} with spike {d:?}");
    assert!(
        rtt < 2 * d + ms(1000),
        "round trip {rtt:?} with spike {d:?}"
    );
    let started = Instant::now();
    ping(&mut conn).unwrap();
    assert!(
        started.elapsed() < d,
        "spike used up: {:?}",
        started.elapsed()
    );

    // heal() ends a spike not yet used up.
    proxy.spike(d, 5);
    proxy.heal();
    let started = Instant::now();
    ping(&mut conn).unwrap();
    assert!(started.elapsed() < d, "healed: {:?}", started.elapsed());
}

#[test]
fn apply_puts_the_proxy_in_a_fault() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut conn = raw(&proxy);
    ping(&mut conn).unwrap();
    proxy.apply(&Fault::Blackhole);
    conn.write_all(b"PING\r\n").unwrap();
    assert_silent(&mut conn, ms(200));
    proxy.apply(&Fault::Reset);
    assert_cut(&mut conn);
    assert_eq!(proxy.open_connections(), 0);
}

#[test]
fn schedules_replay_from_their_seed() {
    let ms = Duration::from_millis;
    let a = FaultSchedule::new(42, ms(10_000), ms(200), ms(300));
    let b = FaultSchedule::new(42, ms(10_000), ms(200), ms(300));
    assert_eq!(a, b);
    assert_eq!(a.to_string(), b.to_string());
    assert_eq!(a.seed(), 42);
    assert!(a.to_string().contains("seed 42"), "{a}");
    assert!(!a.steps().is_empty());
    let c = FaultSchedule::new(43, ms(10_000), ms(200), ms(300));
    assert_ne!(a.steps(), c.steps(), "{a}\n{c}");
}

#[test]
fn a_schedule_runs_within_its_total_and_leaves_proxies_healed() {
    let server = RedisServer::start().unwrap();
    let proxies = [
        FaultProxy::start(&server).unwrap(),
        FaultProxy::start(&server).unwrap(),
    ];
    let both: Vec<&FaultProxy> = proxies.iter().collect();
    let total = ms(1000);
    let schedule = FaultSchedule::new(7, total, ms(60), ms(120));
    assert!(schedule.steps().len() > 3, "{schedule}");
    let picked = |i| schedule.steps().iter().any(|s| s.proxy(2) == i);
    assert!(picked(0) && picked(1), "{schedule}");
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    schedule.run(&both, &stop);
    let took = started.elapsed();
    let last = schedule.steps().last().unwrap();
    assert!(took >= last.at + last.lasts, "{took:?}\n{schedule}");
    assert!(took < total + ms(500), "{took:?}\n{schedule}");
    for proxy in &proxies {
        ping(&mut raw(proxy)).unwrap();
    }
}

#[test]
fn a_stopped_schedule_returns_at_once_and_heals() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    // Long faults, so that the stop comes in the middle of one.
    let schedule = FaultSchedule::new(1, ms(60_000), ms(10), ms(30_000));
    let stop = AtomicBool::new(false);
    let took = std::thread::scope(|s| {
        let runner = s.spawn(|| schedule.run(&[&proxy], &stop));
        std::thread::sleep(ms(300));
        let stopped = Instant::now();
        stop.store(true, Ordering::SeqCst);
        runner.thread().unpark();
        runner.join().unwrap();
        stopped.elapsed()
    });
    assert!(took < ms(500), "{took:?}\n{schedule}");
    ping(&mut raw(&proxy)).unwrap();
}
