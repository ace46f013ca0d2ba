//! One proxied connection: four threads that carry its bytes, and the queues between them.
//!
//! Per direction, a reader blocks in `read` and queues each chunk with the time it may leave;
//! a writer waits on the queue's condition variable and sends the chunk when due, unless the
//! mode swallows that direction (a blackhole both, dropped replies the server's). Aborting
//! shuts the sockets' read sides, which wakes the readers without sending anything, and closes
//! the queues, which wakes the writers; once the last thread lets go of the connection its
//! sockets close, with an RST when `SO_LINGER` is 0.
//!
//! A reset after a request is the writer to the server's doing: it arms the reply queue, so
//! that the reply reader resets the connection on the first thing the server sends instead of
//! queueing it, writes the request, and waits for that reset.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::{Mode, Shared, State};

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Write timeout, so a writer stuck on a peer that does not read notices an abort.
const WRITE_POLL: Duration = Duration::from_millis(100);
/// Read buffer size per direction.
const CHUNK: usize = 16 * 1024;
/// How long a reset after a request waits for the server's reply before resetting anyway (a
/// blocking command, or a request cut in the middle of a command).
const REPLY_WAIT: Duration = Duration::from_secs(1);

/// Connects `client` to the upstream and starts its four threads.
pub(super) fn open(shared: &Arc<Shared>, client: TcpStream) {
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
        holes: [AtomicBool::new(false), AtomicBool::new(false)],
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
pub(super) struct Conn {
    shared: Arc<Shared>,
    client: TcpStream,
    upstream: TcpStream,
    /// Chunks in flight, indexed by [`Dir`].
    lines: [Line; 2],
    /// A blackhole or dropped replies swallowed some of its bytes.
    pub(super) lost_bytes: AtomicBool,
    /// Per [`Dir`]: bytes of that direction were swallowed, so none after them is sent.
    holes: [AtomicBool; 2],
    aborted: AtomicBool,
}

/// A direction, also the index of its [`Line`] and of its count in [`super::Spike`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Requests: client to server.
    ToUpstream = 0,
    /// Replies: server to client.
    ToClient = 1,
}

impl Mode {
    /// How long a chunk read now in `dir` waits before it may leave.
    fn delay(self, dir: Dir) -> Duration {
        match (self, dir) {
            (Mode::Delay(d), _) | (Mode::HoldReplies(d), Dir::ToClient) => d,
            _ => Duration::ZERO,
        }
    }

    /// Whether a chunk due in `dir` is swallowed instead of sent.
    fn swallows(self, dir: Dir) -> bool {
        matches!(
            (self, dir),
            (Mode::Blackhole, _) | (Mode::DropReplies, Dir::ToClient)
        )
    }

    /// Whether sending a chunk in `dir` resets the connection after it.
    fn resets_after(self, dir: Dir) -> bool {
        self == Mode::ResetAfterRequest && dir == Dir::ToUpstream
    }
}

impl State {
    /// The delay of a chunk read now in `dir`: the mode's, plus a spike's while it lasts.
    fn chunk_delay(&mut self, dir: Dir) -> Duration {
        let mut delay = self.mode.delay(dir);
        let left = &mut self.spike.left[dir as usize];
        if *left > 0 {
            *left -= 1;
            delay += self.spike.delay;
        }
        delay
    }
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
    pub(super) fn abort(&self) {
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

/// Reads chunks and queues each with the time it may leave; resets the connection instead
/// when its line is armed (a reset after a request).
fn read_loop(conn: &Conn, dir: Dir) {
    let (mut from, _) = conn.ends(dir);
    let line = &conn.lines[dir as usize];
    let mut buf = vec![0; CHUNK];
    loop {
        let read = from.read(&mut buf);
        let queued = match read {
            Ok(0) => {
                let due = Instant::now() + conn.shared.lock().mode.delay(dir);
                if line.push(due, None) {
                    return;
                }
                false
            }
            Ok(n) => {
                let due = Instant::now() + conn.shared.lock().chunk_delay(dir);
                line.push(due, Some(buf[..n].to_vec()))
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => true,
            // A reset from either peer resets the other.
            Err(_) => false,
        };
        if !queued {
            return conn.abort();
        }
    }
}

/// Sends queued chunks when due, swallowing them while the mode says so; forwards
/// end-of-stream as a write shutdown (FIN). During a reset after a request, resets the
/// connection once the server has the request.
fn write_loop(conn: &Conn, dir: Dir) {
    let (_, to) = conn.ends(dir);
    while let Some(chunk) = conn.lines[dir as usize].pop() {
        let reset_after = {
            let st = conn.shared.lock();
            // Once bytes of a direction were swallowed, its stream has a hole: nothing after it
            // may reach the peer, even after the fault ended and before the reset that ending
            // it brings (a client would match a later reply to an earlier request).
            if st.mode.swallows(dir) || conn.holes[dir as usize].load(Ordering::SeqCst) {
                conn.holes[dir as usize].store(true, Ordering::SeqCst);
                conn.lost_bytes.store(true, Ordering::SeqCst);
                if chunk.is_none() {
                    return;
                }
                continue;
            }
            chunk.is_some() && st.mode.resets_after(dir)
        };
        let Some(bytes) = chunk.as_deref() else {
            if !conn.aborted.load(Ordering::SeqCst) {
                let _ = to.shutdown(Shutdown::Write);
            }
            return;
        };
        if reset_after {
            // Armed before the request leaves, so nothing the server sends after it, its
            // reply least of all, is forwarded.
            conn.lines[Dir::ToClient as usize].arm_reset();
        }
        if !send(conn, to, bytes) {
            return conn.abort();
        }
        if reset_after {
            // The server's first bytes after the request make the reply reader reset the
            // connection, which closes this line: by then the server has run the command.
            conn.lines[dir as usize].wait_closed(Instant::now() + REPLY_WAIT);
            return conn.abort();
        }
    }
}

/// Writes all of `bytes` to `to`; `false` when the write failed and the connection must be
/// reset. Returns early, with `true`, once the connection is aborted.
fn send(conn: &Conn, mut to: &TcpStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() && !conn.aborted.load(Ordering::SeqCst) {
        match to.write(bytes) {
            Ok(0) => return false,
            Ok(n) => bytes = &bytes[n..],
            // The write timeout: check for an abort, then try again.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
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
    /// The next push is refused, and its reader resets the connection.
    armed: bool,
}

impl Line {
    fn lock(&self) -> MutexGuard<'_, LineQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `chunk`; `false` when the line is armed and the connection must be reset
    /// instead. A closed line drops it.
    fn push(&self, due: Instant, chunk: Option<Vec<u8>>) -> bool {
        let mut q = self.lock();
        if q.armed {
            return false;
        }
        if !q.closed {
            q.chunks.push_back((due, chunk));
            self.ready.notify_one();
        }
        true
    }

    /// Makes every later [`push`](Self::push) refuse its chunk.
    fn arm_reset(&self) {
        self.lock().armed = true;
    }

    /// Waits until the line is closed (the connection aborted), or until `deadline`.
    fn wait_closed(&self, deadline: Instant) {
        let mut q = self.lock();
        while !q.closed
            && let Some(left) = deadline.checked_duration_since(Instant::now())
        {
            q = self
                .ready
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
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
