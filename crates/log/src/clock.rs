//! The wall clock a node stamps events with, handed in rather than read
//! from the operating system.
//!
//! kaon reads wall-clock time in one place per proposal: the leader stamps
//! `Event.time_unix_ms` (the core never reads a clock; replicas apply the
//! recorded time). Timers and timeouts (openraft's heartbeats and
//! elections, RPC deadlines) already run on `tokio::time`, which a test can
//! pause and advance. Wall time must follow that virtual time in a
//! simulation, or events would carry real timestamps while everything else
//! runs in paused time; hence [`Clock`], with [`SystemClock`] for
//! production and [`TokioClock`] for simulations.

use std::fmt::Debug;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in Unix milliseconds.
pub trait Clock: Send + Sync + Debug {
    /// Milliseconds since the Unix epoch, now.
    fn now_unix_ms(&self) -> i64;
}

/// The operating system's clock (the production default).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A virtual wall clock that advances with `tokio::time`: `epoch_unix_ms`
/// plus the tokio time elapsed since the clock was made. Under a paused
/// tokio clock (`#[tokio::test(start_paused = true)]`) it moves only when
/// tokio's time does, so every node sharing one `TokioClock` stamps
/// reproducible times.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    epoch_unix_ms: i64,
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock reading `epoch_unix_ms` now (call inside the runtime whose
    /// time it should follow).
    pub fn starting_at(epoch_unix_ms: i64) -> TokioClock {
        TokioClock {
            epoch_unix_ms,
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_unix_ms(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.origin);
        self.epoch_unix_ms
            .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }
}
