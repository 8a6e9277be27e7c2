//! The decider: `decide(state, input, now) -> events to propose + effects`.
//!
//! Pure like `apply`: it reads only its arguments. The leader calls it for
//! every input (a committed event, a client command, a Mesos update, a
//! timer, its own start) and proposes the returned events. Effects
//! (launch, kill, acknowledge, timers, subscribe) are returned as
//! data and are derived only from *committed* events or from state, so a
//! runtime may perform them at once: a launch effect exists only for a
//! committed `TaskLaunchRequested` (intent before effect, brief 4.3).
//!
//! Work per input is proportional to what changed: a finished step looks at
//! its own dependents and its owner, never at the whole DAG. Only
//! [`Input::LeaderStarted`] scans every active run.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::events::{
    Body, Event, FailureCause, KillCause, NodeOutcome, RunOutcome, SkipReason, TaskState, pb,
};
use crate::expr::{self, Bindings, Expression};
use crate::ids::{InstId, RunId, parse_task_id, task_id};
use crate::limits::Limits;
use crate::plan::{Body as PlanBody, Plan};
use crate::spec::{ExhaustedMode, OverlapPolicy};
use crate::state::{Ending, InstKind, Instance, NodeStatus, Run, RunStatus, State};
use crate::validate::{self, SpecError};

/// What the runtime must do, as data.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Launch a task exactly as the committed intent describes.
    LaunchTask(Box<pb::TaskLaunchRequested>),
    /// Ask Mesos to kill a task.
    KillTask {
        /// Mesos task id.
        task_id: String,
        /// Agent, when known.
        agent_id: String,
    },
    /// Shut down the executor of a task (Mesos SHUTDOWN): for an executor
    /// that went silent, which may not act on a kill; the agent then
    /// destroys it after its grace and reports its tasks ended.
    ShutdownExecutor {
        /// Mesos task id (its executor is derived from it).
        task_id: String,
        /// Agent, when known.
        agent_id: String,
    },
    /// Acknowledge a Mesos status update (its event is committed).
    Acknowledge {
        /// Mesos task id.
        task_id: String,
        /// Agent that sent the update.
        agent_id: String,
        /// The update's uuid.
        uuid: Vec<u8>,
    },
    /// Call `decide(TimerFired(key))` at or after `at_ms`.
    ArmTimer {
        /// Which timer.
        key: TimerKey,
        /// When, ms since the epoch.
        at_ms: i64,
    },
    /// (Re)subscribe to Mesos with the recorded framework id.
    Subscribe {
        /// Framework id from the log, if one was recorded.
        framework_id: Option<String>,
    },
    /// Sign the chain head after event `index` with the cluster's key and
    /// send it back as [`Command::RecordChainSignature`] (the key stays
    /// in the shell; the core decides when and what is signed).
    SignChainHead {
        /// The event whose head is signed.
        index: u64,
        /// The chain head after it.
        chain_head: [u8; 32],
    },
}

/// Timers the leader arms; all are re-derived from state after a failover.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum TimerKey {
    /// Step timeout of one attempt.
    StepTimeout {
        /// Run.
        run: RunId,
        /// Instance.
        inst: InstId,
        /// Attempt.
        attempt: u32,
    },
    /// A retry's backoff ended.
    Retry {
        /// Run.
        run: RunId,
        /// Instance.
        inst: InstId,
        /// The attempt to launch.
        attempt: u32,
    },
    /// Workflow timeout.
    RunTimeout {
        /// Run.
        run: RunId,
    },
    /// Mesos reported an attempt terminal by reconciliation: give up
    /// waiting for its reliable update.
    ReliableUpdate {
        /// Run.
        run: RunId,
        /// Instance.
        inst: InstId,
        /// Attempt.
        attempt: u32,
    },
    /// A kill was asked for and the task has not ended yet: send the kill
    /// again (a kill can be lost with a Mesos connection or a leader).
    KillResend {
        /// Run.
        run: RunId,
        /// Instance.
        inst: InstId,
        /// Attempt.
        attempt: u32,
    },
    /// Next cron fire.
    Schedule {
        /// Workflow.
        workflow: String,
        /// Schedule index.
        index: u32,
    },
    /// A finished run reaches `run_retention_ms` after its end: retire it
    /// (with any others due).
    Retire {
        /// Run.
        run: RunId,
    },
    /// Time to sign the chain head (`Limits::sign_every_ms`).
    SignHead,
}

/// A Mesos status update, decoded by the runtime.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskUpdate {
    /// Mesos task id.
    pub task_id: String,
    /// New state.
    pub state: TaskState,
    /// Mesos reason name ("" if none).
    pub reason: String,
    /// Human text.
    pub message: String,
    /// Mesos source name.
    pub source: String,
    /// Agent id.
    pub agent_id: String,
    /// Update uuid (empty when no acknowledgement is wanted).
    pub uuid: Vec<u8>,
    /// Exit code reported by kaon's executor.
    pub exit_code: Option<i32>,
    /// Outputs (JSON object) reported with TASK_FINISHED.
    pub outputs_json: Option<String>,
    /// The executor the task runs in ("" if Mesos did not say): the leader
    /// shuts it down if it goes silent. Not recorded.
    pub executor_id: String,
}

/// What a Mesos status update means for the attempt it names.
///
/// Mesos delivers a task's updates reliably: the agent keeps resending
/// each one (with a uuid) until the scheduler acknowledges it, and only
/// those carry the executor's `data` (the step's outputs and exit code).
/// A reconciliation answer (reason `REASON_RECONCILIATION`, no uuid) only
/// says which state the master last heard of. So an attempt ends on a
/// reliable update, on the master's own final word (task lost, invalid,
/// unknown to Mesos), or when kaon gives up waiting; never on a
/// reconciliation answer that names a state whose result is still with
/// the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// The update carries the task's new state, and, if terminal, its
    /// result: record it as the attempt's state.
    Result,
    /// Only a report of the state (a reconciliation answer): a terminal
    /// state here does not end the attempt, which waits for its reliable
    /// update (at most `Limits::reliable_update_wait_ms`).
    StateOnly,
}

impl Observation {
    /// Classifies `u` (see the type's doc).
    pub fn of(u: &TaskUpdate) -> Observation {
        let reconciliation = u.uuid.is_empty() && u.reason == "REASON_RECONCILIATION";
        match u.state {
            _ if !reconciliation => Observation::Result,
            // "Task is unknown" (lost, gone, unknown, ...) is final: no
            // update will follow for a task Mesos does not know, nor for
            // one it refused (error).
            TaskState::Lost
            | TaskState::Unknown
            | TaskState::Gone
            | TaskState::GoneByOperator
            | TaskState::Dropped
            | TaskState::Unreachable
            | TaskState::Error => Observation::Result,
            // Live states, and terminal ones whose reliable update (with
            // the result) the agent still holds for us.
            _ => Observation::StateOnly,
        }
    }
}

/// Executor progress for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Mesos task id.
    pub task_id: String,
    /// Percent complete.
    pub percent: u32,
    /// Free text.
    pub text: String,
}

/// What to submit.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitTarget {
    /// A registered workflow; the latest version if `version` is None.
    Registered {
        /// Name.
        name: String,
        /// Version.
        version: Option<u32>,
    },
    /// A spec given inline (registered as a new version if it changed).
    Inline {
        /// YAML or JSON.
        source: String,
    },
}

/// Client commands.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Register a workflow version.
    RegisterWorkflow {
        /// YAML or JSON.
        source: String,
    },
    /// Start a run.
    SubmitRun {
        /// What to run.
        target: SubmitTarget,
        /// Parameter overrides.
        params: BTreeMap<String, serde_json::Value>,
        /// Retry-safe key ("" for none).
        idempotency_key: String,
    },
    /// Cancel a run.
    CancelRun {
        /// Run.
        run_id: RunId,
        /// Why.
        reason: String,
    },
    /// Pause or resume a schedule.
    SetSchedulePaused {
        /// Workflow.
        workflow: String,
        /// Schedule index.
        index: u32,
        /// Pause (true) or resume.
        paused: bool,
    },
    /// Record the framework id Mesos assigned.
    RecordFramework {
        /// Framework id.
        framework_id: String,
    },
    /// Start a new run of a failed or cancelled run's workflow version
    /// with the same parameters; steps that succeeded there are reused
    /// (outputs included) instead of run again.
    RetryRun {
        /// The run to retry.
        run_id: RunId,
        /// Retry-safe key ("" for none).
        idempotency_key: String,
    },
    /// `command` as asked by `actor` (an authenticated API caller): the
    /// events it produces record who asked (`requested_by`), so the log
    /// answers "who submitted, cancelled or changed this". A cluster
    /// without authentication sends bare commands and records no actor.
    By {
        /// Who asked.
        actor: pb::Actor,
        /// What they asked for (never itself a `By`).
        command: Box<Command>,
    },
    /// The shell's signature of a chain head the core asked for
    /// ([`Effect::SignChainHead`]): recorded as `ChainHeadSigned`.
    RecordChainSignature {
        /// The event whose head was signed.
        index: u64,
        /// That head.
        chain_head: Vec<u8>,
        /// The signer's ed25519 public key.
        public_key: Vec<u8>,
        /// The signature.
        signature: Vec<u8>,
    },
    /// A node became leader: record it and its public API address (so
    /// followers can forward writes there). Recorded only when it changes.
    AnnounceLeader {
        /// Node id.
        node_id: u64,
        /// Raft term it leads in.
        term: u64,
        /// Public API address (host:port).
        api_addr: String,
    },
}

/// Inputs to the decider.
#[derive(Debug, Clone, PartialEq)]
pub enum Input<'a> {
    /// An event was committed and applied.
    Committed(&'a Event),
    /// A client command.
    Command(Command),
    /// A Mesos status update.
    TaskUpdate(TaskUpdate),
    /// Executor progress (best effort).
    Progress(Progress),
    /// A timer armed earlier fired.
    TimerFired(TimerKey),
    /// This node just became leader: rebuild the effect runtime from state.
    LeaderStarted,
    /// The leader heard nothing from the executor holding a task (STARTING,
    /// RUNNING or KILLING) for this long (its limit
    /// `executor_silence_ms_max` passed): kill it and shut the executor
    /// down; once the kill is confirmed the attempt counts as lost
    /// (platform budget). A task already being killed only gets the
    /// shutdown.
    ExecutorSilent {
        /// Mesos task id.
        task_id: String,
    },
    /// Every voter now applies `RunsRetired` (it was held back during a
    /// rolling upgrade): arm every finished run's retirement again.
    RearmRetention,
}

/// A refused command (a domain result, not an operational error).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    /// The spec is invalid: every error found.
    #[error("invalid spec: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidSpec(Vec<SpecError>),
    /// Bad arguments (parameters, keys).
    #[error("invalid argument: {}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    InvalidArgument(Vec<SpecError>),
    /// Something named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The request does not fit the current state.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A limit would be exceeded.
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The leader cannot serve the command now (it stopped: leadership
    /// lost, the log refused a write): retry, at the next leader.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The caller's role does not allow this on this object (a submitter
    /// cancelling or retrying another principal's run).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
}

/// The decider's answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Events to propose, in order.
    pub events: Vec<Body>,
    /// Effects to perform.
    pub effects: Vec<Effect>,
    /// A submit with a known idempotency key: the existing run.
    pub existing_run: Option<RunId>,
    /// A registration that matched an existing version: (name, version).
    pub existing_version: Option<(String, u32)>,
}

/// The first chain-head signature after a leader starts, at most this
/// late, ms.
const SIGN_FIRST_MS: i64 = 2_000;

/// Grace for a cron fire that is due "now" (timers fire a little late).
const FIRE_GRACE_MS: i64 = 60_000;

/// Decides what to do about `input`.
pub fn decide(
    state: &State,
    input: Input<'_>,
    now_ms: i64,
    limits: &Limits,
) -> Result<Decision, Rejection> {
    let mut d = Decider {
        state,
        now: now_ms,
        limits,
        out: Decision::default(),
        actor: None,
    };
    match input {
        Input::Committed(event) => d.committed(event),
        Input::Command(cmd) => d.command(cmd)?,
        Input::TaskUpdate(u) => d.task_update(u),
        Input::Progress(p) => d.progress(p),
        Input::TimerFired(key) => d.timer(key),
        Input::LeaderStarted => d.leader_started(),
        Input::ExecutorSilent { task_id } => d.executor_silent(&task_id),
        Input::RearmRetention => d.arm_all_retires(),
    }
    Ok(d.out)
}

struct Decider<'s> {
    state: &'s State,
    now: i64,
    limits: &'s Limits,
    out: Decision,
    /// Who asked for the command being decided (see [`Command::By`]).
    actor: Option<pb::Actor>,
}

/// Readiness of a pending node with respect to its dependencies.
enum Deps {
    Waiting,
    Ready,
    UpstreamFailed(String),
}

impl<'s> Decider<'s> {
    fn emit(&mut self, mut b: Body) {
        if let Some(a) = &self.actor {
            let by = match &mut b {
                Body::RunSubmitted(e) => Some(&mut e.requested_by),
                Body::RunCancelRequested(e) => Some(&mut e.requested_by),
                Body::WorkflowRegistered(e) => Some(&mut e.requested_by),
                Body::SchedulePauseChanged(e) => Some(&mut e.requested_by),
                _ => None,
            };
            if let Some(by) = by {
                by.get_or_insert_with(|| a.clone());
            }
        }
        self.out.events.push(b);
    }

    fn effect(&mut self, e: Effect) {
        self.out.effects.push(e);
    }

    // ----- committed events -------------------------------------------------

    fn committed(&mut self, event: &Event) {
        let Some(body) = &event.body else { return };
        match body {
            Body::RunSubmitted(_) => {
                let Some(run) = self.state.run(event.index) else {
                    return;
                };
                if let Some(t) = run.plan.timeout_ms {
                    self.effect(Effect::ArmTimer {
                        key: TimerKey::RunTimeout { run: run.id },
                        at_ms: run.submitted_ms + t as i64,
                    });
                }
                self.start_ready_children(run, 0);
            }
            Body::NodeStarted(e) => {
                if let Some(run) = self.active_run(e.run_id) {
                    self.start_ready_children(run, e.instance);
                }
            }
            Body::ForeachExpanded(e) => {
                if let Some(run) = self.active_run(e.run_id) {
                    let inst = run.inst(e.instance);
                    if inst.status == NodeStatus::Running && inst.open_children == 0 {
                        self.finish_container(run, e.instance);
                    } else {
                        self.start_foreach_children(run, e.instance);
                    }
                }
            }
            Body::LoopIterationStarted(e) => {
                if let Some(run) = self.active_run(e.run_id)
                    && let Some(&it) = run.inst(e.instance).children.last()
                {
                    self.start_ready_children(run, it);
                }
            }
            Body::TaskLaunchRequested(e) => {
                let Some(run) = self.active_run(e.run_id) else {
                    return;
                };
                let inst = run.inst(e.instance);
                // Only the intent that apply accepted becomes an effect: a
                // redundant second intent for the same attempt (two inputs
                // decided against one state) was a recorded no-op.
                let accepted = inst
                    .attempts
                    .last()
                    .is_some_and(|a| a.number == e.attempt && a.launch_event == event.index);
                if accepted && !inst.attempts.last().is_some_and(|a| a.state.is_terminal()) {
                    let mut launch = e.clone();
                    launch.env.extend(kaon_env(&run.workflow, e));
                    self.effect(Effect::LaunchTask(Box::new(launch)));
                    if e.timeout_ms > 0 {
                        self.effect(Effect::ArmTimer {
                            key: TimerKey::StepTimeout {
                                run: e.run_id,
                                inst: e.instance,
                                attempt: e.attempt,
                            },
                            at_ms: event.time_unix_ms + e.timeout_ms as i64,
                        });
                    }
                }
            }
            Body::TaskStatusObserved(e) => {
                if !e.mesos_uuid.is_empty() {
                    let (task_id, agent_id) = self
                        .state
                        .run(e.run_id)
                        .filter(|r| (e.instance as usize) < r.instances.len())
                        .map(|r| {
                            let agent = r
                                .inst(e.instance)
                                .attempts
                                .iter()
                                .find(|a| a.number == e.attempt)
                                .map(|a| a.agent_id.clone());
                            (r.task_id(e.instance, e.attempt), agent.unwrap_or_default())
                        })
                        .unwrap_or_default();
                    self.effect(Effect::Acknowledge {
                        task_id,
                        agent_id,
                        uuid: e.mesos_uuid.clone(),
                    });
                }
                let Some(run) = self.active_run(e.run_id) else {
                    return;
                };
                let inst = run.inst(e.instance);
                if inst.awaiting_decision {
                    self.settle(run, e.instance);
                } else if inst.status.is_terminal() {
                    self.after_terminal(run, e.instance);
                } else if let Some(a) = inst.live_attempt()
                    && a.number == e.attempt
                    && let Some((_, since)) = a.reported_terminal
                {
                    self.arm_reliable_wait(run.id, e.instance, a.number, since);
                }
            }
            Body::RetryScheduled(e) => {
                self.effect(Effect::ArmTimer {
                    key: TimerKey::Retry {
                        run: e.run_id,
                        inst: e.instance,
                        attempt: e.next_attempt,
                    },
                    at_ms: e.not_before_unix_ms,
                });
            }
            Body::TaskKillRequested(e) => {
                if let Some(r) = self.state.run(e.run_id)
                    && let Some(a) = r
                        .instances
                        .get(e.instance as usize)
                        .and_then(|i| i.attempts.iter().find(|a| a.number == e.attempt))
                    && !a.state.is_terminal()
                {
                    self.effect(Effect::KillTask {
                        task_id: r.task_id(e.instance, e.attempt),
                        agent_id: a.agent_id.clone(),
                    });
                    if e.cause == KillCause::ExecutorSilent as i32 {
                        self.effect(Effect::ShutdownExecutor {
                            task_id: r.task_id(e.instance, e.attempt),
                            agent_id: a.agent_id.clone(),
                        });
                    }
                    self.arm_kill_resend(e.run_id, e.instance, e.attempt, event.time_unix_ms);
                }
            }
            Body::NodeFinished(e) => {
                let Some(run) = self.active_run(e.run_id) else {
                    return;
                };
                if e.outcome() == NodeOutcome::Failed
                    && run.ending.is_some()
                    && !run.inst(e.instance).in_exit
                {
                    self.sweep(run);
                }
                self.after_terminal(run, e.instance);
            }
            Body::NodeSkipped(e) => {
                if let Some(run) = self.active_run(e.run_id) {
                    self.after_terminal(run, e.instance);
                }
            }
            Body::RunCancelRequested(e) => {
                if let Some(run) = self.active_run(e.run_id) {
                    self.sweep(run);
                    // A run with nothing left to wait for finishes now.
                    if run.inst(0).status.is_terminal() {
                        self.after_top(run);
                    }
                }
            }
            Body::RunFinished(e) => {
                let Some(run) = self.state.run(e.run_id) else {
                    return;
                };
                if let Some((si, _)) = run.schedule {
                    self.start_queued_fire(&run.workflow, si);
                }
                self.arm_retire(run);
            }
            Body::WorkflowRegistered(e) => self.arm_schedules(&e.name),
            Body::SchedulePauseChanged(e) => {
                if !e.paused {
                    self.schedule_due(&e.workflow, e.schedule_index);
                }
            }
            Body::ProgressReported(_)
            | Body::FrameworkRegistered(_)
            | Body::ScheduleFired(_)
            | Body::LeaderStarted(_)
            | Body::RunsRetired(_)
            | Body::ChainHeadSigned(_) => {}
        }
    }

    fn active_run(&self, id: RunId) -> Option<&'s Run> {
        self.state
            .run(id)
            .filter(|r| r.status == RunStatus::Running)
    }

    // ----- starting nodes ---------------------------------------------------

    /// Starts every pending child of `container` whose dependencies are done.
    fn start_ready_children(&mut self, run: &'s Run, container: InstId) {
        let c = run.inst(container);
        if c.kind == InstKind::Foreach {
            return self.start_foreach_children(run, container);
        }
        for &child in &c.children {
            if run.inst(child).status == NodeStatus::Pending {
                self.consider(run, container, child);
            }
        }
    }

    /// Starts foreach elements in index order up to the concurrency cap.
    fn start_foreach_children(&mut self, run: &'s Run, fe: InstId) {
        let inst = run.inst(fe);
        if inst.status != NodeStatus::Running {
            return;
        }
        let node = run.plan.node(inst.node);
        let cap = node
            .foreach
            .as_ref()
            .and_then(|f| f.max_concurrency)
            .unwrap_or(u32::MAX);
        let mut running = 0u32;
        let mut to_start = Vec::new();
        // Children are started in order, so the started ones form a prefix.
        for &child in &inst.children {
            let ci = run.inst(child);
            match ci.status {
                NodeStatus::Running => running += 1,
                NodeStatus::Pending => to_start.push(child),
                _ => {}
            }
            if running as usize + to_start.len() >= cap as usize {
                break;
            }
        }
        for child in to_start {
            self.try_start(run, child);
        }
    }

    fn deps(&self, run: &Run, container: InstId, child: InstId) -> Deps {
        let c = run.inst(container);
        let node = run.plan.node(run.inst(child).node);
        for &d in &node.depends_on {
            let dep = run.inst(c.children[d as usize]);
            if !dep.status.is_terminal() {
                return Deps::Waiting;
            }
            if !dep.status.satisfies_dependents() {
                return Deps::UpstreamFailed(format!(
                    "dependency {} ended {:?}",
                    dep.path, dep.status
                ));
            }
        }
        Deps::Ready
    }

    fn consider(&mut self, run: &'s Run, container: InstId, child: InstId) {
        match self.deps(run, container, child) {
            Deps::Waiting => {}
            Deps::Ready => self.try_start(run, child),
            Deps::UpstreamFailed(why) => {
                self.emit(Body::NodeSkipped(pb::NodeSkipped {
                    run_id: run.id,
                    instance: child,
                    reason: SkipReason::UpstreamFailed as i32,
                    message: why,
                }));
            }
        }
    }

    fn fail_node(&mut self, run: &Run, i: InstId, message: String) {
        let ignore = run.plan.node(run.inst(i).node).on_failure == crate::spec::FailureMode::Ignore;
        self.emit(Body::NodeFinished(pb::NodeFinished {
            run_id: run.id,
            instance: i,
            outcome: if ignore {
                NodeOutcome::FailedIgnored
            } else {
                NodeOutcome::Failed
            } as i32,
            message,
            ..Default::default()
        }));
    }

    /// Starts a pending node whose dependencies are satisfied.
    fn try_start(&mut self, run: &'s Run, i: InstId) {
        let inst = run.inst(i);
        if inst.status != NodeStatus::Pending {
            return;
        }
        if run.ending.is_some() && !inst.in_exit {
            self.emit(Body::NodeSkipped(pb::NodeSkipped {
                run_id: run.id,
                instance: i,
                reason: SkipReason::RunEnding as i32,
                message: "the run is ending".into(),
            }));
            return;
        }
        let node = run.plan.node(inst.node);
        let is_element = inst.element.is_some();
        // A foreach node's `when` is checked per element if it mentions the
        // element, otherwise once for the whole node.
        let when_here = node.when.as_ref().filter(|w| match &node.foreach {
            Some(f) => {
                let per_element = w.variables.contains(&f.var) || w.variables.contains("index");
                per_element == is_element
            }
            None => true,
        });
        if let Some(w) = when_here {
            match expr::eval_bool(w, &self.bindings(run, i, w)) {
                Ok(true) => {}
                Ok(false) => {
                    self.emit(Body::NodeSkipped(pb::NodeSkipped {
                        run_id: run.id,
                        instance: i,
                        reason: SkipReason::ConditionFalse as i32,
                        message: format!("when {:?} is false", w.source),
                    }));
                    return;
                }
                Err(m) => return self.fail_node(run, i, format!("when: {m}")),
            }
        }
        match inst.kind {
            InstKind::Foreach => self.expand(run, i),
            // The exit handler runs again in a retry: it reports this
            // run's result, not the one it retries.
            InstKind::Task => match (run.retry_of, run.reusable.get(&inst.path)) {
                (Some(from), Some(outputs)) if !in_exit_handler(run, i) => {
                    self.emit(Body::NodeFinished(pb::NodeFinished {
                        run_id: run.id,
                        instance: i,
                        outcome: NodeOutcome::Succeeded as i32,
                        message: format!("reused from run {from}"),
                        reused_from_run: from,
                        outputs_json: outputs.clone(),
                    }))
                }
                _ => self.launch(run, i, 1),
            },
            InstKind::Group => self.emit(Body::NodeStarted(pb::NodeStarted {
                run_id: run.id,
                instance: i,
            })),
            InstKind::Loop => self.emit(Body::LoopIterationStarted(pb::LoopIterationStarted {
                run_id: run.id,
                instance: i,
                iteration: 1,
            })),
            InstKind::Iteration => {}
        }
    }

    fn expand(&mut self, run: &Run, i: InstId) {
        let node = run.plan.node(run.inst(i).node);
        let f = node
            .foreach
            .as_ref()
            .expect("foreach instance of a foreach node");
        let items = match expr::eval(&f.items, &self.bindings(run, i, &f.items)) {
            Ok(serde_json::Value::Array(items)) => items,
            Ok(other) => {
                return self.fail_node(
                    run,
                    i,
                    format!(
                        "foreach.items {:?} must be a list, got {}",
                        f.items.source,
                        expr::json_type(&other)
                    ),
                );
            }
            Err(m) => return self.fail_node(run, i, format!("foreach.items: {m}")),
        };
        if items.len() > f.max_items as usize {
            return self.fail_node(
                run,
                i,
                format!(
                    "foreach.items has {} elements, over max_items = {}",
                    items.len(),
                    f.max_items
                ),
            );
        }
        if run.instances.len() + items.len() > self.limits.instances_per_run_max as usize {
            return self.fail_node(
                run,
                i,
                format!(
                    "expanding {} elements would exceed instances_per_run_max = {}",
                    items.len(),
                    self.limits.instances_per_run_max
                ),
            );
        }
        self.emit(Body::ForeachExpanded(pb::ForeachExpanded {
            run_id: run.id,
            instance: i,
            items_json: serde_json::Value::Array(items).to_string(),
        }));
    }

    fn launch(&mut self, run: &Run, i: InstId, attempt: u32) {
        match self.render(run, i, attempt) {
            Ok(l) => self.emit(Body::TaskLaunchRequested(l)),
            Err(m) => self.fail_node(run, i, m),
        }
    }

    /// The launch intent of attempt `attempt` of task instance `i`: its
    /// command and environment rendered against the run's state.
    fn render(
        &self,
        run: &Run,
        i: InstId,
        attempt: u32,
    ) -> Result<pb::TaskLaunchRequested, String> {
        let inst = run.inst(i);
        let PlanBody::Task(t) = &run.plan.node(inst.node).body else {
            unreachable!("launch of a non-task instance {}", inst.path)
        };
        let mut b = Bindings::default();
        let mut argv = Vec::with_capacity(t.argv.len());
        let mut env = Vec::with_capacity(t.env.len() + 5);
        let needs_bindings =
            !t.argv.iter().all(|a| a.is_literal()) || !t.env.iter().all(|(_, v)| v.is_literal());
        if needs_bindings {
            b = self.bindings_all(
                run,
                i,
                t.argv
                    .iter()
                    .chain(t.env.iter().map(|(_, v)| v))
                    .flat_map(|tpl| tpl.expressions()),
            );
        }
        for a in &t.argv {
            match a.render(&b) {
                Ok(s) => argv.push(s),
                Err(m) => return Err(format!("rendering the command: {m}")),
            }
        }
        for (k, v) in &t.env {
            match v.render(&b) {
                Ok(s) => env.push(pb::EnvVar {
                    name: k.clone(),
                    value: s,
                }),
                Err(m) => return Err(format!("rendering env {k}: {m}")),
            }
        }
        let tid = task_id(run.id, i, attempt, &inst.path);
        Ok(pb::TaskLaunchRequested {
            run_id: run.id,
            instance: i,
            attempt,
            task_id: tid,
            step_path: inst.path.clone(),
            argv,
            shell: t.shell,
            env,
            secrets: t
                .secrets
                .iter()
                .map(|(env, name)| pb::SecretRef {
                    name: name.clone(),
                    env: env.clone(),
                })
                .collect(),
            resources: Some(pb::Resources {
                cpus: t.resources.cpus,
                mem_mb: t.resources.mem_mb,
                disk_mb: t.resources.disk_mb,
                gpus: t.resources.gpus,
            }),
            constraints: t
                .constraints
                .iter()
                .map(|c| match c {
                    crate::plan::Constraint::Equals(a, v) => pb::Constraint {
                        attribute: a.clone(),
                        op: Some(pb::constraint::Op::Equals(v.clone())),
                    },
                    crate::plan::Constraint::Like(a, v) => pb::Constraint {
                        attribute: a.clone(),
                        op: Some(pb::constraint::Op::Like(v.clone())),
                    },
                })
                .collect(),
            kind: if t.kind == "command" {
                String::new()
            } else {
                t.kind.clone()
            },
            container_image: t.image.clone().unwrap_or_default(),
            uris: t
                .files
                .iter()
                .map(|(u, x, e)| pb::FetchUri {
                    uri: u.clone(),
                    executable: *x,
                    extract: *e,
                })
                .collect(),
            timeout_ms: t.timeout_ms.unwrap_or(0),
        })
    }

    // ----- after something ended --------------------------------------------

    /// Instance `i` just became terminal: wake its dependents and its owner.
    fn after_terminal(&mut self, run: &'s Run, i: InstId) {
        let inst = run.inst(i);
        let Some(p) = inst.parent else {
            return self.after_top(run);
        };
        let owner = run.inst(p);
        if owner.status != NodeStatus::Running {
            return;
        }
        if owner.open_children == 0 {
            return self.finish_container(run, p);
        }
        if run.ending.is_some() && !inst.in_exit {
            // The sweep already skipped every pending sibling; nothing starts.
            return;
        }
        match owner.kind {
            InstKind::Foreach => self.start_foreach_children(run, p),
            InstKind::Group | InstKind::Iteration => {
                let node = run.plan.node(inst.node);
                for &d in &node.dependents {
                    let sib = owner.children[d as usize];
                    if run.inst(sib).status == NodeStatus::Pending {
                        self.consider(run, p, sib);
                    }
                }
            }
            InstKind::Loop | InstKind::Task => {}
        }
    }

    /// All children of a running container are terminal: finish it (or, for
    /// a loop, decide whether to run another iteration).
    fn finish_container(&mut self, run: &'s Run, c: InstId) {
        let inst = run.inst(c);
        if inst.kind == InstKind::Loop {
            return self.loop_step(run, c);
        }
        let outcome = if inst.failed_children > 0 {
            NodeOutcome::Failed
        } else {
            NodeOutcome::Succeeded
        };
        if outcome == NodeOutcome::Failed {
            let msg = format!(
                "{} of its steps failed or were cancelled",
                inst.failed_children
            );
            // Iterations and synthetic groups always fail plainly; a node
            // marked `on_failure: ignore` fails ignored.
            if inst.kind == InstKind::Iteration || inst.parent.is_none() {
                self.emit(Body::NodeFinished(pb::NodeFinished {
                    run_id: run.id,
                    instance: c,
                    outcome: NodeOutcome::Failed as i32,
                    message: msg,
                    ..Default::default()
                }));
            } else {
                self.fail_node(run, c, msg);
            }
        } else {
            self.emit(Body::NodeFinished(pb::NodeFinished {
                run_id: run.id,
                instance: c,
                outcome: NodeOutcome::Succeeded as i32,
                message: String::new(),
                ..Default::default()
            }));
        }
    }

    fn loop_step(&mut self, run: &'s Run, l: InstId) {
        let inst = run.inst(l);
        let node = run.plan.node(inst.node);
        let PlanBody::Group {
            repeat: Some(r), ..
        } = &node.body
        else {
            unreachable!("loop instance of a non-loop node")
        };
        let Some(&last) = inst.children.last() else {
            return;
        };
        let it = run.inst(last);
        let finished = |outcome: NodeOutcome, message: String| {
            Body::NodeFinished(pb::NodeFinished {
                run_id: run.id,
                instance: l,
                outcome: outcome as i32,
                message,
                ..Default::default()
            })
        };
        if it.status != NodeStatus::Succeeded {
            return self.fail_node(run, l, format!("iteration {} failed", it.iteration));
        }
        let done = match expr::eval_bool(&r.until, &self.bindings(run, last, &r.until)) {
            Ok(b) => b,
            Err(m) => return self.fail_node(run, l, format!("repeat.until: {m}")),
        };
        if done {
            return self.emit(finished(
                NodeOutcome::Succeeded,
                format!("until held after {} iterations", it.iteration),
            ));
        }
        if run.ending.is_some() && !inst.in_exit {
            return self.emit(finished(NodeOutcome::Cancelled, "the run is ending".into()));
        }
        if it.iteration >= r.max_iterations {
            let msg = format!(
                "until {:?} still false after max_iterations = {}",
                r.until.source, r.max_iterations
            );
            return match r.on_exhausted {
                ExhaustedMode::Succeed => self.emit(finished(NodeOutcome::Succeeded, msg)),
                ExhaustedMode::Fail => self.fail_node(run, l, msg),
            };
        }
        let size = run.plan.children(inst.node).len() + 1;
        if run.instances.len() + size > self.limits.instances_per_run_max as usize {
            return self.fail_node(
                run,
                l,
                format!(
                    "another iteration would exceed instances_per_run_max = {}",
                    self.limits.instances_per_run_max
                ),
            );
        }
        self.emit(Body::LoopIterationStarted(pb::LoopIterationStarted {
            run_id: run.id,
            instance: l,
            iteration: it.iteration + 1,
        }));
    }

    /// The body or the exit handler ended.
    fn after_top(&mut self, run: &'s Run) {
        let body = run.inst(0);
        if !body.status.is_terminal() {
            return;
        }
        let exit = run.plan.on_exit.map(|_| run.inst(1));
        if let Some(exit) = exit {
            match exit.status {
                NodeStatus::Pending => {
                    return self.emit(Body::NodeStarted(pb::NodeStarted {
                        run_id: run.id,
                        instance: 1,
                    }));
                }
                NodeStatus::Running => return,
                _ => {}
            }
        }
        if run.live_tasks > 0 {
            return;
        }
        let exit_failed = exit.is_some_and(|e| e.status == NodeStatus::Failed);
        let (outcome, message) = match &run.ending {
            Some(Ending::Cancelled {
                reason,
                timed_out: false,
            }) => (RunOutcome::Cancelled, format!("cancelled: {reason}")),
            Some(Ending::Cancelled {
                reason,
                timed_out: true,
            }) => (RunOutcome::Failed, reason.clone()),
            Some(Ending::FailFast(why) | Ending::FinishRunning(why)) => {
                (RunOutcome::Failed, why.clone())
            }
            None if body.status == NodeStatus::Failed => (RunOutcome::Failed, body.message.clone()),
            None if exit_failed => (RunOutcome::Failed, "the exit handler failed".into()),
            None => (RunOutcome::Succeeded, String::new()),
        };
        self.emit(Body::RunFinished(pb::RunFinished {
            run_id: run.id,
            outcome: outcome as i32,
            message,
        }));
    }

    /// A failed attempt: retry under its budget, or fail the step.
    fn settle(&mut self, run: &'s Run, i: InstId) {
        let inst = run.inst(i);
        let Some(a) = inst.attempts.last() else {
            return;
        };
        let cause = a.cause.unwrap_or(FailureCause::Platform);
        let PlanBody::Task(t) = &run.plan.node(inst.node).body else {
            return;
        };
        let (budget, used) = match cause {
            FailureCause::User => (t.retry.user_errors, inst.retries_used[0]),
            FailureCause::Platform => (t.retry.platform_errors, inst.retries_used[1]),
            FailureCause::Timeout => (t.retry.timeouts, inst.retries_used[2]),
            _ => (0, 0),
        };
        let what = describe_failure(a, cause);
        if cause == FailureCause::Cancelled {
            return self.emit(Body::NodeFinished(pb::NodeFinished {
                run_id: run.id,
                instance: i,
                outcome: NodeOutcome::Cancelled as i32,
                message: what,
                ..Default::default()
            }));
        }
        let ending = run.ending.is_some() && !inst.in_exit;
        if used < budget && !ending {
            let next = a.number + 1;
            return self.emit(Body::RetryScheduled(pb::RetryScheduled {
                run_id: run.id,
                instance: i,
                next_attempt: next,
                not_before_unix_ms: self.now + t.retry.backoff_ms(next) as i64,
                cause: cause as i32,
            }));
        }
        let budget_note = if budget > 0 {
            format!(" ({used} of {budget} retries used)")
        } else {
            String::new()
        };
        self.fail_node(run, i, format!("{what}{budget_note}"));
    }

    /// The run is ending: skip what has not started, stop retries, and kill
    /// running tasks unless the run lets them finish.
    fn sweep(&mut self, run: &'s Run) {
        let kill = match &run.ending {
            None => return,
            Some(Ending::FinishRunning(_)) => None,
            Some(Ending::FailFast(_)) => Some(KillCause::FailFast),
            Some(Ending::Cancelled {
                timed_out: true, ..
            }) => Some(KillCause::WorkflowTimeout),
            Some(Ending::Cancelled { .. }) => Some(KillCause::RunCancelled),
        };
        for (idx, inst) in run.instances.iter().enumerate() {
            let i = idx as InstId;
            if inst.in_exit || inst.status.is_terminal() {
                continue;
            }
            if inst.status == NodeStatus::Pending {
                // Only nodes whose owner runs; the rest have no instance yet
                // or are covered by their owner's skip.
                if inst
                    .parent
                    .is_some_and(|p| run.inst(p).status == NodeStatus::Running)
                {
                    self.emit(Body::NodeSkipped(pb::NodeSkipped {
                        run_id: run.id,
                        instance: i,
                        reason: SkipReason::RunEnding as i32,
                        message: "the run is ending".into(),
                    }));
                }
                continue;
            }
            if inst.kind != InstKind::Task {
                continue;
            }
            if let Some(a) = inst.live_attempt() {
                if let (Some(cause), None) = (kill, a.kill) {
                    self.emit(Body::TaskKillRequested(pb::TaskKillRequested {
                        run_id: run.id,
                        instance: i,
                        attempt: a.number,
                        cause: cause as i32,
                    }));
                }
            } else if inst.retry.is_some() || inst.awaiting_decision {
                self.emit(Body::NodeFinished(pb::NodeFinished {
                    run_id: run.id,
                    instance: i,
                    outcome: NodeOutcome::Cancelled as i32,
                    message: "the run is ending; retry not started".into(),
                    ..Default::default()
                }));
            }
        }
    }

    // ----- expression bindings ----------------------------------------------

    fn bindings(&self, run: &Run, at: InstId, e: &Expression) -> Bindings {
        self.bindings_all(run, at, std::iter::once(e))
    }

    /// Variables for expressions evaluated at instance `at` (a node, or an
    /// iteration for `repeat.until`).
    fn bindings_all<'e>(
        &self,
        run: &Run,
        at: InstId,
        exprs: impl Iterator<Item = &'e Expression>,
    ) -> Bindings {
        let mut b = Bindings::default();
        let mut wanted: Option<std::collections::BTreeSet<String>> = Some(Default::default());
        let mut vars = std::collections::BTreeSet::new();
        for e in exprs {
            vars.extend(e.variables.iter().cloned());
            match (&mut wanted, &e.step_refs) {
                (Some(w), Some(r)) => w.extend(r.iter().cloned()),
                (_, None) => wanted = None,
                (None, Some(_)) => {}
            }
        }
        if vars.contains("params") {
            b.set("params", run.params.clone());
        }
        // Element variables, iteration, run, from the innermost outward.
        let mut bound = std::collections::BTreeSet::new();
        let mut cur = Some(at);
        while let Some(i) = cur {
            let inst = run.inst(i);
            if let (Some(k), Some(p)) = (inst.element, inst.parent) {
                let fe = run.inst(p);
                if let (Some(items), Some(f)) = (&fe.items, &run.plan.node(fe.node).foreach) {
                    if bound.insert(f.var.clone()) {
                        b.set(
                            &f.var,
                            items
                                .get(k as usize)
                                .cloned()
                                .unwrap_or(serde_json::Value::Null),
                        );
                    }
                    if bound.insert("index".to_string()) {
                        b.set("index", serde_json::json!(k));
                    }
                }
            }
            if inst.kind == InstKind::Iteration && bound.insert("iteration".to_string()) {
                b.set("iteration", serde_json::json!(inst.iteration));
            }
            cur = inst.parent;
        }
        if vars.contains("run") {
            b.set(
                "run",
                serde_json::json!({
                    "id": run.id,
                    "workflow": run.workflow,
                    // What RunFinished will record: a cancelled run's body
                    // reads `failed` (its killed steps failed), but the run
                    // ends `cancelled` (a timeout ends it `failed`).
                    "status": match run.ending {
                        Some(Ending::Cancelled { timed_out: false, .. }) => "cancelled",
                        _ => status_name(run.inst(0).status),
                    },
                    "cancelled": matches!(run.ending, Some(Ending::Cancelled { .. })),
                }),
            );
        }
        if vars.contains("steps") {
            b.set("steps", self.visible_steps(run, at, wanted.as_ref()));
        }
        b
    }

    /// `steps` as seen from `at`: names of its level first, then outer levels.
    fn visible_steps(
        &self,
        run: &Run,
        at: InstId,
        wanted: Option<&std::collections::BTreeSet<String>>,
    ) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        // The level that holds `at`'s siblings; for an iteration (until) its own children.
        let mut level = if run.inst(at).kind == InstKind::Iteration {
            Some(at)
        } else {
            run.inst(at).parent
        };
        while let Some(c) = level {
            let ci = run.inst(c);
            if matches!(ci.kind, InstKind::Group | InstKind::Iteration) {
                for &child in &ci.children {
                    let inst = run.inst(child);
                    let name = &run.plan.node(inst.node).name;
                    if map.contains_key(name) || wanted.is_some_and(|w| !w.contains(name)) {
                        continue;
                    }
                    map.insert(name.clone(), step_value(run, child, 0));
                }
            }
            level = ci.parent;
        }
        serde_json::Value::Object(map)
    }

    // ----- inputs from outside ----------------------------------------------

    fn task_update(&mut self, u: TaskUpdate) {
        let found = parse_task_id(&u.task_id).and_then(|(rid, inst, attempt)| {
            let run = self.state.run(rid)?;
            let a = run
                .instances
                .get(inst as usize)?
                .attempts
                .iter()
                .find(|a| a.number == attempt)?;
            crate::ids::is_task_id(&u.task_id, rid, inst, attempt, &run.inst(inst).path)
                .then_some((run, inst, a))
        });
        let Some((run, inst, a)) = found else {
            if self.is_from_a_newer_log(&u.task_id) {
                // A leader that has not applied everything yet (one that is
                // being deposed and does not know it) must not touch what a
                // newer leader launched: no ack (Mesos resends it to whoever
                // subscribes next), no kill.
                return;
            }
            // Not a task this state knows (a leftover of an older log, or
            // garbage): acknowledge it and make sure it is not running.
            if !u.uuid.is_empty() {
                self.effect(Effect::Acknowledge {
                    task_id: u.task_id.clone(),
                    agent_id: u.agent_id.clone(),
                    uuid: u.uuid.clone(),
                });
            }
            if !u.state.is_terminal() {
                self.effect(Effect::KillTask {
                    task_id: u.task_id,
                    agent_id: u.agent_id,
                });
            }
            return;
        };
        let meaning = Observation::of(&u);
        let unchanged = a.state.is_terminal()
            || match meaning {
                // A second "it ended" report changes nothing either.
                Observation::StateOnly if u.state.is_terminal() => a.reported_terminal.is_some(),
                _ => a.state == u.state && u.outputs_json.is_none(),
            };
        if unchanged {
            // Already recorded: acknowledging is safe (rule 4 holds).
            if !u.uuid.is_empty() {
                self.effect(Effect::Acknowledge {
                    task_id: u.task_id.clone(),
                    agent_id: u.agent_id,
                    uuid: u.uuid,
                });
            }
            if a.state.is_terminal() && !u.state.is_terminal() {
                // Mesos thinks a task runs that kaon recorded as ended.
                self.effect(Effect::KillTask {
                    task_id: u.task_id,
                    agent_id: a.agent_id.clone(),
                });
            }
            return;
        }
        let (mut state, mut reason, mut message, mut outputs) =
            (u.state, u.reason, u.message, String::new());
        if state == TaskState::Finished && meaning == Observation::Result {
            let text = u.outputs_json.unwrap_or_default();
            if text.len() > self.limits.outputs_bytes_max {
                state = TaskState::Failed;
                reason = "REASON_KAON_OUTPUTS_TOO_LARGE".into();
                message = format!(
                    "outputs are {} bytes, over the limit outputs_bytes_max = {}",
                    text.len(),
                    self.limits.outputs_bytes_max
                );
            } else if !text.is_empty()
                && !serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v.is_object())
            {
                state = TaskState::Failed;
                reason = "REASON_KAON_OUTPUTS_INVALID".into();
                message = "outputs are not a JSON object".into();
            } else {
                outputs = text;
            }
        }
        let cause = match meaning {
            Observation::Result if state.is_terminal() && state != TaskState::Finished => {
                crate::state::classify(state, &reason, a.kill)
            }
            _ => FailureCause::Unspecified,
        };
        self.emit(Body::TaskStatusObserved(pb::TaskStatusObserved {
            run_id: run.id,
            instance: inst,
            attempt: a.number,
            state: state as i32,
            reason,
            message,
            source_kind: match u.source.as_str() {
                "SOURCE_MASTER" => pb::TaskSource::Master,
                "SOURCE_AGENT" => pb::TaskSource::Agent,
                "SOURCE_EXECUTOR" => pb::TaskSource::Executor,
                _ => pb::TaskSource::Unspecified,
            } as i32,
            exit_code: if meaning == Observation::Result {
                u.exit_code
            } else {
                None
            },
            outputs_json: outputs,
            // Only when it changed: most updates repeat the agent.
            agent_id: if u.agent_id == a.agent_id {
                String::new()
            } else {
                u.agent_id
            },
            mesos_uuid: u.uuid,
            cause: cause as i32,
            state_only: meaning == Observation::StateOnly,
        }));
    }

    /// Whether `task_id` names an attempt this state cannot know yet: its
    /// run, instance or attempt lies beyond what has been applied here.
    fn is_from_a_newer_log(&self, task_id: &str) -> bool {
        let Some((rid, inst, attempt)) = parse_task_id(task_id) else {
            return false;
        };
        if rid > self.state.applied_index {
            return true;
        }
        self.state
            .run(rid)
            .is_some_and(|r| match r.instances.get(inst as usize) {
                None => true,
                Some(i) => attempt as usize > i.attempts.len(),
            })
    }

    fn executor_silent(&mut self, task_id: &str) {
        let Some((rid, i, attempt)) = parse_task_id(task_id) else {
            return;
        };
        let Some(r) = self.active_run(rid) else {
            return;
        };
        let Some(a) = r.instances.get(i as usize).and_then(|x| x.live_attempt()) else {
            return;
        };
        let held_by_executor = matches!(
            a.state,
            TaskState::Starting | TaskState::Running | TaskState::Killing
        );
        if a.number != attempt || !held_by_executor {
            return;
        }
        if a.kill.is_some() {
            // The kill is recorded already (a cancel, a timeout) but the
            // executor that should carry it out is silent: shut it down,
            // as Mesos' agent then ends its tasks.
            self.effect(Effect::ShutdownExecutor {
                task_id: task_id.to_owned(),
                agent_id: a.agent_id.clone(),
            });
            return;
        }
        self.emit(Body::TaskKillRequested(pb::TaskKillRequested {
            run_id: rid,
            instance: i,
            attempt,
            cause: KillCause::ExecutorSilent as i32,
        }));
    }

    fn progress(&mut self, p: Progress) {
        let Some((rid, i, attempt)) = parse_task_id(&p.task_id) else {
            return;
        };
        let Some(inst) = self
            .state
            .run(rid)
            .and_then(|r| r.instances.get(i as usize))
        else {
            return;
        };
        let Some(a) = inst.live_attempt().filter(|a| {
            a.number == attempt && crate::ids::is_task_id(&p.task_id, rid, i, attempt, &inst.path)
        }) else {
            return;
        };
        if self.now.saturating_sub(a.last_progress_ms) < self.limits.progress_interval_ms_min {
            return; // rate limited: progress is best effort by design
        }
        let mut text = p.text;
        if text.len() > self.limits.progress_text_bytes_max {
            let mut cut = self.limits.progress_text_bytes_max;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        self.emit(Body::ProgressReported(pb::ProgressReported {
            run_id: rid,
            instance: i,
            attempt,
            percent: p.percent.min(100),
            status_text: text,
        }));
    }

    fn timer(&mut self, key: TimerKey) {
        match key {
            TimerKey::SignHead => {
                if !self.signing() {
                    return;
                }
                // Nothing new since the last signature (the signature
                // events themselves aside): nothing to sign.
                let index = self.state.applied_index;
                if index > self.state.signed_index + 1 || self.state.signed_index == 0 && index > 0
                {
                    self.effect(Effect::SignChainHead {
                        index,
                        chain_head: self.state.chain,
                    });
                }
                self.effect(Effect::ArmTimer {
                    key: TimerKey::SignHead,
                    at_ms: self.now + self.limits.sign_every_ms,
                });
            }
            TimerKey::StepTimeout { run, inst, attempt } => {
                let Some(r) = self.active_run(run) else {
                    return;
                };
                let Some(a) = r
                    .instances
                    .get(inst as usize)
                    .and_then(|i| i.live_attempt())
                else {
                    return;
                };
                if a.number != attempt || a.kill.is_some() {
                    return;
                }
                let due = a.launched_ms + a.timeout_ms as i64;
                if self.now < due {
                    return self.effect(Effect::ArmTimer {
                        key: TimerKey::StepTimeout { run, inst, attempt },
                        at_ms: due,
                    });
                }
                self.emit(Body::TaskKillRequested(pb::TaskKillRequested {
                    run_id: run,
                    instance: inst,
                    attempt,
                    cause: KillCause::Timeout as i32,
                }));
            }
            TimerKey::Retry { run, inst, attempt } => {
                let Some(r) = self.active_run(run) else {
                    return;
                };
                let Some(i) = r.instances.get(inst as usize) else {
                    return;
                };
                let Some((next, at)) = i.retry else { return };
                if next != attempt || i.status.is_terminal() {
                    return;
                }
                if self.now < at {
                    return self.effect(Effect::ArmTimer {
                        key: TimerKey::Retry { run, inst, attempt },
                        at_ms: at,
                    });
                }
                if r.ending.is_some() && !i.in_exit {
                    return; // the sweep cancels it
                }
                self.launch(r, inst, attempt);
            }
            TimerKey::RunTimeout { run } => {
                let Some(r) = self.active_run(run) else {
                    return;
                };
                let Some(t) = r.plan.timeout_ms else { return };
                if matches!(r.ending, Some(Ending::Cancelled { .. })) {
                    return;
                }
                let due = r.submitted_ms + t as i64;
                if self.now < due {
                    return self.effect(Effect::ArmTimer {
                        key: TimerKey::RunTimeout { run },
                        at_ms: due,
                    });
                }
                self.emit(Body::RunCancelRequested(pb::RunCancelRequested {
                    run_id: run,
                    reason: format!("workflow timeout of {} ms passed", t),
                    timed_out: true,
                    requested_by: None,
                }));
            }
            TimerKey::ReliableUpdate { run, inst, attempt } => {
                let Some(r) = self.active_run(run) else {
                    return;
                };
                let Some(a) = r
                    .instances
                    .get(inst as usize)
                    .and_then(|i| i.live_attempt())
                    .filter(|a| a.number == attempt)
                else {
                    return; // its reliable update came
                };
                let Some((reported, since)) = a.reported_terminal else {
                    return;
                };
                let due = since + self.limits.reliable_update_wait_ms;
                if self.now < due {
                    return self.arm_reliable_wait(run, inst, attempt, since);
                }
                self.emit(Body::TaskStatusObserved(pb::TaskStatusObserved {
                    run_id: run,
                    instance: inst,
                    attempt,
                    state: TaskState::Lost as i32,
                    reason: "REASON_KAON_RELIABLE_UPDATE_MISSING".into(),
                    message: format!(
                        "Mesos reported {} by reconciliation, but the update with its result did not come within reliable_update_wait_ms = {}",
                        reported.mesos_name(),
                        self.limits.reliable_update_wait_ms
                    ),
                    source_kind: pb::TaskSource::Kaon as i32,
                    cause: FailureCause::Platform as i32,
                    ..Default::default()
                }));
            }
            TimerKey::KillResend { run, inst, attempt } => {
                let Some(r) = self.state.run(run) else {
                    return;
                };
                let Some(a) = r
                    .instances
                    .get(inst as usize)
                    .and_then(|i| i.live_attempt())
                    .filter(|a| a.number == attempt && a.kill.is_some())
                else {
                    return; // it ended
                };
                self.effect(Effect::KillTask {
                    task_id: r.task_id(inst, attempt),
                    agent_id: a.agent_id.clone(),
                });
                self.arm_kill_resend(run, inst, attempt, self.now);
            }
            TimerKey::Schedule { workflow, index } => self.schedule_due(&workflow, index),
            TimerKey::Retire { run } => self.retire_run(run),
        }
    }

    /// Arms the retirement of finished `run` (none while retention is off).
    fn arm_retire(&mut self, run: &Run) {
        let retention = self.limits.run_retention_ms;
        if let (true, Some(f)) = (retention > 0, run.finished_ms) {
            self.effect(Effect::ArmTimer {
                key: TimerKey::Retire { run: run.id },
                at_ms: f.saturating_add(retention),
            });
        }
    }

    /// `run`'s retention passed: retires it (one run per event, O(1): a
    /// backlog of due runs, each with its own timer, costs one decision
    /// each, batched by the leader's rounds). While a voter cannot apply
    /// `RunsRetired` (a rolling upgrade) nothing is armed again: the leader
    /// re-arms every retirement once all voters can (`RearmRetention`).
    fn retire_run(&mut self, run: RunId) {
        let retention = self.limits.run_retention_ms;
        let Some(r) = self.state.run(run) else {
            return; // retired already
        };
        if retention <= 0 || self.state.active_runs.contains(&run) {
            return;
        }
        let kind = Body::RunsRetired(pb::RunsRetired::default());
        if crate::events::body_schema(&kind) > self.limits.event_schema_max {
            return;
        }
        match r.finished_ms {
            Some(f) if f.saturating_add(retention) <= self.now => {
                self.emit(Body::RunsRetired(pb::RunsRetired {
                    run_ids: vec![run],
                    retention_ms: retention as u64,
                }));
            }
            // Fired early (a clock step): again when it is due.
            _ => self.arm_retire(r),
        }
    }

    /// Arms the retirement of every finished run (a new leader, or every
    /// voter now applies `RunsRetired`).
    fn arm_all_retires(&mut self) {
        for run in self.state.runs.values() {
            if !self.state.active_runs.contains(&run.id) {
                self.arm_retire(run);
            }
        }
    }

    /// Arms the next resend of a kill asked for at `since_ms`.
    fn arm_kill_resend(&mut self, run: RunId, inst: InstId, attempt: u32, since_ms: i64) {
        self.effect(Effect::ArmTimer {
            key: TimerKey::KillResend { run, inst, attempt },
            at_ms: since_ms + self.limits.kill_resend_ms,
        });
    }

    /// Arms the end of the wait for an attempt's reliable update (Mesos
    /// reported it terminal by reconciliation at `since_ms`).
    fn arm_reliable_wait(&mut self, run: RunId, inst: InstId, attempt: u32, since_ms: i64) {
        self.effect(Effect::ArmTimer {
            key: TimerKey::ReliableUpdate { run, inst, attempt },
            at_ms: since_ms + self.limits.reliable_update_wait_ms,
        });
    }

    fn leader_started(&mut self) {
        self.effect(Effect::Subscribe {
            framework_id: self.state.framework_id.clone(),
        });
        // What to reconcile is the leader's choice once Mesos answers the
        // subscription (`leader::Leader`): it knows which launches it holds.
        for &rid in &self.state.active_runs {
            let run = &self.state.runs[&rid];
            self.resume_run(run);
        }
        let names: Vec<String> = self.state.workflows.keys().cloned().collect();
        for name in names {
            self.arm_schedules(&name);
        }
        // Finished runs not yet retired (a retention newly set, or timers
        // of a previous leader).
        self.arm_all_retires();
        // The first signature soon after a leader starts, then at the
        // interval.
        if self.signing() {
            self.effect(Effect::ArmTimer {
                key: TimerKey::SignHead,
                at_ms: self.now + self.limits.sign_every_ms.min(SIGN_FIRST_MS),
            });
        }
    }

    /// Whether the leader signs chain heads: a key (interval) and voters
    /// that apply `ChainHeadSigned`.
    fn signing(&self) -> bool {
        self.limits.sign_every_ms > 0
            && self.limits.event_schema_max
                >= crate::events::body_schema(&Body::ChainHeadSigned(Default::default()))
    }

    /// Re-derives timers and any follow-up a previous leader may not have
    /// proposed before it died. Scans the whole run (leader start only).
    fn resume_run(&mut self, run: &'s Run) {
        if let Some(t) = run.plan.timeout_ms {
            self.effect(Effect::ArmTimer {
                key: TimerKey::RunTimeout { run: run.id },
                at_ms: run.submitted_ms + t as i64,
            });
        }
        self.sweep(run);
        for (idx, inst) in run.instances.iter().enumerate() {
            let i = idx as InstId;
            if let Some(a) = inst.live_attempt()
                && let Some((_, since)) = a.reported_terminal
            {
                self.arm_reliable_wait(run.id, i, a.number, since);
            }
            // A kill an earlier leader asked for may never have reached
            // Mesos: ask again (killing twice is harmless).
            if let Some(a) = inst.live_attempt()
                && a.kill.is_some()
            {
                self.effect(Effect::KillTask {
                    task_id: run.task_id(i, a.number),
                    agent_id: a.agent_id.clone(),
                });
                self.arm_kill_resend(run.id, i, a.number, self.now);
            }
            if let Some(a) = inst.live_attempt()
                && a.timeout_ms > 0
                && a.kill.is_none()
            {
                self.effect(Effect::ArmTimer {
                    key: TimerKey::StepTimeout {
                        run: run.id,
                        inst: i,
                        attempt: a.number,
                    },
                    at_ms: a.launched_ms + a.timeout_ms as i64,
                });
            }
            if let Some((next, at)) = inst.retry {
                self.effect(Effect::ArmTimer {
                    key: TimerKey::Retry {
                        run: run.id,
                        inst: i,
                        attempt: next,
                    },
                    at_ms: at,
                });
            }
            if inst.awaiting_decision {
                self.settle(run, i);
            }
            if inst.status == NodeStatus::Running
                && inst.kind != InstKind::Task
                && inst.open_children == 0
                && (inst.kind != InstKind::Loop
                    || inst
                        .children
                        .last()
                        .is_some_and(|&c| run.inst(c).status.is_terminal()))
            {
                self.finish_container(run, i);
            }
            if inst.status == NodeStatus::Running
                && matches!(
                    inst.kind,
                    InstKind::Group | InstKind::Iteration | InstKind::Foreach
                )
            {
                self.start_ready_children(run, i);
            }
        }
        self.after_top(run);
    }

    // ----- schedules --------------------------------------------------------

    /// The plan whose schedules are active: the latest registered version's.
    fn schedule_plan(&self, wf: &str) -> Option<&'s std::sync::Arc<Plan>> {
        self.state
            .workflows
            .get(wf)
            .and_then(|w| w.schedule_version())
            .map(|v| &v.plan)
    }

    fn arm_schedules(&mut self, wf: &str) {
        let Some(w) = self.state.workflows.get(wf) else {
            return;
        };
        for i in 0..w.schedules.len() {
            self.schedule_due(wf, i as u32);
        }
    }

    /// Runs due fires of one schedule (bounded per call) and arms the next.
    fn schedule_due(&mut self, wf: &str, index: u32) {
        let Some(plan) = self.schedule_plan(wf) else {
            return;
        };
        let Some(sched) = plan.schedules.get(index as usize) else {
            return;
        };
        let st = &self.state.workflows[wf].schedules[index as usize];
        if st.paused {
            return;
        }
        let from = st.last_fire_ms.unwrap_or(st.since_ms);
        let window = (sched.catchup_window_ms as i64).max(FIRE_GRACE_MS);
        let mut active = st.active_runs.len();
        let mut queued = st.queued_fire_ms.is_some();
        let mut cursor = from;
        let mut handled = 0u32;
        let mut missed_latest = None;
        loop {
            let Some(fire) = next_fire(sched, cursor) else {
                return;
            };
            if fire > self.now {
                if let Some(m) = missed_latest {
                    self.fire_event(wf, index, m, pb::FireAction::Missed);
                }
                return self.effect(Effect::ArmTimer {
                    key: TimerKey::Schedule {
                        workflow: wf.to_string(),
                        index,
                    },
                    at_ms: fire,
                });
            }
            cursor = fire;
            if self.now - fire > window {
                // Too old: skip ahead to the window's start in one step.
                missed_latest = Some(fire);
                let window_start = self.now - window;
                if let Some(prev) = prev_fire(sched, window_start)
                    && prev > cursor
                {
                    missed_latest = Some(prev);
                    cursor = prev;
                }
                continue;
            }
            if let Some(m) = missed_latest.take() {
                self.fire_event(wf, index, m, pb::FireAction::Missed);
            }
            if handled >= self.limits.catchup_fires_max {
                // Continue in the next decision (bounded work per call).
                return self.effect(Effect::ArmTimer {
                    key: TimerKey::Schedule {
                        workflow: wf.to_string(),
                        index,
                    },
                    at_ms: self.now,
                });
            }
            handled += 1;
            let action = match sched.overlap {
                _ if active == 0 => pb::FireAction::Started,
                OverlapPolicy::AllowAll => pb::FireAction::Started,
                OverlapPolicy::Skip => pb::FireAction::Skipped,
                OverlapPolicy::QueueOne if queued => pb::FireAction::Skipped,
                OverlapPolicy::QueueOne => pb::FireAction::Queued,
                OverlapPolicy::CancelPrevious => {
                    for &rid in &st.active_runs {
                        self.emit(Body::RunCancelRequested(pb::RunCancelRequested {
                            run_id: rid,
                            reason: format!(
                                "schedule {index} fired again (overlap: cancel_previous)"
                            ),
                            timed_out: false,
                            requested_by: None,
                        }));
                    }
                    pb::FireAction::Started
                }
            };
            queued |= action == pb::FireAction::Queued;
            self.fire_event(wf, index, fire, action);
            if action == pb::FireAction::Started {
                active += 1;
                self.submit_scheduled(wf, index, fire);
            }
        }
    }

    fn fire_event(&mut self, wf: &str, index: u32, fire: i64, action: pb::FireAction) {
        self.emit(Body::ScheduleFired(pb::ScheduleFired {
            workflow: wf.to_string(),
            schedule_index: index,
            fire_time_unix_ms: fire,
            action: action as i32,
        }));
    }

    fn submit_scheduled(&mut self, wf: &str, index: u32, fire: i64) {
        let Some(w) = self.state.workflows.get(wf) else {
            return;
        };
        let Some(v) = w.schedule_version() else {
            return;
        };
        let Some(sched) = v.plan.schedules.get(index as usize) else {
            return;
        };
        let params = match validate::resolve_params(&v.plan, &sched.params, self.limits) {
            Ok(p) => p,
            Err(_) => return, // validated at registration; nothing sensible to run
        };
        self.emit(Body::RunSubmitted(pb::RunSubmitted {
            workflow: wf.to_string(),
            version: v.version,
            params_json: serde_json::Value::Object(params).to_string(),
            idempotency_key: format!("schedule:{wf}:{index}:{fire}"),
            trigger: Some(pb::Trigger {
                kind: Some(pb::trigger::Kind::Schedule(pb::ScheduleTrigger {
                    schedule_index: index,
                    fire_time_unix_ms: fire,
                })),
            }),
            requested_by: None,
        }));
    }

    fn start_queued_fire(&mut self, wf: &str, index: u32) {
        let Some(st) = self
            .state
            .workflows
            .get(wf)
            .and_then(|w| w.schedules.get(index as usize))
        else {
            return;
        };
        if let (Some(fire), true) = (st.queued_fire_ms, st.active_runs.is_empty()) {
            self.fire_event(wf, index, fire, pb::FireAction::Started);
            self.submit_scheduled(wf, index, fire);
        }
    }

    // ----- commands ---------------------------------------------------------

    fn command(&mut self, cmd: Command) -> Result<(), Rejection> {
        match cmd {
            Command::By { actor, command } => {
                assert!(
                    !matches!(*command, Command::By { .. }),
                    "a command carries one actor"
                );
                self.actor = Some(actor);
                let decided = self.command(*command);
                self.actor = None;
                decided
            }
            Command::RegisterWorkflow { source } => {
                self.register(&source, false)?;
                Ok(())
            }
            Command::SubmitRun {
                target,
                params,
                idempotency_key,
            } => self.submit(target, params, idempotency_key),
            Command::CancelRun { run_id, reason } => {
                let run = self
                    .state
                    .run(run_id)
                    .ok_or_else(|| Rejection::NotFound(self.state.run_not_found(run_id)))?;
                self.check_own_run(run, "cancel")?;
                if run.status != RunStatus::Running {
                    return Err(Rejection::FailedPrecondition(format!(
                        "run {run_id} already finished ({:?})",
                        run.status
                    )));
                }
                self.emit(Body::RunCancelRequested(pb::RunCancelRequested {
                    run_id,
                    reason,
                    timed_out: false,
                    requested_by: None,
                }));
                Ok(())
            }
            Command::SetSchedulePaused {
                workflow,
                index,
                paused,
            } => {
                let w = self
                    .state
                    .workflows
                    .get(&workflow)
                    .ok_or_else(|| Rejection::NotFound(format!("workflow {workflow:?}")))?;
                if index as usize >= w.schedules.len() {
                    return Err(Rejection::NotFound(format!(
                        "workflow {workflow:?} has no schedule {index}"
                    )));
                }
                self.emit(Body::SchedulePauseChanged(pb::SchedulePauseChanged {
                    workflow,
                    schedule_index: index,
                    paused,
                    requested_by: None,
                }));
                Ok(())
            }
            Command::RecordFramework { framework_id } => {
                if self.state.framework_id.as_deref() != Some(framework_id.as_str()) {
                    self.emit(Body::FrameworkRegistered(pb::FrameworkRegistered {
                        framework_id,
                    }));
                }
                Ok(())
            }
            Command::RetryRun {
                run_id,
                idempotency_key,
            } => self.retry(run_id, idempotency_key),
            Command::RecordChainSignature {
                index,
                chain_head,
                public_key,
                signature,
            } => {
                if index <= self.state.signed_index {
                    return Ok(());
                }
                if index > self.state.applied_index
                    || index == self.state.applied_index && chain_head != self.state.chain
                {
                    return Err(Rejection::FailedPrecondition(format!(
                        "a signature of index {index} that is not this log's head there"
                    )));
                }
                self.emit(Body::ChainHeadSigned(pb::ChainHeadSigned {
                    index,
                    chain_head,
                    public_key,
                    signature,
                }));
                Ok(())
            }
            Command::AnnounceLeader {
                node_id,
                term,
                api_addr,
            } => {
                let known = self.state.leader == Some((node_id, term))
                    && self.state.api_addrs.get(&node_id) == Some(&api_addr);
                if !known {
                    self.emit(Body::LeaderStarted(pb::LeaderStarted {
                        node_id,
                        term,
                        api_addr,
                    }));
                }
                Ok(())
            }
        }
    }

    /// A caller with the submitter role may act only on the runs it
    /// submitted; other roles that reach the decider may act on any run
    /// (the API refused viewers before). Decided here, against the state
    /// the command is decided on, so no race separates check and act.
    fn check_own_run(&self, run: &Run, verb: &str) -> Result<(), Rejection> {
        let Some(a) = &self.actor else { return Ok(()) };
        if a.role != "submitter" || run.submitted_by.as_deref() == Some(a.principal.as_str()) {
            return Ok(());
        }
        Err(Rejection::PermissionDenied(format!(
            "{} (role submitter) may not {verb} run {}: it was submitted by {}; \
             acting on another principal's run needs the operator role",
            a.principal,
            run.id,
            run.submitted_by
                .as_deref()
                .unwrap_or("the cluster itself or an unauthenticated caller")
        )))
    }

    /// `RetryRun`: a new run of the same version and parameters that
    /// reuses the steps that succeeded (see `try_start`).
    fn retry(&mut self, run_id: RunId, key: String) -> Result<(), Rejection> {
        let run = self
            .state
            .run(run_id)
            .ok_or_else(|| Rejection::NotFound(self.state.run_not_found(run_id)))?;
        self.check_own_run(run, "retry")?;
        if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
            return Err(Rejection::FailedPrecondition(format!(
                "run {run_id} is {}; only failed or cancelled runs can be retried",
                match run.status {
                    RunStatus::Running => "still running",
                    _ => "succeeded",
                }
            )));
        }
        self.check_submit_key(&key)?;
        if let Some(&rid) = self.state.idempotency.get(&key).filter(|_| !key.is_empty()) {
            self.out.existing_run = Some(rid);
            return Ok(());
        }
        self.check_active_runs()?;
        self.emit(Body::RunSubmitted(pb::RunSubmitted {
            workflow: run.workflow.clone(),
            version: run.version,
            params_json: run.params.to_string(),
            idempotency_key: key,
            trigger: Some(pb::Trigger {
                kind: Some(pb::trigger::Kind::Retry(pb::RetryTrigger {
                    retried_run_id: run_id,
                })),
            }),
            requested_by: None,
        }));
        Ok(())
    }

    fn check_submit_key(&self, key: &str) -> Result<(), Rejection> {
        if key.len() > self.limits.idempotency_key_bytes_max {
            return Err(Rejection::InvalidArgument(vec![SpecError::new(
                "idempotency_key",
                format!(
                    "{} bytes, over the limit idempotency_key_bytes_max = {}",
                    key.len(),
                    self.limits.idempotency_key_bytes_max
                ),
            )]));
        }
        Ok(())
    }

    fn check_active_runs(&self) -> Result<(), Rejection> {
        if self.state.active_runs.len() >= self.limits.active_runs_max {
            return Err(Rejection::LimitExceeded(format!(
                "{} runs are active, the limit active_runs_max = {}",
                self.state.active_runs.len(),
                self.limits.active_runs_max
            )));
        }
        Ok(())
    }

    /// Validates and records a spec; returns (name, version, plan). A spec
    /// recorded `from_submit` (a file submitted to run) does not arm its
    /// schedules; registering it arms them (issue 9, A).
    fn register(
        &mut self,
        source: &str,
        from_submit: bool,
    ) -> Result<(String, u32, std::sync::Arc<Plan>), Rejection> {
        let spec =
            crate::spec::parse(source, self.limits).map_err(|e| Rejection::InvalidSpec(vec![e]))?;
        let plan = validate::compile(&spec, self.limits).map_err(Rejection::InvalidSpec)?;
        let spec_json = serde_json::to_string(&spec).expect("a spec serializes");
        let sha = hex(&Sha256::digest(spec_json.as_bytes()));
        let versions = self
            .state
            .workflows
            .get(&spec.name)
            .map(|w| w.versions.as_slice())
            .unwrap_or(&[]);
        if let Some(v) = versions.iter().find(|v| v.spec_sha256 == sha) {
            let (version, plan) = (v.version, v.plan.clone());
            if v.from_submit && !from_submit {
                // Registered now: the same version, its schedules armed.
                self.emit(Body::WorkflowRegistered(pb::WorkflowRegistered {
                    name: spec.name.clone(),
                    version,
                    spec_json,
                    spec_sha256: sha,
                    from_submit: false,
                    requested_by: None,
                }));
            } else {
                self.out.existing_version = Some((spec.name.clone(), version));
            }
            return Ok((spec.name, version, plan));
        }
        let version = versions.len() as u32 + 1;
        self.emit(Body::WorkflowRegistered(pb::WorkflowRegistered {
            name: spec.name.clone(),
            version,
            spec_json,
            spec_sha256: sha,
            from_submit,
            requested_by: None,
        }));
        Ok((spec.name, version, std::sync::Arc::new(plan)))
    }

    fn submit(
        &mut self,
        target: SubmitTarget,
        params: BTreeMap<String, serde_json::Value>,
        key: String,
    ) -> Result<(), Rejection> {
        self.check_submit_key(&key)?;
        if let Some(&rid) = self.state.idempotency.get(&key).filter(|_| !key.is_empty()) {
            self.out.existing_run = Some(rid);
            return Ok(());
        }
        self.check_active_runs()?;
        let (name, version, plan) = match target {
            SubmitTarget::Inline { source } => self.register(&source, true)?,
            SubmitTarget::Registered { name, version } => {
                let w = self.state.workflows.get(&name).ok_or_else(|| {
                    let hint = validate::did_you_mean(&name, self.state.workflows.keys());
                    Rejection::NotFound(format!("workflow {name:?}{hint}"))
                })?;
                let v = match version {
                    None => w.versions.last(),
                    Some(n) => w.versions.get((n as usize).wrapping_sub(1)),
                }
                .ok_or_else(|| {
                    Rejection::NotFound(format!("workflow {name:?} version {version:?}"))
                })?;
                (name, v.version, v.plan.clone())
            }
        };
        let params = validate::resolve_params(&plan, &params, self.limits)
            .map_err(Rejection::InvalidArgument)?;
        self.emit(Body::RunSubmitted(pb::RunSubmitted {
            workflow: name,
            version,
            params_json: serde_json::Value::Object(params).to_string(),
            idempotency_key: key,
            trigger: Some(pb::Trigger {
                kind: Some(pb::trigger::Kind::Manual(pb::ManualTrigger {})),
            }),
            requested_by: None,
        }));
        Ok(())
    }
}

/// The launch of attempt `attempt` of task instance `inst` of run `run`,
/// rendered from state as decide rendered its intent, with kaon's own
/// variables: for a leader that must take up a launch it could not hold
/// in memory. None if there is no such task instance or it fails to render.
pub fn render_launch(
    state: &State,
    run: RunId,
    inst: InstId,
    attempt: u32,
) -> Option<pb::TaskLaunchRequested> {
    let r = state.run(run)?;
    let i = r.instances.get(inst as usize)?;
    if !matches!(r.plan.node(i.node).body, PlanBody::Task(_)) {
        return None;
    }
    let limits = Limits::default();
    let d = Decider {
        state,
        now: 0,
        limits: &limits,
        out: Decision::default(),
        actor: None,
    };
    let mut l = d.render(r, inst, attempt).ok()?;
    l.env.extend(kaon_env(&r.workflow, &l));
    Some(l)
}

/// Variables kaon adds to every step's environment. They are derived from
/// the launch intent, so the event does not repeat them; the launch effect
/// carries them.
pub fn kaon_env(workflow: &str, l: &pb::TaskLaunchRequested) -> Vec<pb::EnvVar> {
    [
        ("KAON_WORKFLOW", workflow.to_string()),
        ("KAON_RUN_ID", l.run_id.to_string()),
        ("KAON_STEP_PATH", l.step_path.clone()),
        ("KAON_ATTEMPT", l.attempt.to_string()),
        ("KAON_TASK_ID", l.task_id.clone()),
    ]
    .into_iter()
    .map(|(k, v)| pb::EnvVar {
        name: k.to_string(),
        value: v,
    })
    .collect()
}

fn describe_failure(a: &crate::state::Attempt, cause: FailureCause) -> String {
    let what = match cause {
        FailureCause::User => match a.exit_code {
            Some(c) => format!("attempt {} exited with code {c}", a.number),
            None => format!("attempt {} failed", a.number),
        },
        FailureCause::Platform => format!(
            "attempt {} was lost by the platform ({:?})",
            a.number, a.state
        ),
        FailureCause::Timeout => {
            format!("attempt {} timed out after {} ms", a.number, a.timeout_ms)
        }
        FailureCause::Cancelled => {
            format!("attempt {} was killed because the run is ending", a.number)
        }
        FailureCause::Invalid => format!("attempt {} could not be launched (TASK_ERROR)", a.number),
        FailureCause::Unspecified => format!("attempt {} failed", a.number),
    };
    if a.message.is_empty() {
        what
    } else {
        format!("{what}: {}", a.message)
    }
}

/// Lowercase name of a run's status, as the API and the CLI show it.
pub fn run_status_name(s: crate::state::RunStatus) -> &'static str {
    use crate::state::RunStatus;
    match s {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    }
}

/// Whether instance `i` is the exit handler or inside it (the exit
/// handler is instance 1 when the plan has one; it and the body, 0, have
/// no parent).
fn in_exit_handler(run: &Run, mut i: InstId) -> bool {
    if run.plan.on_exit.is_none() {
        return false;
    }
    while let Some(p) = run.inst(i).parent {
        i = p;
    }
    i == 1
}

/// Lowercase status name used in expressions (`steps.x.status`).
pub fn status_name(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Pending => "pending",
        NodeStatus::Running => "running",
        NodeStatus::Succeeded => "succeeded",
        NodeStatus::Failed => "failed",
        NodeStatus::FailedIgnored => "failed_ignored",
        NodeStatus::Skipped => "skipped",
        NodeStatus::Cancelled => "cancelled",
    }
}

/// `{status, outputs}` of an instance; outputs of a group are its children's
/// by name, of a loop its last iteration's, of a foreach a list per element.
fn step_value(run: &Run, i: InstId, depth: u32) -> serde_json::Value {
    let inst = run.inst(i);
    serde_json::json!({ "status": status_name(inst.status), "outputs": outputs_of(run, inst, depth) })
}

fn outputs_of(run: &Run, inst: &Instance, depth: u32) -> serde_json::Value {
    if depth > 16 {
        return serde_json::Value::Null;
    }
    match inst.kind {
        InstKind::Task => inst
            .outputs
            .as_deref()
            .and_then(|o| serde_json::from_str(o).ok())
            .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
        InstKind::Group | InstKind::Iteration => {
            let mut m = serde_json::Map::new();
            for &c in &inst.children {
                let ci = run.inst(c);
                m.insert(
                    run.plan.node(ci.node).name.clone(),
                    outputs_of(run, ci, depth + 1),
                );
            }
            serde_json::Value::Object(m)
        }
        InstKind::Loop => match inst.children.last() {
            Some(&c) => outputs_of(run, run.inst(c), depth + 1),
            None => serde_json::Value::Object(Default::default()),
        },
        InstKind::Foreach => serde_json::Value::Array(
            inst.children
                .iter()
                .map(|&c| outputs_of(run, run.inst(c), depth + 1))
                .collect(),
        ),
    }
}

fn next_fire(s: &crate::plan::Schedule, after_ms: i64) -> Option<i64> {
    use chrono::TimeZone;
    let t = s.timezone.timestamp_millis_opt(after_ms).single()?;
    s.cron
        .find_next_occurrence(&t, false)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn prev_fire(s: &crate::plan::Schedule, before_ms: i64) -> Option<i64> {
    use chrono::TimeZone;
    let t = s.timezone.timestamp_millis_opt(before_ms).single()?;
    s.cron
        .find_previous_occurrence(&t, false)
        .ok()
        .map(|d| d.timestamp_millis())
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
