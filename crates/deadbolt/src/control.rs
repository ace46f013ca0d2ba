//! Switches that bring known bugs back, for the history checker's negative control: under the
//! same fault schedule, the checker must report violations with a switch on and none with it
//! off, or it proves nothing. Compiled as a public module only with the `negative-control`
//! feature, which only deadbolt's own tests enable; otherwise every switch reads `false` and
//! the compiler removes the code it guards.

#[cfg(feature = "negative-control")]
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "negative-control")]
static VALIDITY_FROM_RETRY: AtomicBool = AtomicBool::new(false);

/// Brings back the bug of counting a lock's validity from the try that found its own token,
/// instead of from the earliest try whose reply was lost (the key expires a lease after that
/// one).
#[cfg(feature = "negative-control")]
pub fn set_validity_from_retry(on: bool) {
    VALIDITY_FROM_RETRY.store(on, Ordering::Relaxed);
}

/// Whether [`set_validity_from_retry`] is on.
pub(crate) fn validity_from_retry() -> bool {
    #[cfg(feature = "negative-control")]
    return VALIDITY_FROM_RETRY.load(Ordering::Relaxed);
    #[cfg(not(feature = "negative-control"))]
    false
}
