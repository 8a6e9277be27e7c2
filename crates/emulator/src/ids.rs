//! Where the emulator's random ids come from.
//!
//! A real master and agent draw their ids (master id, Mesos-Stream-Ids,
//! status update uuids, sandbox run directories) from OS randomness, and so
//! does the emulator by default. A deterministic simulation needs the same
//! ids for the same seed and the same calls, so the source is handed in
//! through [`super::EmulatorConfig::ids`]: [`IdSource::Seeded`] derives every
//! id from a counter run through SplitMix64, with no OS randomness.
//! Framework, agent and offer ids are built from the master id and counters,
//! as in Mesos, so they follow.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How the emulator makes the ids Mesos makes at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdSource {
    /// Random v4 UUIDs from the OS, as a real Mesos cluster (the default).
    #[default]
    Random,
    /// Ids derived from this seed and the order in which they are drawn:
    /// same seed + same sequence of calls = same ids. They still look like
    /// v4 UUIDs (version and variant bits set).
    Seeded(u64),
}

/// SplitMix64's increment (the golden ratio in 64 bits).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

enum Source {
    Random,
    Seeded(AtomicU64),
}

/// A generator of ids, shared (cheap to clone) by the emulator and the
/// executors it launches in-process, so that one seed drives all of them.
#[derive(Clone)]
pub struct Ids(Arc<Source>);

impl Ids {
    /// A generator for `source`.
    pub fn new(source: IdSource) -> Self {
        Ids(Arc::new(match source {
            IdSource::Random => Source::Random,
            IdSource::Seeded(seed) => Source::Seeded(AtomicU64::new(seed)),
        }))
    }

    /// The next 64 random (or seeded) bits.
    pub fn next_u64(&self) -> u64 {
        match &*self.0 {
            Source::Random => {
                let b = uuid::Uuid::new_v4().into_bytes();
                u64::from_le_bytes(b[..8].try_into().unwrap_or_default())
            }
            Source::Seeded(state) => mix(state
                .fetch_add(GAMMA, Ordering::Relaxed)
                .wrapping_add(GAMMA)),
        }
    }

    fn uuid(&self) -> uuid::Uuid {
        match &*self.0 {
            Source::Random => uuid::Uuid::new_v4(),
            Source::Seeded(_) => {
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&self.next_u64().to_le_bytes());
                bytes[8..].copy_from_slice(&self.next_u64().to_le_bytes());
                uuid::Builder::from_random_bytes(bytes).into_uuid()
            }
        }
    }

    /// A v4 UUID's 16 bytes (the form of `TaskStatus.uuid`).
    pub fn uuid_bytes(&self) -> [u8; 16] {
        self.uuid().into_bytes()
    }

    /// A v4 UUID as hyphenated text (master id, stream ids, sandbox names).
    pub fn uuid_string(&self) -> String {
        self.uuid().to_string()
    }

    /// Whether ids are seeded (deterministic).
    pub fn is_seeded(&self) -> bool {
        matches!(&*self.0, Source::Seeded(_))
    }
}

impl Default for Ids {
    fn default() -> Self {
        Ids::new(IdSource::Random)
    }
}

impl std::fmt::Debug for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            Source::Random => f.write_str("Ids(Random)"),
            Source::Seeded(_) => f.write_str("Ids(Seeded)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_ids_repeat_per_seed_and_differ_between_seeds() {
        let draw = |seed| {
            let ids = Ids::new(IdSource::Seeded(seed));
            (0..4).map(|_| ids.uuid_string()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        let a = draw(7);
        assert_eq!(a.iter().collect::<std::collections::BTreeSet<_>>().len(), 4);
        let u = uuid::Uuid::parse_str(&a[0]).unwrap();
        assert_eq!(u.get_version_num(), 4);
    }

    #[test]
    fn random_ids_are_random() {
        let ids = Ids::new(IdSource::Random);
        assert_ne!(ids.uuid_bytes(), ids.uuid_bytes());
        assert!(!ids.is_seeded());
    }
}
