//! The resource side of fencing: refuse writes from a holder whose lock has since passed on.
//!
//! A lock alone cannot stop a holder that paused (GC, swap, SIGSTOP) past its lease from writing
//! after the next holder has started. Fencing can: every acquisition gets a token larger than
//! all earlier ones ([`LockScope::fencing_token`](crate::LockScope::fencing_token)), the writer
//! sends it with each write, and the resource accepts a write only if the token is not older
//! than the newest it has seen.
//!
//! For a value in Redis (ideally another Redis than the lock's), use [`set_if_newer`]. In SQL,
//! keep the last token beside the row and make it part of the write:
//!
//! ```sql
//! UPDATE movies
//!    SET like_counts = $1, fence = $2
//!  WHERE id = $3 AND fence <= $2;   -- 0 rows updated: a newer holder has written, abort
//! ```
//!
//! (`<=` lets one holder write several times with its token; use `<` if each token may write
//! once.)

use redis::aio::ConnectionLike;

use crate::error::{Error, Result};
use crate::scripts::FENCED_SET;

/// Writes `value` to the hash at `key` (fields `value` and `fence`) if `token` is not older than
/// the token of the last accepted write. Returns whether it was written.
///
/// # Errors
///
/// [`Error::WrongType`] when `key` holds something else than such a hash; [`Error::Redis`] when
/// the command fails.
///
/// # Cancel safety
///
/// Cancel safe: the write either happened or not; calling again with the same token is fine.
///
/// # Examples
///
/// ```no_run
/// # async fn demo(locks: deadbolt::Client) -> deadbolt::Result<()> {
/// let guard = locks.lock("stock:17").fenced().acquire().await?;
/// let mut store = locks.connection();
/// let token = guard.fencing_token().await?;
/// if !deadbolt::fence::set_if_newer(&mut store, "stock:17:count", token, b"41").await? {
///     // A newer holder has written: this one lost the lock while it worked.
/// }
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub async fn set_if_newer<C: ConnectionLike>(
    conn: &mut C,
    key: &str,
    token: u64,
    value: &[u8],
) -> Result<bool> {
    let mut call = FENCED_SET.call(1);
    call.arg(key).arg(token).arg(value);
    let written: i64 = FENCED_SET
        .run(&call, conn, None)
        .await
        .map_err(|e| Error::from_redis(e, key))?;
    Ok(written == 1)
}

/// Reads the value written by [`set_if_newer`] and the token that wrote it.
///
/// # Errors
///
/// As [`set_if_newer`].
///
/// # Cancel safety
///
/// Cancel safe.
pub async fn get<C: ConnectionLike>(conn: &mut C, key: &str) -> Result<Option<(Vec<u8>, u64)>> {
    let (value, fence): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
        .arg(key)
        .arg("value")
        .arg("fence")
        .query_async(conn)
        .await
        .map_err(|e| Error::from_redis(e, key))?;
    Ok(value.zip(fence))
}
