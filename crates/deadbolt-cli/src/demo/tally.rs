//! What became of the likes of one run: how many committed, and why the others failed.
//!
//! A failed like is sorted into a few kinds a developer recognises, from the database's own error
//! codes (SQLSTATE, MySQL error numbers, SQLite result codes) rather than from message text, so
//! the classification does not depend on the server's language.

use std::fmt;

use serde_json::{Map, Value, json};

use super::likes::LikeError;

/// Why a like did not commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// The database found a deadlock and aborted this transaction (Postgres `40P01`, MySQL 1213).
    Deadlock,
    /// The database could not serialize this transaction with a concurrent one (Postgres `40001`,
    /// MariaDB 1020 "record has changed since last read" under `innodb_snapshot_isolation`).
    Serialization,
    /// A lock was not had in time: deadbolt's `Timeout`, a `GET_LOCK` that returned 0, Postgres
    /// `55P03`, MySQL 1205 (lock wait timeout).
    LockTimeout,
    /// SQLite's `SQLITE_BUSY` or `SQLITE_LOCKED` ("database is locked"), including the immediate
    /// `SQLITE_BUSY_SNAPSHOT` a WAL reader gets when it tries to write after another writer
    /// committed.
    Busy,
    /// Anything else (the first message of the kind is kept, to be shown).
    Other,
}

impl ErrorKind {
    /// Every kind, in the order they are shown.
    pub(crate) const ALL: [ErrorKind; 5] = [
        ErrorKind::Deadlock,
        ErrorKind::Serialization,
        ErrorKind::LockTimeout,
        ErrorKind::Busy,
        ErrorKind::Other,
    ];

    /// The key in `--json` output and in the table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            ErrorKind::Deadlock => "deadlock",
            ErrorKind::Serialization => "serialization",
            ErrorKind::LockTimeout => "lock_timeout",
            ErrorKind::Busy => "busy",
            ErrorKind::Other => "other",
        }
    }

    /// Sorts a failed like.
    pub(crate) fn of(err: &LikeError) -> ErrorKind {
        match err {
            LikeError::Db(err) => ErrorKind::of_sqlx(err),
            LikeError::Lock(err) if err.is_contention() => ErrorKind::LockTimeout,
            LikeError::NamedLockTimeout => ErrorKind::LockTimeout,
            LikeError::Lock(_) | LikeError::AlreadyLiked | LikeError::NoMovie => ErrorKind::Other,
        }
    }

    /// Sorts a database error by its code. The Any driver hands the driver's own error through,
    /// so it can be downcast to read the MySQL error number (MySQL reports a deadlock with the
    /// same SQLSTATE 40001 as a serialization failure; the number tells them apart).
    fn of_sqlx(err: &sqlx::Error) -> ErrorKind {
        let sqlx::Error::Database(db) = err else {
            return ErrorKind::Other;
        };
        if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
            return match my.number() {
                1213 => ErrorKind::Deadlock,
                1205 => ErrorKind::LockTimeout,
                1020 => ErrorKind::Serialization,
                _ => ErrorKind::Other,
            };
        }
        if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            return match pg.code() {
                "40P01" => ErrorKind::Deadlock,
                "40001" => ErrorKind::Serialization,
                "55P03" => ErrorKind::LockTimeout,
                _ => ErrorKind::Other,
            };
        }
        if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
            // The code is the extended result code; its low byte is the primary one.
            let primary = db
                .code()
                .and_then(|code| code.parse::<i32>().ok())
                .map(|code| code & 0xff);
            // SQLITE_BUSY = 5, SQLITE_LOCKED = 6.
            if matches!(primary, Some(5 | 6)) {
                return ErrorKind::Busy;
            }
        }
        ErrorKind::Other
    }
}

/// The outcome of a batch of likes, in one process or added up over several.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tally {
    /// Likes that committed (as far as the client knows).
    pub(crate) ok: u64,
    /// Failed likes per [`ErrorKind`], indexed like [`ErrorKind::ALL`].
    errors: [u64; 5],
    /// The message of the first [`ErrorKind::Other`] error, so a surprise can be read.
    pub(crate) first_other: Option<String>,
}

impl Tally {
    /// Counts one like's result.
    pub(crate) fn record(&mut self, result: &Result<(), LikeError>) {
        match result {
            Ok(()) => self.ok += 1,
            Err(err) => {
                let kind = ErrorKind::of(err);
                self.errors[kind as usize] += 1;
                if kind == ErrorKind::Other && self.first_other.is_none() {
                    self.first_other = Some(err.to_string());
                }
            }
        }
    }

    /// Adds another process's tally.
    pub(crate) fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        if self.first_other.is_none() {
            self.first_other = other.first_other;
        }
    }

    /// How many likes failed, of every kind.
    pub(crate) fn failed(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// The error counts as a JSON object, every kind present (0 when none).
    pub(crate) fn errors_json(&self) -> Value {
        let map: Map<String, Value> = ErrorKind::ALL
            .iter()
            .map(|kind| (kind.name().to_owned(), json!(self.errors[*kind as usize])))
            .collect();
        Value::Object(map)
    }

    /// The line a worker process prints when its likes are done.
    pub(crate) fn to_json(&self) -> Value {
        json!({ "ok": self.ok, "errors": self.errors_json(), "first_other": self.first_other })
    }

    /// Reads a worker's line back.
    pub(crate) fn from_json(value: &Value) -> Option<Tally> {
        let mut tally = Tally {
            ok: value.get("ok")?.as_u64()?,
            ..Tally::default()
        };
        let errors = value.get("errors")?;
        for kind in ErrorKind::ALL {
            tally.errors[kind as usize] = errors.get(kind.name())?.as_u64()?;
        }
        tally.first_other = value
            .get("first_other")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Some(tally)
    }
}

/// For the table: "none", or "312 busy, 3 deadlock".
impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failed() == 0 {
            return f.write_str("none");
        }
        let parts: Vec<String> = ErrorKind::ALL
            .iter()
            .filter(|kind| self.errors[**kind as usize] > 0)
            .map(|kind| format!("{} {}", self.errors[*kind as usize], kind.name()))
            .collect();
        f.write_str(&parts.join(", "))
    }
}
