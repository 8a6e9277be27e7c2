//! In-process clusters on loopback: election, replication, leader loss,
//! restart, snapshot catch-up with the event archive.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use kaon_core::events::{Body, pb};
use kaon_log::node::NodeConfig;
use kaon_log::{ProposeError, RaftNode};
use openraft::async_runtime::WatchReceiver;

/// Generous bound for anything that should take a few election timeouts.
const DEADLINE: Duration = Duration::from_secs(10);

fn fw(id: String) -> Body {
    Body::FrameworkRegistered(pb::FrameworkRegistered { framework_id: id })
}

fn config(id: u64, dir: &Path, listen: SocketAddr) -> NodeConfig {
    NodeConfig::new(id, listen, dir.join(format!("n{id}")))
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Waits until `observer` sees a leader that is one of `alive`.
async fn wait_leader(observer: &RaftNode, alive: &BTreeSet<u64>) -> u64 {
    let m = observer
        .raft()
        .wait(Some(DEADLINE))
        .metrics(
            |m| matches!(m.current_leader, Some(l) if alive.contains(&l)),
            "a live leader",
        )
        .await
        .expect("a leader within the deadline");
    m.current_leader.unwrap()
}

/// Proposes through whichever live node leads, retrying leader changes
/// until the deadline.
async fn propose(nodes: &BTreeMap<u64, RaftNode>, body: Body) -> u64 {
    let alive: BTreeSet<u64> = nodes.keys().copied().collect();
    let observer = nodes.values().next().unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let leader = wait_leader(observer, &alive).await;
        match nodes[&leader].propose(body.clone()).await {
            Ok(i) => return i,
            Err(e) => {
                assert!(Instant::now() < deadline, "proposal not committed: {e}");
                // Wait for the metrics to move (new term / leader) rather
                // than sleeping.
                let mut rx = observer.raft().metrics();
                let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
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

fn assert_same_state(nodes: &BTreeMap<u64, RaftNode>, events: u64) {
    let mut digests = BTreeSet::new();
    let mut heads = BTreeSet::new();
    let mut archives = BTreeSet::new();
    for (id, n) in nodes {
        digests.insert(n.digest());
        let r = n
            .verify_chain()
            .unwrap_or_else(|e| panic!("node {id}: {e}"));
        assert_eq!(r.events, events, "node {id}");
        heads.insert(r.head);
        let evs = n.read_events(1, events).unwrap();
        assert_eq!(evs.len() as u64, events, "node {id}");
        archives.insert(format!("{evs:?}"));
    }
    assert_eq!(digests.len(), 1, "State::digest differs between nodes");
    assert_eq!(heads.len(), 1, "hash chains differ");
    assert_eq!(archives.len(), 1, "archives differ");
}

async fn start_cluster(
    dir: &Path,
    ids: &[u64],
    tune: impl Fn(&mut NodeConfig),
) -> BTreeMap<u64, RaftNode> {
    let mut nodes = BTreeMap::new();
    for &id in ids {
        let mut c = config(id, dir, any_port());
        tune(&mut c);
        nodes.insert(id, RaftNode::start(c).await.unwrap());
    }
    let members: BTreeMap<u64, String> = nodes
        .iter()
        .map(|(id, n)| (*id, n.addr().to_string()))
        .collect();
    nodes
        .values()
        .next()
        .unwrap()
        .initialize_with(members)
        .await
        .unwrap();
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_survive_leader_loss_and_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = start_cluster(dir.path(), &[1, 2, 3], |_| {}).await;
    let all: BTreeSet<u64> = nodes.keys().copied().collect();
    let leader = wait_leader(&nodes[&1], &all).await;

    // Replication: event indexes are 1, 2, 3, ... with no gaps, even though
    // the Raft log also holds the initial membership and blank entries.
    for i in 1..=20u64 {
        assert_eq!(propose(&nodes, fw(format!("fw-{i}"))).await, i);
    }
    let follower = *all.iter().find(|&&id| id != leader).unwrap();
    match nodes[&follower].propose(fw("nope".into())).await {
        Err(ProposeError::NotLeader { leader: l, .. }) => assert_eq!(l, Some(leader)),
        other => panic!("follower accepted a proposal: {other:?}"),
    }
    // Linearizable reads: on the leader they see every committed event;
    // a follower refuses and names the leader.
    let seen = nodes[&leader]
        .read_linearizable(|s| (s.applied_index, s.framework_id.clone()))
        .await
        .unwrap();
    assert_eq!(seen, (20, Some("fw-20".to_string())));
    match nodes[&follower]
        .read_linearizable(|s| s.applied_index)
        .await
    {
        Err(ProposeError::NotLeader { leader: l, .. }) => assert_eq!(l, Some(leader)),
        other => panic!("follower served a linearizable read: {other:?}"),
    }
    wait_all(&nodes, 20).await;
    assert_same_state(&nodes, 20);

    // Kill the leader: the others elect a new one that commits in time.
    let old = nodes.remove(&leader).unwrap();
    let old_addr = old.addr();
    old.shutdown().await;
    let t0 = Instant::now();
    let rest: BTreeSet<u64> = nodes.keys().copied().collect();
    let new_leader = wait_leader(nodes.values().next().unwrap(), &rest).await;
    assert_ne!(new_leader, leader);
    assert_eq!(propose(&nodes, fw("after-failover".into())).await, 21);
    let failover = t0.elapsed();
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    eprintln!("leader {leader} killed; node {new_leader} committed event 21 after {failover:?}");
    for i in 22..=30u64 {
        assert_eq!(propose(&nodes, fw(format!("fw-{i}"))).await, i);
    }

    // The old leader restarts from its data directory and catches up.
    let restarted = RaftNode::start(config(leader, dir.path(), old_addr))
        .await
        .unwrap();
    nodes.insert(leader, restarted);
    wait_all(&nodes, 30).await;
    assert_same_state(&nodes, 30);
    for (_, n) in nodes {
        n.shutdown().await;
    }
}

/// As in a container deployment: every node listens on the wildcard
/// address, advertises a host name (`localhost:PORT`, resolved when dialed)
/// and initialises from its own `peers`; the membership records the
/// advertised names, not `0.0.0.0`, and the cluster replicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_listeners_advertise_dialable_names() {
    let dir = tempfile::tempdir().unwrap();
    let ports: BTreeMap<u64, u16> = (1..=3u64)
        .map(|id| {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (id, l.local_addr().unwrap().port())
        })
        .collect();
    let name = |id: u64| format!("localhost:{}", ports[&id]);
    let mut nodes = BTreeMap::new();
    for (&id, &port) in &ports {
        let mut c = config(id, dir.path(), SocketAddr::from(([0, 0, 0, 0], port)));
        c.advertise = Some(name(id));
        c.peers = ports
            .keys()
            .filter(|&&j| j != id)
            .map(|&j| (j, name(j)))
            .collect();
        let n = RaftNode::start(c).await.unwrap();
        assert_eq!(n.advertised_addr(), name(id));
        nodes.insert(id, n);
    }
    // Every node tries to form the cluster, as `kaon server --peer ...`
    // does; all but the first are refused or find it formed.
    for n in nodes.values() {
        let _ = n.initialize().await;
    }
    let all: BTreeSet<u64> = nodes.keys().copied().collect();
    wait_leader(&nodes[&1], &all).await;
    for i in 1..=3u64 {
        assert_eq!(propose(&nodes, fw(format!("fw-{i}"))).await, i);
    }
    wait_all(&nodes, 3).await;
    assert_same_state(&nodes, 3);
    for n in nodes.values() {
        let addrs: BTreeMap<u64, String> = n
            .status()
            .members
            .into_iter()
            .map(|m| (m.id, m.addr))
            .collect();
        assert_eq!(addrs, (1..=3).map(|j| (j, name(j))).collect());
    }
    for (_, n) in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot_and_receives_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let tune = |c: &mut NodeConfig| {
        c.snapshot_every_entries = 10;
        c.keep_entries_after_snapshot = 0;
    };
    let mut nodes = start_cluster(dir.path(), &[1, 2, 3], tune).await;
    // Node 3 has the first 5 events, then goes down and misses the rest.
    for i in 1..=5u64 {
        assert_eq!(propose(&nodes, fw(format!("fw-{i}"))).await, i);
    }
    wait_all(&nodes, 5).await;
    let lagging = nodes.remove(&3).unwrap();
    let lagging_addr = lagging.addr();
    lagging.shutdown().await;

    const EVENTS: u64 = 35;
    for i in 6..=EVENTS {
        assert_eq!(propose(&nodes, fw(format!("fw-{i}"))).await, i);
    }
    wait_all(&nodes, EVENTS).await;
    let alive: BTreeSet<u64> = nodes.keys().copied().collect();
    let leader_id = wait_leader(&nodes[&1], &alive).await;
    let leader = &nodes[&leader_id];

    // Compact the leader's Raft log: snapshot, then purge up to it.
    leader.raft().trigger().snapshot().await.unwrap();
    let m = leader
        .raft()
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= EVENTS),
            "snapshot built",
        )
        .await
        .unwrap();
    let snap_index = m.snapshot.unwrap().index;
    leader.raft().trigger().purge_log(snap_index).await.unwrap();
    leader
        .raft()
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= snap_index),
            "log purged",
        )
        .await
        .unwrap();
    let log = leader.log_store().verify().unwrap();
    assert!(
        log.first_index.is_none_or(|f| f > snap_index),
        "leader log still starts at {:?}",
        log.first_index
    );
    // Compaction never loses history: the archive still has event 1 on.
    let evs = leader.read_events(1, EVENTS).unwrap();
    assert_eq!(evs.len() as u64, EVENTS);
    assert_eq!(evs[0].index, 1);

    // Node 3 comes back 30 events behind the leader's purged log: the
    // leader must send a snapshot (with only the archive suffix it lacks).
    let node3 = RaftNode::start(config(3, dir.path(), lagging_addr))
        .await
        .unwrap();
    nodes.insert(3, node3);
    wait_all(&nodes, EVENTS).await;
    let installed = nodes[&3]
        .raft()
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= snap_index),
            "snapshot installed",
        )
        .await;
    assert!(
        installed.is_ok(),
        "node 3 did not catch up by snapshot: {installed:?}"
    );
    assert_same_state(&nodes, EVENTS);

    // And it keeps replicating normally afterwards.
    assert_eq!(
        propose(&nodes, fw("after-snapshot".into())).await,
        EVENTS + 1
    );
    wait_all(&nodes, EVENTS + 1).await;
    assert_same_state(&nodes, EVENTS + 1);
    for (_, n) in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_rpc_payloads_are_rejected_not_fatal() {
    use kaon_log::pb::raft_service_client::RaftServiceClient;
    use kaon_log::pb::{RaftPayload, SnapshotChunk};
    let dir = tempfile::tempdir().unwrap();
    let nodes = start_cluster(dir.path(), &[1], |_| {}).await;
    let node = &nodes[&1];
    wait_leader(node, &BTreeSet::from([1])).await;
    let mut client = RaftServiceClient::connect(format!("http://{}", node.addr()))
        .await
        .unwrap();
    let garbage = RaftPayload {
        data: vec![0xde, 0xad, 0xbe, 0xef],
        ..RaftPayload::default()
    };
    let e = client.append_entries(garbage.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let e = client.vote(garbage).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let chunks = vec![SnapshotChunk {
        meta: vec![1, 2, 3],
        data: vec![4, 5, 6],
        ..SnapshotChunk::default()
    }];
    let e = client
        .install_snapshot(futures_util::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    // A message of a newer kaon (a wire version this node does not know) is
    // refused as such, naming the versions, before its bytes are read.
    let newer = kaon_log::version::RAFT_WIRE_VERSION + 1;
    let e = client
        .append_entries(RaftPayload {
            data: vec![0xde, 0xad],
            wire_version: newer,
            event_schema: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    assert!(
        e.message().contains(&format!("wire version {newer}"))
            && e.message().contains("upgrade this node"),
        "{e}"
    );
    let chunks = vec![SnapshotChunk {
        meta: vec![1, 2, 3],
        wire_version: newer,
        ..SnapshotChunk::default()
    }];
    let e = client
        .install_snapshot(futures_util::stream::iter(chunks))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    // The node is unharmed: it still commits.
    assert_eq!(propose(&nodes, fw("still-alive".into())).await, 1);
    for (_, n) in nodes {
        n.shutdown().await;
    }
}
