//! The public gRPC API (`kaon.v1.Kaon`) over the runtime and the log.
//!
//! Writes go through the leader's runtime (decide, then commit): a follower
//! forwards them to the leader's API address, which every leader records in
//! the log when it starts (`LeaderStarted`). Reads come from the applied
//! state, linearizable by default (the leader's read index, applied here
//! first) or, with the `kaon-read: stale` header, this node's latest state.
//! Domain rejections map to gRPC codes that name the problem:
//! INVALID_ARGUMENT (with every spec error), NOT_FOUND, FAILED_PRECONDITION,
//! RESOURCE_EXHAUSTED; UNAVAILABLE carries the leader's address when known.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kaon_api::v1;
use kaon_api::v1::kaon_server::Kaon;
use kaon_core::decide::{Command, Rejection, SubmitTarget, status_name};
use kaon_core::events::{Body, Event};
use kaon_core::state::{InstKind, Run, RunStatus, State};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::{AuthLayer, Authenticator, Principal};
use crate::log::EventLog;
use crate::runtime::{CommandOutcome, RuntimeHandle, RuntimeSlot};

/// Most runs one ListRuns page returns.
pub const LIST_PAGE_SIZE_MAX: u32 = 1000;
/// Events a watch sends per batch.
const WATCH_BATCH_EVENTS_MAX: usize = 1024;
/// Metadata a node sets (to its id) on a request it forwards to the
/// leader; such a request is never forwarded again (no loops while
/// leadership moves).
pub const FORWARDED_BY_HEADER: &str = "kaon-forwarded-by";
/// Metadata a client sets to `stale` to accept this node's latest applied
/// state instead of a linearizable read.
pub const READ_HEADER: &str = "kaon-read";
/// Metadata on UNAVAILABLE answers: the leader's API address, when known.
pub const LEADER_API_HEADER: &str = "kaon-leader-api";
/// Deadline for a forwarded call whose client sent none.
const FORWARD_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// How long a follower waits to apply up to a read index.
const READ_APPLY_WAIT: Duration = Duration::from_secs(5);
/// Bytes ReadStepLogs returns by default and at most.
const LOG_READ_BYTES_DEFAULT: u32 = 64 << 10;
/// See [`LOG_READ_BYTES_DEFAULT`].
pub const LOG_READ_BYTES_MAX: u32 = 1 << 20;

/// What a node's API needs besides the log and the runtime.
#[derive(Clone, Default)]
pub struct ServiceConfig {
    /// Mesos master URL (to find agents' sandboxes for step logs).
    pub mesos_master: Option<String>,
    /// How this node reaches another node's API (forwarded writes, read
    /// indexes) by its recorded address: `None` dials gRPC over TCP; a
    /// simulation hands in channels that stay in its process.
    pub peer_channel: Option<PeerChannel>,
    /// The embedded emulator's work directory, when this node runs one:
    /// step logs are read from its sandboxes on disk when the master no
    /// longer knows the agent (after a restart, the emulator's agents have
    /// new ids while the old sandboxes are still there).
    pub local_sandboxes: Option<std::path::PathBuf>,
    /// Who may call what (`--auth-file`); `None` serves every caller.
    pub auth: Option<Arc<Authenticator>>,
    /// TLS for the API port and for calls to peers' APIs (`--tls-*`);
    /// `None`: plain text.
    pub tls: Option<Arc<kaon_log::tls::Tls>>,
    /// How to reach an `https://` Mesos master (`--mesos-ca`), for step
    /// logs.
    pub mesos_https: Option<crate::mesos_tls::MesosHttps>,
}

/// Builds a (lazily connected) channel to the API at `host:port`.
pub type PeerChannel = Arc<dyn Fn(&str) -> Channel + Send + Sync>;

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("mesos_master", &self.mesos_master)
            .field("local_sandboxes", &self.local_sandboxes)
            .field(
                "peer_channel",
                &self.peer_channel.as_ref().map(|_| "custom"),
            )
            .finish()
    }
}

/// The service.
pub struct KaonService<L: EventLog> {
    log: Arc<L>,
    runtime: RuntimeSlot,
    config: ServiceConfig,
    /// One lazily connected channel per peer API address.
    peers: std::sync::Mutex<BTreeMap<String, Channel>>,
    http: reqwest::Client,
}

/// Where a write goes.
enum Route {
    /// This node leads: its runtime.
    Local(RuntimeHandle),
    /// Forward to the leader's API.
    Leader(v1::kaon_client::KaonClient<Channel>),
}

impl<L: EventLog> KaonService<L> {
    /// Serves `log` (reads) and the runtime in `runtime` (writes; empty on
    /// a node that is not the leader).
    pub fn new(log: Arc<L>, runtime: RuntimeSlot, config: ServiceConfig) -> Self {
        KaonService {
            log,
            runtime,
            config,
            peers: std::sync::Mutex::new(BTreeMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client without TLS builds"),
        }
    }

    fn my_id(&self) -> u64 {
        self.log.cluster_status().map(|c| c.id).unwrap_or(0)
    }

    /// The leader's id and API address, or UNAVAILABLE saying why not.
    fn leader_target(&self) -> Result<(u64, String), Status> {
        let Some(st) = self.log.cluster_status() else {
            return Err(Status::unavailable("the effect runtime is not running"));
        };
        match st.leader {
            None => Err(Status::unavailable(
                "no leader is known yet (an election may be under way): retry shortly",
            )),
            Some(l) if l == st.id => Err(Status::unavailable(
                "this node was just elected leader and is starting its effect runtime: retry shortly",
            )),
            Some(l) => match self.log.with_state(|s| s.api_addrs.get(&l).cloned()) {
                Some(addr) => Ok((l, addr)),
                None => Err(Status::unavailable(format!(
                    "the leader is node {l}, which has not recorded its API address yet: retry shortly"
                ))),
            },
        }
    }

    /// UNAVAILABLE with `why`, naming the leader (message and metadata).
    fn unavailable(&self, why: &str) -> Status {
        match self.leader_target() {
            Ok((l, addr)) => {
                let mut s = Status::unavailable(format!("{why}; the leader is node {l} at {addr}"));
                if let Ok(v) = addr.parse() {
                    s.metadata_mut().insert(LEADER_API_HEADER, v);
                }
                s
            }
            Err(e) => Status::unavailable(format!("{why}; {}", e.message())),
        }
    }

    fn peer(&self, addr: &str) -> Result<v1::kaon_client::KaonClient<Channel>, Status> {
        let mut peers = self.peers.lock().expect("peer channel cache");
        if let Some(c) = peers.get(addr) {
            return Ok(v1::kaon_client::KaonClient::new(c.clone()));
        }
        let channel = match &self.config.peer_channel {
            Some(make) => make(addr),
            None => {
                let endpoint = Channel::from_shared(format!("http://{addr}"))
                    .map_err(|e| Status::internal(format!("leader API address {addr:?}: {e}")))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true);
                match &self.config.tls {
                    Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
                    None => endpoint.connect_lazy(),
                }
            }
        };
        peers.insert(addr.to_string(), channel.clone());
        Ok(v1::kaon_client::KaonClient::new(channel))
    }

    /// A request to forward: marked as forwarded, with the caller's deadline.
    ///
    /// The caller's credentials go with it: the leader authenticates the
    /// caller itself, so a forwarded call keeps the caller's identity and
    /// rights, never the forwarding node's.
    fn forwarded<T>(&self, md: &MetadataMap, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        if let Some(a) = md.get("authorization") {
            r.metadata_mut().insert("authorization", a.clone());
        }
        r.metadata_mut().insert(
            FORWARDED_BY_HEADER,
            self.my_id().to_string().parse().expect("digits"),
        );
        r.set_timeout(grpc_timeout(md).unwrap_or(FORWARD_TIMEOUT_DEFAULT));
        r
    }

    /// Where a write goes: this node's runtime, or the leader.
    async fn route(&self, md: &MetadataMap) -> Result<Route, Status> {
        if let Some(rt) = self.runtime.read().await.clone()
            && !rt.is_stopped()
        {
            return Ok(Route::Local(rt));
        }
        if self.log.raft_node().is_none() {
            return Err(Status::unavailable("the effect runtime is not running"));
        }
        Ok(Route::Leader(self.to_leader(md)?.1))
    }

    /// The leader's address and a client for it, to forward a request
    /// that reached this non-leader; a request that was forwarded here
    /// already is refused (no forwarding loops while leadership moves).
    fn to_leader(
        &self,
        md: &MetadataMap,
    ) -> Result<(String, v1::kaon_client::KaonClient<Channel>), Status> {
        if md
            .get(crate::auth::AUTH_METHOD_HEADER)
            .is_some_and(|v| v == "certificate")
        {
            // A certificate cannot be forwarded: the caller is sent to the
            // leader (the client library follows the leader's address).
            return Err(self.unavailable(
                "a caller authenticated by its client certificate is served by the leader itself",
            ));
        }
        if md.contains_key(FORWARDED_BY_HEADER) {
            return Err(self.unavailable(
                "this node does not lead either (a forwarded request is not forwarded again)",
            ));
        }
        let (_, addr) = self.leader_target()?;
        let client = self.peer(&addr)?;
        Ok((addr, client))
    }

    /// Runs a command on the local runtime.
    /// Runs `cmd` on the leader's runtime as asked by the caller the API
    /// authenticated (in `ext`; none when authentication is off).
    async fn command(
        &self,
        runtime: RuntimeHandle,
        ext: &tonic::Extensions,
        cmd: Command,
    ) -> Result<CommandOutcome, Status> {
        let cmd = match ext.get::<Principal>() {
            Some(p) => Command::By {
                actor: p.actor(),
                command: Box::new(cmd),
            },
            None => cmd,
        };
        match runtime.command(cmd).await {
            Err(e) => Err(self.unavailable(&format!("the leader runtime stopped: {e}"))),
            // Retryable: the client tries again (at the next leader).
            Ok(Err(Rejection::Unavailable(why))) => Err(self.unavailable(&why)),
            Ok(Err(r)) => Err(rejection_status(r)),
            Ok(Ok(o)) => Ok(o),
        }
    }

    /// Makes the next read linearizable unless the client asked for a stale
    /// one: waits until this node applied the leader's read index.
    async fn read_barrier(&self, md: &MetadataMap) -> Result<(), Status> {
        if md.get(READ_HEADER).is_some_and(|v| v == "stale") {
            return Ok(());
        }
        let Some(node) = self.log.raft_node() else {
            return Ok(()); // a local log is trivially linearizable
        };
        let st = node.status();
        let index = if st.leader == Some(st.id) {
            node.read_index().await.map_err(|e| {
                self.unavailable(&format!(
                    "confirming leadership for a linearizable read failed: {e}"
                ))
            })?
        } else {
            let (addr, mut leader) = self.to_leader(md)?;
            leader
                .read_index(self.forwarded(md, v1::ReadIndexRequest {}))
                .await
                .map_err(|e| {
                    Status::unavailable(format!(
                        "asking the leader at {addr} for a read index: {}",
                        e.message()
                    ))
                })?
                .into_inner()
                .raft_log_index
        };
        if !node.wait_applied(index, READ_APPLY_WAIT).await {
            return Err(Status::unavailable(format!(
                "this node has not applied up to the read index {index} within {READ_APPLY_WAIT:?}: retry, or read with `{READ_HEADER}: stale`"
            )));
        }
        Ok(())
    }

    /// The Raft node for membership calls on the leader, or the leader's API.
    fn admin_route(
        &self,
        md: &MetadataMap,
    ) -> Result<Option<v1::kaon_client::KaonClient<Channel>>, Status> {
        let Some(node) = self.log.raft_node() else {
            return Err(Status::failed_precondition(
                "this node's log is not replicated",
            ));
        };
        let st = node.status();
        if st.leader == Some(st.id) {
            return Ok(None);
        }
        Ok(Some(self.to_leader(md)?.1))
    }

    /// The run a submit or retry started, and whether it existed already:
    /// decide found the key, or another request with the same key won the
    /// race to apply (its `RunSubmitted` then recorded nothing, and the
    /// key names the run that did start).
    fn started_run(&self, out: &CommandOutcome) -> Result<(u64, bool), Status> {
        if let Some(id) = out.decision.existing_run {
            return Ok((id, true));
        }
        let (index, key) = out
            .committed
            .iter()
            .find_map(|e| match &e.body {
                Some(Body::RunSubmitted(r)) => Some((e.index, r.idempotency_key.clone())),
                _ => None,
            })
            .ok_or_else(|| Status::internal("the request committed no run"))?;
        if key.is_empty() {
            return Ok((index, false));
        }
        let id = self
            .log
            .with_state(|s| s.idempotency.get(&key).copied())
            .ok_or_else(|| Status::internal(format!("no run recorded for key {key:?}")))?;
        Ok((id, id != index))
    }

    /// GET `url` as JSON.
    async fn get_json(&self, url: &str) -> Result<serde_json::Value, Status> {
        if let (true, Some(https)) = (url.starts_with("https://"), &self.config.mesos_https) {
            let r = https
                .exchange(kaon_mesos::transport::HttpRequest {
                    method: tonic::codegen::http::Method::GET,
                    url: url.to_string(),
                    headers: Default::default(),
                    body: Default::default(),
                    timeout: Some(Duration::from_secs(10)),
                })
                .await
                .map_err(|e| Status::unavailable(format!("GET {url}: {e}")))?;
            let status = r.status;
            let body = r
                .bytes()
                .await
                .map_err(|e| Status::unavailable(format!("GET {url}: {e}")))?;
            if !(200..300).contains(&status) {
                return Err(Status::unavailable(format!(
                    "GET {url}: {status}: {}",
                    String::from_utf8_lossy(&body)
                )));
            }
            return serde_json::from_slice(&body)
                .map_err(|e| Status::internal(format!("GET {url}: not JSON: {e}")));
        }
        let r = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| Status::unavailable(format!("GET {url}: {e}")))?;
        let status = r.status();
        let body = r
            .bytes()
            .await
            .map_err(|e| Status::unavailable(format!("GET {url}: {e}")))?;
        if !status.is_success() {
            return Err(Status::unavailable(format!(
                "GET {url}: {status}: {}",
                String::from_utf8_lossy(&body)
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Status::internal(format!("GET {url}: not JSON: {e}")))
    }

    /// The sandbox directory of `task_id`'s executor on agent `agent_id`,
    /// from the master's agent list and the agent's `/state` (running and
    /// completed executors), and the agent's base URL.
    async fn sandbox(&self, agent_id: &str, task_id: &str) -> Result<(String, String), Status> {
        let master = self.config.mesos_master.as_deref().ok_or_else(|| {
            Status::failed_precondition("this node has no Mesos master configured")
        })?;
        let master = master.trim_end_matches('/');
        let slaves = self.get_json(&format!("{master}/master/slaves")).await?;
        let pid = slaves["slaves"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["id"] == agent_id)
            .and_then(|a| a["pid"].as_str())
            .ok_or_else(|| {
                Status::not_found(format!("agent {agent_id} is not known to the Mesos master"))
            })?;
        let host = pid.rsplit('@').next().unwrap_or(pid);
        let agent = format!("http://{host}");
        let state = self.get_json(&format!("{agent}/state")).await?;
        // The executor that lists the task (kaon's executors run many
        // steps), or, for a task of an earlier kaon, its own executor.
        let legacy = kaon_core::leader::legacy_executor_id(task_id);
        let holds = |e: &serde_json::Value| {
            e["id"] == legacy.as_str()
                || ["tasks", "queued_tasks", "completed_tasks"]
                    .iter()
                    .any(|k| {
                        e[*k]
                            .as_array()
                            .is_some_and(|ts| ts.iter().any(|t| t["id"] == task_id))
                    })
        };
        let mut lists: Vec<&serde_json::Value> =
            vec![&state["executors"], &state["completed_executors"]];
        for f in ["frameworks", "completed_frameworks"] {
            for fw in state[f].as_array().into_iter().flatten() {
                lists.push(&fw["executors"]);
                lists.push(&fw["completed_executors"]);
            }
        }
        let dir = lists
            .into_iter()
            .filter_map(|l| l.as_array())
            .flatten()
            .find(|e| holds(e))
            .and_then(|e| e["directory"].as_str())
            .ok_or_else(|| {
                Status::not_found(format!(
                    "agent {agent_id} no longer lists the sandbox of task {task_id}"
                ))
            })?;
        Ok((agent, dir.to_string()))
    }
}

/// The deadline the caller sent (`grpc-timeout`), to pass on when forwarding.
fn grpc_timeout(md: &MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Membership errors: a bad request is INVALID_ARGUMENT, the rest (a
/// refused change, a change in progress, not the leader) FAILED_PRECONDITION.
fn membership_error(e: kaon_log::NodeError) -> Status {
    match e {
        kaon_log::NodeError::Invalid(m) => Status::invalid_argument(m),
        e => Status::failed_precondition(e.to_string()),
    }
}

/// Maps a domain rejection to a gRPC status with a message naming the problem.
pub fn rejection_status(r: Rejection) -> Status {
    match &r {
        Rejection::InvalidSpec(_) | Rejection::InvalidArgument(_) => {
            Status::invalid_argument(r.to_string())
        }
        Rejection::NotFound(_) => Status::not_found(r.to_string()),
        Rejection::FailedPrecondition(_) => Status::failed_precondition(r.to_string()),
        Rejection::LimitExceeded(_) => Status::resource_exhausted(r.to_string()),
        Rejection::Unavailable(_) => Status::unavailable(r.to_string()),
        Rejection::PermissionDenied(_) => Status::permission_denied(r.to_string()),
    }
}

fn run_status(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// The API view of a run.
/// The run's instances in dependency order (issue 9 G: boards and `run
/// show` list a step after the steps it waits for): depth first from the
/// body, then the exit handler; a group's children by their depth in the
/// group's DAG (a step after everything it depends on), spec order among
/// equals; iterations and foreach elements in their order.
fn dependency_order(r: &Run) -> Vec<usize> {
    let plan = &r.plan;
    // Depth of each sibling in its group's DAG: 0 without dependencies,
    // else one more than its deepest dependency (Kahn's order, no
    // recursion: a chain may be steps_per_workflow_max long).
    let depths = |children: &[kaon_core::plan::NodeId]| -> Vec<u32> {
        let n = children.len();
        let node = |p: usize| &plan.nodes[children[p] as usize];
        let mut waiting: Vec<usize> = (0..n)
            .map(|p| {
                node(p)
                    .depends_on
                    .iter()
                    .filter(|&&q| (q as usize) < n)
                    .count()
            })
            .collect();
        let mut depth = vec![0u32; n];
        let mut ready: std::collections::VecDeque<usize> =
            (0..n).filter(|&p| waiting[p] == 0).collect();
        while let Some(p) = ready.pop_front() {
            for &d in &node(p).dependents {
                let d = d as usize;
                if d < n && waiting[d] > 0 {
                    depth[d] = depth[d].max(depth[p] + 1);
                    waiting[d] -= 1;
                    if waiting[d] == 0 {
                        ready.push_back(d);
                    }
                }
            }
        }
        depth
    };
    let mut out = Vec::with_capacity(r.instances.len());
    let mut seen = vec![false; r.instances.len()];
    let mut stack: Vec<usize> = Vec::new();
    let tops: Vec<usize> = (0..r.instances.len())
        .filter(|&i| r.instances[i].parent.is_none())
        .collect();
    for top in tops {
        stack.push(top);
        while let Some(i) = stack.pop() {
            if i >= r.instances.len() || seen[i] {
                continue;
            }
            seen[i] = true;
            out.push(i);
            let inst = &r.instances[i];
            let mut kids: Vec<usize> = inst.children.iter().map(|&c| c as usize).collect();
            if inst.kind == InstKind::Group
                && let Some(kaon_core::plan::Body::Group { children, .. }) =
                    plan.nodes.get(inst.node as usize).map(|n| &n.body)
            {
                let depths = depths(children);
                let key = |c: usize| {
                    let pos = plan.nodes[r.instances[c].node as usize].index as usize;
                    (depths.get(pos).copied().unwrap_or(u32::MAX), pos)
                };
                kids.sort_by_key(|&c| key(c));
            }
            // Depth first: push in reverse so the first child comes next.
            stack.extend(kids.into_iter().rev());
        }
    }
    // Anything not reached (cannot happen in a consistent state) last.
    out.extend((0..r.instances.len()).filter(|&i| !seen[i]));
    out
}

/// Paths of the instances `i` waits for: its siblings (children of the
/// same parent) whose plan node it depends on.
fn dependencies(r: &Run, i: &kaon_core::state::Instance) -> Vec<String> {
    let deps = &r.plan.nodes[i.node as usize].depends_on;
    if deps.is_empty() {
        return Vec::new();
    }
    let siblings: Vec<u32> = match i.parent {
        Some(p) => r.instances[p as usize].children.clone(),
        None => Vec::new(),
    };
    siblings
        .iter()
        .map(|&c| &r.instances[c as usize])
        .filter(|s| s.node != i.node && deps.contains(&r.plan.nodes[s.node as usize].index))
        .map(|s| s.path.clone())
        .collect()
}

pub fn run_view(r: &Run) -> v1::Run {
    v1::Run {
        id: r.id,
        workflow: r.workflow.clone(),
        version: r.version,
        status: run_status(r.status).into(),
        message: r.message.clone(),
        submitted_unix_ms: r.submitted_ms,
        finished_unix_ms: r.finished_ms.unwrap_or(0),
        params_json: r.params.to_string(),
        steps: dependency_order(r)
            .into_iter()
            .filter(|&n| !r.instances[n].path.is_empty())
            .map(|n| (n as u32, &r.instances[n]))
            .map(|(n, i)| v1::Step {
                path: i.path.clone(),
                status: status_name(i.status).into(),
                attempts: i.attempts.len() as u32,
                percent: i.percent,
                status_text: i.status_text.clone(),
                message: i.message.clone(),
                outputs_json: i.outputs.clone().unwrap_or_default(),
                kind: match i.kind {
                    InstKind::Task => "task",
                    InstKind::Group => "group",
                    InstKind::Loop => "loop",
                    InstKind::Iteration => "iteration",
                    InstKind::Foreach => "foreach",
                }
                .into(),
                depends_on: dependencies(r, i),
                parent: i
                    .parent
                    .map(|p| r.instances[p as usize].path.clone())
                    .unwrap_or_default(),
                attempt_list: i
                    .attempts
                    .iter()
                    .map(|a| v1::Attempt {
                        number: a.number,
                        state: a.state.mesos_name().into(),
                        task_id: r.task_id(n, a.number),
                        agent_id: a.agent_id.clone(),
                        exit_code: a.exit_code,
                        cause: a
                            .cause
                            .map(|c| format!("{c:?}").to_ascii_lowercase())
                            .unwrap_or_default(),
                        kill: a
                            .kill
                            .map(|k| format!("{k:?}").to_ascii_lowercase())
                            .unwrap_or_default(),
                        message: a.message.clone(),
                        launched_unix_ms: a.launched_ms,
                        ended_unix_ms: a.ended_ms.unwrap_or(0),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The run an event is about, if any (a `RunSubmitted` is its own run).
pub fn run_of(e: &Event) -> Option<u64> {
    match e.body.as_ref()? {
        Body::RunSubmitted(_) => Some(e.index),
        b => kaon_core::events::body_run(b),
    }
}

#[tonic::async_trait]
impl<L: EventLog> Kaon for KaonService<L> {
    async fn register_workflow(
        &self,
        req: Request<v1::RegisterWorkflowRequest>,
    ) -> Result<Response<v1::RegisterWorkflowResponse>, Status> {
        let (md, ext, msg) = req.into_parts();
        let rt = match self.route(&md).await? {
            Route::Local(rt) => rt,
            Route::Leader(mut c) => return c.register_workflow(self.forwarded(&md, msg)).await,
        };
        let out = self
            .command(rt, &ext, Command::RegisterWorkflow { source: msg.spec })
            .await?;
        if let Some((name, version)) = out.decision.existing_version {
            return Ok(Response::new(v1::RegisterWorkflowResponse {
                name,
                version,
                created: false,
            }));
        }
        for e in &out.committed {
            if let Some(Body::WorkflowRegistered(w)) = &e.body {
                return Ok(Response::new(v1::RegisterWorkflowResponse {
                    name: w.name.clone(),
                    version: w.version,
                    created: true,
                }));
            }
        }
        Err(Status::aborted(
            "the registration lost a race with another; retry",
        ))
    }

    async fn list_workflows(
        &self,
        req: Request<v1::ListWorkflowsRequest>,
    ) -> Result<Response<v1::ListWorkflowsResponse>, Status> {
        self.read_barrier(req.metadata()).await?;
        let workflows = self.log.with_state(|s: &State| {
            s.workflows
                .iter()
                .map(|(name, w)| v1::WorkflowSummary {
                    name: name.clone(),
                    latest_version: w.versions.last().map(|v| v.version).unwrap_or(0),
                    schedules: w.schedules.len() as u32,
                })
                .collect()
        });
        Ok(Response::new(v1::ListWorkflowsResponse { workflows }))
    }

    async fn get_workflow(
        &self,
        req: Request<v1::GetWorkflowRequest>,
    ) -> Result<Response<v1::GetWorkflowResponse>, Status> {
        self.read_barrier(req.metadata()).await?;
        let name = req.into_inner().name;
        let versions = self.log.with_state(|s: &State| {
            s.workflows.get(&name).map(|w| {
                w.versions
                    .iter()
                    .map(|v| v1::WorkflowVersion {
                        version: v.version,
                        spec_json: v.spec_json.to_string(),
                        registered_unix_ms: v.registered_ms,
                        from_submit: v.from_submit,
                    })
                    .collect()
            })
        });
        match versions {
            Some(versions) => Ok(Response::new(v1::GetWorkflowResponse { name, versions })),
            None => Err(Status::not_found(format!("no workflow named {name:?}"))),
        }
    }

    async fn submit_run(
        &self,
        req: Request<v1::SubmitRunRequest>,
    ) -> Result<Response<v1::SubmitRunResponse>, Status> {
        let (md, ext, req) = req.into_parts();
        let rt = match self.route(&md).await? {
            Route::Local(rt) => rt,
            Route::Leader(mut c) => return c.submit_run(self.forwarded(&md, req)).await,
        };
        let target = match req.workflow {
            Some(v1::submit_run_request::Workflow::Registered(r)) => SubmitTarget::Registered {
                name: r.name,
                version: (r.version != 0).then_some(r.version),
            },
            Some(v1::submit_run_request::Workflow::InlineSpec(source)) => {
                SubmitTarget::Inline { source }
            }
            None => {
                return Err(Status::invalid_argument(
                    "workflow: give a registered workflow or an inline spec",
                ));
            }
        };
        let mut params = BTreeMap::new();
        for (k, v) in req.params_json {
            let value = serde_json::from_str(&v).map_err(|e| {
                Status::invalid_argument(format!(
                    "params.{k}: value is not JSON ({e}); write text values as JSON strings"
                ))
            })?;
            params.insert(k, value);
        }
        // The root of the run's trace (the runtime's decide, append and
        // launch spans are its children; `run` is filled in once known).
        let span = tracing::info_span!(
            "submit_run",
            workflow = tracing::field::Empty,
            key = %req.idempotency_key,
            run = tracing::field::Empty,
            existing = tracing::field::Empty
        );
        let out = self
            .command(
                rt,
                &ext,
                Command::SubmitRun {
                    target,
                    params,
                    idempotency_key: req.idempotency_key,
                },
            )
            .instrument(span.clone())
            .await?;
        let (run_id, existing) = self.started_run(&out)?;
        span.record("run", run_id);
        span.record("existing", existing);
        if let Some(w) = self
            .log
            .with_state(|s| s.run(run_id).map(|r| r.workflow.clone()))
        {
            span.record("workflow", w.as_str());
        }
        Ok(Response::new(v1::SubmitRunResponse { run_id, existing }))
    }

    async fn get_run(&self, req: Request<v1::GetRunRequest>) -> Result<Response<v1::Run>, Status> {
        self.read_barrier(req.metadata()).await?;
        let id = req.into_inner().run_id;
        self.log
            .with_state(|s| s.run(id).map(run_view).ok_or_else(|| s.run_not_found(id)))
            .map(Response::new)
            .map_err(Status::not_found)
    }

    async fn list_runs(
        &self,
        req: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        self.read_barrier(req.metadata()).await?;
        let req = req.into_inner();
        // A misspelt status filter is an error, not an empty list (issue 9, G).
        const STATUSES: [&str; 4] = ["running", "succeeded", "failed", "cancelled"];
        if !req.status.is_empty() && !STATUSES.contains(&req.status.as_str()) {
            return Err(Status::invalid_argument(format!(
                "status: unknown status {:?} (one of {})",
                req.status,
                STATUSES.join(", ")
            )));
        }
        let size = match req.page_size {
            0 => 50,
            n if n > LIST_PAGE_SIZE_MAX => {
                return Err(Status::invalid_argument(format!(
                    "page_size {n} is over LIST_PAGE_SIZE_MAX = {LIST_PAGE_SIZE_MAX}"
                )));
            }
            n => n,
        } as usize;
        let below = if req.page_token == 0 {
            u64::MAX
        } else {
            req.page_token
        };
        let (runs, next) = self.log.with_state(|s| {
            let mut out = Vec::new();
            let mut next = 0;
            for (&id, r) in s.runs.range(..below).rev() {
                if (!req.workflow.is_empty() && r.workflow != req.workflow)
                    || (!req.status.is_empty() && run_status(r.status) != req.status)
                {
                    continue;
                }
                if out.len() == size {
                    next = id + 1;
                    break;
                }
                out.push(v1::RunSummary {
                    id,
                    workflow: r.workflow.clone(),
                    version: r.version,
                    status: run_status(r.status).into(),
                    submitted_unix_ms: r.submitted_ms,
                    finished_unix_ms: r.finished_ms.unwrap_or(0),
                    message: r.message.clone(),
                });
            }
            (out, next)
        });
        Ok(Response::new(v1::ListRunsResponse {
            runs,
            next_page_token: next,
        }))
    }

    type WatchRunStream = ReceiverStream<Result<v1::WatchRunEvent, Status>>;
    type ReadEventsStream = ReceiverStream<Result<v1::ReadEventsBatch, Status>>;

    async fn read_events(
        &self,
        req: Request<v1::ReadEventsRequest>,
    ) -> Result<Response<Self::ReadEventsStream>, Status> {
        self.read_barrier(req.metadata()).await?;
        let req = req.into_inner();
        // The end and its chain head, taken together from one state.
        let (last, head) = self.log.with_state(|s| (s.applied_index, s.chain));
        let to = match req.to_index {
            0 => last,
            n if n > last => {
                return Err(Status::out_of_range(format!(
                    "to_index {n} is past the end of the log: the last event is {last}"
                )));
            }
            n => n,
        };
        let from = req.from_index.max(1);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let log = self.log.clone();
        tokio::spawn(async move {
            let mut cursor = from - 1;
            loop {
                let want = (to.saturating_sub(cursor) as usize).min(READ_EVENTS_BATCH_MAX);
                let batch = if want == 0 {
                    Vec::new()
                } else {
                    log.events_after(cursor, want)
                };
                if let Some(e) = batch.last() {
                    cursor = e.index;
                }
                let done = cursor >= to || batch.is_empty();
                let msg = v1::ReadEventsBatch {
                    events: batch.iter().map(kaon_core::events::encode).collect(),
                    last_index: last,
                    chain_head: if done {
                        kaon_core::decide::hex(&head)
                    } else {
                        String::new()
                    },
                };
                if tx.send(Ok(msg)).await.is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn watch_run(
        &self,
        req: Request<v1::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        // Linearizable start (a run just submitted elsewhere is found);
        // the stream then follows this node's applied log.
        self.read_barrier(req.metadata()).await?;
        let req = req.into_inner();
        let run_id = req.run_id;
        if let Some(missing) = self
            .log
            .with_state(|s| s.run(run_id).is_none().then(|| s.run_not_found(run_id)))
        {
            return Err(Status::not_found(missing));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let log = self.log.clone();
        let mut committed = log.subscribe();
        tokio::spawn(async move {
            // The run's events start at its own index.
            let mut cursor = req.after_index.max(run_id - 1);
            loop {
                let batch = log.events_after(cursor, WATCH_BATCH_EVENTS_MAX);
                let mut finished = false;
                for e in batch {
                    cursor = e.index;
                    if run_of(&e) != Some(run_id) {
                        continue;
                    }
                    finished |= matches!(e.body, Some(Body::RunFinished(_)));
                    let run = log.with_state(|s| s.run(run_id).map(run_view));
                    if tx
                        .send(Ok(v1::WatchRunEvent {
                            event: Some(e),
                            run,
                        }))
                        .await
                        .is_err()
                    {
                        return; // the client went away
                    }
                }
                if finished {
                    return;
                }
                // A long catch-up through other runs' events sends nothing:
                // let the worker thread go between batches.
                tokio::task::yield_now().await;
                // A run that ended (or was retired) at or before the cursor
                // sends nothing more: a watch that resumes after its last
                // event ends instead of waiting forever.
                let past_the_end = log.with_state(|s| {
                    cursor >= s.applied_index
                        && s.run(run_id).is_none_or(|r| r.finished_ms.is_some())
                });
                if past_the_end {
                    return;
                }
                if log.events_after(cursor, 1).is_empty() && committed.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn cancel_run(
        &self,
        req: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::CancelRunResponse>, Status> {
        let (md, ext, req) = req.into_parts();
        let rt = match self.route(&md).await? {
            Route::Local(rt) => rt,
            Route::Leader(mut c) => return c.cancel_run(self.forwarded(&md, req)).await,
        };
        let reason = if req.reason.is_empty() {
            "cancelled by a client".to_string()
        } else {
            req.reason
        };
        self.command(
            rt,
            &ext,
            Command::CancelRun {
                run_id: req.run_id,
                reason,
            },
        )
        .await?;
        Ok(Response::new(v1::CancelRunResponse {}))
    }

    async fn list_schedules(
        &self,
        req: Request<v1::ListSchedulesRequest>,
    ) -> Result<Response<v1::ListSchedulesResponse>, Status> {
        self.read_barrier(req.metadata()).await?;
        let schedules = self.log.with_state(|s| {
            let mut out = Vec::new();
            for (name, w) in &s.workflows {
                // Only registered versions arm schedules (a submitted file
                // runs once).
                let Some(v) = w.schedule_version() else {
                    continue;
                };
                for (i, (plan, st)) in v.plan.schedules.iter().zip(&w.schedules).enumerate() {
                    out.push(v1::Schedule {
                        workflow: name.clone(),
                        index: i as u32,
                        cron: plan.pattern.clone(),
                        timezone: plan.timezone.name().to_string(),
                        paused: st.paused,
                        last_fire_unix_ms: st.last_fire_ms.unwrap_or(0),
                    });
                }
            }
            out
        });
        Ok(Response::new(v1::ListSchedulesResponse { schedules }))
    }

    async fn set_schedule_paused(
        &self,
        req: Request<v1::SetSchedulePausedRequest>,
    ) -> Result<Response<v1::SetSchedulePausedResponse>, Status> {
        let (md, ext, r) = req.into_parts();
        let rt = match self.route(&md).await? {
            Route::Local(rt) => rt,
            Route::Leader(mut c) => return c.set_schedule_paused(self.forwarded(&md, r)).await,
        };
        self.command(
            rt,
            &ext,
            Command::SetSchedulePaused {
                workflow: r.workflow,
                index: r.index,
                paused: r.paused,
            },
        )
        .await?;
        Ok(Response::new(v1::SetSchedulePausedResponse {}))
    }

    async fn cluster_status(
        &self,
        _: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let st = self
            .log
            .cluster_status()
            .ok_or_else(|| Status::failed_precondition("this node's log is not replicated"))?;
        let matched: BTreeMap<u64, u64> = st.replication.iter().copied().collect();
        let api_addrs = self.log.with_state(|s| s.api_addrs.clone());
        let digest = self
            .log
            .raft_node()
            .map(|n| kaon_core::decide::hex(&n.digest()))
            .unwrap_or_default();
        let reachable = self
            .log
            .raft_node()
            .map(|n| n.reachable())
            .unwrap_or_default();
        let (ready, not_ready_reason) = match readiness(&*self.log) {
            kaon_log::Readiness::Ready => (true, String::new()),
            kaon_log::Readiness::NotReady(why) => (false, why),
        };
        let members = st
            .members
            .iter()
            .map(|m| v1::ClusterMember {
                reachable: reachable.contains(&m.id),
                id: m.id,
                raft_addr: m.addr.clone(),
                voter: m.voter,
                lag_entries: matched
                    .get(&m.id)
                    .map(|&x| st.committed_index.saturating_sub(x))
                    .unwrap_or(0),
                api_addr: api_addrs.get(&m.id).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(v1::ClusterStatusResponse {
            node_id: st.id,
            state: st.state,
            term: st.term,
            leader_id: st.leader.unwrap_or(0),
            last_log_index: st.last_log_index,
            committed_index: st.committed_index,
            applied_index: st.applied_index,
            applied_event_index: st.applied_event_index,
            members,
            state_digest: digest,
            ready,
            not_ready_reason,
        }))
    }

    async fn retry_run(
        &self,
        req: Request<v1::RetryRunRequest>,
    ) -> Result<Response<v1::RetryRunResponse>, Status> {
        let (md, ext, req) = req.into_parts();
        let rt = match self.route(&md).await? {
            Route::Local(rt) => rt,
            Route::Leader(mut c) => return c.retry_run(self.forwarded(&md, req)).await,
        };
        let out = self
            .command(
                rt,
                &ext,
                Command::RetryRun {
                    run_id: req.run_id,
                    idempotency_key: req.idempotency_key,
                },
            )
            .await?;
        let (run_id, existing) = self.started_run(&out)?;
        Ok(Response::new(v1::RetryRunResponse { run_id, existing }))
    }

    async fn read_step_logs(
        &self,
        req: Request<v1::ReadStepLogsRequest>,
    ) -> Result<Response<v1::ReadStepLogsResponse>, Status> {
        self.read_barrier(req.metadata()).await?;
        let req = req.into_inner();
        let file = match req.stream.as_str() {
            "" | "stdout" => "stdout",
            "stderr" => "stderr",
            other => {
                return Err(Status::invalid_argument(format!(
                    "stream {other:?}: expected \"stdout\" or \"stderr\""
                )));
            }
        };
        let max = match req.max_bytes {
            0 => LOG_READ_BYTES_DEFAULT,
            n if n > LOG_READ_BYTES_MAX => {
                return Err(Status::invalid_argument(format!(
                    "max_bytes {n} is over LOG_READ_BYTES_MAX = {LOG_READ_BYTES_MAX}"
                )));
            }
            n => n,
        };
        let (task_id, agent_id, complete) = self.log.with_state(|s| {
            let run = s
                .run(req.run_id)
                .ok_or_else(|| Status::not_found(s.run_not_found(req.run_id)))?;
            let (i, inst) = run
                .instances
                .iter()
                .enumerate()
                .find(|(_, i)| i.path == req.step_path && i.kind == InstKind::Task)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "run {} has no step {:?} (yet)",
                        req.run_id, req.step_path
                    ))
                })?;
            let attempt = match req.attempt {
                0 => inst.attempts.last(),
                n => inst.attempts.iter().find(|a| a.number == n),
            }
            .ok_or_else(|| {
                Status::not_found(format!(
                    "step {:?} of run {} has no attempt {}",
                    req.step_path,
                    req.run_id,
                    if req.attempt == 0 {
                        "yet".to_string()
                    } else {
                        req.attempt.to_string()
                    }
                ))
            })?;
            Ok::<_, Status>((
                run.task_id(i as u32, attempt.number),
                attempt.agent_id.clone(),
                attempt.state.is_terminal(),
            ))
        })?;
        if agent_id.is_empty() {
            return Err(Status::failed_precondition(format!(
                "task {task_id} has not been placed on an agent yet"
            )));
        }
        let (agent, dir) = match self.sandbox(&agent_id, &task_id).await {
            Ok(found) => found,
            Err(e) if e.code() == tonic::Code::NotFound => {
                let Some(root) = &self.config.local_sandboxes else {
                    return Err(e);
                };
                let Some(path) = local_sandbox_file(root, &agent_id, &task_id, file) else {
                    return Err(e);
                };
                let (data, offset, size) =
                    read_file_range(&path, req.offset, max).map_err(|err| {
                        Status::internal(format!("reading {}: {err}", path.display()))
                    })?;
                return Ok(Response::new(v1::ReadStepLogsResponse {
                    data,
                    offset,
                    size,
                    task_id,
                    complete,
                }));
            }
            Err(e) => return Err(e),
        };
        // kaon's executor keeps each task's files in a folder of its own.
        let path = format!("{dir}/{}/{file}", kaon_mesos::executor::task_dir(&task_id));
        let read = |offset: i64, length: u32| {
            format!(
                "{agent}/files/read?path={}&offset={offset}&length={length}",
                url_escape(&path)
            )
        };
        let size = self.get_json(&read(-1, 0)).await?["offset"]
            .as_i64()
            .unwrap_or(0);
        let start = if req.offset < 0 {
            (size + req.offset).max(0)
        } else {
            req.offset.min(size)
        };
        let r = self.get_json(&read(start, max)).await?;
        Ok(Response::new(v1::ReadStepLogsResponse {
            data: r["data"].as_str().unwrap_or("").as_bytes().to_vec(),
            offset: r["offset"].as_i64().unwrap_or(start),
            size,
            task_id,
            complete,
        }))
    }

    async fn init_cluster(
        &self,
        req: Request<v1::InitClusterRequest>,
    ) -> Result<Response<v1::InitClusterResponse>, Status> {
        let node = self
            .log
            .raft_node()
            .ok_or_else(|| Status::failed_precondition("this node's log is not replicated"))?;
        let members: BTreeMap<u64, String> = req.into_inner().members.into_iter().collect();
        for (id, addr) in &members {
            kaon_log::membership::parse_raft_addr(addr).map_err(|e| {
                Status::invalid_argument(format!("members[{id}]: raft address {e}"))
            })?;
        }
        if !members.contains_key(&node.id()) {
            return Err(Status::invalid_argument(format!(
                "members must include this node ({} at {})",
                node.id(),
                node.addr()
            )));
        }
        if node.is_initialized().await {
            return Err(Status::failed_precondition(format!(
                "node {} is already part of a cluster",
                node.id()
            )));
        }
        node.initialize_with(members)
            .await
            .map_err(membership_error)?;
        Ok(Response::new(v1::InitClusterResponse {}))
    }

    async fn add_node(
        &self,
        req: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::AddNodeResponse>, Status> {
        if let Some(mut c) = self.admin_route(req.metadata())? {
            let (md, _, msg) = req.into_parts();
            return c.add_node(self.forwarded(&md, msg)).await;
        }
        let node = self.log.raft_node().expect("admin_route checked");
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(Status::invalid_argument("node_id: node ids start at 1"));
        }
        kaon_log::membership::parse_raft_addr(&r.raft_addr)
            .map_err(|e| Status::invalid_argument(format!("raft_addr: {e}")))?;
        node.add_node(r.node_id, &r.raft_addr, !r.learner)
            .await
            .map_err(membership_error)?;
        Ok(Response::new(v1::AddNodeResponse {}))
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        if let Some(mut c) = self.admin_route(req.metadata())? {
            let (md, _, msg) = req.into_parts();
            return c.remove_node(self.forwarded(&md, msg)).await;
        }
        let node = self.log.raft_node().expect("admin_route checked");
        let id = req.into_inner().node_id;
        if !node.status().members.iter().any(|m| m.id == id) {
            return Err(Status::not_found(format!("node {id} is not a member")));
        }
        node.remove_node(id).await.map_err(membership_error)?;
        Ok(Response::new(v1::RemoveNodeResponse {}))
    }

    async fn transfer_leader(
        &self,
        req: Request<v1::TransferLeaderRequest>,
    ) -> Result<Response<v1::TransferLeaderResponse>, Status> {
        if let Some(mut c) = self.admin_route(req.metadata())? {
            let (md, _, msg) = req.into_parts();
            return c.transfer_leader(self.forwarded(&md, msg)).await;
        }
        let node = self.log.raft_node().expect("admin_route checked");
        node.transfer_leader(req.into_inner().node_id, Duration::from_secs(5))
            .await
            .map_err(membership_error)?;
        Ok(Response::new(v1::TransferLeaderResponse {}))
    }

    async fn snapshot(
        &self,
        _: Request<v1::SnapshotRequest>,
    ) -> Result<Response<v1::SnapshotResponse>, Status> {
        let node = self
            .log
            .raft_node()
            .ok_or_else(|| Status::failed_precondition("this node's log is not replicated"))?;
        let index = node
            .snapshot(Duration::from_secs(60))
            .await
            .map_err(|e| Status::internal(format!("building a snapshot: {e}")))?;
        let info = node.snapshot_info();
        Ok(Response::new(v1::SnapshotResponse {
            node_id: node.id(),
            raft_log_index: info.map(|i| i.log_index).unwrap_or(index),
            event_index: info.map(|i| i.event_index).unwrap_or(0),
            chain_head: info
                .map(|i| kaon_core::decide::hex(&i.chain))
                .unwrap_or_default(),
            state_digest: info
                .map(|i| kaon_core::decide::hex(&i.digest))
                .unwrap_or_default(),
        }))
    }

    async fn read_index(
        &self,
        _: Request<v1::ReadIndexRequest>,
    ) -> Result<Response<v1::ReadIndexResponse>, Status> {
        let node = self
            .log
            .raft_node()
            .ok_or_else(|| Status::failed_precondition("this node's log is not replicated"))?;
        let index = node
            .read_index()
            .await
            .map_err(|e| self.unavailable(&format!("no read index here: {e}")))?;
        Ok(Response::new(v1::ReadIndexResponse {
            raft_log_index: index,
        }))
    }
}

/// The step's `file` (stdout, stderr) in an emulator sandbox on this
/// machine: `ROOT/slaves/AGENT/frameworks/*/executors/*/runs/*/`
/// `tasks/TASK/FILE` (kaon's executor's layout; any executor, as one runs
/// many steps), the most recently modified if there are several.
fn local_sandbox_file(
    root: &std::path::Path,
    agent_id: &str,
    task_id: &str,
    file: &str,
) -> Option<std::path::PathBuf> {
    let task = kaon_mesos::executor::task_dir(task_id);
    let frameworks =
        std::fs::read_dir(root.join("slaves").join(agent_id).join("frameworks")).ok()?;
    let mut best: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    let executors = frameworks
        .flatten()
        .filter_map(|fw| std::fs::read_dir(fw.path().join("executors")).ok())
        .flat_map(|d| d.flatten());
    for executor in executors {
        let Ok(runs) = std::fs::read_dir(executor.path().join("runs")) else {
            continue;
        };
        for run in runs.flatten() {
            let path = run.path().join(&task).join(file);
            if let Ok(m) = std::fs::metadata(&path).and_then(|m| m.modified())
                && best.as_ref().is_none_or(|(t, _)| m > *t)
            {
                best = Some((m, path));
            }
        }
    }
    best.map(|(_, p)| p)
}

/// Reads up to `max` bytes of `path` from `offset` (negative: from the
/// end); returns (data, start offset, file size).
fn read_file_range(
    path: &std::path::Path,
    offset: i64,
    max: u32,
) -> std::io::Result<(Vec<u8>, i64, i64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len() as i64;
    let start = if offset < 0 {
        (size + offset).max(0)
    } else {
        offset.min(size)
    };
    f.seek(SeekFrom::Start(start as u64))?;
    let mut data = Vec::new();
    f.take(u64::from(max)).read_to_end(&mut data)?;
    Ok((data, start, size))
}

/// Events per `ReadEvents` batch (a few MB at most for typical events).
pub const READ_EVENTS_BATCH_MAX: usize = 1_000;

/// Percent-encodes a path for a URL (a query string, or a path whose `/`
/// stays a separator).
pub(crate) fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Serves the API (plus gRPC health and reflection, v1 and v1alpha) on
/// `listener` until `shutdown` resolves. Health tells the truth (issue 9,
/// C): the overall status ("") and `kaon.v1.Kaon` are SERVING only while
/// this node can serve linearizable reads and writes
/// ([`kaon_log::RaftNode::readiness`]), re-checked on every Raft metrics
/// change and every [`HEALTH_RECHECK_MS`].
pub async fn serve<L: EventLog>(
    log: Arc<L>,
    runtime: RuntimeSlot,
    config: ServiceConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let kaon_name =
        <v1::kaon_server::KaonServer<KaonService<L>> as tonic::server::NamedService>::NAME;
    let watcher = tokio::spawn(report_health(log.clone(), health_reporter, kaon_name));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(kaon_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let auth = AuthLayer::new(config.auth.clone());
    let tls = config.tls.clone();
    let router = tonic::transport::Server::builder()
        .layer(auth)
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(v1::kaon_server::KaonServer::new(KaonService::new(
            log, runtime, config,
        )));
    let served = match tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(
                    tls.incoming(listener, kaon_log::tls::Side::Api),
                    shutdown,
                )
                .await
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown,
                )
                .await
        }
    };
    watcher.abort();
    served?;
    Ok(())
}

/// How often health is re-checked when nothing in Raft changes, ms (a
/// leader's quorum contact ages without a metrics change).
pub const HEALTH_RECHECK_MS: u64 = 200;

/// This node's readiness: a log that does not replicate is always ready.
pub fn readiness<L: EventLog>(log: &L) -> kaon_log::Readiness {
    log.raft_node()
        .map(|n| n.readiness())
        .unwrap_or(kaon_log::Readiness::Ready)
}

async fn report_health<L: EventLog>(
    log: Arc<L>,
    reporter: tonic_health::server::HealthReporter,
    kaon_name: &'static str,
) {
    use tonic_health::ServingStatus;
    let mut watch = log.raft_node().map(|n| n.metrics_watch());
    let mut last: Option<ServingStatus> = None;
    loop {
        let status = match readiness(&*log) {
            kaon_log::Readiness::Ready => ServingStatus::Serving,
            kaon_log::Readiness::NotReady(why) => {
                if last != Some(ServingStatus::NotServing) {
                    tracing::warn!(reason = %why, "health: NOT_SERVING");
                }
                ServingStatus::NotServing
            }
        };
        if last != Some(status) {
            if last == Some(ServingStatus::NotServing) {
                tracing::info!("health: SERVING");
            }
            reporter.set_service_status("", status).await;
            reporter.set_service_status(kaon_name, status).await;
            last = Some(status);
        }
        let recheck = Duration::from_millis(HEALTH_RECHECK_MS);
        match watch.as_mut() {
            Some(w) => {
                if !w.changed(recheck).await {
                    // The node shut down: it serves nothing any more.
                    reporter
                        .set_service_status("", ServingStatus::NotServing)
                        .await;
                    reporter
                        .set_service_status(kaon_name, ServingStatus::NotServing)
                        .await;
                    return;
                }
            }
            None => tokio::time::sleep(recheck).await,
        }
    }
}
