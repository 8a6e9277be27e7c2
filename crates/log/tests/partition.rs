//! Simulation seams at work: three nodes in one process over a
//! [`MemNetwork`], with in-memory storage and paused tokio time (virtual
//! wall clock), partition the leader away from both followers and heal.
//!
//! Every wait is on a condition with a deadline; the deadlines are in
//! virtual time, which tokio advances only when every task is idle, so the
//! test costs milliseconds of real time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kaon_core::events::{Body, pb};
use kaon_log::{MemNetwork, MemStorage, NodeConfig, RaftNode, Storage, TokioClock, Transport};
use openraft::ServerState;

/// Virtual-time bound for anything that takes a few election timeouts.
const DEADLINE: Duration = Duration::from_secs(10);
/// The virtual wall clock's reading at the start of the test.
const EPOCH_MS: i64 = 1_700_000_000_000;

fn fw(id: &str) -> Body {
    Body::FrameworkRegistered(pb::FrameworkRegistered {
        framework_id: id.to_string(),
    })
}

fn addr(id: u64) -> SocketAddr {
    format!("10.0.0.{id}:7070").parse().unwrap()
}

/// Starts nodes 1..=3 on `net`, each on its own in-memory storage, and
/// forms the cluster.
async fn start_cluster(net: &MemNetwork, clock: TokioClock) -> BTreeMap<u64, RaftNode> {
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let mut c = NodeConfig::new(id, addr(id), PathBuf::from("unused-in-memory"));
        c.transport = Transport::Mem(net.clone());
        c.storage = Storage::Memory(MemStorage::new());
        c.clock = Arc::new(clock);
        nodes.insert(id, RaftNode::start(c).await.unwrap());
    }
    let members = nodes
        .iter()
        .map(|(id, n)| (*id, n.addr().to_string()))
        .collect();
    nodes[&1].initialize_with(members).await.unwrap();
    nodes
}

/// Waits until `observer` knows a leader that is one of `among`.
async fn wait_leader(observer: &RaftNode, among: &BTreeSet<u64>) -> u64 {
    observer
        .raft()
        .wait(Some(DEADLINE))
        .metrics(
            |m| matches!(m.current_leader, Some(l) if among.contains(&l)),
            "a leader in the group",
        )
        .await
        .unwrap_or_else(|e| panic!("no leader among {among:?}: {e}"))
        .current_leader
        .unwrap()
}

/// Waits until `leader` has applied an entry of its own term: it has
/// heard from a quorum, so it accepts writes (openraft refuses them, as
/// `NotLeader { leader: None }`, until its lease is established).
async fn wait_writable(leader: &RaftNode) {
    leader
        .raft()
        .wait(Some(DEADLINE))
        .metrics(
            |m| {
                m.state == ServerState::Leader
                    && m.last_applied
                        .is_some_and(|l| l.leader_id.term == m.current_term)
            },
            "leader applied an entry of its term",
        )
        .await
        .unwrap_or_else(|e| panic!("node {} never became writable: {e}", leader.id()));
}

/// Proposes through the leader of `group` (as the group's first node sees
/// it), retrying across leader changes until the deadline.
///
/// Under paused time every retry must wait on something that lets tokio
/// go idle: a loop that retries at once keeps the runtime busy, so
/// virtual time never advances and nothing that needs a timer progresses.
async fn propose(nodes: &BTreeMap<u64, RaftNode>, group: &BTreeSet<u64>, body: Body) -> u64 {
    let observer = &nodes[group.first().unwrap()];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let leader = wait_leader(observer, group).await;
        wait_writable(&nodes[&leader]).await;
        match nodes[&leader].propose(body.clone()).await {
            Ok(i) => return i,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "proposal not committed: {e}"
                );
                // Wait (bounded) for the leadership to move.
                let term = observer.status().term;
                let _ = observer
                    .raft()
                    .wait(Some(Duration::from_millis(100)))
                    .metrics(
                        |m| m.current_term != term || m.current_leader != Some(leader),
                        "leadership moved",
                    )
                    .await;
            }
        }
    }
}

async fn wait_all(nodes: &BTreeMap<u64, RaftNode>, event_index: u64) {
    for (id, n) in nodes {
        assert!(
            n.wait_for_event(event_index, DEADLINE).await,
            "node {id} did not reach event {event_index} (at {})",
            n.state_machine().applied_event_index()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn isolated_leader_cannot_commit_majority_moves_on_and_it_converges_after_heal() {
    let net = MemNetwork::new();
    let clock = TokioClock::starting_at(EPOCH_MS);
    let nodes = start_cluster(&net, clock).await;
    let all: BTreeSet<u64> = nodes.keys().copied().collect();

    // Elect, commit 10 events everywhere.
    let old = wait_leader(&nodes[&1], &all).await;
    for i in 1..=10u64 {
        assert_eq!(propose(&nodes, &all, fw(&format!("fw-{i}"))).await, i);
    }
    wait_all(&nodes, 10).await;
    // Stamped by the handed-in clock: virtual time, not the machine's.
    for e in nodes[&old].read_events(1, 10).unwrap() {
        assert!(
            (EPOCH_MS..EPOCH_MS + DEADLINE.as_millis() as i64).contains(&e.time_unix_ms),
            "event {} stamped {} outside the virtual clock's range",
            e.index,
            e.time_unix_ms
        );
    }

    // Partition the leader from both followers.
    let before = nodes[&old].status();
    let dropped_before = net.stats().dropped;
    net.isolate(old);
    let rest: BTreeSet<u64> = all.iter().copied().filter(|&id| id != old).collect();

    // The isolated old leader cannot commit: a proposal on it does not
    // succeed (it waits for a quorum that never answers).
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        nodes[&old].propose(fw("from-isolated-leader")),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "the isolated leader committed a proposal: {attempt:?}"
    );

    // The majority elects a new leader and commits.
    let new = wait_leader(&nodes[rest.first().unwrap()], &rest).await;
    assert_ne!(new, old);
    for i in 11..=15u64 {
        assert_eq!(propose(&nodes, &rest, fw(&format!("fw-{i}"))).await, i);
    }
    for id in &rest {
        assert!(nodes[id].wait_for_event(15, DEADLINE).await, "node {id}");
    }
    // Meanwhile the isolated node has committed and applied nothing new.
    let during = nodes[&old].status();
    assert_eq!(during.applied_event_index, 10, "{during:?}");
    assert_eq!(during.committed_index, before.committed_index, "{during:?}");
    assert!(
        net.stats().dropped > dropped_before,
        "the partition dropped no message"
    );

    // Heal: the old leader follows the new one and converges.
    net.heal();
    wait_leader(&nodes[&old], &rest).await;
    wait_all(&nodes, 15).await;
    let digests: BTreeSet<[u8; 32]> = nodes.values().map(|n| n.digest()).collect();
    assert_eq!(digests.len(), 1, "State::digest differs after healing");
    let mut archives = BTreeSet::new();
    for (id, n) in &nodes {
        let chain = n
            .verify_chain()
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        assert_eq!(chain.events, 15, "node {id}");
        let events = n.read_events(1, 15).unwrap();
        assert!(
            events.iter().all(|e| !matches!(&e.body,
                Some(Body::FrameworkRegistered(f)) if f.framework_id == "from-isolated-leader")),
            "node {id}: the isolated leader's proposal was committed"
        );
        archives.insert(format!("{events:?}"));
    }
    assert_eq!(archives.len(), 1, "archives differ after healing");

    // And the healed cluster commits with all three.
    assert_eq!(propose(&nodes, &all, fw("after-heal")).await, 16);
    wait_all(&nodes, 16).await;
    let digests: BTreeSet<[u8; 32]> = nodes.values().map(|n| n.digest()).collect();
    assert_eq!(digests.len(), 1);
    for (_, n) in nodes {
        n.shutdown().await;
    }
}

/// Issue 8 (the bench's errors without faults): a leader that hears no
/// quorum's replies for longer than its lease (the followers' answers are
/// late; they still hear it, so nobody elects) has its writes refused by
/// openraft before they are appended. Such a write waits for the lease to
/// come back, up to `lease_wait_ms_max`, instead of failing at once; once
/// the lease cannot come back within that limit, it fails as "not the
/// leader" (UNAVAILABLE to a client, which retries).
#[tokio::test(start_paused = true)]
async fn a_write_during_a_lapsed_leader_lease_waits_for_it_then_commits() {
    let net = MemNetwork::new();
    let nodes = start_cluster(&net, TokioClock::starting_at(EPOCH_MS)).await;
    let all: BTreeSet<u64> = nodes.keys().copied().collect();
    assert_eq!(propose(&nodes, &all, fw("before")).await, 1);
    let leader = wait_leader(&nodes[&1], &all).await;
    let term = nodes[&leader].status().term;
    let followers: Vec<u64> = all.iter().copied().filter(|&f| f != leader).collect();

    // The followers' replies are lost, for 500 ms (virtual): longer than
    // the lease (the maximum election timeout, 240 ms), shorter than
    // lease_wait_ms_max (2 s).
    for &f in &followers {
        net.cut(f, leader);
    }
    let (net2, fs) = (net.clone(), followers.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await; // the fault's length
        for f in fs {
            net2.restore(f, leader);
        }
    });
    // By the time this write reaches the leader, its lease has lapsed
    // (300 ms without a reply).
    tokio::time::sleep(Duration::from_millis(300)).await; // the fault's length
    let i = nodes[&leader]
        .propose(fw("during"))
        .await
        .expect("the write waits for the lease and commits");
    assert_eq!(i, 2);
    assert_eq!(
        nodes[&leader].status().term,
        term,
        "no election: the followers heard the leader throughout"
    );

    // Replies lost for good: the write fails once lease_wait_ms_max is up,
    // naming that limit.
    for &f in &followers {
        net.cut(f, leader);
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the lease lapses
    let t0 = tokio::time::Instant::now();
    let err = nodes[&leader]
        .propose(fw("lost"))
        .await
        .expect_err("no quorum replies: the write fails");
    assert!(
        matches!(
            err,
            kaon_log::ProposeError::LeaseLapsed { waited_ms: 2_000 }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("lease_wait_ms_max = 2000 ms"),
        "{err}"
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(2_000),
        "it waited lease_wait_ms_max first: {:?}",
        t0.elapsed()
    );
    net.heal();
}
