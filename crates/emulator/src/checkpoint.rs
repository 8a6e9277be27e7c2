//! Agent checkpointing: the emulator's recoverable state is written to
//! `<work_dir>/checkpoint.json` so a restarted emulator recovers frameworks
//! that set `checkpoint: true`, their tasks, pending status updates and
//! running executors, the way a Mesos agent recovers from its meta dir.
//!
//! Executors of checkpointing frameworks are spawned without
//! `PR_SET_PDEATHSIG`, so they outlive the emulator and re-subscribe to the
//! restarted agent (same address) with their unacknowledged updates.

use super::state::{Core, ExecRec, Framework, State, TaskRec, UpdateStream};
use kaon_mesos::resources::Resources;
use kaon_mesos::types::{
    Attribute, B64, ExecutorInfo, FrameworkInfo, Resource, TaskInfo, TaskStatus,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::time::Instant;

/// Name of the checkpoint file inside the work dir.
pub const CHECKPOINT_FILE: &str = "checkpoint.json";

/// Why a checkpoint could not be written or read.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("checkpoint {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a checkpoint.
    #[error("checkpoint {path} is corrupt: {source}")]
    Corrupt {
        /// File.
        path: String,
        /// Cause.
        source: serde_json::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub master_id: String,
    pub master_addr: SocketAddr,
    pub next_framework: u64,
    pub next_offer: u64,
    pub completed: Vec<String>,
    pub frameworks: Vec<CkFramework>,
    pub agents: Vec<CkAgent>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CkFramework {
    pub id: String,
    pub info: FrameworkInfo,
    pub tasks: Vec<CkTask>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CkTask {
    pub info: TaskInfo,
    pub agent: usize,
    pub executor_id: String,
    pub status: TaskStatus,
    pub resources: Vec<Resource>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CkAgent {
    pub id: String,
    pub hostname: String,
    pub addr: SocketAddr,
    pub total: Vec<Resource>,
    pub attributes: Vec<Attribute>,
    pub executors: Vec<CkExecutor>,
    pub updates: Vec<CkStream>,
    pub seen_uuids: Vec<B64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CkExecutor {
    pub framework: String,
    pub executor_id: String,
    pub info: ExecutorInfo,
    pub command_task: bool,
    #[serde(default)]
    pub http_command_executor: bool,
    pub pgid: Option<i32>,
    pub tasks: Vec<String>,
    pub queued: Vec<TaskInfo>,
    pub resources: Vec<Resource>,
    pub sandbox: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CkStream {
    pub framework: String,
    pub task: String,
    pub queue: Vec<TaskStatus>,
}

fn checkpointing(st: &State, framework: &str) -> bool {
    st.frameworks
        .get(framework)
        .is_some_and(|f| f.info.checkpoint == Some(true))
}

/// Snapshot of the recoverable part of `st` (checkpointing frameworks only).
pub(crate) fn snapshot(st: &State, master_addr: SocketAddr) -> Checkpoint {
    let frameworks = st
        .frameworks
        .values()
        .filter(|f| f.info.checkpoint == Some(true))
        .map(|f| CkFramework {
            id: f.id.clone(),
            info: f.info.clone(),
            tasks: f
                .tasks
                .values()
                .map(|t| CkTask {
                    info: t.info.clone(),
                    agent: t.agent,
                    executor_id: t.executor_id.clone(),
                    status: t.status.clone(),
                    resources: t.resources.to_mesos(),
                })
                .collect(),
        })
        .collect();
    let agents = st
        .agents
        .iter()
        .map(|a| CkAgent {
            id: a.id.clone(),
            hostname: a.hostname.clone(),
            addr: a.addr,
            total: a.total.to_mesos(),
            attributes: a.attributes.clone(),
            executors: a
                .executors
                .iter()
                .filter(|((f, _), _)| checkpointing(st, f))
                .map(|((f, e), rec)| CkExecutor {
                    framework: f.clone(),
                    executor_id: e.clone(),
                    info: rec.info.clone(),
                    command_task: rec.command_task,
                    http_command_executor: rec.http_command_executor,
                    pgid: rec.pgid(),
                    tasks: rec.tasks.iter().cloned().collect(),
                    queued: rec.queued.clone(),
                    resources: rec.resources.to_mesos(),
                    sandbox: rec.sandbox.clone(),
                })
                .collect(),
            updates: a
                .updates
                .iter()
                .filter(|((f, _), _)| checkpointing(st, f))
                .map(|((f, t), s)| CkStream {
                    framework: f.clone(),
                    task: t.clone(),
                    queue: s.queue.iter().cloned().collect(),
                })
                .collect(),
            seen_uuids: a.seen_uuids.iter().map(|u| B64(u.clone())).collect(),
        })
        .collect();
    Checkpoint {
        master_id: st.master_id.clone(),
        master_addr,
        next_framework: st.next_framework,
        next_offer: st.next_offer,
        completed: st.completed.iter().cloned().collect(),
        frameworks,
        agents,
    }
}

/// Writes the checkpoint atomically (temp file + rename).
pub(crate) fn write(dir: &Path, ck: &Checkpoint) -> Result<(), CheckpointError> {
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let io = |source| CheckpointError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = serde_json::to_vec(ck).map_err(|source| CheckpointError::Corrupt {
        path: path.display().to_string(),
        source,
    })?;
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Reads the checkpoint, if one exists.
pub(crate) fn read(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let path = dir.join(CHECKPOINT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| CheckpointError::Corrupt {
                    path: path.display().to_string(),
                    source,
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Whether process group `pgid` still has a live leader.
pub(crate) fn alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pgid > 0 && unsafe { libc::kill(pgid, 0) } == 0
}

/// Rebuilds frameworks and agents from a checkpoint. Frameworks come back
/// disconnected (no failover timer: like a Mesos master failover, the
/// framework waits to re-subscribe); executors whose process is still alive
/// come back unsubscribed, waiting for them to re-subscribe.
pub(crate) fn restore(ck: Checkpoint, st: &mut State) -> Vec<(usize, String, String, Option<i32>)> {
    st.master_id = ck.master_id;
    st.next_framework = ck.next_framework;
    st.next_offer = ck.next_offer;
    st.completed = ck.completed.into_iter().collect::<BTreeSet<_>>();
    let agent_count = st.agents.len();
    for f in ck.frameworks {
        let tasks: BTreeMap<String, TaskRec> = f
            .tasks
            .into_iter()
            // A checkpoint from a config with more agents: drop what no longer fits.
            .filter(|t| t.agent < agent_count)
            .map(|t| {
                (
                    t.info.task_id.value.clone(),
                    TaskRec {
                        info: t.info,
                        agent: t.agent,
                        executor_id: t.executor_id,
                        status: t.status,
                        resources: Resources::from_mesos(&t.resources),
                    },
                )
            })
            .collect();
        st.frameworks.insert(
            f.id.clone(),
            Framework {
                id: f.id,
                info: f.info,
                sub: None,
                epoch: 0,
                suppressed: false,
                filters: BTreeMap::new(),
                tasks,
            },
        );
    }
    let mut recovered = Vec::new();
    for (i, a) in ck.agents.into_iter().enumerate() {
        let Some(agent) = st.agents.get_mut(i) else {
            break;
        };
        agent.id = a.id;
        agent.seen_uuids = a.seen_uuids.into_iter().map(|u| u.0).collect();
        for u in a.updates {
            agent.updates.insert(
                (u.framework, u.task),
                UpdateStream {
                    queue: u.queue.into_iter().collect::<VecDeque<_>>(),
                    next_retry: Instant::now(),
                    backoff: std::time::Duration::from_secs(1),
                },
            );
        }
        for e in a.executors {
            let resources = Resources::from_mesos(&e.resources);
            agent.used.add(&resources);
            recovered.push((i, e.framework.clone(), e.executor_id.clone(), e.pgid));
            agent.executors.insert(
                (e.framework, e.executor_id),
                ExecRec {
                    info: e.info,
                    command_task: e.command_task,
                    http_command_executor: e.http_command_executor,
                    process: e.pgid.map(|pgid| {
                        std::sync::Arc::new(super::launcher::ProcessGroup {
                            pgid,
                            sandbox: Some(e.sandbox.clone()),
                        })
                            as std::sync::Arc<dyn super::launcher::LaunchedProcess>
                    }),
                    sub: None,
                    queued: e.queued,
                    tasks: e.tasks.into_iter().collect(),
                    completed: Default::default(),
                    resources,
                    sandbox: e.sandbox,
                    kill_requested: false,
                    shutting_down: false,
                    // Recovered executors re-subscribe after the restart.
                    subscribed_before: true,
                },
            );
        }
    }
    // Resources of live tasks stay allocated.
    let used: Vec<(usize, Resources)> = st
        .frameworks
        .values()
        .flat_map(|f| f.tasks.values())
        .filter(|t| !t.status.state.is_terminal())
        .map(|t| (t.agent, t.resources.clone()))
        .collect();
    for (a, r) in used {
        if let Some(agent) = st.agents.get_mut(a) {
            agent.used.add(&r);
        }
    }
    recovered
}

impl Core {
    /// Writes the checkpoint now (no-op unless checkpointing is enabled).
    pub(crate) fn persist(&self, st: &State) {
        if !self.config.checkpoint {
            return;
        }
        if let Err(e) = write(&self.config.work_dir, &snapshot(st, self.master_addr)) {
            tracing::error!(error = %e, "agent checkpoint failed");
        }
    }
}

/// The agent address list to bind on recovery (`None` = use the config).
pub(crate) fn recovered_addrs(ck: &Checkpoint) -> (SocketAddr, Vec<SocketAddr>) {
    (ck.master_addr, ck.agents.iter().map(|a| a.addr).collect())
}
