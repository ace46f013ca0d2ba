//! The `#[locked]` attribute of [deadbolt](https://docs.rs/deadbolt): run an `async fn` under a
//! distributed lock on Redis.
//!
//! Use it through `deadbolt` (its `macros` feature, on by default), as `#[deadbolt::locked]`.
//! This crate holds only the code generation; the argument reference is on [`macro@locked`].
//!
//! ```no_run
//! # #[derive(Debug)] enum LikeError { Lock(deadbolt::Error) }
//! # impl From<deadbolt::Error> for LikeError { fn from(e: deadbolt::Error) -> Self { LikeError::Lock(e) } }
//! struct Likes {
//!     locks: deadbolt::Client,
//! }
//!
//! impl Likes {
//!     /// One like at a time per movie, across every process that shares the Redis server.
//!     #[deadbolt::locked(key = "movie-likes:{movie_id}", client = self.locks, wait = "10s", lease = "3s")]
//!     async fn like(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
//!         // begin; read the count; write it back; commit: all while the lock is held
//!         Ok(())
//!     }
//! }
//! ```
//!
//! # When the lock is lost
//!
//! If the lock is lost while the body runs (a fixed lease ran out, or the watchdog could not
//! renew it), the body is cancelled at its next `.await` (a transaction it holds rolls back),
//! and the function returns `deadbolt::Error::LockLost` converted into its error type with
//! `From`. The lock is released after the body completes, so work committed inside the body
//! commits while the lock is held.

mod args;
mod entry;
mod template;

use proc_macro::TokenStream;

/// Runs an `async fn` under a distributed lock: takes the lock named by `key` before the body
/// runs, releases it after the body completes.
///
/// ```no_run
/// # #[derive(Debug)] enum LikeError { Lock(deadbolt::Error), Db }
/// # impl From<deadbolt::Error> for LikeError { fn from(e: deadbolt::Error) -> Self { LikeError::Lock(e) } }
/// # struct Db;
/// # impl Db { async fn add_like(&self, _movie: i64, _user: i64, _fence: u64) -> Result<(), LikeError> { Ok(()) } }
/// struct Likes {
///     locks: deadbolt::Client,
///     db: Db,
/// }
///
/// impl Likes {
///     #[deadbolt::locked(key = "movie-likes:{movie_id}", client = self.locks, lease = "3s", guard = lock)]
///     async fn like(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
///         // The fencing token lets the database refuse a write from a holder that lost the lock.
///         self.db.add_like(movie_id, user_id, lock.fencing_token().await?).await?;
///         Ok(())
///     }
/// }
/// ```
///
/// # Arguments
///
/// All are `name = value`, separated by commas, in any order.
///
/// | argument | value | |
/// | --- | --- | --- |
/// | `key` | string literal | **Required.** The lock name, a template: each `{…}` holds a parameter of the function (or `self`), optionally followed by fields, method calls or indexing: `"order:{order.id}"`, `"user:{user.name()}"`, `"{self.tenant}:report"`. The value is formatted with `Display`; `{{` and `}}` are literal braces. |
/// | `client` | expression | **Required.** The `deadbolt::Client`: `self.locks`, a parameter `locks` of type `Client`, `&Client` or `Arc<Client>`, a static's field. It is cloned (cheap) before the body runs. |
/// | `wait` | duration string | How long to wait for the lock before the function returns `Error::Timeout`. The default is `deadbolt::DEFAULT_WAIT` (10 s); at most 24h. |
/// | `lease` | duration string | A fixed lease: the lock expires that long after it was taken, and is lost if the body runs longer. From 10ms to 24h. |
/// | `watchdog` | duration string | A lease of that length that the client's watchdog renews every third of it while the body runs. From 10ms to 24h. Without `lease` or `watchdog`, the watchdog keeps a `deadbolt::DEFAULT_WATCHDOG_LEASE` (30 s) lease. |
/// | `options` | expression | A `deadbolt::LockOptions` value, such as a `const` preset, instead of `wait`, `lease` and `watchdog`. |
/// | `guard` | identifier | Binds the lock's `deadbolt::LockScope` under that name inside the body, for its fencing token. |
///
/// Durations are [humantime](https://docs.rs/humantime) strings (`"10s"`, `"1500ms"`, `"2m"`),
/// checked at compile time: a malformed or out-of-range value is a compile error.
///
/// # The function
///
/// It must be an `async fn` (free, inherent or trait method, with any receiver) returning
/// `Result<T, E>` where `E: From<deadbolt::Error>`; without that `From` impl, rustc reports
/// an unsatisfied trait bound at the return type. The key is evaluated first, before the body
/// runs or moves anything.
///
/// # Errors
///
/// The body's own errors, unchanged; and, converted with `From`:
/// - `deadbolt::Error::Timeout` (or any other acquire error) when the lock was not acquired:
///   the body never ran;
/// - `deadbolt::Error::LockLost` when the lock was lost while the body ran: the body was
///   cancelled at its next `.await`.
///
/// A failed release after the body succeeded does not turn its success into an error; it is
/// logged, and the lease expires.
///
/// # Expansion
///
/// The body becomes the body of a `Client::with_lock` call; `return` and `?` inside it keep
/// their meaning:
///
/// ```ignore
/// async fn like(&self, movie_id: i64, user_id: i64) -> Result<(), LikeError> {
///     let key = ::std::format!("movie-likes:{}", movie_id);
///     let client = ::core::clone::Clone::clone(&(self.locks));
///     let options = ::deadbolt::LockOptions::new(::deadbolt::DEFAULT_WAIT, ::deadbolt::Lease::Fixed(..));
///     client.with_lock(key, options, move |lock: ::deadbolt::LockScope| async move {
///         /* the original body */
///     }).await
/// }
/// ```
///
/// The tests of `deadbolt` (`tests/macros.rs`) run these functions against a real Redis.
#[proc_macro_attribute]
pub fn locked(args: TokenStream, item: TokenStream) -> TokenStream {
    entry::locked(args.into(), item.into()).into()
}
