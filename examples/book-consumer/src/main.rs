//! A message consumer that processes one message per book at a time, across processes.
//!
//! Several worker processes pop messages from one Redis list (standing in for a Kafka topic).
//! Each message names a book; two messages for the same book must never be processed at once
//! (say, both update the book's stock), while messages for different books run in parallel.
//! `#[deadbolt::locked(key = "book:{book}")]` says exactly that.
//!
//! Run it with (a Redis at `$REDIS`, e.g. `redis://127.0.0.1:6379`):
//!
//! ```sh
//! redis-cli -u $REDIS rpush books 1:1 1:2 2:1 2:2 3:1
//! cargo run -p book-consumer -- $REDIS books worker-a &
//! cargo run -p book-consumer -- $REDIS books worker-b
//! ```
//!
//! Each worker pops `BOOK:SEQ` messages until the queue has been empty for half a second, and
//! prints what it did. While it processes a message it keeps two counters in Redis, and appends
//! `BOOK:SEQ:WORKER:INSIDE:ACTIVE` to the list `seen`, for the test to check: `INSIDE` counts the
//! workers in that book's critical section (must always be 1), `ACTIVE` those in any (above 1
//! when books run in parallel).

use std::time::Duration;

use anyhow::{Context, bail};
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

/// One worker: a lock client and a connection to the queue.
struct Worker {
    locks: deadbolt::Client,
    redis: ConnectionManager,
    name: String,
}

/// Why processing a message failed.
#[derive(Debug)]
enum ProcessError {
    /// The lock was not acquired in time, or was lost mid-way.
    Lock(deadbolt::Error),
    /// Redis failed.
    Redis(redis::RedisError),
    /// Two workers were inside one book's critical section: exclusion was broken.
    Overlap { book: u64 },
}

impl std::fmt::Display for ProcessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessError::Lock(e) => write!(f, "lock: {e}"),
            ProcessError::Redis(e) => write!(f, "redis: {e}"),
            ProcessError::Overlap { book } => {
                write!(f, "two workers processed book {book} at once")
            }
        }
    }
}

impl From<deadbolt::Error> for ProcessError {
    fn from(e: deadbolt::Error) -> Self {
        ProcessError::Lock(e)
    }
}

impl From<redis::RedisError> for ProcessError {
    fn from(e: redis::RedisError) -> Self {
        ProcessError::Redis(e)
    }
}

impl Worker {
    /// Processes message `seq` of `book`: one book at a time, across all workers.
    #[deadbolt::locked(key = "book:{book}", client = self.locks, wait = "30s", lease = "5s")]
    async fn process(&self, book: u64, seq: u64) -> Result<(), ProcessError> {
        let mut redis = self.redis.clone();
        let inside: u64 = redis.incr(format!("active:{book}"), 1).await?;
        let active: u64 = redis.incr("active", 1).await?;
        let _: () = redis
            .rpush(
                "seen",
                format!("{book}:{seq}:{}:{inside}:{active}", self.name),
            )
            .await?;
        // The work: long enough that, without the lock, two workers would overlap.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _: i64 = redis.decr("active", 1).await?;
        let _: i64 = redis.decr(format!("active:{book}"), 1).await?;
        if inside != 1 {
            return Err(ProcessError::Overlap { book });
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, queue, name] = args.as_slice() else {
        bail!("usage: book-consumer REDIS_URL QUEUE WORKER_NAME");
    };
    let locks = deadbolt::Client::connect(url).await?;
    let redis = redis::Client::open(url.as_str())?
        .get_connection_manager()
        .await
        .context("cannot connect to redis")?;
    let worker = Worker {
        locks,
        redis: redis.clone(),
        name: name.clone(),
    };

    // Several messages in flight per worker, so one busy book does not stall the others.
    let mut tasks = tokio::task::JoinSet::new();
    let mut idle_since = tokio::time::Instant::now();
    let mut done = 0u64;
    let mut queue_conn = redis;
    let worker = std::sync::Arc::new(worker);
    loop {
        while tasks.len() >= 4 {
            done += finished(tasks.join_next().await)?;
        }
        let message: Option<String> = queue_conn.lpop(queue, None).await?;
        let Some(message) = message else {
            if idle_since.elapsed() > Duration::from_millis(500) && tasks.is_empty() {
                break;
            }
            if let Some(r) = tasks.join_next().await {
                done += finished(Some(r))?;
            } else {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            continue;
        };
        idle_since = tokio::time::Instant::now();
        let (book, seq) = message
            .split_once(':')
            .and_then(|(b, s)| Some((b.parse().ok()?, s.parse().ok()?)))
            .with_context(|| format!("bad message {message:?}"))?;
        let worker = worker.clone();
        tasks.spawn(async move { worker.process(book, seq).await });
    }
    println!("{name}: processed {done} messages");
    Ok(())
}

/// Counts a finished task, turning its error into the process's.
fn finished(
    joined: Option<Result<Result<(), ProcessError>, tokio::task::JoinError>>,
) -> anyhow::Result<u64> {
    match joined {
        None => Ok(0),
        Some(Ok(Ok(()))) => Ok(1),
        Some(Ok(Err(e))) => bail!("processing failed: {e}"),
        Some(Err(e)) => bail!("worker task failed: {e}"),
    }
}
