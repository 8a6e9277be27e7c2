//! The emulator's wall clock: where the `timestamp` of status updates and
//! other wall-clock values come from.
//!
//! Durations and deadlines in the emulator use `tokio::time::Instant`, which
//! follows paused tokio time by itself. Wall-clock timestamps cannot: a
//! simulation on paused time would see `SystemTime::now()` move with the
//! real clock and differ from run to run. So the wall clock is handed in
//! through [`super::EmulatorConfig::clock`]: the system clock by default,
//! or one derived from tokio time ([`Clock::from_tokio`]) in a simulation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A source of wall-clock time (cheap to clone; shared by the emulator and
/// the executors it launches in-process).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock (`SystemTime::now`), what a real agent uses.
    pub fn system() -> Self {
        Clock(Arc::new(SystemTime::now))
    }

    /// Any function of the caller's, e.g. a simulation's own clock.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        Clock(Arc::new(now))
    }

    /// Wall time that moves with tokio time: `epoch` at the tokio instant
    /// `start`, plus however much tokio time has passed since. On paused
    /// time this is deterministic (take `start = tokio::time::Instant::now()`
    /// inside the simulation's runtime, and a fixed `epoch`).
    pub fn from_tokio(epoch: SystemTime, start: tokio::time::Instant) -> Self {
        Clock::from_fn(move || {
            let elapsed = tokio::time::Instant::now().saturating_duration_since(start);
            epoch + elapsed
        })
    }

    /// The current wall time.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }

    /// The current wall time in seconds since the Unix epoch (the form of
    /// `TaskStatus.timestamp`); 0 for times before the epoch.
    pub fn now_secs(&self) -> f64 {
        self.now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let clock = Clock::from_tokio(epoch, tokio::time::Instant::now());
        assert_eq!(clock.now_secs(), 1_000_000.0);
        tokio::time::sleep(Duration::from_secs(90)).await;
        assert_eq!(clock.now_secs(), 1_000_090.0);
    }
}
