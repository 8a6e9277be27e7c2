//! The emulated master and agents: frameworks, offers, tasks, executors and
//! the agents' status-update managers. Everything lives behind one mutex that
//! is never held across an `.await`; events leave through unbounded channels
//! that feed the HTTP streaming responses.

use super::EmulatorConfig;
use super::launcher::{LaunchKind, LaunchRequest, LaunchedProcess};
use super::process::{self, stout_duration};
use bytes::Bytes;
use kaon_mesos::recordio;
use kaon_mesos::resources::Resources;
use kaon_mesos::types::executor as ex;
use kaon_mesos::types::scheduler as sch;
use kaon_mesos::types::{
    AgentInfo, Attribute, B64, CommandInfo, ExecutorInfo, FrameworkInfo, Id, Offer, Source,
    TaskInfo, TaskState, TaskStatus,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

mod accept;
mod allocator;
mod executor_api;
mod faults;
mod frameworks;
mod launch;
mod updates;

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
    /// Tasks it ran that ended, newest last, at most
    /// [`COMPLETED_TASKS_PER_EXECUTOR_MAX`] (`/state`'s `completed_tasks`).
    pub completed: std::collections::VecDeque<String>,
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
/// kaon steps of older versions each had an executor).
pub(crate) const COMPLETED_EXECUTORS_MAX: usize = 1000;

/// Most ended tasks `/state` lists per executor (Mesos's
/// `--max_completed_tasks_per_executor` default).
pub(crate) const COMPLETED_TASKS_PER_EXECUTOR_MAX: usize = 1000;

/// An executor that ended: where its sandbox is.
pub(crate) struct CompletedExecutor {
    pub framework_id: String,
    pub id: String,
    pub directory: PathBuf,
    /// Its tasks still live when it ended.
    pub tasks: Vec<String>,
    /// Its tasks that had ended, newest last.
    pub completed_tasks: Vec<String>,
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
            completed_tasks: e.completed.iter().cloned().collect(),
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
    pub(crate) fn now_secs(&self) -> f64 {
        self.config.clock.now_secs()
    }

    /// A fresh status update uuid, from the configured id source.
    pub(crate) fn new_uuid(&self) -> B64 {
        B64(self.ids.uuid_bytes().to_vec())
    }
}
