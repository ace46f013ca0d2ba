//! Throwaway certificates for TLS servers, made with the `openssl` command.
//!
//! Each TLS [`RedisServer`](crate::RedisServer) gets its own certificate authority, so a client
//! trusts exactly one server when it trusts that CA, and trusting one server's CA is a ready-made
//! "wrong CA" for another. The server certificate names `127.0.0.1` (IP) and `localhost` (DNS),
//! the two names a test can dial. Keys are P-256: fast to generate, accepted by OpenSSL (Redis)
//! and rustls alike.
//!
//! The `openssl` command rather than a Rust crate keeps the kit free of a certificate library;
//! Debian installs it with `ca-certificates`, which anything that downloads crates has.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Message of the [`io::ErrorKind::NotFound`] error returned when `openssl` is missing.
const OPENSSL_NOT_FOUND: &str = "openssl not found on PATH (RedisServerBuilder::tls needs it to \
     make certificates); install it with: sudo apt-get install -y openssl";

/// Lifetime of the generated certificates; a test run is much shorter.
const VALID_DAYS: &str = "7";

/// Where the certificate files of one TLS server are.
#[derive(Debug, Clone)]
pub(crate) struct TlsFiles {
    /// PEM of the CA that signed `cert`; what clients must trust.
    pub(crate) ca_cert: PathBuf,
    /// PEM of the server certificate.
    pub(crate) cert: PathBuf,
    /// PEM of the server's private key.
    pub(crate) key: PathBuf,
}

/// Makes a CA and a server certificate for `127.0.0.1` and `localhost` in `dir`.
///
/// # Errors
///
/// [`io::ErrorKind::NotFound`] when `openssl` is not on `PATH`; otherwise an error quoting
/// openssl's output.
pub(crate) fn generate(dir: &Path) -> io::Result<TlsFiles> {
    let path = |name: &str| dir.join(name);
    let files = TlsFiles {
        ca_cert: path("ca.crt"),
        cert: path("server.crt"),
        key: path("server.key"),
    };
    let (ca_key, csr, ext, serial) = (
        path("ca.key"),
        path("server.csr"),
        path("server.ext"),
        path("ca.srl"),
    );

    // The CA: self-signed, allowed to sign certificates and nothing else. Its name is unique
    // (the directory's), as real CAs' are: a client that trusts another CA of the same name
    // would report a bad signature instead of an unknown issuer.
    let subject = format!(
        "/CN=deadbolt-testkit CA {}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    );
    openssl(|c| {
        c.args(["req", "-x509", "-new", "-nodes", "-days", VALID_DAYS])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .arg("-subj")
            .arg(&subject)
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&files.ca_cert)
    })?;
    // The server key and its signing request.
    openssl(|c| {
        c.args(["req", "-new", "-nodes", "-subj", "/CN=localhost"])
            .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .arg("-keyout")
            .arg(&files.key)
            .arg("-out")
            .arg(&csr)
    })?;
    // rustls (webpki) checks the subjectAltName, never the CN, and wants a leaf that is no CA.
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\n\
         extendedKeyUsage=serverAuth\n",
    )?;
    openssl(|c| {
        c.args(["x509", "-req", "-days", VALID_DAYS, "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&files.ca_cert)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-CAserial")
            .arg(&serial)
            .arg("-extfile")
            .arg(&ext)
            .arg("-out")
            .arg(&files.cert)
    })?;
    Ok(files)
}

/// Runs one `openssl` command built by `build`, turning a failure into an error with its output.
fn openssl(build: impl FnOnce(&mut Command) -> &mut Command) -> io::Result<()> {
    let mut command = Command::new("openssl");
    build(&mut command).stdin(Stdio::null());
    let output = command.output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            io::Error::new(io::ErrorKind::NotFound, OPENSSL_NOT_FOUND)
        } else {
            io::Error::new(e.kind(), format!("cannot run openssl: {e}"))
        }
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "openssl failed ({}): {:?}\n{}{}",
        output.status,
        command.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    )))
}
