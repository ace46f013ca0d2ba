//! TLS servers: certificates, the `rediss://` URL, and the helpers on the plain helper port.

use std::process::Command;

use deadbolt_testkit::RedisServer;

/// `redis-cli --tls` (OpenSSL, as clients in other languages use) against `server`, trusting
/// `ca`; returns its stdout and stderr.
fn redis_cli_tls(server: &RedisServer, ca: &std::path::Path, host: &str) -> String {
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", host, "-p", &server.port().to_string(), "PING"])
        .output()
        .expect("run redis-cli");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn tls_server_speaks_tls_with_its_own_ca() {
    let server = RedisServer::builder().tls().start().unwrap();
    assert_eq!(
        server.url(),
        format!("rediss://127.0.0.1:{}", server.port())
    );
    let ca = server.ca_cert_path().expect("a TLS server has a CA");
    let pem = std::fs::read_to_string(ca).unwrap();
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");

    // The certificate names both 127.0.0.1 and localhost.
    assert_eq!(redis_cli_tls(&server, ca, "127.0.0.1").trim(), "PONG");
    assert_eq!(redis_cli_tls(&server, ca, "localhost").trim(), "PONG");

    // Plain RESP on the TLS port gets no answer.
    let plain = redis::Client::open(format!("redis://{}", server.addr())).unwrap();
    let err = plain
        .get_connection_with_timeout(std::time::Duration::from_secs(1))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
        .expect_err("plain text on the TLS port");
    assert!(err.is_connection_dropped() || err.is_timeout(), "{err}");

    // The helpers work, through the plain helper port.
    redis::cmd("SET")
        .arg("k")
        .arg("v")
        .exec(&mut server.connection())
        .unwrap();
    assert_eq!(server.keys(), ["k"]);
    assert_eq!(server.command_calls().get("set"), Some(&1));
}

#[test]
fn another_servers_ca_is_not_trusted() {
    let server = RedisServer::builder().tls().start().unwrap();
    let other = RedisServer::builder().tls().start().unwrap();
    let other_ca = other.ca_cert_path().unwrap();
    let out = redis_cli_tls(&server, other_ca, "127.0.0.1");
    assert!(out.contains("certificate verify failed"), "{out}");
}

#[test]
fn tls_with_password_and_restart() {
    let mut server = RedisServer::builder().tls().password("pw").start().unwrap();
    assert_eq!(
        server.url(),
        format!("rediss://:pw@127.0.0.1:{}", server.port())
    );
    let port = server.port();
    server.restart().unwrap();
    assert_eq!(server.port(), port);
    let ca = server.ca_cert_path().unwrap().to_owned();
    let out = Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(&ca)
        .args([
            "-p",
            &port.to_string(),
            "--no-auth-warning",
            "-a",
            "pw",
            "PING",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "PONG");
    assert_eq!(server.keys(), Vec::<String>::new());
}

#[test]
fn plain_server_has_no_ca() {
    let server = RedisServer::start().unwrap();
    assert!(server.ca_cert_path().is_none());
    assert!(server.url().starts_with("redis://"));
}
