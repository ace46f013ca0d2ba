//! Lock histories: every client records what it believed about a lock, and
//! [`check()`] looks for two holders at once (Jepsen-style, in plain Rust).
//!
//! Each event is stamped with `CLOCK_MONOTONIC`, which every process on one
//! machine shares, so histories written by tokio tasks and by separate OS
//! processes can be merged by time. Events are JSON lines, one per `write`
//! to a file opened with `O_APPEND`: the kernel appends each whole line at
//! the end, so lines from several writers never interleave and nothing sits
//! in a buffer when a process is killed.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nix::time::{ClockId, clock_gettime};
use serde_json::{Value, json};

mod check;

pub use check::{Interval, Report, Violation, ViolationKind, check, check_file, intervals};

/// `CLOCK_MONOTONIC` now, in nanoseconds: the time scale of every event.
pub fn mono_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC is always readable");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// Converts `t` to the [`mono_ns`] scale.
///
/// `Instant` is `CLOCK_MONOTONIC` on Linux but opaque, so the conversion goes
/// through one pair of readings taken once per process; instants before that
/// base are handled (saturating at 0).
pub fn instant_ns(t: Instant) -> u64 {
    static BASE: OnceLock<(Instant, u64)> = OnceLock::new();
    let &(base, base_ns) = BASE.get_or_init(|| {
        // Read the clock on both sides of `Instant::now` and take the middle.
        let before = mono_ns();
        let now = Instant::now();
        let after = mono_ns();
        (now, before + (after - before) / 2)
    });
    match t.checked_duration_since(base) {
        Some(later) => base_ns + later.as_nanos() as u64,
        None => base_ns.saturating_sub((base - t).as_nanos() as u64),
    }
}

/// One thing a client did or saw, as recorded in a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An acquisition was started.
    Attempt {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
    },
    /// The lock was acquired.
    Acquired {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
        /// End of the validity the holder was given ([`mono_ns`] scale).
        until: u64,
        /// The fencing token, if the lock hands them out.
        fence: Option<u64>,
    },
    /// The holder saw its validity end move to `until` (a renewal or an `extend`): from
    /// here its belief lasts until then, unless lost or released first.
    Valid {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
        /// The new end of validity ([`mono_ns`] scale).
        until: u64,
    },
    /// The holder learnt that it lost the lock.
    Lost {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
    },
    /// The release was sent; the holder stops acting as owner from here.
    ReleaseSent {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
    },
    /// The release returned.
    ReleaseReturned {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
        /// What it returned, as free text.
        outcome: String,
    },
    /// The acquisition failed.
    GaveUp {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
        /// Why, as free text.
        error: String,
    },
    /// A fenced write to the protected resource.
    Write {
        /// The lock's name.
        name: String,
        /// The acquisition's id ([`Acq::id`]).
        acq: String,
        /// The fencing token sent with the write.
        fence: u64,
        /// Whether the resource accepted it.
        accepted: bool,
    },
    /// A fault was injected (for plots; the checker only counts them).
    Fault {
        /// What the fault was, as free text.
        what: String,
    },
}

impl Event {
    /// The `ev` field of the JSON line.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Attempt { .. } => "attempt",
            Self::Acquired { .. } => "acquired",
            Self::Valid { .. } => "valid",
            Self::Lost { .. } => "lost",
            Self::ReleaseSent { .. } => "release_sent",
            Self::ReleaseReturned { .. } => "release_returned",
            Self::GaveUp { .. } => "gave_up",
            Self::Write { .. } => "write",
            Self::Fault { .. } => "fault",
        }
    }

    /// The lock name and acquisition id, for every event but a fault.
    pub fn name_acq(&self) -> Option<(&str, &str)> {
        match self {
            Self::Attempt { name, acq }
            | Self::Acquired { name, acq, .. }
            | Self::Valid { name, acq, .. }
            | Self::Lost { name, acq }
            | Self::ReleaseSent { name, acq }
            | Self::ReleaseReturned { name, acq, .. }
            | Self::GaveUp { name, acq, .. }
            | Self::Write { name, acq, .. } => Some((name, acq)),
            Self::Fault { .. } => None,
        }
    }
}

/// An event and its time ([`mono_ns`] scale): one line of a history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When it happened, in `CLOCK_MONOTONIC` nanoseconds.
    pub t: u64,
    /// What happened.
    pub ev: Event,
}

impl Record {
    /// The record as one JSON line, without its newline: `t` and `ev` first,
    /// so that the lines read well (`serde_json` would sort the keys).
    pub fn to_line(&self) -> String {
        let mut fields = vec![("t", json!(self.t)), ("ev", json!(self.ev.kind()))];
        if let Some((name, acq)) = self.ev.name_acq() {
            fields.extend([("name", json!(name)), ("acq", json!(acq))]);
        }
        match &self.ev {
            Event::Acquired { until, fence, .. } => {
                fields.push(("until", json!(until)));
                fields.extend(fence.map(|fence| ("fence", json!(fence))));
            }
            Event::Valid { until, .. } => fields.push(("until", json!(until))),
            Event::ReleaseReturned { outcome, .. } => fields.push(("outcome", json!(outcome))),
            Event::GaveUp { error, .. } => fields.push(("error", json!(error))),
            Event::Write {
                fence, accepted, ..
            } => {
                fields.extend([("fence", json!(fence)), ("accepted", json!(accepted))]);
            }
            Event::Fault { what } => fields.push(("what", json!(what))),
            _ => {}
        }
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    }

    /// Parses one line written by [`Record::to_line`].
    pub fn parse(line: &str) -> Result<Record, String> {
        let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
        let u64_field = |key: &str| {
            v.get(key)
                .and_then(Value::as_u64)
                .ok_or(format!("no integer `{key}`"))
        };
        let str_field = |key: &str| {
            v.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(format!("no string `{key}`"))
        };
        let t = u64_field("t")?;
        let kind = str_field("ev")?;
        let ev = if kind == "fault" {
            Event::Fault {
                what: str_field("what")?,
            }
        } else {
            let (name, acq) = (str_field("name")?, str_field("acq")?);
            match kind.as_str() {
                "attempt" => Event::Attempt { name, acq },
                "acquired" => {
                    let fence = match v.get("fence") {
                        None | Some(Value::Null) => None,
                        Some(_) => Some(u64_field("fence")?),
                    };
                    Event::Acquired {
                        name,
                        acq,
                        until: u64_field("until")?,
                        fence,
                    }
                }
                "valid" => Event::Valid {
                    name,
                    acq,
                    until: u64_field("until")?,
                },
                "lost" => Event::Lost { name, acq },
                "release_sent" => Event::ReleaseSent { name, acq },
                "release_returned" => Event::ReleaseReturned {
                    name,
                    acq,
                    outcome: str_field("outcome")?,
                },
                "gave_up" => Event::GaveUp {
                    name,
                    acq,
                    error: str_field("error")?,
                },
                "write" => Event::Write {
                    name,
                    acq,
                    fence: u64_field("fence")?,
                    accepted: v
                        .get("accepted")
                        .and_then(Value::as_bool)
                        .ok_or("no bool `accepted`")?,
                },
                other => return Err(format!("unknown event `{other}`")),
            }
        };
        Ok(Record { t, ev })
    }
}

/// Reads a history, sorted by time (events with equal times keep file order).
///
/// A line that does not parse is an [`io::ErrorKind::InvalidData`] error
/// naming its line number: a damaged history is no evidence.
pub fn read(path: impl AsRef<Path>) -> io::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)?;
    let mut records = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            Record::parse(line).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1))
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    records.sort_by_key(|r| r.t);
    Ok(records)
}

/// One acquisition attempt of a lock, from [`History::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acq {
    name: String,
    id: String,
}

impl Acq {
    /// `"{pid}-{counter}"`: unique across the processes writing one history.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A history file that records events as they happen.
///
/// Share it with an `Arc`; every method takes `&self`. Each event is written
/// with one `write` call and no buffering (see the [module docs](self)).
///
/// # Panics
///
/// The recording methods panic if the write fails: a history missing an
/// event would be false evidence, so a failure must not pass silently.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    file: File,
}

impl History {
    /// Creates (or truncates) the history at `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<History> {
        // `O_APPEND` cannot be combined with `O_TRUNC` by `OpenOptions`.
        File::create(path.as_ref())?;
        Self::append(path)
    }

    /// Opens the history at `path` for appending, creating it if needed; for
    /// child processes writing to their parent's history.
    pub fn append(path: impl AsRef<Path>) -> io::Result<History> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(History { path, file })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `record` as one line, in one `write` call.
    pub fn write_record(&self, record: &Record) -> io::Result<()> {
        let mut line = record.to_line().into_bytes();
        line.push(b'\n');
        loop {
            match (&self.file).write(&line) {
                Ok(n) if n == line.len() => return Ok(()),
                Ok(n) => {
                    return Err(io::Error::other(format!(
                        "short write: {n} of {} bytes",
                        line.len()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Records `ev` at the current time and returns the record written.
    pub fn record(&self, ev: Event) -> Record {
        let record = Record { t: mono_ns(), ev };
        if let Err(e) = self.write_record(&record) {
            panic!("cannot append to the history {}: {e}", self.path.display());
        }
        record
    }

    /// Starts an acquisition of the lock `name`: records an `attempt`.
    pub fn begin(&self, name: &str) -> Acq {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let acq = Acq {
            name: name.to_owned(),
            id: format!("{}-{n}", std::process::id()),
        };
        self.record(Event::Attempt {
            name: acq.name.clone(),
            acq: acq.id.clone(),
        });
        acq
    }

    /// The lock was acquired, valid until `valid_until`, with its fencing token.
    pub fn acquired(&self, acq: &Acq, valid_until: Instant, fence: Option<u64>) {
        let (name, acq) = (acq.name.clone(), acq.id.clone());
        self.record(Event::Acquired {
            name,
            acq,
            until: instant_ns(valid_until),
            fence,
        });
    }

    /// The holder saw its validity end move to `valid_until` (renewed or extended).
    pub fn valid(&self, acq: &Acq, valid_until: Instant) {
        self.record(Event::Valid {
            name: acq.name.clone(),
            acq: acq.id.clone(),
            until: instant_ns(valid_until),
        });
    }

    /// The holder learnt it lost the lock.
    pub fn lost(&self, acq: &Acq) {
        self.record(Event::Lost {
            name: acq.name.clone(),
            acq: acq.id.clone(),
        });
    }

    /// The holder learnt it lost the lock at `at` (recorded later, with that time: a lock
    /// library that knows when it fired its lost signal gives the exact end of the belief,
    /// which a task woken by the signal would record a scheduling delay late).
    pub fn lost_at(&self, acq: &Acq, at: Instant) {
        let record = Record {
            t: instant_ns(at),
            ev: Event::Lost {
                name: acq.name.clone(),
                acq: acq.id.clone(),
            },
        };
        self.write_record(&record)
            .unwrap_or_else(|e| panic!("cannot record to {}: {e}", self.path.display()));
    }

    /// The release is being sent: from here the holder no longer acts as owner.
    pub fn release_sent(&self, acq: &Acq) {
        self.record(Event::ReleaseSent {
            name: acq.name.clone(),
            acq: acq.id.clone(),
        });
    }

    /// The release returned `outcome` (free text, e.g. `"released"`).
    pub fn release_returned(&self, acq: &Acq, outcome: &str) {
        let (name, acq) = (acq.name.clone(), acq.id.clone());
        self.record(Event::ReleaseReturned {
            name,
            acq,
            outcome: outcome.to_owned(),
        });
    }

    /// The acquisition failed with `error`.
    pub fn gave_up(&self, acq: &Acq, error: &str) {
        let (name, acq) = (acq.name.clone(), acq.id.clone());
        self.record(Event::GaveUp {
            name,
            acq,
            error: error.to_owned(),
        });
    }

    /// A fenced write to the protected resource, sent at `sent`, and whether it was
    /// accepted. It is recorded at its send time: the resource took it at that time or
    /// later, and the holder decided to send it then.
    pub fn write(&self, acq: &Acq, sent: Instant, fence: u64, accepted: bool) {
        let (name, acq) = (acq.name.clone(), acq.id.clone());
        let record = Record {
            t: instant_ns(sent),
            ev: Event::Write {
                name,
                acq,
                fence,
                accepted,
            },
        };
        self.write_record(&record)
            .unwrap_or_else(|e| panic!("cannot record to {}: {e}", self.path.display()));
    }

    /// A fault was injected (`what` describes it).
    pub fn fault(&self, what: &str) {
        self.record(Event::Fault {
            what: what.to_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn every_event() -> Vec<Event> {
        let (name, acq) = ("n1".to_owned(), "42-7".to_owned());
        vec![
            Event::Attempt {
                name: name.clone(),
                acq: acq.clone(),
            },
            Event::Acquired {
                name: name.clone(),
                acq: acq.clone(),
                until: 456,
                fence: Some(99),
            },
            Event::Acquired {
                name: name.clone(),
                acq: acq.clone(),
                until: 456,
                fence: None,
            },
            Event::Lost {
                name: name.clone(),
                acq: acq.clone(),
            },
            Event::ReleaseSent {
                name: name.clone(),
                acq: acq.clone(),
            },
            Event::ReleaseReturned {
                name: name.clone(),
                acq: acq.clone(),
                outcome: "ok".into(),
            },
            Event::GaveUp {
                name: name.clone(),
                acq: acq.clone(),
                error: "timed \"out\"\n".into(),
            },
            Event::Write {
                name,
                acq,
                fence: 3,
                accepted: false,
            },
            Event::Fault {
                what: "pause node 1".into(),
            },
        ]
    }

    #[test]
    fn lines_round_trip() {
        for ev in every_event() {
            let record = Record { t: 123, ev };
            let line = record.to_line();
            assert!(!line.contains('\n'), "{line}");
            assert_eq!(Record::parse(&line), Ok(record), "{line}");
        }
        let line = r#"{"t":123,"ev":"acquired","name":"n1","acq":"4242-7","until":456,"fence":99}"#;
        assert_eq!(Record::parse(line).unwrap().to_line(), line);
        let Record {
            t: 123,
            ev: Event::Acquired {
                fence: Some(99), ..
            },
        } = Record::parse(line).unwrap()
        else {
            panic!("{line}")
        };
    }

    #[test]
    fn bad_lines_are_refused() {
        assert!(
            Record::parse("{\"t\":1,\"ev\":\"lost\",\"name\":\"n\"}")
                .unwrap_err()
                .contains("acq")
        );
        assert!(
            Record::parse("{\"t\":1,\"ev\":\"nap\",\"name\":\"n\",\"acq\":\"1-1\"}")
                .unwrap_err()
                .contains("nap")
        );
        assert!(Record::parse("{\"t\":-1,\"ev\":\"fault\",\"what\":\"x\"}").is_err());
        assert!(Record::parse("{\"t\":1,").is_err());
    }

    #[test]
    fn history_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let history = History::create(dir.path().join("h.jsonl")).unwrap();
        let written: Vec<Record> = every_event()
            .into_iter()
            .map(|ev| history.record(ev))
            .collect();
        assert_eq!(read(history.path()).unwrap(), written);

        // The helpers record what they say, under the ids `begin` handed out.
        let acq = history.begin("n2");
        assert_eq!(
            acq.id(),
            format!(
                "{}-{}",
                std::process::id(),
                acq.id().split('-').nth(1).unwrap()
            )
        );
        assert_ne!(history.begin("n2").id(), acq.id());
        let until = Instant::now() + Duration::from_secs(1);
        history.acquired(&acq, until, Some(5));
        history.write(&acq, Instant::now(), 5, true);
        history.lost(&acq);
        history.release_sent(&acq);
        history.release_returned(&acq, "not owner");
        history.gave_up(&acq, "timeout");
        history.fault("kill");
        let kinds: Vec<_> = read(history.path()).unwrap()[written.len()..]
            .iter()
            .map(|r| r.ev.kind())
            .collect();
        let expected = [
            "attempt",
            "attempt",
            "acquired",
            "write",
            "lost",
            "release_sent",
            "release_returned",
            "gave_up",
            "fault",
        ];
        assert_eq!(kinds, expected);

        // `create` truncates; `append` keeps.
        History::append(history.path()).unwrap().fault("more");
        assert_eq!(
            read(history.path()).unwrap().len(),
            written.len() + expected.len() + 1
        );
        History::create(history.path()).unwrap();
        assert_eq!(read(history.path()).unwrap(), []);
    }

    #[test]
    fn concurrent_lines_never_interleave() {
        fn shared<T: Send + Sync>(_: &T) {}
        let dir = tempfile::tempdir().unwrap();
        let history = Arc::new(History::create(dir.path().join("h.jsonl")).unwrap());
        shared(&history);
        let (threads, events) = (4, 500);
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let history = Arc::clone(&history);
                // Long lines, so that a torn write would show.
                let what = format!("thread {i} {}", "x".repeat(300));
                std::thread::spawn(move || (0..events).for_each(|_| history.fault(&what)))
            })
            .collect();
        handles.into_iter().for_each(|h| h.join().unwrap());
        let records = read(history.path()).unwrap();
        assert_eq!(records.len(), threads * events);
        assert!(records.windows(2).all(|w| w[0].t <= w[1].t));
    }

    #[test]
    fn instants_convert_to_the_monotonic_clock() {
        for _ in 0..100 {
            let (mono, inst) = (mono_ns(), instant_ns(Instant::now()));
            assert!(mono.abs_diff(inst) < 1_000_000, "{mono} vs {inst}");
        }
        let earlier = Instant::now() - Duration::from_millis(10);
        let diff = mono_ns() - instant_ns(earlier);
        assert!((10_000_000..11_000_000).contains(&diff), "{diff}");
        let later = Instant::now() + Duration::from_secs(3);
        assert!(instant_ns(later).abs_diff(mono_ns() + 3_000_000_000) < 1_000_000);
    }
}
