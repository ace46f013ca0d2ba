//! One like, as an ORM-style service writes it, and the ways of wrapping it in a lock.
//!
//! [`like_in_tx`] is the whole transaction and is the same in every mode. The modes differ only
//! in what they put around it: nothing, a deadbolt lock taken inside the transaction and given
//! back before the commit, a deadbolt lock around the whole transaction, or the database's own
//! lock (a row lock, an advisory lock, a named lock).

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use deadbolt::{Lease, LockOptions};
use sqlx::{Acquire as _, AnyConnection, AnyPool};
use tokio::sync::Barrier;

use super::Mode;
use super::db::Sql;
use super::tally::Tally;
use sqlx::SqlStr;

/// How long a like waits for the lock (deadbolt's, and MySQL's `GET_LOCK`): long enough for a
/// thousand likes to go through one at a time.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The deadbolt lease: a fixed bound on one transaction. If a transaction ran longer, the lock
/// would be lost and `with_lock` would drop (roll back) the transaction.
pub(crate) const LOCK_LEASE: Duration = Duration::from_secs(5);

/// Why a like did not commit.
#[derive(Debug)]
pub(crate) enum LikeError {
    /// The database refused a statement or the commit.
    Db(sqlx::Error),
    /// deadbolt did not give the lock (timeout), or lost it.
    Lock(deadbolt::Error),
    /// MySQL's `GET_LOCK` returned 0: not had within [`LOCK_WAIT`].
    NamedLockTimeout,
    /// The user had liked the movie already: the check in the transaction worked.
    AlreadyLiked,
    /// The movie row is missing.
    NoMovie,
}

impl std::fmt::Display for LikeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LikeError::Db(err) => write!(f, "{err}"),
            LikeError::Lock(err) => write!(f, "{err}"),
            LikeError::NamedLockTimeout => write!(f, "GET_LOCK timed out after {LOCK_WAIT:?}"),
            LikeError::AlreadyLiked => f.write_str("the user has liked this movie already"),
            LikeError::NoMovie => f.write_str("the movie does not exist"),
        }
    }
}

impl std::error::Error for LikeError {}

impl From<sqlx::Error> for LikeError {
    fn from(err: sqlx::Error) -> Self {
        LikeError::Db(err)
    }
}

/// What `#[deadbolt::locked]` needs: a lock error converts into the function's error.
impl From<deadbolt::Error> for LikeError {
    fn from(err: deadbolt::Error) -> Self {
        LikeError::Lock(err)
    }
}

/// The like service of one process: a database pool and a deadbolt client.
#[derive(Debug)]
pub(crate) struct Likes {
    /// The database, in the demo's namespace.
    pub(crate) db: AnyPool,
    /// The lock client; one per process, as a service would have.
    pub(crate) locks: deadbolt::Client,
    /// The statements.
    pub(crate) sql: Sql,
    /// A pause inside every transaction, in every mode alike, between reading the movie and
    /// writing its count (`--think`); zero by default.
    pub(crate) think: Duration,
}

/// The one transaction of the story, the same in every mode: check the user has not liked the
/// movie, read the movie, record the like, update the user's score for the movie's genre (read,
/// then write), and write `like_counts + 1` as computed here, the way an ORM saves an object.
///
/// # Errors
///
/// A statement failed, or the user had liked the movie already.
pub(crate) async fn like_in_tx(
    tx: &mut AnyConnection,
    sql: &Sql,
    think: Duration,
    movie_id: i64,
    user_id: i64,
) -> Result<(), LikeError> {
    let liked: Option<i32> = sqlx::query_scalar(sql.check_liked.clone())
        .bind(movie_id)
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?;
    if liked.is_some() {
        return Err(LikeError::AlreadyLiked);
    }
    let (genre, like_counts): (String, i64) = sqlx::query_as(sql.read_movie.clone())
        .bind(movie_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(LikeError::NoMovie)?;
    if !think.is_zero() {
        tokio::time::sleep(think).await;
    }
    sqlx::query(sql.insert_like.clone())
        .bind(movie_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
    let score: Option<i64> = sqlx::query_scalar(sql.read_score.clone())
        .bind(user_id)
        .bind(&genre)
        .fetch_optional(&mut *tx)
        .await?;
    match score {
        None => {
            sqlx::query(sql.insert_score.clone())
                .bind(user_id)
                .bind(&genre)
                .bind(1_i64)
                .execute(&mut *tx)
                .await?
        }
        Some(score) => {
            sqlx::query(sql.update_score.clone())
                .bind(score + 1)
                .bind(user_id)
                .bind(&genre)
                .execute(&mut *tx)
                .await?
        }
    };
    sqlx::query(sql.write_count.clone())
        .bind(like_counts + 1)
        .bind(movie_id)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The deadbolt lock name of a movie's likes.
fn lock_name(movie_id: i64) -> String {
    format!("movie-likes:{movie_id}")
}

impl Likes {
    /// One like in `mode`.
    ///
    /// # Errors
    ///
    /// The like did not commit; see [`LikeError`].
    pub(crate) async fn like_in(
        &self,
        mode: Mode,
        movie_id: i64,
        user_id: i64,
    ) -> Result<(), LikeError> {
        match mode {
            Mode::NoLock => self.like_without_lock(movie_id, user_id).await,
            Mode::LockInsideTx => self.like_lock_inside_tx(movie_id, user_id).await,
            Mode::LockAroundTx => self.like(movie_id, user_id).await,
            Mode::SelectForUpdate => {
                self.like_with_db_lock(&self.sql.lock_movie_row, movie_id, user_id)
                    .await
            }
            Mode::PgAdvisoryLock => {
                self.like_with_db_lock(&self.sql.advisory_lock, movie_id, user_id)
                    .await
            }
            Mode::MysqlNamedLock => self.like_mysql_named_lock(movie_id, user_id).await,
        }
    }

    /// `no-lock`: begin → work → commit, and hope.
    async fn like_without_lock(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
        let mut tx = self.db.begin().await?;
        like_in_tx(&mut tx, &self.sql, self.think, movie_id, user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `lock-inside-tx`, the common mistake: begin → lock → work → unlock → commit. Between the
    /// unlock and the commit the next holder reads the count this transaction has not committed
    /// yet, so it reads the old value.
    async fn like_lock_inside_tx(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
        let mut tx = self.db.begin().await?;
        let guard = self
            .locks
            .lock(lock_name(movie_id))
            .options(LockOptions::new(LOCK_WAIT, Lease::Fixed(LOCK_LEASE)))
            .acquire()
            .await?;
        let work = like_in_tx(&mut tx, &self.sql, self.think, movie_id, user_id).await;
        guard.release().await?;
        work?;
        tx.commit().await?;
        Ok(())
    }

    /// `lock-around-tx`, the right order: lock → begin → work → commit → unlock. The attribute
    /// takes the lock before the body runs and gives it back after the body (and so the commit)
    /// completed.
    #[deadbolt::locked(key = "movie-likes:{movie_id}", client = self.locks, wait = "30s", lease = "5s")]
    async fn like(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
        let mut tx = self.db.begin().await?;
        like_in_tx(&mut tx, &self.sql, self.think, movie_id, user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `select-for-update` (Postgres, MariaDB: the movie's row lock) and `pg-advisory-lock`
    /// (Postgres: `pg_advisory_xact_lock(movie_id)`): the database's lock, taken first in the
    /// transaction with `lock_sql` and held until the commit.
    async fn like_with_db_lock(
        &self,
        lock_sql: &SqlStr,
        movie_id: i64,
        user_id: i64,
    ) -> Result<(), LikeError> {
        let mut tx = self.db.begin().await?;
        sqlx::query(lock_sql.clone())
            .bind(movie_id)
            .execute(&mut *tx)
            .await?;
        like_in_tx(&mut tx, &self.sql, self.think, movie_id, user_id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// `mysql-named-lock` (MariaDB): `GET_LOCK` before begin and `RELEASE_LOCK` after commit, on
    /// the same connection (the lock belongs to the session).
    async fn like_mysql_named_lock(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
        let name = lock_name(movie_id);
        let mut conn = self.db.acquire().await?;
        let got: Option<i64> = sqlx::query_scalar(self.sql.get_lock.clone())
            .bind(&name)
            .fetch_one(&mut *conn)
            .await?;
        if got != Some(1) {
            return Err(LikeError::NamedLockTimeout);
        }
        let work = async {
            let mut tx = conn.begin().await?;
            like_in_tx(&mut tx, &self.sql, self.think, movie_id, user_id).await?;
            tx.commit().await?;
            Ok::<_, LikeError>(())
        }
        .await;
        let released = sqlx::query(self.sql.release_lock.clone())
            .bind(&name)
            .execute(&mut *conn)
            .await;
        if released.is_err() {
            // The lock lives as long as the session: never hand a connection that may still hold
            // it back to the pool.
            conn.close_on_drop();
        }
        work?;
        released?;
        Ok(())
    }

    /// Runs the likes of `users` in `mode`, each in its own task, all started together: every
    /// task waits at the barrier, and the caller's own `start.wait()` lets them all go at once.
    /// `on_done` is called after each like (for progress).
    pub(crate) async fn run(
        self: Arc<Self>,
        mode: Mode,
        movie_id: i64,
        users: RangeInclusive<i64>,
        start: Arc<Barrier>,
        on_done: impl Fn() + Send + Sync + 'static,
    ) -> Tally {
        let on_done = Arc::new(on_done);
        let mut tasks = tokio::task::JoinSet::new();
        for user_id in users {
            let likes = self.clone();
            let start = start.clone();
            let on_done = on_done.clone();
            tasks.spawn(async move {
                start.wait().await;
                let result = likes.like_in(mode, movie_id, user_id).await;
                on_done();
                result
            });
        }
        let mut tally = Tally::default();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(result) => tally.record(&result),
                // A like that panicked is a bug in this demo, not a database outcome.
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            }
        }
        tally
    }
}
