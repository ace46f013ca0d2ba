//! Integration tests: every test starts its own `redis-server` on a free loopback port (see
//! `deadbolt-testkit`); nothing is mocked. One binary, to keep link time down.

/// Shared helpers: start a server and a client, check what is left in Redis.
mod util;

/// ACL users without channel rights: locking works, waiters re-check; with rights, pub/sub.
mod acl;
/// Every bad input gets a typed error and leaves nothing in Redis.
mod bad_input;
/// Acquire, release and their outcomes; try_acquire; extend; inspect.
mod basics;
/// Dropping futures and guards at any point leaves nothing behind.
mod cancel;
/// Redis Cluster: slots, sharded pub/sub, per-slot renewal, failover.
mod cluster;
/// Mutual exclusion under contention from several clients, with fencing tokens.
mod exclusion;
/// Network and server faults: restart, silent connections, resets, outages, latency.
mod faults;
/// The resource-side fencing check.
mod fence;
/// Peers that use the same key layout (redsync, node-redlock, redis-py) are excluded too.
mod interop;
/// The #[locked] attribute, at run time.
mod macros;
/// MultiLock: all or nothing, one order, one round trip on one server.
mod multi;
/// Mixed fleets: waiters re-check behind peers, and do not poll behind deadbolt holders.
mod peers;
/// Replies late or lost after the command ran; the history checker's negative control.
mod proof;
/// Redlock over independent masters: quorum, node failures, per-node errors, fencing.
mod redlock;
/// Replicas: `WAIT` confirms an acquisition, too few replicas release it; `READONLY` is retried.
mod replicas;
/// The scoped form, `Client::with_lock`.
mod scoped;
/// Redis Sentinel: `redis+sentinel://`, unknown masters, following a failover.
mod sentinel;
/// Locks spread over independent nodes by name.
mod sharded;
/// `rediss://`: a private CA, untrusted certificates, TLS to a plain server (`tls` feature).
mod tls;
/// Waiting: pub/sub wake-ups, the TTL bound, crashed holders, commands per acquisition.
mod waiting;
/// The watchdog and the lost signal.
mod watchdog;
