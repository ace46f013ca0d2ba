//! [`FaultSchedule`]: a seeded, bounded sequence of faults for one or more [`FaultProxy`]s,
//! so that a randomized test that fails can be replayed from its seed.
//!
//! The numbers come from SplitMix64, written out here: a few lines, the same on every
//! platform and in every release, which a crate's generator does not promise.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::FaultProxy;

/// Most steps a schedule has, whatever its durations.
const MAX_STEPS: usize = 10_000;
/// Shortest gap before a step and shortest fault: schedules advance by at least this.
const MIN_STEP: Duration = Duration::from_millis(1);

/// One fault a [`FaultProxy`] can be put in; [`FaultProxy::apply`] does it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// [`FaultProxy::delay`]: every chunk, both ways, this much late.
    Delay(Duration),
    /// [`FaultProxy::hold_replies`]: every reply chunk this much late.
    HoldReplies(Duration),
    /// [`FaultProxy::drop_replies`]: commands run, replies are swallowed.
    DropReplies,
    /// [`FaultProxy::reset_after_request`]: a connection's next request runs, then an RST.
    ResetAfterRequest,
    /// [`FaultProxy::reset`]: every open connection gets an RST, now.
    Reset,
    /// [`FaultProxy::blackhole`]: bytes are swallowed both ways.
    Blackhole,
}

/// One step of a [`FaultSchedule`]: `fault` from `at` (since the run started) for `lasts`,
/// then a heal. A [`Fault::Reset`] lasts zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FaultStep {
    /// When the fault starts, counted from the start of [`FaultSchedule::run`].
    pub at: Duration,
    /// The fault.
    pub fault: Fault,
    /// How long it lasts before the proxy is healed.
    pub lasts: Duration,
    /// Picks the proxy; see [`FaultStep::proxy`].
    target: u64,
}

impl FaultStep {
    /// The index, among `proxies` proxies, of the one this step faults.
    ///
    /// # Panics
    ///
    /// When `proxies` is 0.
    pub fn proxy(&self, proxies: usize) -> usize {
        assert!(proxies > 0, "a fault step needs a proxy");
        // usize fits in u64, and the remainder is below `proxies`.
        (self.target % proxies as u64) as usize
    }
}

impl fmt::Display for FaultStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at {:?} for {:?}: {:?}, target {}",
            self.at, self.lasts, self.fault, self.target
        )
    }
}

/// A seeded schedule of faults: same seed and parameters, same steps. Steps follow one
/// another (a fault ends, with a heal, before the next starts), each after a gap of about
/// `mean_gap`, each fault lasting up to `max_fault`, and all of them ending by `total`.
///
/// Its [`Display`](fmt::Display) shows the seed, the parameters and every step: print it
/// when a test fails, and the same schedule replays from `FaultSchedule::new` with them.
///
/// ```no_run
/// use std::sync::atomic::AtomicBool;
/// use std::time::Duration;
/// use deadbolt_testkit::{FaultProxy, FaultSchedule, RedisServer};
///
/// let server = RedisServer::start()?;
/// let proxy = FaultProxy::start(&server)?;
/// let ms = Duration::from_millis;
/// let schedule = FaultSchedule::new(42, ms(3000), ms(200), ms(300));
/// eprintln!("{schedule}"); // shown when the test fails
/// let stop = AtomicBool::new(false);
/// std::thread::scope(|s| {
///     s.spawn(|| schedule.run(&[&proxy], &stop));
///     // … drive the client under test through proxy.url() …
/// });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FaultSchedule {
    seed: u64,
    total: Duration,
    mean_gap: Duration,
    max_fault: Duration,
    steps: Vec<FaultStep>,
}

impl FaultSchedule {
    /// Draws the steps from `seed`: gaps between steps uniform in ½ to 1½ `mean_gap`, each
    /// fault of the six kinds equally likely, lasting 1 ms to `max_fault` (a reset, zero),
    /// delays of 1 ms to `max_fault`; the last step ends by `total`. Durations are whole
    /// milliseconds, gaps and faults at least 1 ms, and there are at most 10 000 steps.
    pub fn new(
        seed: u64,
        total: Duration,
        mean_gap: Duration,
        max_fault: Duration,
    ) -> FaultSchedule {
        let mut rng = SplitMix64(seed);
        let mut steps = Vec::new();
        let mut now = Duration::ZERO;
        while steps.len() < MAX_STEPS {
            let gap = rng.millis(mean_gap / 2, mean_gap * 3 / 2);
            let fault = match rng.below(6) {
                0 => Fault::Delay(rng.millis(MIN_STEP, max_fault)),
                1 => Fault::HoldReplies(rng.millis(MIN_STEP, max_fault)),
                2 => Fault::DropReplies,
                3 => Fault::ResetAfterRequest,
                4 => Fault::Reset,
                _ => Fault::Blackhole,
            };
            let lasts = match fault {
                Fault::Reset => Duration::ZERO,
                _ => rng.millis(MIN_STEP, max_fault),
            };
            let target = rng.next_u64();
            let at = now + gap;
            if at + lasts > total {
                break;
            }
            steps.push(FaultStep {
                at,
                fault,
                lasts,
                target,
            });
            now = at + lasts;
        }
        FaultSchedule {
            seed,
            total,
            mean_gap,
            max_fault,
            steps,
        }
    }

    /// The seed the steps were drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The steps, in order of `at`.
    pub fn steps(&self) -> &[FaultStep] {
        &self.steps
    }

    /// Puts `proxy` in `fault`; the same as [`FaultProxy::apply`].
    pub fn apply(&self, proxy: &FaultProxy, fault: &Fault) {
        proxy.apply(fault);
    }

    /// Plays the schedule on the calling thread: sleeps until each step's `at`, applies its
    /// fault to `proxies[step.proxy(proxies.len())]`, sleeps `lasts`, and heals that proxy
    /// ([`FaultProxy::heal`], which also ends faults a test set itself). Returns after the
    /// last step, by `total` plus the few milliseconds heals take, or when `stop` is set,
    /// healing the proxy it was faulting; at once when `proxies` is empty.
    ///
    /// `stop` is read whenever the runner wakes: to stop it without waiting for the current
    /// sleep to end, set `stop` and then unpark the thread running it
    /// ([`Thread::unpark`](thread::Thread::unpark)).
    pub fn run(&self, proxies: &[&FaultProxy], stop: &AtomicBool) {
        if proxies.is_empty() {
            return;
        }
        let started = Instant::now();
        for step in &self.steps {
            if !sleep_until(started + step.at, stop) {
                return;
            }
            let proxy = proxies[step.proxy(proxies.len())];
            proxy.apply(&step.fault);
            let carry_on = sleep_until(started + step.at + step.lasts, stop);
            proxy.heal();
            if !carry_on {
                return;
            }
        }
    }
}

impl fmt::Display for FaultSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fault schedule seed {seed} ({seed:#x}): FaultSchedule::new({seed:#x}, {:?}, {:?}, {:?}), \
             {} steps, each on proxies[target % proxies.len()]",
            self.total,
            self.mean_gap,
            self.max_fault,
            self.steps.len(),
            seed = self.seed,
        )?;
        for step in &self.steps {
            writeln!(f, "  {step}")?;
        }
        Ok(())
    }
}

/// Sleeps until `deadline`; `false`, early, once `stop` is set. Wakes only at the deadline or
/// when unparked.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    while !stop.load(Ordering::SeqCst) {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return true;
        };
        if left.is_zero() {
            return true;
        }
        thread::park_timeout(left);
    }
    false
}

/// SplitMix64 (Steele, Lea and Flood, 2014): one `u64` of state, good enough for test plans
/// and workloads that must replay from a seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next number of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`, `n > 0` (Lemire's multiply-shift; its bias is below 2⁻³² here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `0.0..1.0`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whole milliseconds uniform from `lo` to `hi`, both included, and at least 1 ms.
    fn millis(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo = u64::try_from(lo.as_millis()).unwrap_or(u64::MAX).max(1);
        let hi = u64::try_from(hi.as_millis()).unwrap_or(u64::MAX).max(lo);
        Duration::from_millis(lo + self.below((hi - lo).saturating_add(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference() {
        // The first outputs for seed 1234567, from the reference C implementation.
        let mut rng = SplitMix64(1_234_567);
        assert_eq!(
            [rng.next_u64(), rng.next_u64(), rng.next_u64()],
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423
            ]
        );
    }

    #[test]
    fn steps_follow_one_another_within_total() {
        let ms = Duration::from_millis;
        let schedule = FaultSchedule::new(7, ms(10_000), ms(100), ms(300));
        assert!(schedule.steps().len() > 10, "{schedule}");
        let mut end = Duration::ZERO;
        for step in schedule.steps() {
            assert!(step.at > end, "{schedule}");
            assert!(step.lasts <= ms(300), "{schedule}");
            end = step.at + step.lasts;
        }
        assert!(end <= ms(10_000), "{schedule}");
        // Zero durations still advance, and the step count stays bounded.
        let tiny = FaultSchedule::new(7, ms(50), Duration::ZERO, Duration::ZERO);
        assert!(tiny.steps().len() <= 50, "{tiny}");
    }
}
