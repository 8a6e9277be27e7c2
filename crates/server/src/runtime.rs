//! The leader's effect runtime: decide -> append -> perform effects.
//!
//! One task owns everything mutable (pending launches, unacknowledged
//! updates, the Mesos driver) and processes one input at a time, so every
//! decision sees the state its predecessors produced. Effects come only from
//! committed events (the core guarantees it), so they are performed right
//! after `append` returns.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kaon_core::Limits;
use kaon_core::decide::{
    self, Command, Decision, Effect, Input, Progress, Rejection, TaskUpdate, TimerKey,
};
use kaon_core::events::{Body, Event, TaskState, pb};
use kaon_mesos::driver::{Driver, DriverConfig, DriverEvent, DriverHandle};
use kaon_mesos::executor::{ExecutorMessage, StepResult, StepSpec};
use kaon_mesos::matching::{self, OfferView, TaskRequest};
use kaon_mesos::resources::Resources;
use kaon_mesos::types::scheduler::Operation;
use kaon_mesos::types::{
    B64, CommandInfo, ExecutorInfo, ExecutorType, FrameworkInfo, Id, Offer, Resource, TaskInfo,
    TaskStatus,
};
use tokio::sync::{mpsc, oneshot};

use crate::log::EventLog;

/// How the runtime reaches Mesos and runs steps.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Mesos master base URL, e.g. `http://127.0.0.1:5050`.
    pub master_url: String,
    /// Framework name shown by Mesos.
    pub framework_name: String,
    /// Mesos role the framework registers in (`FrameworkInfo.role`; `*` is
    /// the default role). Steps use unreserved resources.
    pub role: String,
    /// Seconds Mesos keeps our tasks running while no scheduler is
    /// subscribed (long, so a leader failover never loses tasks).
    pub failover_timeout_secs: f64,
    /// Path of the executor program on the agents and its argv.
    pub executor_command: String,
    /// Arguments (argv, including argv\[0\]) for the executor program.
    pub executor_args: Vec<String>,
    /// CPU reserved for each executor process besides its step.
    pub executor_cpus: f64,
    /// Memory reserved for each executor process, MB.
    pub executor_mem_mb: f64,
    /// Core limits used by decide.
    pub limits: Limits,
    /// Launches waiting for offers at most (more are refused by nothing:
    /// they queue in state; this bounds the in-memory copy).
    pub pending_launches_max: usize,
    /// This node's public API address: recorded in the log when the runtime
    /// starts on a new leader, so followers forward writes to it.
    pub api_addr: Option<String>,
    /// Wall clock for decide's `now` and timer deadlines (handed in, as
    /// the Raft node's is, so a simulation can run on virtual time).
    pub clock: Arc<dyn kaon_log::Clock>,
    /// How the Mesos driver reaches the master: HTTP over TCP (default),
    /// or in-process to an emulator's router (simulations).
    pub mesos_transport: kaon_mesos::transport::MesosTransport,
}

impl RuntimeConfig {
    /// Defaults for a master at `master_url`, running `executor_command executor`.
    pub fn new(master_url: impl Into<String>, executor_command: impl Into<String>) -> Self {
        RuntimeConfig {
            master_url: master_url.into(),
            framework_name: "kaon".into(),
            role: "*".into(),
            failover_timeout_secs: kaon_mesos::driver::FAILOVER_TIMEOUT_DEFAULT_SECS,
            executor_command: executor_command.into(),
            executor_args: vec!["kaon".into(), "executor".into()],
            executor_cpus: 0.01,
            executor_mem_mb: 16.0,
            limits: Limits::default(),
            pending_launches_max: 100_000,
            api_addr: None,
            clock: Arc::new(kaon_log::SystemClock),
            mesos_transport: Default::default(),
        }
    }
}

/// What a command did: decide's answer and the events it committed.
#[derive(Debug, Clone)]
pub struct CommandOutcome {
    /// Decide's answer (events proposed, `existing_run`, `existing_version`).
    pub decision: Decision,
    /// The events the command itself committed, with their indexes (a
    /// submit's run id is the index of its `RunSubmitted`).
    pub committed: Vec<Event>,
}

/// Where a command's answer goes.
type Reply = oneshot::Sender<Result<CommandOutcome, Rejection>>;

/// Most commands that share one round.
const COMMAND_BATCH_MAX: usize = 256;

enum Msg {
    Command(Command, oneshot::Sender<Result<CommandOutcome, Rejection>>),
    Timer(TimerKey),
    /// Record a task's latest progress that the rate limit held back.
    ProgressFlush(String),
    Shutdown(oneshot::Sender<()>),
}

/// Executor progress of one task as the runtime tracks it.
#[derive(Default)]
struct TaskProgress {
    /// Latest (percent, status text) heard from the executor.
    latest: (u32, String),
    /// Latest recorded in the log.
    recorded: Option<(u32, String)>,
    /// A deferred `ProgressFlush` is on its way.
    flush_armed: bool,
}

/// Talks to a running runtime. Cheap to clone.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: mpsc::Sender<Msg>,
}

impl RuntimeHandle {
    /// Sends a client command; returns decide's answer once its events are
    /// committed (for a submit: `existing_run` or the new run via state).
    pub async fn command(&self, cmd: Command) -> anyhow::Result<Result<CommandOutcome, Rejection>> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Command(cmd, tx))
            .await
            .map_err(|_| anyhow::anyhow!("runtime stopped"))?;
        Ok(rx.await?)
    }
}

impl RuntimeHandle {
    /// True once the runtime has stopped (shut down, or its log refused a
    /// write, e.g. because this node lost leadership).
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Stops the runtime (and its Mesos subscription; Mesos keeps the tasks
    /// running for the failover timeout). Returns when it has stopped.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Where the current runtime lives: `Some` only on the leader.
pub type RuntimeSlot = Arc<tokio::sync::RwLock<Option<RuntimeHandle>>>;

/// A slot that always holds `handle` (single node with a local log).
pub fn fixed_slot(handle: RuntimeHandle) -> RuntimeSlot {
    Arc::new(tokio::sync::RwLock::new(Some(handle)))
}

/// How long the supervisor waits for a quorum to confirm this node's
/// leadership before starting the runtime (it tries again after).
const LEADERSHIP_CONFIRM_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs the effect runtime exactly while this node leads (brief 4.5): it
/// starts once the node is leader and has applied everything committed, and
/// is shut down (closing its Mesos subscription) as soon as it is not.
pub fn supervise(log: Arc<crate::log::RaftLog>, config: RuntimeConfig) -> RuntimeSlot {
    let slot: RuntimeSlot = Arc::new(tokio::sync::RwLock::new(None));
    let out = slot.clone();
    tokio::spawn(async move {
        let mut metrics = log.node().metrics_watch();
        loop {
            let st = log.node().status();
            let leader = st.leader == Some(st.id) && st.state == "Leader";
            // Start only once everything committed is applied (decide must
            // see the whole log); stop on leadership alone (the applied index
            // trails the commit index briefly on every append).
            // (A new leader's own blank entry must be applied too: until
            // then openraft may still refuse proposals.)
            let caught_up =
                st.applied_index >= st.committed_index && st.applied_index >= st.last_log_index;
            // A runtime that stopped by itself (its log refused a write) is
            // cleared and, while this node leads, started again.
            let stopped = slot.read().await.as_ref().is_some_and(|h| h.is_stopped());
            if stopped {
                slot.write().await.take();
            }
            let running = slot.read().await.is_some();
            // A node restarted with a vote for itself can believe it leads
            // until it hears from the others: confirm with a quorum (the
            // ReadIndex round) before acting, so a deposed leader never
            // takes the Mesos framework from the real one.
            let confirmed = leader
                && caught_up
                && !running
                && matches!(
                    tokio::time::timeout(LEADERSHIP_CONFIRM_TIMEOUT, log.node().read_index()).await,
                    Ok(Ok(_))
                );
            if confirmed {
                tracing::info!(
                    node = st.id,
                    term = st.term,
                    "became leader: starting the effect runtime"
                );
                *slot.write().await = Some(start(log.clone(), config.clone()));
            } else if !leader && running {
                tracing::info!(
                    node = st.id,
                    "no longer leader: stopping the effect runtime"
                );
                if let Some(h) = slot.write().await.take() {
                    h.shutdown().await;
                }
            }
            // Woken by any metrics change; the timeout re-checks the applied index.
            metrics.changed(Duration::from_millis(100)).await;
        }
    });
    out
}

/// The Mesos executor id kaon gives the executor of task `task_id` (one
/// executor per step attempt, so its sandbox holds that attempt's logs).
pub fn executor_id(task_id: &str) -> String {
    format!("kaon-exec-{task_id}")
}

/// Starts the runtime on the current tokio runtime.
pub fn start<L: EventLog>(log: Arc<L>, config: RuntimeConfig) -> RuntimeHandle {
    let (tx, rx) = mpsc::channel(1024);
    let rt = Runtime {
        log,
        config,
        tx: tx.clone(),
        driver: None,
        pending: BTreeMap::new(),
        progress: BTreeMap::new(),
        failed: false,
        backlog: VecDeque::new(),
        stash: VecDeque::new(),
    };
    tokio::spawn(rt.run(rx));
    RuntimeHandle { tx }
}

struct Runtime<L: EventLog> {
    log: Arc<L>,
    config: RuntimeConfig,
    tx: mpsc::Sender<Msg>,
    driver: Option<(DriverHandle, mpsc::Receiver<DriverEvent>)>,
    /// Committed launch intents waiting for an offer, by task id.
    pending: BTreeMap<String, pb::TaskLaunchRequested>,
    /// Executor progress per live task: the latest (percent, text) heard,
    /// the latest recorded, and whether a deferred flush is armed.
    progress: BTreeMap<String, TaskProgress>,
    /// The log refused a write: stop (a supervisor may start a new runtime).
    failed: bool,
    /// Decisions on committed events whose effects and events go out with
    /// the next round.
    backlog: VecDeque<Decision>,
    /// Messages taken off the channel while gathering a batch of commands;
    /// handled before the channel.
    stash: VecDeque<Msg>,
}

impl<L: EventLog> Runtime<L> {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        if let (Some(api_addr), Some(cs)) =
            (self.config.api_addr.clone(), self.log.cluster_status())
        {
            let announce = Command::AnnounceLeader {
                node_id: cs.id,
                term: cs.term,
                api_addr,
            };
            if let Err(e) = self.decide_and_do(Input::Command(announce)).await {
                tracing::warn!(error = %e, "recording this leader's API address failed");
            }
        }
        let _ = self.decide_and_do(Input::LeaderStarted).await;
        while !self.failed {
            let driver_event = async {
                match &mut self.driver {
                    Some((_, events)) => events.recv().await,
                    None => std::future::pending().await,
                }
            };
            let next = async {
                match self.stash.pop_front() {
                    Some(m) => Some(m),
                    None => rx.recv().await,
                }
            };
            tokio::select! {
                biased;
                msg = next => match msg {
                    None => break,
                    Some(Msg::Command(cmd, reply)) => {
                        // Every command already waiting joins this round.
                        let mut batch = vec![(cmd, reply)];
                        while batch.len() < COMMAND_BATCH_MAX {
                            match rx.try_recv() {
                                Ok(Msg::Command(c, r)) => batch.push((c, r)),
                                Ok(other) => {
                                    // Keep the order: handle it next.
                                    self.stash.push_back(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        self.commands(batch).await;
                    }
                    Some(Msg::Shutdown(done)) => {
                        if let Some((d, _)) = self.driver.take() {
                            d.stop();
                        }
                        let _ = done.send(());
                        return;
                    }
                    Some(Msg::Timer(key)) => {
                        let _ = self.decide_and_do(Input::TimerFired(key)).await;
                    }
                    Some(Msg::ProgressFlush(task_id)) => {
                        if let Some(p) = self.progress.get_mut(&task_id) {
                            p.flush_armed = false;
                        }
                        self.record_progress(task_id).await;
                    }
                },
                ev = driver_event => match ev {
                    Some(ev) => self.on_driver_event(ev).await,
                    None => {
                        tracing::warn!("Mesos driver ended; re-subscribing");
                        self.driver = None;
                        let _ = self.decide_and_do(Input::LeaderStarted).await;
                    }
                },
                // Nothing else to do: flush the follow-ups.
                _ = std::future::ready(()), if !self.backlog.is_empty() => {
                    let _ = self.round(None).await;
                }
            }
        }
        if let Some((d, _)) = &self.driver {
            d.stop();
        }
    }

    /// Client commands that arrived together: each is decided against the
    /// current state, and those whose decisions combine safely (they only
    /// submit runs, with distinct idempotency keys, within the active-runs
    /// limit) share one round; any other command gets a round of its own,
    /// so it is decided against the state its predecessors produced.
    async fn commands(&mut self, batch: Vec<(Command, Reply)>) {
        let limits = self.config.limits.clone();
        let mut queue: VecDeque<(Command, Reply)> = batch.into();
        while !queue.is_empty() {
            let now = self.config.clock.now_unix_ms();
            let active = self.log.with_state(|s| s.active_runs.len());
            let mut keys = std::collections::BTreeSet::new();
            let mut firsts: Vec<(Decision, Reply)> = Vec::new();
            while let Some((cmd, reply)) = queue.pop_front() {
                let d = match self
                    .log
                    .with_state(|s| decide::decide(s, Input::Command(cmd.clone()), now, &limits))
                {
                    Err(r) => {
                        let _ = reply.send(Err(r));
                        continue;
                    }
                    Ok(d) => d,
                };
                let key = d.events.iter().find_map(|e| match e {
                    Body::RunSubmitted(r) => Some(r.idempotency_key.as_str()),
                    _ => None,
                });
                let combinable = !d.events.is_empty()
                    && d.events.iter().all(|e| matches!(e, Body::RunSubmitted(_)))
                    && key.is_none_or(|k| k.is_empty() || !keys.contains(k))
                    && active + firsts.len() < limits.active_runs_max;
                if !firsts.is_empty() && !combinable {
                    queue.push_front((cmd, reply)); // next round, on fresh state
                    break;
                }
                if let Some(k) = key.filter(|k| !k.is_empty()) {
                    keys.insert(k.to_string());
                }
                firsts.push((d, reply));
                if !combinable {
                    break;
                }
            }
            if firsts.is_empty() {
                continue;
            }
            let counts: Vec<usize> = firsts.iter().map(|(d, _)| d.events.len()).collect();
            let decisions: Vec<Decision> = firsts.iter().map(|(d, _)| d.clone()).collect();
            match self.round_many(decisions).await {
                Err(r) => {
                    for (_, reply) in firsts {
                        let _ = reply.send(Err(r.clone()));
                    }
                }
                Ok(events) => {
                    let mut at = 0;
                    for ((d, reply), n) in firsts.into_iter().zip(counts) {
                        let committed =
                            events[at.min(events.len())..(at + n).min(events.len())].to_vec();
                        at += n;
                        let _ = reply.send(Ok(CommandOutcome {
                            decision: Decision {
                                effects: Vec::new(),
                                ..d
                            },
                            committed,
                        }));
                    }
                }
            }
            if self.failed {
                for (_, reply) in queue.drain(..) {
                    let _ = reply.send(Err(Rejection::FailedPrecondition(
                        "the leader's runtime stopped; retry".into(),
                    )));
                }
            }
        }
    }

    /// Decides on `input` and commits its events in the next round (with
    /// every follow-up decision waiting in the backlog); returns once the
    /// input's own events are committed. Follow-ups of those events go to
    /// the backlog, flushed by the next round, so a client's answer does
    /// not wait for the run's later steps and one Raft round carries the
    /// work of many inputs.
    async fn decide_and_do(&mut self, input: Input<'_>) -> Result<CommandOutcome, Rejection> {
        let limits = self.config.limits.clone();
        let now = self.config.clock.now_unix_ms();
        let first = self
            .log
            .with_state(|s| decide::decide(s, input, now, &limits))?;
        let decision = Decision {
            effects: Vec::new(),
            ..first.clone()
        };
        let committed = self.round(Some(first)).await?;
        Ok(CommandOutcome {
            decision,
            committed,
        })
    }

    /// One round: performs the effects of every backlog decision and of
    /// `first`, commits all their events in one batch (backlog first: those
    /// decisions are older), and decides on each committed event (into the
    /// backlog). Returns the committed events of `first`.
    ///
    /// Decisions in one batch were made against the same state; the core
    /// is built for that (an event made redundant by an earlier one in the
    /// batch is a recorded no-op, and only intents apply accepted become
    /// effects).
    async fn round(&mut self, first: Option<Decision>) -> Result<Vec<Event>, Rejection> {
        self.round_many(first.into_iter().collect()).await
    }

    /// [`Runtime::round`] for several new decisions at once (in order);
    /// returns their committed events, in order.
    async fn round_many(&mut self, firsts: Vec<Decision>) -> Result<Vec<Event>, Rejection> {
        let limits = self.config.limits.clone();
        let mut batch: Vec<Decision> = self.backlog.drain(..).collect();
        let first_events: usize = firsts.iter().map(|d| d.events.len()).sum();
        batch.extend(firsts);
        let mut events = Vec::new();
        for d in batch {
            for e in d.effects {
                self.perform(e).await;
            }
            events.extend(d.events);
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let committed: Vec<Event> = match self
            .log
            .append(events, self.config.clock.now_unix_ms())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                // The log refused (apply error, lost leadership): stop
                // acting, loudly.
                tracing::error!(error = %e, "appending events failed; the runtime stops");
                self.failed = true;
                return Err(Rejection::FailedPrecondition(format!(
                    "log append failed: {e}"
                )));
            }
        };
        for ev in &committed {
            let now = self.config.clock.now_unix_ms();
            match self
                .log
                .with_state(|s| decide::decide(s, Input::Committed(ev), now, &limits))
            {
                Ok(next) => {
                    if !next.events.is_empty() || !next.effects.is_empty() {
                        self.backlog.push_back(next);
                    }
                }
                Err(r) => {
                    tracing::error!(rejection = %r, "decide rejected a committed event (bug)")
                }
            }
        }
        let mine = committed.len() - first_events.min(committed.len());
        Ok(committed[mine..].to_vec())
    }

    /// Whether state says the attempt behind `task_id` is still live (not
    /// ended, e.g. reported lost while its launch effect was queued).
    fn attempt_live(&self, task_id: &str) -> bool {
        kaon_core::ids::parse_task_id(task_id).is_some_and(|(run, inst, attempt)| {
            self.log.with_state(|s| {
                s.run(run)
                    .and_then(|r| r.instances.get(inst as usize))
                    .and_then(|i| i.live_attempt())
                    .is_some_and(|a| a.number == attempt)
            })
        })
    }

    /// Records `task_id`'s latest progress unless it is already recorded.
    /// Progress is rate limited per attempt (decide drops what comes too
    /// soon); what is held back is recorded when the interval has passed,
    /// so the last percent and text of a quiet step are never lost.
    async fn record_progress(&mut self, task_id: String) {
        if !self.attempt_live(&task_id) {
            // Ended, or never ours: nothing to record, nothing to keep.
            self.progress.remove(&task_id);
            return;
        }
        let Some(p) = self.progress.get(&task_id) else {
            return;
        };
        if p.recorded.as_ref() == Some(&p.latest) {
            return;
        }
        let latest = p.latest.clone();
        let input = Input::Progress(Progress {
            task_id: task_id.clone(),
            percent: latest.0,
            text: latest.1.clone(),
        });
        let recorded = matches!(self.decide_and_do(input).await, Ok(o) if !o.committed.is_empty());
        let Some(p) = self.progress.get_mut(&task_id) else {
            return;
        };
        if recorded {
            p.recorded = Some(latest);
        } else if !p.flush_armed {
            p.flush_armed = true;
            let tx = self.tx.clone();
            let wait =
                Duration::from_millis(self.config.limits.progress_interval_ms_min.max(1) as u64);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = tx.send(Msg::ProgressFlush(task_id)).await;
            });
        }
    }

    async fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::Subscribe { framework_id } => self.subscribe(framework_id),
            Effect::LaunchTask(l) => {
                // A launch effect decided in an earlier round may be stale:
                // the attempt can have ended since (lost in a
                // reconciliation, killed). Never launch a dead attempt.
                if !self.attempt_live(&l.task_id) {
                    tracing::info!(task = %l.task_id, "launch skipped: the attempt already ended");
                    return;
                }
                if self.pending.len() >= self.config.pending_launches_max {
                    tracing::error!(task = %l.task_id, limit = self.config.pending_launches_max, "pending_launches_max reached; the launch waits for a leader restart");
                    return;
                }
                self.pending.insert(l.task_id.clone(), l);
                if let Some((d, _)) = &self.driver {
                    let d = d.clone();
                    tokio::spawn(async move {
                        if let Err(e) = d.revive(Vec::new()).await {
                            tracing::debug!(error = %e, "revive failed");
                        }
                    });
                }
            }
            Effect::KillTask { task_id, agent_id } => {
                self.pending.remove(&task_id);
                if let Some((d, _)) = &self.driver {
                    let agent = (!agent_id.is_empty()).then(|| Id::new(agent_id));
                    if let Err(e) = d.kill(Id::new(task_id.clone()), agent).await {
                        tracing::warn!(task = %task_id, error = %e, "kill failed");
                    }
                }
            }
            Effect::Acknowledge {
                task_id,
                agent_id,
                uuid,
            } => {
                if let Some((d, _)) = &self.driver {
                    let mut st = TaskStatus::new(
                        Id::new(task_id.clone()),
                        kaon_mesos::types::TaskState::Running,
                    );
                    st.agent_id = Some(Id::new(agent_id));
                    st.uuid = Some(B64(uuid));
                    if let Err(e) = d.acknowledge(&st).await {
                        tracing::warn!(task = %task_id, error = %e, "acknowledge failed (Mesos will resend)");
                    }
                }
            }
            Effect::ArmTimer { key, at_ms } => {
                let tx = self.tx.clone();
                let wait =
                    Duration::from_millis((at_ms - self.config.clock.now_unix_ms()).max(0) as u64);
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = tx.send(Msg::Timer(key)).await;
                });
            }
            Effect::Reconcile { .. } => {
                // Reconciliation needs a live subscription: it runs on every
                // SUBSCRIBED (see `on_driver_event`), from state.
            }
        }
    }

    fn subscribe(&mut self, framework_id: Option<String>) {
        if let Some((d, _)) = self.driver.take() {
            d.stop();
        }
        let info = FrameworkInfo {
            user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
            name: self.config.framework_name.clone(),
            id: framework_id.map(Id::new),
            failover_timeout: Some(self.config.failover_timeout_secs),
            role: Some(self.config.role.clone()),
            ..Default::default()
        };
        let mut driver = DriverConfig::new(self.config.master_url.clone(), info);
        driver.transport = self.config.mesos_transport.clone();
        self.driver = Some(Driver::subscribe(driver));
    }

    async fn on_driver_event(&mut self, ev: DriverEvent) {
        match ev {
            DriverEvent::Subscribed { framework_id, .. } => {
                let _ = self
                    .decide_and_do(Input::Command(Command::RecordFramework {
                        framework_id: framework_id.value,
                    }))
                    .await;
                if let Some((d, _)) = &self.driver {
                    // Every task state says may be live and this leader has
                    // not launched itself (an intent committed by an earlier
                    // leader may never have reached Mesos): ask Mesos. An
                    // unknown task comes back TASK_LOST and is retried under
                    // the platform budget; then an implicit round finds tasks
                    // kaon does not know.
                    // Launches still queued in the backlog are this leader's
                    // own too: reconciling them would report them lost.
                    let queued: std::collections::BTreeSet<String> = self
                        .backlog
                        .iter()
                        .flat_map(|d| &d.effects)
                        .filter_map(|e| match e {
                            Effect::LaunchTask(l) => Some(l.task_id.clone()),
                            _ => None,
                        })
                        .collect();
                    let pending = &self.pending;
                    let known: Vec<(Id, Option<Id>)> = self.log.with_state(|s| {
                        kaon_core::state::live_tasks(s)
                            .into_iter()
                            .map(|(rid, i, a)| {
                                (s.runs[&rid].task_id(i, a.number), a.agent_id.clone())
                            })
                            .filter(|(t, _)| !pending.contains_key(t) && !queued.contains(t))
                            .map(|(t, a)| (Id::new(t), (!a.is_empty()).then(|| Id::new(a))))
                            .collect()
                    });
                    if let Err(e) = d.reconcile_round(known).await {
                        tracing::warn!(error = %e, "reconciliation failed; Mesos will resend unacknowledged updates");
                    }
                    if !self.pending.is_empty() {
                        let _ = d.revive(Vec::new()).await;
                    }
                }
            }
            DriverEvent::Offers(offers) => self.on_offers(offers).await,
            DriverEvent::Update(status) => {
                let update = to_task_update(&status);
                self.pending.remove(&update.task_id);
                if status.state.is_terminal() {
                    self.progress.remove(&update.task_id);
                }
                let _ = self.decide_and_do(Input::TaskUpdate(update)).await;
            }
            DriverEvent::Message { data, .. } => {
                let Ok(msg) = serde_json::from_slice::<ExecutorMessage>(&data) else {
                    return;
                };
                let task_id = match msg {
                    ExecutorMessage::Heartbeat { .. } => return, // liveness only, in memory
                    ExecutorMessage::Progress { task_id, percent } => {
                        let p = percent.clamp(0.0, 100.0) as u32;
                        self.progress.entry(task_id.clone()).or_default().latest.0 = p;
                        task_id
                    }
                    ExecutorMessage::Status { task_id, text } => {
                        self.progress.entry(task_id.clone()).or_default().latest.1 = text;
                        task_id
                    }
                };
                self.record_progress(task_id).await;
            }
            DriverEvent::Failure(f) => tracing::warn!(failure = ?f, "Mesos reported a failure"),
            DriverEvent::Error(e) => {
                // E.g. "framework failed over": another node subscribed with
                // our framework id. Stop; the supervisor starts a fresh
                // runtime (and subscription) if this node still leads.
                tracing::error!(error = %e, "Mesos ended our subscription; the runtime stops");
                self.driver = None;
                self.failed = true;
            }
            DriverEvent::Disconnected { reason } => {
                tracing::warn!(%reason, "Mesos stream broke; the driver re-subscribes")
            }
            DriverEvent::Rescind(_) => {}
        }
    }

    async fn on_offers(&mut self, offers: Vec<Offer>) {
        let Some((driver, _)) = &self.driver else {
            return;
        };
        let driver = driver.clone();
        let views: Vec<OfferView> = offers.iter().map(OfferView::from_offer).collect();
        let requests: Vec<TaskRequest> = self
            .pending
            .values()
            .map(|l| {
                let r = l.resources.unwrap_or_default();
                let mut res = Resources::default();
                res.scalars
                    .insert("cpus".into(), r.cpus + self.config.executor_cpus);
                res.scalars
                    .insert("mem".into(), r.mem_mb + self.config.executor_mem_mb);
                if r.disk_mb > 0.0 {
                    res.scalars.insert("disk".into(), r.disk_mb);
                }
                if r.gpus > 0 {
                    res.scalars.insert("gpus".into(), f64::from(r.gpus));
                }
                TaskRequest {
                    id: l.task_id.clone(),
                    resources: res,
                    ports: 0,
                    constraints: l
                        .constraints
                        .iter()
                        .filter_map(|c| match &c.op {
                            Some(pb::constraint::Op::Equals(v)) => {
                                Some(matching::Constraint::AttributeEquals {
                                    name: c.attribute.clone(),
                                    value: v.clone(),
                                })
                            }
                            // `like` needs regex matching in the matcher (not yet there).
                            _ => None,
                        })
                        .collect(),
                }
            })
            .collect();
        let plan = matching::match_offers(&requests, &views);
        for (offer_id, placements) in plan.launches {
            let mut infos = Vec::new();
            for p in placements {
                let Some(l) = self.pending.remove(&p.task_id) else {
                    continue;
                };
                infos.push(self.task_info(&l, p.agent_id.clone()));
            }
            if let Err(e) = driver
                .accept(vec![offer_id], vec![Operation::launch(infos)], Some(1.0))
                .await
            {
                tracing::warn!(error = %e, "accept failed; Mesos will report the tasks lost");
            }
        }
        if !plan.decline.is_empty() {
            let refuse = if self.pending.is_empty() { 5.0 } else { 1.0 };
            let _ = driver.decline(plan.decline, Some(refuse)).await;
        }
        if self.pending.is_empty() {
            let _ = driver.suppress(Vec::new()).await;
        }
    }

    fn task_info(&self, l: &pb::TaskLaunchRequested, agent_id: Id) -> TaskInfo {
        let r = l.resources.unwrap_or_default();
        let mut resources = vec![
            Resource::scalar("cpus", r.cpus),
            Resource::scalar("mem", r.mem_mb),
        ];
        if r.disk_mb > 0.0 {
            resources.push(Resource::scalar("disk", r.disk_mb));
        }
        if r.gpus > 0 {
            resources.push(Resource::scalar("gpus", f64::from(r.gpus)));
        }
        let spec = StepSpec {
            argv: if l.shell { Vec::new() } else { l.argv.clone() },
            shell: if l.shell {
                l.argv.first().cloned()
            } else {
                None
            },
            env: l
                .env
                .iter()
                .map(|e| (e.name.clone(), e.value.clone()))
                .collect(),
            ..StepSpec::default()
        };
        let executor = ExecutorInfo {
            kind: Some(ExecutorType::Custom),
            executor_id: Id::new(executor_id(&l.task_id)),
            framework_id: None,
            command: Some(CommandInfo {
                shell: Some(false),
                value: Some(self.config.executor_command.clone()),
                arguments: self.config.executor_args.clone(),
                ..Default::default()
            }),
            resources: vec![
                Resource::scalar("cpus", self.config.executor_cpus),
                Resource::scalar("mem", self.config.executor_mem_mb),
            ],
            name: Some("kaon executor".into()),
            data: None,
            shutdown_grace_period: None,
        };
        TaskInfo {
            name: l.step_path.clone(),
            task_id: Id::new(l.task_id.clone()),
            agent_id,
            resources,
            executor: Some(executor),
            command: None,
            kill_policy: None,
            data: Some(B64(serde_json::to_vec(&spec).expect("step spec serializes"))),
            labels: None,
        }
    }
}

/// A Mesos status as the core's input (the executor's result in `data`).
pub fn to_task_update(s: &TaskStatus) -> TaskUpdate {
    let result: Option<StepResult> = s
        .data
        .as_ref()
        .and_then(|d| serde_json::from_slice(&d.0).ok());
    let state = TaskState::from_mesos(&s.state.name()).unwrap_or(TaskState::Unknown);
    let mut message = s.message.clone().unwrap_or_default();
    // The core classifies: an executor-reported failure (no reason) is the
    // step's own (user budget); agent/master reasons are the platform's.
    let reason = s.reason.clone().unwrap_or_default();
    if let Some(e) = result.as_ref().and_then(|r| r.error.as_ref())
        && message.is_empty()
    {
        message = e.clone();
    }
    TaskUpdate {
        task_id: s.task_id.value.clone(),
        state,
        reason,
        message,
        source: s
            .source
            .map(|src| {
                serde_json::to_value(src)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .unwrap_or_default(),
        agent_id: s
            .agent_id
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default(),
        uuid: s.uuid.as_ref().map(|u| u.0.clone()).unwrap_or_default(),
        exit_code: result.as_ref().and_then(|r| r.exit_code),
        outputs_json: result.and_then(|r| r.outputs).map(|o| o.to_string()),
    }
}
