//! Integration tests of the kit against real `redis-server` processes. One binary, to keep link
//! time down.

/// Redis Cluster: slot routing, failover, teardown.
mod cluster;
/// Lock histories written by threads and a child process (no Redis).
mod history;
/// Independent masters for Redlock.
mod masters;
/// The fault proxy: each fault, checked by what a client sees.
mod proxy;
/// Starting, stopping and querying servers; ACL users.
mod redis_server;
/// Sentinel: discovery, failover, teardown.
mod sentinel;
/// TLS servers and their throwaway CA.
mod tls;
/// Helpers shared by the topology tests.
mod topology;
