//! kaon's Apache Mesos integration: the v1 JSON model, RecordIO framing, the
//! scheduler driver, kaon's custom executor and a Mesos 1.11 emulator.
//!
//! Real Mesos cannot be installed on kaon's machines; the emulator lets the
//! driver and executor be exercised over real HTTP exactly as against Mesos.
#![warn(missing_docs)]

pub mod driver;
pub mod emulator;
pub mod executor;
pub mod process;
pub mod recordio;
pub mod resources;
pub mod spark;
pub mod transport;
pub mod types;
