//! Membership safety: the checks every membership change passes before it
//! is proposed, and the offline recovery of a cluster that lost its
//! majority.
//!
//! Why: one mistyped `add-node` (an address nothing listens on) used to
//! make a dead node a voter at once, after which a one-node cluster had no
//! quorum and nothing could be undone online (issue 9, B). The rules here
//! keep every change one that the reachable voters can still commit:
//! - an address is `HOST:PORT` before it is recorded ([`parse_raft_addr`]);
//! - a node becomes a voter only after it caught up as a learner;
//! - no change leaves a voter set of which fewer than a majority are
//!   reachable ([`check_quorum`]); in the joint phase both the old and the
//!   new set need one.
//!
//! When a majority is lost for good, [`recover`] rewrites the membership of
//! one survivor offline (like etcd's `--force-new-cluster`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::Membership;
use openraft::entry::RaftEntry;
use openraft::impls::BasicNode;
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};

use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::state_machine::StateMachineStore;
use crate::types::alias::{Entry, LogId, StoredMembership, Vote};

/// Longest host name accepted in a Raft address (DNS's limit), bytes.
pub const HOST_BYTES_MAX: usize = 253;

/// Checks that `addr` is a Raft address a peer can dial: `HOST:PORT` with
/// a port in 1..=65535 and a host that is an IP address (IPv6 in
/// brackets) or a DNS name. The error says what is wrong, for the caller to
/// prefix with where the address came from.
pub fn parse_raft_addr(addr: &str) -> Result<(), String> {
    let example = "expected HOST:PORT, e.g. 10.0.0.4:7071 or kaon2:7071";
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return if addr.ends_with(":0") {
            Err(format!("{addr:?}: port 0 cannot be dialed; {example}"))
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{addr:?} has no port; {example}"));
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => {
            return Err(format!(
                "{addr:?}: {port:?} is not a port (1-65535); {example}"
            ));
        }
        Ok(_) => {}
    }
    let dns_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.is_empty() || host.len() > HOST_BYTES_MAX || !host.split('.').all(dns_label) {
        return Err(format!(
            "{addr:?}: {host:?} is neither an IP address nor a host name; {example}"
        ));
    }
    Ok(())
}

/// Checks that a majority of `voters` is in `reachable`; the error names
/// who is missing. `what` says which voter set this is ("after removing
/// node 2", ...).
pub fn check_quorum(
    voters: &BTreeSet<u64>,
    reachable: &BTreeSet<u64>,
    what: &str,
) -> Result<(), String> {
    let up: BTreeSet<u64> = voters.intersection(reachable).copied().collect();
    let needed = voters.len() / 2 + 1;
    if up.len() >= needed {
        return Ok(());
    }
    let down: BTreeSet<u64> = voters.difference(reachable).copied().collect();
    Err(format!(
        "{what}: only {up:?} of the voters {voters:?} are reachable (a quorum needs \
         {needed}; unreachable: {down:?}), so the cluster could not commit; bring the \
         unreachable nodes back or remove them first (if a majority is lost for good: \
         `kaon cluster recover`)"
    ))
}

/// What [`recover`] found and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// The last Raft log index and term before recovery.
    pub last_log_index: u64,
    /// Its term.
    pub last_log_term: u64,
    /// The members the log named before (id → address).
    pub members_before: BTreeMap<u64, String>,
    /// The term of the new membership entry.
    pub term: u64,
    /// The Raft log index of the new membership entry.
    pub index: u64,
}

/// Why [`recover`] refused.
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The stores could not be opened (in use by a running server, corrupt,
    /// missing).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request itself is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// Offline recovery of a cluster that lost its majority for good: makes
/// `members` (this node, `node_id`, among them) the only voters of the
/// Raft log in `dir`, which must not be open (stop the server first).
///
/// It appends one membership entry after the last one in the log, under a
/// term above every term the log or vote has seen, and records a vote for
/// this node at a term above that, so the restarted node campaigns at once
/// and, once elected, commits the entry and everything before it. Events
/// the lost nodes had and this one did not are gone: run it on the
/// survivor with the highest last log index (printed by `kaon cluster
/// recover --dry-run`). Other survivors are wiped and added back with
/// `kaon cluster add-node` (or started empty with `--join` when they are
/// listed in `members`).
pub async fn recover(
    dir: &Path,
    node_id: u64,
    members: &BTreeMap<u64, String>,
    dry_run: bool,
) -> Result<Recovered, RecoverError> {
    if !members.contains_key(&node_id) {
        return Err(RecoverError::Invalid(format!(
            "the members {:?} must include this node ({node_id})",
            members.keys().collect::<Vec<_>>()
        )));
    }
    for (id, addr) in members {
        parse_raft_addr(addr).map_err(|e| RecoverError::Invalid(format!("member {id}: {e}")))?;
    }
    let mut log = LogStore::open(dir)?;
    let mut sm = StateMachineStore::open(dir)?;
    let state = log.get_log_state().await.map_err(io_store(&log))?;
    let vote: Option<Vote> = log.read_vote().await.map_err(io_store(&log))?;
    let (applied, sm_membership) = sm.applied_state().await.map_err(io_store(&log))?;
    let last: Option<LogId> = state.last_log_id.or(applied);
    let Some(last) = last else {
        return Err(RecoverError::Invalid(format!(
            "{}: the log is empty: this node never joined a cluster, there is nothing to recover",
            dir.display()
        )));
    };
    let members_before = last_membership(&log, sm_membership, state.last_purged_log_id)?;
    let last_term = last.committed_leader_id().term;
    let vote_term = vote.map(|v| v.leader_id().term).unwrap_or(0);
    let term = last_term.max(vote_term) + 1;
    let index = last.index + 1;
    let out = Recovered {
        last_log_index: last.index,
        last_log_term: last_term,
        members_before,
        term,
        index,
    };
    if dry_run {
        return Ok(out);
    }
    let voters: BTreeSet<u64> = members.keys().copied().collect();
    let nodes: BTreeMap<u64, BasicNode> = members
        .iter()
        .map(|(id, a)| (*id, BasicNode { addr: a.clone() }))
        .collect();
    let membership = Membership::<u64, BasicNode>::new(vec![voters], nodes)
        .map_err(|e| RecoverError::Invalid(format!("membership: {e}")))?;
    let entry = Entry::new_membership(crate::types::log_id(term, node_id, index), membership);
    log.append_durable(&[entry])?;
    // A vote for itself one term above the entry: as if it crashed while
    // campaigning. The next election is at term + 2, above everything.
    let vote = Vote::new(term + 1, node_id);
    log.save_vote(&vote).await.map_err(io_store(&log))?;
    Ok(out)
}

/// The membership the log (or, before it, the state machine) holds last.
fn last_membership(
    log: &LogStore,
    applied: StoredMembership,
    purged: Option<LogId>,
) -> Result<BTreeMap<u64, String>, RecoverError> {
    let from = purged.map(|p| p.index + 1).unwrap_or(0);
    let entries = log.read_entries(from..)?;
    let found = entries.iter().rev().find_map(|e| e.get_membership());
    let membership = match found {
        Some(m) => m.clone(),
        None => applied.membership().clone(),
    };
    Ok(membership
        .nodes()
        .map(|(id, n)| (*id, n.addr.clone()))
        .collect())
}

fn io_store(log: &LogStore) -> impl Fn(std::io::Error) -> RecoverError + '_ {
    move |e| {
        RecoverError::Store(StoreError::Io {
            file: log.path().to_path_buf(),
            op: "recover",
            source: e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raft_addresses_are_host_and_port() {
        for ok in [
            "127.0.0.1:7071",
            "[::1]:7071",
            "kaon2:7071",
            "node-2.example.com:1",
        ] {
            assert_eq!(parse_raft_addr(ok), Ok(()), "{ok}");
        }
        for (bad, says) in [
            ("not an addr", "has no port"),
            ("127.0.0.1", "has no port"),
            ("127.0.0.1:0", "port 0"),
            ("127.0.0.1:70000", "not a port"),
            ("host:", "not a port"),
            (":7071", "neither an IP address nor a host name"),
            ("not an addr:7071", "neither an IP address nor a host name"),
            ("-x:7071", "neither"),
        ] {
            let e = parse_raft_addr(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("expected HOST:PORT"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_change_needs_a_reachable_majority_of_the_new_voters() {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        // One node adding an unreachable second: 1 of 2 is no quorum.
        let e = check_quorum(&set(&[1, 2]), &set(&[1]), "after adding node 2").unwrap_err();
        assert!(
            e.starts_with("after adding node 2: only {1} of the voters {1, 2} are reachable"),
            "{e}"
        );
        assert!(e.contains("unreachable: {2}"), "{e}");
        // Three voters, one down: removing a live one leaves 1 of 2.
        assert!(check_quorum(&set(&[1, 3]), &set(&[1, 2]), "x").is_err());
        // Removing the dead one leaves 2 of 2.
        assert!(check_quorum(&set(&[1, 2]), &set(&[1, 2]), "x").is_ok());
        // Five voters, two down: 3 of 5 is a quorum.
        assert!(check_quorum(&set(&[1, 2, 3, 4, 5]), &set(&[1, 2, 3]), "x").is_ok());
    }
}
