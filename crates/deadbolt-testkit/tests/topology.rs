//! Helpers shared by the multi-server topology tests.

use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::signal;
use nix::unistd::Pid;

/// What a topology's servers hold on the machine: each process and its
/// working directory (`redis-server` changes into its `--dir`, the
/// server's temporary directory).
pub(crate) struct Footprint(Vec<(u32, PathBuf)>);

impl Footprint {
    /// Records `pids` and their working directories, read from `/proc`.
    pub(crate) fn of(pids: impl IntoIterator<Item = u32>) -> Self {
        Self(
            pids.into_iter()
                .map(|pid| {
                    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap();
                    assert!(cwd.exists(), "{}", cwd.display());
                    (pid, cwd)
                })
                .collect(),
        )
    }

    /// Asserts that every process is gone (killed and reaped) and every
    /// directory removed.
    pub(crate) fn assert_gone(&self) {
        for (pid, dir) in &self.0 {
            let pid = Pid::from_raw(i32::try_from(*pid).unwrap());
            assert_eq!(
                signal::kill(pid, None),
                Err(Errno::ESRCH),
                "process {pid} is still there"
            );
            assert!(!dir.exists(), "{} is still there", dir.display());
        }
    }
}
