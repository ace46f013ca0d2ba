//! The command of `deadbolt run`, in a process group of its own.
//!
//! A command is rarely one process: `sh -c`, pipelines and `make` start children of their own,
//! and signalling only the direct child leaves those running, still writing after the lock is
//! gone. So, as `timeout(1)` does, the command gets its own process group, and every signal goes
//! to the whole group. On a lost lock deadbolt does not give up on the group before it is gone:
//! SIGTERM, the grace period for the command and the rest of its group, SIGKILL to the group,
//! then a check that no process of it is left.
//!
//! If deadbolt itself dies (`kill -9`), the kernel sends the command SIGKILL (`PR_SET_PDEATHSIG`).
//!
//! # What this cannot cover
//!
//! - A process that leaves the group (`setsid`, a daemon) is not signalled, and the parent-death
//!   signal reaches only the direct child: when deadbolt is killed with SIGKILL, the command's
//!   own children run on.
//! - A stopped (SIGSTOP) deadbolt cannot stop anything; the lease runs out meanwhile.
//! - Being in its own group, the command is not in the terminal's foreground: it gets Ctrl-C
//!   through deadbolt, and a command that reads from the terminal is stopped by it.
//!
//! Only a fencing token checked by the resource closes these gaps.

use std::ffi::OsString;
use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, getppid};
use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep, timeout_at};

/// How often the group is checked while waiting for it to be gone.
const POLL: Duration = Duration::from_millis(10);
/// How long processes get to die after SIGKILL (they may be in the middle of a system call).
const KILL_WAIT: Duration = Duration::from_secs(2);

/// The running command and its process group.
#[derive(Debug)]
pub(crate) struct Supervised {
    /// The command's direct child.
    pub(crate) child: Child,
    /// Its process group, whose id is the child's pid.
    group: Pid,
}

/// Starts `command` with `env` in a new process group, tied to this process by a parent-death
/// signal.
///
/// Call it on the main thread: the parent-death signal fires when the *thread* that forked the
/// child ends, and the main thread lives exactly as long as the process (tokio's worker threads
/// may not).
///
/// # Errors
///
/// The command cannot be started (not found, not executable).
pub(crate) fn spawn(command: &[OsString], env: Option<(&str, String)>) -> io::Result<Supervised> {
    debug_assert_eq!(std::thread::current().name(), Some("main"));
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).process_group(0);
    if let Some((var, value)) = env {
        cmd.env(var, value);
    }
    let parent = std::process::id();
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls are
    // allowed. It makes two raw system calls (prctl, getppid) and builds its errors from errno
    // values, which does not allocate; it touches no lock or shared state.
    unsafe {
        cmd.pre_exec(move || {
            prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // deadbolt may have died before the signal was armed: then nobody holds the lock.
            if getppid().as_raw().cast_unsigned() != parent {
                return Err(io::Error::from(Errno::ESRCH));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the command exited before it could be watched"))?;
    Ok(Supervised {
        child,
        group: Pid::from_raw(pid.cast_signed()),
    })
}

impl Supervised {
    /// Sends `signal` to every process of the command's group.
    pub(crate) fn signal(&self, signal: Signal) {
        // ESRCH: the group is gone, which is what a signal is for.
        let _ = killpg(self.group, signal);
    }

    /// Stops the command because the lock is lost: SIGTERM to the group; after `grace`, or
    /// once the command has exited and the rest of its group has not, SIGKILL to the group.
    /// Returns when no process of the group is left (or, if one survives SIGKILL, after
    /// [`KILL_WAIT`], saying so), with the command's status.
    ///
    /// # Errors
    ///
    /// Waiting for the command failed.
    pub(crate) async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGTERM);
        // A stopped process only acts on SIGTERM once continued.
        self.signal(Signal::SIGCONT);
        let deadline = Instant::now() + grace;
        let status = match timeout_at(deadline, self.child.wait()).await {
            Ok(status) => Some(status?),
            Err(_) => None,
        };
        if status.is_some() {
            // The rest of the group gets what is left of the grace period too.
            self.wait_gone(deadline).await;
        }
        self.signal(Signal::SIGKILL);
        let status = match status {
            Some(status) => status,
            None => self.child.wait().await?,
        };
        if !self.wait_gone(Instant::now() + KILL_WAIT).await {
            eprintln!(
                "deadbolt: warning: processes of the command's group survived SIGKILL: {}",
                self.describe_left()
            );
        }
        Ok(status)
    }

    /// Waits until no live process is left in the group, or `until`; whether it is gone.
    async fn wait_gone(&self, until: Instant) -> bool {
        loop {
            if self.left().is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            sleep(POLL).await;
        }
    }

    /// The live processes left in the command's group (zombies, dead but not yet reaped by
    /// their new parent, do not count), by pid; `[0]` when they cannot be listed but the group
    /// still answers a signal.
    pub(crate) fn left(&self) -> Vec<i32> {
        match group_members(self.group.as_raw()) {
            Some(pids) => pids,
            None if killpg(self.group, None).is_ok() => vec![0],
            None => Vec::new(),
        }
    }

    /// The processes left, for a message: "pids 123, 456".
    pub(crate) fn describe_left(&self) -> String {
        let pids = self.left();
        if pids == [0] {
            return format!("process group {}", self.group);
        }
        let list: Vec<String> = pids.iter().map(ToString::to_string).collect();
        format!("pid {} (process group {})", list.join(", "), self.group)
    }
}

/// The live (not zombie) processes whose process group is `pgid`, from `/proc`; `None` when
/// `/proc` cannot be read.
fn group_members(pgid: i32) -> Option<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        // Gone between the listing and the read: not a member any more.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((state, group)) = parse_stat(&stat)
            && group == pgid
            && state != 'Z'
            && state != 'X'
        {
            pids.push(pid);
        }
    }
    Some(pids)
}

/// The state and process group of a `/proc/PID/stat` line: `pid (comm) state ppid pgrp …`,
/// where `comm` may hold spaces and parentheses, hence the search from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, i32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(
            parse_stat("4242 (sleep) S 4241 4240 4240 0 -1"),
            Some(('S', 4240))
        );
        assert_eq!(parse_stat("7 (a (b) c) Z 1 7 7 0 -1"), Some(('Z', 7)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
