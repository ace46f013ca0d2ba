//! A history written by two threads and a child process at once, read back and checked.

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadbolt_testkit::history::{self, History};

/// Names the history file the child half writes to.
const CHILD_ENV: &str = "DEADBOLT_TESTKIT_HISTORY_CHILD";
/// Acquisitions per writer.
const ACQUISITIONS: u64 = 200;
/// Events each acquisition records.
const EVENTS: usize = 5;

/// Sequential acquisitions of `name`, each released before the next.
fn hold_in_turn(history: &History, name: &str) {
    for fence in 1..=ACQUISITIONS {
        let acq = history.begin(name);
        history.acquired(&acq, Instant::now() + Duration::from_secs(10), Some(fence));
        history.write(&acq, std::time::Instant::now(), fence, true);
        history.release_sent(&acq);
        history.release_returned(&acq, "released");
    }
}

/// The child process's half of `threads_and_a_child_share_one_history`; does
/// nothing unless that test started this binary as its child.
#[test]
fn child_half() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        hold_in_turn(&History::append(path).unwrap(), "child");
    }
}

#[test]
fn threads_and_a_child_share_one_history() {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(History::create(dir.path().join("history.jsonl")).unwrap());
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "history::child_half", "--test-threads=1", "-q"])
        .env(CHILD_ENV, history.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Start the threads once the child writes, so that all three overlap.
    let deadline = Instant::now() + Duration::from_secs(10);
    while history::read(history.path()).unwrap().is_empty() {
        assert!(Instant::now() < deadline, "the child wrote nothing");
        std::thread::sleep(Duration::from_millis(1));
    }
    let threads: Vec<_> = ["thread-a", "thread-b"]
        .into_iter()
        .map(|name| {
            let history = Arc::clone(&history);
            std::thread::spawn(move || hold_in_turn(&history, name))
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().unwrap());
    let child = child.wait_with_output().unwrap();
    let child_out = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "{child_out}");

    // Every line parses (`read` fails otherwise), none is missing.
    let records = history::read(history.path()).unwrap();
    assert_eq!(records.len(), 3 * ACQUISITIONS as usize * EVENTS);
    let pids: HashSet<_> = records
        .iter()
        .filter_map(|r| r.ev.name_acq())
        .map(|(_, acq)| acq.split('-').next().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");

    let report = history::check_file(history.path()).unwrap();
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.acquisitions, 3 * ACQUISITIONS as usize);
    assert_eq!(report.names, 3);
    assert_eq!(report.accepted_writes, 3 * ACQUISITIONS as usize);
    assert!(
        report.worst_gap_ms.is_some_and(|gap| gap >= 0.0),
        "{report}"
    );
}
