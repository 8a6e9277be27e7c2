//! The emulated master and agents: frameworks, offers, tasks, executors and
//! the agents' status-update managers. Everything lives behind one mutex that
//! is never held across an `.await`; events leave through unbounded channels
//! that feed the HTTP streaming responses.

use super::EmulatorConfig;
use super::launcher::{LaunchKind, LaunchRequest, LaunchedProcess};
use super::process::{self, stout_duration};
use crate::recordio;
use crate::resources::Resources;
use crate::types::executor as ex;
use crate::types::scheduler as sch;
use crate::types::{
    AgentInfo, Attribute, B64, CommandInfo, ExecutorInfo, FrameworkInfo, Id, Offer, Source,
    TaskInfo, TaskState, TaskStatus,
};
use bytes::Bytes;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// Upper bound for `refuse_seconds`, as in Mesos (one year).
pub const REFUSE_SECONDS_MAX: f64 = 31_536_000.0;
/// Default `refuse_seconds` when a call gives none.
pub const REFUSE_SECONDS_DEFAULT: f64 = 5.0;
/// Minimum bundle worth offering: cpus (cores) ...
pub const MIN_CPUS: f64 = 0.01;
/// ... or memory (MB).
pub const MIN_MEM_MB: f64 = 32.0;

/// Where scheduler requests should go (leader election is simulated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This master serves calls.
    Leader,
    /// Standby: redirect to `leader` (`host:port`) or 503 when unknown.
    Standby {
        /// The leader's `host:port`, if one is elected.
        leader: Option<String>,
    },
}

/// Encodes one event as a RecordIO frame of compact JSON.
pub fn frame<T: Serialize>(event: &T) -> Bytes {
    let json = serde_json::to_vec(event).unwrap_or_else(|_| b"{}".to_vec());
    Bytes::from(recordio::encode(&json))
}

pub(crate) struct Subscription {
    pub stream_id: String,
    pub tx: mpsc::UnboundedSender<Bytes>,
}

pub(crate) struct Framework {
    pub id: String,
    pub info: FrameworkInfo,
    pub sub: Option<Subscription>,
    /// Bumped on every (dis)connection so stale failover timers do nothing.
    pub epoch: u64,
    pub suppressed: bool,
    /// Per agent: resources refused and until when.
    /// Per agent: every unexpired refuse filter (resources refused, until).
    /// As in Mesos, each filter blocks offers that are a subset of what it
    /// refused; filters accumulate and are cleared by REVIVE.
    pub filters: BTreeMap<usize, Vec<(Resources, Instant)>>,
    pub tasks: BTreeMap<String, TaskRec>,
}

impl Framework {
    fn partition_aware(&self) -> bool {
        self.info.has_capability("PARTITION_AWARE")
    }

    fn send(&self, event: &sch::Event) -> bool {
        match &self.sub {
            Some(s) => s.tx.send(frame(event)).is_ok(),
            None => false,
        }
    }
}

pub(crate) struct TaskRec {
    pub info: TaskInfo,
    pub agent: usize,
    pub executor_id: String,
    pub status: TaskStatus,
    pub resources: Resources,
}

pub(crate) struct ExecRec {
    pub info: ExecutorInfo,
    /// Command task run by the agent itself (no executor process).
    pub command_task: bool,
    /// Command task run through kaon-executor as command executor.
    pub http_command_executor: bool,
    /// What the launcher started (`None` until it has started).
    pub process: Option<Arc<dyn LaunchedProcess>>,
    pub sub: Option<mpsc::UnboundedSender<Bytes>>,
    /// Tasks waiting for the executor to SUBSCRIBE.
    pub queued: Vec<TaskInfo>,
    pub tasks: BTreeSet<String>,
    pub resources: Resources,
    pub sandbox: PathBuf,
    pub kill_requested: bool,
    pub shutting_down: bool,
    /// Whether the executor has subscribed before (a new SUBSCRIBE is a
    /// re-subscription, e.g. after an agent restart).
    pub subscribed_before: bool,
}

impl ExecRec {
    /// The process group of a real process (checkpointed).
    pub fn pgid(&self) -> Option<i32> {
        self.process.as_ref().and_then(|p| p.pgid())
    }

    /// Signals the launched process, if started.
    pub fn signal(&self, signal: i32) {
        if let Some(p) = &self.process {
            p.signal(signal);
        }
    }

    fn send(&self, event: &ex::Event) -> bool {
        match &self.sub {
            Some(tx) => tx.send(frame(event)).is_ok(),
            None => false,
        }
    }
}

/// Per-task FIFO of updates, one in flight, retried with backoff until acked.
pub(crate) struct UpdateStream {
    pub queue: VecDeque<TaskStatus>,
    pub next_retry: Instant,
    pub backoff: Duration,
}

pub(crate) struct Agent {
    pub id: String,
    pub hostname: String,
    pub addr: SocketAddr,
    pub total: Resources,
    pub used: Resources,
    pub attributes: Vec<Attribute>,
    pub executors: BTreeMap<(String, String), ExecRec>,
    pub updates: BTreeMap<(String, String), UpdateStream>,
    /// Uuids of every update recorded, to drop replays after a re-subscribe.
    pub seen_uuids: BTreeSet<Vec<u8>>,
    /// Simulated agent restart in progress: the executor API answers 503.
    pub recovering: bool,
    /// Executor UPDATE calls refused while recovering (for tests).
    pub refused_updates: u64,
    /// The agent was lost (simulated machine failure): no offers, no API.
    pub lost: bool,
    /// Executors that ended, newest last, at most
    /// [`COMPLETED_EXECUTORS_MAX`]: `/state` lists them with their sandbox
    /// so logs stay readable after a step ends (as Mesos's
    /// `completed_executors`).
    pub completed_executors: std::collections::VecDeque<CompletedExecutor>,
}

/// Most ended executors an agent remembers (Mesos's default
/// `--max_completed_executors_per_framework` is 150; we keep more because
/// one kaon step is one executor).
pub(crate) const COMPLETED_EXECUTORS_MAX: usize = 1000;

/// An executor that ended: where its sandbox is.
pub(crate) struct CompletedExecutor {
    pub framework_id: String,
    pub id: String,
    pub directory: PathBuf,
    pub tasks: Vec<String>,
}

impl Agent {
    /// Remembers an executor that ended (bounded).
    fn executor_ended(&mut self, framework: &str, id: &str, e: &ExecRec) {
        if self.completed_executors.len() >= COMPLETED_EXECUTORS_MAX {
            self.completed_executors.pop_front();
        }
        self.completed_executors.push_back(CompletedExecutor {
            framework_id: framework.to_string(),
            id: id.to_string(),
            directory: e.sandbox.clone(),
            tasks: e.tasks.iter().cloned().collect(),
        });
    }
}

impl Agent {
    pub fn info(&self) -> AgentInfo {
        AgentInfo {
            hostname: self.hostname.clone(),
            port: Some(self.addr.port()),
            id: Some(Id::new(&self.id)),
            resources: self.total.to_mesos(),
            attributes: self.attributes.clone(),
        }
    }
}

/// A process start prepared under the lock and run outside it.
pub(crate) struct SpawnJob {
    agent: usize,
    framework: String,
    executor_id: String,
    task_id: Id,
    task: TaskInfo,
    kind: LaunchKind,
    agent_id: String,
    command: CommandInfo,
    env: Vec<(String, String)>,
    sandbox: PathBuf,
    survive: bool,
    command_task: bool,
}

pub(crate) struct OutstandingOffer {
    pub framework: String,
    pub agent: usize,
    pub resources: Resources,
}

pub(crate) struct State {
    pub master_id: String,
    pub leadership: Leadership,
    pub unavailable_next: u32,
    pub next_framework: u64,
    pub next_offer: u64,
    pub frameworks: BTreeMap<String, Framework>,
    pub completed: BTreeSet<String>,
    pub agents: Vec<Agent>,
    pub offers: BTreeMap<String, OutstandingOffer>,
    pub live_processes: usize,
    pub shutting_down: bool,
}

/// Shared core of one emulator instance.
pub(crate) struct Core {
    pub state: Mutex<State>,
    pub config: EmulatorConfig,
    pub master_addr: SocketAddr,
    pub allocate: Notify,
    pub processes_changed: Notify,
    pub executor_path: PathBuf,
    /// Source of every random id (random, or seeded for a simulation).
    pub ids: super::ids::Ids,
}

/// Outcome of validating a scheduler call against framework state.
pub(crate) enum CallAuth {
    Ok,
    NotFound,
    NotSubscribed,
    MissingStreamId,
    WrongStreamId,
}

impl Core {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wall-clock seconds since the epoch, from the configured clock.
    fn now_secs(&self) -> f64 {
        self.config.clock.now_secs()
    }

    /// A fresh status update uuid, from the configured id source.
    fn new_uuid(&self) -> B64 {
        B64(self.ids.uuid_bytes().to_vec())
    }

    pub fn check_stream(&self, framework_id: &str, stream_id: Option<&str>) -> CallAuth {
        let st = self.lock();
        let Some(fw) = st.frameworks.get(framework_id) else {
            return CallAuth::NotFound;
        };
        let Some(sub) = &fw.sub else {
            return CallAuth::NotSubscribed;
        };
        match stream_id {
            None => CallAuth::MissingStreamId,
            Some(s) if s != sub.stream_id => CallAuth::WrongStreamId,
            Some(_) => CallAuth::Ok,
        }
    }

    fn master_info(&self, st: &State) -> crate::types::MasterInfo {
        let ip = match self.master_addr.ip() {
            std::net::IpAddr::V4(v4) => u32::from_ne_bytes(v4.octets()),
            _ => 0,
        };
        crate::types::MasterInfo {
            id: st.master_id.clone(),
            ip,
            port: u32::from(self.master_addr.port()),
            pid: Some(format!("master@{}", self.master_addr)),
            hostname: Some(self.config.hostname.clone()),
            version: Some(super::MESOS_VERSION.into()),
            address: Some(crate::types::Address {
                hostname: Some(self.config.hostname.clone()),
                ip: Some(self.master_addr.ip().to_string()),
                port: self.master_addr.port(),
            }),
        }
    }

    /// Validates the semantic parts of SUBSCRIBE that Mesos reports as an
    /// ERROR event on a 200 stream.
    fn subscribe_error(st: &State, info: &FrameworkInfo) -> Option<String> {
        let multi = info.has_capability("MULTI_ROLE");
        if !multi && !info.roles.is_empty() {
            return Some(
                "'FrameworkInfo.roles' is set but the MULTI_ROLE capability is not".into(),
            );
        }
        if multi && info.role.is_some() {
            return Some(
                "'FrameworkInfo.role' must not be set with the MULTI_ROLE capability".into(),
            );
        }
        if let Some(existing) = info.id.as_ref().and_then(|id| st.frameworks.get(&id.value))
            && existing.info.principal != info.principal
        {
            return Some("Changing framework's principal is not allowed".into());
        }
        let mut seen = BTreeSet::new();
        if info.roles.iter().any(|r| !seen.insert(r)) {
            return Some("'FrameworkInfo.roles' contains duplicate entries".into());
        }
        if let Some(t) = info.failover_timeout
            && (!t.is_finite() || t < 0.0)
        {
            return Some(format!("Invalid failover_timeout: {t}"));
        }
        if let Some(id) = &info.id
            && st.completed.contains(&id.value)
        {
            return Some("Framework has been removed".into());
        }
        None
    }

    /// Handles SUBSCRIBE; returns (stream id, event receiver). The first
    /// events (SUBSCRIBED + HEARTBEAT, or a single ERROR) are already queued.
    pub fn subscribe(
        self: &Arc<Self>,
        info: FrameworkInfo,
        suppressed_roles: &[String],
    ) -> (String, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream_id = self.ids.uuid_string();
        let mut st = self.lock();
        if let Some(message) = Self::subscribe_error(&st, &info) {
            tracing::info!(%message, "SUBSCRIBE refused with an ERROR event");
            let mut ev = sch::Event::bare(sch::EventType::Error);
            ev.error = Some(sch::ErrorBody { message });
            let _ = tx.send(frame(&ev));
            return (stream_id, rx); // tx dropped: stream ends after the ERROR
        }
        let id = match &info.id {
            Some(id) if !id.value.is_empty() => id.value.clone(),
            _ => {
                let id = format!("{}-{:04}", st.master_id, st.next_framework);
                st.next_framework += 1;
                id
            }
        };
        let master_info = self.master_info(&st);
        let fw = st
            .frameworks
            .entry(id.clone())
            .or_insert_with(|| Framework {
                id: id.clone(),
                info: info.clone(),
                sub: None,
                epoch: 0,
                suppressed: false,
                filters: BTreeMap::new(),
                tasks: BTreeMap::new(),
            });
        if let Some(old) = fw.sub.take() {
            tracing::info!(framework = %id, "framework failed over to a new subscription");
            let mut ev = sch::Event::bare(sch::EventType::Error);
            ev.error = Some(sch::ErrorBody {
                message: "Framework failed over".into(),
            });
            let _ = old.tx.send(frame(&ev));
        }
        // user and checkpoint cannot change on re-subscription.
        let (user, checkpoint) = (fw.info.user.clone(), fw.info.checkpoint);
        fw.info = info;
        fw.info.user = user;
        fw.info.checkpoint = checkpoint;
        fw.info.id = Some(Id::new(&id));
        fw.epoch += 1;
        // Roles are not modelled separately: any suppressed role suppresses
        // the framework's offers until REVIVE.
        fw.suppressed = !suppressed_roles.is_empty();
        let mut ev = sch::Event::bare(sch::EventType::Subscribed);
        ev.subscribed = Some(sch::Subscribed {
            framework_id: Id::new(&id),
            heartbeat_interval_seconds: Some(self.config.heartbeat_interval.as_secs_f64()),
            master_info: Some(master_info),
        });
        let _ = tx.send(frame(&ev));
        let _ = tx.send(frame(&sch::Event::bare(sch::EventType::Heartbeat)));
        fw.sub = Some(Subscription {
            stream_id: stream_id.clone(),
            tx,
        });
        // Offers made to the previous subscription are gone.
        st.offers.retain(|_, o| o.framework != id);
        // Deliver pending status updates right away.
        let now = Instant::now();
        for agent in st.agents.iter_mut() {
            for ((f, _), stream) in agent.updates.iter_mut() {
                if *f == id {
                    stream.next_retry = now;
                }
            }
        }
        drop(st);
        self.retry_updates();
        self.allocate.notify_one();
        self.spawn_heartbeats(id, stream_id.clone());
        (stream_id, rx)
    }

    fn spawn_heartbeats(self: &Arc<Self>, framework: String, stream_id: String) {
        let core = Arc::downgrade(self);
        let every = self.config.heartbeat_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let Some(core) = core.upgrade() else { return };
                let st = core.lock();
                let Some(fw) = st.frameworks.get(&framework) else {
                    return;
                };
                match &fw.sub {
                    Some(s) if s.stream_id == stream_id => {
                        if s.tx
                            .send(frame(&sch::Event::bare(sch::EventType::Heartbeat)))
                            .is_err()
                        {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        });
    }

    /// The streaming connection of `stream_id` is gone: mark the framework
    /// disconnected, drop its offers and arm the failover timer.
    pub fn disconnected(self: &Arc<Self>, framework: &str, stream_id: &str) {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.get_mut(framework) else {
            return;
        };
        if fw.sub.as_ref().map(|s| s.stream_id.as_str()) != Some(stream_id) {
            return;
        }
        fw.sub = None;
        fw.epoch += 1;
        let epoch = fw.epoch;
        let timeout = fw.info.failover_timeout.unwrap_or(0.0).clamp(0.0, 1e9);
        tracing::info!(%framework, failover_timeout = timeout, "framework disconnected");
        st.offers.retain(|_, o| o.framework != framework);
        drop(st);
        let core = Arc::downgrade(self);
        let framework = framework.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(timeout)).await;
            let Some(core) = core.upgrade() else { return };
            let expired = {
                let st = core.lock();
                st.frameworks
                    .get(&framework)
                    .is_some_and(|f| f.sub.is_none() && f.epoch == epoch)
            };
            if expired {
                tracing::info!(%framework, "failover timeout expired; removing framework");
                core.remove_framework(&framework);
            }
        });
    }

    /// TEARDOWN or failover timeout: kill everything of the framework and
    /// remember its id as completed.
    pub fn remove_framework(self: &Arc<Self>, framework: &str) {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.remove(framework) else {
            return;
        };
        st.completed.insert(fw.id.clone());
        st.offers.retain(|_, o| o.framework != framework);
        let mut to_shutdown = Vec::new();
        for (i, agent) in st.agents.iter_mut().enumerate() {
            agent.updates.retain(|(f, _), _| f != framework);
            for (f, e) in agent.executors.keys() {
                if f == framework {
                    to_shutdown.push((i, e.clone()));
                }
            }
        }
        drop(st);
        drop(fw); // closes the subscription stream, if any
        for (agent, executor) in to_shutdown {
            self.shutdown_executor(agent, framework, &executor);
        }
        self.allocate.notify_one();
    }

    /// One allocation round: offer every agent's unused, unoffered resources
    /// to a subscribed, unsuppressed framework whose filters allow it.
    pub fn allocate_once(&self) {
        let mut st = self.lock();
        if st.shutting_down {
            return;
        }
        let now = Instant::now();
        let mut events: BTreeMap<String, Vec<Offer>> = BTreeMap::new();
        for a in 0..st.agents.len() {
            if st.agents[a].lost {
                continue;
            }
            let mut avail = st.agents[a].total.clone();
            avail.subtract(&st.agents[a].used);
            for o in st.offers.values().filter(|o| o.agent == a) {
                avail.subtract(&o.resources);
            }
            if avail.scalar("cpus") < MIN_CPUS && avail.scalar("mem") < MIN_MEM_MB {
                continue;
            }
            let target = st.frameworks.values().find(|fw| {
                fw.sub.is_some()
                    && !fw.suppressed
                    && !fw.filters.get(&a).is_some_and(|fs| {
                        fs.iter()
                            .any(|(refused, until)| *until > now && refused.contains(&avail))
                    })
            });
            let Some(fw) = target else { continue };
            let fw_id = fw.id.clone();
            // MULTI_ROLE frameworks see which role each offer is for.
            let allocation =
                fw.info
                    .has_capability("MULTI_ROLE")
                    .then(|| crate::types::AllocationInfo {
                        role: Some(fw.info.roles.first().cloned().unwrap_or_else(|| "*".into())),
                    });
            let executor_ids: Vec<Id> = st.agents[a]
                .executors
                .iter()
                .filter(|((f, _), e)| *f == fw_id && !e.command_task && !e.http_command_executor)
                .map(|((_, e), _)| Id::new(e))
                .collect();
            let offer_id = format!("{}-O{}", st.master_id, st.next_offer);
            st.next_offer += 1;
            let agent = &st.agents[a];
            let offer = Offer {
                id: Id::new(&offer_id),
                framework_id: Id::new(&fw_id),
                agent_id: Id::new(&agent.id),
                hostname: agent.hostname.clone(),
                url: Some(crate::types::Url {
                    scheme: "http".into(),
                    address: crate::types::Address {
                        hostname: Some(agent.hostname.clone()),
                        ip: Some(agent.addr.ip().to_string()),
                        port: agent.addr.port(),
                    },
                    path: Some("/slave(1)".into()),
                }),
                resources: avail
                    .to_mesos()
                    .into_iter()
                    .map(|mut r| {
                        r.allocation_info = allocation.clone();
                        r
                    })
                    .collect(),
                attributes: agent.attributes.clone(),
                executor_ids,
                allocation_info: allocation,
            };
            st.offers.insert(
                offer_id,
                OutstandingOffer {
                    framework: fw_id.clone(),
                    agent: a,
                    resources: avail,
                },
            );
            events.entry(fw_id).or_default().push(offer);
        }
        for (fw_id, offers) in events {
            if let Some(fw) = st.frameworks.get(&fw_id) {
                let mut ev = sch::Event::bare(sch::EventType::Offers);
                ev.offers = Some(sch::Offers { offers });
                fw.send(&ev);
            }
        }
    }

    fn add_filter(
        st: &mut State,
        framework: &str,
        agent: usize,
        refused: Resources,
        filters: Option<&crate::types::Filters>,
    ) {
        let secs = filters
            .and_then(|f| f.refuse_seconds)
            .unwrap_or(REFUSE_SECONDS_DEFAULT);
        let secs = if secs.is_finite() {
            secs.clamp(0.0, REFUSE_SECONDS_MAX)
        } else {
            REFUSE_SECONDS_DEFAULT
        };
        if secs <= 0.0 || refused.is_empty() {
            return;
        }
        if let Some(fw) = st.frameworks.get_mut(framework) {
            let now = Instant::now();
            let list = fw.filters.entry(agent).or_default();
            list.retain(|(_, until)| *until > now);
            list.push((refused, now + Duration::from_secs_f64(secs)));
        }
    }

    pub fn decline(&self, framework: &str, d: &sch::Decline) {
        let mut st = self.lock();
        for id in &d.offer_ids {
            if st
                .offers
                .get(&id.value)
                .is_some_and(|o| o.framework == framework)
                && let Some(o) = st.offers.remove(&id.value)
            {
                Self::add_filter(&mut st, framework, o.agent, o.resources, d.filters.as_ref());
            }
        }
        drop(st);
        self.allocate.notify_one();
    }

    /// UPDATE_FRAMEWORK: apply a new FrameworkInfo (the principal cannot
    /// change; user and checkpoint changes are ignored, as on re-subscribe).
    pub fn update_framework(
        &self,
        framework: &str,
        u: &sch::UpdateFramework,
    ) -> Result<(), String> {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.get_mut(framework) else {
            return Err("Framework cannot be found".into());
        };
        if fw.info.principal != u.framework_info.principal {
            return Err("Changing framework's principal is not allowed".into());
        }
        let (user, checkpoint, id) = (fw.info.user.clone(), fw.info.checkpoint, fw.info.id.clone());
        fw.info = u.framework_info.clone();
        fw.info.user = user;
        fw.info.checkpoint = checkpoint;
        fw.info.id = id;
        fw.suppressed = !u.suppressed_roles.is_empty();
        drop(st);
        self.allocate.notify_one();
        Ok(())
    }

    pub fn revive(&self, framework: &str) {
        let mut st = self.lock();
        if let Some(fw) = st.frameworks.get_mut(framework) {
            fw.suppressed = false;
            fw.filters.clear();
        }
        drop(st);
        self.allocate.notify_one();
    }

    pub fn suppress(&self, framework: &str) {
        if let Some(fw) = self.lock().frameworks.get_mut(framework) {
            fw.suppressed = true;
        }
    }

    fn master_update(
        &self,
        fw: &Framework,
        task_id: &Id,
        state: TaskState,
        reason: &str,
        message: String,
        agent_id: Option<Id>,
    ) {
        let mut status = TaskStatus::new(task_id.clone(), state);
        status.source = Some(Source::Master);
        status.reason = Some(reason.into());
        status.message = Some(message);
        status.agent_id = agent_id;
        status.timestamp = Some(self.now_secs());
        let mut ev = sch::Event::bare(sch::EventType::Update);
        ev.update = Some(sch::Update { status });
        fw.send(&ev);
    }

    /// Validates a task against Mesos's rules; `Err` is the TASK_ERROR text.
    fn validate_task(
        st: &State,
        framework: &str,
        agent: usize,
        task: &TaskInfo,
    ) -> Result<(), String> {
        if task.command.is_some() == task.executor.is_some() {
            return Err("Task should have at least one (but not both) of CommandInfo or ExecutorInfo present".into());
        }
        if task.agent_id.value != st.agents[agent].id {
            return Err(format!(
                "Task uses agent {} but the offer is for agent {}",
                task.agent_id, st.agents[agent].id
            ));
        }
        if task.resources.is_empty() {
            return Err("Task uses no resources".into());
        }
        let fw = &st.frameworks[framework];
        if fw
            .tasks
            .get(&task.task_id.value)
            .is_some_and(|t| !t.status.state.is_terminal())
        {
            return Err(format!("Task has duplicate ID: {}", task.task_id));
        }
        if let Some(e) = &task.executor {
            if e.command.is_none() {
                return Err("Executor must have a CommandInfo".into());
            }
            if let Some(kind) = e.kind
                && kind != crate::types::ExecutorType::Custom
            {
                return Err("Executor type must be CUSTOM for LAUNCH".into());
            }
            if let Some(existing) = st.agents[agent]
                .executors
                .get(&(framework.to_owned(), e.executor_id.value.clone()))
            {
                let mut ours = e.clone();
                ours.framework_id = Some(Id::new(framework));
                if existing.info != ours {
                    return Err(format!(
                        "ExecutorInfo for executor {} differs from the running one",
                        e.executor_id
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn accept(self: &Arc<Self>, framework: &str, a: &sch::Accept) {
        let mut st = self.lock();
        // Tasks to launch, with a refusal (reason, message) for operations
        // the emulator rejects as Mesos would, or does not support.
        let mut tasks: Vec<(TaskInfo, Option<(&str, String)>)> = Vec::new();
        for op in &a.operations {
            match op.kind {
                sch::OperationType::Launch => {
                    let refusal = op.id.as_ref().map(|_| {
                        (
                            "REASON_TASK_INVALID",
                            "LAUNCH operations must not set an operation id".to_string(),
                        )
                    });
                    for t in op.launch.iter().flat_map(|l| l.task_infos.iter()) {
                        tasks.push((t.clone(), refusal.clone()));
                    }
                }
                sch::OperationType::LaunchGroup => {
                    for t in op
                        .launch_group
                        .iter()
                        .flat_map(|g| g.task_group.tasks.iter())
                    {
                        tasks.push((
                            t.clone(),
                            Some((
                                "REASON_TASK_GROUP_INVALID",
                                "LAUNCH_GROUP is not supported by the kaon Mesos emulator".into(),
                            )),
                        ));
                    }
                }
                other => {
                    tracing::info!(operation = ?other, "offer operation not emulated; ignored")
                }
            }
        }
        let mut seen = BTreeSet::new();
        let mut agent = None;
        let mut invalid = a
            .offer_ids
            .is_empty()
            .then(|| "No offers given".to_string());
        for id in &a.offer_ids {
            match st.offers.get(&id.value) {
                Some(o) if o.framework == framework && seen.insert(id.value.clone()) => {
                    if agent.is_some_and(|x| x != o.agent) {
                        invalid = Some("Aggregated offers must belong to one agent".into());
                    }
                    agent = Some(o.agent);
                }
                _ => invalid = Some(format!("Offer {id} is no longer valid")),
            }
        }
        let mut pool = Resources::default();
        for id in &seen {
            if let Some(o) = st.offers.remove(id) {
                pool.add(&o.resources);
            }
        }
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        if invalid.is_some() || agent.is_none() {
            let message = invalid.unwrap_or_else(|| "Invalid offers".into());
            let state = if fw.partition_aware() {
                TaskState::Dropped
            } else {
                TaskState::Lost
            };
            for (t, _) in &tasks {
                self.master_update(
                    fw,
                    &t.task_id,
                    state,
                    "REASON_INVALID_OFFERS",
                    message.clone(),
                    None,
                );
            }
            drop(st);
            self.allocate.notify_one();
            return;
        }
        let agent = agent.unwrap_or(0);
        let mut launches = Vec::new();
        for (task, refusal) in tasks {
            let fw = &st.frameworks[framework];
            if let Some((reason, message)) = refusal {
                self.master_update(
                    fw,
                    &task.task_id,
                    TaskState::Error,
                    reason,
                    message,
                    Some(task.agent_id.clone()),
                );
                continue;
            }
            if let Err(message) = Self::validate_task(&st, framework, agent, &task) {
                self.master_update(
                    fw,
                    &task.task_id,
                    TaskState::Error,
                    "REASON_TASK_INVALID",
                    message,
                    Some(task.agent_id.clone()),
                );
                continue;
            }
            let mut need = Resources::from_mesos(&task.resources);
            let new_executor = task.executor.as_ref().is_some_and(|e| {
                !st.agents[agent]
                    .executors
                    .contains_key(&(framework.to_owned(), e.executor_id.value.clone()))
                    && !launches.iter().any(|(t, _): &(TaskInfo, Resources)| {
                        t.executor.as_ref().map(|x| &x.executor_id) == Some(&e.executor_id)
                    })
            });
            if new_executor && let Some(e) = &task.executor {
                need.add(&Resources::from_mesos(&e.resources));
            }
            if !pool.contains(&need) {
                self.master_update(
                    fw,
                    &task.task_id,
                    TaskState::Error,
                    "REASON_TASK_INVALID",
                    // Mesos 1.11's wording (master/validation.cpp,
                    // validateResourceUsage); frameworks match on it.
                    format!(
                        "Total resources {need} required by task and its executor is more than available {pool}"
                    ),
                    Some(task.agent_id.clone()),
                );
                continue;
            }
            pool.subtract(&need);
            launches.push((task, need));
        }
        Self::add_filter(&mut st, framework, agent, pool, a.filters.as_ref());
        let jobs: Vec<SpawnJob> = launches
            .into_iter()
            .filter_map(|(task, need)| self.launch(&mut st, framework, agent, task, need))
            .collect();
        drop(st);
        for job in jobs {
            self.run_spawn(job);
        }
        self.allocate.notify_one();
    }

    fn executor_env(
        &self,
        st: &State,
        framework: &str,
        agent: usize,
        executor_id: &str,
        sandbox: &std::path::Path,
        command_executor: bool,
    ) -> Vec<(String, String)> {
        let a = &st.agents[agent];
        let checkpoint = st
            .frameworks
            .get(framework)
            .and_then(|f| f.info.checkpoint)
            .unwrap_or(false);
        let dir = sandbox.display().to_string();
        let mut env = vec![
            ("MESOS_FRAMEWORK_ID".into(), framework.to_owned()),
            ("MESOS_EXECUTOR_ID".into(), executor_id.to_owned()),
            ("MESOS_AGENT_ENDPOINT".into(), a.addr.to_string()),
            ("MESOS_DIRECTORY".into(), dir.clone()),
            ("MESOS_SANDBOX".into(), dir),
            ("MESOS_SLAVE_ID".into(), a.id.clone()),
            ("MESOS_SLAVE_PID".into(), format!("slave(1)@{}", a.addr)),
            (
                "MESOS_CHECKPOINT".into(),
                if checkpoint { "1" } else { "0" }.into(),
            ),
            (
                "MESOS_HTTP_COMMAND_EXECUTOR".into(),
                if command_executor { "1" } else { "0" }.into(),
            ),
            (
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD".into(),
                stout_duration(self.config.executor_shutdown_grace),
            ),
            ("LIBPROCESS_PORT".into(), "0".into()),
        ];
        if checkpoint {
            env.push((
                "MESOS_RECOVERY_TIMEOUT".into(),
                stout_duration(Duration::from_secs(15 * 60)),
            ));
            env.push((
                "MESOS_SUBSCRIPTION_BACKOFF_MAX".into(),
                stout_duration(
                    (self.config.executor_reregistration_timeout / 2).min(Duration::from_secs(2)),
                ),
            ));
        }
        env
    }

    fn sandbox(&self, st: &State, framework: &str, agent: usize, executor_id: &str) -> PathBuf {
        self.config
            .work_dir
            .join("slaves")
            .join(&st.agents[agent].id)
            .join("frameworks")
            .join(framework)
            .join("executors")
            .join(executor_id)
            .join("runs")
            .join(self.ids.uuid_string())
    }

    /// Replaces a bare `kaon-executor` command with the configured path.
    fn resolve_executor(&self, mut cmd: CommandInfo) -> CommandInfo {
        let path = self.executor_path.display().to_string();
        if let Some(v) = &cmd.value {
            if v == "kaon-executor" {
                cmd.value = Some(path);
            } else if let Some(rest) = v.strip_prefix("kaon-executor ")
                && cmd.shell.unwrap_or(true)
            {
                cmd.value = Some(format!("{path} {rest}"));
            }
        }
        cmd
    }

    fn launch(
        self: &Arc<Self>,
        st: &mut State,
        framework: &str,
        agent: usize,
        task: TaskInfo,
        need: Resources,
    ) -> Option<SpawnJob> {
        let task_id = task.task_id.value.clone();
        let executor_id = task
            .executor
            .as_ref()
            .map(|e| e.executor_id.value.clone())
            .unwrap_or_else(|| task_id.clone());
        st.agents[agent].used.add(&need);
        let mut status = TaskStatus::new(task.task_id.clone(), TaskState::Staging);
        status.agent_id = Some(Id::new(&st.agents[agent].id));
        status.executor_id = Some(Id::new(&executor_id));
        let mut task_resources = Resources::from_mesos(&task.resources);
        let key = (framework.to_owned(), executor_id.clone());
        let existing = st.agents[agent].executors.contains_key(&key);
        if let Some(fw) = st.frameworks.get_mut(framework) {
            if !existing && task.executor.is_none() {
                task_resources = need.clone();
            }
            fw.tasks.insert(
                task_id.clone(),
                TaskRec {
                    info: task.clone(),
                    agent,
                    executor_id: executor_id.clone(),
                    status,
                    resources: task_resources,
                },
            );
        }
        if existing {
            let e = st.agents[agent].executors.get_mut(&key).expect("checked");
            e.tasks.insert(task_id);
            if e.sub.is_some() {
                let mut ev = ex::Event::bare(ex::EventType::Launch);
                ev.launch = Some(ex::Launch { task });
                e.send(&ev);
            } else {
                e.queued.push(task);
            }
            return None;
        }
        let sandbox = self.sandbox(st, framework, agent, &executor_id);
        let survive = self.config.checkpoint
            && st
                .frameworks
                .get(framework)
                .is_some_and(|f| f.info.checkpoint == Some(true));
        // Command tasks of checkpointing frameworks run under kaon-executor
        // acting as Mesos's command executor, so they can be recovered (and
        // report their exit status) after an emulator restart.
        let via_executor = survive && task.executor.is_none();
        let (command, info, command_task, exec_resources) = match &task.executor {
            Some(e) => {
                let mut info = e.clone();
                info.framework_id = Some(Id::new(framework));
                let cmd = self.resolve_executor(e.command.clone().unwrap_or_default());
                (cmd, info, false, Resources::from_mesos(&e.resources))
            }
            None => {
                let info = ExecutorInfo {
                    kind: None,
                    executor_id: Id::new(&executor_id),
                    framework_id: Some(Id::new(framework)),
                    command: task.command.clone(),
                    resources: Vec::new(),
                    name: Some(format!("Command Executor (Task: {task_id})")),
                    data: None,
                    shutdown_grace_period: None,
                };
                if via_executor {
                    let cmd = CommandInfo {
                        shell: Some(false),
                        value: Some(self.executor_path.display().to_string()),
                        arguments: vec!["kaon-executor".into()],
                        ..Default::default()
                    };
                    let info = ExecutorInfo {
                        command: Some(cmd.clone()),
                        ..info
                    };
                    (cmd, info, false, Resources::default())
                } else {
                    (
                        task.command.clone().unwrap_or_default(),
                        info,
                        true,
                        Resources::default(),
                    )
                }
            }
        };
        let env = self.executor_env(
            st,
            framework,
            agent,
            &executor_id,
            &sandbox,
            task.executor.is_none(),
        );
        let mut rec = ExecRec {
            info,
            command_task,
            http_command_executor: via_executor,
            process: None,
            sub: None,
            queued: Vec::new(),
            tasks: BTreeSet::from([task_id.clone()]),
            resources: exec_resources,
            sandbox: sandbox.clone(),
            kill_requested: false,
            shutting_down: false,
            subscribed_before: false,
        };
        if !command_task {
            rec.queued.push(task.clone());
        }
        // Registered now (so more tasks for this executor queue up behind
        // it); the fork/exec happens in `run_spawn`, outside the lock.
        st.agents[agent].executors.insert(key, rec);
        let kind = if command_task {
            LaunchKind::CommandTask
        } else if via_executor {
            LaunchKind::CommandExecutor
        } else {
            LaunchKind::Executor
        };
        Some(SpawnJob {
            agent,
            framework: framework.to_owned(),
            executor_id,
            task_id: task.task_id.clone(),
            task,
            kind,
            agent_id: st.agents[agent].id.clone(),
            command,
            env,
            sandbox,
            survive,
            command_task,
        })
    }

    /// Starts the process of a launch prepared under the lock. Runs without
    /// the state lock held, so acknowledgements and other calls interleave
    /// with a large ACCEPT.
    fn run_spawn(self: &Arc<Self>, job: SpawnJob) {
        let request = LaunchRequest {
            kind: job.kind,
            agent: job.agent,
            agent_id: job.agent_id.clone(),
            framework_id: job.framework.clone(),
            executor_id: job.executor_id.clone(),
            task: job.task.clone(),
            command: job.command.clone(),
            env: job.env.clone(),
            sandbox: job.sandbox.clone(),
            die_with_parent: !job.survive,
            agent_router: super::http::agent_router(self.clone(), job.agent),
            ids: self.ids.clone(),
            clock: self.config.clock.clone(),
        };
        let spawned = self.config.launcher.launch(request);
        let mut st = self.lock();
        let key = (job.framework.clone(), job.executor_id.clone());
        match spawned {
            Ok(launched) => {
                let process = launched.process;
                st.live_processes += 1;
                self.watch_exit(
                    launched.exit,
                    job.agent,
                    job.framework.clone(),
                    job.executor_id.clone(),
                );
                let Some(e) = st.agents[job.agent].executors.get_mut(&key) else {
                    // Removed while starting (teardown, shutdown): stop it.
                    process.signal(libc::SIGKILL);
                    return;
                };
                e.process = Some(process.clone());
                if e.kill_requested || e.shutting_down {
                    // A KILL or SHUTDOWN arrived while the process started.
                    process.signal(libc::SIGTERM);
                    self.kill_after(process, self.config.command_kill_grace);
                }
                if job.command_task {
                    for state in [TaskState::Starting, TaskState::Running] {
                        let mut s = TaskStatus::new(job.task_id.clone(), state);
                        s.source = Some(Source::Executor);
                        s.uuid = Some(self.new_uuid());
                        self.status_update(&mut st, job.agent, &job.framework, s);
                    }
                } else {
                    self.arm_registration_timeout(
                        job.agent,
                        job.framework.clone(),
                        job.executor_id.clone(),
                    );
                }
            }
            Err(err) => {
                tracing::warn!(%err, task = %job.task_id, "task launch failed");
                let tasks: Vec<String> = st.agents[job.agent]
                    .executors
                    .get(&key)
                    .map(|e| e.tasks.iter().cloned().collect())
                    .unwrap_or_default();
                for t in tasks {
                    let mut s = TaskStatus::new(Id::new(&t), TaskState::Failed);
                    s.source = Some(Source::Agent);
                    s.reason = Some("REASON_CONTAINER_LAUNCH_FAILED".into());
                    s.message = Some(err.to_string());
                    s.uuid = Some(self.new_uuid());
                    self.status_update(&mut st, job.agent, &job.framework, s);
                }
                if let Some(e) = st.agents[job.agent].executors.remove(&key) {
                    st.agents[job.agent].used.subtract(&e.resources);
                    st.agents[job.agent].executor_ended(&key.0, &key.1, &e);
                }
            }
        }
    }

    fn arm_registration_timeout(
        self: &Arc<Self>,
        agent: usize,
        framework: String,
        executor: String,
    ) {
        let core = Arc::downgrade(self);
        let timeout = self.config.executor_registration_timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let Some(core) = core.upgrade() else { return };
            let mut st = core.lock();
            let key = (framework.clone(), executor.clone());
            let Some(e) = st.agents[agent].executors.get(&key) else {
                return;
            };
            if e.sub.is_some() {
                return;
            }
            tracing::warn!(%framework, %executor, "executor did not subscribe in time; destroying it");
            let (process, tasks): (Option<Arc<dyn LaunchedProcess>>, Vec<String>) =
                (e.process.clone(), e.tasks.iter().cloned().collect());
            if let Some(e) = st.agents[agent].executors.get_mut(&key) {
                e.shutting_down = true;
            }
            for t in tasks {
                let mut s = TaskStatus::new(Id::new(&t), TaskState::Failed);
                s.source = Some(Source::Agent);
                s.reason = Some("REASON_EXECUTOR_REGISTRATION_TIMEOUT".into());
                s.message =
                    Some("Executor did not register within the registration timeout".into());
                s.uuid = Some(core.new_uuid());
                core.status_update(&mut st, agent, &framework, s);
            }
            if let Some(p) = process {
                p.signal(libc::SIGKILL);
            }
        });
    }

    fn watch_exit(
        self: &Arc<Self>,
        exit: futures_util::future::BoxFuture<'static, Option<std::process::ExitStatus>>,
        agent: usize,
        framework: String,
        executor: String,
    ) {
        let core = Arc::downgrade(self);
        tokio::spawn(async move {
            let status = exit.await;
            let Some(core) = core.upgrade() else { return };
            core.process_exited(agent, &framework, &executor, status);
        });
    }

    fn process_exited(
        self: &Arc<Self>,
        agent: usize,
        framework: &str,
        executor: &str,
        status: Option<std::process::ExitStatus>,
    ) {
        use std::os::unix::process::ExitStatusExt;
        let mut st = self.lock();
        st.live_processes = st.live_processes.saturating_sub(1);
        self.processes_changed.notify_waiters();
        let key = (framework.to_owned(), executor.to_owned());
        let Some(e) = st.agents[agent].executors.remove(&key) else {
            return;
        };
        st.agents[agent].executor_ended(&key.0, &key.1, &e);
        // Leftover children of the group die with their leader.
        e.signal(libc::SIGKILL);
        st.agents[agent].used.subtract(&e.resources);
        let code = status.and_then(|s| s.code());
        let signal = status.and_then(|s| s.signal());
        let raw = status.map(|s| s.into_raw());
        tracing::debug!(%framework, %executor, ?code, ?signal, "process exited");
        let live: Vec<String> = e
            .tasks
            .iter()
            .filter(|t| {
                st.frameworks
                    .get(framework)
                    .and_then(|f| f.tasks.get(*t))
                    .is_some_and(|t| !t.status.state.is_terminal())
            })
            .cloned()
            .collect();
        for t in live {
            let mut s;
            if e.command_task {
                let (state, message) = if e.kill_requested {
                    (
                        TaskState::Killed,
                        "Command terminated by a kill request".to_string(),
                    )
                } else {
                    match (code, signal) {
                        (Some(0), _) => {
                            (TaskState::Finished, "Command exited with status 0".into())
                        }
                        (Some(c), _) => {
                            (TaskState::Failed, format!("Command exited with status {c}"))
                        }
                        (None, Some(sig)) => (
                            TaskState::Failed,
                            format!("Command terminated with signal {sig}"),
                        ),
                        _ => (
                            TaskState::Failed,
                            "Command ended with an unknown status".into(),
                        ),
                    }
                };
                s = TaskStatus::new(Id::new(&t), state);
                s.source = Some(Source::Executor);
                s.message = Some(message);
                if state == TaskState::Failed {
                    s.reason = Some("REASON_COMMAND_EXECUTOR_FAILED".into());
                }
            } else {
                s = TaskStatus::new(Id::new(&t), TaskState::Failed);
                s.source = Some(Source::Agent);
                s.reason = Some("REASON_EXECUTOR_TERMINATED".into());
                s.message = Some("Executor terminated".into());
            }
            s.uuid = Some(self.new_uuid());
            self.status_update(&mut st, agent, framework, s);
        }
        if !e.command_task
            && !e.http_command_executor
            && let Some(fw) = st.frameworks.get(framework)
        {
            let mut ev = sch::Event::bare(sch::EventType::Failure);
            ev.failure = Some(sch::Failure {
                agent_id: Some(Id::new(&st.agents[agent].id)),
                executor_id: Some(Id::new(executor)),
                status: raw,
            });
            fw.send(&ev);
        }
        drop(st);
        self.allocate.notify_one();
    }

    /// Agent side of a status update: record it, update the master's view,
    /// release resources on terminal states and forward it in order.
    pub fn status_update(
        &self,
        st: &mut State,
        agent: usize,
        framework: &str,
        mut status: TaskStatus,
    ) {
        let task_id = status.task_id.value.clone();
        if let Some(u) = &status.uuid
            && !st.agents[agent].seen_uuids.insert(u.0.clone())
        {
            tracing::debug!(task = %task_id, "duplicate status update dropped");
            return;
        }
        status.agent_id = Some(Id::new(&st.agents[agent].id));
        if status.timestamp.is_none() {
            status.timestamp = Some(self.now_secs());
        }
        let Some(fw) = st.frameworks.get_mut(framework) else {
            return;
        };
        let Some(task) = fw.tasks.get_mut(&task_id) else {
            return;
        };
        if status.executor_id.is_none() {
            status.executor_id = Some(Id::new(&task.executor_id));
        }
        let was_terminal = task.status.state.is_terminal();
        task.status = status.clone();
        if status.state.is_terminal() && !was_terminal {
            let released = task.resources.clone();
            let executor = task.executor_id.clone();
            st.agents[agent].used.subtract(&released);
            if let Some(e) = st.agents[agent]
                .executors
                .get_mut(&(framework.to_owned(), executor))
            {
                e.tasks.remove(&task_id);
                e.queued.retain(|t| t.task_id.value != task_id);
            }
            self.allocate.notify_one();
        }
        let retry_min = self.config.status_update_retry_min;
        let stream = st.agents[agent]
            .updates
            .entry((framework.to_owned(), task_id))
            .or_insert_with(|| UpdateStream {
                queue: VecDeque::new(),
                next_retry: Instant::now(),
                backoff: retry_min,
            });
        stream.queue.push_back(status);
        if stream.queue.len() == 1 {
            stream.backoff = retry_min;
            stream.next_retry = Instant::now() + retry_min;
            let head = stream.queue[0].clone();
            if let Some(fw) = st.frameworks.get(framework) {
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update { status: head });
                fw.send(&ev);
            }
        }
    }

    /// Resends every unacknowledged head update whose retry time has come.
    pub fn retry_updates(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        let max = self.config.status_update_retry_max;
        let State {
            agents, frameworks, ..
        } = &mut *st;
        for agent in agents.iter_mut() {
            for ((f, _), stream) in agent.updates.iter_mut() {
                if stream.next_retry > now {
                    continue;
                }
                let (Some(head), Some(fw)) = (stream.queue.front(), frameworks.get(f)) else {
                    continue;
                };
                if fw.sub.is_none() {
                    continue;
                }
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update {
                    status: head.clone(),
                });
                fw.send(&ev);
                stream.next_retry = now + stream.backoff;
                stream.backoff = (stream.backoff * 2).min(max);
            }
        }
    }

    /// Scheduler ACKNOWLEDGE: drop the head if the uuid matches and release
    /// the next update of that task.
    pub fn acknowledge(&self, framework: &str, ack: &sch::Acknowledge) {
        let mut st = self.lock();
        let Some(a) = st.agents.iter().position(|a| a.id == ack.agent_id.value) else {
            tracing::debug!(agent = %ack.agent_id, "ACKNOWLEDGE for an unknown agent dropped");
            return;
        };
        let key = (framework.to_owned(), ack.task_id.value.clone());
        let retry_min = self.config.status_update_retry_min;
        let Some(stream) = st.agents[a].updates.get_mut(&key) else {
            return;
        };
        if stream.queue.front().and_then(|s| s.uuid.as_ref()) != Some(&ack.uuid) {
            tracing::debug!(task = %ack.task_id, "ACKNOWLEDGE with an unexpected uuid ignored");
            return;
        }
        let acked = stream.queue.pop_front();
        stream.backoff = retry_min;
        stream.next_retry = Instant::now() + retry_min;
        let next = stream.queue.front().cloned();
        if next.is_none() {
            st.agents[a].updates.remove(&key);
            if acked.is_some_and(|s| s.state.is_terminal())
                && let Some(fw) = st.frameworks.get_mut(framework)
            {
                fw.tasks.remove(&ack.task_id.value);
            }
        }
        if let (Some(status), Some(fw)) = (next, st.frameworks.get(framework)) {
            let mut ev = sch::Event::bare(sch::EventType::Update);
            ev.update = Some(sch::Update { status });
            fw.send(&ev);
        }
    }

    pub fn reconcile(&self, framework: &str, r: &sch::Reconcile) {
        let st = self.lock();
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        // Mesos answers `task->status_update_state()`: the state of the
        // update being delivered (the oldest unacknowledged one), not the
        // latest state, which may still be queued behind it (master.cpp,
        // `Master::reconcile`). `/master/state` shows the latest.
        let answer = |t: &TaskRec| {
            let delivering = st
                .agents
                .get(t.agent)
                .and_then(|a| {
                    a.updates
                        .get(&(framework.to_owned(), t.status.task_id.value.clone()))
                })
                .and_then(|u| u.queue.front())
                .map(|s| s.state);
            let mut s = TaskStatus::new(
                t.status.task_id.clone(),
                delivering.unwrap_or(t.status.state),
            );
            s.source = Some(Source::Master);
            s.reason = Some("REASON_RECONCILIATION".into());
            s.message = Some("Reconciliation: Latest task state".into());
            s.agent_id = t.status.agent_id.clone();
            s.executor_id = t.status.executor_id.clone();
            s.timestamp = Some(self.now_secs());
            s
        };
        let mut out = Vec::new();
        if r.tasks.is_empty() {
            out.extend(fw.tasks.values().map(answer));
        } else {
            for t in &r.tasks {
                match fw.tasks.get(&t.task_id.value) {
                    Some(rec) => out.push(answer(rec)),
                    None => {
                        let known_agent = t
                            .agent_id
                            .as_ref()
                            .is_some_and(|a| st.agents.iter().any(|x| x.id == a.value));
                        let state = match (fw.partition_aware(), known_agent) {
                            (false, _) => TaskState::Lost,
                            (true, true) => TaskState::Gone,
                            (true, false) => TaskState::Unknown,
                        };
                        let mut s = TaskStatus::new(t.task_id.clone(), state);
                        s.source = Some(Source::Master);
                        s.reason = Some("REASON_RECONCILIATION".into());
                        s.message = Some("Reconciliation: Task is unknown".into());
                        s.agent_id = t.agent_id.clone();
                        s.timestamp = Some(self.now_secs());
                        out.push(s);
                    }
                }
            }
        }
        for status in out {
            let mut ev = sch::Event::bare(sch::EventType::Update);
            ev.update = Some(sch::Update { status });
            fw.send(&ev);
        }
    }

    pub fn kill(self: &Arc<Self>, framework: &str, k: &sch::Kill) {
        let mut st = self.lock();
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        let Some(task) = fw.tasks.get(&k.task_id.value) else {
            drop(st);
            self.reconcile(
                framework,
                &sch::Reconcile {
                    tasks: vec![sch::ReconcileTask {
                        task_id: k.task_id.clone(),
                        agent_id: k.agent_id.clone(),
                    }],
                },
            );
            return;
        };
        if task.status.state.is_terminal() {
            return;
        }
        let agent = task.agent;
        let policy = k.kill_policy.clone().or(task.info.kill_policy.clone());
        let grace = policy
            .as_ref()
            .and_then(|p| p.grace_period)
            .map(|g| g.to_std())
            .unwrap_or(self.config.command_kill_grace);
        let killing_state = fw.info.has_capability("TASK_KILLING_STATE");
        let key = (framework.to_owned(), task.executor_id.clone());
        let Some(e) = st.agents[agent].executors.get_mut(&key) else {
            return;
        };
        if e.command_task {
            let first = !e.kill_requested;
            e.kill_requested = true;
            if let Some(p) = e.process.clone() {
                p.signal(libc::SIGTERM);
                self.kill_after(p, grace);
            }
            if first && killing_state {
                // The command executor reports TASK_KILLING to frameworks
                // that understand it.
                let mut s = TaskStatus::new(k.task_id.clone(), TaskState::Killing);
                s.source = Some(Source::Executor);
                s.uuid = Some(self.new_uuid());
                self.status_update(&mut st, agent, framework, s);
            }
        } else if e.queued.iter().any(|t| t.task_id == k.task_id) || e.sub.is_none() {
            e.queued.retain(|t| t.task_id != k.task_id);
            let mut s = TaskStatus::new(k.task_id.clone(), TaskState::Killed);
            s.source = Some(Source::Agent);
            s.reason = Some("REASON_TASK_KILLED_DURING_LAUNCH".into());
            s.message = Some("Killed before delivery to the executor".into());
            s.uuid = Some(self.new_uuid());
            self.status_update(&mut st, agent, framework, s);
        } else {
            let mut ev = ex::Event::bare(ex::EventType::Kill);
            ev.kill = Some(ex::Kill {
                task_id: k.task_id.clone(),
                kill_policy: policy,
            });
            e.send(&ev);
        }
    }

    fn kill_after(&self, process: Arc<dyn LaunchedProcess>, grace: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            process.signal(libc::SIGKILL);
        });
    }

    /// Shuts an executor down: SHUTDOWN event (or SIGTERM for command tasks),
    /// then SIGKILL to its process group after the grace period.
    pub fn shutdown_executor(&self, agent: usize, framework: &str, executor: &str) {
        let mut st = self.lock();
        let Some(a) = st.agents.get_mut(agent) else {
            return;
        };
        let Some(e) = a
            .executors
            .get_mut(&(framework.to_owned(), executor.to_owned()))
        else {
            return;
        };
        e.shutting_down = true;
        e.kill_requested = true;
        let grace = e
            .info
            .shutdown_grace_period
            .map(|g| g.to_std())
            .unwrap_or(self.config.executor_shutdown_grace);
        if e.command_task || !e.send(&ex::Event::bare(ex::EventType::Shutdown)) {
            e.signal(libc::SIGTERM);
        }
        if let Some(p) = e.process.clone() {
            self.kill_after(p, grace);
        }
    }

    pub fn shutdown_call(&self, framework: &str, s: &sch::Shutdown) {
        let agent = self
            .lock()
            .agents
            .iter()
            .position(|a| a.id == s.agent_id.value);
        if let Some(a) = agent {
            self.shutdown_executor(a, framework, &s.executor_id.value);
        }
    }

    pub fn message_to_executor(&self, framework: &str, m: &sch::Message) {
        let st = self.lock();
        let Some(a) = st.agents.iter().find(|a| a.id == m.agent_id.value) else {
            return;
        };
        if let Some(e) = a
            .executors
            .get(&(framework.to_owned(), m.executor_id.value.clone()))
        {
            let mut ev = ex::Event::bare(ex::EventType::Message);
            ev.message = Some(ex::Message {
                data: m.data.clone(),
            });
            if !e.send(&ev) {
                tracing::debug!(executor = %m.executor_id, "framework message dropped: executor not subscribed");
            }
        }
    }

    // ----- executor API (agent side) -----

    pub fn executor_known(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
    ) -> Result<bool, &'static str> {
        let st = self.lock();
        let a = &st.agents[agent];
        if !a.executors.keys().any(|(f, _)| f == framework) {
            return Err("Framework cannot be found");
        }
        match a
            .executors
            .get(&(framework.to_owned(), executor.to_owned()))
        {
            None => Err("Executor cannot be found"),
            Some(e) => Ok(e.sub.is_some()),
        }
    }

    pub fn executor_subscribe(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
        sub: &ex::Subscribe,
    ) -> Option<mpsc::UnboundedReceiver<Bytes>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut st = self.lock();
        let fw_info = st.frameworks.get(framework)?.info.clone();
        let agent_info = st.agents[agent].info();
        // Replay updates the executor never saw acknowledged (dedup by uuid).
        for u in &sub.unacknowledged_updates {
            let dup = u
                .status
                .uuid
                .as_ref()
                .is_none_or(|id| st.agents[agent].seen_uuids.contains(&id.0));
            let known = st
                .frameworks
                .get(framework)
                .and_then(|f| f.tasks.get(&u.status.task_id.value))
                .is_some();
            if !dup && known {
                self.status_update(&mut st, agent, framework, u.status.clone());
            }
        }
        // On re-subscription, tasks delivered to the executor that are still
        // STAGING and that it does not list were lost in transit.
        let lost: Vec<String> = match st.agents[agent]
            .executors
            .get(&(framework.to_owned(), executor.to_owned()))
        {
            Some(e) if e.subscribed_before => e
                .tasks
                .iter()
                .filter(|t| !e.queued.iter().any(|q| &q.task_id.value == *t))
                .filter(|t| {
                    !sub.unacknowledged_tasks
                        .iter()
                        .any(|u| &u.task_id.value == *t)
                })
                .filter(|t| {
                    st.frameworks
                        .get(framework)
                        .and_then(|f| f.tasks.get(*t))
                        .is_some_and(|r| r.status.state == TaskState::Staging)
                })
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let partition_aware = st
            .frameworks
            .get(framework)
            .is_some_and(Framework::partition_aware);
        for t in lost {
            let state = if partition_aware {
                TaskState::Dropped
            } else {
                TaskState::Lost
            };
            let mut s = TaskStatus::new(Id::new(&t), state);
            s.source = Some(Source::Agent);
            s.reason = Some("REASON_AGENT_RESTARTED".into());
            s.message = Some("Task was not listed by the re-subscribing executor".into());
            s.uuid = Some(self.new_uuid());
            self.status_update(&mut st, agent, framework, s);
        }
        let e = st.agents[agent]
            .executors
            .get_mut(&(framework.to_owned(), executor.to_owned()))?;
        e.subscribed_before = true;
        let mut ev = ex::Event::bare(ex::EventType::Subscribed);
        ev.subscribed = Some(ex::Subscribed {
            executor_info: e.info.clone(),
            framework_info: fw_info,
            agent_info,
            container_id: Some(Id::new(
                e.sandbox
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            )),
        });
        let _ = tx.send(frame(&ev));
        for task in std::mem::take(&mut e.queued) {
            let mut ev = ex::Event::bare(ex::EventType::Launch);
            ev.launch = Some(ex::Launch { task });
            let _ = tx.send(frame(&ev));
        }
        // Every replayed update is now recorded: let the executor forget it.
        for u in &sub.unacknowledged_updates {
            if let Some(uuid) = &u.status.uuid {
                let mut ev = ex::Event::bare(ex::EventType::Acknowledged);
                ev.acknowledged = Some(ex::Acknowledged {
                    task_id: u.status.task_id.clone(),
                    uuid: uuid.clone(),
                });
                let _ = tx.send(frame(&ev));
            }
        }
        if e.shutting_down {
            let _ = tx.send(frame(&ex::Event::bare(ex::EventType::Shutdown)));
        }
        // Agent → executor heartbeats; they stop when this stream is
        // replaced or closed (only a weak sender is kept).
        let weak = tx.downgrade();
        let every = self.config.executor_heartbeat_interval;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                if tx
                    .send(frame(&ex::Event::bare(ex::EventType::Heartbeat)))
                    .is_err()
                {
                    return;
                }
            }
        });
        e.sub = Some(tx); // replaces (and so closes) any previous stream
        Some(rx)
    }

    pub fn executor_update(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
        status: TaskStatus,
    ) {
        let mut st = self.lock();
        let uuid = status.uuid.clone();
        let task_id = status.task_id.clone();
        let known = st
            .frameworks
            .get(framework)
            .and_then(|f| f.tasks.get(&task_id.value))
            .is_some();
        if known {
            self.status_update(&mut st, agent, framework, status);
            // Checkpoint before acknowledging, as a Mesos agent does.
            self.persist(&st);
        }
        if let (Some(e), Some(uuid)) = (
            st.agents[agent]
                .executors
                .get(&(framework.to_owned(), executor.to_owned())),
            uuid,
        ) {
            let mut ev = ex::Event::bare(ex::EventType::Acknowledged);
            ev.acknowledged = Some(ex::Acknowledged { task_id, uuid });
            e.send(&ev);
        }
    }

    pub fn executor_message(&self, agent: usize, framework: &str, executor: &str, data: B64) {
        let st = self.lock();
        let Some(fw) = st.frameworks.get(framework) else {
            return;
        };
        let mut ev = sch::Event::bare(sch::EventType::Message);
        ev.message = Some(sch::Message {
            agent_id: Id::new(&st.agents[agent].id),
            executor_id: Id::new(executor),
            data,
        });
        if !fw.send(&ev) {
            tracing::debug!(%framework, "executor message dropped: framework disconnected");
        }
    }

    /// Watches an executor recovered from a checkpoint: it is not our child,
    /// so liveness is polled; it must re-subscribe within the
    /// re-registration timeout or it is destroyed.
    pub fn watch_recovered(
        self: &Arc<Self>,
        agent: usize,
        framework: String,
        executor: String,
        pgid: Option<i32>,
    ) {
        let poll_interval = Duration::from_millis(100);
        let alive = pgid.is_some_and(super::checkpoint::alive);
        self.lock().live_processes += 1;
        if !alive {
            self.process_exited(agent, &framework, &executor, None);
            return;
        }
        let core = Arc::downgrade(self);
        let deadline = tokio::time::Instant::now() + self.config.executor_reregistration_timeout;
        tokio::spawn(async move {
            let mut checked_registration = false;
            loop {
                tokio::time::sleep(poll_interval).await;
                let Some(core) = core.upgrade() else { return };
                let key = (framework.clone(), executor.clone());
                let subscribed = match core.lock().agents[agent].executors.get(&key) {
                    None => return,
                    Some(e) => e.sub.is_some(),
                };
                if !pgid.is_some_and(super::checkpoint::alive) {
                    core.process_exited(agent, &framework, &executor, None);
                    return;
                }
                if !checked_registration && tokio::time::Instant::now() >= deadline {
                    checked_registration = true;
                    if !subscribed {
                        tracing::warn!(%framework, %executor, "recovered executor did not re-subscribe; destroying it");
                        if let Some(p) = pgid {
                            process::signal_group(p, libc::SIGKILL);
                        }
                    }
                }
            }
        });
    }

    /// Simulates the loss of an agent's machine: its processes are killed,
    /// its outstanding offers are rescinded (RESCIND), its non-terminal
    /// tasks become TASK_LOST (TASK_UNREACHABLE for partition-aware
    /// frameworks; master-generated, no uuid, reason REASON_AGENT_REMOVED)
    /// and every subscribed framework gets FAILURE with the agent id.
    pub fn lose_agent(&self, agent: usize) {
        let mut st = self.lock();
        let Some(a) = st.agents.get_mut(agent) else {
            return;
        };
        if a.lost {
            return;
        }
        a.lost = true;
        a.recovering = true; // the executor API stops answering normally
        let agent_id = Id::new(&a.id);
        for e in std::mem::take(&mut a.executors).into_values() {
            e.signal(libc::SIGKILL);
        }
        a.updates.clear();
        a.used = Resources::default();
        let rescinded: Vec<(String, String)> = st
            .offers
            .iter()
            .filter(|(_, o)| o.agent == agent)
            .map(|(id, o)| (id.clone(), o.framework.clone()))
            .collect();
        for (offer_id, framework) in rescinded {
            st.offers.remove(&offer_id);
            if let Some(fw) = st.frameworks.get(&framework) {
                let mut ev = sch::Event::bare(sch::EventType::Rescind);
                ev.rescind = Some(sch::Rescind {
                    offer_id: Id::new(&offer_id),
                });
                fw.send(&ev);
            }
        }
        for fw in st.frameworks.values_mut() {
            let state = if fw.partition_aware() {
                TaskState::Unreachable
            } else {
                TaskState::Lost
            };
            let mut updates = Vec::new();
            for t in fw
                .tasks
                .values_mut()
                .filter(|t| t.agent == agent && !t.status.state.is_terminal())
            {
                let mut s = TaskStatus::new(t.status.task_id.clone(), state);
                s.source = Some(Source::Master);
                s.reason = Some("REASON_AGENT_REMOVED".into());
                s.message = Some("Agent was lost".into());
                s.agent_id = Some(agent_id.clone());
                s.executor_id = Some(Id::new(&t.executor_id));
                s.timestamp = Some(self.now_secs());
                t.status = s.clone();
                updates.push(s);
            }
            for status in updates {
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update { status });
                fw.send(&ev);
            }
            let mut ev = sch::Event::bare(sch::EventType::Failure);
            ev.failure = Some(sch::Failure {
                agent_id: Some(agent_id.clone()),
                executor_id: None,
                status: None,
            });
            fw.send(&ev);
        }
    }

    /// Breaks `framework`'s subscription stream as a broken TCP connection
    /// would: the stream ends (no ERROR event) and the master handles the
    /// disconnection as usual (offers dropped, failover timer armed).
    /// Returns whether the framework was subscribed.
    pub fn drop_subscription(self: &Arc<Self>, framework: &str) -> bool {
        let stream_id = self
            .lock()
            .frameworks
            .get(framework)
            .and_then(|f| f.sub.as_ref().map(|s| s.stream_id.clone()));
        match stream_id {
            Some(sid) => {
                self.disconnected(framework, &sid);
                true
            }
            None => false,
        }
    }

    /// Simulates a master failover in place: a new master (new master id,
    /// fresh offer and framework counters) takes over at the same address.
    /// Every scheduler stream ends without an ERROR, outstanding offers,
    /// refuse filters and suppression are gone, frameworks are disconnected
    /// with no failover timer (it does not survive a master failover,
    /// MESOS-4659). Agents keep their tasks, executors and unacknowledged
    /// status updates; a re-SUBSCRIBE with the framework id gets them again.
    pub fn master_failover(&self) {
        let mut st = self.lock();
        st.master_id = self.ids.uuid_string();
        st.next_offer = 0;
        st.next_framework = 0;
        st.offers.clear();
        for fw in st.frameworks.values_mut() {
            // Dropping the sender ends the stream; the stream's own
            // disconnection hook then finds no subscription and does nothing.
            fw.sub = None;
            fw.epoch += 1; // disarms pending failover timers
            fw.filters.clear();
            fw.suppressed = false;
        }
        tracing::info!(master_id = %st.master_id, "simulated master failover");
    }

    /// Sends every in-flight (unacknowledged head) status update again now,
    /// as a retry would, to subscribed frameworks; the retry schedule is
    /// left alone. Updates queued behind an unacknowledged one stay queued.
    /// Returns how many were sent.
    pub fn redeliver_updates(&self) -> usize {
        let st = self.lock();
        let mut sent = 0;
        for agent in &st.agents {
            for ((f, _), stream) in &agent.updates {
                let (Some(head), Some(fw)) = (stream.queue.front(), st.frameworks.get(f)) else {
                    continue;
                };
                let mut ev = sch::Event::bare(sch::EventType::Update);
                ev.update = Some(sch::Update {
                    status: head.clone(),
                });
                if fw.send(&ev) {
                    sent += 1;
                }
            }
        }
        sent
    }

    /// Status updates the agents hold that the scheduler has not
    /// acknowledged (in flight or queued behind one).
    pub fn pending_updates(&self) -> usize {
        self.lock()
            .agents
            .iter()
            .flat_map(|a| a.updates.values())
            .map(|s| s.queue.len())
            .sum()
    }

    /// Sends `signal` to a launched executor (or command task) as `kill`
    /// would. Returns whether it was running.
    pub fn signal_executor(
        &self,
        agent: usize,
        framework: &str,
        executor: &str,
        signal: i32,
    ) -> bool {
        let process = self.lock().agents.get(agent).and_then(|a| {
            a.executors
                .get(&(framework.to_owned(), executor.to_owned()))
                .and_then(|e| e.process.clone())
        });
        match process {
            Some(p) => {
                p.signal(signal);
                true
            }
            None => false,
        }
    }

    /// Simulates an agent restart: executor streams close and the executor
    /// API answers 503 until [`Core::finish_agent_recovery`].
    pub fn restart_agent(&self, agent: usize) {
        let mut st = self.lock();
        if let Some(a) = st.agents.get_mut(agent) {
            a.recovering = true;
            for e in a.executors.values_mut() {
                e.sub = None;
            }
        }
    }

    /// Ends a simulated agent restart.
    pub fn finish_agent_recovery(&self, agent: usize) {
        if let Some(a) = self.lock().agents.get_mut(agent) {
            a.recovering = false;
        }
    }

    /// Kills every process group and waits (bounded) until all were reaped.
    pub async fn shutdown_all(&self, wait_max: Duration) {
        let processes: Vec<Arc<dyn LaunchedProcess>> = {
            let mut st = self.lock();
            st.shutting_down = true;
            st.offers.clear();
            for fw in st.frameworks.values_mut() {
                fw.sub = None;
            }
            for a in st.agents.iter_mut() {
                for e in a.executors.values_mut() {
                    e.sub = None;
                }
            }
            st.agents
                .iter()
                .flat_map(|a| a.executors.values().filter_map(|e| e.process.clone()))
                .collect()
        };
        for p in &processes {
            p.signal(libc::SIGKILL);
        }
        let deadline = tokio::time::Instant::now() + wait_max;
        loop {
            let waiter = self.processes_changed.notified();
            if self.lock().live_processes == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, waiter).await.is_err() {
                tracing::warn!("emulator shutdown: some processes were not reaped in time");
                return;
            }
        }
    }
}
