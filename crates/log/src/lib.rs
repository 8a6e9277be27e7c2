//! kaon's replicated event log.
//!
//! kaon's state is `fold(events)`; this crate makes the sequence of events
//! highly available by replicating it with Raft (openraft) and persisting it
//! in redb. Everything that touches openraft lives here, so the rest of kaon
//! sees only: propose an event body, get back the committed event index, read
//! the folded [`kaon_core::State`], and read the full audit trail of events.
//!
//! - [`types`]: the openraft type configuration and the proposal/response types.
//! - [`log_store`]: the durable Raft log (entries, vote, committed, purge).
//! - [`state_machine`]: applies committed events into `kaon_core::State`,
//!   keeps every event forever in a checksummed archive, builds and installs
//!   snapshots (which carry the archive).
//! - [`network`]: the Raft RPC transport over tonic (or, for simulations,
//!   over [`mem_network`], an in-process network with fault injection).
//! - [`storage`]: where the databases live (files, or memory).
//! - [`clock`]: the wall clock events are stamped with.
//! - [`node`]: [`RaftNode`], a small wrapper to run one replica.
//! - [`membership`]: the checks every membership change passes, and the
//!   offline recovery of a cluster that lost its majority.
//!
//! Network, storage and clock are handed to [`RaftNode::start`] in
//! [`NodeConfig`] rather than reached for, so several nodes can run in one
//! process over a [`MemNetwork`] with in-memory storage and paused tokio
//! time (see `tests/partition.rs`).
//!
//! Design notes (event index mapping, archive) are in the crate README.

#![warn(missing_docs)]

pub mod clock;
pub mod error;
pub mod log_store;
pub mod mem_network;
pub mod membership;
pub mod network;
pub mod node;
mod record;
pub mod restore;
pub mod rt;
pub mod state_machine;
pub mod storage;
pub mod tls;
pub mod types;
pub mod version;

pub use clock::{Clock, SystemClock, TokioClock};
pub use error::StoreError;
pub use log_store::LogStore;
pub use mem_network::{Fate, MemNetwork};
pub use network::Transport;
pub use node::{
    ClusterMember, ClusterStatus, MetricsWatch, NodeConfig, NodeError, ProposeError, RaftNode,
    Readiness,
};
pub use state_machine::{SnapshotInfo, StateMachineStore};
pub use storage::{MemStorage, Storage};
pub use types::{Applied, Proposal, TypeConfig};

/// Generated protobuf/tonic code for the internal Raft RPC
/// (`proto/kaon/raft/v1/raft.proto`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("kaon.raft.v1");
}
