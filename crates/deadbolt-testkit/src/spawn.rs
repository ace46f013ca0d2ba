//! Spawning children that die together with the test process.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, not
//! when the process does. Tests and tokio's blocking pool routinely start
//! servers from short-lived threads, which would kill the server as soon as
//! that thread ends. All children are therefore forked from one dedicated
//! thread that lives as long as the process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Mutex;
use std::sync::mpsc::{self, Sender};

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::Signal;
use nix::unistd::getppid;

/// A command to spawn and where to send the result.
struct Request {
    command: Command,
    reply: Sender<io::Result<Child>>,
}

/// Channel to the long-lived spawner thread, started on first use.
static SPAWNER: Mutex<Option<Sender<Request>>> = Mutex::new(None);

/// Spawns `command` so that the child receives `SIGKILL` when this process
/// dies.
pub(crate) fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec, where only
    // async-signal-safe operations are allowed. It makes two raw syscalls
    // (prctl, getppid) and builds errors from raw errno values, which does not
    // allocate; it touches no locks or shared state.
    unsafe {
        command.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The parent may have died before the death signal was armed.
            if getppid().as_raw().cast_unsigned() != parent {
                return Err(io::Error::from(Errno::ESRCH));
            }
            Ok(())
        });
    }

    let (reply, result) = mpsc::channel();
    send(Request { command, reply })?;
    result
        .recv()
        .map_err(|_| io::Error::other("redis-server spawner thread stopped"))?
}

/// Hands a request to the spawner thread, starting it if needed.
fn send(request: Request) -> io::Result<()> {
    let mut guard = SPAWNER.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("deadbolt-testkit-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let _ = req.reply.send(req.command.spawn());
                }
            })?;
        *guard = Some(tx);
    }
    let sent = guard.as_ref().map(|tx| tx.send(request).is_ok());
    if sent != Some(true) {
        *guard = None;
        return Err(io::Error::other("redis-server spawner thread stopped"));
    }
    Ok(())
}
