//! Integration tests of the kit against real `redis-server` processes. One binary, to keep link
//! time down.

/// The fault proxy: each fault, checked by what a client sees.
mod proxy;
/// Starting, stopping and querying servers; ACL users.
mod redis_server;
/// TLS servers and their throwaway CA.
mod tls;
