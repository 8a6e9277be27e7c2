//! State: a pure, deterministic fold over committed events (brief 4.1).
//!
//! [`State::apply`] is the only way state changes. It reads nothing but the
//! event and the state: no clock, no randomness, no hash-map iteration. Every
//! applied event extends a SHA-256 hash chain
//! (`chain_i = H(chain_{i-1} || encoded event_i)`) and
//! [`State::digest`] hashes the whole state, so replicas and auditors can
//! compare exactly.
//!
//! `apply` never evaluates policy: which step runs next, whether a failure is
//! retried, what an expression yields, is decided by [`crate::decide`] and
//! recorded in events. `apply` only records. An event that does not fit the
//! state (a duplicate status update, a second submit with the same
//! idempotency key) is a recorded no-op, identical on every replica.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::events::{
    self, Body, Event, FailureCause, KillCause, NodeOutcome, RunOutcome, TaskState, pb,
};
use crate::ids::{InstId, RunId, task_id};
use crate::limits::Limits;
use crate::plan::{Body as PlanBody, NodeId, Plan};

/// Why an event could not be applied. Any of these stops the replica: it
/// means the log holds something this version does not understand, or the
/// log is corrupt.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApplyError {
    /// The bytes are not a valid event.
    #[error("event at index {index}: cannot decode: {message}")]
    Decode {
        /// Log index.
        index: u64,
        /// Decoder message.
        message: String,
    },
    /// The event's kind is unknown to this version (schema rule 4.7).
    #[error(
        "event at index {index}: unknown event kind, written by a newer kaon (this kaon {} \
         applies event schema up to {}); refusing to apply it: upgrade this node",
        env!("CARGO_PKG_VERSION"),
        crate::events::EVENT_SCHEMA
    )]
    UnknownEvent {
        /// Log index.
        index: u64,
    },
    /// Events must be applied in index order without gaps.
    #[error("event at index {index}: expected index {expected}")]
    OutOfOrder {
        /// Log index of the event.
        index: u64,
        /// The index state expected.
        expected: u64,
    },
    /// The event contradicts state in a way no leader could have proposed.
    #[error("event at index {index} ({kind}): {message}")]
    Inconsistent {
        /// Log index.
        index: u64,
        /// Event kind.
        kind: &'static str,
        /// What does not fit.
        message: String,
    },
}

/// Life of a node instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Created, not started.
    Pending,
    /// Started (a task attempt exists, children exist, or a retry is pending).
    Running,
    /// Finished well.
    Succeeded,
    /// Finished badly.
    Failed,
    /// Failed, but the node's failure is ignored.
    FailedIgnored,
    /// Never ran (condition false, upstream failed, run ending).
    Skipped,
    /// Stopped because the run was cancelled or failed fast.
    Cancelled,
}

impl NodeStatus {
    /// No further change will happen.
    pub fn is_terminal(self) -> bool {
        !matches!(self, NodeStatus::Pending | NodeStatus::Running)
    }

    /// Dependents may run after this.
    pub fn satisfies_dependents(self) -> bool {
        matches!(
            self,
            NodeStatus::Succeeded | NodeStatus::FailedIgnored | NodeStatus::Skipped
        )
    }
}

/// What an instance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstKind {
    /// A step: attempts are Mesos tasks.
    Task,
    /// A group: one child per plan child.
    Group,
    /// A bounded loop: one child per iteration.
    Loop,
    /// One iteration of a loop: one child per plan child.
    Iteration,
    /// A foreach node: one child per element.
    Foreach,
}

/// One attempt of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    /// Latest observed Mesos state (the task id is derived: [`Run::task_id`]).
    pub state: TaskState,
    /// When the launch intent was committed.
    pub launched_ms: i64,
    /// When it reached a terminal state.
    pub ended_ms: Option<i64>,
    /// Agent it runs on, once known.
    pub agent_id: String,
    /// Why kaon asked to kill it, if it did.
    pub kill: Option<KillCause>,
    /// Classified failure, once terminal and not successful.
    pub cause: Option<FailureCause>,
    /// Exit code, if reported.
    pub exit_code: Option<i32>,
    /// Last status message.
    pub message: String,
    /// Step timeout for this attempt.
    pub timeout_ms: u64,
    /// Last recorded progress event time (for rate limiting).
    pub last_progress_ms: i64,
    /// Index of the `TaskLaunchRequested` event apply accepted for this
    /// attempt: only that intent becomes a launch (a second, redundant
    /// intent for the same attempt is a recorded no-op, never an effect).
    /// 0 in snapshots written before this field existed.
    #[serde(default)]
    pub launch_event: u64,
    /// Mesos reported this terminal state by reconciliation at this time
    /// (a state, not a result): the attempt stays live and waits for the
    /// reliable update with its outputs and exit code, at most
    /// `Limits::reliable_update_wait_ms`.
    #[serde(default)]
    pub reported_terminal: Option<(TaskState, i64)>,
}

/// One instance of a plan node within a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Instance {
    /// Plan node.
    pub node: NodeId,
    /// Owning instance (None for the root and the exit handler).
    pub parent: Option<InstId>,
    /// What it is.
    pub kind: InstKind,
    /// Human-readable path, e.g. `block#2/region-model[1]`.
    pub path: String,
    /// Status.
    pub status: NodeStatus,
    /// Foreach element index, for a foreach child.
    pub element: Option<u32>,
    /// Iteration number for an iteration (1-based), or the current one for a loop.
    pub iteration: u32,
    /// Children (group: per plan child; loop: per iteration; foreach: per element).
    pub children: Vec<InstId>,
    /// Children not yet terminal.
    pub open_children: u32,
    /// Children that failed (not ignored) or were cancelled.
    pub failed_children: u32,
    /// Foreach: the evaluated list.
    pub items: Option<Arc<Vec<serde_json::Value>>>,
    /// Foreach: children started so far (they start in index order).
    pub started_children: u32,
    /// True inside the exit handler (exempt from run-ending skips).
    pub in_exit: bool,
    /// Attempts (tasks).
    pub attempts: Vec<Attempt>,
    /// Retries used per cause: user, platform, timeout.
    pub retries_used: [u32; 3],
    /// A retry is scheduled: attempt number and earliest start.
    pub retry: Option<(u32, i64)>,
    /// A terminal failed attempt waits for decide to retry or fail the step.
    pub awaiting_decision: bool,
    /// Outputs (JSON object text) of a succeeded step.
    pub outputs: Option<String>,
    /// Last reported percent complete.
    pub percent: u32,
    /// Last reported status text.
    pub status_text: String,
    /// Why it ended this way.
    pub message: String,
    /// When it started / ended.
    pub started_ms: Option<i64>,
    /// When it ended.
    pub ended_ms: Option<i64>,
}

impl Instance {
    fn new(
        node: NodeId,
        parent: Option<InstId>,
        kind: InstKind,
        path: String,
        in_exit: bool,
    ) -> Self {
        Instance {
            node,
            parent,
            kind,
            path,
            status: NodeStatus::Pending,
            element: None,
            iteration: 0,
            children: Vec::new(),
            open_children: 0,
            failed_children: 0,
            items: None,
            started_children: 0,
            in_exit,
            attempts: Vec::new(),
            retries_used: [0; 3],
            retry: None,
            awaiting_decision: false,
            outputs: None,
            percent: 0,
            status_text: String::new(),
            message: String::new(),
            started_ms: None,
            ended_ms: None,
        }
    }

    /// The latest attempt if it has not reached a terminal state.
    pub fn live_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| !a.state.is_terminal())
    }
}

/// Run status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    /// In progress.
    Running,
    /// Everything succeeded.
    Succeeded,
    /// Something failed (or the workflow timed out).
    Failed,
    /// Cancelled by a user or a schedule.
    Cancelled,
}

/// Why a run is winding down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// A step failed under fail_fast: running tasks are killed.
    FailFast(String),
    /// A step failed under finish_running: running tasks finish.
    FinishRunning(String),
    /// Cancelled (by a user, schedule, or the workflow timeout).
    Cancelled {
        /// Why.
        reason: String,
        /// The workflow timeout fired.
        timed_out: bool,
    },
}

/// One run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    /// Run id (log index of its submission).
    pub id: RunId,
    /// Workflow name.
    pub workflow: String,
    /// Pinned version.
    pub version: u32,
    /// Parameters (JSON object).
    pub params: serde_json::Value,
    /// Idempotency key ("" if none).
    pub idempotency_key: String,
    /// Schedule that started it, if any.
    pub schedule: Option<(u32, i64)>,
    /// Submission time.
    pub submitted_ms: i64,
    /// Status.
    pub status: RunStatus,
    /// Finish time.
    pub finished_ms: Option<i64>,
    /// Why it finished as it did.
    pub message: String,
    /// Set once the run starts winding down.
    pub ending: Option<Ending>,
    /// Instances; 0 is the body, 1 the exit handler if the plan has one.
    pub instances: Vec<Instance>,
    /// Attempts not yet terminal.
    pub live_tasks: u32,
    /// The run this one retries (`kaon run retry`), if any.
    #[serde(default)]
    pub retry_of: Option<RunId>,
    /// For a retry: task steps that succeeded in the retried run, by path,
    /// with their outputs; they are reused instead of run again. Derived
    /// when the retry is submitted (and so present after replay).
    #[serde(default)]
    pub reusable: BTreeMap<String, String>,
    /// The principal that submitted (or retried) it, when the API
    /// authenticated the caller: a submitter may cancel and retry only its
    /// own runs. (Not serialized when absent: digests of clusters without
    /// authentication are unchanged.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// The compiled plan (shared by all runs of the version); relinked
    /// from the workflow's versions when a snapshot is restored.
    #[serde(skip, default = "empty_plan")]
    pub plan: Arc<Plan>,
}

impl Run {
    /// Instance `i`.
    pub fn inst(&self, i: InstId) -> &Instance {
        &self.instances[i as usize]
    }

    /// The Mesos task id of attempt `attempt` of instance `i` (derived, not
    /// stored: the launch event records it, state need not repeat it).
    pub fn task_id(&self, i: InstId, attempt: u32) -> String {
        task_id(self.id, i, attempt, &self.inst(i).path)
    }
}

/// A registered version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkflowVersion {
    /// 1-based version.
    pub version: u32,
    /// The spec as JSON.
    pub spec_json: Arc<str>,
    /// Hex SHA-256 of spec_json.
    pub spec_sha256: String,
    /// When it was registered.
    pub registered_ms: i64,
    /// Recorded by a submit of a spec file, not registered: its schedules
    /// are not active (see `WorkflowRegistered.from_submit`).
    #[serde(default)]
    pub from_submit: bool,
    /// Compiled plan; recompiled from `spec_json` when a snapshot is restored.
    #[serde(skip, default = "empty_plan")]
    pub plan: Arc<Plan>,
}

/// Per-schedule bookkeeping.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Latest fire time handled.
    pub last_fire_ms: Option<i64>,
    /// Paused by an operator.
    pub paused: bool,
    /// A fire queued by `queue_one`.
    pub queued_fire_ms: Option<i64>,
    /// Runs started by this schedule that are still running.
    pub active_runs: BTreeSet<RunId>,
    /// Time this schedule (as the latest version has it) took effect.
    pub since_ms: i64,
}

/// A workflow and its versions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workflow {
    /// Versions in order (version n at index n-1).
    pub versions: Vec<WorkflowVersion>,
    /// Schedules of the schedule version ([`Workflow::schedule_version`]),
    /// by index.
    pub schedules: Vec<ScheduleState>,
}

impl Workflow {
    /// The version whose schedules are active: the latest one that was
    /// registered (a spec file submitted to run once never arms its
    /// schedules). None when no version was registered.
    pub fn schedule_version(&self) -> Option<&WorkflowVersion> {
        self.versions.iter().rev().find(|v| !v.from_submit)
    }
}

/// The whole replicated state.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    /// Index of the last applied event (0 = none).
    pub applied_index: u64,
    /// Head of the hash chain.
    pub chain: [u8; 32],
    /// Workflows by name.
    pub workflows: BTreeMap<String, Workflow>,
    /// Runs by id.
    pub runs: BTreeMap<RunId, Run>,
    /// Runs not yet finished.
    pub active_runs: BTreeSet<RunId>,
    /// Idempotency key to run.
    pub idempotency: BTreeMap<String, RunId>,
    /// Mesos framework id, once registered.
    pub framework_id: Option<String>,
    /// Latest leader start (node id, term).
    pub leader: Option<(u64, u64)>,
    /// Public API address each node announced when it last became leader:
    /// followers forward writes there and name it to clients.
    #[serde(default)]
    pub api_addrs: BTreeMap<u64, String>,
    /// Time of the last applied event.
    pub last_event_ms: i64,
    /// Finished runs retired from the live state so far (`RunsRetired`).
    /// Left out of the serialized state while 0, so the digests of logs
    /// without retirement are what they were before this field.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub runs_retired: u64,
    /// The last event index whose chain head the log holds a signature of
    /// (`ChainHeadSigned`); 0: none. Left out of the serialized state while
    /// 0 (digests of unsigned logs are unchanged).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub signed_index: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn empty_plan() -> Arc<Plan> {
    Arc::new(Plan {
        name: String::new(),
        nodes: Vec::new(),
        root: 0,
        on_exit: None,
        params: BTreeMap::new(),
        timeout_ms: None,
        schedules: Vec::new(),
        task_count: 0,
        group_count: 0,
    })
}

/// A snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("snapshot: {0}")]
pub struct SnapshotError(String);

/// Limits used when a replica compiles a spec it reads from the log: the
/// leader already validated it, so replay must not reject it under a
/// stricter local configuration.
fn replay_limits() -> Limits {
    Limits {
        spec_bytes_max: usize::MAX,
        steps_per_workflow_max: usize::MAX,
        nesting_depth_max: usize::MAX,
        expression_bytes_max: usize::MAX,
        expression_nodes_max: usize::MAX,
        expression_cost_max: u64::MAX,
        retries_per_kind_max: u32::MAX,
        schedules_per_workflow_max: usize::MAX,
        ..Limits::default()
    }
}

/// Compiles a stored spec (JSON) into a plan.
pub fn plan_from_json(spec_json: &str) -> Result<Plan, String> {
    let spec: crate::spec::WorkflowSpec =
        serde_json::from_str(spec_json).map_err(|e| e.to_string())?;
    crate::validate::compile_recorded(&spec, &replay_limits()).map_err(|errs| {
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

impl State {
    /// Applies one encoded event (the form stored in the log).
    pub fn apply_bytes(&mut self, index: u64, bytes: &[u8]) -> Result<(), ApplyError> {
        let event = events::decode(bytes).map_err(|e| ApplyError::Decode {
            index,
            message: e.to_string(),
        })?;
        if event.index != index {
            return Err(ApplyError::OutOfOrder {
                index: event.index,
                expected: index,
            });
        }
        self.apply_owned(event, bytes)
    }

    /// Applies one event (encodes it for the hash chain).
    pub fn apply(&mut self, event: &Event) -> Result<(), ApplyError> {
        let bytes = events::encode(event);
        self.apply_owned(event.clone(), &bytes)
    }

    /// Applies an event together with its encoding (the bytes hashed into
    /// the chain). Takes the event by value so strings move into state
    /// without copies: replay speed matters for restarts and audits.
    pub fn apply_owned(&mut self, event: Event, bytes: &[u8]) -> Result<(), ApplyError> {
        let index = event.index;
        if index != self.applied_index + 1 {
            return Err(ApplyError::OutOfOrder {
                index,
                expected: self.applied_index + 1,
            });
        }
        let now = event.time_unix_ms;
        let Some(body) = event.body else {
            return Err(ApplyError::UnknownEvent { index });
        };
        let kind = events::body_name(&body);
        self.fold(index, now, body)
            .map_err(|message| ApplyError::Inconsistent {
                index,
                kind,
                message,
            })?;
        let mut h = Sha256::new();
        h.update(self.chain);
        h.update(bytes);
        self.chain = h.finalize().into();
        self.applied_index = index;
        self.last_event_ms = self.last_event_ms.max(now);
        Ok(())
    }

    /// Serializes the whole state (plans are rebuilt from the stored specs
    /// on restore). Snapshot + the log suffix after `applied_index` equals a
    /// full replay (property-tested).
    pub fn to_snapshot(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("state serializes (only plain data)")
    }

    /// Restores a snapshot made by [`State::to_snapshot`].
    pub fn from_snapshot(bytes: &[u8]) -> Result<State, SnapshotError> {
        let mut s: State =
            serde_json::from_slice(bytes).map_err(|e| SnapshotError(e.to_string()))?;
        for (name, wf) in &mut s.workflows {
            for v in &mut wf.versions {
                v.plan = Arc::new(
                    plan_from_json(&v.spec_json)
                        .map_err(|m| SnapshotError(format!("{name}@{}: {m}", v.version)))?,
                );
            }
        }
        for run in s.runs.values_mut() {
            run.plan = s
                .workflows
                .get(&run.workflow)
                .and_then(|w| w.versions.get((run.version as usize).wrapping_sub(1)))
                .map(|v| v.plan.clone())
                .ok_or_else(|| {
                    SnapshotError(format!(
                        "run {} refers to unknown {}@{}",
                        run.id, run.workflow, run.version
                    ))
                })?;
        }
        Ok(s)
    }

    /// Stable SHA-256 of the whole state (equal on every replica that
    /// applied the same events).
    pub fn digest(&self) -> [u8; 32] {
        struct HashWriter(Sha256);
        impl std::io::Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashWriter(Sha256::new());
        serde_json::to_writer(&mut w, self).expect("state serializes (only plain data)");
        w.0.finalize().into()
    }

    /// The run with id `id`.
    pub fn run(&self, id: RunId) -> Option<&Run> {
        self.runs.get(&id)
    }

    /// What to say of a run id that is not in the live state: once runs
    /// have been retired, that it may be one of them and where its history
    /// is (the event archive keeps every run).
    pub fn run_not_found(&self, id: RunId) -> String {
        if self.runs_retired > 0 && id <= self.applied_index {
            format!(
                "run {id} is not in the live state: either it never existed or it ended more \
                 than the retention (run_retention_ms) ago and was retired; its events stay \
                 in the archive (`kaon audit why {id} STEP`, `kaon audit state --at I --run {id}`)"
            )
        } else {
            format!("run {id}")
        }
    }

    fn run_mut(&mut self, id: RunId) -> Result<&mut Run, String> {
        self.runs
            .get_mut(&id)
            .ok_or_else(|| format!("unknown run {id}"))
    }

    fn fold(&mut self, index: u64, now: i64, body: Body) -> Result<(), String> {
        match body {
            Body::WorkflowRegistered(e) => self.workflow_registered(now, &e),
            Body::RunSubmitted(e) => self.run_submitted(index, now, &e),
            Body::NodeStarted(e) => {
                let run = self.run_mut(e.run_id)?;
                start_container(run, e.instance, now)
            }
            Body::ForeachExpanded(e) => {
                let items: Vec<serde_json::Value> = serde_json::from_str(&e.items_json)
                    .map_err(|err| format!("items_json: {err}"))?;
                let run = self.run_mut(e.run_id)?;
                expand_foreach(run, e.instance, items, now)
            }
            Body::LoopIterationStarted(e) => {
                let run = self.run_mut(e.run_id)?;
                start_iteration(run, e.instance, e.iteration, now)
            }
            Body::TaskLaunchRequested(e) => {
                let run = self.run_mut(e.run_id)?;
                launch(run, e, index, now)
            }
            Body::TaskStatusObserved(e) => {
                let run = self.run_mut(e.run_id)?;
                observe(run, e, now)
            }
            Body::RetryScheduled(e) => {
                let run = self.run_mut(e.run_id)?;
                let inst = inst_mut(run, e.instance)?;
                if !inst.awaiting_decision {
                    return Ok(()); // already settled: recorded no-op
                }
                inst.awaiting_decision = false;
                let slot = match e.cause() {
                    FailureCause::User => 0,
                    FailureCause::Platform => 1,
                    FailureCause::Timeout => 2,
                    other => return Err(format!("cause {other:?} is never retried")),
                };
                inst.retries_used[slot] += 1;
                inst.retry = Some((e.next_attempt, e.not_before_unix_ms));
                Ok(())
            }
            Body::TaskKillRequested(e) => {
                let run = self.run_mut(e.run_id)?;
                let inst = inst_mut(run, e.instance)?;
                if let Some(a) = inst.attempts.iter_mut().find(|a| a.number == e.attempt)
                    && a.kill.is_none()
                {
                    a.kill = Some(e.cause());
                }
                Ok(())
            }
            Body::NodeFinished(e) => {
                let run = self.run_mut(e.run_id)?;
                let status = match e.outcome() {
                    NodeOutcome::Succeeded => NodeStatus::Succeeded,
                    NodeOutcome::Failed => NodeStatus::Failed,
                    NodeOutcome::FailedIgnored => NodeStatus::FailedIgnored,
                    NodeOutcome::Cancelled => NodeStatus::Cancelled,
                    NodeOutcome::Unspecified => return Err("outcome unspecified".into()),
                };
                {
                    let inst = inst_mut(run, e.instance)?;
                    if inst.status.is_terminal() {
                        return Ok(());
                    }
                    if inst.live_attempt().is_some() {
                        return Err(format!("{} still has a live attempt", inst.path));
                    }
                    inst.awaiting_decision = false;
                    inst.retry = None;
                    inst.message = e.message.clone();
                    if e.reused_from_run != 0 {
                        inst.outputs = Some(if e.outputs_json.is_empty() {
                            "{}".to_string()
                        } else {
                            e.outputs_json.clone()
                        });
                        inst.percent = 100;
                    }
                }
                let (in_exit, node) = {
                    let i = run.inst(e.instance);
                    (i.in_exit, i.node)
                };
                if status == NodeStatus::Failed && !in_exit && run.ending.is_none() {
                    let why = format!("{} failed: {}", run.inst(e.instance).path, e.message);
                    run.ending = Some(match run.plan.node(node).on_failure {
                        crate::spec::FailureMode::FinishRunning => Ending::FinishRunning(why),
                        _ => Ending::FailFast(why),
                    });
                }
                finish(run, e.instance, status, now);
                Ok(())
            }
            Body::NodeSkipped(e) => {
                let run = self.run_mut(e.run_id)?;
                let inst = inst_mut(run, e.instance)?;
                if inst.status != NodeStatus::Pending {
                    return Ok(());
                }
                inst.message = e.message.clone();
                finish(run, e.instance, NodeStatus::Skipped, now);
                Ok(())
            }
            Body::ProgressReported(e) => {
                let run = self.run_mut(e.run_id)?;
                let inst = inst_mut(run, e.instance)?;
                if let Some(a) = inst.attempts.iter_mut().find(|a| a.number == e.attempt) {
                    a.last_progress_ms = now;
                    inst.percent = e.percent.min(100);
                    inst.status_text.clone_from(&e.status_text);
                }
                Ok(())
            }
            Body::RunCancelRequested(e) => {
                let run = self.run_mut(e.run_id)?;
                if run.status == RunStatus::Running
                    && !matches!(run.ending, Some(Ending::Cancelled { .. }))
                {
                    run.ending = Some(Ending::Cancelled {
                        reason: e.reason.clone(),
                        timed_out: e.timed_out,
                    });
                }
                Ok(())
            }
            Body::RunFinished(e) => self.run_finished(now, &e),
            Body::FrameworkRegistered(e) => {
                self.framework_id = Some(e.framework_id.clone());
                Ok(())
            }
            Body::ScheduleFired(e) => {
                let s = self.schedule_mut(&e.workflow, e.schedule_index)?;
                s.last_fire_ms = Some(s.last_fire_ms.unwrap_or(i64::MIN).max(e.fire_time_unix_ms));
                if e.action() == pb::FireAction::Queued {
                    s.queued_fire_ms = Some(e.fire_time_unix_ms);
                }
                Ok(())
            }
            Body::SchedulePauseChanged(e) => {
                let s = self.schedule_mut(&e.workflow, e.schedule_index)?;
                s.paused = e.paused;
                Ok(())
            }
            Body::LeaderStarted(e) => {
                self.leader = Some((e.node_id, e.term));
                if !e.api_addr.is_empty() {
                    self.api_addrs.insert(e.node_id, e.api_addr.clone());
                }
                Ok(())
            }
            Body::RunsRetired(e) => self.runs_retired(&e),
            Body::ChainHeadSigned(e) => {
                // Signs an earlier event's head; later than the last one.
                if e.index == 0 || e.index >= index || e.index <= self.signed_index {
                    return Err(format!(
                        "ChainHeadSigned of index {} at index {index} (last signed {})",
                        e.index, self.signed_index
                    ));
                }
                self.signed_index = e.index;
                Ok(())
            }
        }
    }

    /// Removes finished runs from the live state (their events stay in
    /// the archive). All or nothing: a run that is unknown or not finished
    /// refuses the whole event.
    fn runs_retired(&mut self, e: &pb::RunsRetired) -> Result<(), String> {
        if !e.run_ids.windows(2).all(|w| w[0] < w[1]) {
            return Err(format!(
                "retired runs {:?} are not in strictly increasing order",
                e.run_ids
            ));
        }
        for id in &e.run_ids {
            match self.runs.get(id) {
                None => return Err(format!("retired run {id} is unknown")),
                Some(r) if r.finished_ms.is_none() || self.active_runs.contains(id) => {
                    return Err(format!("retired run {id} has not finished"));
                }
                Some(_) => {}
            }
        }
        for id in &e.run_ids {
            let run = self.runs.remove(id).expect("checked above");
            if !run.idempotency_key.is_empty()
                && self.idempotency.get(&run.idempotency_key) == Some(id)
            {
                self.idempotency.remove(&run.idempotency_key);
            }
            self.runs_retired += 1;
        }
        Ok(())
    }

    fn schedule_mut(&mut self, wf: &str, index: u32) -> Result<&mut ScheduleState, String> {
        self.workflows
            .get_mut(wf)
            .and_then(|w| w.schedules.get_mut(index as usize))
            .ok_or_else(|| format!("unknown schedule {wf}[{index}]"))
    }

    fn workflow_registered(&mut self, now: i64, e: &pb::WorkflowRegistered) -> Result<(), String> {
        let wf = self
            .workflows
            .entry(e.name.clone())
            .or_insert_with(|| Workflow {
                versions: Vec::new(),
                schedules: Vec::new(),
            });
        let before: Vec<String> = wf
            .schedule_version()
            .map(|v| v.plan.schedules.iter().map(|s| s.pattern.clone()).collect())
            .unwrap_or_default();
        if let Some(v) = wf
            .versions
            .iter_mut()
            .find(|v| v.spec_sha256 == e.spec_sha256)
        {
            // Identical spec again: a no-op, unless a spec first recorded
            // by a submit is now registered, which activates its schedules.
            if !v.from_submit || e.from_submit {
                return Ok(());
            }
            v.from_submit = false;
        } else {
            if e.version as usize != wf.versions.len() + 1 {
                return Ok(()); // lost a race with another registration: no-op
            }
            let plan = Arc::new(
                plan_from_json(&e.spec_json)
                    .map_err(|m| format!("stored spec does not compile: {m}"))?,
            );
            wf.versions.push(WorkflowVersion {
                version: e.version,
                spec_json: Arc::from(e.spec_json.as_str()),
                spec_sha256: e.spec_sha256.clone(),
                registered_ms: now,
                from_submit: e.from_submit,
                plan,
            });
            if e.from_submit {
                return Ok(()); // schedules unchanged
            }
        }
        let plan = wf
            .schedule_version()
            .expect("a registered version was just recorded")
            .plan
            .clone();
        let mut schedules = Vec::new();
        for (i, s) in plan.schedules.iter().enumerate() {
            // Keep bookkeeping of an unchanged schedule; start a changed one fresh.
            match (before.get(i), wf.schedules.get(i)) {
                (Some(p), Some(st)) if *p == s.pattern => schedules.push(st.clone()),
                _ => schedules.push(ScheduleState {
                    paused: s.paused,
                    since_ms: now,
                    ..ScheduleState::default()
                }),
            }
        }
        wf.schedules = schedules;
        Ok(())
    }

    fn run_submitted(&mut self, index: u64, now: i64, e: &pb::RunSubmitted) -> Result<(), String> {
        if !e.idempotency_key.is_empty() && self.idempotency.contains_key(&e.idempotency_key) {
            return Ok(()); // retried submit: no second run
        }
        let plan = self
            .workflows
            .get(&e.workflow)
            .and_then(|w| w.versions.get((e.version as usize).wrapping_sub(1)))
            .map(|v| v.plan.clone())
            .ok_or_else(|| format!("unknown workflow version {}@{}", e.workflow, e.version))?;
        let params: serde_json::Value =
            serde_json::from_str(&e.params_json).map_err(|err| format!("params_json: {err}"))?;
        let schedule = match e.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(pb::trigger::Kind::Schedule(s)) => Some((s.schedule_index, s.fire_time_unix_ms)),
            _ => None,
        };
        let retry_of = match e.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
            Some(pb::trigger::Kind::Retry(r)) => Some(r.retried_run_id),
            _ => None,
        };
        let reusable = match retry_of {
            Some(orig) => {
                let orig = self
                    .runs
                    .get(&orig)
                    .ok_or_else(|| format!("retry of unknown run {orig}"))?;
                orig.instances
                    .iter()
                    .filter(|i| i.kind == InstKind::Task && i.status == NodeStatus::Succeeded)
                    .map(|i| (i.path.clone(), i.outputs.clone().unwrap_or_default()))
                    .collect()
            }
            None => BTreeMap::new(),
        };
        let mut run = Run {
            id: index,
            workflow: e.workflow.clone(),
            version: e.version,
            params,
            idempotency_key: e.idempotency_key.clone(),
            schedule,
            submitted_ms: now,
            status: RunStatus::Running,
            finished_ms: None,
            message: String::new(),
            ending: None,
            // Room for every static node: growing (and moving) the vector
            // of ~250-byte instances is a visible cost in replay.
            instances: Vec::with_capacity(plan.nodes.len()),
            live_tasks: 0,
            retry_of,
            reusable,
            submitted_by: e.requested_by.as_ref().map(|a| a.principal.clone()),
            plan: plan.clone(),
        };
        run.instances.push(Instance::new(
            plan.root,
            None,
            InstKind::Group,
            String::new(),
            false,
        ));
        if let Some(exit) = plan.on_exit {
            run.instances.push(Instance::new(
                exit,
                None,
                InstKind::Group,
                "on_exit".to_string(),
                true,
            ));
        }
        start_container(&mut run, 0, now)?;
        if let Some((si, fire)) = schedule
            && let Some(s) = self
                .workflows
                .get_mut(&e.workflow)
                .and_then(|w| w.schedules.get_mut(si as usize))
        {
            s.active_runs.insert(index);
            if s.queued_fire_ms == Some(fire) {
                s.queued_fire_ms = None;
            }
        }
        if !e.idempotency_key.is_empty() {
            self.idempotency.insert(e.idempotency_key.clone(), index);
        }
        self.runs.insert(index, run);
        self.active_runs.insert(index);
        Ok(())
    }

    fn run_finished(&mut self, now: i64, e: &pb::RunFinished) -> Result<(), String> {
        let run = self.run_mut(e.run_id)?;
        if run.status != RunStatus::Running {
            return Ok(());
        }
        if run.live_tasks != 0 {
            return Err(format!(
                "run {} still has {} live tasks",
                e.run_id, run.live_tasks
            ));
        }
        run.status = match e.outcome() {
            RunOutcome::Succeeded => RunStatus::Succeeded,
            RunOutcome::Failed => RunStatus::Failed,
            RunOutcome::Cancelled => RunStatus::Cancelled,
            RunOutcome::Unspecified => return Err("outcome unspecified".into()),
        };
        run.finished_ms = Some(now);
        run.message = e.message.clone();
        let (wf, sched) = (run.workflow.clone(), run.schedule);
        self.active_runs.remove(&e.run_id);
        if let Some((si, _)) = sched
            && let Some(s) = self
                .workflows
                .get_mut(&wf)
                .and_then(|w| w.schedules.get_mut(si as usize))
        {
            s.active_runs.remove(&e.run_id);
        }
        Ok(())
    }
}

fn inst_mut(run: &mut Run, i: InstId) -> Result<&mut Instance, String> {
    let id = run.id;
    run.instances
        .get_mut(i as usize)
        .ok_or_else(|| format!("run {id} has no instance {i}"))
}

fn push_instance(run: &mut Run, inst: Instance) -> InstId {
    let id = run.instances.len() as InstId;
    run.instances.push(inst);
    id
}

fn child_path(parent: &str, seg: &str) -> String {
    if parent.is_empty() {
        seg.to_string()
    } else {
        let mut p = String::with_capacity(parent.len() + 1 + seg.len());
        p.push_str(parent);
        p.push('/');
        p.push_str(seg);
        p
    }
}

/// Kind of a fresh instance of `node` (not a foreach element).
fn kind_of(plan: &Plan, node: NodeId, as_element: bool) -> InstKind {
    let n = plan.node(node);
    if n.foreach.is_some() && !as_element {
        return InstKind::Foreach;
    }
    match &n.body {
        PlanBody::Task(_) => InstKind::Task,
        PlanBody::Group {
            repeat: Some(_), ..
        } => InstKind::Loop,
        PlanBody::Group { repeat: None, .. } => InstKind::Group,
    }
}

/// Creates one child per plan child of `group_node` under `owner`.
fn create_children(run: &mut Run, owner: InstId, group_node: NodeId) {
    let plan = run.plan.clone();
    let (base, in_exit) = {
        let o = run.inst(owner);
        (o.path.clone(), o.in_exit)
    };
    let children = plan.children(group_node);
    let mut ids = Vec::with_capacity(children.len());
    run.instances.reserve(children.len());
    for &c in children {
        let kind = kind_of(&plan, c, false);
        let path = child_path(&base, &plan.node(c).name);
        ids.push(push_instance(
            run,
            Instance::new(c, Some(owner), kind, path, in_exit),
        ));
    }
    let o = &mut run.instances[owner as usize];
    o.open_children = ids.len() as u32;
    o.children = ids;
}

fn start_container(run: &mut Run, i: InstId, now: i64) -> Result<(), String> {
    let inst = inst_mut(run, i)?;
    if inst.kind != InstKind::Group {
        return Err(format!("{} is not a group", inst.path));
    }
    if inst.status != NodeStatus::Pending {
        return Ok(());
    }
    inst.status = NodeStatus::Running;
    inst.started_ms = Some(now);
    let node = inst.node;
    create_children(run, i, node);
    Ok(())
}

fn expand_foreach(
    run: &mut Run,
    i: InstId,
    items: Vec<serde_json::Value>,
    now: i64,
) -> Result<(), String> {
    let plan = run.plan.clone();
    let inst = inst_mut(run, i)?;
    if inst.kind != InstKind::Foreach {
        return Err(format!("{} is not a foreach node", inst.path));
    }
    if inst.status != NodeStatus::Pending {
        return Ok(());
    }
    inst.status = NodeStatus::Running;
    inst.started_ms = Some(now);
    let (node, base, in_exit) = (inst.node, inst.path.clone(), inst.in_exit);
    let kind = kind_of(&plan, node, true);
    let n = items.len();
    let mut ids = Vec::with_capacity(n);
    run.instances.reserve(n);
    for k in 0..n {
        let mut child = Instance::new(node, Some(i), kind, format!("{base}[{k}]"), in_exit);
        child.element = Some(k as u32);
        ids.push(push_instance(run, child));
    }
    let inst = &mut run.instances[i as usize];
    inst.items = Some(Arc::new(items));
    inst.open_children = n as u32;
    inst.children = ids;
    Ok(())
}

fn start_iteration(run: &mut Run, i: InstId, iteration: u32, now: i64) -> Result<(), String> {
    let inst = inst_mut(run, i)?;
    if inst.kind != InstKind::Loop {
        return Err(format!("{} is not a loop", inst.path));
    }
    if inst.status.is_terminal() || iteration != inst.iteration + 1 {
        return Ok(());
    }
    if let Some(&last) = inst.children.last()
        && !run.inst(last).status.is_terminal()
    {
        return Err(format!(
            "iteration {} of {} is still running",
            run.inst(i).iteration,
            run.inst(i).path
        ));
    }
    let inst = &mut run.instances[i as usize];
    inst.status = NodeStatus::Running;
    inst.started_ms.get_or_insert(now);
    inst.iteration = iteration;
    inst.open_children += 1;
    let (node, path, in_exit) = (
        inst.node,
        format!("{}#{iteration}", inst.path),
        inst.in_exit,
    );
    let mut it = Instance::new(node, Some(i), InstKind::Iteration, path, in_exit);
    it.iteration = iteration;
    it.status = NodeStatus::Running;
    it.started_ms = Some(now);
    let id = push_instance(run, it);
    run.instances[i as usize].children.push(id);
    create_children(run, id, node);
    Ok(())
}

fn launch(run: &mut Run, e: pb::TaskLaunchRequested, index: u64, now: i64) -> Result<(), String> {
    let run_id = run.id;
    let inst = inst_mut(run, e.instance)?;
    if inst.kind != InstKind::Task {
        return Err(format!("{} is not a step", inst.path));
    }
    if inst.status.is_terminal() {
        return Ok(());
    }
    if (e.attempt as usize) <= inst.attempts.len() {
        return Ok(()); // a stale duplicate proposal: recorded no-op
    }
    if inst.live_attempt().is_some() {
        return Err(format!(
            "{} already has a live attempt: at most one live attempt per step",
            inst.path
        ));
    }
    if e.attempt as usize != inst.attempts.len() + 1 {
        return Err(format!(
            "{}: attempt {} does not follow attempt {}",
            inst.path,
            e.attempt,
            inst.attempts.len()
        ));
    }
    if !crate::ids::is_task_id(&e.task_id, run_id, e.instance, e.attempt, &inst.path) {
        let expected = task_id(run_id, e.instance, e.attempt, &inst.path);
        return Err(format!(
            "task id {:?} is not the derived id {expected:?}",
            e.task_id
        ));
    }
    let first = inst.status == NodeStatus::Pending;
    inst.status = NodeStatus::Running;
    inst.started_ms.get_or_insert(now);
    inst.retry = None;
    inst.awaiting_decision = false;
    // Most steps have one attempt: grow one at a time, not to four.
    inst.attempts.reserve_exact(1);
    inst.attempts.push(Attempt {
        number: e.attempt,
        state: TaskState::Staging,
        launched_ms: now,
        ended_ms: None,
        agent_id: String::new(),
        kill: None,
        cause: None,
        exit_code: None,
        message: String::new(),
        timeout_ms: e.timeout_ms,
        last_progress_ms: i64::MIN,
        launch_event: index,
        reported_terminal: None,
    });
    let parent = inst.parent;
    run.live_tasks += 1;
    if first && let Some(p) = parent {
        let p = &mut run.instances[p as usize];
        if p.kind == InstKind::Foreach {
            p.started_children += 1;
        }
    }
    Ok(())
}

/// The reason recorded for a step kaon's executor reports as failed
/// through no fault of its own (its result's `platform_failure`): it
/// counts against the platform budget.
pub const REASON_KAON_PLATFORM_FAILURE: &str = "REASON_KAON_PLATFORM_FAILURE";

/// The budget a terminal, unsuccessful attempt spends, from its Mesos
/// state and reason and whether kaon asked to kill it. Decide classifies
/// every new observation with this and records the answer in the event
/// (`TaskStatusObserved.cause`); apply uses the frozen rules of
/// [`classify_v1`] for events written before that field existed, so their
/// replay is unchanged.
pub fn classify(state: TaskState, reason: &str, kill: Option<KillCause>) -> FailureCause {
    match (state, kill) {
        // Killed because its executor went silent: the platform's failure.
        (_, Some(KillCause::ExecutorSilent)) => FailureCause::Platform,
        // kaon's executor says the step failed through no fault of its own
        // (a Spark executor lost, a fetch failure, a driver killed by
        // someone else).
        (TaskState::Failed, None) if reason == REASON_KAON_PLATFORM_FAILURE => {
            FailureCause::Platform
        }
        // The step used more than its declared resources: its own doing
        // (Mesos' isolators report it with these reasons).
        (TaskState::Failed, None)
            if matches!(
                reason,
                "REASON_CONTAINER_LIMITATION_MEMORY" | "REASON_CONTAINER_LIMITATION_DISK"
            ) =>
        {
            FailureCause::User
        }
        _ => classify_v1(state, reason, kill),
    }
}

/// The classification of events recorded before decide stored the cause
/// (`TaskStatusObserved.cause` unspecified): frozen, so old logs replay to
/// the state they had.
fn classify_v1(state: TaskState, reason: &str, kill: Option<KillCause>) -> FailureCause {
    match (state, kill) {
        (_, Some(KillCause::Timeout)) => FailureCause::Timeout,
        (_, Some(_)) => FailureCause::Cancelled,
        (TaskState::Error, _) => FailureCause::Invalid,
        (TaskState::Failed, _)
            if matches!(
                reason,
                "" | "REASON_COMMAND_EXECUTOR_FAILED" | "REASON_TASK_CHECK_STATUS_UPDATED"
            ) =>
        {
            FailureCause::User
        }
        (TaskState::Failed, _) if reason.starts_with("REASON_KAON_") => FailureCause::User,
        _ => FailureCause::Platform,
    }
}

fn observe(run: &mut Run, e: pb::TaskStatusObserved, now: i64) -> Result<(), String> {
    let inst_id = e.instance;
    let inst = inst_mut(run, inst_id)?;
    let Some(a) = inst.attempts.iter_mut().find(|a| a.number == e.attempt) else {
        return Err(format!("{} has no attempt {}", inst.path, e.attempt));
    };
    if a.state.is_terminal() {
        return Ok(()); // duplicate delivery: at-least-once from Mesos
    }
    let (state, cause) = (e.state(), e.cause());
    if !e.agent_id.is_empty() && a.agent_id != e.agent_id {
        a.agent_id.clone_from(&e.agent_id);
    }
    if e.state_only && state.is_terminal() {
        // Mesos knows the task ended; its result is still on its way.
        if a.reported_terminal.is_none() {
            a.reported_terminal = Some((state, now));
        }
        return Ok(());
    }
    a.state = state;
    if !e.message.is_empty() {
        a.message = e.message;
    }
    if e.exit_code.is_some() {
        a.exit_code = e.exit_code;
    }
    if !state.is_terminal() {
        return Ok(());
    }
    a.ended_ms = Some(now);
    run.live_tasks -= 1;
    let inst = &mut run.instances[inst_id as usize];
    if state == TaskState::Finished {
        let a = inst.attempts.last_mut().expect("attempt exists");
        a.cause = None;
        inst.outputs = Some(if e.outputs_json.is_empty() {
            "{}".to_string()
        } else {
            e.outputs_json
        });
        inst.percent = 100;
        finish(run, inst_id, NodeStatus::Succeeded, now);
    } else {
        let a = inst.attempts.last_mut().expect("attempt exists");
        a.cause = Some(match cause {
            // Written before decide recorded the cause: the rules of then.
            FailureCause::Unspecified => classify_v1(state, &e.reason, a.kill),
            cause => cause,
        });
        inst.awaiting_decision = true;
    }
    Ok(())
}

/// Marks instance `i` terminal and updates its owner's counters.
fn finish(run: &mut Run, i: InstId, status: NodeStatus, now: i64) {
    let inst = &mut run.instances[i as usize];
    debug_assert!(
        !inst.status.is_terminal(),
        "finish called twice for {}",
        inst.path
    );
    inst.status = status;
    inst.ended_ms = Some(now);
    let parent = inst.parent;
    if let Some(p) = parent {
        let p = &mut run.instances[p as usize];
        assert!(p.open_children > 0, "owner {} had no open children", p.path);
        p.open_children -= 1;
        if matches!(status, NodeStatus::Failed | NodeStatus::Cancelled) {
            p.failed_children += 1;
        }
    }
}

/// Live attempts across all runs: what a new leader reconciles.
pub fn live_tasks(state: &State) -> Vec<(RunId, InstId, &Attempt)> {
    let mut out = Vec::new();
    for &rid in &state.active_runs {
        let run = &state.runs[&rid];
        if run.live_tasks == 0 {
            continue;
        }
        for (i, inst) in run.instances.iter().enumerate() {
            if let Some(a) = inst.live_attempt() {
                out.push((rid, i as InstId, a));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step stopped for exceeding its memory spends the user budget from
    /// now on; an event recorded before causes were stored replays with
    /// the rules of then (the platform budget).
    #[test]
    fn memory_limits_are_the_steps_doing_but_old_events_replay_as_recorded() {
        let r = "REASON_CONTAINER_LIMITATION_MEMORY";
        assert_eq!(classify(TaskState::Failed, r, None), FailureCause::User);
        assert_eq!(
            classify_v1(TaskState::Failed, r, None),
            FailureCause::Platform
        );
        assert_eq!(
            classify(TaskState::Failed, r, Some(KillCause::Timeout)),
            FailureCause::Timeout
        );
        assert_eq!(
            classify(TaskState::Lost, "REASON_AGENT_REMOVED", None),
            FailureCause::Platform
        );
    }
    /// A step kaon's executor says failed through no fault of its own (a
    /// Spark executor lost) spends the platform budget; other kaon reasons
    /// stay the step's own.
    #[test]
    fn a_platform_failure_the_executor_reports_spends_the_platform_budget() {
        let r = REASON_KAON_PLATFORM_FAILURE;
        assert_eq!(classify(TaskState::Failed, r, None), FailureCause::Platform);
        assert_eq!(
            classify(TaskState::Failed, "REASON_KAON_OUTPUTS_INVALID", None),
            FailureCause::User
        );
        assert_eq!(
            classify(TaskState::Failed, r, Some(KillCause::RunCancelled)),
            FailureCause::Cancelled
        );
    }
}
