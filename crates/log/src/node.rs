//! [`RaftNode`]: one kaon replica — stores, Raft, and the RPC server.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kaon_core::State;
use kaon_core::events::{self, Body, Event};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, ForwardReason, LinearizableReadError, RaftError};
use openraft::impls::BasicNode;
use openraft::{Config, ReadPolicy, SnapshotPolicy};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::{Clock, SystemClock};
use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::network::{NetworkFactory, RaftRpcServer, Transport};
use crate::state_machine::{ChainReport, StateMachineStore};
use crate::storage::Storage;
use crate::types::Proposal;
use crate::types::alias::Raft;

/// Watches a node's Raft metrics without exposing openraft types.
pub struct MetricsWatch(tokio::sync::watch::Receiver<()>);

impl MetricsWatch {
    /// Returns when the metrics change, or after `timeout`; false once the
    /// node has shut down (nothing will change any more).
    pub async fn changed(&mut self, timeout: Duration) -> bool {
        !matches!(
            tokio::time::timeout(timeout, self.0.changed()).await,
            Ok(Err(_))
        )
    }
}

/// A cluster member as the membership config names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Node id.
    pub id: u64,
    /// Raft RPC address.
    pub addr: String,
    /// Voter (false: learner).
    pub voter: bool,
}

/// A node's view of the cluster (`RaftNode::status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// Leader, Follower, Candidate, Learner, Shutdown.
    pub state: String,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Last Raft log index held here.
    pub last_log_index: u64,
    /// Last Raft log index known committed.
    pub committed_index: u64,
    /// Last Raft log index applied here.
    pub applied_index: u64,
    /// Events durably applied here (the event index).
    pub applied_event_index: u64,
    /// Members.
    pub members: Vec<ClusterMember>,
    /// On the leader: matched Raft log index per follower (lag = committed - matched).
    pub replication: Vec<(u64, u64)>,
}

/// How to run one replica. Timeouts default to values for a LAN.
///
/// The node's outside world is handed in here, not reached for: how Raft
/// RPCs travel ([`Transport`]), where the databases live ([`Storage`]) and
/// the wall clock events are stamped with ([`Clock`]). Production uses the
/// defaults of [`NodeConfig::new`] (gRPC, files, system clock); a
/// simulation runs several nodes in one process over a
/// [`crate::MemNetwork`] with [`crate::MemStorage`] and a
/// [`crate::TokioClock`] under paused tokio time.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (unique in the cluster, > 0 by convention).
    pub id: u64,
    /// Address to listen on for Raft RPC; port 0 picks a free port (see
    /// [`RaftNode::addr`]). On a [`Transport::Mem`] network it is only a
    /// name peers dial (nothing is bound).
    pub listen: SocketAddr,
    /// The Raft address (`host:port`) peers dial for this node, recorded in
    /// the membership by [`RaftNode::initialize`]. `None`: the bound listen
    /// address, which peers cannot dial when it is a wildcard (`0.0.0.0`)
    /// or behind NAT, e.g. in a container: give a name such as `kaon1:7071`.
    pub advertise: Option<String>,
    /// The other members (id → `host:port`), used by [`RaftNode::initialize`];
    /// this node also dials them there (whatever address the membership
    /// records for them).
    pub peers: BTreeMap<u64, String>,
    /// Directory for `raft-log.redb` and `state.redb` (with
    /// [`Storage::Files`]).
    pub data_dir: PathBuf,
    /// How Raft RPCs travel: gRPC over TCP (default) or an in-process
    /// network.
    pub transport: Transport,
    /// Where the databases live: files in `data_dir` (default) or memory.
    pub storage: Storage,
    /// The wall clock proposals are stamped with (`Event.time_unix_ms`).
    pub clock: Arc<dyn Clock>,
    /// Leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Election timeout range, ms: a follower that hears no leader for a
    /// random time in this range starts an election. Several heartbeats
    /// must fit in the minimum.
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot (and allow purging the Raft log) every this many
    /// log entries.
    pub snapshot_every_entries: u64,
    /// Raft log entries kept after a snapshot (for followers slightly behind).
    pub keep_entries_after_snapshot: u64,
    /// How long an AppendEntries RPC carrying entries may take before the
    /// leader gives it up and sends it again, ms. openraft's own deadline
    /// is the heartbeat interval (40 ms), which a busy follower's fsync of
    /// a large batch misses on 2 loaded cores: every try was cut off, no
    /// follower acknowledged, the leader lease ran out and writes were
    /// refused without any fault (issue 8, the bench's 2% errors). A dead
    /// peer still fails at once (connection refused); only a hung one waits
    /// this long, and only its own replication stream does.
    pub append_timeout_ms: u64,
    /// How long a proposal waits for the leader lease to be renewed, ms.
    /// openraft refuses a write while the leader has not heard a quorum
    /// within its lease (the maximum election timeout) although it still
    /// leads; such a refusal happens before the entry is appended, so it is
    /// retried (every heartbeat) for up to this long before the write fails
    /// as "not the leader": a slow moment is a slow write, not an error.
    pub lease_wait_ms_max: u64,
    /// How long adding a node waits for it to catch up as a learner before
    /// the call fails (it then stays a learner, which does not count for
    /// quorum, and can be removed), ms.
    pub catch_up_timeout_ms: u64,
    /// A peer counts as reachable when the leader heard from it within
    /// this, ms: membership changes need a reachable majority of voters
    /// ([`crate::membership::check_quorum`]), and a leader that has not
    /// heard from a quorum within it reports itself not ready
    /// ([`RaftNode::readiness`]).
    pub contact_ms_max: u64,
    /// The newest event schema this node says it applies (default: all
    /// it knows, `kaon_core::events::EVENT_SCHEMA`). Lower pins what the
    /// cluster writes to what an older kaon reads (`crate::version`).
    pub event_schema: u32,
}

impl NodeConfig {
    /// A config with LAN defaults: heartbeat 40 ms, election 120–240 ms,
    /// snapshot every 10 000 entries, keep 1 000, appends may take 1 s,
    /// writes wait up to 2 s for a lapsed leader lease, a new node has 10 s
    /// to catch up, a peer is reachable when heard from within 1 s.
    pub fn new(id: u64, listen: SocketAddr, data_dir: PathBuf) -> NodeConfig {
        NodeConfig {
            id,
            listen,
            advertise: None,
            peers: BTreeMap::new(),
            data_dir,
            transport: Transport::Grpc,
            storage: Storage::Files,
            clock: Arc::new(SystemClock),
            heartbeat_ms: 40,
            election_timeout_ms: (120, 240),
            snapshot_every_entries: 10_000,
            keep_entries_after_snapshot: 1_000,
            append_timeout_ms: 1_000,
            lease_wait_ms_max: 2_000,
            catch_up_timeout_ms: 10_000,
            contact_ms_max: 1_000,
            event_schema: kaon_core::events::EVENT_SCHEMA,
        }
    }
}

/// Why a node could not start or be initialised.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Opening a store failed (names the file).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The Raft configuration is invalid.
    #[error("raft config: {0}")]
    Config(String),
    /// Binding the listen address failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// openraft failed.
    #[error("raft: {0}")]
    Raft(String),
    /// A request named something that cannot be (a bad address, an id in
    /// use, a change that is no change).
    #[error("{0}")]
    Invalid(String),
    /// The change would leave fewer than a quorum of reachable voters, or a
    /// new node did not catch up in time; nothing that would cost the
    /// quorum was changed.
    #[error("{0}")]
    Refused(String),
}

/// Why a proposal was not committed.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; retry on `leader` if known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<u64>,
        /// Its address.
        leader_addr: Option<String>,
    },
    /// The entry was committed but carried no event (cannot happen for a
    /// normal entry; reported rather than panicking).
    #[error("committed entry {log_index} produced no event")]
    NoEvent {
        /// Raft log index.
        log_index: u64,
    },
    /// Raft failed (shut down, storage error, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// This node leads, but no quorum answered it within its lease, nor
    /// within `NodeConfig::lease_wait_ms_max` after (nothing was appended).
    #[error(
        "not the leader for now: no quorum answered within the leader lease, nor within lease_wait_ms_max = {waited_ms} ms"
    )]
    LeaseLapsed {
        /// The limit that ran out, ms.
        waited_ms: u64,
    },
}

/// One running replica.
pub struct RaftNode {
    id: u64,
    /// `NodeConfig::lease_wait_ms_max` and the heartbeat interval (the
    /// retry period), for `propose_many`.
    lease_wait: Duration,
    heartbeat: Duration,
    addr: SocketAddr,
    advertise: String,
    peers: BTreeMap<u64, String>,
    raft: Raft,
    sm: StateMachineStore,
    log: LogStore,
    server: std::sync::Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
    clock: Arc<dyn Clock>,
    /// `NodeConfig::catch_up_timeout_ms`.
    catch_up: Duration,
    /// `NodeConfig::contact_ms_max`.
    contact_max: Duration,
    /// This node's and its peers' versions (`crate::version`).
    versions: crate::version::Versions,
}

/// Whether a node can serve linearizable reads and writes now, and if not,
/// why ([`RaftNode::readiness`]; gRPC health and `/readyz` report it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It can: it leads and heard from a quorum recently, or it knows a
    /// leader.
    Ready,
    /// It cannot; the reason names what is missing.
    NotReady(String),
}

impl RaftNode {
    /// Opens the stores (`config.storage`: files in `config.data_dir` or
    /// memory), starts Raft and serves Raft RPC on `config.listen` over
    /// `config.transport`.
    pub async fn start(config: NodeConfig) -> Result<RaftNode, NodeError> {
        let raft_config = Config {
            cluster_name: "kaon".into(),
            heartbeat_interval: config.heartbeat_ms,
            election_timeout_min: config.election_timeout_ms.0,
            election_timeout_max: config.election_timeout_ms.1,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every_entries),
            max_in_snapshot_log_to_keep: config.keep_entries_after_snapshot,
            // A restarted leader must not resume leading on its own: it
            // would act (and take the Mesos framework) before learning that
            // another node leads now. It rejoins through an election.
            enable_leader_restore: Some(false),
            ..Default::default()
        }
        .validate()
        .map_err(|e| NodeError::Config(e.to_string()))?;
        let (storage, dir) = (config.storage.clone(), config.data_dir.clone());
        let open = move || {
            Ok::<_, StoreError>((
                LogStore::open_on(&storage, &dir)?,
                StateMachineStore::open_on(&storage, &dir)?,
            ))
        };
        // Memory opens inline (a simulation must not depend on OS threads).
        let (log, sm) = match &config.storage {
            Storage::Files => tokio::task::spawn_blocking(open)
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))??,
            Storage::Memory(_) => open()?,
        };
        let listen_err = |source| NodeError::Listen {
            addr: config.listen,
            source,
        };
        // Bind before starting Raft, so a taken address fails the start
        // without a Raft to stop.
        enum Bound {
            Tcp(tokio::net::TcpListener),
            Tls(tokio::net::TcpListener, Arc<crate::tls::Tls>),
            Mem(crate::MemNetwork),
        }
        let (bound, addr) = match &config.transport {
            Transport::Grpc | Transport::GrpcTls(_) => {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .map_err(listen_err)?;
                let addr = listener.local_addr().map_err(listen_err)?;
                match &config.transport {
                    Transport::GrpcTls(tls) => (Bound::Tls(listener, tls.clone()), addr),
                    _ => (Bound::Tcp(listener), addr),
                }
            }
            Transport::Mem(net) => (
                Bound::Mem(net.clone()),
                net.bind(config.listen).map_err(listen_err)?,
            ),
        };
        let versions = crate::version::Versions::new(config.event_schema);
        let raft = Raft::new(
            config.id,
            Arc::new(raft_config),
            NetworkFactory::new(config.id, config.transport.clone(), config.peers.clone())
                .with_append_timeout(Duration::from_millis(config.append_timeout_ms))
                .with_state_machine(sm.clone())
                .with_versions(versions.clone()),
            log.clone(),
            sm.clone(),
        )
        .await
        .map_err(|e| {
            if let Bound::Mem(net) = &bound {
                net.unbind(addr);
            }
            NodeError::Raft(e.to_string())
        })?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let id = config.id;
        let server = match bound {
            Bound::Tcp(listener) => {
                let svc = RaftRpcServer::service(raft.clone(), sm.clone(), versions.clone());
                let incoming =
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
                tokio::spawn(serve_raft(id, svc, incoming, stop_rx))
            }
            Bound::Tls(listener, tls) => {
                let svc = RaftRpcServer::service(raft.clone(), sm.clone(), versions.clone());
                let incoming = tls.incoming(listener, crate::tls::Side::Peers);
                tokio::spawn(serve_raft(id, svc, incoming, stop_rx))
            }
            Bound::Mem(net) => {
                net.serve(
                    addr,
                    id,
                    RaftRpcServer::new(raft.clone(), sm.clone(), versions.clone()),
                );
                // Stopped (or dropped): peers' calls are refused from now on.
                tokio::spawn(async move {
                    let _ = stop_rx.await;
                    net.unbind(addr);
                })
            }
        };
        Ok(RaftNode {
            id: config.id,
            lease_wait: Duration::from_millis(config.lease_wait_ms_max),
            heartbeat: Duration::from_millis(config.heartbeat_ms.max(1)),
            addr,
            advertise: config.advertise.unwrap_or_else(|| addr.to_string()),
            peers: config.peers,
            raft,
            sm,
            log,
            server: std::sync::Mutex::new(Some((stop_tx, server))),
            clock: config.clock,
            catch_up: Duration::from_millis(config.catch_up_timeout_ms),
            contact_max: Duration::from_millis(config.contact_ms_max),
            versions,
        })
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address Raft RPC is served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address peers dial for this node ([`NodeConfig::advertise`], or
    /// the bound address).
    pub fn advertised_addr(&self) -> &str {
        &self.advertise
    }

    /// The openraft handle (metrics, triggers).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The Raft log store.
    pub fn log_store(&self) -> &LogStore {
        &self.log
    }

    /// The state machine store (state, archive).
    pub fn state_machine(&self) -> &StateMachineStore {
        &self.sm
    }

    /// Initialises a new cluster of this node and its configured peers
    /// (call on one node, once).
    pub async fn initialize(&self) -> Result<(), NodeError> {
        let mut members = self.peers.clone();
        members.insert(self.id, self.advertise.clone());
        self.initialize_with(members).await
    }

    /// Initialises a new cluster with exactly `members` (id → `host:port`,
    /// this node included). Useful when peers listen on ports picked at
    /// start.
    pub async fn initialize_with(&self, members: BTreeMap<u64, String>) -> Result<(), NodeError> {
        let members: BTreeMap<u64, BasicNode> = members
            .into_iter()
            .map(|(id, addr)| (id, BasicNode { addr }))
            .collect();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Leader only: adds node `id` at Raft address `addr`: as a learner
    /// first, waiting until it holds the log up to the membership entry
    /// that added it (by snapshot, archive included, if the log was
    /// compacted), then, if `voter`, promotes it. Refused, with nothing
    /// changed that costs the quorum: a bad address, an id in use at
    /// another address, a node that does not catch up within
    /// `NodeConfig::catch_up_timeout_ms` (it stays a learner and the error
    /// says how to remove it), and a promotion that would leave fewer than
    /// a quorum of reachable voters. Adding a member again as it is, is a
    /// no-op (a retried call succeeds).
    pub async fn add_node(&self, id: u64, addr: &str, voter: bool) -> Result<(), NodeError> {
        crate::membership::parse_raft_addr(addr)
            .map_err(|e| NodeError::Invalid(format!("raft address {e}")))?;
        if id == 0 {
            return Err(NodeError::Invalid("node ids start at 1".into()));
        }
        let members = self.status().members;
        if let Some(m) = members.iter().find(|m| m.id == id) {
            if m.addr != addr {
                return Err(NodeError::Invalid(format!(
                    "node {id} is already a member at {}; remove it first to give it another address",
                    m.addr
                )));
            }
            if m.voter {
                return if voter {
                    Ok(())
                } else {
                    Err(NodeError::Invalid(format!(
                        "node {id} is a voter; remove it and add it again to make it a learner"
                    )))
                };
            }
        }
        let added = self
            .raft
            .add_learner(id, BasicNode { addr: addr.into() }, false)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let target = added.log_id.index();
        let caught_up = self
            .raft
            .wait(Some(self.catch_up))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&id).cloned().flatten())
                        .is_some_and(|l| l.index() >= target)
                },
                "the new learner caught up",
            )
            .await;
        if caught_up.is_err() {
            let matched = self
                .status()
                .replication
                .iter()
                .find(|(n, _)| *n == id)
                .map(|(_, i)| *i)
                .unwrap_or(0);
            return Err(NodeError::Refused(format!(
                "node {id} was added as a learner but did not catch up within \
                 catch_up_timeout_ms = {} ms (it holds the log up to index {matched} of {target}): \
                 is a kaon server started with --join listening on {addr}? It stays a learner, \
                 which does not count for quorum: run add-node again once it is up, or \
                 `kaon cluster remove-node {id}`",
                self.catch_up.as_millis()
            )));
        }
        if !voter {
            return Ok(());
        }
        let old = self.voters();
        let mut new = old.clone();
        new.insert(id);
        let reachable = self.reachable();
        crate::membership::check_quorum(&old, &reachable, "before any change")
            .and_then(|()| {
                crate::membership::check_quorum(
                    &new,
                    &reachable,
                    &format!("after adding node {id}"),
                )
            })
            .map_err(NodeError::Refused)?;
        self.raft
            .change_membership(new, true)
            .await
            .map(|_| ())
            .map_err(|e| NodeError::Raft(e.to_string()))
    }

    /// Leader only: the voters and learners the leader heard from within
    /// `NodeConfig::contact_ms_max`, itself included. Empty elsewhere.
    pub fn reachable(&self) -> BTreeSet<u64> {
        use openraft::Instant as _;
        let m = self.raft.metrics().borrow_watched().clone();
        let Some(heartbeat) = m.heartbeat.as_ref() else {
            return BTreeSet::new();
        };
        let mut out = BTreeSet::from([self.id]);
        for (id, at) in heartbeat {
            if let Some(at) = at
                && at.elapsed() <= self.contact_max
            {
                out.insert(*id);
            }
        }
        out
    }

    /// Whether this node can serve linearizable reads and writes now: a
    /// leader that heard from a quorum within `NodeConfig::contact_ms_max`,
    /// or a follower or learner that knows a leader. Not ready: no leader
    /// known (an election, a lost majority), a leader cut off from its
    /// quorum, a node removed from the membership.
    pub fn readiness(&self) -> Readiness {
        use openraft::Instant as _;
        let m = self.raft.metrics().borrow_watched().clone();
        if m.membership_config
            .membership()
            .get_node(&self.id)
            .is_none()
            && m.membership_config.log_id().is_some()
        {
            return Readiness::NotReady(format!(
                "node {} is not a member of the cluster (it was removed, or never added)",
                self.id
            ));
        }
        match m.current_leader {
            None => Readiness::NotReady(format!(
                "node {} knows no leader (state {:?}, term {}): an election is under way, \
                 or a majority of voters is unreachable",
                self.id, m.state, m.current_term
            )),
            Some(l) if l == self.id => {
                let fresh = m
                    .last_quorum_acked
                    .as_ref()
                    .is_some_and(|at| at.elapsed() <= self.contact_max);
                if fresh || m.membership_config.membership().voter_ids().count() == 1 {
                    Readiness::Ready
                } else {
                    Readiness::NotReady(format!(
                        "node {} leads term {} but no quorum answered it within \
                         contact_ms_max = {} ms",
                        self.id,
                        m.current_term,
                        self.contact_max.as_millis()
                    ))
                }
            }
            Some(_) => Readiness::Ready,
        }
    }

    /// Proposes one event and waits until it is committed and applied
    /// here; returns its event index. The leader stamps the time; the
    /// index is stamped when the entry is applied.
    pub async fn propose(&self, body: Body) -> Result<u64, ProposeError> {
        let indexes = self.propose_many(vec![body]).await?;
        Ok(indexes[0])
    }

    /// Reads the state linearizably (leader only): confirms leadership with
    /// a quorum (ReadIndex) and waits until everything committed before the
    /// call is applied here, then runs `f`. Sees every event whose
    /// `propose` returned before this call, on any node.
    pub async fn read_linearizable<R>(
        &self,
        f: impl FnOnce(&State) -> R,
    ) -> Result<R, ProposeError> {
        match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => Ok(self.sm.with_state(f)),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(fw))) => {
                Err(not_leader(fw))
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// The newest event schema every member (voters and learners) applies,
    /// as far as this node knows (a leader hears it in every reply; see `crate::version`): what
    /// the leader may write.
    pub fn cluster_event_schema(&self) -> u32 {
        // Learners too: one catching up applies what the voters write.
        let members: Vec<u64> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        self.versions.cluster_event_schema(self.id, members)
    }

    /// The leader this node currently knows of.
    pub fn current_leader(&self) -> Option<u64> {
        // Copy out of the watch: never hold the borrow across an await.
        self.raft.metrics().borrow_watched().current_leader
    }

    /// Waits until this node knows a leader, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "leader known")
            .await
            .ok()
            .and_then(|m| m.current_leader)
    }

    /// What an SRE asks about the cluster, from this node's point of view
    /// (copied out of the metrics watch; no borrow is held).
    pub fn status(&self) -> ClusterStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let members = m
            .membership_config
            .nodes()
            .map(|(id, n)| ClusterMember {
                id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(id, log)| (*id, log.as_ref().map(|l| l.index()).unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        ClusterStatus {
            id: m.id,
            term: m.current_term,
            state: format!("{:?}", m.state),
            leader: m.current_leader,
            last_log_index: m.last_log_index.unwrap_or(0),
            committed_index: m
                .cluster_committed
                .or(m.local_committed)
                .map(|l| l.index())
                .unwrap_or(0),
            applied_index: m.last_applied.map(|l| l.index()).unwrap_or(0),
            applied_event_index: self.sm.applied_event_index(),
            members,
            replication,
        }
    }

    /// This node's latest snapshot, if it has one (metrics).
    pub fn snapshot_info(&self) -> Option<crate::SnapshotInfo> {
        self.sm.snapshot_info()
    }

    /// A stream of "something in the metrics changed" ticks (leadership,
    /// term, indexes), for supervisors; see [`MetricsWatch::changed`].
    pub fn metrics_watch(&self) -> MetricsWatch {
        let (tx, rx) = tokio::sync::watch::channel(());
        let mut metrics = self.raft.metrics();
        tokio::spawn(async move {
            // Ends when the node shuts down or every watcher is gone.
            while metrics.changed().await.is_ok() {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        MetricsWatch(rx)
    }

    /// Waits until this node applied at least `event_index` events.
    pub async fn wait_for_event(&self, event_index: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.raft.metrics();
        loop {
            if self.sm.applied_event_index() >= event_index {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            // Woken by any metrics change (applied index moves with it).
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), rx.changed()).await;
        }
    }

    /// Runs `f` on the current state.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.sm.with_state(f)
    }

    /// [`State::digest`] of this replica.
    pub fn digest(&self) -> [u8; 32] {
        self.sm.digest()
    }

    /// Archived events `from..=to` (complete from event 1).
    pub fn read_events(&self, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        self.sm.read_events(from, to)
    }

    /// Recomputes the hash chain over the whole archive.
    pub fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        self.sm.verify_chain()
    }

    /// Voters of the current membership.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Proposes several events in one batch (one message to Raft, one log
    /// append and one replication round for all of them) and waits until
    /// all are committed and applied; returns their event indexes in order.
    /// The leader's runtime commits a decision's events this way.
    pub async fn propose_many(&self, bodies: Vec<Body>) -> Result<Vec<u64>, ProposeError> {
        let deadline = tokio::time::Instant::now() + self.lease_wait;
        loop {
            match self.try_propose_many(&bodies).await {
                Err(Attempt::LeaseLapsed) if tokio::time::Instant::now() < deadline => {
                    // Refused before anything was appended: safe to retry.
                    tracing::debug!(
                        node = self.id,
                        "leader lease lapsed; the write waits for it"
                    );
                    tokio::time::sleep(self.heartbeat).await;
                }
                Err(Attempt::LeaseLapsed) => {
                    let waited_ms = self.lease_wait.as_millis() as u64;
                    tracing::warn!(
                        node = self.id,
                        waited_ms,
                        "leader lease not renewed within lease_wait_ms_max: the write fails"
                    );
                    return Err(ProposeError::LeaseLapsed { waited_ms });
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Ok(out) => return Ok(out),
            }
        }
    }

    async fn try_propose_many(&self, bodies: &[Body]) -> Result<Vec<u64>, Attempt> {
        use futures_util::StreamExt;
        let now_ms = self.clock.now_unix_ms();
        let n = bodies.len();
        let proposals: Vec<Proposal> = bodies
            .iter()
            .map(|body| Proposal {
                event: events::encode(&Event {
                    index: 0,
                    time_unix_ms: now_ms,
                    body: Some(body.clone()),
                }),
            })
            .collect();
        let failed = |e: ProposeError| Attempt::Failed(e);
        let mut results = self
            .raft
            .client_write_many(proposals)
            .await
            .map_err(|e| failed(ProposeError::Raft(e.to_string())))?;
        let mut out = Vec::with_capacity(n);
        while let Some(r) = results.next().await {
            match r.map_err(|e| failed(ProposeError::Raft(e.to_string())))? {
                Ok(resp) => out.push(resp.response.event_index.ok_or(failed(
                    ProposeError::NoEvent {
                        log_index: resp.log_id.index,
                    },
                ))?),
                // openraft checks the lease for the whole batch before it
                // appends any of it: nothing of this batch is in the log.
                Err(ClientWriteError::ForwardToLeader(f))
                    if out.is_empty() && f.reason == ForwardReason::LeaseExpired =>
                {
                    return Err(Attempt::LeaseLapsed);
                }
                Err(ClientWriteError::ForwardToLeader(f)) => return Err(failed(not_leader(f))),
                Err(e) => return Err(failed(ProposeError::Raft(e.to_string()))),
            }
        }
        if out.len() != n {
            return Err(failed(ProposeError::Raft(format!(
                "{} of {n} batched proposals answered",
                out.len()
            ))));
        }
        Ok(out)
    }

    /// Leader only: confirms leadership with a quorum (ReadIndex) and
    /// returns the Raft log index a linearizable read must see applied.
    /// A follower asks the leader for it, then waits with
    /// [`RaftNode::wait_applied`] (follower reads).
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(l) => Ok(l.read_log_id().log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(fw))) => {
                Err(not_leader(fw))
            }
            Err(e) => Err(ProposeError::Raft(e.to_string())),
        }
    }

    /// Waits until this node applied the Raft log up to `log_index`;
    /// false on timeout.
    pub async fn wait_applied(&self, log_index: u64, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(log_index), "read index applied")
            .await
            .is_ok()
    }

    /// Leader only: removes `id` from the cluster. A voter is first made a
    /// non-voter (a joint-consensus change), then dropped from membership;
    /// the removed node stops receiving the log.
    pub async fn remove_node(&self, id: u64) -> Result<(), NodeError> {
        let raft_err = |e: RaftError<_, _>| NodeError::Raft(e.to_string());
        if self.voters().contains(&id) {
            let voters: BTreeSet<u64> = self.voters().into_iter().filter(|v| *v != id).collect();
            if voters.is_empty() {
                return Err(NodeError::Invalid(format!(
                    "node {id} is the only voter; a cluster needs at least one"
                )));
            }
            let reachable = self.reachable();
            crate::membership::check_quorum(&self.voters(), &reachable, "before any change")
                .and_then(|()| {
                    crate::membership::check_quorum(
                        &voters,
                        &reachable,
                        &format!("after removing node {id}"),
                    )
                })
                .map_err(NodeError::Refused)?;
            self.raft
                .change_membership(voters, false)
                .await
                .map_err(raft_err)?;
        }
        let members: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow_watched()
            .membership_config
            .nodes()
            .map(|(n, _)| *n)
            .collect();
        if members.contains(&id) {
            self.raft
                .change_membership(
                    openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id])),
                    false,
                )
                .await
                .map_err(raft_err)?;
        }
        Ok(())
    }

    /// Leader only: asks `to` to take over leadership (it must be a voter
    /// that is up to date) and waits until this node sees it lead, up to
    /// `timeout`. Best effort, as in any Raft: an election can still pick
    /// another node, which the error then names.
    pub async fn transfer_leader(&self, to: u64, timeout: Duration) -> Result<(), NodeError> {
        if !self.voters().contains(&to) {
            return Err(NodeError::Raft(format!("node {to} is not a voter")));
        }
        if self.current_leader() == Some(to) {
            return Ok(());
        }
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        self.raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader == Some(to), "leadership moved")
            .await
            .map(|_| ())
            .map_err(|_| {
                NodeError::Raft(format!(
                    "leadership did not move to node {to} within {timeout:?} (the leader is {:?}); try again",
                    self.current_leader()
                ))
            })
    }

    /// Builds a snapshot of the state now (and compacts the log behind it
    /// per the config); returns the Raft log index it covers once built.
    pub async fn snapshot(&self, timeout: Duration) -> Result<u64, NodeError> {
        let applied = self.status().applied_index;
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        let m = self
            .raft
            .wait(Some(timeout))
            .metrics(
                |m| m.snapshot.as_ref().is_some_and(|s| s.index() >= applied),
                "snapshot built",
            )
            .await
            .map_err(|e| NodeError::Raft(e.to_string()))?;
        Ok(m.snapshot.map(|s| s.index()).unwrap_or(0))
    }

    /// True once this node's log holds a membership (it was initialised or
    /// joined a cluster).
    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    /// Stops Raft and the RPC server (as a crash would, minus the
    /// unflushed writes: every write here is already durable), and
    /// releases the node's files.
    pub async fn shutdown(self) {
        self.stop().await;
    }

    /// [`RaftNode::shutdown`] for a node others still hold (its API and
    /// runtime, in a simulation's crash): Raft and the RPC server stop at
    /// once; the files are released when the last holder drops the node.
    /// Calls after the first do nothing.
    pub async fn stop(&self) {
        let _ = self.raft.shutdown().await;
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((stop, handle)) = server {
            let _ = stop.send(());
            let _ = handle.await;
        }
    }
}

/// openraft's "ask the leader" answer as a [`ProposeError`].
/// One try of a proposal: refused because the leader lease lapsed (nothing
/// appended; `propose_many` retries it), or failed for good.
enum Attempt {
    LeaseLapsed,
    Failed(ProposeError),
}

fn not_leader(f: openraft::errors::ForwardToLeader<crate::types::TypeConfig>) -> ProposeError {
    ProposeError::NotLeader {
        leader: f.leader_id,
        leader_addr: f.leader_node.map(|n| n.addr),
    }
}

/// Serves Raft RPC on `incoming` (plain TCP or TLS connections) until
/// `stop` fires.
async fn serve_raft<S, I, IO, IE>(id: u64, svc: S, incoming: I, stop: oneshot::Receiver<()>)
where
    S: tower::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = tonic::codegen::http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    I: futures_util::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let res = tonic::transport::Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stop.await;
        })
        .await;
    if let Err(e) = res {
        tracing::error!(node = id, error = %e, "raft rpc server stopped");
    }
}
