//! Versions on the Raft wire (issue 11, upgrades).
//!
//! Every Raft RPC request and reply carries two numbers
//! (`kaon.raft.v1.RaftPayload` and the first `SnapshotChunk`):
//! - `wire_version`: how openraft's messages inside are encoded
//!   ([`RAFT_WIRE_VERSION`]). A node refuses a message of a wire version it
//!   does not know with `FAILED_PRECONDITION` naming both versions, and a
//!   sender that gets such a reply (or a reply it cannot read) says the
//!   peer must be upgraded: never a garbled decode, never a crash.
//! - `event_schema`: the newest kaon event kinds the sender can apply
//!   (`kaon_core::events::EVENT_SCHEMA`, or lower when pinned with
//!   `kaon server --event-schema-max` during a staged upgrade). The leader
//!   records each peer's from its replies ([`Versions`]) and writes a newer
//!   event kind only once every voter reads it, so a rolling upgrade never
//!   hands an old node an event it must refuse.
//!
//! 0 (a field absent) means a kaon from before these fields: wire 1,
//! schema 1.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tonic::Status;

use crate::pb::RaftPayload;

/// The encoding of openraft's messages in `RaftPayload.data`: 1 = bincode
/// 2 (serde) of openraft 0.10.0-alpha.37's types. Bump it with any change
/// of either, and teach the receiver the old one first.
pub const RAFT_WIRE_VERSION: u32 = 1;

/// A version field as sent: 0 (absent, a kaon before versions) reads as 1.
pub fn effective(v: u32) -> u32 {
    v.max(1)
}

/// Receiver side: refuses a message of an unknown (newer) wire version.
pub fn check_wire(what: &str, wire_version: u32) -> Result<(), Status> {
    let v = effective(wire_version);
    if v > RAFT_WIRE_VERSION {
        return Err(Status::failed_precondition(format!(
            "{what}: the sender speaks kaon Raft wire version {v}, this node only reads up to \
             {RAFT_WIRE_VERSION}: it runs an older kaon; upgrade this node (kaon {})",
            env!("CARGO_PKG_VERSION")
        )));
    }
    Ok(())
}

/// This node's versions and what it heard of its peers'.
#[derive(Clone, Debug)]
pub struct Versions {
    event_schema: u32,
    peers: Arc<Mutex<BTreeMap<u64, u32>>>,
    /// The last version refusal logged per peer (each logged once).
    refusals: Arc<Mutex<BTreeMap<u64, String>>>,
}

impl Default for Versions {
    /// A node that applies every event kind this kaon knows.
    fn default() -> Versions {
        Versions::new(kaon_core::events::EVENT_SCHEMA)
    }
}

impl Versions {
    /// A node that applies events up to schema `event_schema`.
    pub fn new(event_schema: u32) -> Versions {
        Versions {
            event_schema: effective(event_schema),
            peers: Arc::default(),
            refusals: Arc::default(),
        }
    }

    /// The event schema this node reads (and advertises).
    pub fn event_schema(&self) -> u32 {
        self.event_schema
    }

    /// `data` as a payload stamped with this node's versions.
    pub fn payload(&self, data: Vec<u8>) -> RaftPayload {
        RaftPayload {
            data,
            wire_version: RAFT_WIRE_VERSION,
            event_schema: self.event_schema,
        }
    }

    /// Sender side: a reply from `peer`. Records its event schema; refuses
    /// a reply of a wire version this node cannot read.
    pub fn heard(&self, peer: u64, reply: &RaftPayload) -> Result<(), String> {
        let wire = effective(reply.wire_version);
        if wire > RAFT_WIRE_VERSION {
            return Err(format!(
                "peer {peer} answers in kaon Raft wire version {wire}, this node reads up to \
                 {RAFT_WIRE_VERSION}: upgrade this node"
            ));
        }
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(peer, effective(reply.event_schema));
        Ok(())
    }

    /// Logs a version refusal between this node and `peer` (an error: the
    /// two cannot replicate until one is upgraded), once per message.
    pub fn log_refusal(&self, peer: u64, message: &str) {
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.get(&peer).map(String::as_str) != Some(message) {
            tracing::error!(peer, "{message}");
            r.insert(peer, message.to_string());
        }
    }

    /// The event schema `peer` last said it reads (None: not heard yet).
    pub fn peer_event_schema(&self, peer: u64) -> Option<u32> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&peer)
            .copied()
    }

    /// The newest event schema every one of `voters` reads: this node's
    /// own for itself; a peer not heard from yet counts as 1 (the oldest),
    /// so a new event kind waits until every voter has answered.
    pub fn cluster_event_schema(&self, me: u64, voters: impl IntoIterator<Item = u64>) -> u32 {
        voters
            .into_iter()
            .map(|v| {
                if v == me {
                    self.event_schema
                } else {
                    self.peer_event_schema(v).unwrap_or(1)
                }
            })
            .fold(self.event_schema, u32::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_wire_version_is_refused_naming_both_versions() {
        assert!(check_wire("append entries", 0).is_ok(), "absent = 1");
        assert!(check_wire("append entries", RAFT_WIRE_VERSION).is_ok());
        let e = check_wire("append entries", RAFT_WIRE_VERSION + 1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(
            e.message()
                .contains(&format!("wire version {}", RAFT_WIRE_VERSION + 1))
                && e.message().contains("upgrade this node"),
            "{}",
            e.message()
        );
        let v = Versions::new(2);
        let newer = RaftPayload {
            data: vec![],
            wire_version: RAFT_WIRE_VERSION + 1,
            event_schema: 9,
        };
        assert!(v.heard(2, &newer).unwrap_err().contains("peer 2"));
        assert_eq!(
            v.peer_event_schema(2),
            None,
            "an unreadable reply teaches nothing"
        );
    }

    #[test]
    fn the_cluster_reads_what_its_oldest_voter_reads() {
        let v = Versions::new(2);
        assert_eq!(v.cluster_event_schema(1, [1]), 2, "alone");
        assert_eq!(v.cluster_event_schema(1, [1, 2, 3]), 1, "not heard yet");
        v.heard(2, &v.payload(vec![])).unwrap();
        let old = RaftPayload {
            data: vec![],
            wire_version: 0,
            event_schema: 0,
        };
        v.heard(3, &old).unwrap();
        assert_eq!(
            v.cluster_event_schema(1, [1, 2, 3]),
            1,
            "3 is a kaon before versions"
        );
        v.heard(3, &v.payload(vec![])).unwrap();
        assert_eq!(v.cluster_event_schema(1, [1, 2, 3]), 2, "all upgraded");
        assert_eq!(
            Versions::new(1).cluster_event_schema(1, [1, 2, 3]),
            1,
            "pinned"
        );
    }
}
