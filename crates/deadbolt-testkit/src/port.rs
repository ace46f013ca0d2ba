//! Free loopback port selection.

use std::io;
use std::net::{Ipv4Addr, TcpListener};

/// Asks the kernel for a currently free port on 127.0.0.1.
///
/// The listener is closed before returning, so the port can be taken by
/// someone else before Redis binds it; the caller retries in that case.
pub(crate) fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}
