//! TLS (`rediss://`) through rustls.

/// Installs ring's rustls provider as the process default, unless one is installed already.
///
/// rustls needs a process-level `CryptoProvider` when more than one could be used: a binary
/// that also enables another provider (aws-lc-rs, through another dependency) would otherwise
/// panic at the first TLS handshake. Installing ours only when none is set leaves an
/// application's own choice alone; two threads racing here both succeed.
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
