//! The results: one [`Report`] per workload, as a table or as JSON lines.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::Workload;
use super::phase::Phase;
use super::server::{CensusCounts, CommandCounts};

/// W2's ideal throughput: one critical section plus one round trip per operation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ideal {
    /// 1 / (section + RTT).
    pub(crate) ops_per_s: f64,
    /// Mean PING round trip, µs.
    pub(crate) rtt_us: f64,
    /// Mean GET + hold + SET, µs.
    pub(crate) section_us: f64,
}

/// One measurement (one round) of a workload, with what the server counted.
#[derive(Debug)]
pub(crate) struct Measured {
    /// What the workers counted.
    pub(crate) phase: Phase,
    /// Commands during the measured phase, if the server told.
    pub(crate) commands: Option<CommandCounts>,
    /// The census after it (counts, acquisitions watched), if one ran.
    pub(crate) census: Option<(CensusCounts, u64)>,
}

/// The result of one workload over all its rounds.
#[derive(Debug)]
pub(crate) struct Report {
    /// Which workload.
    workload: Workload,
    /// Its workers.
    workers: usize,
    /// Its deadbolt clients (none for the floor).
    clients: Option<usize>,
    /// The rounds aggregated.
    rounds: usize,
    /// Completed cycles, all rounds.
    ops_done: u64,
    /// Failed steps, all rounds.
    errors: u64,
    /// Releases that found their lease run out.
    lease_expired: u64,
    /// Measured wall time, all rounds.
    elapsed_s: f64,
    /// Median of the rounds' ops/s.
    ops_per_s: f64,
    /// Each round's ops/s.
    ops_per_s_rounds: Vec<f64>,
    /// Wait p50, µs (none without a completed cycle).
    wait_p50_us: Option<u64>,
    /// Wait p99, µs.
    wait_p99_us: Option<u64>,
    /// Wait max, µs.
    wait_max_us: Option<u64>,
    /// Cycle p50, µs.
    cycle_p50_us: Option<u64>,
    /// Cycle p99, µs.
    cycle_p99_us: Option<u64>,
    /// Acquisitions of the least served worker.
    per_worker_min: u64,
    /// Acquisitions of the best served worker.
    per_worker_max: u64,
    /// W2 with several clients: acquisitions per client (worker `i` uses client `i % C`), which
    /// shows whether one client keeps the lock to itself.
    per_client: Option<Vec<u64>>,
    /// All commands (top-level and inside scripts) per acquisition.
    cmds_per_acquisition: Option<f64>,
    /// Those commands by name, per acquisition.
    cmds_breakdown: Vec<(String, f64)>,
    /// Top-level commands per acquisition, from the census.
    cmds_top_level_per_acquisition: Option<f64>,
    /// Those by name, per acquisition.
    cmds_top_level_breakdown: Vec<(String, f64)>,
    /// W2: completed increments the counter does not show.
    pub(crate) lost_updates: Option<i64>,
    /// W2: its ideal.
    ideal: Option<Ideal>,
    /// W1: its ops/s over the floor's; W3: over floor3's.
    ratio_to_floor: Option<f64>,
    /// W3 and W1c: its cycle p50 over W1's, when both ran.
    cycle_ratio_to_w1: Option<f64>,
    /// W1c: its ops/s over W1's, when both ran.
    ratio_to_w1: Option<f64>,
}

impl Report {
    /// Aggregates the rounds of `workload`.
    pub(crate) fn new(
        workload: Workload,
        workers: usize,
        clients: Option<usize>,
        rounds: &[Measured],
        ideal: Option<Ideal>,
    ) -> anyhow::Result<Report> {
        let mut total = Phase::empty();
        let mut ops_per_s_rounds = Vec::with_capacity(rounds.len());
        for round in rounds {
            total.absorb(&round.phase)?;
            ops_per_s_rounds.push(round.phase.ops_per_s());
        }
        // Counted only when every round was: a partial sum per total op would mislead.
        let commands = rounds
            .iter()
            .map(|r| r.commands.as_ref())
            .collect::<Option<Vec<_>>>()
            .map(|all| {
                let mut sum = CommandCounts::default();
                for counts in all {
                    sum.add(counts);
                }
                sum
            });
        let census = rounds.iter().rev().find_map(|r| r.census.as_ref());
        let quantile = |h: &hdrhistogram::Histogram<u64>, q: f64| {
            (!h.is_empty()).then(|| h.value_at_quantile(q))
        };
        let ops = total.ops;
        Ok(Report {
            workload,
            workers,
            clients,
            rounds: rounds.len(),
            ops_done: ops,
            errors: total.errors,
            lease_expired: total.expired,
            elapsed_s: total.elapsed.as_secs_f64(),
            ops_per_s: median(&ops_per_s_rounds),
            ops_per_s_rounds,
            wait_p50_us: quantile(&total.wait, 0.50),
            wait_p99_us: quantile(&total.wait, 0.99),
            wait_max_us: (!total.wait.is_empty()).then(|| total.wait.max()),
            cycle_p50_us: quantile(&total.cycle, 0.50),
            cycle_p99_us: quantile(&total.cycle, 0.99),
            per_worker_min: total.per_worker.iter().copied().min().unwrap_or(0),
            per_worker_max: total.per_worker.iter().copied().max().unwrap_or(0),
            per_client: clients.filter(|&c| c > 1).map(|c| {
                let mut sums = vec![0; c];
                for (i, n) in total.per_worker.iter().enumerate() {
                    sums[i % c] += n;
                }
                sums
            }),
            cmds_per_acquisition: commands
                .as_ref()
                .filter(|_| ops > 0)
                .map(|c| c.total() as f64 / ops as f64),
            cmds_breakdown: commands.map(|c| c.per_op(ops)).unwrap_or_default(),
            cmds_top_level_per_acquisition: census
                .filter(|(_, ops)| *ops > 0)
                .map(|(c, ops)| c.top.total() as f64 / *ops as f64),
            cmds_top_level_breakdown: census
                .map(|(c, ops)| c.top.per_op(*ops))
                .unwrap_or_default(),
            lost_updates: (workload == Workload::W2)
                .then(|| total.counter_delta.map(|d| total.increments as i64 - d))
                .flatten(),
            ideal,
            ratio_to_floor: None,
            cycle_ratio_to_w1: None,
            ratio_to_w1: None,
        })
    }

    /// Acquisitions of the best served worker over the least served one; none if one starved.
    fn spread(&self) -> Option<f64> {
        (self.per_worker_min > 0).then(|| self.per_worker_max as f64 / self.per_worker_min as f64)
    }

    /// This run's ops/s over its ideal.
    fn ratio_to_ideal(&self) -> Option<f64> {
        self.ideal.map(|i| self.ops_per_s / i.ops_per_s)
    }

    /// One JSON object on one line; every workload has the same keys, null where they do not
    /// apply, so the lines load as one table.
    pub(crate) fn json_line(&self) -> String {
        let breakdown = |rows: &[(String, f64)]| -> Value {
            Value::Object(
                rows.iter()
                    .map(|(name, n)| (name.clone(), json!(round(*n, 3))))
                    .collect(),
            )
        };
        let fields: [(&str, Value); 32] = [
            ("workload", json!(self.workload.label())),
            (
                "nodes",
                // The servers its commands are counted on: a cluster's masters, not its replicas.
                json!(if self.workload.on_quorum() {
                    super::QUORUM_NODES
                } else if self.workload.on_cluster() {
                    super::CLUSTER_MASTERS
                } else {
                    1
                }),
            ),
            ("workers", json!(self.workers)),
            ("clients", json!(self.clients)),
            ("rounds", json!(self.rounds)),
            ("ops_done", json!(self.ops_done)),
            ("errors", json!(self.errors)),
            ("lease_expired", json!(self.lease_expired)),
            ("elapsed_s", json!(round(self.elapsed_s, 3))),
            ("ops_per_s", json!(round(self.ops_per_s, 1))),
            (
                "ops_per_s_rounds",
                json!(
                    self.ops_per_s_rounds
                        .iter()
                        .map(|x| round(*x, 1))
                        .collect::<Vec<_>>()
                ),
            ),
            ("wait_p50_us", json!(self.wait_p50_us)),
            ("wait_p99_us", json!(self.wait_p99_us)),
            ("wait_max_us", json!(self.wait_max_us)),
            ("cycle_p50_us", json!(self.cycle_p50_us)),
            ("cycle_p99_us", json!(self.cycle_p99_us)),
            ("per_worker_min", json!(self.per_worker_min)),
            ("per_worker_max", json!(self.per_worker_max)),
            ("spread", json!(self.spread().map(|s| round(s, 3)))),
            ("per_client", json!(self.per_client)),
            (
                "cmds_per_acquisition",
                json!(self.cmds_per_acquisition.map(|n| round(n, 3))),
            ),
            ("cmds_breakdown", breakdown(&self.cmds_breakdown)),
            (
                "cmds_top_level_per_acquisition",
                json!(self.cmds_top_level_per_acquisition.map(|n| round(n, 3))),
            ),
            (
                "cmds_top_level_breakdown",
                breakdown(&self.cmds_top_level_breakdown),
            ),
            ("lost_updates", json!(self.lost_updates)),
            (
                "ideal_ops_per_s",
                json!(self.ideal.map(|i| round(i.ops_per_s, 1))),
            ),
            (
                "ratio_to_ideal",
                json!(self.ratio_to_ideal().map(|r| round(r, 3))),
            ),
            ("rtt_us", json!(self.ideal.map(|i| round(i.rtt_us, 1)))),
            (
                "section_us",
                json!(self.ideal.map(|i| round(i.section_us, 1))),
            ),
            (
                "ratio_to_floor",
                json!(self.ratio_to_floor.map(|r| round(r, 3))),
            ),
            (
                "cycle_ratio_to_w1",
                json!(self.cycle_ratio_to_w1.map(|r| round(r, 3))),
            ),
            ("ratio_to_w1", json!(self.ratio_to_w1.map(|r| round(r, 3)))),
        ];
        // Built by hand to keep this order: serde_json's map would sort the keys.
        let body: Vec<String> = fields
            .iter()
            .map(|(key, value)| format!("{}:{value}", json!(key)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

/// Fills in W1's ratio to the floor, W3's to floor3, W3's and W1c's cycle to W1's, and W1c's
/// ops/s to W1's, for those that ran.
pub(crate) fn link_ratios(reports: &mut [Report]) {
    let find = |reports: &[Report], workload| reports.iter().position(|r| r.workload == workload);
    for (lock, floor) in [
        (Workload::W1, Workload::Floor),
        (Workload::W3, Workload::Floor3),
    ] {
        if let (Some(lock), Some(floor)) = (find(reports, lock), find(reports, floor)) {
            let floor = reports[floor].ops_per_s;
            if floor > 0.0 {
                reports[lock].ratio_to_floor = Some(reports[lock].ops_per_s / floor);
            }
        }
    }
    let Some(w1) = find(reports, Workload::W1) else {
        return;
    };
    for other in [Workload::W3, Workload::W1c] {
        if let Some(other) = find(reports, other)
            && let (Some(cycle), Some(w1_cycle)) =
                (reports[other].cycle_p50_us, reports[w1].cycle_p50_us)
        {
            reports[other].cycle_ratio_to_w1 =
                (w1_cycle > 0).then(|| cycle as f64 / w1_cycle as f64);
        }
    }
    if let Some(w1c) = find(reports, Workload::W1c) {
        let w1_ops = reports[w1].ops_per_s;
        reports[w1c].ratio_to_w1 = (w1_ops > 0.0).then(|| reports[w1c].ops_per_s / w1_ops);
    }
}

/// The human table, the command breakdowns and the ratio lines.
pub(crate) fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let _ = writeln!(
        out,
        "{:<8} {:>7} {:>7} {:>10}  {:>24}  {:>17}  {:>17}  {:>8}  {:>4}",
        "workload",
        "workers",
        "clients",
        "ops/s",
        "wait p50/p99/max µs",
        "cycle p50/p99 µs",
        "per-worker min/max",
        "cmds/acq",
        "lost"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "{:<8} {:>7} {:>7} {:>10.0}  {:>24}  {:>17}  {:>17}  {:>8}  {:>4}",
            r.workload.label(),
            r.workers,
            opt(r.clients.map(|c| c as u64)),
            r.ops_per_s,
            format!(
                "{} / {} / {}",
                opt(r.wait_p50_us),
                opt(r.wait_p99_us),
                opt(r.wait_max_us)
            ),
            format!("{} / {}", opt(r.cycle_p50_us), opt(r.cycle_p99_us)),
            format!("{} / {}", r.per_worker_min, r.per_worker_max),
            r.cmds_per_acquisition
                .map_or_else(|| "-".to_owned(), |n| format!("{n:.2}")),
            r.lost_updates
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        );
    }
    if reports.iter().any(|r| r.cmds_per_acquisition.is_some()) {
        let _ = writeln!(
            out,
            "\ncommands per acquisition (all, including those run inside scripts; top-level = \
             sent by the client):"
        );
        for r in reports {
            let Some(total) = r.cmds_per_acquisition else {
                continue;
            };
            let top = r
                .cmds_top_level_per_acquisition
                .map(|t| format!(", {t:.2} top-level ({})", rows(&r.cmds_top_level_breakdown)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<6} {total:.2}{top}: {}",
                r.workload.label(),
                rows(&r.cmds_breakdown)
            );
        }
    }
    let _ = writeln!(out);
    for r in reports {
        if let Some(ratio) = r.ratio_to_floor {
            let floor_of = if r.workload == Workload::W3 {
                Workload::Floor3
            } else {
                Workload::Floor
            };
            let floor = reports
                .iter()
                .find(|f| f.workload == floor_of)
                .map_or(0.0, |f| f.ops_per_s);
            let (name, floor_name) = (r.workload.label(), floor_of.label());
            let _ = writeln!(
                out,
                "{name} / {floor_name} = {ratio:.2} (median of {} round(s): {name} {:.0} ops/s, \
                 {floor_name} {floor:.0} ops/s)",
                r.rounds, r.ops_per_s
            );
        }
        if let (Some(ratio), Some(cycle_ratio)) = (r.ratio_to_w1, r.cycle_ratio_to_w1) {
            let w1 = reports.iter().find(|f| f.workload == Workload::W1);
            let p = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "W1 cluster / W1 = {ratio:.2} (ops/s, median of {} round(s): W1c {:.0}, W1 {:.0}) \
                 ; cycle p50 W1c {} µs / W1 {} µs = {cycle_ratio:.2}; p99 W1c {} µs, W1 {} µs \
                 (a cluster of {} masters against one server)",
                r.rounds,
                r.ops_per_s,
                w1.map_or(0.0, |w| w.ops_per_s),
                p(r.cycle_p50_us),
                p(w1.and_then(|w| w.cycle_p50_us)),
                p(r.cycle_p99_us),
                p(w1.and_then(|w| w.cycle_p99_us)),
                super::CLUSTER_MASTERS
            );
        }
        if r.workload == Workload::W3
            && let Some(ratio) = r.cycle_ratio_to_w1
        {
            let find = |w: Workload| reports.iter().find(|f| f.workload == w);
            let w1 = find(Workload::W1);
            let p = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            // The same ratio without the library: how much of it the fan-out itself costs here.
            let floors = match (
                find(Workload::Floor3).and_then(|f| f.cycle_p50_us),
                find(Workload::Floor).and_then(|f| f.cycle_p50_us),
            ) {
                (Some(f3), Some(f)) if f > 0 => {
                    format!("; floor3 / floor cycle = {:.2}", f3 as f64 / f as f64)
                }
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "W3 cycle / W1 cycle = {ratio:.2} (p50: W3 {} µs, W1 {} µs; p99: W3 {} µs, W1 {} \
                 µs; redlock over {} nodes against one{floors})",
                p(r.cycle_p50_us),
                p(w1.and_then(|w| w.cycle_p50_us)),
                p(r.cycle_p99_us),
                p(w1.and_then(|w| w.cycle_p99_us)),
                super::QUORUM_NODES
            );
        }
        if let (Some(ratio), Some(ideal)) = (r.ratio_to_ideal(), r.ideal) {
            let spread = r
                .spread()
                .map_or_else(|| "∞ (a worker starved)".to_owned(), |s| format!("{s:.2}x"));
            let _ = writeln!(
                out,
                "W2 / ideal = {ratio:.2} (ideal {:.0} ops/s = 1 / (GET+hold+SET {:.0} µs + RTT \
                 {:.0} µs)), spread max/min = {spread}",
                ideal.ops_per_s, ideal.section_us, ideal.rtt_us
            );
            if let Some(per_client) = &r.per_client {
                let list: Vec<String> = per_client.iter().map(u64::to_string).collect();
                let _ = writeln!(out, "W2 acquisitions per client: {}", list.join(", "));
            }
        }
        if r.errors > 0 || r.lease_expired > 0 {
            let _ = writeln!(
                out,
                "{}: {} error(s), {} release(s) after the lease ran out",
                r.workload.label(),
                r.errors,
                r.lease_expired
            );
        }
    }
    out
}

/// `"evalsha 2.00, get 1.00"`.
fn rows(rows: &[(String, f64)]) -> String {
    rows.iter()
        .map(|(name, n)| format!("{name} {n:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The median of `xs` (the mean of the middle two for an even count); 0 for none.
fn median(xs: &[f64]) -> f64 {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// `x` rounded to `digits` decimals, for JSON that is read by people too.
fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_rounds() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
