//! Free loopback port selection: any free port for a single server, and a
//! port whose bus port is free too for a cluster node.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Asks the kernel for a currently free port on 127.0.0.1.
///
/// The listener is closed before returning, so the port can be taken by
/// someone else before Redis binds it; the caller retries in that case.
pub(crate) fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// First port tried for cluster nodes.
const CLUSTER_FIRST: u16 = 20_000;
/// Last port tried for cluster nodes: Redis refuses a port whose bus port
/// (port + 10000) is above 65535, and staying at or below 55000 keeps the bus
/// ports clear of the top of the ephemeral range.
const CLUSTER_LAST: u16 = 45_000;
/// Offset of the cluster bus port from the client port, fixed by Redis.
pub(crate) const CLUSTER_BUS_OFFSET: u16 = 10_000;
/// How many candidates [`free_cluster_port`] probes before giving up.
const CLUSTER_PROBES: u32 = 2_000;

/// Counts candidates handed out, so that servers started by one process
/// probe different ports.
static NEXT_CLUSTER_CANDIDATE: AtomicU32 = AtomicU32::new(0);

/// Finds a port in 20000–45000 where both it and its cluster bus port
/// (port + 10000) are currently free on 127.0.0.1.
///
/// The kernel's ephemeral ports can be too high for a cluster node, so
/// candidates are probed instead. The start is derived from the process id
/// and the clock, so that test processes running side by side mostly probe
/// different ports; a clash that still happens is retried by the caller.
pub(crate) fn free_cluster_port() -> io::Result<u16> {
    let span = u32::from(CLUSTER_LAST - CLUSTER_FIRST) + 1;
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id().wrapping_mul(7_919) ^ clock;
    for _ in 0..CLUSTER_PROBES {
        let n = NEXT_CLUSTER_CANDIDATE.fetch_add(1, Ordering::Relaxed);
        let offset = u16::try_from(seed.wrapping_add(n) % span).unwrap_or(0);
        let port = CLUSTER_FIRST + offset;
        if bindable(port) && bindable(port + CLUSTER_BUS_OFFSET) {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port pair (p, p + 10000) found in 20000-45000 for a cluster node",
    ))
}

/// Reports whether 127.0.0.1:`port` can be listened on right now.
fn bindable(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}
