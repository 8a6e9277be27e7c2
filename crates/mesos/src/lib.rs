//! kaon's Apache Mesos integration, what runs against a real Mesos 1.11
//! cluster: the v1 JSON model, RecordIO framing, the scheduler driver, and
//! kaon's custom executor (with process handling and Spark watching).
//!
//! The Mesos 1.11 emulator that kaon runs on a single machine and tests
//! against is its own crate, `kaon-mesos-emulator` (`crates/emulator`): it
//! uses this crate's protocol types and process handling, and nothing here
//! depends on it.
#![warn(missing_docs)]

pub mod driver;
pub mod executor;
pub mod process;
pub mod recordio;
pub mod resources;
pub mod spark;
pub mod transport;
pub mod types;
