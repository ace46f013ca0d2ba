//! TLS for `rediss://` URLs (the `tls` feature): the rustls crypto provider, and trusting a
//! private certificate authority.
//!
//! redis-rs builds its rustls configuration with `rustls::ClientConfig::builder()`, which uses
//! the process-wide default `CryptoProvider`. rustls chooses that default by itself only when
//! exactly one provider is compiled in. In an application whose other dependencies enable
//! aws-lc-rs as well (or rustls's `custom-provider`), it chooses none, and the first `rediss://`
//! connect panics inside redis-rs: "Could not automatically determine the process-level
//! CryptoProvider". So before a `rediss://` connect we install ring's provider, the one this
//! crate compiles in, but only when none is installed: an application that picked its own keeps
//! it.

use std::fmt;

use redis::{ConnectionAddr, ConnectionInfo};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::client::ClientBuilder;
use crate::error::{Error, Result};

/// Installs ring's crypto provider as the process default unless one is installed already.
pub(crate) fn ensure_crypto_provider() {
    if CryptoProvider::get_default().is_none() {
        // Another thread may install one between the check and here; either way one is, and
        // redis-rs finds it.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// PEM certificates a client trusts instead of the system's, from
/// [`ClientBuilder::tls_root_cert`].
#[derive(Clone)]
pub(crate) struct RootCert(Vec<u8>);

impl fmt::Debug for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RootCert({} bytes of PEM)", self.0.len())
    }
}

impl ClientBuilder {
    /// Trusts the certificate authorities in `pem` (one or more PEM certificates, the contents
    /// of a `ca.crt`) for a `rediss://` server, instead of the system's: for a server whose
    /// certificate a private CA signed. Reconnections trust the same.
    ///
    /// The default is the system's root certificates (the platform's store, which the
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` environment variables override). Needs the `tls`
    /// feature.
    ///
    /// [`connect`](Self::connect) fails with [`Error::InvalidArgument`] when `pem` holds no
    /// certificate or the URL is not `rediss://`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/tls/ca.crt")?;
    /// let locks = deadbolt::Client::builder("rediss://redis.internal:6380")
    ///     .tls_root_cert(ca)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_cert = Some(RootCert(pem.into()));
        self
    }
}

/// The redis-rs client for `info`, trusting `root_cert` (when set) instead of the system's roots.
pub(crate) fn open_client(
    info: ConnectionInfo,
    root_cert: Option<RootCert>,
) -> Result<redis::Client> {
    let Some(RootCert(pem)) = root_cert else {
        return redis::Client::open(info).map_err(|e| Error::invalid("redis url", e.to_string()));
    };
    if !matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        return Err(Error::invalid(
            "tls root certificate",
            "one is set, but the url is not rediss://",
        ));
    }
    // redis-rs skips what is not a certificate; an empty store would refuse every server.
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::invalid("tls root certificate", format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid(
            "tls root certificate",
            "the PEM holds no certificate",
        ));
    }
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    };
    redis::Client::build_with_tls(info, certificates)
        .map_err(|e| Error::invalid("tls root certificate", e.to_string()))
}

#[cfg(test)]
mod tests {
    use redis::IntoConnectionInfo;

    use super::*;

    #[test]
    fn installs_a_provider_and_keeps_it() {
        // Nothing else in this test binary installs one, and the tests enable rustls's
        // `custom-provider`, so rustls would not pick one by itself.
        ensure_crypto_provider();
        let first = CryptoProvider::get_default().expect("a provider is installed");
        ensure_crypto_provider();
        let second = CryptoProvider::get_default().expect("still installed");
        assert!(std::sync::Arc::ptr_eq(first, second));
    }

    #[test]
    fn root_cert_needs_a_certificate_and_a_tls_url() {
        let tls = || "rediss://127.0.0.1:1".into_connection_info().unwrap();
        let no_cert = open_client(tls(), Some(RootCert(b"no PEM here".to_vec())));
        assert!(
            matches!(&no_cert, Err(Error::InvalidArgument { reason, .. }) if reason.contains("no certificate")),
            "{no_cert:?}"
        );
        let plain = "redis://127.0.0.1:1".into_connection_info().unwrap();
        let plain = open_client(plain, Some(RootCert(Vec::new())));
        assert!(
            matches!(&plain, Err(Error::InvalidArgument { reason, .. }) if reason.contains("rediss://")),
            "{plain:?}"
        );
        assert!(open_client(tls(), None).is_ok());
    }
}
