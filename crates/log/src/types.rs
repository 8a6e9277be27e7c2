//! The openraft type configuration for kaon.

use std::fmt;

use serde::{Deserialize, Serialize};

openraft::declare_raft_types!(
    /// kaon's Raft types: node ids are `u64`, a node is addressed by its RPC
    /// `host:port` ([`openraft::impls::BasicNode`]), log entries carry a
    /// [`Proposal`] and applying one answers with an [`Applied`].
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        AsyncRuntime = crate::rt::KaonRuntime,
);

/// Shorthands for openraft's generic types instantiated with [`TypeConfig`].
pub mod alias {
    use super::TypeConfig;
    use openraft::type_config::alias as a;

    /// A Raft log id (leader id + index).
    pub type LogId = a::LogIdOf<TypeConfig>;
    /// A Raft vote.
    pub type Vote = a::VoteOf<TypeConfig>;
    /// A Raft log entry.
    pub type Entry = a::EntryOf<TypeConfig>;
    /// Membership with the log id it was applied at.
    pub type StoredMembership = a::StoredMembershipOf<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = a::SnapshotMetaOf<TypeConfig>;
    /// A snapshot with kaon's snapshot bytes.
    pub type Snapshot = a::SnapshotOf<TypeConfig, Vec<u8>>;
    /// The openraft handle for a kaon replica.
    pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachineStore>;
}

/// One kaon event proposed by the leader: the protobuf encoding of a
/// `kaon_core::events::Event` whose `index` is still 0. The state machine
/// stamps the final event index when the entry is applied (see the README:
/// Raft log indexes have gaps for blank and membership entries, event
/// indexes must not).
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Proposal {
    /// `kaon.events.v1.Event` bytes with `index = 0`.
    pub event: Vec<u8>,
}

impl fmt::Debug for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proposal({} bytes)", self.event.len())
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What applying a log entry produced.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Applied {
    /// The event index the entry's event got (None for blank and
    /// membership entries, which carry no event).
    pub event_index: Option<u64>,
}

/// Builds a committed log id (term, leader node, index); for tools and
/// tests that write log entries directly.
pub fn log_id(term: u64, node: u64, index: u64) -> alias::LogId {
    use openraft::RaftTypeConfig;
    use openraft::vote::RaftLeaderIdExt;
    let leader = <TypeConfig as RaftTypeConfig>::LeaderId::new_committed(term, node);
    openraft::LogId::new(leader, index)
}
