//! The `deadbolt` binary, end to end: real processes against a real `redis-server`.
//!
//! No test reaches port 6379 (the default of `run` and `status`, where a machine may run its own
//! Redis): every command gets `--redis`, and [`deadbolt`] points `DEADBOLT_REDIS_URL` at a closed
//! port, so a test that forgets `--redis` fails instead of touching a real server.
//!
//! Sections: running commands; the command's process group; the exit status; contention and
//! failure; errors a user can act on; `status`; several servers (Redlock, sharded); `bench`;
//! help and logs.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use deadbolt_testkit::{FaultProxy, RedisMasters, RedisServer};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn deadbolt() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deadbolt"));
    cmd.env(
        "DEADBOLT_REDIS_URL",
        format!("redis://127.0.0.1:{}", closed_port()),
    )
    .env_remove("DEADBOLT_LOG")
    .env_remove("NO_COLOR");
    cmd
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether process `pid` is alive: it exists and is not a zombie (a killed process whose new
/// parent has not reaped it yet is dead for every purpose here).
fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat[stat.rfind(')').unwrap() + 1..]
        .split_whitespace()
        .next()
        .unwrap();
    state != "Z" && state != "X"
}

/// The pids a command wrote to `file`, one or more per line.
fn pids_in(file: &Path) -> Vec<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect()
}

/// Waits until `file` exists, at most 5 s.
fn wait_for_file(file: &Path) {
    let end = Instant::now() + Duration::from_secs(5);
    while !file.exists() {
        assert!(Instant::now() < end, "{} never appeared", file.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits for `child` at most `limit`, killing it and failing past that.
fn wait_with_limit(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("deadbolt ran longer than {limit:?}");
        }
    }
}

/// Every key of `server` that holds a deadbolt owner token (`dbt2-…`), with its value.
fn token_keys(server: &RedisServer) -> Vec<(String, String)> {
    let mut conn = server.connection();
    server
        .keys()
        .into_iter()
        .filter_map(|key| {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut conn).unwrap();
            if kind != "string" {
                return None;
            }
            let value: Option<String> = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
            let value = value?;
            value.starts_with("dbt2-").then_some((key, value))
        })
        .collect()
}

/// Runs one Redis command of the test's own on `server`.
fn redis_cmd<T: redis::FromRedisValue>(server: &RedisServer, args: &[&str]) -> T {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    cmd.query(&mut server.connection()).unwrap()
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

/// `--fence-env` takes a variable name, and not one the command needs or a nested deadbolt
/// reads: anything else is a usage error (2) that says why, found before a lock is taken or the
/// command runs. The default name is in `--help`.
#[test]
fn fence_env_takes_only_a_variable_name_the_command_can_spare() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    for (name, why) in [
        ("=A=B", "not a variable name"),
        ("", "not a variable name"),
        ("1FENCE", "not a variable name"),
        ("MY-FENCE", "not a variable name"),
        ("FENCE ", "not a variable name"),
        ("PATH", "the command needs PATH"),
        ("HOME", "the command needs HOME"),
        ("SHELL", "the command needs SHELL"),
        ("USER", "the command needs USER"),
        ("LD_PRELOAD", "the command needs LD_PRELOAD"),
        ("LD_LIBRARY_PATH", "the command needs LD_LIBRARY_PATH"),
        ("DEADBOLT_REDIS_URL", "DEADBOLT_"),
        ("DEADBOLT_LOG", "DEADBOLT_"),
        ("DEADBOLT_FENCE2", "DEADBOLT_"),
    ] {
        let flag = format!("--fence-env={name}");
        let out = run(&server, "k", &[&flag], &["touch"])
            .arg(&ran)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{flag}: {out:?}");
        let stderr = stderr(&out);
        assert!(stderr.contains(why), "{flag}: {stderr}");
        assert!(!ran.exists(), "{flag}: the command ran");
    }
    // Nothing was taken, not even a fencing counter.
    assert!(server.keys().is_empty(), "{:?}", server.keys());

    // Names of the command's own are fine, as is the default, and the rest of the command's
    // environment is left as it was.
    let path = std::env::var("PATH").unwrap();
    for (args, var) in [
        (vec!["--fence-env"], "DEADBOLT_FENCE"),
        (vec!["--fence-env", "_fence_2"], "_fence_2"),
        (vec!["--fence-env=Path"], "Path"),
    ] {
        let check = format!("test -n \"${var}\" && test \"$PATH\" = \"{path}\"");
        let out = run(&server, "k", &args, &["sh", "-c", &check])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{args:?}: {out:?}");
    }

    let out = deadbolt().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    // The option's line, and the lines of its text under it, up to the next option.
    let fence_env: Vec<&str> = help
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("--fence-env"))
        .enumerate()
        .take_while(|(i, line)| *i == 0 || !line.trim_start().starts_with('-'))
        .map(|(_, line)| line)
        .collect();
    let fence_env = fence_env.join("\n");
    assert!(
        fence_env.contains("DEADBOLT_FENCE"),
        "the default name is not in --help: {help}"
    );
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
    assert!(stderr.contains("timed out after "), "{stderr}");
    // Rounded: "300ms" or "1.01s", never "301.482937ms".
    let waited = stderr.split("timed out after ").nth(1).unwrap();
    let waited = waited.split(' ').next().unwrap();
    assert!(
        waited.ends_with("ms") && waited.trim_end_matches("ms").parse::<u64>().is_ok(),
        "{stderr}"
    );
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
    let stderr = stderr(&out);
    assert!(
        stderr.contains("lock `k` was lost (its key was gone: the lease ran out, or the key was deleted or lost); stopping the command"),
        "{stderr}"
    );
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
    assert_eq!(
        stderr.trim_end(),
        format!("deadbolt: cannot connect to redis at 127.0.0.1:{port}: connection refused")
    );
    assert!(!stderr.contains("pw@"));

    let server = RedisServer::start().unwrap();
    // Usage errors exit 2, whether clap or deadbolt finds them, as `--help` says.
    for (args, what) in [
        (vec!["--wait", "10x"], "invalid value"),
        (vec!["--lease", "0s"], "invalid lease"),
        (vec!["--lease", "1s", "--wait", "1000d"], "invalid wait"),
    ] {
        let out = run(&server, "k", &args, &["true"]).output().unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(what), "{args:?}: {stderr}");
    }
    let out = run(&server, "", &[], &["true"]).output().unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
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
    // An untrusted certificate is refused, and not mistaken for a plain-text port.
    let out = deadbolt()
        .args(["status", "--redis", &url, "k"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
    assert!(!stderr(&out).contains("plain-text"), "{out:?}");
    // Plain text to the TLS port: not a Redis answer, and the hint names rediss://.
    let (code, line) = status_error(&format!("redis://:tls-secret@127.0.0.1:{tls_port}"));
    assert_eq!(code, 70);
    assert!(
        line.contains("did not answer like a redis server"),
        "{line}"
    );
    assert!(line.contains("rediss://"), "{line}");
}

// ---------------------------------------------------------------------------------------------
// The command's process group

/// A lost lock stops the whole process group, not just the direct child: a grandchild that
/// ignores SIGTERM and would write a file 1.5 s later is killed, and deadbolt exits 76 only once
/// no process of the group is left.
#[test]
fn a_lost_lock_stops_the_whole_process_group_before_exit_76() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    let late = dir.path().join("late");
    // The grandchild (a subshell ignoring SIGTERM, and its `sleep`, which inherits that) and
    // the shell record their pids; the grandchild writes `late` after 1.5 s.
    let script = format!(
        "(trap '' TERM; sh -c 'echo $$ >> {pids}; exec sleep 1.5'; echo late > {late}) & \
         echo $$ $! >> {pids}; sleep 30",
        pids = pids.display(),
        late = late.display()
    );
    let child = run(
        &server,
        "k",
        &["--lease", "1s", "--grace", "300ms"],
        &["sh", "-c", &script],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_locked(&server, "k");
    let end = Instant::now() + Duration::from_secs(5);
    while pids_in(&pids).len() < 3 {
        assert!(
            Instant::now() < end,
            "the command never started its grandchild"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _: () = redis_cmd(&server, &["DEL", "deadbolt:{k}"]);
    let out = wait_with_limit(child, Duration::from_secs(5));
    assert_eq!(code(&out), 76, "{out:?}");
    for pid in pids_in(&pids) {
        assert!(!alive(pid), "pid {pid} of the group outlived deadbolt");
    }
    // Past the grandchild's 1.5 s: nothing of the group wrote after deadbolt exited.
    std::thread::sleep(Duration::from_millis(1800));
    assert!(
        !late.exists(),
        "a grandchild wrote after deadbolt exited 76"
    );
}

/// SIGTERM and SIGINT sent to deadbolt reach every process of the command's group, as the
/// terminal or a service manager would have sent them, not only the direct child.
#[test]
fn signals_to_deadbolt_reach_the_whole_group() {
    let server = RedisServer::start().unwrap();
    for (signal, status) in [(Signal::SIGTERM, 143), (Signal::SIGINT, 130)] {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // `sleep` is the shell's child, deadbolt's grandchild; in the foreground of the shell,
        // since a non-interactive shell starts background jobs with SIGINT ignored.
        let script = format!(
            "sh -c 'echo $$ > {pids}.tmp; mv {pids}.tmp {pids}; exec sleep 30'; true",
            pids = pids.display()
        );
        let child = run(&server, "k", &[], &["sh", "-c", &script])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_file(&pids);
        let grandchild = pids_in(&pids)[0];
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let out = wait_with_limit(child, Duration::from_secs(5));
        assert_eq!(code(&out), status, "{signal}: {out:?}");
        let end = Instant::now() + Duration::from_secs(2);
        while alive(grandchild) {
            assert!(
                Instant::now() < end,
                "{signal} did not reach the grandchild"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_locked(&server, "k"));
    }
}

/// A signal while deadbolt still waits for the lock ends the wait with 128+N: the command does
/// not run, and nothing of the abandoned attempt is left in Redis.
#[test]
fn a_signal_while_waiting_ends_the_wait_without_running_the_command() {
    let server = RedisServer::start().unwrap();
    let _: () = redis_cmd(&server, &["SET", "deadbolt:{k}", "peer"]);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    for (signal, status) in [(Signal::SIGINT, 130), (Signal::SIGTERM, 143)] {
        let child = run(&server, "k", &["--wait", "10s"], &["touch"])
            .arg(&marker)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        kill(Pid::from_raw(child.id() as i32), signal).unwrap();
        let out = wait_with_limit(child, Duration::from_secs(5));
        assert_eq!(code(&out), status, "{signal}: {out:?}");
        assert!(stderr(&out).contains("the command was not run"), "{out:?}");
        assert!(!marker.exists());
        let value: Option<String> = redis_cmd(&server, &["GET", "deadbolt:{k}"]);
        assert_eq!(value.as_deref(), Some("peer"));
        assert!(token_keys(&server).is_empty(), "{:?}", token_keys(&server));
    }
}

/// `kill -9` of deadbolt cannot be handled, but the kernel then kills the command (parent-death
/// signal), so it does not run on without the lock until the lease expires.
#[test]
fn killing_deadbolt_with_sigkill_kills_the_command() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; exec sleep 30",
        pid = pid_file.display()
    );
    let mut child = run(&server, "k", &["--lease", "1s"], &["sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for_file(&pid_file);
    let command = pids_in(&pid_file)[0];
    assert!(alive(command));
    child.kill().unwrap();
    child.wait().unwrap();
    let end = Instant::now() + Duration::from_secs(2);
    while alive(command) {
        assert!(
            Instant::now() < end,
            "the command outlived a killed deadbolt"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// The exit status

/// The command exits while deadbolt is stopped (SIGSTOP) and the lease runs out meanwhile: on
/// resuming, deadbolt reports the command's own status (3), not 76, and says the lock expired.
/// Several at once, since the race this guards against did not show every time.
#[test]
fn a_command_that_ended_while_deadbolt_was_stopped_keeps_its_status() {
    let server = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trials: Vec<_> = (0..6)
        .map(|i| {
            let started = dir.path().join(format!("started-{i}"));
            let script = format!("touch {}; sleep 0.2; exit 3", started.display());
            let child = run(
                &server,
                &format!("k{i}"),
                &["--lease", "500ms"],
                &["sh", "-c", &script],
            )
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
            (child, started)
        })
        .collect();
    for (child, started) in &trials {
        wait_for_file(started);
        kill(Pid::from_raw(child.id() as i32), Signal::SIGSTOP).unwrap();
    }
    // The command exits after 0.2 s; the 500 ms lease is long gone after 1.2 s.
    std::thread::sleep(Duration::from_millis(1200));
    for (child, _) in &trials {
        kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT).unwrap();
    }
    for (i, (child, _)) in trials.into_iter().enumerate() {
        let out = wait_with_limit(child, Duration::from_secs(5));
        assert_eq!(code(&out), 3, "trial {i}: {out:?}");
        // The key expired: the watchdog found it gone, or the release did.
        let said = own_lines(&out);
        assert!(
            said.contains(&format!("lock `k{i}` was "))
                && said.contains("its key was gone")
                && said.contains("the exit status is the command's own"),
            "trial {i}: {said}"
        );
    }
    assert!(token_keys(&server).is_empty(), "{:?}", token_keys(&server));
}

/// The lock key's remaining TTL in ms, as Redis sees it (negative when there is no key).
fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis_cmd(server, &["PTTL", &format!("deadbolt:{{{key}}}")])
}

/// Waits until a renewal of `key` lands in Redis (its TTL goes up), at most 5 s.
fn wait_renewed(server: &RedisServer, key: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = pttl(server, key);
    loop {
        assert!(Instant::now() < end, "no renewal of {key} landed");
        std::thread::sleep(Duration::from_millis(5));
        let now = pttl(server, key);
        if now > last + 50 {
            return;
        }
        last = now;
    }
}

/// The lines deadbolt itself wrote to stderr ("deadbolt: …"), without log lines.
fn own_lines(out: &Output) -> String {
    stderr(out)
        .lines()
        .filter(|line| line.starts_with("deadbolt: "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A lock whose renewals land in Redis but whose replies never reach deadbolt is one deadbolt
/// cannot vouch for once its validity runs out, though it is not lost: the key is still ours.
/// When the command ends meanwhile (here while deadbolt is stopped), deadbolt says just that,
/// not that the lock was lost, and the exit status is the command's own.
#[test]
fn a_lock_that_could_not_be_confirmed_is_not_called_lost() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (pid_file, go) = (dir.path().join("pid"), dir.path().join("go"));
    let script = format!(
        "echo $$ > {pid}.tmp; mv {pid}.tmp {pid}; while [ ! -e {go} ]; do sleep 0.02; done; exit 3",
        pid = pid_file.display(),
        go = go.display()
    );
    let mut cmd = deadbolt();
    // A 3 s lease, renewed every second; validity ends 32 ms before the TTL set by the same
    // renewal would.
    cmd.args([
        "run",
        "--redis",
        &proxy.url(),
        "--key",
        "k",
        "--lease",
        "3s",
    ])
    .args(["--", "sh", "-c", &script])
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let deadbolt_pid = Pid::from_raw(child.id() as i32);
    wait_for_file(&pid_file);
    let command = pids_in(&pid_file)[0];
    // Shortly before a renewal is due (they come a second apart), Redis goes on running every
    // command but deadbolt hears of none: that renewal lands (the key's TTL is a full lease
    // from then) while the validity deadbolt knows of still counts from the one before. Only
    // replies missing for a second would make deadbolt replace its connection, and the new one
    // could not carry the renewal.
    wait_renewed(&server, "k");
    std::thread::sleep(Duration::from_millis(800));
    proxy.drop_replies();
    wait_renewed(&server, "k");
    let renewed = Instant::now();
    kill(deadbolt_pid, Signal::SIGSTOP).unwrap();
    std::fs::write(&go, "").unwrap();
    let end = Instant::now() + Duration::from_secs(2);
    while alive(command) {
        assert!(Instant::now() < end, "the command did not end");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Past the validity (some 2 s after the last landed renewal), before the TTL runs out (3 s).
    std::thread::sleep(
        (renewed + Duration::from_millis(2500)).saturating_duration_since(Instant::now()),
    );
    let ttl = pttl(&server, "k");
    assert!(
        ttl > 200,
        "the test was too slow: the key has {ttl} ms left"
    );
    proxy.heal();
    kill(deadbolt_pid, Signal::SIGCONT).unwrap();
    let out = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(code(&out), 3, "{out:?}");
    let said = own_lines(&out);
    assert!(!said.contains("lost"), "{said}");
    assert!(said.contains("lock `k` was not confirmed held"), "{said}");
}

/// The same while the command runs: deadbolt cannot vouch for the lock, so it stops the command
/// and exits 76, saying the lock could not be confirmed rather than that it was lost; and once
/// Redis answers again, the release tells that it was still ours.
#[test]
fn a_lock_that_could_not_be_confirmed_stops_the_command_but_is_not_called_lost() {
    let server = RedisServer::start().unwrap();
    let proxy = FaultProxy::start(&server).unwrap();
    let mut cmd = deadbolt();
    // The command takes 300 ms to exit on SIGTERM: Redis answers again by the release.
    cmd.args([
        "run",
        "--redis",
        &proxy.url(),
        "--key",
        "k",
        "--lease",
        "3s",
    ])
    .args([
        "--",
        "sh",
        "-c",
        "trap 'sleep 0.3; exit 1' TERM; sleep 30 & wait",
    ])
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    wait_locked(&server, "k");
    // As above: a renewal lands that deadbolt never hears of.
    wait_renewed(&server, "k");
    std::thread::sleep(Duration::from_millis(800));
    proxy.drop_replies();
    wait_renewed(&server, "k");
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.contains("stopping the command"))
    {
        match lines.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!("the command was not stopped: {said:?}");
            }
        }
    }
    proxy.heal();
    let out = wait_with_limit(child, Duration::from_secs(10));
    // Until the reader reaches the end of stderr.
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        said.push(line);
    }
    let said: Vec<String> = said
        .into_iter()
        .filter(|l| l.starts_with("deadbolt: "))
        .collect();
    assert_eq!(code(&out), 76, "{said:?}");
    assert!(
        said[0].starts_with("deadbolt: lock `k` can no longer be confirmed held"),
        "{said:?}"
    );
    assert!(!said.iter().any(|l| l.contains("lost")), "{said:?}");
    assert!(
        said.iter()
            .any(|l| l == "deadbolt: the release found lock `k` still ours"),
        "{said:?}"
    );
    assert!(!is_locked(&server, "k"));
}

// ---------------------------------------------------------------------------------------------
// Contention and failure

/// Redis goes away (killed, or frozen) while deadbolt waits for a lock a peer holds: that is a
/// failure, 70, not "the lock was busy", 75.
#[test]
fn redis_going_away_during_the_wait_is_a_failure_not_contention() {
    for frozen in [false, true] {
        let mut server = RedisServer::start().unwrap();
        let _: () = redis_cmd(&server, &["SET", "deadbolt:{k}", "peer"]);
        let child = run(&server, "k", &["--wait", "3s"], &["true"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400));
        if frozen {
            server.pause();
        } else {
            server.kill();
        }
        let out = wait_with_limit(child, Duration::from_secs(10));
        if frozen {
            server.resume();
        }
        assert_eq!(code(&out), 70, "frozen: {frozen}: {out:?}");
        let stderr = stderr(&out);
        assert!(!stderr.contains("timed out after"), "{stderr}");
        assert!(stderr.contains(&server.addr()), "{stderr}");
    }
}

/// Redis dies (SIGKILL) 1 s into a 5 s wait for a lock another process holds: `--wait` bounds
/// the whole run, clean-up included (with Redis gone the lease is the only clean-up left), and
/// the outage is told in deadbolt's own error line, with no log line at the default level.
#[test]
fn redis_killed_during_the_wait_ends_the_run_within_the_wait() {
    let mut server = RedisServer::start().unwrap();
    let mut holder = run(&server, "k", &[], &["sleep", "30"])
        .process_group(0)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_locked(&server, "k");
    let start = Instant::now();
    let child = run(&server, "k", &["--wait", "5s"], &["true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Waiting for real: subscribed to the lock's release channel.
    let end = start + Duration::from_secs(1);
    loop {
        let subscribed: Vec<redis::Value> =
            redis_cmd(&server, &["PUBSUB", "NUMSUB", "deadbolt:{k}:released"]);
        if subscribed.get(1) == Some(&redis::Value::Int(1)) {
            break;
        }
        assert!(Instant::now() < end, "the waiter never subscribed");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    server.kill();
    let out = wait_with_limit(child, Duration::from_secs(15));
    let took = start.elapsed();
    kill_group(&holder);
    holder.wait().unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
    assert!(
        took < Duration::from_millis(5500),
        "took {took:?} with --wait 5s"
    );
    let stderr = stderr(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("deadbolt: ") && stderr.contains(&server.addr()),
        "{stderr}"
    );
}

/// A waiter whose `--wait` runs out leaves no lock behind: not while a peer holds the key the
/// whole time (its value stays the peer's), and not when the peer lets go right around the
/// deadline, where deadbolt's last attempt may land just as it gives up.
#[test]
fn a_waiter_at_its_deadline_leaves_no_lock_behind() {
    let server = RedisServer::start().unwrap();
    for i in 0..10 {
        let _: () = redis_cmd(&server, &["SET", "deadbolt:{k}", "peer", "PX", "10000"]);
        let out = run(&server, "k", &["--wait", "300ms"], &["true"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 75, "trial {i}: {out:?}");
        let value: Option<String> = redis_cmd(&server, &["GET", "deadbolt:{k}"]);
        assert_eq!(value.as_deref(), Some("peer"), "trial {i}");
        assert!(
            token_keys(&server).is_empty(),
            "trial {i}: {:?}",
            token_keys(&server)
        );
    }
    // The peer deletes its key (without the release message deadbolt's own locks publish) at
    // times spread around the waiter's deadline.
    for i in 0..12u64 {
        let _: () = redis_cmd(&server, &["SET", "deadbolt:{k}", "peer", "PX", "10000"]);
        let child = run(&server, "k", &["--wait", "300ms"], &["true"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // From before the first attempt to past the deadline (startup takes some 10-30 ms).
        std::thread::sleep(Duration::from_millis(100 + 20 * i));
        let _: () = redis_cmd(&server, &["DEL", "deadbolt:{k}"]);
        let out = wait_with_limit(child, Duration::from_secs(5));
        assert!([0, 75].contains(&code(&out)), "trial {i}: {out:?}");
        // The peer's key is gone, and deadbolt either ran `true` and released, or gave up.
        let value: Option<String> = redis_cmd(&server, &["GET", "deadbolt:{k}"]);
        assert_eq!(value, None, "trial {i}: exit {}", code(&out));
        assert!(
            token_keys(&server).is_empty(),
            "trial {i}: {:?}",
            token_keys(&server)
        );
    }
}

/// A lock taken over by another owner is reported as such, not as "expired".
#[test]
fn a_lost_lock_says_whether_it_expired_or_was_taken() {
    let server = RedisServer::start().unwrap();
    let child = run(
        &server,
        "k",
        &["--lease", "600ms", "--grace", "1s"],
        &["sleep", "30"],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    wait_locked(&server, "k");
    let _: () = redis_cmd(
        &server,
        &["SET", "deadbolt:{k}", "someone-else", "PX", "10000"],
    );
    let out = wait_with_limit(child, Duration::from_secs(5));
    assert_eq!(code(&out), 76, "{out:?}");
    let stderr = stderr(&out);
    assert!(
        stderr.contains("lock `k` was lost (another owner has taken it)"),
        "{stderr}"
    );
    let value: Option<String> = redis_cmd(&server, &["GET", "deadbolt:{k}"]);
    assert_eq!(value.as_deref(), Some("someone-else"));
}

// ---------------------------------------------------------------------------------------------
// Errors a user can act on

/// A plain TCP server on a free loopback port that answers every connection with `reply` and
/// closes it, for 10 s at most.
fn not_redis(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    // Read what the client said first, as a server of another protocol would.
                    let mut buf = [0; 512];
                    let _ = stream.read(&mut buf);
                    let _ = stream.write_all(reply);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    port
}

/// `deadbolt status` against `url`: its exit code and its one stderr line.
fn status_error(url: &str) -> (i32, String) {
    let out = deadbolt()
        .args(["status", "--redis", url, "k"])
        .output()
        .unwrap();
    let stderr = stderr(&out);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    (code(&out), stderr.trim_end().to_owned())
}

#[test]
fn connection_errors_say_what_to_do() {
    let server = RedisServer::builder()
        .password("s3cret-pw")
        .start()
        .unwrap();
    let addr = server.addr();

    let (code, line) = status_error(&format!("redis://{addr}"));
    assert_eq!(code, 70);
    assert_eq!(
        line,
        format!(
            "deadbolt: redis at {addr} requires a password: pass it in the URL, \
             redis://:PASSWORD@{addr} or redis://USER:PASSWORD@{addr}"
        )
    );

    for url in [
        format!("redis://:wrong-pw@{addr}"),
        format!("redis://bob:wrong-pw@{addr}"),
    ] {
        let (code, line) = status_error(&url);
        assert_eq!(code, 70);
        assert!(line.contains("refused the credentials"), "{line}");
        assert!(!line.contains("wrong-pw"), "{line}");
    }

    // A Redis URL pointed at a server that is not Redis: one that hangs up, one that answers
    // in another protocol.
    for reply in [&b""[..], b"HTTP/1.1 400 Bad Request\r\n\r\n"] {
        let port = not_redis(reply);
        let (code, line) = status_error(&format!("redis://127.0.0.1:{port}"));
        assert_eq!(code, 70);
        assert!(
            line.contains(&format!(
                "127.0.0.1:{port} did not answer like a redis server"
            )),
            "{line}"
        );
    }

    // TLS to a plain-text port.
    let plain = RedisServer::start().unwrap();
    let (code, line) = status_error(&format!("rediss://{}", plain.addr()));
    assert_eq!(code, 70);
    assert!(
        line.contains("over TLS: is it a plain-text port? then use redis://"),
        "{line}"
    );

    // Nothing listening: said once, not twice.
    let port = closed_port();
    let (code, line) = status_error(&format!("redis://127.0.0.1:{port}"));
    assert_eq!(code, 70);
    assert_eq!(line.matches("refused").count(), 1, "{line}");

    // URLs deadbolt cannot use: shown as typed, without the password, with the valid schemes.
    for (url, shown) in [
        (
            "http://bob:hunter2@127.0.0.1:1",
            "`http://bob:***@127.0.0.1:1`",
        ),
        ("127.0.0.1:1", "`127.0.0.1:1`"),
    ] {
        let (code, line) = status_error(url);
        assert_eq!(code, 2, "{line}");
        assert!(line.contains(shown), "{line}");
        assert!(
            line.contains("redis://") && line.contains("rediss://"),
            "{line}"
        );
        assert!(!line.contains("hunter2"), "{line}");
    }
}

/// `run` and `status` never start a private Redis: without a URL they use redis-cli's default
/// (shown in `--help`, and not reached here), and when the given one does not answer they fail,
/// without running the command, naming the address.
#[test]
fn run_and_status_use_a_shared_redis_and_fail_when_it_does_not_answer() {
    for command in ["run", "status"] {
        let out = deadbolt().args([command, "--help"]).output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("[default: redis://127.0.0.1:6379"), "{help}");
    }
    let out = deadbolt().args(["bench", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("a private redis-server"));

    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let port = closed_port();
    let out = deadbolt()
        .env("DEADBOLT_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .args(["run", "--key", "k", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
    let stderr = stderr(&out);
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(!stderr.contains("private"), "{stderr}");
    assert!(!marker.exists(), "the command ran without a lock");
}

// ---------------------------------------------------------------------------------------------
// `status`

/// A lock key that holds a hash: `status` says so, as `run` does, instead of "locked, no expiry".
#[test]
fn status_and_run_agree_on_a_key_of_another_type() {
    let server = RedisServer::start().unwrap();
    let _: () = redis_cmd(&server, &["HSET", "deadbolt:{k}", "field", "value"]);
    let want = "key `deadbolt:{k}` holds a hash, not a deadbolt lock";
    let out = run(&server, "k", &["--wait", "1s"], &["true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
    assert!(stderr(&out).contains(want), "{}", stderr(&out));
    for json in [false, true] {
        let mut cmd = deadbolt();
        cmd.args(["status", "--redis", &server.url(), "k"]);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert_eq!(code(&out), 70, "{out:?}");
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
        assert!(out.stdout.is_empty(), "{out:?}");
    }
}

/// Ctrl-C while `status` waits for a Redis that does not answer: 130, as documented.
#[test]
fn status_interrupted_exits_130() {
    let server = RedisServer::start().unwrap();
    server.pause();
    let child = deadbolt()
        .args(["status", "--redis", &server.url(), "k"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = wait_with_limit(child, Duration::from_secs(5));
    server.resume();
    assert_eq!(code(&out), 130, "{out:?}");
    assert_eq!(stderr(&out).trim_end(), "deadbolt: interrupted");
}

// ---------------------------------------------------------------------------------------------
// Several servers: Redlock, sharded

/// `--redis URL` for each of `urls`.
fn redis_args(urls: &[String]) -> Vec<String> {
    urls.iter()
        .flat_map(|url| ["--redis".to_owned(), url.clone()])
        .collect()
}

/// Whether lock `key` exists on `server`.
fn holds(server: &RedisServer, key: &str) -> bool {
    is_locked(server, key)
}

/// `deadbolt status --json` over `urls` (and `extra`), parsed.
fn status_json(urls: &[String], extra: &[&str], name: &str) -> serde_json::Value {
    let out = deadbolt()
        .arg("status")
        .args(redis_args(urls))
        .args(extra)
        .args([name, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Four processes, each running `deadbolt run` ten times in a row over five Redlock masters,
/// increment a counter file non-atomically (read, sleep, write): no increment is lost, and no
/// lock is left on any server.
#[test]
fn redlock_runs_in_separate_processes_lose_no_increment() {
    let masters = RedisMasters::start(5).unwrap();
    let urls = masters.urls();
    let dir = tempfile::tempdir().unwrap();
    let counter = dir.path().join("counter");
    std::fs::write(&counter, "0").unwrap();
    let script = format!(
        "n=$(cat {c}); sleep 0.02; echo $((n + 1)) > {c}",
        c = counter.display()
    );
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let (urls, script) = (urls.clone(), script.clone());
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let out = deadbolt()
                        .arg("run")
                        .args(redis_args(&urls))
                        .args(["--key", "counter", "--wait", "60s", "--", "sh", "-c"])
                        .arg(&script)
                        .output()
                        .unwrap();
                    assert!(out.status.success(), "{out:?}");
                }
            })
        })
        .collect();
    for one in loops {
        one.join().unwrap();
    }
    let count = std::fs::read_to_string(&counter).unwrap();
    assert_eq!(count.trim(), "40", "lost increments");
    for server in masters.servers() {
        assert!(
            !holds(server, "counter"),
            "left locked on {}",
            server.addr()
        );
    }
}

/// With 3 of 5 masters down, `run` fails with 70 naming each dead server (and no live one),
/// and does not run the command; `status` fails alike.
#[test]
fn redlock_with_three_of_five_down_exits_70_naming_them() {
    let mut masters = RedisMasters::start(5).unwrap();
    let urls = masters.urls();
    let addrs: Vec<String> = masters.servers().iter().map(RedisServer::addr).collect();
    let dead = [0, 2, 3];
    for i in dead {
        masters.servers_mut()[i].kill();
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let out = deadbolt()
        .arg("run")
        .args(redis_args(&urls))
        .args(["--key", "k", "--", "touch"])
        .arg(&marker)
        .output()
        .unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
    assert!(!marker.exists(), "the command ran without a lock");
    let text = stderr(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("cannot connect to 3 of 5 redis servers"),
        "{text}"
    );
    for (i, addr) in addrs.iter().enumerate() {
        assert_eq!(
            text.contains(&format!("{addr}:")) || text.ends_with(addr),
            dead.contains(&i),
            "{addr}: {text}"
        );
    }
    let out = deadbolt()
        .arg("status")
        .args(redis_args(&urls))
        .arg("k")
        .output()
        .unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
    assert!(stderr(&out).contains(&addrs[2]), "{}", stderr(&out));
}

/// `status` over five masters: the majority's view, then each server's, in text and JSON; a
/// server that lost its copy shows as free while the majority still holds.
#[test]
fn status_across_five_redlock_nodes() {
    let masters = RedisMasters::start(5).unwrap();
    let urls = masters.urls();
    let free = status_json(&urls, &[], "k");
    assert_eq!(free["locked"], false);
    assert_eq!(free["mode"], "redlock");
    assert_eq!(free["needed"], 3);
    assert_eq!(free["nodes"].as_array().unwrap().len(), 5);

    let mut holder = deadbolt()
        .arg("run")
        .args(redis_args(&urls))
        .args(["--key", "k", "--fence-env", "--", "sleep", "30"])
        .process_group(0)
        .spawn()
        .unwrap();
    for server in masters.servers() {
        wait_locked(server, "k");
    }
    let held = status_json(&urls, &[], "k");
    assert_eq!(held["locked"], true, "{held}");
    assert!(held["ttl_ms"].as_u64().unwrap() > 20_000, "{held}");
    assert!(held["fence"].as_u64().unwrap() > 0, "{held}");
    for node in held["nodes"].as_array().unwrap() {
        assert_eq!(node["locked"], true, "{held}");
        assert_eq!(node["owner"], true, "{held}");
    }

    // Two servers lose their copy (as a restart without persistence would): the other three are
    // still a majority.
    for i in [1, 4] {
        let _: () = redis_cmd(&masters.servers()[i], &["DEL", "deadbolt:{k}"]);
    }
    let out = deadbolt()
        .arg("status")
        .args(redis_args(&urls))
        .arg("k")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state  locked, expires in"), "{text}");
    assert!(
        text.contains("nodes  5 (redlock: held when 3 of 5 agree)"),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    let line_of = |i: usize| {
        *lines
            .iter()
            .find(|l| l.trim_start().starts_with(&urls[i]))
            .unwrap_or_else(|| panic!("no line for {}: {text}", urls[i]))
    };
    for i in 0..5 {
        if i == 1 || i == 4 {
            assert!(line_of(i).ends_with("free"), "{text}");
        } else {
            assert!(
                line_of(i).contains("held by the owner, expires in"),
                "{text}"
            );
        }
    }
    // A third one: no majority holds it any more.
    let _: () = redis_cmd(&masters.servers()[0], &["DEL", "deadbolt:{k}"]);
    let partial = status_json(&urls, &[], "k");
    assert_eq!(partial["locked"], false, "{partial}");
    let owners = partial["nodes"].as_array().unwrap().iter();
    assert_eq!(
        owners.filter(|n| n["locked"] == true).count(),
        2,
        "{partial}"
    );
    let out = deadbolt()
        .arg("status")
        .args(redis_args(&urls))
        .arg("k")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state  free: no majority holds it (2 of 5 servers hold a copy)"),
        "{text}"
    );
    kill_group(&holder);
    holder.wait().unwrap();

    // A server that refuses connections is said to, not to be silent.
    let mut masters = masters;
    masters.servers_mut()[2].kill();
    let down = status_json(&urls, &[], "k");
    let error = down["nodes"][2]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("cannot connect") && error.contains("refused"),
        "{down}"
    );
}

/// `--sharded` puts a lock on one server only; a comma-separated `DEADBOLT_REDIS_URL` is a list;
/// bad combinations are usage errors (2).
#[test]
fn several_servers_sharded_and_from_the_environment() {
    let masters = RedisMasters::start(3).unwrap();
    let urls = masters.urls();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("held");
    let out = deadbolt()
        .arg("run")
        .args(redis_args(&urls))
        .args(["--sharded", "--key", "k", "--", "sh", "-c"])
        .arg(format!("touch {}", marker.display()))
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    assert!(marker.exists());
    let mut holder = deadbolt()
        .arg("run")
        .args(redis_args(&urls))
        .args(["--sharded", "--key", "k", "--", "sleep", "30"])
        .process_group(0)
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let holding = loop {
        let holding: Vec<usize> = (0..3)
            .filter(|&i| holds(&masters.servers()[i], "k"))
            .collect();
        if !holding.is_empty() || Instant::now() > end {
            break holding;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(holding.len(), 1, "{holding:?}");
    let status = status_json(&urls, &["--sharded"], "k");
    assert_eq!(status["locked"], true, "{status}");
    assert_eq!(status["mode"], "sharded", "{status}");
    kill_group(&holder);
    holder.wait().unwrap();

    // The environment may hold a list.
    let out = deadbolt()
        .env("DEADBOLT_REDIS_URL", urls.join(", "))
        .args(["status", "k", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["mode"], "redlock", "{json}");
    assert_eq!(json["nodes"].as_array().unwrap().len(), 3, "{json}");

    for (args, want) in [
        (
            vec!["--redis", urls[0].as_str(), "--sharded"],
            "--sharded needs several --redis URLs",
        ),
        (
            vec!["--redis", urls[0].as_str(), "--redis", urls[0].as_str()],
            "are the same server",
        ),
    ] {
        let out = deadbolt()
            .arg("status")
            .args(&args)
            .arg("k")
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {out:?}");
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
    let out = deadbolt().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("Redlock") && help.contains("--sharded"),
        "{help}"
    );
}

// ---------------------------------------------------------------------------------------------
// `bench`

/// `bench` fails at once, with the same messages as the other commands, on an unreachable Redis
/// or a wrong password (it used to retry for about 10 s).
#[test]
fn bench_fails_fast_with_the_same_messages() {
    let server = RedisServer::builder()
        .password("s3cret-pw")
        .start()
        .unwrap();
    for (url, want) in [
        (
            format!("redis://127.0.0.1:{}", closed_port()),
            "connection refused",
        ),
        (
            format!("redis://:wrong-pw@{}", server.addr()),
            "refused the credentials",
        ),
    ] {
        let start = Instant::now();
        let out = deadbolt()
            .args(["bench", "--redis", &url, "--duration", "1s"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 70, "{out:?}");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
        assert!(stderr(&out).contains(want), "{}", stderr(&out));
    }
}

/// Ctrl-C stops the bench with 130, after deleting its keys.
#[test]
fn bench_interrupted_exits_130_after_cleaning_up() {
    let server = RedisServer::start().unwrap();
    let mut child = deadbolt()
        .args(["bench", "--redis", &server.url(), "--duration", "20s"])
        .args(["--workload", "w2", "--w2-workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once it prints its progress line, its keys exist and its signal handler is in place.
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8];
    while !String::from_utf8_lossy(&seen).contains("bench: W2") {
        assert_eq!(
            err.read(&mut byte).unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let out = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(code(&out), 130, "{out:?} {rest}");
    assert!(rest.contains("deadbolt: interrupted"), "{rest}");
    assert!(server.keys().is_empty(), "{:?}", server.keys());
}

/// The ports of the 5 private servers a bench with floor3 or W3 announced on stderr.
fn quorum_ports(stderr: &str) -> Vec<u16> {
    let line = stderr
        .lines()
        .find(|l| l.contains("private redis-servers for floor3 and w3"))
        .unwrap_or_else(|| panic!("no servers announced: {stderr}"));
    let ports = line.split("ports ").nth(1).unwrap().trim_end_matches(')');
    ports.split(", ").map(|p| p.parse().unwrap()).collect()
}

/// Whether something listens on loopback `port`.
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// W3 (Redlock over 5 private servers) and its floor run with W1 and report their rows and
/// ratios, in JSON and in the table; the 5 servers are gone when the bench is. With `--redis`,
/// they are a usage error.
#[test]
fn bench_w3_reports_floor3_and_w3_against_w1() {
    let bench = |extra: &[&str]| {
        deadbolt()
            .env_remove("DEADBOLT_REDIS_URL")
            .args([
                "bench",
                "--workload",
                "w1",
                "--workload",
                "floor3",
                "--workload",
                "w3",
            ])
            .args(["--workers", "2", "--duration", "150ms", "--rounds", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = bench(&["--json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["W1", "floor3", "W3"], "{rows:?}");
    let (w1, floor3, w3) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(w1["nodes"], 1);
    assert_eq!(w3["nodes"], 5);
    for row in [floor3, w3] {
        assert!(row["ops_done"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(row["errors"], 0, "{row}");
        assert!(row["cycle_p50_us"].as_u64().is_some(), "{row}");
        assert!(row["cycle_p99_us"].as_u64().is_some(), "{row}");
    }
    // SET, EVALSHA, and the script's GET and DEL, on each of the 5 nodes.
    let floor3_cmds = floor3["cmds_per_acquisition"].as_f64().unwrap();
    assert!((floor3_cmds - 20.0).abs() < 0.01, "{floor3}");
    assert!(w3["cmds_per_acquisition"].as_f64().unwrap() >= 20.0, "{w3}");
    assert!(w3["ratio_to_floor"].as_f64().unwrap() > 0.0, "{w3}");
    assert!(w3["cycle_ratio_to_w1"].as_f64().unwrap() > 0.0, "{w3}");
    for port in quorum_ports(&stderr(&out)) {
        assert!(
            !listening(port),
            "a private server outlived the bench on {port}"
        );
    }

    let out = bench(&[]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    for want in ["floor3 ", "W3 ", "W3 / floor3 = ", "W3 cycle / W1 cycle = "] {
        assert!(table.contains(want), "{want}: {table}");
    }

    let server = RedisServer::start().unwrap();
    let out = deadbolt()
        .args(["bench", "--redis", &server.url(), "--workload", "w3"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(stderr(&out).contains("5 private redis-servers"), "{out:?}");
}

/// `--link-delay` puts its delay on every round trip of the workloads (a floor cycle is two
/// round trips, so at least four delays), for floor3 and W3 too; it refuses what it cannot
/// proxy, and a delay beyond any link, before starting anything.
#[test]
fn bench_link_delay_delays_every_round_trip() {
    let out = deadbolt()
        .env_remove("DEADBOLT_REDIS_URL")
        .args(["bench", "--workload", "floor", "--workload", "floor3"])
        .args(["--workers", "1", "--ops", "20", "--rounds", "1"])
        .args(["--link-delay", "5ms", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row["errors"], 0, "{row}");
        let p50 = row["cycle_p50_us"].as_u64().unwrap();
        assert!(
            p50 >= 20_000,
            "a cycle of two delayed round trips took {p50} µs: {row}"
        );
    }
    let server = RedisServer::start().unwrap();
    let url = server.url();
    for (args, want) in [
        (["--link-delay", "1ms", "--redis", &url], "not --redis"),
        (
            ["--link-delay", "1ms", "--workload", "w1c"],
            "cannot run w1c",
        ),
        (
            ["--link-delay", "1s", "--workload", "floor"],
            "at most 50ms",
        ),
    ] {
        let out = deadbolt()
            .env_remove("DEADBOLT_REDIS_URL")
            .arg("bench")
            .args(args)
            .output()
            .unwrap();
        assert_eq!(code(&out), 2, "{args:?}: {out:?}");
        assert!(stderr(&out).contains(want), "{args:?}: {}", stderr(&out));
    }
}

/// Ctrl-C during W3 exits 130 and stops the 5 private servers.
#[test]
fn bench_w3_interrupted_stops_its_servers() {
    interrupted_bench_stops_its_servers("w3", "bench: W3", quorum_ports, 5);
}

/// Starts `bench --workload WORKLOAD`, waits until stderr says `started` and announces the
/// `n` ports `ports_of` reads, sends SIGINT, and checks the exit status 130 and that no port
/// is listening any more.
fn interrupted_bench_stops_its_servers(
    workload: &str,
    started: &str,
    ports_of: fn(&str) -> Vec<u16>,
    n: usize,
) {
    let mut child = deadbolt()
        .env_remove("DEADBOLT_REDIS_URL")
        .args(["bench", "--workload", workload, "--duration", "20s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8];
    while !String::from_utf8_lossy(&seen).contains(started) {
        assert_eq!(
            err.read(&mut byte).unwrap(),
            1,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        seen.push(byte[0]);
    }
    let ports = ports_of(&String::from_utf8_lossy(&seen));
    assert_eq!(ports.len(), n);
    assert!(ports.iter().all(|&p| listening(p)));
    std::thread::sleep(Duration::from_millis(300));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let out = wait_with_limit(child, Duration::from_secs(10));
    assert_eq!(code(&out), 130, "{out:?} {rest}");
    for port in ports {
        assert!(
            !listening(port),
            "a private server outlived the bench on {port}"
        );
    }
}

/// The ports of the 6 nodes of the private cluster a bench with W1c announced on stderr.
fn cluster_ports(stderr: &str) -> Vec<u16> {
    let line = stderr
        .lines()
        .find(|l| l.contains("private Redis Cluster of 6 redis-servers for w1c"))
        .unwrap_or_else(|| panic!("no cluster announced: {stderr}"));
    let ports = line.split("ports ").nth(1).unwrap().trim_end_matches(')');
    ports.split(", ").map(|p| p.parse().unwrap()).collect()
}

/// W1c (W1 on a private Redis Cluster) runs with floor and W1 and reports its row and its
/// ratios to W1, in JSON and in the table; the cluster is gone when the bench is. With
/// `--redis`, it is a usage error.
#[test]
fn bench_w1c_reports_w1_on_a_cluster_against_w1() {
    let bench = |extra: &[&str]| {
        deadbolt()
            .env_remove("DEADBOLT_REDIS_URL")
            .args(["bench", "--workload", "w1", "--workload", "w1c"])
            .args(["--workers", "4", "--duration", "150ms", "--rounds", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = bench(&["--json"]);
    assert!(out.status.success(), "{out:?}");
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let labels: Vec<&str> = rows
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["W1", "W1c"], "{rows:?}");
    let w1c = &rows[1];
    assert_eq!(w1c["nodes"], 3);
    assert!(w1c["ops_done"].as_u64().unwrap() > 0, "{w1c}");
    assert_eq!(w1c["errors"], 0, "{w1c}");
    assert!(w1c["wait_p50_us"].as_u64().is_some(), "{w1c}");
    assert!(w1c["cycle_p99_us"].as_u64().is_some(), "{w1c}");
    // SET, EVALSHA, and the script's GET and DEL, summed over the 3 masters: as on one server.
    let cmds = w1c["cmds_per_acquisition"].as_f64().unwrap();
    assert!((4.0..4.1).contains(&cmds), "{w1c}");
    assert!(w1c["ratio_to_w1"].as_f64().unwrap() > 0.0, "{w1c}");
    assert!(w1c["cycle_ratio_to_w1"].as_f64().unwrap() > 0.0, "{w1c}");
    let ports = cluster_ports(&stderr(&out));
    assert_eq!(ports.len(), 6);
    for port in ports {
        assert!(
            !listening(port),
            "a cluster node outlived the bench on {port}"
        );
    }

    let out = bench(&[]);
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    for want in ["W1c ", "W1 cluster / W1 = ", "cycle p50 W1c "] {
        assert!(table.contains(want), "{want}: {table}");
    }

    let server = RedisServer::start().unwrap();
    let out = deadbolt()
        .args(["bench", "--redis", &server.url(), "--workload", "w1c"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    assert!(stderr(&out).contains("private Redis Cluster"), "{out:?}");
}

/// Ctrl-C during W1c exits 130 and stops the 6 nodes of the private cluster.
#[test]
fn bench_w1c_interrupted_stops_its_cluster() {
    interrupted_bench_stops_its_servers("w1c", "bench: W1c", cluster_ports, 6);
}

// ---------------------------------------------------------------------------------------------
// Help and logs

/// `--help` documents the exit statuses as they are (2 for usage errors, as clap exits) and the
/// environment variables, `DEADBOLT_LOG` included.
#[test]
fn help_documents_exit_statuses_and_environment() {
    let out = deadbolt().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "DEADBOLT_LOG",
        "DEADBOLT_REDIS_URL",
        "NO_COLOR",
        "2 for a usage error",
        "130",
    ] {
        assert!(help.contains(want), "{want}: {help}");
    }
    let out = deadbolt().args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in ["2 for a usage error", "process group", "fencing token"] {
        assert!(help.contains(want), "{want}: {help}");
    }
    let out = deadbolt().args(["run", "--no-such-flag"]).output().unwrap();
    assert_eq!(code(&out), 2);
    // The URL in the environment (with its password) is not shown in the help.
    let out = deadbolt()
        .env("DEADBOLT_REDIS_URL", "redis://:hunter2@10.0.0.5")
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hunter2"));
}

/// Logs in a pipe or a file carry no colour codes.
#[test]
fn logs_have_no_colour_codes_outside_a_terminal() {
    let server = RedisServer::start().unwrap();
    let out = run(&server, "k", &[], &["true"])
        .env("DEADBOLT_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{out:?}");
    let stderr = stderr(&out);
    assert!(stderr.contains("DEBUG"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

/// `--cluster URL` takes the lock on a Redis Cluster (on the master of the name's slot) and
/// `status` sees it there; `--sentinel` takes it on the master the Sentinels name.
#[test]
fn cluster_and_sentinel_flags() {
    let cluster = deadbolt_testkit::RedisCluster::start().unwrap();
    let seed = cluster.urls()[0].clone();
    let out = deadbolt()
        .args(["run", "--cluster", &seed, "--key", "in-cluster", "--"])
        .args(["sh", "-c", "exit 3"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 3, "{out:?}");
    let master = cluster.master_for_key("deadbolt:{in-cluster}").unwrap();
    let calls = master.command_calls();
    assert!(
        calls.contains_key("set"),
        "not taken on the slot's master: {calls:?}"
    );
    let out = deadbolt()
        .args(["status", "--cluster", &seed, "in-cluster"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = deadbolt()
        .args([
            "run",
            "--cluster",
            &seed,
            "--redis",
            &seed,
            "--key",
            "x",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 2, "{out:?}");
    drop(cluster);

    let sentinels = deadbolt_testkit::RedisSentinels::start().unwrap();
    let hosts: Vec<String> = sentinels.sentinels().iter().map(|s| s.addr()).collect();
    let spec = format!("{}/{}", hosts.join(","), sentinels.master_name());
    let out = deadbolt()
        .args(["run", "--sentinel", &spec, "--key", "watched", "--"])
        .args(["sh", "-c", "exit 4"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 4, "{out:?}");
    let calls = sentinels.master().command_calls();
    assert!(
        calls.contains_key("set"),
        "not taken on the master: {calls:?}"
    );
    let out = deadbolt()
        .args([
            "run",
            "--sentinel",
            "127.0.0.1:1/nobody",
            "--key",
            "x",
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 70, "{out:?}");
}

/// A new `run` against Sentinels whose master was just killed keeps asking them within its
/// wait, and runs the command on the master they promote, instead of failing at once while they
/// still name the dead one.
#[test]
fn a_run_during_a_sentinel_failover_waits_for_the_new_master() {
    let mut sentinels = deadbolt_testkit::RedisSentinels::start().unwrap();
    let hosts: Vec<String> = sentinels.sentinels().iter().map(|s| s.addr()).collect();
    let spec = format!("{}/{}", hosts.join(","), sentinels.master_name());
    sentinels.kill_master();
    let start = Instant::now();
    let out = deadbolt()
        .args([
            "run",
            "--sentinel",
            &spec,
            "--key",
            "failover",
            "--wait",
            "15s",
            "--",
        ])
        .args(["true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    println!("ran after {:?}", start.elapsed());
    sentinels.wait_for_failover(Duration::from_secs(5)).unwrap();
}
