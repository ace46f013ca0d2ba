//! The `deadbolt` binary, end to end: real processes against a real `redis-server`.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use deadbolt_testkit::RedisServer;

fn deadbolt() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deadbolt"));
    cmd.env_remove("DEADBOLT_REDIS_URL");
    cmd
}

fn run(server: &RedisServer, key: &str, extra: &[&str], command: &[&str]) -> Command {
    let mut cmd = deadbolt();
    cmd.args(["run", "--redis", &server.url(), "--key", key])
        .args(extra)
        .arg("--")
        .args(command);
    cmd
}

fn is_locked(server: &RedisServer, key: &str) -> bool {
    let n: i64 = redis::cmd("EXISTS")
        .arg(format!("deadbolt:{{{key}}}"))
        .query(&mut server.connection())
        .unwrap();
    n == 1
}

/// Waits until `key` is locked, at most 5 s.
fn wait_locked(server: &RedisServer, key: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while !is_locked(server, key) {
        assert!(Instant::now() < end, "{key} never got locked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// Kills a `deadbolt run` started in its own process group, with its command.
fn kill_group(child: &Child) {
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL).unwrap();
}

/// Several `deadbolt run` processes append to one file under one lock: their runs never
/// interleave, and the fencing tokens they get strictly increase in the order they ran.
#[test]
fn runs_in_separate_processes_never_interleave() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!(
        "for i in 1 2 3 4 5; do echo \"start $ID $DEADBOLT_FENCE\" >> {log}; sleep 0.01; \
         echo \"end $ID\" >> {log}; done",
        log = log.display()
    );
    let children: Vec<Child> = (0..6)
        .map(|id| {
            run(
                &server,
                "file",
                &["--wait", "30s", "--fence-env"],
                &["sh", "-c", &script],
            )
            .env("ID", id.to_string())
            .spawn()
            .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6 * 5 * 2, "{text}");
    // Each process's run is one unbroken block of 10 lines: start, end, start, end, …
    let mut last_fence = 0u64;
    let mut ids = Vec::new();
    for block in lines.chunks(10) {
        let id = block[0].split(' ').nth(1).unwrap();
        for (i, line) in block.iter().enumerate() {
            let words: Vec<&str> = line.split(' ').collect();
            let want = if i % 2 == 0 { "start" } else { "end" };
            assert!(
                words[0] == want && words[1] == id,
                "interleaved at {line:?}:\n{text}"
            );
        }
        let fence: u64 = block[0].split(' ').nth(2).unwrap().parse().unwrap();
        assert!(fence > last_fence, "fence {fence} after {last_fence}");
        last_fence = fence;
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    let runs = ids.len();
    assert_eq!(runs, 6);
    assert!(!is_locked(&server, "file"));
}

#[test]
fn exits_with_the_command_status() {
    let server = RedisServer::start().unwrap();
    let out = run(&server, "k", &[], &["sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3);
    let out = run(
        &server,
        "k",
        &["--fence-env", "MY_FENCE"],
        &["sh", "-c", "test -n \"$MY_FENCE\""],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(!is_locked(&server, "k"));
}

#[test]
fn not_acquired_within_wait_exits_75() {
    let server = RedisServer::start().unwrap();
    let mut holder = run(&server, "k", &[], &["sleep", "5"])
        .process_group(0)
        .spawn()
        .unwrap();
    wait_locked(&server, "k");
    let start = Instant::now();
    let out = run(&server, "k", &["--wait", "300ms"], &["true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 75, "{out:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out"), "{stderr}");
    let out = run(
        &server,
        "k",
        &["--wait", "0s", "--conflict-exit-code", "9"],
        &["true"],
    )
    .output()
    .unwrap();
    assert_eq!(code(&out), 9);
    kill_group(&holder);
    holder.wait().unwrap();
}

/// The holder's whole process dies (kill -9): the next waiter gets the lock once the lease runs
/// out, within a small margin.
#[test]
fn holder_killed_then_next_waiter_acquires_within_the_lease() {
    let server = RedisServer::start().unwrap();
    let mut holder = run(&server, "k", &["--lease", "1s"], &["sleep", "30"])
        .process_group(0)
        .spawn()
        .unwrap();
    wait_locked(&server, "k");
    kill_group(&holder);
    holder.wait().unwrap();
    let killed = Instant::now();
    let out = run(&server, "k", &["--wait", "10s"], &["true"])
        .output()
        .unwrap();
    let after = killed.elapsed();
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(
        after < Duration::from_millis(1400),
        "acquired {after:?} after the kill"
    );
}

/// The lock disappears under a running command (here deleted by hand, as a failover might):
/// the command gets SIGTERM and deadbolt exits 76.
#[test]
fn lost_lock_stops_the_command_and_exits_76() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("terminated");
    let script = format!(
        "trap 'touch {}; kill $!; exit 1' TERM; sleep 30 & wait",
        marker.display()
    );
    let child = run(
        &server,
        "k",
        &["--lease", "600ms", "--grace", "2s"],
        &["sh", "-c", &script],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_locked(&server, "k");
    let start = Instant::now();
    let _: () = redis::cmd("DEL")
        .arg("deadbolt:{k}")
        .query(&mut server.connection())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 76, "{out:?}");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "took {:?}",
        start.elapsed()
    );
    assert!(marker.exists(), "the command did not get SIGTERM");
    assert!(String::from_utf8_lossy(&out.stderr).contains("was lost"));
}

#[test]
fn status_shows_state_ttl_and_fence() {
    let server = RedisServer::start().unwrap();
    let status = || {
        let out = deadbolt()
            .args(["status", "--redis", &server.url(), "k", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let free = status();
    assert_eq!(free["locked"], false);
    assert!(free["fence"].is_null());
    let mut holder = run(&server, "k", &[], &["sleep", "5"])
        .process_group(0)
        .spawn()
        .unwrap();
    wait_locked(&server, "k");
    let held = status();
    assert_eq!(held["locked"], true);
    assert!(held["ttl_ms"].as_u64().unwrap() > 20_000);
    assert!(held["fence"].as_u64().unwrap() > 0);
    kill_group(&holder);
    holder.wait().unwrap();
    let out = deadbolt()
        .args(["status", "--redis", &server.url(), "k"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("state  locked"));
}

#[test]
fn without_redis_a_private_server_is_started() {
    let out = deadbolt()
        .args(["run", "--key", "k", "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("started a private redis-server"),
        "{stderr}"
    );
}

#[test]
fn bad_input_gets_one_clear_line_and_a_nonzero_exit() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = deadbolt()
        .args([
            "run",
            "--redis",
            &format!("redis://:pw@127.0.0.1:{port}"),
            "--key",
            "k",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 70);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("deadbolt: cannot connect to redis at 127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw@"));

    let server = RedisServer::start().unwrap();
    for (args, what) in [
        (vec!["--wait", "10x"], "invalid value"),
        (vec!["--lease", "0s"], "invalid lease"),
        (vec!["--lease", "1s", "--wait", "1000d"], "invalid wait"),
    ] {
        let out = run(&server, "k", &args, &["true"]).output().unwrap();
        assert_ne!(code(&out), 0);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(what), "{args:?}: {stderr}");
    }
    let out = run(&server, "", &[], &["true"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid lock name"));
    let out = run(&server, "k", &[], &["/nonexistent/cmd"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 70);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run /nonexistent/cmd"));
    assert!(
        server.keys().iter().all(|k| k.ends_with(":fence")),
        "{:?}",
        server.keys()
    );
}

/// `rediss://` reaches a TLS-only Redis port, trusting a CA given in `SSL_CERT_FILE`.
#[test]
fn tls_urls_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = |f: &str| dir.path().join(f).display().to_string();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl is installed");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ext = path("ext.cnf");
    std::fs::write(&ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=deadbolt test ca",
        "-keyout",
        &path("ca.key"),
        "-out",
        &path("ca.pem"),
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &path("redis.key"),
        "-out",
        &path("redis.csr"),
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        &path("redis.csr"),
        "-CA",
        &path("ca.pem"),
        "-CAkey",
        &path("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &ext,
        "-out",
        &path("redis.pem"),
    ]);

    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = RedisServer::builder()
        .password("tls-secret")
        .arg("--tls-port")
        .arg(tls_port.to_string())
        .arg("--tls-cert-file")
        .arg(path("redis.pem"))
        .arg("--tls-key-file")
        .arg(path("redis.key"))
        .arg("--tls-ca-cert-file")
        .arg(path("ca.pem"))
        .arg("--tls-auth-clients")
        .arg("no")
        .start()
        .unwrap();
    let url = format!("rediss://:tls-secret@localhost:{tls_port}");
    let out = deadbolt()
        .env("SSL_CERT_FILE", path("ca.pem"))
        .args([
            "run",
            "--redis",
            &url,
            "--key",
            "k",
            "--fence-env",
            "--",
            "sh",
            "-c",
            "test -n \"$DEADBOLT_FENCE\"",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // The lock really went through that server.
    let fence: Option<u64> = redis::cmd("GET")
        .arg("deadbolt:{k}:fence")
        .query(&mut server.connection())
        .unwrap();
    assert!(fence.is_some());
    // An untrusted certificate is refused.
    let out = deadbolt()
        .args(["status", "--redis", &url, "k"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
}
