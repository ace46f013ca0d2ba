//! `--link-delay`: the workloads reach their servers through a proxy that holds every chunk for
//! a while each way, as a network between machines would.
//!
//! On one machine's loopback, a Redlock's cost over one server is CPU: five servers and their
//! wake-ups share two cores. Between machines it is latency: the five round trips overlap, and a
//! quorum cycle takes about as long as one server's. The delay shows that second picture on the
//! first machine. The bench's own statistics connections go straight to the servers.

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::time::Duration;

use anyhow::Context as _;
use deadbolt_testkit::FaultProxy;
use redis::{ConnectionAddr, IntoConnectionInfo as _};

/// The longest `--link-delay`: far beyond any real link, short of a test of timeouts.
pub(crate) const MAX_LINK_DELAY: Duration = Duration::from_millis(50);

/// The links from the workloads to their servers, and the proxies that delay them (stopped
/// when dropped).
#[derive(Debug)]
pub(crate) struct Links {
    delay: Option<Duration>,
    proxies: Vec<FaultProxy>,
}

impl Links {
    /// Links that hold every chunk `delay` each way, or direct ones.
    pub(crate) fn new(delay: Option<Duration>) -> Links {
        Links {
            delay,
            proxies: Vec::new(),
        }
    }

    /// The URL a workload connects to for the server at `url`: `url` itself, or a delaying proxy
    /// in front of it. `url` is one of the bench's private servers (no password).
    pub(crate) fn route(&mut self, url: &str) -> anyhow::Result<String> {
        let Some(delay) = self.delay else {
            return Ok(url.to_owned());
        };
        let proxy = FaultProxy::start_to(upstream(url)?)
            .context("cannot start the proxy of --link-delay")?;
        proxy.delay(delay);
        let routed = proxy.url();
        self.proxies.push(proxy);
        Ok(routed)
    }

    /// `urls`, each routed.
    pub(crate) fn route_all(&mut self, urls: &[String]) -> anyhow::Result<Vec<String>> {
        urls.iter().map(|url| self.route(url)).collect()
    }
}

/// The TCP address of the server at `url`.
fn upstream(url: &str) -> anyhow::Result<SocketAddr> {
    let info = url
        .into_connection_info()
        .context("a private server's URL")?;
    let ConnectionAddr::Tcp(host, port) = info.addr() else {
        anyhow::bail!("--link-delay needs servers on TCP");
    };
    (host.as_str(), *port)
        .to_socket_addrs()?
        .next()
        .with_context(|| format!("{host}:{port} resolves to no address"))
}
