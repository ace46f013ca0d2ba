//! One proxied connection: four threads that carry its bytes, and the queues between them.
//!
//! Per direction, a reader blocks in `read` and queues each chunk with the time it may leave;
//! a writer waits on the queue's condition variable and sends the chunk when due, unless a
//! blackhole is on. Aborting shuts the sockets' read sides, which wakes the readers without
//! sending anything, and closes the queues, which wakes the writers; once the last thread lets
//! go of the connection its sockets close, with an RST when `SO_LINGER` is 0.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use socket2::SockRef;

use super::{Mode, Shared};

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Write timeout, so a writer stuck on a peer that does not read notices an abort.
const WRITE_POLL: Duration = Duration::from_millis(100);
/// Read buffer size per direction.
const CHUNK: usize = 16 * 1024;

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
    /// A blackhole swallowed some of its bytes.
    pub(super) lost_bytes: AtomicBool,
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
