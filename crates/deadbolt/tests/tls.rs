//! `rediss://` against real TLS servers, each with a throwaway CA of its own.
//!
//! The tests enable rustls's `custom-provider` feature (see Cargo.toml), so rustls picks no
//! crypto provider by itself, as in an application that also compiles aws-lc-rs: each of these
//! connects would panic inside redis-rs if deadbolt did not install one.
#![cfg(feature = "tls")]

use std::error::Error as _;
use std::time::{Duration, Instant};

use deadbolt::{Client, Error, ReleaseOutcome};
use deadbolt_testkit::{FaultProxy, RedisServer};

use crate::util::{assert_clean, ms, take_and_release};

fn tls_server() -> RedisServer {
    RedisServer::builder()
        .tls()
        .start()
        .expect("start a TLS redis-server")
}

/// The PEM of the CA that signed `server`'s certificate.
fn ca(server: &RedisServer) -> Vec<u8> {
    std::fs::read(server.ca_cert_path().expect("a TLS server")).unwrap()
}

/// Asserts that `result` is a connect error caused by an untrusted server certificate: rustls's
/// "unknown issuer" is in the source chain.
///
/// redis-rs keeps the I/O error behind an `Arc<dyn Error>`, which cannot be downcast, so the
/// chain is compared with the message of the very rustls error expected.
fn assert_unknown_issuer(result: deadbolt::Result<Client>) {
    let err = result.expect_err("the server's certificate must not be trusted");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    let expected =
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer).to_string();
    let mut chain = Vec::new();
    let mut source = err.source();
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    assert!(
        chain.iter().any(|m| m.contains(&expected)),
        "expected `{expected}` in the source chain of {err:?}: {chain:?}"
    );
}

#[tokio::test]
async fn a_trusted_private_ca_locks_and_wakes_waiters() {
    let server = tls_server();
    let connect = || {
        Client::builder(&server.url())
            .tls_root_cert(ca(&server))
            .connect()
    };
    let (locks, other) = (connect().await.unwrap(), connect().await.unwrap());
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());

    let guard = locks.lock("a").acquire().await.unwrap();
    // The waiter is woken by the release on the pub/sub connection, also over TLS, long
    // before the 30 s lease would run out.
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let guard = other.lock("a").wait(ms(5000)).acquire().await.unwrap();
        let waited = started.elapsed();
        assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
        waited
    });
    tokio::time::sleep(ms(200)).await;
    assert_eq!(guard.release().await.unwrap(), ReleaseOutcome::Released);
    let waited = waiter.await.unwrap();
    assert!(waited < ms(2000), "woken after {waited:?}");
    assert_clean(&server);
}

#[tokio::test]
async fn system_roots_do_not_trust_a_private_ca() {
    let server = tls_server();
    assert_unknown_issuer(Client::connect(&server.url()).await);
}

#[tokio::test]
async fn another_ca_is_not_trusted() {
    let server = tls_server();
    let other = tls_server();
    assert_unknown_issuer(
        Client::builder(&server.url())
            .tls_root_cert(ca(&other))
            .connect()
            .await,
    );
}

#[tokio::test]
async fn rediss_to_a_plain_server_fails_within_the_connect_timeout() {
    let server = RedisServer::start().unwrap();
    let url = format!("rediss://{}", server.addr());
    let connect_timeout = ms(500);
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        Client::builder(&url)
            .connect_timeout(connect_timeout)
            .connect(),
    )
    .await
    .expect("connect must not hang");
    let err = result.expect_err("a plain server speaks no TLS");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    // Redis waits for the end of a command line that the TLS hello never sends: the connect
    // timeout ends it, not the manager's reconnect back-off.
    assert!(
        started.elapsed() < connect_timeout + ms(1000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn root_cert_is_checked_before_connecting() {
    let server = RedisServer::start().unwrap();
    let err = Client::builder(&server.url())
        .tls_root_cert(b"-----BEGIN CERTIFICATE-----\n".to_vec())
        .connect()
        .await
        .expect_err("a root certificate with a redis:// url");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    let tls = tls_server();
    let err = Client::builder(&tls.url())
        .tls_root_cert(b"not a certificate".to_vec())
        .connect()
        .await
        .expect_err("a PEM without certificates");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err:?}");
    assert!(tls.keys().is_empty());
}

#[tokio::test]
async fn reconnects_over_tls_after_a_reset() {
    let server = tls_server();
    // The certificate names 127.0.0.1, where the proxy listens too.
    let proxy = FaultProxy::start(&server).unwrap();
    let locks = Client::builder(&proxy.url())
        .tls_root_cert(ca(&server))
        .connect()
        .await
        .unwrap();
    take_and_release(&locks, "a").await;
    let before = proxy.accepted();

    proxy.reset();
    // The command that sees the reset may fail; the manager then reconnects, trusting the same
    // private CA.
    let retry = async {
        loop {
            if let Ok(guard) = locks.lock("a").try_acquire().await {
                return guard.release().await.unwrap();
            }
            tokio::time::sleep(ms(50)).await;
        }
    };
    let outcome = tokio::time::timeout(Duration::from_secs(5), retry)
        .await
        .expect("no lock within 5 s of the reset");
    assert_eq!(outcome, ReleaseOutcome::Released);
    assert!(proxy.accepted() > before, "no new connection");
    assert_clean(&server);
}
