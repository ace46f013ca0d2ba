//! Which server a URL names, for a client of several servers (sharded, Redlock): an identity
//! that clients agree on whatever the spelling, so that sharded names land on the same server
//! for every client, and so that one server listed twice is refused.
//!
//! Three checks, from cheap to sure:
//!
//! - **The spelling.** A URL may end in `#NAME`, which becomes the server's identity; otherwise
//!   it is the address, normalized: the host in lower case, IP literals in their canonical form
//!   (`::ffff:127.0.0.1` is `127.0.0.1`), and `localhost` as `127.0.0.1`. Two URLs of one
//!   client with the same identity are refused before anything is sent.
//! - **The server's own id.** After connecting, each server's `run_id` (`INFO server`) tells
//!   whether two URLs reached the same server under different names (two interfaces, a host
//!   name and its address); such a list is refused.
//! - **What other clients call it.** A sharded client stores each server's identity on that
//!   server (`<prefix>:shard`, `SET … NX`, no expiry) and refuses to connect when another client
//!   stored a different one: two services that list the same servers under different names
//!   would otherwise place a name on two servers at once.

use std::net::IpAddr;

use crate::error::{Error, Result};

/// Splits the `#NAME` off a URL: the URL to connect to, and the name if one was given.
pub(crate) fn split_name(url: &str) -> Result<(&str, Option<&str>)> {
    let Some((url, name)) = url.split_once('#') else {
        return Ok((url, None));
    };
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            "redis url",
            format!("server name `#{name}`: 1 to 64 printable ASCII characters, no spaces"),
        ));
    }
    Ok((url, Some(name)))
}

/// The identity of the server at `addr` (`host:port`, as redis-rs prints it, or a socket path),
/// named `name` if the URL gave one.
pub(crate) fn identity(addr: &str, name: Option<&str>) -> String {
    if let Some(name) = name {
        return format!("#{name}");
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return addr.to_owned();
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = match host.parse::<IpAddr>() {
        Ok(ip) => ip.to_canonical().to_string(),
        Err(_) if host.eq_ignore_ascii_case("localhost") => "127.0.0.1".to_owned(),
        Err(_) => host.to_ascii_lowercase(),
    };
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The key under which a sharded server keeps its identity (see the module docs).
pub(crate) fn shard_key(prefix: &str) -> String {
    if prefix.is_empty() {
        "shard".to_owned()
    } else {
        format!("{prefix}:shard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_address_are_one_identity() {
        for addr in [
            "127.0.0.1:7000",
            "localhost:7000",
            "LOCALHOST:7000",
            "[::ffff:127.0.0.1]:7000",
        ] {
            assert_eq!(identity(addr, None), "127.0.0.1:7000", "{addr}");
        }
        assert_eq!(identity("[::1]:7000", None), "[::1]:7000");
        assert_eq!(
            identity("Redis-A.internal:6379", None),
            "redis-a.internal:6379"
        );
        assert_eq!(identity("10.0.0.1:6379", Some("a")), "#a");
        assert_eq!(identity("/tmp/redis.sock", None), "/tmp/redis.sock");
    }

    #[test]
    fn names_are_split_off_and_checked() {
        assert_eq!(
            split_name("redis://h:1#a").unwrap(),
            ("redis://h:1", Some("a"))
        );
        assert_eq!(split_name("redis://h:1").unwrap(), ("redis://h:1", None));
        assert!(split_name("redis://h:1#").is_err());
        assert!(split_name("redis://h:1#a b").is_err());
    }
}
