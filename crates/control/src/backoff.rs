//! Restart backoff: capped exponential, reset after a stable run.
//!
//! The first restart waits [`FIRST_DELAY`] (100 ms), each further one twice as long
//! ([`FACTOR`]), never more than [`MAX_DELAY`] (30 s). An instance that stayed up for
//! [`STABLE_AFTER`] (30 s) counts as healthy again: its next crash restarts after
//! 100 ms. Compared with the peers: Supervisor's backoff is linear and uncapped, systemd
//! restarts every 100 ms until a start limit gives up, PM2 grows ×1.5 from 100 ms to a
//! 15 s cap and resets after 30 s. We double (fewer wasted restarts of a broken app),
//! cap at 30 s (a fixed app is back within half a minute) and never give up: a service
//! that crash-loops shows as `backoff` with its restart count and last exit reason.
//! No jitter: instances of one machine do not stampede a shared resource the way a fleet
//! does, and deterministic delays keep the behaviour testable.

use std::time::Duration;

pub const FIRST_DELAY: Duration = Duration::from_millis(100);
pub const FACTOR: u32 = 2;
pub const MAX_DELAY: Duration = Duration::from_secs(30);
pub const STABLE_AFTER: Duration = Duration::from_secs(30);

/// The delay before restart number `attempt` (0-based: the first restart is attempt 0).
pub fn delay(attempt: u32) -> Duration {
    let factor = FACTOR.checked_pow(attempt).unwrap_or(u32::MAX);
    FIRST_DELAY.saturating_mul(factor).min(MAX_DELAY)
}

/// A crash: given the attempt number saved for the next crash and how long the instance
/// ran, returns the delay before restarting and the attempt number to save.
pub fn on_crash(attempt: u32, ran_for: Duration) -> (Duration, u32) {
    let attempt = if ran_for >= STABLE_AFTER { 0 } else { attempt };
    (delay(attempt), attempt.saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_100ms_and_caps_at_30s() {
        let got: Vec<u64> = (0..12).map(|a| delay(a).as_millis() as u64).collect();
        assert_eq!(
            got,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
            ]
        );
        assert_eq!(delay(u32::MAX), MAX_DELAY);
    }

    #[test]
    fn a_stable_run_resets_the_attempts() {
        let quick = Duration::from_secs(1);
        assert_eq!(on_crash(0, quick), (FIRST_DELAY, 1));
        assert_eq!(on_crash(3, quick), (Duration::from_millis(800), 4));
        assert_eq!(on_crash(5, STABLE_AFTER), (FIRST_DELAY, 1));
        assert_eq!(on_crash(u32::MAX, quick), (MAX_DELAY, u32::MAX));
    }
}
