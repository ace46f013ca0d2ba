//! Helpers shared by the multi-server topology tests.

use nix::errno::Errno;
use nix::sys::signal;
use nix::unistd::Pid;

/// Asserts that none of `pids` names a process any more (killed and reaped).
pub(crate) fn assert_gone(pids: &[u32]) {
    for &pid in pids {
        let pid = Pid::from_raw(i32::try_from(pid).unwrap());
        assert_eq!(
            signal::kill(pid, None),
            Err(Errno::ESRCH),
            "process {pid} is still there"
        );
    }
}
