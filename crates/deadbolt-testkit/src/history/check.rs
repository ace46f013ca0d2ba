//! The exclusion checker.
//!
//! An acquisition *believes* it holds its lock from its `acquired` event
//! until the first of: `lost`, `release_sent`, its validity end (`until`, moved by
//! each `valid` event seen before it passed).
//! Those belief intervals of one lock name must not overlap, fencing tokens
//! must rise, and the protected resource must accept writes only from an
//! owner inside its interval, with rising tokens.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io;
use std::path::Path;

use super::{Event, Record, read};

/// The rule a [`Violation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// Two acquisitions of one name believed they held it at the same time.
    Overlap,
    /// A fencing token was not above an earlier acquisition's (by `acquired` time).
    FenceOrder,
    /// The resource accepted a write outside its acquisition's belief interval.
    WriteOutsideInterval,
    /// The resource accepted a write whose token was below an earlier accepted
    /// write's, or equal to one from another acquisition.
    WriteFenceOrder,
}

/// One broken rule, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub kind: ViolationKind,
    /// The lock name.
    pub name: String,
    /// The acquisitions involved (the earlier first).
    pub acqs: Vec<String>,
    /// The events involved, in time order.
    pub events: Vec<Record>,
    /// A sentence naming the events and their times (ns).
    pub message: String,
}

/// The checker's verdict on one history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Acquisitions with an `acquired` event.
    pub acquisitions: usize,
    /// Distinct lock names.
    pub names: usize,
    /// Every broken rule found.
    pub violations: Vec<Violation>,
    /// Writes the resource refused (a stale owner stopped by fencing).
    pub stale_writes_refused: usize,
    /// Writes the resource accepted.
    pub accepted_writes: usize,
    /// Acquisitions that failed.
    pub gave_up: usize,
    /// Acquisitions that recorded losing their lock.
    pub lost: usize,
    /// Faults injected.
    pub faults: usize,
    /// Smallest time from an interval's end to its successor's `acquired`.
    pub worst_gap_ms: Option<f64>,
    /// Smallest time from a `lost` that ended an interval to the successor's `acquired`.
    pub lost_margin_min_ms: Option<f64>,
    /// 1st percentile (nearest rank) of the same lost-signal margins.
    pub lost_margin_p01_ms: Option<f64>,
}

impl Report {
    /// Whether no rule was broken.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// How many violations [`Report`]'s `Display` shows in full.
const SHOWN: usize = 5;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3} ms"));
        writeln!(
            f,
            "acquisitions: {} on {} names ({} gave up, {} lost), {} faults",
            self.acquisitions, self.names, self.gave_up, self.lost, self.faults
        )?;
        writeln!(f, "violations: {}", self.violations.len())?;
        writeln!(
            f,
            "writes: {} accepted, {} stale refused",
            self.accepted_writes, self.stale_writes_refused
        )?;
        writeln!(
            f,
            "worst gap: {}; lost-signal margin: min {}, p01 {}",
            ms(self.worst_gap_ms),
            ms(self.lost_margin_min_ms),
            ms(self.lost_margin_p01_ms)
        )?;
        if self.is_ok() {
            return writeln!(f, "verdict: OK");
        }
        writeln!(f, "verdict: VIOLATED")?;
        for v in self.violations.iter().take(SHOWN) {
            writeln!(f, "  {:?}: {}", v.kind, v.message)?;
        }
        if self.violations.len() > SHOWN {
            writeln!(f, "  ... and {} more", self.violations.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// What one acquisition recorded.
#[derive(Default)]
struct Acq<'a> {
    acquired: Option<&'a Record>,
    /// The validity ends the holder saw after renewals or `extend`s, in time order.
    valid: Vec<&'a Record>,
    lost: Option<&'a Record>,
    release_sent: Option<&'a Record>,
    writes: Vec<&'a Record>,
}

/// An acquisition's belief interval.
struct Held<'a> {
    id: &'a str,
    start: u64,
    end: u64,
    fence: Option<u64>,
    /// The events that start and (unless it was `until`) end it.
    events: Vec<Record>,
    /// What ended it: `lost`, `release_sent` or `until`.
    end_by: &'static str,
    /// The `lost` time, if `lost` ended it.
    lost_at: Option<u64>,
}

impl<'a> Held<'a> {
    fn new(id: &'a str, acq: &Acq<'a>) -> Option<Self> {
        let acquired = acq.acquired?;
        let Event::Acquired {
            mut until, fence, ..
        } = acquired.ev
        else {
            return None;
        };
        // Each new validity the holder saw moves the end, unless the belief had ended by the
        // clock before it was seen (a renewal that came too late does not revive it).
        for valid in &acq.valid {
            match valid.ev {
                Event::Valid { until: next, .. } if valid.t < until => until = next,
                _ => break,
            }
        }
        let mut held = Held {
            id,
            start: acquired.t,
            end: until,
            fence,
            events: vec![acquired.clone()],
            end_by: "until",
            lost_at: None,
        };
        for (by, rec) in [("lost", acq.lost), ("release_sent", acq.release_sent)] {
            if let Some(rec) = rec.filter(|r| r.t < held.end) {
                (held.end, held.end_by) = (rec.t, by);
                held.events.truncate(1);
                held.events.push(rec.clone());
            }
        }
        held.lost_at = (held.end_by == "lost").then_some(held.end);
        Some(held)
    }

    fn describe(&self) -> String {
        format!(
            "{} [acquired {}, {} {}]",
            self.id, self.start, self.end_by, self.end
        )
    }
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// Name -> (acquisition ids in first-seen order, id -> what it recorded).
type Names<'a> = BTreeMap<&'a str, (Vec<&'a str>, HashMap<&'a str, Acq<'a>>)>;

/// Groups time-sorted records by lock name and acquisition, counting faults and give-ups.
fn group<'a>(sorted: &[&'a Record], report: &mut Report) -> Names<'a> {
    let mut names: Names<'a> = BTreeMap::new();
    for &rec in sorted {
        let Some((name, id)) = rec.ev.name_acq() else {
            report.faults += 1;
            continue;
        };
        let (order, acqs) = names.entry(name).or_default();
        let acq = acqs.entry(id).or_insert_with(|| {
            order.push(id);
            Acq::default()
        });
        match rec.ev {
            Event::Acquired { .. } => _ = acq.acquired.get_or_insert(rec),
            Event::Valid { .. } => acq.valid.push(rec),
            Event::Lost { .. } => _ = acq.lost.get_or_insert(rec),
            Event::ReleaseSent { .. } => _ = acq.release_sent.get_or_insert(rec),
            Event::GaveUp { .. } => report.gave_up += 1,
            Event::Write { .. } => acq.writes.push(rec),
            _ => {}
        }
    }
    names
}

/// One acquisition's belief interval, for plots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    /// The lock name.
    pub name: String,
    /// The acquisition's id.
    pub acq: String,
    /// When it was acquired ([`mono_ns`](super::mono_ns) scale).
    pub start: u64,
    /// When the belief ended.
    pub end: u64,
    /// What ended it: `lost`, `release_sent` or `until`.
    pub end_by: &'static str,
}

/// Every acquisition's belief interval, as the checker sees it, by name and start.
pub fn intervals(records: &[Record]) -> Vec<Interval> {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.t);
    let names = group(&sorted, &mut Report::default());
    let mut out = Vec::new();
    for (name, (order, acqs)) in &names {
        let mut held: Vec<Held<'_>> = order
            .iter()
            .filter_map(|id| Held::new(id, &acqs[id]))
            .collect();
        held.sort_by_key(|h| h.start);
        out.extend(held.into_iter().map(|h| Interval {
            name: name.to_string(),
            acq: h.id.to_owned(),
            start: h.start,
            end: h.end,
            end_by: h.end_by,
        }));
    }
    out
}

/// Checks a history (any order; it is sorted by time here).
pub fn check(records: &[Record]) -> Report {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.t);
    let mut report = Report::default();
    let names = group(&sorted, &mut report);
    report.names = names.len();
    let (mut gaps, mut lost_margins) = (Vec::new(), Vec::new());
    for (name, (order, acqs)) in &names {
        let mut held: Vec<Held<'_>> = order
            .iter()
            .filter_map(|id| Held::new(id, &acqs[id]))
            .collect();
        held.sort_by_key(|h| h.start);
        report.acquisitions += held.len();
        report.lost += order.iter().filter(|id| acqs[*id].lost.is_some()).count();
        let mut violation = |kind, acqs: &[&str], mut events: Vec<Record>, message: String| {
            events.sort_by_key(|r| r.t);
            let acqs = acqs.iter().map(|s| s.to_string()).collect();
            let name = name.to_string();
            report.violations.push(Violation {
                kind,
                name,
                acqs,
                events,
                message,
            });
        };

        // 1. Belief intervals must not overlap; 4. margins to the successor.
        let mut active: Vec<&Held<'_>> = Vec::new();
        for (i, h) in held.iter().enumerate() {
            active.retain(|a| a.end > h.start);
            if h.end > h.start {
                for a in &active {
                    let events = [a.events.clone(), h.events.clone()].concat();
                    let message = format!(
                        "`{name}`: {} overlaps {} by {:.3} ms",
                        a.describe(),
                        h.describe(),
                        ms(i128::from(a.end.min(h.end)) - i128::from(h.start))
                    );
                    violation(ViolationKind::Overlap, &[a.id, h.id], events, message);
                }
                active.push(h);
            }
            // Margins between real intervals: one that ended before it began (its validity
            // had passed when it was acquired) excludes nobody.
            let next = held[i + 1..].iter().find(|n| n.end > n.start);
            if let Some(next) = next.filter(|_| h.end > h.start) {
                gaps.push(i128::from(next.start) - i128::from(h.end));
                if let Some(lost) = h.lost_at {
                    lost_margins.push(i128::from(next.start) - i128::from(lost));
                }
            }
        }

        // 2. Fencing tokens rise with `acquired` time.
        let mut top: Option<(&Held<'_>, u64)> = None;
        // (An interval that ended before it began held nothing: its `acquired` was recorded
        // late, after its validity passed, and its place in the order says nothing.)
        for h in held.iter().filter(|h| h.end > h.start) {
            let Some(fence) = h.fence else { continue };
            match top {
                Some((t, max)) if fence <= max => {
                    let message = format!(
                        "`{name}`: {} acquired at {} with fence {fence}, not above fence {max} of {} acquired at {}",
                        h.id, h.start, t.id, t.start
                    );
                    let events = vec![t.events[0].clone(), h.events[0].clone()];
                    violation(ViolationKind::FenceOrder, &[t.id, h.id], events, message);
                }
                _ => top = Some((h, fence)),
            }
        }

        // 3. Accepted writes inside their own interval, with rising tokens.
        let mut writes: Vec<(&str, &Record)> = order
            .iter()
            .flat_map(|id| acqs[id].writes.iter().map(move |w| (*id, *w)))
            .collect();
        writes.sort_by_key(|(_, w)| w.t);
        let mut top: Option<(&str, &Record, u64)> = None;
        for (id, w) in writes {
            let Event::Write {
                fence, accepted, ..
            } = w.ev
            else {
                continue;
            };
            if !accepted {
                report.stale_writes_refused += 1;
                continue;
            }
            report.accepted_writes += 1;
            let own = held.iter().find(|h| h.id == id);
            if !own.is_some_and(|h| h.start <= w.t && w.t <= h.end) {
                let during = own.map_or("never acquired".to_owned(), Held::describe);
                let message = format!(
                    "`{name}`: write with fence {fence} accepted at {} outside its holder's interval: {id} {during}",
                    w.t
                );
                let mut events = own.map_or(Vec::new(), |h| h.events.clone());
                events.push(w.clone());
                violation(ViolationKind::WriteOutsideInterval, &[id], events, message);
            }
            match top {
                Some((top_id, top_w, max)) if fence < max || (fence == max && top_id != id) => {
                    let message = format!(
                        "`{name}`: write of {id} with fence {fence} accepted at {} after write of {top_id} with fence {max} at {}",
                        w.t, top_w.t
                    );
                    let events = vec![top_w.clone(), w.clone()];
                    violation(
                        ViolationKind::WriteFenceOrder,
                        &[top_id, id],
                        events,
                        message,
                    );
                }
                Some((_, _, max)) if fence == max => {}
                _ => top = Some((id, w, fence)),
            }
        }
    }
    report.worst_gap_ms = gaps.iter().min().map(|&g| ms(g));
    lost_margins.sort_unstable();
    report.lost_margin_min_ms = lost_margins.first().map(|&m| ms(m));
    let p01 = (lost_margins.len() as f64 * 0.01).ceil() as usize;
    report.lost_margin_p01_ms = lost_margins.get(p01.saturating_sub(1)).map(|&m| ms(m));
    report
}

/// Reads the history at `path` ([`read`](super::read)) and checks it.
pub fn check_file(path: impl AsRef<Path>) -> io::Result<Report> {
    Ok(check(&read(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acquired(t: u64, acq: &str, until: u64, fence: Option<u64>) -> Record {
        let (name, acq) = ("n1".to_owned(), acq.to_owned());
        Record {
            t,
            ev: Event::Acquired {
                name,
                acq,
                until,
                fence,
            },
        }
    }

    fn lost(t: u64, acq: &str) -> Record {
        Record {
            t,
            ev: Event::Lost {
                name: "n1".into(),
                acq: acq.into(),
            },
        }
    }

    fn release(t: u64, acq: &str) -> Record {
        Record {
            t,
            ev: Event::ReleaseSent {
                name: "n1".into(),
                acq: acq.into(),
            },
        }
    }

    fn write(t: u64, acq: &str, fence: u64, accepted: bool) -> Record {
        let (name, acq) = ("n1".to_owned(), acq.to_owned());
        Record {
            t,
            ev: Event::Write {
                name,
                acq,
                fence,
                accepted,
            },
        }
    }

    fn valid(t: u64, acq: &str, until: u64) -> Record {
        Record {
            t,
            ev: Event::Valid {
                name: "n1".into(),
                acq: acq.into(),
                until,
            },
        }
    }

    #[test]
    fn renewals_seen_in_time_extend_the_belief_and_late_ones_do_not() {
        // `a` renewed at 80 (until 200) and 180 (until 300): it believes until its release at
        // 290, so `b` at 250 overlaps it.
        let renewed = [
            acquired(0, "a", 100, None),
            valid(80, "a", 200),
            valid(180, "a", 300),
            release(290, "a"),
            acquired(250, "b", 400, None),
        ];
        assert_eq!(kinds(&check(&renewed)), [ViolationKind::Overlap]);
        // A renewal seen only after the validity passed does not revive the belief.
        let late = [
            acquired(0, "a", 100, None),
            valid(120, "a", 300),
            release(290, "a"),
            acquired(250, "b", 400, None),
        ];
        assert!(check(&late).is_ok(), "{}", check(&late));
    }

    #[test]
    fn an_interval_that_ended_before_it_began_is_no_holder() {
        // `a`'s `acquired` was recorded after its validity had passed: it held nothing, so its
        // fence out of order is no violation.
        let records = [
            acquired(0, "b", 100, Some(7)),
            release(50, "b"),
            acquired(60, "a", 40, Some(5)),
        ];
        assert!(check(&records).is_ok(), "{}", check(&records));
    }

    fn kinds(report: &Report) -> Vec<ViolationKind> {
        report.violations.iter().map(|v| v.kind).collect()
    }

    #[test]
    fn sequential_holders_are_clean() {
        let records = [
            acquired(1_000_000, "a", 9_000_000, Some(1)),
            write(1_500_000, "a", 1, true),
            release(2_000_000, "a"),
            acquired(2_000_000, "b", 9_000_000, Some(2)),
            write(2_000_000, "b", 2, true),
            write(2_100_000, "b", 2, true),
            acquired(9_500_000, "c", 12_000_000, None),
            Record {
                t: 1,
                ev: Event::Fault {
                    what: "pause".into(),
                },
            },
        ];
        let report = check(&records);
        assert!(report.is_ok(), "{report}");
        assert_eq!(
            (report.acquisitions, report.names, report.faults),
            (3, 1, 1)
        );
        assert_eq!(
            (report.accepted_writes, report.stale_writes_refused),
            (3, 0)
        );
        assert_eq!(report.worst_gap_ms, Some(0.0));
        assert_eq!(report.lost_margin_min_ms, None);
        assert!(report.to_string().contains("verdict: OK"), "{report}");
    }

    #[test]
    fn overlap_names_both_acquisitions() {
        let records = [
            acquired(100, "a", 1_000, None),
            acquired(400, "b", 1_400, None),
            release(500, "a"),
            release(600, "b"),
        ];
        let report = check(&records);
        assert_eq!(kinds(&report), [ViolationKind::Overlap]);
        let v = &report.violations[0];
        assert_eq!(v.acqs, ["a", "b"]);
        assert_eq!(
            v.events,
            [
                records[0].clone(),
                records[1].clone(),
                records[2].clone(),
                records[3].clone()
            ]
        );
        assert!(
            v.message.contains("a [acquired 100, release_sent 500]"),
            "{}",
            v.message
        );
        assert!(
            v.message.contains("b [acquired 400, release_sent 600]"),
            "{}",
            v.message
        );
        assert!(report.to_string().contains("verdict: VIOLATED"), "{report}");
        assert_eq!(report.worst_gap_ms, Some(-0.0001));
    }

    #[test]
    fn lost_ends_the_interval() {
        let records = [
            acquired(100, "a", 1_000, None),
            lost(300, "a"),
            acquired(400, "b", 1_400, None),
        ];
        let report = check(&records);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.lost, 1);
        assert_eq!(report.lost_margin_min_ms, Some(0.0001));
        assert_eq!(report.lost_margin_p01_ms, Some(0.0001));
        // Without the `lost`, `a` believes it holds the lock until 1000.
        assert_eq!(
            kinds(&check(&[records[0].clone(), records[2].clone()])),
            [ViolationKind::Overlap]
        );
    }

    #[test]
    fn lost_margin_percentile() {
        let mut records = Vec::new();
        for i in 0..200u64 {
            let (id, t) = (format!("a{i}"), i * 1_000_000);
            records.push(acquired(t, &id, t + 1_500_000, None));
            // Margins 1..=200 µs, the smallest for the first acquisitions.
            records.push(lost(t + 1_000_000 - (i + 1) * 1_000, &id));
        }
        let report = check(&records);
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.lost, 200);
        // The last acquisition has no successor: margins 1..=199 µs.
        assert_eq!(report.lost_margin_min_ms, Some(0.001));
        assert_eq!(report.lost_margin_p01_ms, Some(0.002));
    }

    #[test]
    fn fences_must_rise() {
        let records = [
            acquired(100, "a", 200, Some(5)),
            acquired(300, "b", 400, Some(3)),
            acquired(500, "c", 600, Some(5)),
            acquired(700, "d", 800, Some(6)),
        ];
        let report = check(&records);
        assert_eq!(kinds(&report), [ViolationKind::FenceOrder; 2]);
        assert_eq!(report.violations[0].acqs, ["a", "b"]);
        assert_eq!(report.violations[1].acqs, ["a", "c"]);
    }

    #[test]
    fn stale_writes() {
        let records = [
            acquired(100, "a", 1_000, Some(1)),
            release(300, "a"),
            acquired(300, "b", 1_300, Some(2)),
            write(350, "a", 1, false),
            write(360, "a", 1, true),
        ];
        let report = check(&records);
        assert_eq!(kinds(&report), [ViolationKind::WriteOutsideInterval]);
        assert_eq!(report.violations[0].acqs, ["a"]);
        assert!(
            report.violations[0].message.contains("accepted at 360"),
            "{report}"
        );
        assert_eq!(
            (report.accepted_writes, report.stale_writes_refused),
            (1, 1)
        );

        // A write by an acquisition that never acquired.
        let report = check(&[write(10, "z", 1, true)]);
        assert_eq!(kinds(&report), [ViolationKind::WriteOutsideInterval]);
    }

    #[test]
    fn accepted_write_fences_must_rise() {
        let records = [
            acquired(100, "a", 200, None),
            write(150, "a", 7, true),
            acquired(300, "b", 400, None),
            write(350, "b", 6, true),
            write(360, "b", 7, true),
        ];
        let report = check(&records);
        assert_eq!(kinds(&report), [ViolationKind::WriteFenceOrder; 2]);
        assert_eq!(report.violations[0].acqs, ["a", "b"]);
        assert_eq!(
            report.violations[0].events,
            [records[1].clone(), records[3].clone()]
        );
    }
}
