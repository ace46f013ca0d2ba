//! The demo's output: a progress bar while a mode runs, then one table row (or one JSON line)
//! per mode.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::Mode;
use super::db::DbKind;
use super::tally::Tally;

/// The outcome of one mode.
#[derive(Debug)]
pub(crate) struct Row {
    /// The mode.
    pub(crate) mode: Mode,
    /// The database.
    pub(crate) database: DbKind,
    /// Likes sent: one per user.
    pub(crate) expected: u64,
    /// The movie's `like_counts` at the end.
    pub(crate) like_counts: i64,
    /// Rows in `movie_likes` for the movie at the end: the likes that committed.
    pub(crate) likes_rows: i64,
    /// The likes' outcomes, added up over every process.
    pub(crate) tally: Tally,
    /// From the start signal to the last like's end.
    pub(crate) wall: Duration,
}

impl Row {
    /// Committed likes per second of wall time.
    fn likes_per_s(&self) -> f64 {
        self.likes_rows as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Whether every like was counted, once: the result the lock exists for.
    pub(crate) fn exact(&self) -> bool {
        self.like_counts == self.expected as i64 && self.likes_rows == self.expected as i64
    }

    /// The `--json` line.
    pub(crate) fn json(&self) -> serde_json::Value {
        json!({
            "mode": self.mode.name(),
            "database": self.database.name(),
            "expected": self.expected,
            "like_counts": self.like_counts,
            "likes_rows": self.likes_rows,
            "errors": self.tally.errors_json(),
            "first_other_error": self.tally.first_other,
            "wall_s": (self.wall.as_secs_f64() * 1000.0).round() / 1000.0,
            "likes_per_s": self.likes_per_s().round(),
        })
    }
}

/// The table's header line.
pub(crate) fn table_header() -> String {
    format!(
        "{:<17}  {:<8}  {:>8}  {:>11}  {:>10}  {:>8}  {:>8}  errors",
        "mode", "database", "expected", "like_counts", "likes_rows", "wall", "likes/s"
    )
}

/// A table line.
pub(crate) fn table_row(row: &Row) -> String {
    format!(
        "{:<17}  {:<8}  {:>8}  {:>11}  {:>10}  {:>7.2}s  {:>8.0}  {}",
        row.mode.name(),
        row.database.name(),
        row.expected,
        row.like_counts,
        row.likes_rows,
        row.wall.as_secs_f64(),
        row.likes_per_s(),
        row.tally
    )
}

/// How to read the table, printed under it.
pub(crate) const LEGEND: &str = "\
like_counts: the movie's denormalized counter at the end; likes_rows: rows in movie_likes (likes
that committed). like_counts < likes_rows: lost updates (two transactions read the same count);
likes_rows < expected: likes that failed, by the errors column.";

/// A progress bar for one mode on stderr, or a hidden one when stderr is not a terminal or the
/// output is JSON (a bar would garble a log or a pipe).
pub(crate) fn progress_bar(mode: Mode, len: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>18} [{bar:40}] {pos}/{len} {elapsed_precise}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(mode.name());
    bar
}
