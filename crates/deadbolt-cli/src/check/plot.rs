//! `deadbolt check --plot FILE.svg`: the holders' timeline, one row per lock name. Each belief
//! interval is a bar (colour by acquisition, so neighbours differ), a red tick marks where
//! `lost()` fired, a grey line where a fault was injected; an overlap would show as two bars
//! on one row at once. Plain SVG, written by hand: no plotting dependency for a few rectangles.

use std::fmt::Write as _;
use std::path::Path;

use deadbolt_testkit::history::{Event, Record, intervals};

/// Width of the time axis, and height of a row, in pixels.
const WIDTH: f64 = 1200.0;
const ROW: f64 = 18.0;
/// Left margin for the names.
const LEFT: f64 = 110.0;
/// Most rows drawn; a run over more names shows the first ones.
const MAX_ROWS: usize = 64;

/// Writes the timeline of `records` to `path`.
pub(super) fn write(records: &[Record], path: &Path) -> std::io::Result<()> {
    std::fs::write(path, svg(records))
}

fn svg(records: &[Record]) -> String {
    let spans = intervals(records);
    let (t0, t1) = records
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), r| (lo.min(r.t), hi.max(r.t)));
    let span = (t1.saturating_sub(t0)).max(1) as f64;
    let x = |t: u64| LEFT + (t.saturating_sub(t0)) as f64 / span * WIDTH;
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.truncate(MAX_ROWS);
    let row = |name: &str| names.iter().position(|n| *n == name);
    let height = 40.0 + ROW * names.len() as f64;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{height}" font-family="monospace" font-size="11">"#,
        LEFT + WIDTH + 20.0
    );
    let _ = writeln!(
        out,
        r#"<text x="4" y="14">deadbolt check: belief intervals per lock, {:.2} s; red: lost() fired; grey: fault</text>"#,
        span / 1e9
    );
    for (i, name) in names.iter().enumerate() {
        let y = 24.0 + ROW * i as f64;
        let _ = writeln!(
            out,
            r#"<text x="4" y="{}">{}</text>"#,
            y + 12.0,
            escape(name)
        );
    }
    for (i, s) in spans.iter().enumerate() {
        let Some(r) = row(&s.name) else { continue };
        let y = 24.0 + ROW * r as f64;
        let hue = (i * 47) % 360;
        let (a, b) = (x(s.start), x(s.end));
        let _ = writeln!(
            out,
            r#"<rect x="{a:.2}" y="{:.1}" width="{:.2}" height="{:.1}" fill="hsl({hue},60%,55%)"><title>{} {}</title></rect>"#,
            y + 2.0,
            (b - a).max(0.5),
            ROW - 4.0,
            escape(&s.acq),
            s.end_by
        );
        if s.end_by == "lost" {
            let _ = writeln!(
                out,
                r#"<line x1="{b:.2}" x2="{b:.2}" y1="{y:.1}" y2="{:.1}" stroke="red" stroke-width="2"/>"#,
                y + ROW
            );
        }
    }
    for r in records {
        if let Event::Fault { what } = &r.ev {
            let fx = x(r.t);
            let _ = writeln!(
                out,
                r#"<line x1="{fx:.2}" x2="{fx:.2}" y1="20" y2="{height}" stroke="grey" stroke-dasharray="2,3"><title>{}</title></line>"#,
                escape(what)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_bar_per_interval_and_a_tick_per_loss() {
        let rec = |t, ev| Record { t, ev };
        let (name, a, b) = ("n".to_owned(), "1-1".to_owned(), "1-2".to_owned());
        let records = vec![
            rec(
                0,
                Event::Acquired {
                    name: name.clone(),
                    acq: a.clone(),
                    until: 100,
                    fence: None,
                },
            ),
            rec(
                50,
                Event::Lost {
                    name: name.clone(),
                    acq: a,
                },
            ),
            rec(
                60,
                Event::Fault {
                    what: "Reset".into(),
                },
            ),
            rec(
                100,
                Event::Acquired {
                    name: name.clone(),
                    acq: b.clone(),
                    until: 300,
                    fence: None,
                },
            ),
            rec(200, Event::ReleaseSent { name, acq: b }),
        ];
        let svg = svg(&records);
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert_eq!(svg.matches(r#"stroke="red""#).count(), 1, "{svg}");
        assert_eq!(svg.matches(r#"stroke="grey""#).count(), 1, "{svg}");
    }
}
