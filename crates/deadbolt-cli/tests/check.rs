//! `deadbolt check`, end to end: the bounded form of the proof that CI runs. Each mode runs a
//! recorded workload on private servers behind fault proxies, under a fixed seed's fault
//! schedule (replies held or dropped after the command ran, resets right after a request,
//! latency spikes, blackholes; a Redlock's faults on a minority), and the history checker must
//! find no two holders, falling fencing tokens, stale writes accepted or lock keys left.
//!
//! `DEADBOLT_CHECK_SECS` lengthens each run (a long local run); the default keeps the whole
//! suite in CI's budget.

use std::process::{Command, Output};
use std::sync::Mutex;

/// The runs share two cores: one at a time, so each gets its acquisitions' worth of CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn deadbolt() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deadbolt"));
    cmd.env_remove("DEADBOLT_REDIS_URL")
        .env_remove("DEADBOLT_LOG");
    cmd
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number before `label` in `text` (`"1362 acquisitions in"`).
fn number_before(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"));
    text[..at]
        .split_whitespace()
        .last()
        .unwrap()
        .parse()
        .unwrap()
}

/// Every mode and shape, each under faults with a fixed seed; at least 10 000 checked
/// acquisitions in all, none violating.
#[test]
fn no_two_holders_under_faults_in_any_mode() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let secs: u64 = std::env::var("DEADBOLT_CHECK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = format!("{secs}s");
    // Many short holdings over 32 names, and two shapes where holders keep their locks to
    // the end of their validity, so that faults make renewals fail and lost() fire.
    const SHORT: [&str; 4] = ["--names", "32", "--hold", "1ms"];
    const TO_END: [&str; 9] = [
        "--lease",
        "500ms",
        "--hold-to-end",
        "--hold",
        "0s",
        "--names",
        "8",
        "--wait",
        "1s",
    ];
    let to_end = |mode: &'static str, seed: &'static str| {
        let mut args = vec!["--private", mode, "--seed", seed];
        args.extend_from_slice(&TO_END);
        args
    };
    let (to_end_single, to_end_redlock) = (to_end("single", "23"), to_end("redlock3", "24"));
    let runs: [(&str, &[&str]); 11] = [
        ("single, watchdog", &["--private", "single", "--seed", "11"]),
        (
            "single, fixed lease, extend, fenced",
            &[
                "--private",
                "single",
                "--seed",
                "12",
                "--lease",
                "700ms",
                "--extend",
                "--fenced",
            ],
        ),
        ("sharded", &["--private", "sharded", "--seed", "13"]),
        ("redlock3", &["--private", "redlock3", "--seed", "14"]),
        (
            "redlock5, fixed lease, fenced",
            &[
                "--private",
                "redlock5",
                "--seed",
                "15",
                "--lease",
                "1s",
                "--fenced",
            ],
        ),
        (
            "redlock5, watchdog, extend",
            &["--private", "redlock5", "--seed", "16", "--extend"],
        ),
        (
            "multi-lock of 3",
            &[
                "--private",
                "single",
                "--seed",
                "17",
                "--multi",
                "3",
                "--lease",
                "800ms",
            ],
        ),
        (
            "single, 300 ms watchdog, holds to 300 ms",
            &[
                "--private",
                "single",
                "--seed",
                "21",
                "--watchdog",
                "300ms",
                "--hold",
                "300ms",
                "--names",
                "8",
                "--wait",
                "1s",
            ],
        ),
        (
            "redlock3, 400 ms lease held to 350 ms",
            &[
                "--private",
                "redlock3",
                "--seed",
                "22",
                "--lease",
                "400ms",
                "--hold",
                "350ms",
                "--names",
                "8",
                "--wait",
                "1s",
            ],
        ),
        ("single, 500 ms lease held to its end", &to_end_single),
        ("redlock3, 500 ms lease held to its end", &to_end_redlock),
    ];
    let mut total = 0;
    for (what, args) in runs {
        let out = deadbolt()
            .arg("check")
            .args(args)
            .args(if args.contains(&"--hold") {
                &[][..]
            } else {
                &SHORT[..]
            })
            .args(["--faults", "--duration", &duration])
            .output()
            .unwrap();
        let text = text(&out);
        println!("== {what}\n{text}");
        assert!(out.status.success(), "{what}: {:?}\n{text}", out.status);
        assert!(text.contains("violations: 0"), "{what}:\n{text}");
        assert!(!text.contains("lock keys left"), "{what}:\n{text}");
        let faults = number_before(&text, "faults\n");
        assert!(faults > 0, "{what}: no fault was injected\n{text}");
        total += number_before(&text, "acquisitions in");
    }
    println!("{total} checked acquisitions under faults, 0 violations");
    assert!(total >= 10_000 * secs / 5, "only {total} acquisitions");
}

/// The history and the timeline are written where asked, and the history is what the checker
/// read: every line parses and the plot has a bar per acquisition.
#[test]
fn check_keeps_its_history_and_draws_its_timeline() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (history, plot) = (dir.path().join("h.jsonl"), dir.path().join("t.svg"));
    let out = deadbolt()
        .args([
            "check",
            "--private",
            "single",
            "--duration",
            "1s",
            "--names",
            "4",
        ])
        .arg("--history")
        .arg(&history)
        .arg("--plot")
        .arg(&plot)
        .output()
        .unwrap();
    let text = text(&out);
    assert!(out.status.success(), "{text}");
    let records = deadbolt_testkit::history::read(&history).unwrap();
    let acquired = records.iter().filter(|r| r.ev.kind() == "acquired").count();
    assert_eq!(acquired as u64, number_before(&text, "acquisitions in"));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("<rect").count(), acquired);
}

/// Bad input is refused with a usage error before anything starts.
#[test]
fn check_refuses_bad_input() {
    for args in [
        &["check", "--faults"][..],
        &[
            "check",
            "--private",
            "single",
            "--multi",
            "5",
            "--names",
            "3",
        ],
        &["check", "--private", "single", "--key-prefix", "a*"],
        &["check", "--private", "single", "--clients", "0"],
        &["check", "--private", "nine"],
    ] {
        let out = deadbolt().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
}

/// The soak: 1000 tasks over 100 names in 4 processes (4 × 5 clients × 50 tasks), under
/// faults, for `DEADBOLT_SOAK_SECS` (60 by default): no violation, no key left, and the
/// client's memory after the warm-up does not grow by the end.
#[test]
fn soak_of_1000_tasks_over_100_names_in_4_processes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let secs: u64 = std::env::var("DEADBOLT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let out = deadbolt()
        .args(["check", "--private", "single", "--faults", "--seed", "31"])
        .args([
            "--processes",
            "4",
            "--clients",
            "5",
            "--tasks",
            "50",
            "--names",
            "100",
        ])
        .args(["--hold", "2ms", "--duration", &format!("{secs}s")])
        .output()
        .unwrap();
    let text = text(&out);
    println!("{text}");
    assert!(out.status.success(), "{:?}\n{text}", out.status);
    assert!(text.contains("violations: 0"), "{text}");
    let line = text.lines().find(|l| l.starts_with("client rss:")).unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (warm, end) = (numbers[0], numbers[1]);
    assert!(
        end <= warm + warm / 4 + 8 * 1024,
        "client memory grew from {warm} KiB to {end} KiB"
    );
}
