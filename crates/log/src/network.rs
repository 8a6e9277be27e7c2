//! Raft RPC over tonic (`proto/kaon/raft/v1/raft.proto`).
//!
//! openraft's requests and responses travel as bincode payloads inside
//! protobuf messages: they are openraft's types, versioned with openraft,
//! and both ends of this internal RPC run the same kaon-log. The kaon
//! events inside log entries are protobuf bytes either way.
//!
//! Client side: one lazily connected, reconnecting tonic [`Channel`] per
//! peer, cached by the factory and shared by every openraft client for that
//! peer. Server side: [`RaftRpcServer`] forwards to the local [`Raft`].
//!
//! The transport is handed in ([`Transport`]): besides gRPC, a node can
//! talk over an in-process [`MemNetwork`] (simulations, partition tests).
//! Both share everything above the byte-moving layer: the client side
//! (encoding, deadlines, error mapping, archive trimming, snapshot
//! chunking) and the server side (the same [`RaftService`] handlers the
//! tonic service runs, fed the same encoded payloads).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{Stream, TryStreamExt};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetworkV2};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::mem_network::{MemLink, MemNetwork, RpcKind};
use crate::pb::raft_service_client::RaftServiceClient;
use crate::pb::raft_service_server::{RaftService, RaftServiceServer};
use crate::pb::{ArchiveLengthReply, ArchiveLengthRequest, RaftPayload, SnapshotChunk};
use crate::record::{decode, encode};
use crate::state_machine::StateMachineStore;
use crate::types::TypeConfig;
use crate::types::alias::{Raft, Snapshot, SnapshotMeta, Vote};
use crate::version::{Versions, check_wire};

/// Largest RPC message either side accepts, in bytes (an AppendEntries
/// batch of large events; snapshots are chunked below this).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Size of one snapshot chunk on the wire, in bytes.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest snapshot a node accepts, in bytes (state + event archive).
pub const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;
/// TCP connect timeout towards a peer; a LAN peer that does not answer in
/// this time is treated as unreachable (openraft then backs off).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

type C = TypeConfig;

/// How a node exchanges Raft RPCs with its peers. Handed to
/// [`crate::RaftNode::start`] in [`crate::NodeConfig::transport`], so the
/// same node code runs over TCP in production and over an in-process
/// network in simulations.
#[derive(Clone, Debug, Default)]
pub enum Transport {
    /// tonic gRPC over TCP: the node listens on `NodeConfig::listen` and
    /// dials peers at their `host:port`. The default.
    #[default]
    Grpc,
    /// tonic gRPC over mutual TLS: the node accepts Raft RPCs only from
    /// peers whose certificate the cluster CA signed, and dials its peers
    /// presenting its own (see [`crate::tls`]).
    GrpcTls(std::sync::Arc<crate::tls::Tls>),
    /// An in-process hub shared by every node of a simulated cluster: no
    /// sockets; the test decides which messages arrive, late or never
    /// (see [`MemNetwork`]).
    Mem(MemNetwork),
}

/// Creates openraft network clients; caches one channel per peer.
#[derive(Clone, Default)]
pub struct NetworkFactory {
    /// The node these clients send from (links are cut by node id).
    from: u64,
    transport: Transport,
    /// Addresses this node dials instead of the ones in the membership
    /// (its `--peer` settings): the membership records one address per
    /// node for everyone, but a node may reach a peer by another route
    /// (a proxy, a different network, a name only it resolves).
    dial: Arc<BTreeMap<u64, String>>,
    channels: Arc<Mutex<BTreeMap<u64, (String, Channel)>>>,
    /// See [`NetworkFactory::with_append_timeout`].
    append_timeout: Duration,
    /// This node's state machine: a snapshot is shipped with the archive
    /// events its receiver lacks, read from here.
    sm: Option<StateMachineStore>,
    /// This node's versions, stamped on every request; peers' learned
    /// from their replies.
    versions: Versions,
}

impl NetworkFactory {
    /// A factory for node `from`'s clients over `transport`, dialing the
    /// peers in `dial` at those addresses (others at their membership
    /// address).
    pub fn new(from: u64, transport: Transport, dial: BTreeMap<u64, String>) -> NetworkFactory {
        NetworkFactory {
            from,
            transport,
            dial: Arc::new(dial),
            channels: Arc::default(),
            append_timeout: Duration::ZERO,
            sm: None,
            versions: Versions::default(),
        }
    }

    /// Stamp requests with `versions` and record peers' into it.
    pub fn with_versions(mut self, versions: Versions) -> NetworkFactory {
        self.versions = versions;
        self
    }

    /// AppendEntries RPCs carrying entries may take up to `t` (at least
    /// openraft's own deadline, the heartbeat interval): see
    /// `NodeConfig::append_timeout_ms`.
    pub fn with_append_timeout(mut self, t: Duration) -> NetworkFactory {
        self.append_timeout = t;
        self
    }

    /// Snapshots are filled with archive events from `sm` (this node's
    /// state machine) when they are shipped; without it a snapshot cannot
    /// be sent.
    pub fn with_state_machine(mut self, sm: StateMachineStore) -> NetworkFactory {
        self.sm = Some(sm);
        self
    }

    fn channel(&self, target: u64, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, ch)) = map.get(&target)
            && a == addr
        {
            return Ok(ch.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("peer {target}: bad address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let ch = match &self.transport {
            Transport::GrpcTls(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
            _ => endpoint.connect_lazy(),
        };
        map.insert(target, (addr.to_string(), ch.clone()));
        Ok(ch)
    }
}

impl RaftNetworkFactory<C> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        let addr = self.dial.get(&target).unwrap_or(&node.addr);
        let client = match &self.transport {
            Transport::Grpc | Transport::GrpcTls(_) => self.channel(target, addr).map(|ch| {
                Conn::Grpc(
                    RaftServiceClient::new(ch)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
            }),
            Transport::Mem(net) => Ok(Conn::Mem(net.link(self.from, node.addr.clone()))),
        };
        PeerClient {
            target,
            client,
            append_timeout: self.append_timeout,
            sm: self.sm.clone(),
            versions: self.versions.clone(),
        }
    }
}

/// One peer connection: the layer that only moves bytes. Everything above
/// it (encoding, deadlines, snapshot chunking) is shared by both kinds.
#[derive(Clone)]
enum Conn {
    Grpc(RaftServiceClient<Channel>),
    Mem(MemLink),
}

impl Conn {
    async fn append_entries(self, p: RaftPayload) -> Result<RaftPayload, Status> {
        match self {
            Conn::Grpc(mut c) => c.append_entries(p).await.map(Response::into_inner),
            Conn::Mem(link) => {
                link.call(RpcKind::AppendEntries, move |s| {
                    let p = p.clone();
                    async move {
                        RaftService::append_entries(&*s, Request::new(p))
                            .await
                            .map(Response::into_inner)
                    }
                })
                .await
            }
        }
    }

    async fn vote(self, p: RaftPayload) -> Result<RaftPayload, Status> {
        match self {
            Conn::Grpc(mut c) => c.vote(p).await.map(Response::into_inner),
            Conn::Mem(link) => {
                link.call(RpcKind::Vote, move |s| {
                    let p = p.clone();
                    async move {
                        RaftService::vote(&*s, Request::new(p))
                            .await
                            .map(Response::into_inner)
                    }
                })
                .await
            }
        }
    }

    async fn transfer_leader(self, p: RaftPayload) -> Result<RaftPayload, Status> {
        match self {
            Conn::Grpc(mut c) => c.transfer_leader(p).await.map(Response::into_inner),
            Conn::Mem(link) => {
                link.call(RpcKind::TransferLeader, move |s| {
                    let p = p.clone();
                    async move {
                        RaftService::transfer_leader(&*s, Request::new(p))
                            .await
                            .map(Response::into_inner)
                    }
                })
                .await
            }
        }
    }

    async fn archive_length(&mut self) -> Result<u64, Status> {
        let reply = match self {
            Conn::Grpc(c) => c
                .archive_length(ArchiveLengthRequest {})
                .await
                .map(Response::into_inner),
            Conn::Mem(link) => {
                link.call(RpcKind::ArchiveLength, |s| async move {
                    RaftService::archive_length(&*s, Request::new(ArchiveLengthRequest {}))
                        .await
                        .map(Response::into_inner)
                })
                .await
            }
        };
        reply.map(|r| r.events)
    }

    async fn install_snapshot(self, chunks: Vec<SnapshotChunk>) -> Result<RaftPayload, Status> {
        match self {
            Conn::Grpc(mut c) => c
                .install_snapshot(futures_util::stream::iter(chunks))
                .await
                .map(Response::into_inner),
            Conn::Mem(link) => {
                link.call(RpcKind::InstallSnapshot, move |s| {
                    let chunks = chunks.clone();
                    async move {
                        s.receive_snapshot(futures_util::stream::iter(chunks.into_iter().map(Ok)))
                            .await
                    }
                })
                .await
            }
        }
    }
}

/// openraft's view of one peer.
pub struct PeerClient {
    target: u64,
    client: Result<Conn, String>,
    /// Deadline of an AppendEntries with entries (never below openraft's).
    append_timeout: Duration,
    /// This node's state machine (snapshots' archive events).
    sm: Option<StateMachineStore>,
    versions: Versions,
}

fn status_to_rpc(target: u64, s: Status) -> RPCError<C> {
    let msg = format!("peer {target}: {s}");
    if s.code() == tonic::Code::Unavailable {
        RPCError::Unreachable(Unreachable::from_string(msg))
    } else {
        RPCError::Network(NetworkError::from_string(msg))
    }
}

impl PeerClient {
    /// A failed call as openraft's error; a version refusal (either way) is
    /// also logged, once per peer and message: openraft retries every
    /// heartbeat and logs only errors of its own.
    fn refused(&self, s: Status) -> RPCError<C> {
        if s.code() == tonic::Code::FailedPrecondition {
            self.versions.log_refusal(self.target, s.message());
        }
        status_to_rpc(self.target, s)
    }

    fn client(&self) -> Result<Conn, RPCError<C>> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::from_string(e)))
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        ttl: Duration,
        call: F,
    ) -> Result<Resp, RPCError<C>>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(Conn, RaftPayload) -> Fut,
        Fut: Future<Output = Result<RaftPayload, Status>>,
    {
        let target = self.target;
        let data = encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let fut = call(self.client()?, self.versions.payload(data));
        let resp = tokio::time::timeout(ttl, fut)
            .await
            .map_err(|_| {
                RPCError::Network(NetworkError::from_string(format!(
                    "peer {target}: no answer within {ttl:?}"
                )))
            })?
            .map_err(|s| self.refused(s))?;
        self.versions
            .heard(target, &resp)
            .map_err(|m| self.refused(Status::failed_precondition(m)))?;
        decode(&resp.data).map_err(|m| {
            RPCError::Network(NetworkError::from_string(format!(
                "peer {target}: bad response: {m}"
            )))
        })
    }
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        // A heartbeat (no entries) keeps openraft's deadline: a follower
        // that cannot answer one in time should look slow. Entries get the
        // longer one, so a slow fsync under load is waited for, not retried.
        let ttl = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(self.append_timeout)
        };
        self.unary(&rpc, ttl, |c, p| c.append_entries(p)).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C>,
        option: RPCOption,
    ) -> Result<VoteResponse<C>, RPCError<C>> {
        self.unary(&rpc, option.hard_ttl(), |c, p| c.vote(p)).await
    }

    async fn transfer_leader(
        &mut self,
        req: openraft::raft::TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<openraft::raft::TransferLeaderResponse<C>, RPCError<C>> {
        self.unary(&req, option.hard_ttl(), |c, p| async move {
            c.transfer_leader(p).await
        })
        .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        mut snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let target = self.target;
        // Ship exactly the archive suffix the receiver lacks, read from the
        // local archive. If the question fails, send the whole archive
        // (always correct, just bigger).
        let mut client = self.client()?;
        let has = tokio::time::timeout(option.hard_ttl(), client.archive_length()).await;
        let have = match has {
            Ok(Ok(have)) => have,
            _ => 0,
        };
        let data = std::mem::take(&mut snapshot.snapshot);
        let filled = match self.sm.clone() {
            Some(sm) => sm.fill_snapshot_archive_off(data, have).await,
            None => Err("this node's network has no state machine to read the archive from".into()),
        };
        match filled {
            Ok(data) => snapshot.snapshot = data,
            Err(e) => {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "peer {target}: local snapshot unreadable: {e}"
                ))));
            }
        }
        let meta =
            encode(&(vote, snapshot.meta.clone())).map_err(|e| NetworkError::<C>::new(&e))?;
        let mut chunks = vec![SnapshotChunk {
            meta,
            data: Vec::new(),
            wire_version: crate::version::RAFT_WIRE_VERSION,
            event_schema: self.versions.event_schema(),
        }];
        chunks.extend(
            snapshot
                .snapshot
                .chunks(SNAPSHOT_CHUNK_BYTES)
                .map(|d| SnapshotChunk {
                    meta: Vec::new(),
                    data: d.to_vec(),
                    ..SnapshotChunk::default()
                }),
        );
        let call = client.install_snapshot(chunks);
        let resp = tokio::select! {
            r = call => r.map_err(|s| StreamingError::from(self.refused(s)))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        self.versions
            .heard(target, &resp)
            .map_err(|m| StreamingError::from(self.refused(Status::failed_precondition(m))))?;
        decode(&resp.data).map_err(|m| {
            StreamingError::Network(NetworkError::from_string(format!(
                "peer {target}: bad snapshot response: {m}"
            )))
        })
    }
}

/// The tonic service that feeds incoming Raft RPCs to the local node.
pub struct RaftRpcServer {
    raft: Raft,
    sm: StateMachineStore,
    versions: Versions,
}

impl RaftRpcServer {
    /// The handlers for `raft` (and its state machine, for the archive
    /// length), without a transport: [`MemNetwork`] calls them directly.
    pub(crate) fn new(raft: Raft, sm: StateMachineStore, versions: Versions) -> RaftRpcServer {
        RaftRpcServer { raft, sm, versions }
    }

    /// Wraps `raft` (and its state machine, for the archive length) in a
    /// tonic service with kaon's message size limits.
    pub fn service(
        raft: Raft,
        sm: StateMachineStore,
        versions: Versions,
    ) -> RaftServiceServer<RaftRpcServer> {
        RaftServiceServer::new(RaftRpcServer::new(raft, sm, versions))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Receives a snapshot as a stream of chunks (the first carries vote +
    /// meta) and installs it; the body of the `InstallSnapshot` RPC for
    /// every transport.
    pub(crate) async fn receive_snapshot<S>(&self, mut stream: S) -> Result<RaftPayload, Status>
    where
        S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
    {
        let mut head: Option<(Vote, SnapshotMeta)> = None;
        let mut data = Vec::new();
        while let Some(chunk) = stream.try_next().await? {
            if head.is_none() {
                check_wire("install snapshot", chunk.wire_version)?;
                head = Some(decode(&chunk.meta).map_err(|m| bad_request("snapshot meta", m))?);
            }
            if data.len() + chunk.data.len() > MAX_SNAPSHOT_BYTES {
                return Err(Status::resource_exhausted(format!(
                    "snapshot larger than {MAX_SNAPSHOT_BYTES} bytes"
                )));
            }
            data.extend_from_slice(&chunk.data);
        }
        let (vote, meta) = head.ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let resp = self
            .raft
            .install_full_snapshot(
                vote,
                Snapshot {
                    meta,
                    snapshot: data,
                },
            )
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.reply(&resp).map(Response::into_inner)
    }

    fn reply<T: serde::Serialize>(&self, v: &T) -> Result<Response<RaftPayload>, Status> {
        let data = encode(v).map_err(|e| Status::internal(format!("cannot encode reply: {e}")))?;
        Ok(Response::new(self.versions.payload(data)))
    }
}

fn bad_request(what: &str, m: String) -> Status {
    Status::invalid_argument(format!("{what}: cannot decode: {m}"))
}

#[tonic::async_trait]
impl RaftService for RaftRpcServer {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let p = req.into_inner();
        check_wire("append entries", p.wire_version)?;
        let rpc: AppendEntriesRequest<C> =
            decode(&p.data).map_err(|m| bad_request("append entries", m))?;
        let resp = self
            .raft
            .append_entries(rpc)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.reply(&resp)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let p = req.into_inner();
        check_wire("vote", p.wire_version)?;
        let rpc: VoteRequest<C> = decode(&p.data).map_err(|m| bad_request("vote", m))?;
        let resp = self
            .raft
            .vote(rpc)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.reply(&resp)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let p = req.into_inner();
        check_wire("transfer leader", p.wire_version)?;
        let rpc: openraft::raft::TransferLeaderRequest<C> =
            decode(&p.data).map_err(|m| bad_request("transfer leader", m))?;
        let resp = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        self.reply(&resp)
    }

    async fn archive_length(
        &self,
        _req: Request<ArchiveLengthRequest>,
    ) -> Result<Response<ArchiveLengthReply>, Status> {
        Ok(Response::new(ArchiveLengthReply {
            events: self.sm.applied_event_index(),
        }))
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        self.receive_snapshot(req.into_inner())
            .await
            .map(Response::new)
    }
}
