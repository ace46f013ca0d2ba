//! [`FaultProxy`]: a TCP proxy in front of a [`RedisServer`] that injects network faults on
//! command.
//!
//! A lock client must survive latency, a connection that silently stops carrying bytes (a
//! NAT or load balancer that forgot the flow, a failover without RST), a reset, and a refused
//! connect. This machine's kernel has no `netem`, toxiproxy is not packaged, and `iptables`
//! needs root and a network namespace; a proxy inside the test process needs none of that,
//! and each test switches its own faults at any moment.
//!
//! # How it works
//!
//! Plain threads and blocking sockets, no async runtime, so sync tests and tokio tests alike
//! can use it. One thread accepts; each connection gets, per direction, a reader that stamps
//! every chunk with the time it may leave (now + delay) and a writer that sends the chunks in
//! order once due. Nothing polls: readers block in `read` and are woken by `shutdown`, writers
//! wait on a condition variable. Dropping the proxy closes every socket and waits for its
//! threads to let go of them.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use deadbolt_testkit::{FaultProxy, RedisServer};
//!
//! let server = RedisServer::start()?;
//! let proxy = FaultProxy::start(&server)?;
//! let client = redis::Client::open(proxy.url())?; // redis://127.0.0.1:PROXY_PORT
//! let mut conn = client.get_connection()?;
//!
//! proxy.delay(Duration::from_millis(100)); // every PING now takes ≥ 200 ms
//! redis::cmd("PING").exec(&mut conn)?;
//! proxy.blackhole(); // the next PING gets no answer, and no error either
//! proxy.heal();
//! assert_eq!(proxy.accepted(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, SockRef, Socket, Type};

use crate::RedisServer;

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Write timeout, so a writer stuck on a peer that does not read notices an abort.
const WRITE_POLL: Duration = Duration::from_millis(100);
/// How long `reset`, `heal` and `Drop` wait for closed connections to let go of their sockets.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Read buffer size per direction.
const CHUNK: usize = 16 * 1024;

/// A TCP proxy on a free 127.0.0.1 port that forwards to one upstream address and injects
/// faults on command; see the [module docs](self) for why it exists.
///
/// Every control method takes `&self` and is quick, so a test may call it from any thread or
/// task while traffic flows. Faults apply to existing and new connections alike:
///
/// | method | effect |
/// |---|---|
/// | [`delay`](Self::delay) | every chunk leaves `d` after it arrived, both ways, in order |
/// | [`blackhole`](Self::blackhole) | bytes are swallowed both ways; connections stay open |
/// | [`reset`](Self::reset) | every open connection gets an RST, now |
/// | [`refuse`](Self::refuse) / [`accept`](Self::accept) | new connects are refused / accepted |
/// | [`heal`](Self::heal) | back to pass-through, accepting |
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

struct State {
    mode: Mode,
    /// `None` while refusing.
    listener: Option<Arc<TcpListener>>,
    /// While refusing: a bound, non-listening socket that keeps the port ours.
    placeholder: Option<Socket>,
    conns: Vec<Weak<Conn>>,
    shut_down: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    PassThrough,
    Delay(Duration),
    Blackhole,
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
    /// pass-through. Ends a blackhole like [`heal`](Self::heal) does.
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

    /// Back to pass-through and accepting new connections, ending every fault. Connections
    /// that lost bytes to a [`blackhole`](Self::blackhole) are reset; the others carry on.
    ///
    /// # Panics
    ///
    /// When the port cannot be listened on again; see [`accept`](Self::accept).
    pub fn heal(&self) {
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

    /// Switches the mode; leaving a blackhole resets the connections it made lose bytes.
    fn set_mode(&self, mode: Mode) {
        let mut st = self.shared.lock();
        st.mode = mode;
        if mode != Mode::Blackhole {
            // Writers mark a connection under this same lock, so none is marked after this.
            drop(st);
            self.abort(|c| c.lost_bytes.load(Ordering::SeqCst));
        }
    }

    /// Resets the live connections that `select` picks and waits until they are closed.
    fn abort(&self, select: impl Fn(&Conn) -> bool) {
        let live: Vec<Arc<Conn>> = {
            let st = self.shared.lock();
            st.conns.iter().filter_map(Weak::upgrade).collect()
        };
        let picked: Vec<Weak<Conn>> = live
            .iter()
            .filter(|c| select(c))
            .map(|c| {
                c.abort();
                Arc::downgrade(c)
            })
            .collect();
        drop(live);
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

/// Connects `client` to the upstream and starts its four threads.
fn open(shared: &Arc<Shared>, client: TcpStream) {
    shared.accepted.fetch_add(1, Ordering::SeqCst);
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, CONNECT_TIMEOUT) else {
        // As a load balancer with no backend would: reset the client.
        let _ = SockRef::from(&client).set_linger(Some(Duration::ZERO));
        return;
    };
    for s in [&client, &upstream] {
        // Nagle plus delayed ACKs would add 40 ms to small writes and blur the delays.
        let _ = s.set_nodelay(true);
        let _ = s.set_write_timeout(Some(WRITE_POLL));
    }
    shared.open.fetch_add(1, Ordering::SeqCst);
    let conn = Arc::new(Conn {
        shared: Arc::clone(shared),
        client,
        upstream,
        lines: [Line::default(), Line::default()],
        lost_bytes: AtomicBool::new(false),
        aborted: AtomicBool::new(false),
    });
    {
        let mut st = shared.lock();
        st.conns.retain(|c| c.strong_count() > 0);
        st.conns.push(Arc::downgrade(&conn));
        if st.shut_down {
            conn.abort();
        }
    }
    for dir in [Dir::ToUpstream, Dir::ToClient] {
        for (role, body) in [("read", read_loop as fn(&Conn, Dir)), ("write", write_loop)] {
            let ours = Arc::clone(&conn);
            let spawned = thread::Builder::new()
                .name(format!("fault-proxy-{role}"))
                .spawn(move || body(&ours, dir));
            if spawned.is_err() {
                // Out of threads: the connection cannot work, so reset it.
                conn.abort();
            }
        }
    }
}

/// One proxied connection; its threads hold it, the proxy only a `Weak`.
struct Conn {
    shared: Arc<Shared>,
    client: TcpStream,
    upstream: TcpStream,
    /// Chunks in flight, indexed by [`Dir`].
    lines: [Line; 2],
    /// A blackhole swallowed some of its bytes.
    lost_bytes: AtomicBool,
    aborted: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
enum Dir {
    ToUpstream = 0,
    ToClient = 1,
}

impl Conn {
    /// The (source, destination) sockets of `dir`.
    fn ends(&self, dir: Dir) -> (&TcpStream, &TcpStream) {
        match dir {
            Dir::ToUpstream => (&self.client, &self.upstream),
            Dir::ToClient => (&self.upstream, &self.client),
        }
    }

    /// Makes both sockets send an RST when closed, and stops the threads, whose exit closes
    /// the sockets.
    fn abort(&self) {
        if self.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        for line in &self.lines {
            line.close();
        }
        for s in [&self.client, &self.upstream] {
            let _ = SockRef::from(s).set_linger(Some(Duration::ZERO));
            // Wakes a blocked reader and sends nothing (a write shutdown would send a FIN).
            let _ = s.shutdown(Shutdown::Read);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
        let _guard = self.shared.closed_lock.lock();
        self.shared.closed.notify_all();
    }
}

/// Reads chunks and queues each with the time it may leave.
fn read_loop(conn: &Conn, dir: Dir) {
    let (mut from, _) = conn.ends(dir);
    let line = &conn.lines[dir as usize];
    let mut buf = vec![0; CHUNK];
    loop {
        let read = from.read(&mut buf);
        let delay = match conn.shared.lock().mode {
            Mode::Delay(d) => d,
            Mode::PassThrough | Mode::Blackhole => Duration::ZERO,
        };
        let due = Instant::now() + delay;
        match read {
            Ok(0) => return line.push(due, None),
            Ok(n) => line.push(due, Some(buf[..n].to_vec())),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset from either peer resets the other.
            Err(_) => return conn.abort(),
        }
    }
}

/// Sends queued chunks when due, swallowing them during a blackhole; forwards end-of-stream
/// as a write shutdown (FIN).
fn write_loop(conn: &Conn, dir: Dir) {
    let (_, mut to) = conn.ends(dir);
    while let Some(chunk) = conn.lines[dir as usize].pop() {
        {
            let st = conn.shared.lock();
            if st.mode == Mode::Blackhole {
                conn.lost_bytes.store(true, Ordering::SeqCst);
                if chunk.is_none() {
                    return;
                }
                continue;
            }
        }
        let Some(mut bytes) = chunk.as_deref() else {
            if !conn.aborted.load(Ordering::SeqCst) {
                let _ = to.shutdown(Shutdown::Write);
            }
            return;
        };
        while !bytes.is_empty() && !conn.aborted.load(Ordering::SeqCst) {
            match to.write(bytes) {
                Ok(0) => return conn.abort(),
                Ok(n) => bytes = &bytes[n..],
                // The write timeout: check for an abort, then try again.
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return conn.abort(),
            }
        }
    }
}

/// The chunks of one direction in flight: `Some(bytes)`, or `None` for end-of-stream.
#[derive(Default)]
struct Line {
    queue: Mutex<LineQueue>,
    ready: Condvar,
}

#[derive(Default)]
struct LineQueue {
    chunks: VecDeque<(Instant, Option<Vec<u8>>)>,
    closed: bool,
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, LineQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, due: Instant, chunk: Option<Vec<u8>>) {
        let mut q = self.lock();
        if !q.closed {
            q.chunks.push_back((due, chunk));
            self.ready.notify_one();
        }
    }

    /// Drops what is queued and makes `pop` return `None`.
    fn close(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.chunks.clear();
        self.ready.notify_all();
    }

    /// Waits for the next chunk to be due; `None` once closed.
    fn pop(&self) -> Option<Option<Vec<u8>>> {
        let mut q = self.lock();
        loop {
            if q.closed {
                return None;
            }
            let now = Instant::now();
            q = match q.chunks.front() {
                Some(&(due, _)) if due <= now => return q.chunks.pop_front().map(|(_, c)| c),
                Some(&(due, _)) => {
                    let waited = self.ready.wait_timeout(q, due - now);
                    waited.unwrap_or_else(PoisonError::into_inner).0
                }
                None => self.ready.wait(q).unwrap_or_else(PoisonError::into_inner),
            };
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
