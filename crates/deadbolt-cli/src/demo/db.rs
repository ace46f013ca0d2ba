//! The demo's database: which one, its private namespace, its pools, and the SQL it runs.
//!
//! The demo never touches the user's own tables. It works in a namespace it creates and drops:
//! a schema `deadbolt_demo_<random>` on Postgres (every pool connection sets `search_path` to
//! it), a database `deadbolt_demo_<random>` on MariaDB/MySQL (every connection `USE`s it), and a
//! file in a fresh temporary directory on SQLite. All three go through sqlx's `Any` driver, so
//! the transaction code is one function for every database; only the placeholders differ
//! (`$1` on Postgres, `?` elsewhere), and [`Sql`] writes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use std::sync::Arc;

use sqlx::any::AnyPoolOptions;
use sqlx::{
    AnyConnection, AnyPool, AssertSqlSafe, Connection as _, Executor as _, SqlSafeStr as _, SqlStr,
};
use tempfile::TempDir;

use super::flat;
use crate::exit::usage;

/// How long to wait for a database server to answer a connection attempt before giving up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a like may queue for a pool connection. The pool queue is the demo's request queue:
/// with 1000 likers on 16 connections a like waits for most of the run, so this is generous.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(120);

/// SQLite's `busy_timeout`: how long a writer waits for another writer's lock, as a real app
/// would configure it (and sqlx's default).
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which database the demo runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DbKind {
    /// A SQLite file, in WAL mode.
    Sqlite,
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL (InnoDB).
    Mysql,
}

impl DbKind {
    /// Tells the database from the URL's scheme.
    pub(crate) fn of_url(url: &str) -> anyhow::Result<DbKind> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" => Ok(DbKind::Sqlite),
            "postgres" | "postgresql" => Ok(DbKind::Postgres),
            "mysql" | "mariadb" => Ok(DbKind::Mysql),
            _ => Err(usage(format!(
                "unsupported --database-url scheme `{scheme}`: use sqlite:PATH, \
                 postgres://USER@HOST/DB or mysql://USER@HOST/DB"
            ))),
        }
    }

    /// The name in the table and in `--json`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Postgres => "postgres",
            DbKind::Mysql => "mysql",
        }
    }
}

/// The demo's namespace in a database: created by [`DemoDb::create`], dropped by
/// [`DemoDb::drop_namespace`] (call it on every path; `Drop` cannot run async code).
#[derive(Debug)]
pub(crate) struct DemoDb {
    /// Which database.
    pub(crate) kind: DbKind,
    /// The URL the pools connect with (for SQLite, the demo's own file).
    pub(crate) url: String,
    /// The schema (Postgres) or database (MySQL) name; empty for SQLite.
    pub(crate) namespace: String,
    /// What to show as the database's location, without a password.
    pub(crate) shown: String,
    /// The SQLite file the demo created, removed at the end.
    sqlite_file: Option<PathBuf>,
    /// The temporary directory holding the default SQLite file; removed when dropped.
    _tempdir: Option<TempDir>,
}

impl DemoDb {
    /// Connects to the database at `url` (or, with `None`, a SQLite file in a fresh temporary
    /// directory), creates the demo's namespace and tables in it.
    ///
    /// # Errors
    ///
    /// The server is unreachable, refuses the credentials, or the user may not create a schema
    /// or database; nothing is left behind then.
    pub(crate) async fn create(url: Option<&str>) -> anyhow::Result<DemoDb> {
        sqlx::any::install_default_drivers();
        let Some(url) = url else {
            let tempdir = tempfile::Builder::new()
                .prefix("deadbolt-demo-")
                .tempdir()
                .context("cannot create a temporary directory for the SQLite file")?;
            let file = tempdir.path().join("likes.db");
            let mut db = DemoDb::sqlite(&file, true).await?;
            db._tempdir = Some(tempdir);
            db.sqlite_file = None; // the directory goes as a whole
            return Ok(db);
        };
        let kind = DbKind::of_url(url)?;
        match kind {
            DbKind::Sqlite => {
                let path = url
                    .trim_start_matches("sqlite://")
                    .trim_start_matches("sqlite:");
                let path = Path::new(path.split('?').next().unwrap_or(path));
                if path.as_os_str().is_empty() {
                    return Err(usage("--database-url sqlite:PATH needs a PATH"));
                }
                if path.exists() {
                    return Err(usage(format!(
                        "--database-url sqlite:PATH must name a file that does not exist yet (the \
                         demo creates it and removes it at the end); `{}` exists",
                        path.display()
                    )));
                }
                DemoDb::sqlite(path, false).await
            }
            DbKind::Postgres | DbKind::Mysql => DemoDb::server(kind, url).await,
        }
    }

    /// The namespace another process created (for worker processes, which must not drop it).
    pub(crate) fn existing(kind: DbKind, url: &str, namespace: &str) -> DemoDb {
        sqlx::any::install_default_drivers();
        DemoDb {
            kind,
            url: url.to_owned(),
            namespace: namespace.to_owned(),
            shown: redact(url),
            sqlite_file: None,
            _tempdir: None,
        }
    }

    /// Creates the SQLite file, switches it to WAL (a persistent setting of the file) so readers
    /// and the writer do not block each other, as a real app would, and creates the tables.
    async fn sqlite(path: &Path, in_tempdir: bool) -> anyhow::Result<DemoDb> {
        let shown = if in_tempdir {
            "a file in a fresh temporary directory".to_owned()
        } else {
            path.display().to_string()
        };
        let create_url = format!("sqlite://{}?mode=rwc", path.display());
        let mut conn = AnyConnection::connect(&create_url)
            .await
            .map_err(|err| flat(&err))
            .with_context(|| format!("cannot create the SQLite file {}", path.display()))?;
        let db = DemoDb {
            kind: DbKind::Sqlite,
            url: format!("sqlite://{}?mode=rw", path.display()),
            namespace: String::new(),
            shown,
            sqlite_file: Some(path.to_owned()),
            _tempdir: None,
        };
        let made = async {
            conn.execute("PRAGMA journal_mode = WAL").await?;
            create_tables(&mut conn).await?;
            conn.close().await
        }
        .await;
        if let Err(err) = made {
            db.drop_namespace().await.ok();
            return Err(flat(&err)).context("cannot set up the SQLite file");
        }
        Ok(db)
    }

    /// Creates `deadbolt_demo_<random>` on a Postgres or MySQL server, and the tables in it.
    async fn server(kind: DbKind, url: &str) -> anyhow::Result<DemoDb> {
        let shown = redact(url);
        let mut admin = connect(url)
            .await
            .with_context(|| format!("cannot connect to {} at {shown}", kind.name()))?;
        let namespace = format!("deadbolt_demo_{:016x}", rand::random::<u64>());
        let create = match kind {
            DbKind::Postgres => format!("CREATE SCHEMA {namespace}"),
            _ => format!("CREATE DATABASE {namespace}"),
        };
        let what = match kind {
            DbKind::Postgres => "schema",
            _ => "database",
        };
        admin
            .execute(AssertSqlSafe(create))
            .await
            .map_err(|err| flat(&err))
            .with_context(|| format!("cannot create {what} {namespace} at {shown}"))?;
        let db = DemoDb {
            kind,
            url: url.to_owned(),
            namespace,
            shown,
            sqlite_file: None,
            _tempdir: None,
        };
        let made = async {
            admin.execute(db.enter_namespace()).await?;
            create_tables(&mut admin).await?;
            admin.close().await
        }
        .await;
        if let Err(err) = made {
            db.drop_namespace().await.ok();
            return Err(flat(&err))
                .with_context(|| format!("cannot create the demo's tables at {}", db.shown));
        }
        Ok(db)
    }

    /// The statement that makes a fresh connection work in the demo's namespace. The namespace
    /// is a name this program generated (`deadbolt_demo_` and hex digits), safe to splice in.
    fn enter_namespace(&self) -> SqlStr {
        let text = match self.kind {
            DbKind::Postgres => format!("SET search_path TO {}", self.namespace),
            DbKind::Mysql => format!("USE {}", self.namespace),
            // Not a namespace, but per-connection like one: how long to wait for the write lock.
            DbKind::Sqlite => format!("PRAGMA busy_timeout = {}", SQLITE_BUSY_TIMEOUT.as_millis()),
        };
        AssertSqlSafe(text).into_sql_str()
    }

    /// A pool of up to `size` connections, each in the demo's namespace, all opened now so that
    /// connecting is not part of the measurement.
    ///
    /// # Errors
    ///
    /// A connection could not be opened.
    pub(crate) async fn pool(&self, size: u32) -> anyhow::Result<AnyPool> {
        let enter = self.enter_namespace();
        let pool = AnyPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Queueing for a connection is the point of the demo, not a problem to warn about
            // (sqlx warns after 2 s by default, once per like).
            .acquire_slow_threshold(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _meta| {
                let enter = enter.clone();
                Box::pin(async move {
                    conn.execute(enter).await?;
                    Ok(())
                })
            })
            .connect_lazy(&self.url)
            .with_context(|| format!("cannot open a pool to {}", self.shown))?;
        let mut warm = Vec::with_capacity(size as usize);
        for _ in 0..size {
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, pool.acquire())
                .await
                .map_err(|_| anyhow::anyhow!("timed out"))
                .and_then(|conn| conn.map_err(|err| flat(&err)))
                .with_context(|| format!("cannot open {size} connections to {}", self.shown))?;
            warm.push(conn);
        }
        drop(warm);
        Ok(pool)
    }

    /// How many connections the server allows, and how many are in use: `None` for SQLite, a
    /// file with no connection limit.
    ///
    /// # Errors
    ///
    /// The server could not be reached or asked.
    pub(crate) async fn connection_budget(&self) -> anyhow::Result<Option<Budget>> {
        let queries = match self.kind {
            DbKind::Sqlite => return Ok(None),
            // Connections reserved for superusers are not ours to take; background workers
            // do not count against the limit.
            DbKind::Postgres => [
                "SELECT CAST(current_setting('max_connections') AS BIGINT) \
                 - CAST(current_setting('superuser_reserved_connections') AS BIGINT)",
                "SELECT COUNT(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
            ],
            DbKind::Mysql => [
                "SELECT CAST(@@max_connections AS SIGNED)",
                "SELECT CAST(VARIABLE_VALUE AS SIGNED) FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = 'THREADS_CONNECTED'",
            ],
        };
        let mut admin = connect(&self.url).await?;
        let mut values = [0i64; 2];
        for (value, query) in values.iter_mut().zip(queries) {
            *value = sqlx::query_scalar::<_, i64>(query)
                .fetch_one(&mut admin)
                .await
                .map_err(|err| flat(&err))
                .with_context(|| format!("cannot read the connection limit at {}", self.shown))?;
        }
        admin.close().await.ok();
        Ok(Some(Budget {
            max: values[0],
            // Less the connection that asked.
            in_use: (values[1] - 1).max(0),
        }))
    }

    /// Drops the namespace: the schema or database with everything in it, or the SQLite file
    /// (the temporary directory goes when `self` is dropped).
    ///
    /// # Errors
    ///
    /// The server could not be reached, or refused.
    pub(crate) async fn drop_namespace(&self) -> anyhow::Result<()> {
        if let Some(file) = &self.sqlite_file {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = file.as_os_str().to_owned();
                name.push(suffix);
                match std::fs::remove_file(&name) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                        return Err(err)
                            .with_context(|| format!("cannot remove {}", file.display()));
                    }
                    _ => {}
                }
            }
        }
        let drop = match self.kind {
            DbKind::Sqlite => return Ok(()),
            DbKind::Postgres => format!("DROP SCHEMA IF EXISTS {} CASCADE", self.namespace),
            DbKind::Mysql => format!("DROP DATABASE IF EXISTS {}", self.namespace),
        };
        let mut admin = connect(&self.url).await?;
        admin
            .execute(AssertSqlSafe(drop))
            .await
            .map_err(|err| flat(&err))
            .with_context(|| format!("cannot drop {} at {}", self.namespace, self.shown))?;
        admin.close().await.ok();
        Ok(())
    }
}

/// A database server's connection limit, from [`DemoDb::connection_budget`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Connections an ordinary user may open (`max_connections`, less Postgres's superuser
    /// reserve).
    pub(crate) max: i64,
    /// Connections open now, from other clients.
    pub(crate) in_use: i64,
}

/// One connection, failing after [`CONNECT_TIMEOUT`] rather than hanging on a black hole.
async fn connect(url: &str) -> anyhow::Result<AnyConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, AnyConnection::connect(url)).await {
        Ok(conn) => conn.map_err(|err| flat(&err)),
        Err(_) => bail!("no answer within {CONNECT_TIMEOUT:?}"),
    }
}

/// The story's tables, in SQL every one of the three databases takes: a movie with its
/// denormalized `like_counts`, the likes (one per user and movie), the users' per-genre scores.
async fn create_tables(conn: &mut AnyConnection) -> sqlx::Result<()> {
    for ddl in [
        "CREATE TABLE movies (id BIGINT PRIMARY KEY, title VARCHAR(200) NOT NULL, \
         genre VARCHAR(50) NOT NULL, like_counts BIGINT NOT NULL)",
        "CREATE TABLE movie_likes (movie_id BIGINT NOT NULL, user_id BIGINT NOT NULL, \
         PRIMARY KEY (movie_id, user_id))",
        "CREATE TABLE genre_scores (user_id BIGINT NOT NULL, genre VARCHAR(50) NOT NULL, \
         score BIGINT NOT NULL, PRIMARY KEY (user_id, genre))",
    ] {
        conn.execute(ddl).await?;
    }
    Ok(())
}

/// The URL with its password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The statements of the story, with the database's placeholders.
#[derive(Debug)]
pub(crate) struct Sql {
    /// Has this user liked this movie already? (movie, user)
    pub(crate) check_liked: SqlStr,
    /// The movie's genre and current count. (movie)
    pub(crate) read_movie: SqlStr,
    /// Records the like. (movie, user)
    pub(crate) insert_like: SqlStr,
    /// The user's score for a genre. (user, genre)
    pub(crate) read_score: SqlStr,
    /// A first score for a genre. (user, genre, score)
    pub(crate) insert_score: SqlStr,
    /// A new score for a genre. (score, user, genre)
    pub(crate) update_score: SqlStr,
    /// Writes the count the application computed. (count, movie)
    pub(crate) write_count: SqlStr,
    /// Locks the movie's row until the transaction ends. (movie)
    pub(crate) lock_movie_row: SqlStr,
    /// Postgres: a transaction-scoped advisory lock, released at commit or rollback. (key)
    pub(crate) advisory_lock: SqlStr,
    /// MySQL: a session-scoped named lock, waiting up to 30 s. (name)
    pub(crate) get_lock: SqlStr,
    /// MySQL: gives the named lock back. (name)
    pub(crate) release_lock: SqlStr,
    /// Empties the tables for the next mode.
    pub(crate) reset: [SqlStr; 3],
    /// The movie, with no likes. (movie)
    pub(crate) insert_movie: SqlStr,
    /// The final count. (movie)
    pub(crate) final_count: SqlStr,
    /// The likes recorded. (movie)
    pub(crate) count_likes: SqlStr,
}

impl Sql {
    /// The statements for `kind`.
    pub(crate) fn new(kind: DbKind) -> Sql {
        let q = |text: &'static str| placeholders(kind, text);
        Sql {
            check_liked: q("SELECT 1 FROM movie_likes WHERE movie_id = ? AND user_id = ?"),
            read_movie: q("SELECT genre, like_counts FROM movies WHERE id = ?"),
            insert_like: q("INSERT INTO movie_likes (movie_id, user_id) VALUES (?, ?)"),
            read_score: q("SELECT score FROM genre_scores WHERE user_id = ? AND genre = ?"),
            insert_score: q("INSERT INTO genre_scores (user_id, genre, score) VALUES (?, ?, ?)"),
            update_score: q("UPDATE genre_scores SET score = ? WHERE user_id = ? AND genre = ?"),
            write_count: q("UPDATE movies SET like_counts = ? WHERE id = ?"),
            lock_movie_row: q("SELECT id FROM movies WHERE id = ? FOR UPDATE"),
            // In FROM, so the result is a plain integer column: the Any driver cannot decode
            // the function's `void`.
            advisory_lock: q("SELECT 1 FROM pg_advisory_xact_lock(?)"),
            get_lock: q("SELECT GET_LOCK(?, 30)"),
            release_lock: q("SELECT RELEASE_LOCK(?)"),
            reset: [
                "DELETE FROM movie_likes".into_sql_str(),
                "DELETE FROM genre_scores".into_sql_str(),
                "DELETE FROM movies".into_sql_str(),
            ],
            insert_movie: q(
                "INSERT INTO movies (id, title, genre, like_counts) VALUES (?, 'The Lock', 'thriller', 0)",
            ),
            final_count: q("SELECT like_counts FROM movies WHERE id = ?"),
            count_likes: q("SELECT COUNT(*) FROM movie_likes WHERE movie_id = ?"),
        }
    }
}

/// `?` → `$1`, `$2`, … for Postgres; the statements contain no `?` in strings. The text is this
/// module's constants (only the placeholders change), so it is safe; an `Arc` makes the clone
/// each query takes cheap.
fn placeholders(kind: DbKind, text: &'static str) -> SqlStr {
    if kind != DbKind::Postgres {
        return text.into_sql_str();
    }
    let mut out = String::with_capacity(text.len() + 8);
    let mut n = 0;
    for c in text.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    AssertSqlSafe(Arc::<str>::from(out)).into_sql_str()
}

/// Puts the movie back to zero likes, with no likes and no scores.
///
/// # Errors
///
/// A statement failed.
pub(crate) async fn reset(pool: &AnyPool, sql: &Sql, movie_id: i64) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for statement in &sql.reset {
        tx.execute(statement.clone()).await?;
    }
    sqlx::query(sql.insert_movie.clone())
        .bind(movie_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The movie's final `like_counts` and the number of rows in `movie_likes` for it.
///
/// # Errors
///
/// A statement failed.
pub(crate) async fn final_counts(
    pool: &AnyPool,
    sql: &Sql,
    movie_id: i64,
) -> anyhow::Result<(i64, i64)> {
    let count: i64 = sqlx::query_scalar(sql.final_count.clone())
        .bind(movie_id)
        .fetch_one(pool)
        .await?;
    let rows: i64 = sqlx::query_scalar(sql.count_likes.clone())
        .bind(movie_id)
        .fetch_one(pool)
        .await?;
    Ok((count, rows))
}
