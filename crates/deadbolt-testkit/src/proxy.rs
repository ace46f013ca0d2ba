//! [`FaultProxy`]: a TCP proxy in front of a [`RedisServer`] that injects network faults on
//! command.
//!
//! A lock client must survive latency, a connection that silently stops carrying bytes (a
//! NAT or load balancer that forgot the flow, a failover without RST), a reset, and a refused
//! connect; and, hardest, a command that ran on the server while its reply came late or never
//! came, which the faults on replies alone produce. This machine's kernel has no `netem`,
//! toxiproxy is not packaged, and `iptables` needs root and a network namespace; a proxy
//! inside the test process needs none of that, and each test switches its own faults at any
//! moment. [`FaultSchedule`] plays seeded sequences of faults.
//!
//! # How it works
//!
//! Plain threads and blocking sockets, no async runtime, so sync tests and tokio tests alike
//! can use it. One thread accepts; each connection gets a reader and a writer thread per
//! direction ([`conn`]). Nothing polls: readers block in `read` and are woken by `shutdown`,
//! writers wait on a condition variable. Dropping the proxy closes every socket and waits for
//! its threads to let go of them.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

use crate::RedisServer;

mod conn;
mod schedule;

use conn::{Conn, open};
pub use schedule::{Fault, FaultSchedule, FaultStep, SplitMix64};

/// How long `reset`, `heal` and `Drop` wait for closed connections to let go of their sockets.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A TCP proxy on a free 127.0.0.1 port that forwards to one upstream address and injects
/// network faults on command: latency, a silent blackhole, resets, refused connects, and
/// faults on the replies alone. It stands in for `netem` and toxiproxy, which this machine
/// lacks, and needs no root.
///
/// Every control method takes `&self` and is quick, so a test may call it from any thread or
/// task while traffic flows. Faults apply to existing and new connections alike:
///
/// | method | effect |
/// |---|---|
/// | [`delay`](Self::delay) | every chunk leaves `d` after it arrived, both ways, in order |
/// | [`blackhole`](Self::blackhole) | bytes are swallowed both ways; connections stay open |
/// | [`hold_replies`](Self::hold_replies) | requests pass; every reply chunk leaves `d` late |
/// | [`drop_replies`](Self::drop_replies) | requests pass (commands run); replies are swallowed |
/// | [`reset_after_request`](Self::reset_after_request) | a request reaches the server, then an RST, no reply |
/// | [`spike`](Self::spike) | the next `count` chunks each way leave `d` late |
/// | [`reset`](Self::reset) | every open connection gets an RST, now |
/// | [`refuse`](Self::refuse) / [`accept`](Self::accept) | new connects are refused / accepted |
/// | [`apply`](Self::apply) | one [`Fault`], as a [`FaultSchedule`] step does |
/// | [`heal`](Self::heal) | back to pass-through, accepting, no spike |
///
/// `delay`, `blackhole`, `hold_replies`, `drop_replies` and `reset_after_request` are modes:
/// each replaces the one before. Ending a mode that swallowed bytes resets the connections
/// that lost some.
///
/// # Example
///
/// ```no_run
/// use std::time::Duration;
/// use deadbolt_testkit::{FaultProxy, RedisServer};
///
/// let server = RedisServer::start()?;
/// let proxy = FaultProxy::start(&server)?;
/// let client = redis::Client::open(proxy.url())?; // redis://127.0.0.1:PROXY_PORT
/// let mut conn = client.get_connection()?;
///
/// proxy.delay(Duration::from_millis(100)); // every PING now takes ≥ 200 ms
/// redis::cmd("PING").exec(&mut conn)?;
/// proxy.blackhole(); // the next PING gets no answer, and no error either
/// proxy.heal();
/// assert_eq!(proxy.accepted(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # In a tokio test
///
/// Start the proxy, hand [`FaultProxy::url`] to the client under test, and call the control
/// methods straight from the async test body: they return at once, except
/// [`reset`](FaultProxy::reset), [`heal`](FaultProxy::heal) and `Drop`, which wait until the
/// connections they close have let go of their sockets (a few milliseconds, 2 s at most) so
/// that the next assertion sees them closed. deadbolt's `tests/tls.rs` has such a test.
///
/// ```ignore
/// #[tokio::test]
/// async fn a_lock_survives_a_reset() {
///     let server = RedisServer::start().unwrap();
///     let proxy = FaultProxy::start(&server).unwrap();
///     let locks = deadbolt::Client::connect(&proxy.url()).await.unwrap();
///     let connections = proxy.accepted();
///     proxy.reset();
///     // … the next commands fail or wait while the client reconnects …
///     assert!(proxy.accepted() > connections, "the client reconnected");
/// }
/// ```
pub struct FaultProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    url: String,
    acceptor: Option<JoinHandle<()>>,
}

/// What the proxy and its connection threads share.
struct Shared {
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Signalled when the listener comes back or the proxy shuts down.
    changed: Condvar,
    /// Paired with `closed`; separate from `state` so dropping a connection never needs it.
    closed_lock: Mutex<()>,
    /// Signalled whenever a connection has closed its sockets.
    closed: Condvar,
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// What the control methods change, behind `Shared::state`.
struct State {
    mode: Mode,
    /// `None` while refusing.
    listener: Option<Arc<TcpListener>>,
    /// While refusing: a bound, non-listening socket that keeps the port ours.
    placeholder: Option<Socket>,
    /// Every connection opened so far; the dead ones are pruned on each accept.
    conns: Vec<Weak<Conn>>,
    spike: Spike,
    /// Set by `Drop`: the acceptor exits, and connections accepted meanwhile are reset.
    shut_down: bool,
}

/// How bytes are forwarded; what each mode does to each direction is in [`conn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    PassThrough,
    Delay(Duration),
    Blackhole,
    /// Replies wait this long; requests pass.
    HoldReplies(Duration),
    /// Replies are swallowed; requests pass.
    DropReplies,
    /// A request is written to the server, then its connection is reset.
    ResetAfterRequest,
}

impl Mode {
    /// Whether the mode swallows bytes in some direction.
    fn swallows_any(self) -> bool {
        matches!(self, Mode::Blackhole | Mode::DropReplies)
    }
}

/// Extra delay for the next chunks, counted across all connections.
#[derive(Debug, Default)]
struct Spike {
    delay: Duration,
    /// Chunks left to delay, indexed by [`conn::Dir`].
    left: [usize; 2],
}

impl FaultProxy {
    /// Starts a pass-through proxy to `server`, whose [`url`](Self::url) has the server's
    /// scheme and password. A TLS server's certificate names 127.0.0.1, so `rediss://`
    /// through the proxy verifies as it would directly.
    ///
    /// # Errors
    ///
    /// When no port can be bound or the acceptor thread cannot start.
    pub fn start(server: &RedisServer) -> io::Result<FaultProxy> {
        let upstream = server.addr().parse().map_err(io::Error::other)?;
        let mut proxy = FaultProxy::start_to(upstream)?;
        proxy.url = server.url_to(&proxy.addr.to_string());
        Ok(proxy)
    }

    /// Starts a pass-through proxy to any `upstream` address; its [`url`](Self::url) has no
    /// password.
    ///
    /// # Errors
    ///
    /// When no port can be bound or the acceptor thread cannot start.
    pub fn start_to(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            state: Mutex::new(State {
                mode: Mode::PassThrough,
                listener: Some(Arc::new(listener)),
                placeholder: None,
                conns: Vec::new(),
                spike: Spike::default(),
                shut_down: false,
            }),
            changed: Condvar::new(),
            closed_lock: Mutex::new(()),
            closed: Condvar::new(),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
        });
        let acceptor = thread::Builder::new()
            .name("fault-proxy-accept".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || accept_loop(&shared)
            })?;
        Ok(FaultProxy {
            shared,
            addr,
            url: format!("redis://{addr}"),
            acceptor: Some(acceptor),
        })
    }

    /// The URL clients use: `redis://127.0.0.1:PORT`, with the server's scheme and password
    /// when started by [`start`](Self::start).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The proxy's listening address, 127.0.0.1 and a port that stays the same across
    /// [`refuse`](Self::refuse) and [`accept`](Self::accept).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forwards every chunk `d` after it arrived, in both directions and in order, so a
    /// request/reply round trip takes at least `2 * d` longer. `Duration::ZERO` is
    /// pass-through. Ending a [`blackhole`](Self::blackhole) this way resets the connections
    /// that lost bytes, as [`heal`](Self::heal) does.
    pub fn delay(&self, d: Duration) {
        self.set_mode(if d.is_zero() {
            Mode::PassThrough
        } else {
            Mode::Delay(d)
        });
    }

    /// Swallows every byte, both ways, on existing and new connections, sending no FIN and no
    /// RST: clients see writes succeed and replies never come, as behind a NAT or load balancer
    /// that dropped the flow. New connects still succeed.
    ///
    /// When the blackhole ends, connections that lost bytes are reset: their streams have a
    /// hole, and carrying on would hand a client replies to requests it never made. A middlebox
    /// that forgot a flow answers its next packet with an RST too.
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole);
    }

    /// Passes requests (client to server) at once and forwards every reply chunk (server to
    /// client) `d` after it arrived, in order: the server runs each command at once, and the
    /// client learns of it `d` late. `Duration::ZERO` is pass-through. Replies already held
    /// keep their time.
    pub fn hold_replies(&self, d: Duration) {
        self.set_mode(if d.is_zero() {
            Mode::PassThrough
        } else {
            Mode::HoldReplies(d)
        });
    }

    /// Passes requests, so the server runs them, and swallows every reply byte, on existing
    /// and new connections, sending no FIN and no RST: the client's commands take effect and
    /// it never learns so.
    ///
    /// As with a [`blackhole`](Self::blackhole), when this mode ends (by [`heal`](Self::heal)
    /// or another mode) connections that lost reply bytes are reset.
    pub fn drop_replies(&self) {
        self.set_mode(Mode::DropReplies);
    }

    /// From now until [`heal`](Self::heal) or another mode, the next request chunk on each
    /// connection, existing or new, is written to the server, and then the connection is
    /// reset (an RST to both sides) before any reply is forwarded: the command ran, the client
    /// sees "connection reset by peer" instead of its reply.
    ///
    /// The reset waits for the server's first bytes after the request, so the command has run
    /// before the client sees the reset; when none come within 1 s (a blocking command, or a
    /// request cut in the middle) it happens anyway. Connections that send nothing are left
    /// alone.
    pub fn reset_after_request(&self) {
        self.set_mode(Mode::ResetAfterRequest);
    }

    /// Delays the next `count` chunks read in each direction by `d`, counted across all
    /// connections, on top of any mode's delay; chunks keep their order, so those behind a
    /// spiked one wait for it. A new spike replaces one not yet used up; [`heal`](Self::heal)
    /// ends it, the modes leave it alone.
    pub fn spike(&self, d: Duration, count: usize) {
        self.shared.lock().spike = Spike {
            delay: d,
            left: [count; 2],
        };
    }

    /// Applies one [`Fault`]: [`Fault::Delay`] is [`delay`](Self::delay),
    /// [`Fault::Reset`] is [`reset`](Self::reset), and so on. It stays until
    /// [`heal`](Self::heal) or the next mode.
    pub fn apply(&self, fault: &Fault) {
        match *fault {
            Fault::Delay(d) => self.delay(d),
            Fault::HoldReplies(d) => self.hold_replies(d),
            Fault::DropReplies => self.drop_replies(),
            Fault::ResetAfterRequest => self.reset_after_request(),
            Fault::Reset => self.reset(),
            Fault::Blackhole => self.blackhole(),
        }
    }

    /// Back to pass-through and accepting new connections, ending every fault, a
    /// [`spike`](Self::spike) included. Connections that lost bytes to a
    /// [`blackhole`](Self::blackhole) or [`drop_replies`](Self::drop_replies) are reset; the
    /// others carry on.
    ///
    /// # Panics
    ///
    /// When the port cannot be listened on again; see [`accept`](Self::accept).
    pub fn heal(&self) {
        self.shared.lock().spike = Spike::default();
        self.set_mode(Mode::PassThrough);
        self.accept();
    }

    /// Closes every open connection with an RST (`SO_LINGER` 0) on both sides, and returns
    /// once their sockets are closed: a client's next read or write fails with "connection
    /// reset by peer". New connections are still accepted.
    pub fn reset(&self) {
        self.abort(|_| true);
    }

    /// Refuses new connections from now on (the port stops listening, so connects fail with
    /// "connection refused"); open connections are not touched. The port stays reserved for
    /// [`accept`](Self::accept).
    pub fn refuse(&self) {
        let mut st = self.shared.lock();
        if let Some(listener) = st.listener.take() {
            // A listening socket that is shut down stops listening at once and wakes `accept`.
            let _ = SockRef::from(&*listener).shutdown(Shutdown::Read);
            // A bound socket that does not listen keeps bind(port 0) elsewhere off the port,
            // while `accept` can still bind it (both use SO_REUSEADDR).
            st.placeholder = placeholder(self.addr).ok();
        }
    }

    /// Accepts new connections again after [`refuse`](Self::refuse); does nothing otherwise.
    ///
    /// # Panics
    ///
    /// When the port cannot be listened on again, which the reservation made by `refuse`
    /// rules out short of another program binding it with `SO_REUSEADDR` in between.
    pub fn accept(&self) {
        let mut st = self.shared.lock();
        if st.listener.is_some() || st.shut_down {
            return;
        }
        let listener = TcpListener::bind(self.addr)
            .unwrap_or_else(|e| panic!("fault proxy cannot listen on {} again: {e}", self.addr));
        st.placeholder = None;
        st.listener = Some(Arc::new(listener));
        self.shared.changed.notify_all();
    }

    /// How many client connections the proxy has accepted so far; a client that reconnected
    /// shows up here.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// How many connections are open now (accepted, upstream connected, not yet closed).
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Switches the mode; leaving a mode that swallows bytes (for another, or for none)
    /// resets the connections it made lose some.
    fn set_mode(&self, mode: Mode) {
        let lost: Vec<Arc<Conn>> = {
            let mut st = self.shared.lock();
            let ended = st.mode != mode || !mode.swallows_any();
            st.mode = mode;
            if !ended {
                return;
            }
            // Writers mark a connection under this same lock: those marked so far are exactly
            // the ones that lost bytes to the mode that just ended.
            st.conns
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|c| c.lost_bytes.load(Ordering::SeqCst))
                .collect()
        };
        self.abort_all(lost);
    }

    /// Resets the live connections that `select` picks and waits until they are closed.
    fn abort(&self, select: impl Fn(&Conn) -> bool) {
        let live: Vec<Arc<Conn>> = {
            let st = self.shared.lock();
            st.conns.iter().filter_map(Weak::upgrade).collect()
        };
        self.abort_all(live.into_iter().filter(|c| select(c)).collect());
    }

    /// Resets `conns` and waits until they are closed.
    fn abort_all(&self, conns: Vec<Arc<Conn>>) {
        let picked: Vec<Weak<Conn>> = conns
            .iter()
            .map(|c| {
                c.abort();
                Arc::downgrade(c)
            })
            .collect();
        drop(conns);
        self.shared.wait_closed(&picked);
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("mode", &st.mode)
            .field("spike", &st.spike)
            .field("accepting", &st.listener.is_some())
            .field("accepted", &self.accepted())
            .field("open", &self.open_connections())
            .finish()
    }
}

impl Drop for FaultProxy {
    /// Stops listening, resets every connection, joins the acceptor and waits (at most 2 s)
    /// until every connection thread has closed its sockets.
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.shut_down = true;
            if let Some(listener) = st.listener.take() {
                let _ = SockRef::from(&*listener).shutdown(Shutdown::Read);
            }
            st.placeholder = None;
            self.shared.changed.notify_all();
        }
        self.abort(|_| true);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until none of `conns` is alive, for at most [`CLOSE_WAIT`].
    fn wait_closed(&self, conns: &[Weak<Conn>]) {
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut guard = self
            .closed_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(left) = deadline.checked_duration_since(Instant::now())
            && conns.iter().any(|c| c.strong_count() > 0)
        {
            guard = self
                .closed
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Accepts connections while a listener exists; sleeps on `changed` while refusing.
fn accept_loop(shared: &Arc<Shared>) {
    loop {
        let listener = {
            let mut st = shared.lock();
            loop {
                if st.shut_down {
                    return;
                }
                if let Some(listener) = &st.listener {
                    break Arc::clone(listener);
                }
                st = shared
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        match listener.accept() {
            Ok((client, _)) => open(shared, client),
            Err(_) => {
                // `refuse` or `Drop` shut this listener down: go back to waiting. Anything
                // else (out of file descriptors) is retried after a pause, not in a spin.
                let current =
                    matches!(&shared.lock().listener, Some(l) if Arc::ptr_eq(l, &listener));
                if current {
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
}

/// A socket bound to `addr` with `SO_REUSEADDR` that does not listen.
fn placeholder(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}
