//! Restoring a backup: a new one-node cluster whose log holds the backed-up
//! events (`kaon cluster restore`).
//!
//! A backup is the event archive up to a committed index (the state is
//! derived from it; see `kaon cluster backup`). Restoring replays it into a
//! state, checks the chain head and the digest the backup recorded, and
//! installs state and archive into a new data directory the way a node
//! that catches up by snapshot receives them: the state machine holds the
//! snapshot at Raft log index 1, whose membership (this node, the only
//! voter) it carries, and the log is purged up to it. Started, the node elects itself and
//! its runtime reconciles every run that was live with Mesos; more nodes
//! join with `kaon cluster add-node` and receive the archive by snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use kaon_core::State;
use openraft::Membership;
use openraft::impls::BasicNode;
use openraft::storage::{RaftLogStorage, RaftStateMachine};

use crate::log_store::{LOG_FILE, LogStore};
use crate::membership::{RecoverError, parse_raft_addr};
use crate::state_machine::{STATE_FILE, StateMachineStore, snapshot_data};
use crate::types::alias::{SnapshotMeta, StoredMembership, Vote};

/// What [`restore`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Events restored (1..=events).
    pub events: u64,
    /// Hash-chain head after them.
    pub chain: [u8; 32],
    /// Digest of the state they build.
    pub digest: [u8; 32],
}

/// Replays `events` (encoded events 1..=n, in order) into a state; the
/// error names the first event that does not apply.
pub fn replay(events: &[Vec<u8>]) -> Result<State, RecoverError> {
    let mut state = State::default();
    for (i, bytes) in events.iter().enumerate() {
        let index = i as u64 + 1;
        state
            .apply_bytes(index, bytes)
            .map_err(|e| RecoverError::Invalid(format!("event {index} does not apply: {e}")))?;
    }
    Ok(state)
}

/// Writes a new node's data into `dir` (the node's `raft` directory, which
/// must hold no log yet) from `events` and the `state` they build
/// ([`replay`]; the install checks that the events hash to its chain
/// head): node `node_id`, reachable by its peers at `raft_addr`, is the
/// only voter.
pub async fn restore(
    dir: &Path,
    node_id: u64,
    raft_addr: &str,
    state: State,
    events: Vec<Vec<u8>>,
) -> Result<Restored, RecoverError> {
    parse_raft_addr(raft_addr)
        .map_err(|e| RecoverError::Invalid(format!("the node's raft address: {e}")))?;
    for file in [LOG_FILE, STATE_FILE] {
        if dir.join(file).exists() {
            return Err(RecoverError::Invalid(format!(
                "{} already holds a kaon log ({file}): restore into a new data directory",
                dir.display()
            )));
        }
    }
    if state.applied_index != events.len() as u64 {
        return Err(RecoverError::Invalid(format!(
            "the state is at event {} but {} events were given",
            state.applied_index,
            events.len()
        )));
    }
    let out = Restored {
        events: state.applied_index,
        chain: state.chain,
        digest: state.digest(),
    };
    std::fs::create_dir_all(dir)
        .map_err(|e| RecoverError::Invalid(format!("creating {}: {e}", dir.display())))?;
    let nodes: BTreeMap<u64, BasicNode> = [(
        node_id,
        BasicNode {
            addr: raft_addr.to_string(),
        },
    )]
    .into();
    let membership = Membership::<u64, BasicNode>::new(vec![BTreeSet::from([node_id])], nodes)
        .map_err(|e| RecoverError::Invalid(format!("membership: {e}")))?;
    let log_id = crate::types::log_id(1, node_id, 1);
    let mut log = LogStore::open(dir)?;
    let mut sm = StateMachineStore::open(dir)?;
    let io = |what: &'static str| {
        let path = dir.to_path_buf();
        move |e: std::io::Error| {
            RecoverError::Store(crate::StoreError::Io {
                file: path.clone(),
                op: what,
                source: e,
            })
        }
    };
    // The log starts behind the snapshot, as a node's does once it has
    // installed one and purged what it covers: Raft log index 1 (the
    // membership) is applied and purged.
    log.purge(log_id).await.map_err(io("mark the log purged"))?;
    let data = snapshot_data(state.to_snapshot(), events).map_err(RecoverError::Invalid)?;
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
    };
    sm.install_snapshot(&meta, data)
        .await
        .map_err(io("install the restored snapshot"))?;
    // A vote for itself one term above the entry, as after a crash while
    // campaigning: the first election is above everything in the log.
    log.save_vote(&Vote::new(2, node_id))
        .await
        .map_err(io("save the vote"))?;
    assert_eq!(
        sm.applied_event_index(),
        out.events,
        "the restored node holds every backed-up event"
    );
    Ok(out)
}
