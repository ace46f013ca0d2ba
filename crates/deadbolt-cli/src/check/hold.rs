//! `deadbolt check --hold-many N`: the watchdog at scale. One client takes N locks, keeps them
//! for `--duration` while its watchdog renews them in batches (per hash slot on a Cluster), and
//! reports what that costs the client (CPU as % of one core, from `/proc/self/stat`), how many
//! renewal round trips the servers saw per second (private servers only), and whether any lock
//! was lost. It then releases them all.

use std::time::{Duration, Instant};

use anyhow::Context;
use deadbolt::{Client, LockGuard};
use futures_util::future::join_all;

use super::private::Private;
use crate::connect::Topology;

/// How many acquisitions (or releases) are in flight at once.
const BATCH: usize = 1000;

/// Runs the measurement; returns whether every lock was kept.
pub(super) async fn run(
    topology: &Topology,
    private: Option<&Private>,
    n: usize,
    lease: Duration,
    duration: Duration,
    prefix: &str,
) -> anyhow::Result<bool> {
    let client = topology
        .connect(topology.builder().key_prefix(prefix))
        .await?;
    let taken = Instant::now();
    let mut guards: Vec<LockGuard> = Vec::with_capacity(n);
    for start in (0..n).step_by(BATCH) {
        let batch = (start..(start + BATCH).min(n)).map(|i| take(&client, i, lease));
        for guard in join_all(batch).await {
            guards.push(guard?);
        }
    }
    println!("took {n} locks in {:.1}s", taken.elapsed().as_secs_f64());

    let scripts_before = private.map(scripts_run);
    let (cpu_before, at) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(duration).await;
    let (cpu_after, held_for) = (cpu_seconds(), at.elapsed());
    let lost = guards.iter().filter(|g| !g.is_held()).count();
    if let (Some(before), Some(after)) = (cpu_before, cpu_after) {
        println!(
            "client cpu while holding: {:.2} % of one core ({:.2} s over {:.1} s)",
            (after - before) / held_for.as_secs_f64() * 100.0,
            after - before,
            held_for.as_secs_f64()
        );
    }
    if let (Some(before), Some(after)) = (scripts_before, private.map(scripts_run)) {
        println!(
            "renewal round trips: {:.1}/s ({} script calls on the servers, at most 100 locks each)",
            (after - before) as f64 / held_for.as_secs_f64(),
            after - before
        );
    }
    println!("locks lost while held: {lost} of {n}");

    let released = Instant::now();
    let mut guards = guards.into_iter();
    loop {
        let batch: Vec<LockGuard> = guards.by_ref().take(BATCH).collect();
        if batch.is_empty() {
            break;
        }
        join_all(batch.into_iter().map(LockGuard::release)).await;
    }
    println!("released them in {:.1}s", released.elapsed().as_secs_f64());
    Ok(lost == 0)
}

async fn take(client: &Client, i: usize, lease: Duration) -> anyhow::Result<LockGuard> {
    client
        .lock(format!("many:{i}"))
        .watchdog(lease)
        .wait(Duration::from_secs(10))
        .acquire()
        .await
        .with_context(|| format!("cannot take lock many:{i}"))
}

/// Script calls (`EVALSHA`) the private servers ran so far: with every lock held and nothing
/// else running, the renewals.
fn scripts_run(private: &Private) -> u64 {
    private
        .servers()
        .iter()
        .map(|s| s.command_calls().get("evalsha").copied().unwrap_or(0))
        .sum()
}

/// User + system CPU time of this process so far, in seconds (`/proc/self/stat`, in clock
/// ticks of 1/100 s, Linux's USER_HZ).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}
