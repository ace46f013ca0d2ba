//! `deadbolt check`: evidence that a deployment never lets two holders believe they hold one
//! lock, from a run that records every acquisition and checks the history.
//!
//! N clients × T tasks take M names in a loop (acquire, a fenced write to a resource key, a
//! short hold, maybe an `extend`, release), and record each step with `CLOCK_MONOTONIC`
//! timestamps (the test kit's [`History`]). The checker then says whether any two belief
//! intervals of one name overlapped, whether fencing tokens rose, whether the resource took a
//! write from outside its writer's interval, and how early the lost signal came.
//!
//! Against the user's servers (`--redis`, `--sharded`, `--cluster`, `--sentinel`) it runs
//! during a failover drill: the faults are theirs. With `--private MODE` it starts its own
//! servers behind fault proxies, and `--faults` injects a seeded schedule of network faults
//! (replies held or dropped after the command ran, resets right after a request, latency
//! spikes, blackholes) into them; a failing seed replays with `--seed`.
//!
//! `--processes N` spreads the workload over N OS processes recording into one history (the
//! soak); `--hold-many N` measures the watchdog instead: one client keeping N locks.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use deadbolt_testkit::history::{self, History};
use deadbolt_testkit::{FaultProxy, FaultSchedule};

use crate::embedded::PrivateTopologyArgs;
use crate::exit::usage;

mod hold;
mod plot;
mod private;
mod workload;

use private::{Private, PrivateMode};
use workload::Workload;

/// Arguments of `deadbolt check`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct Args {
    #[command(flatten)]
    servers: PrivateTopologyArgs,
    /// Start private servers for the run, each behind a fault proxy, instead of using
    /// --redis/--cluster/--sentinel: single, sharded (3 servers), redlock3, redlock5
    #[arg(long, value_name = "MODE", value_enum)]
    private: Option<PrivateMode>,
    /// Inject a seeded schedule of network faults into the private servers (--private only; a
    /// Redlock's faults hit a minority of its servers)
    #[arg(long, requires = "private")]
    faults: bool,
    /// The fault schedule's seed [default: random, printed]
    #[arg(long)]
    seed: Option<u64>,
    /// Clients (each with its own connections, watchdog and local queue)
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    clients: u16,
    /// Tasks per client
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    tasks: u16,
    /// Lock names the tasks share
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    names: u32,
    /// How long the run lasts
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop after this many acquisitions, if that comes before --duration
    #[arg(long)]
    acquisitions: Option<u64>,
    /// A fixed lease for every lock [default: the watchdog keeps a --watchdog lease]
    #[arg(long, value_parser = humantime::parse_duration)]
    lease: Option<Duration>,
    /// The lease the watchdog renews, when no --lease is given
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    watchdog: Duration,
    /// How long each task waits for a lock
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// The longest a holder holds (each hold is random up to this)
    #[arg(long, default_value = "5ms", value_parser = humantime::parse_duration)]
    hold: Duration,
    /// Hold each lock until 5 ms before the end of the validity it was acquired with, instead
    /// of --hold: a holder that claims more validity than the key has then overlaps the next
    #[arg(long)]
    hold_to_end: bool,
    /// Mint the fencing token with each acquisition (else on first use, for the write)
    #[arg(long)]
    fenced: bool,
    /// Extend each lock once while held
    #[arg(long)]
    extend: bool,
    /// Take this many names at once with a MultiLock, instead of one
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=100))]
    multi: Option<u32>,
    /// Keep the history (JSON lines) in FILE
    #[arg(long, value_name = "FILE")]
    history: Option<PathBuf>,
    /// Draw the holders' timeline per name (who held when, where lost() fired, where a fault
    /// hit) as an SVG in FILE
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    /// Key prefix of the run's keys (locks, fencing counters, the resource); deleted after
    #[arg(long, default_value = "deadbolt-check")]
    key_prefix: String,
    /// Run the workload in this many OS processes (this one and N − 1 children), all
    /// recording into one history
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    processes: u16,
    /// Instead of the workload: take this many locks with one client, keep them for
    /// --duration under watchdog renewal (--watchdog lease), and report the client's CPU, the
    /// renewal round trips and any lock lost
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    hold_many: Option<u32>,
    /// A child of --processes: run the workload only, appending to --history
    #[arg(long, hide = true, requires = "history")]
    worker: Option<u16>,
    /// Where fenced writes go (a child of --processes on private servers)
    #[arg(long, hide = true, value_name = "URL")]
    resource: Option<String>,
}

const AFTER_HELP: &str = "\
Examples:
  deadbolt check --private redlock5 --faults --duration 30s
  deadbolt check --sentinel 10.0.0.5:26379,10.0.0.6:26379/mymaster --duration 5m --plot drill.svg

Exit status: 0 when the history has no violation and no lock key is left; 1 when it has; 2 for a
usage error; 70 when the run could not be made (a server unreachable).";

/// Runs `deadbolt check`: the workload, then the verdict. Returns whether the history is clean.
///
/// # Errors
///
/// Bad arguments, or servers that cannot be reached or started.
pub(crate) async fn run(args: Args) -> anyhow::Result<bool> {
    if args.faults && args.private.is_none() {
        return Err(usage(
            "--faults needs --private: only private servers are faulted",
        ));
    }
    if args.multi.is_some_and(|k| k > args.names) {
        return Err(usage("--multi takes more names than --names gives"));
    }
    if let Some(index) = args.worker {
        return worker(&args, index).await.map(|()| true);
    }
    // The servers: private ones behind proxies, or the user's.
    let private = match args.private {
        Some(mode) => Some(Private::start(mode).context("cannot start the private servers")?),
        None => None,
    };
    let topology = match &private {
        Some(p) => p.topology()?,
        None => args.servers.target()?.topology,
    };
    eprintln!("deadbolt: checking {}", topology.describe());
    if let Some(n) = args.hold_many {
        prefix_ok(&args.key_prefix)?;
        let (lease, prefix) = (args.watchdog, &args.key_prefix);
        return hold::run(
            &topology,
            private.as_ref(),
            n as usize,
            lease,
            args.duration,
            prefix,
        )
        .await;
    }

    let dir = tempfile::tempdir().context("cannot make a temporary directory")?;
    let path = args
        .history
        .clone()
        .unwrap_or_else(|| dir.path().join("history.jsonl"));
    let history = Arc::new(
        History::create(&path).with_context(|| format!("cannot write {}", path.display()))?,
    );
    let resource = private.as_ref().map(|p| p.resource.url());
    let workload = Workload::new(&args, &topology, history.clone(), resource.as_deref(), 0).await?;
    // Memory after the warm-up (a sixth of the run) against memory at the end: a leak per
    // acquisition shows as growth between the two.
    let warm = args.duration / 6;
    let rss_warm = tokio::spawn(async move {
        tokio::time::sleep(warm).await;
        rss_kib()
    });
    let children = (1..args.processes)
        .map(|i| spawn_worker(&args, &topology, &path, resource.as_deref(), i))
        .collect::<anyhow::Result<Vec<_>>>()?;

    // Faults run on a thread of their own, bounded by the run's duration.
    let stop = Arc::new(AtomicBool::new(false));
    let faults = match (&private, args.faults) {
        (Some(private), true) => {
            let seed = args.seed.unwrap_or_else(rand::random);
            let schedule = FaultSchedule::new(
                seed,
                args.duration,
                Duration::from_millis(300),
                Duration::from_millis(400),
            );
            eprintln!("deadbolt: fault schedule seed {seed} (replay with --seed {seed})");
            Some(start_faults(private, schedule, &history, stop.clone())?)
        }
        _ => None,
    };
    let started = Instant::now();
    let done = workload.run(args.duration, args.acquisitions).await;
    stop.store(true, Ordering::SeqCst);
    if let Some(thread) = faults {
        thread.thread().unpark();
        let _ = thread.join();
    }
    let mut done = done?;
    for child in children {
        done += child.finish(args.duration).await?;
    }
    let rss_end = rss_kib();
    let rss_warm = rss_warm.await.ok().flatten();
    let left = workload.clean_up().await?;

    let records = history::read(&path).context("cannot read the history back")?;
    let report = history::check(&records);
    println!(
        "{done} acquisitions in {:.1}s over {} names, {} process(es) × {} clients × {} tasks",
        started.elapsed().as_secs_f64(),
        args.names,
        args.processes,
        args.clients,
        args.tasks
    );
    print!("{report}");
    if let (Some(warm_rss), Some(end)) = (rss_warm, rss_end) {
        println!(
            "client rss: {warm_rss} KiB after {:.1}s, {end} KiB at the end (this process)",
            warm.as_secs_f64()
        );
    }
    if !left.is_empty() {
        println!("lock keys left after the run: {}", left.join(", "));
    }
    if let Some(plot) = &args.plot {
        plot::write(&records, plot).with_context(|| format!("cannot write {}", plot.display()))?;
        eprintln!("deadbolt: timeline in {}", plot.display());
    }
    if args.history.is_some() {
        eprintln!("deadbolt: history in {}", path.display());
    }
    Ok(report.is_ok() && left.is_empty())
}

/// A child of `--processes`: the workload only, recorded into the parent's history. Prints
/// how many acquisitions it made, for the parent to add up.
async fn worker(args: &Args, index: u16) -> anyhow::Result<()> {
    let topology = args.servers.target()?.topology;
    let path = args.history.as_ref().expect("clap requires --history");
    let history = Arc::new(
        History::append(path).with_context(|| format!("cannot append to {}", path.display()))?,
    );
    let workload = Workload::new(args, &topology, history, args.resource.as_deref(), index).await?;
    let done = workload.run(args.duration, None).await?;
    println!("{done}");
    Ok(())
}

/// A child process of `--processes`.
struct Child(tokio::process::Child);

/// Starts child `index`, with this run's servers and workload.
fn spawn_worker(
    args: &Args,
    topology: &crate::connect::Topology,
    history: &std::path::Path,
    resource: Option<&str>,
    index: u16,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe().context("cannot find this program to start a child")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("check")
        .args(topology.to_args())
        .arg("--worker")
        .arg(index.to_string())
        .arg("--history")
        .arg(history);
    if let Some(resource) = resource {
        cmd.arg("--resource").arg(resource);
    }
    let duration = humantime::format_duration(args.duration).to_string();
    for (flag, value) in [
        ("--clients", args.clients.to_string()),
        ("--tasks", args.tasks.to_string()),
        ("--names", args.names.to_string()),
        ("--duration", duration),
        (
            "--watchdog",
            humantime::format_duration(args.watchdog).to_string(),
        ),
        ("--wait", humantime::format_duration(args.wait).to_string()),
        ("--hold", humantime::format_duration(args.hold).to_string()),
        ("--key-prefix", args.key_prefix.clone()),
    ] {
        cmd.arg(flag).arg(value);
    }
    if let Some(lease) = args.lease {
        cmd.arg("--lease")
            .arg(humantime::format_duration(lease).to_string());
    }
    if let Some(k) = args.multi {
        cmd.arg("--multi").arg(k.to_string());
    }
    for (on, flag) in [
        (args.fenced, "--fenced"),
        (args.extend, "--extend"),
        (args.hold_to_end, "--hold-to-end"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true);
    Ok(Child(cmd.spawn().context("cannot start a child process")?))
}

impl Child {
    /// Waits for the child (bounded: its duration and a minute), and returns its count.
    async fn finish(self, duration: Duration) -> anyhow::Result<u64> {
        let out = tokio::time::timeout(
            duration + Duration::from_secs(60),
            self.0.wait_with_output(),
        )
        .await
        .context("a child process did not finish in time")??;
        if !out.status.success() {
            bail!("a child process failed: {}", out.status);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim()
            .parse()
            .with_context(|| format!("a child process printed `{}`", text.trim()))
    }
}

/// This process's resident set size, from `/proc/self/status`.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts the fault schedule on a thread over the private servers' faultable proxies, and
/// records each planned step in the history (for the plot).
fn start_faults(
    private: &Private,
    schedule: FaultSchedule,
    history: &History,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let proxies: Vec<Arc<FaultProxy>> = private.faultable();
    if proxies.is_empty() {
        bail!("no server to fault");
    }
    let base = history::mono_ns();
    for step in schedule.steps() {
        let what = format!("{:?} on proxy {}", step.fault, step.proxy(proxies.len()));
        history
            .write_record(&history::Record {
                t: base + step.at.as_nanos() as u64,
                ev: history::Event::Fault { what },
            })
            .context("cannot record the fault schedule")?;
    }
    std::thread::Builder::new()
        .name("check-faults".into())
        .spawn(move || {
            let proxies: Vec<&FaultProxy> = proxies.iter().map(|p| &**p).collect();
            schedule.run(&proxies, &stop);
        })
        .context("cannot start the fault thread")
}

/// Checks `--key-prefix`: the run deletes its keys after, so it must be a prefix of its own.
fn prefix_ok(prefix: &str) -> anyhow::Result<()> {
    if prefix.is_empty() || prefix.contains(['{', '}', '*', '?', '[']) {
        return Err(usage(
            "--key-prefix must be non-empty, without '{', '}' or glob characters: the run deletes \
             its keys after",
        ));
    }
    Ok(())
}
