//! The leader's runtime: the thin I/O shell around the pure
//! [`kaon_core::leader::Leader`].
//!
//! It holds no policy: it hands client commands, Mesos events and the
//! passing of time to the leader, performs the leader's actions against
//! Mesos in order, appends the leader's batches to the log and reports
//! them committed. What is launched, reconciled, batched, retried, and
//! where a task runs, is decided in the core, where the simulations reach
//! it. This module only encodes Mesos' JSON and moves bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kaon_core::Limits;
use kaon_core::decide::{Command, Rejection, TaskUpdate};
use kaon_core::events::{Event, TaskState};
use kaon_core::leader::{
    Action, CommandId, ExecutorNews, Input, Leader, LeaderConfig, MesosEvent, TaskSpec,
};
use kaon_mesos::driver::{Driver, DriverConfig, DriverEvent, DriverHandle};
use kaon_mesos::executor::{ExecutorMessage, StepResult, StepSpec};
use kaon_mesos::resources::Resources;
use kaon_mesos::types::scheduler::Operation;
use kaon_mesos::types::{
    B64, CommandInfo, ExecutorInfo, ExecutorType, FrameworkInfo, Id, Offer, Resource, TaskInfo,
    TaskStatus,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

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
    /// An executor (one per agent, running many steps) with no step for
    /// this long exits, ms.
    pub executor_idle_ms: i64,
    /// Where executors read steps' secrets on the agents (`--secrets-dir`;
    /// "" = none).
    pub secrets_dir: String,
    /// The cluster's signing key (`--signing-key`): the leader signs the
    /// chain head every `limits.sign_every_ms` with it.
    pub signing_key: Option<Arc<crate::signing::SigningKey>>,
    /// Framework credentials for the Mesos master (principal, secret).
    pub mesos_credential: Option<(String, String)>,
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
    /// `LeaderConfig::executor_silence_ms_max`: a running task whose
    /// executor sent nothing for this long is killed and retried as lost
    /// (default 60 s: six of kaon's executor heartbeats); None: off.
    pub executor_silence_ms_max: Option<i64>,
    /// Where the runtime reports what it does (offers, launches, the
    /// launch queue, append latency); None: nowhere.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
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
            executor_idle_ms: 60_000,
            secrets_dir: String::new(),
            signing_key: None,
            mesos_credential: None,
            limits: Limits::default(),
            pending_launches_max: 100_000,
            api_addr: None,
            clock: Arc::new(kaon_log::SystemClock),
            mesos_transport: Default::default(),
            executor_silence_ms_max: Some(60_000),
            metrics: None,
        }
    }
}

pub use kaon_core::leader::CommandOutcome;

/// Where a command's answer goes.
type Reply = oneshot::Sender<Result<CommandOutcome, Rejection>>;

enum Msg {
    /// A client command, its reply channel, and the span of the API call
    /// it came from (the trace of a run starts there).
    Command(Command, Reply, tracing::Span),
    Shutdown(oneshot::Sender<()>),
}

/// Talks to a running runtime. Cheap to clone.
#[derive(Clone)]
pub struct RuntimeHandle {
    tx: mpsc::Sender<Msg>,
    task: Arc<tokio::task::AbortHandle>,
}

impl RuntimeHandle {
    /// Sends a client command; returns the leader's answer once its events
    /// are committed (for a submit: `existing_run` or the new run's event).
    pub async fn command(&self, cmd: Command) -> anyhow::Result<Result<CommandOutcome, Rejection>> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Command(cmd, tx, tracing::Span::current()))
            .await
            .map_err(|_| anyhow::anyhow!("runtime stopped"))?;
        Ok(rx.await?)
    }

    /// True once the runtime has stopped (shut down, or its log refused a
    /// write, e.g. because this node lost leadership).
    pub fn is_stopped(&self) -> bool {
        self.tx.is_closed()
    }

    /// Stops the runtime (and its Mesos subscription; Mesos keeps the tasks
    /// running for the failover timeout). Returns when it has stopped, or
    /// after `RUNTIME_STOP_WAIT`, when it is aborted (a Mesos call that
    /// hangs must not keep a deposed leader acting).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        let graceful = async {
            if self.tx.send(Msg::Shutdown(tx)).await.is_ok() {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(RUNTIME_STOP_WAIT, graceful)
            .await
            .is_err()
        {
            tracing::warn!(wait = ?RUNTIME_STOP_WAIT, "the runtime did not stop in time: aborted");
        }
        self.abort();
    }

    /// Stops the runtime at once, wherever it is (as a crash would): its
    /// task is dropped with everything it held.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// How long [`RuntimeHandle::shutdown`] waits for the runtime to stop by
/// itself before aborting it.
const RUNTIME_STOP_WAIT: Duration = Duration::from_secs(2);

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
/// is shut down (closing its Mesos subscription) as soon as it is not, or
/// when the node shuts down (the supervisor then ends too).
pub fn supervise(log: Arc<crate::log::RaftLog>, config: RuntimeConfig) -> RuntimeSlot {
    supervise_task(log, config).0
}

/// [`supervise`], also returning the supervisor's task (a simulation
/// aborts it, and the runtime in the slot, to crash a node).
pub fn supervise_task(
    log: Arc<crate::log::RaftLog>,
    config: RuntimeConfig,
) -> (RuntimeSlot, tokio::task::JoinHandle<()>) {
    let slot: RuntimeSlot = Arc::new(tokio::sync::RwLock::new(None));
    let out = slot.clone();
    let task = tokio::spawn(async move {
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
            if !metrics.changed(Duration::from_millis(100)).await {
                // The node shut down: so does its runtime, and this loop.
                if let Some(h) = slot.write().await.take() {
                    h.shutdown().await;
                }
                return;
            }
        }
    });
    (out, task)
}

/// Starts the runtime on the current tokio runtime.
pub fn start<L: EventLog>(log: Arc<L>, config: RuntimeConfig) -> RuntimeHandle {
    let (tx, rx) = mpsc::channel(1024);
    let (node, term) = log
        .cluster_status()
        .map(|c| (c.id, c.term))
        .unwrap_or((1, 0));
    let span = tracing::info_span!("leader", node, term);
    let task = tokio::spawn(run(log, config, rx).instrument(span));
    RuntimeHandle {
        tx,
        task: Arc::new(task.abort_handle()),
    }
}

/// The core's view of this runtime's configuration.
fn leader_config(c: &RuntimeConfig, node_id: u64, term: u64) -> LeaderConfig {
    let mut l = LeaderConfig::new(node_id, term, c.executor_command.clone());
    l.api_addr = c.api_addr.clone();
    l.limits = c.limits.clone();
    l.executor.args = c.executor_args.clone();
    l.executor.cpus = c.executor_cpus;
    l.executor.mem_mb = c.executor_mem_mb;
    l.executor.idle_ms = c.executor_idle_ms;
    l.executor.secrets_dir = c.secrets_dir.clone();
    l.pending_launches_max = c.pending_launches_max;
    l.executor_silence_ms_max = c.executor_silence_ms_max;
    l
}

/// The thin loop: moves inputs into the pure [`Leader`] and its [`Ready`]
/// out to Mesos and the log (the contract is on `kaon_core::leader`).
/// Actions are performed in order as they come; one batch is appended at
/// a time, while inputs keep arriving.
async fn run<L: EventLog>(log: Arc<L>, config: RuntimeConfig, mut rx: mpsc::Receiver<Msg>) {
    let (node_id, term) = log
        .cluster_status()
        .map(|c| (c.id, c.term))
        .unwrap_or((1, 0));
    let clock = config.clock.clone();
    let metrics = config.metrics.clone();
    let signing_key = config.signing_key.clone();
    let mut leader = Leader::new(leader_config(&config, node_id, term));
    let mut mesos = Mesos {
        config,
        driver: None,
    };
    let mut waiting: BTreeMap<CommandId, Reply> = BTreeMap::new();
    let mut next_id: CommandId = 1;
    let mut append: Option<tokio::task::JoinHandle<anyhow::Result<Vec<Event>>>> = None;
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    let mut spans = Spans::default();
    let mut cluster_schema = 0u32;
    loop {
        let now = clock.now_unix_ms();
        // What every voter applies (a rolling upgrade may leave an older
        // kaon among them): the leader writes no newer event kind.
        if let Some(node) = log.raft_node() {
            let schema = node.cluster_event_schema();
            if schema != cluster_schema {
                if schema < kaon_core::events::EVENT_SCHEMA {
                    tracing::info!(
                        schema,
                        mine = kaon_core::events::EVENT_SCHEMA,
                        "a member applies only event schema {schema} (an older kaon, or one not heard \
                         from yet): newer event kinds wait (run retention is held) until every \
                         member is upgraded"
                    );
                } else if cluster_schema != 0 {
                    tracing::info!(schema, "every member applies this kaon's event schema");
                }
                cluster_schema = schema;
            }
            leader.set_event_schema_max(schema);
        }
        let ready = log.with_state(|s| {
            let ready = leader.ready(s, now);
            if let Some(m) = &metrics {
                m.leader_stats(&leader.stats(s, now));
            }
            ready
        });
        for (id, reply) in ready.replies {
            spans.replied(id, &reply);
            if let Some(tx) = waiting.remove(&id) {
                let _ = tx.send(reply);
            }
        }
        for action in ready.actions {
            // Not a Mesos call: the core asks for a signature of a chain
            // head; it comes back as a command (and so an event).
            if let Action::SignChainHead { index, chain_head } = action {
                if let Some(key) = &signing_key {
                    let command = Command::RecordChainSignature {
                        index,
                        chain_head: chain_head.to_vec(),
                        public_key: key.public_key().to_vec(),
                        signature: key.sign(index, &chain_head).to_vec(),
                    };
                    let id = next_id;
                    next_id += 1;
                    log.with_state(|s| leader.step(s, Input::Command { id, command }, now));
                }
                continue;
            }
            if let Some(m) = &metrics {
                m.action(&action);
            }
            let span = spans.action(&action);
            mesos.perform(action).instrument(span).await;
        }
        if let Some(why) = ready.stop {
            tracing::error!(%why, "the leader's runtime stops");
            break;
        }
        if shutdown.is_some() {
            break;
        }
        if !ready.propose.is_empty() {
            let span = spans.append(&ready.propose);
            let (log, bodies, metrics) = (log.clone(), ready.propose, metrics.clone());
            append = Some(tokio::spawn(
                async move {
                    let started = std::time::Instant::now();
                    let committed = log.append(bodies, now).await;
                    if let (Some(m), Ok(events)) = (&metrics, &committed) {
                        m.appended(events.len(), started.elapsed());
                    }
                    if let Ok(events) = &committed
                        && let Some(e) = events.first()
                    {
                        tracing::Span::current().record("first_index", e.index);
                    }
                    committed
                }
                .instrument(span),
            ));
        }
        let wake = ready
            .wake_at_ms
            .map(|at| Duration::from_millis(at.saturating_sub(now).max(0) as u64));
        tokio::select! {
            biased;
            done = async { append.as_mut().expect("guarded").await }, if append.is_some() => {
                append = None;
                match done {
                    Ok(Ok(committed)) => {
                        let now = clock.now_unix_ms();
                        log.with_state(|s| {
                            log_lifecycle(s, &committed);
                            leader.advance(s, &committed, now)
                        });
                        spans.committed(&committed);
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "appending events failed; the runtime stops");
                        leader.abort(&e.to_string());
                    }
                    Err(e) => leader.abort(&format!("the append task failed: {e}")),
                }
            }
            msg = rx.recv() => match msg {
                Some(Msg::Command(command, reply, span)) => {
                    let id = next_id;
                    next_id += 1;
                    waiting.insert(id, reply);
                    let now = clock.now_unix_ms();
                    let decide = tracing::info_span!(parent: &span, "decide", command = command_name(&command));
                    decide.in_scope(|| {
                        log.with_state(|s| leader.step(s, Input::Command { id, command }, now))
                    });
                    spans.command(id, span);
                }
                Some(Msg::Shutdown(done)) => shutdown = Some(done),
                None => break,
            },
            ev = mesos.next_event() => {
                let now = clock.now_unix_ms();
                if let Some(ev) = ev {
                    if let Some(m) = &metrics {
                        match &ev {
                            MesosEvent::Offers(o) => m.offers_received(o.len()),
                            MesosEvent::Rescind { .. } => m.offer_rescinded(),
                            MesosEvent::Update(_) => m.task_update(),
                            _ => {}
                        }
                    }
                    log.with_state(|s| leader.step(s, Input::Mesos(ev), now));
                }
            }
            _ = tokio::time::sleep(wake.unwrap_or(Duration::MAX)), if wake.is_some() => {}
        }
    }
    // Stop Mesos first: an answer to a waiting command must not suggest
    // the leader still acts.
    if let Some((d, _)) = &mesos.driver {
        d.stop();
    }
    for (_, tx) in waiting {
        let _ = tx.send(Err(Rejection::Unavailable(
            "the leader's runtime stopped; retry".into(),
        )));
    }
    if let Some(m) = &metrics {
        m.leader_stats(&kaon_core::leader::LeaderStats::default());
    }
    if let Some(done) = shutdown {
        let _ = done.send(());
    }
    tracing::info!("the leader's runtime stopped");
}

/// The command's kind, for its `decide` span.
fn command_name(c: &Command) -> &'static str {
    match c {
        Command::SubmitRun { .. } => "submit_run",
        Command::RegisterWorkflow { .. } => "register_workflow",
        Command::CancelRun { .. } => "cancel_run",
        Command::RetryRun { .. } => "retry_run",
        Command::SetSchedulePaused { .. } => "set_schedule_paused",
        Command::By { command, .. } => command_name(command),
        #[allow(unreachable_patterns)]
        _ => "command",
    }
}

/// Tracing spans that follow a run through the leader (issue 11: traces):
/// the API call that submitted it is the root; `decide`, `raft.append`
/// and `mesos.launch` / `mesos.kill` spans of that run are its children,
/// each with the run, step and attempt ids, so a trace exported with
/// `--otlp-endpoint` shows one run end to end. Bounded: a command's span
/// lives until it is answered, a run's until it finishes (or this leader
/// stops); runs submitted under an earlier leader get root spans that
/// carry the same ids.
#[derive(Default)]
struct Spans {
    commands: BTreeMap<CommandId, tracing::Span>,
    runs: BTreeMap<u64, tracing::Span>,
}

impl Spans {
    fn command(&mut self, id: CommandId, span: tracing::Span) {
        self.commands.insert(id, span);
    }

    /// A command was answered: a run it started keeps its span.
    fn replied(&mut self, id: CommandId, reply: &kaon_core::leader::Reply) {
        let Some(span) = self.commands.remove(&id) else {
            return;
        };
        if let Ok(out) = reply {
            for e in &out.committed {
                if let Some(kaon_core::events::Body::RunSubmitted(_)) = &e.body {
                    span.record("run", e.index);
                    self.runs.insert(e.index, span.clone());
                }
            }
        }
    }

    /// Committed events: a finished run's span is let go.
    fn committed(&mut self, events: &[Event]) {
        for e in events {
            if let Some(kaon_core::events::Body::RunFinished(f)) = &e.body
                && let Some(span) = self.runs.remove(&f.run_id)
            {
                tracing::info!(parent: &span, run = f.run_id, outcome = f.outcome, "run finished");
            }
        }
    }

    /// The parent of work for `run`: its span if this leader has one.
    fn parent(&self, run: Option<u64>) -> Option<tracing::Id> {
        run.and_then(|r| self.runs.get(&r)).and_then(|s| s.id())
    }

    /// The span of one append: a child of the oldest command waiting for
    /// its answer (the batch holds it), else of the first run the events
    /// are about.
    fn append(&self, bodies: &[kaon_core::events::Body]) -> tracing::Span {
        let run = bodies.iter().find_map(kaon_core::events::body_run);
        let parent = match self.commands.values().next() {
            Some(c) => c.id(),
            None => self.parent(run),
        };
        let span = tracing::info_span!(
            parent: parent,
            "raft.append",
            events = bodies.len(),
            run = run,
            first_index = tracing::field::Empty
        );
        for c in self.commands.values().skip(1) {
            span.follows_from(c);
        }
        span
    }

    /// The span of one Mesos call, under the run it is for.
    fn action(&self, action: &Action) -> tracing::Span {
        let of = |task_id: &str| kaon_core::ids::parse_task_id(task_id);
        match action {
            Action::Launch { tasks, .. } => {
                let first = tasks.first().and_then(|t| of(&t.task_id).map(|p| (t, p)));
                let (run, step, attempt) = match first {
                    Some((t, (run, _, attempt))) => {
                        (Some(run), Some(t.name.as_str()), Some(attempt))
                    }
                    None => (None, None, None),
                };
                let span = tracing::info_span!(
                    parent: self.parent(run),
                    "mesos.launch",
                    tasks = tasks.len(),
                    run = run,
                    step = step,
                    attempt = attempt,
                    task = first.map(|(t, _)| t.task_id.as_str()),
                );
                for t in tasks.iter().skip(1) {
                    if let Some(s) = of(&t.task_id).and_then(|(r, _, _)| self.runs.get(&r)) {
                        span.follows_from(s);
                    }
                }
                span
            }
            Action::Kill { task_id, .. } => {
                let parsed = of(task_id);
                tracing::info_span!(
                    parent: self.parent(parsed.map(|p| p.0)),
                    "mesos.kill",
                    run = parsed.map(|p| p.0),
                    attempt = parsed.map(|p| p.2),
                    task = %task_id,
                )
            }
            _ => tracing::Span::none(),
        }
    }
}

/// The Mesos side of the shell: the driver, and the encoding of the
/// leader's actions and of Mesos' events (no decisions here).
struct Mesos {
    config: RuntimeConfig,
    driver: Option<(DriverHandle, mpsc::Receiver<DriverEvent>)>,
}

impl Mesos {
    /// The next event from Mesos, decoded for the leader; pending while
    /// not subscribed. `None` for events the leader does not need.
    async fn next_event(&mut self) -> Option<MesosEvent> {
        let Some((_, events)) = &mut self.driver else {
            return std::future::pending().await;
        };
        let Some(ev) = events.recv().await else {
            tracing::warn!("the Mesos driver ended");
            self.driver = None;
            return Some(MesosEvent::DriverStopped);
        };
        match ev {
            DriverEvent::Subscribed { framework_id, .. } => Some(MesosEvent::Subscribed {
                framework_id: framework_id.value,
            }),
            DriverEvent::Offers(offers) => {
                Some(MesosEvent::Offers(offers.iter().map(offer_view).collect()))
            }
            DriverEvent::Update(status) => {
                let u = to_task_update(&status);
                tracing::debug!(task = %u.task_id, state = ?u.state, reason = %u.reason, uuid = !u.uuid.is_empty(), "Mesos update");
                Some(MesosEvent::Update(u))
            }
            DriverEvent::Message { data, .. } => {
                match serde_json::from_slice::<ExecutorMessage>(&data) {
                    Ok(m) => Some(MesosEvent::Message(match m {
                        ExecutorMessage::Heartbeat { task_id } => {
                            ExecutorNews::Heartbeat { task_id }
                        }
                        ExecutorMessage::Progress { task_id, percent } => {
                            ExecutorNews::Progress { task_id, percent }
                        }
                        ExecutorMessage::Status { task_id, text } => {
                            ExecutorNews::Status { task_id, text }
                        }
                    })),
                    Err(e) => {
                        tracing::debug!(error = %e, "an executor message that is not kaon's ignored");
                        None
                    }
                }
            }
            DriverEvent::Failure(f) => {
                // An executor that exits 0 is Mesos' FAILURE event too:
                // no warning for a step that succeeded.
                let executor = f.executor_id.as_ref().map(|e| e.value.as_str());
                match f.status {
                    Some(0) => tracing::debug!(executor, "an executor exited cleanly"),
                    status => {
                        tracing::warn!(executor, ?status, agent = ?f.agent_id.as_ref().map(|a| &a.value), "an executor or agent failed")
                    }
                }
                None
            }
            DriverEvent::Error(message) => {
                self.driver = None;
                Some(MesosEvent::SubscriptionEnded { message })
            }
            DriverEvent::Disconnected { reason } => {
                tracing::warn!(%reason, "Mesos stream broke; the driver re-subscribes");
                Some(MesosEvent::Disconnected)
            }
            DriverEvent::Rescind(offer_id) => Some(MesosEvent::Rescind {
                offer_id: offer_id.value,
            }),
        }
    }

    /// Makes one call to Mesos. A failed call is logged: Mesos resends
    /// what was not acknowledged, reconciliation finds launches that did
    /// not arrive, and the leader re-declines or re-kills as it goes.
    async fn perform(&mut self, action: Action) {
        tracing::debug!(?action, "Mesos call");
        if let Action::Subscribe { framework_id } = action {
            return self.subscribe(framework_id);
        }
        let Some((d, _)) = &self.driver else {
            tracing::debug!(?action, "no Mesos subscription: call skipped");
            return;
        };
        let result = match &action {
            Action::Subscribe { .. } => unreachable!("handled above"),
            Action::SignChainHead { .. } => unreachable!("the runtime signs; not a Mesos call"),
            Action::Launch { offer_ids, tasks } => {
                // Six heartbeats fit in the leader's silence limit.
                let heartbeat = self
                    .config
                    .executor_silence_ms_max
                    .map(|ms| (ms as f64 / 6_000.0).clamp(0.1, 10.0));
                let infos = tasks.iter().map(|t| task_info(t, heartbeat)).collect();
                // What the launch leaves of the offers comes back at once
                // as a new offer, which the leader holds for the next one.
                d.accept(
                    offer_ids.iter().map(|o| Id::new(o.clone())).collect(),
                    vec![Operation::launch(infos)],
                    Some(0.0),
                )
                .await
            }
            Action::Decline {
                offer_ids,
                refuse_seconds,
            } => {
                d.decline(
                    offer_ids.iter().map(|o| Id::new(o.clone())).collect(),
                    Some(*refuse_seconds),
                )
                .await
            }
            Action::Revive => d.revive(Vec::new()).await,
            Action::Suppress => d.suppress(Vec::new()).await,
            Action::Kill { task_id, agent_id } => {
                let agent = (!agent_id.is_empty()).then(|| Id::new(agent_id.clone()));
                d.kill(Id::new(task_id.clone()), agent).await
            }
            Action::ShutdownExecutor {
                executor_id,
                agent_id,
            } => {
                d.shutdown(Id::new(executor_id.clone()), Id::new(agent_id.clone()))
                    .await
            }
            Action::Acknowledge {
                task_id,
                agent_id,
                uuid,
            } => {
                let mut st = TaskStatus::new(
                    Id::new(task_id.clone()),
                    kaon_mesos::types::TaskState::Running,
                );
                st.agent_id = Some(Id::new(agent_id.clone()));
                st.uuid = Some(B64(uuid.clone()));
                d.acknowledge(&st).await
            }
            Action::Reconcile { tasks } => {
                let known = tasks
                    .iter()
                    .map(|(t, a)| {
                        (
                            Id::new(t.clone()),
                            (!a.is_empty()).then(|| Id::new(a.clone())),
                        )
                    })
                    .collect();
                d.reconcile_round(known).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(?action, error = %e, "a Mesos call failed");
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
            principal: self
                .config
                .mesos_credential
                .as_ref()
                .map(|(p, _)| p.clone()),
            ..Default::default()
        };
        let mut driver = DriverConfig::new(self.config.master_url.clone(), info);
        driver.transport = self.config.mesos_transport.clone();
        driver.credential = self.config.mesos_credential.clone();
        self.driver = Some(Driver::subscribe(driver));
    }
}

/// An offer as placement sees it.
fn offer_view(o: &Offer) -> kaon_core::placement::Offer {
    let r = Resources::from_mesos(&o.resources);
    kaon_core::placement::Offer {
        id: o.id.value.clone(),
        agent_id: o.agent_id.value.clone(),
        hostname: o.hostname.clone(),
        scalars: r.scalars,
        ports: r.ranges.get("ports").cloned().unwrap_or_default(),
        attributes: o
            .attributes
            .iter()
            .map(|a| (a.name.clone(), a.value_text()))
            .collect(),
    }
}

/// The Mesos `TaskInfo` of a task the leader placed: a custom-executor
/// task whose `data` is the step for kaon's executor.
fn task_info(t: &TaskSpec, heartbeat_seconds: Option<f64>) -> TaskInfo {
    let resource = |name: &str| t.resources.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let spec = StepSpec {
        argv: t.step.argv.clone(),
        shell: t.step.shell.clone(),
        env: t.step.env.iter().cloned().collect(),
        secrets: t
            .step
            .secrets
            .iter()
            .map(|(env, name)| kaon_mesos::executor::SecretRef {
                name: name.clone(),
                env: env.clone(),
            })
            .collect(),
        // `kind: container`: the executor runs it in its image (it was
        // silently run on the host before, issue 10 section 3).
        container: (!t.container_image.is_empty()).then(|| kaon_mesos::executor::ContainerSpec {
            image: t.container_image.clone(),
            cpus: resource("cpus"),
            mem_mb: resource("mem"),
        }),
        heartbeat_seconds,
        // The executor watches a Spark step's application.
        kind: (t.kind == kaon_mesos::executor::KIND_SPARK).then(|| t.kind.clone()),
        ..StepSpec::default()
    };
    let executor = ExecutorInfo {
        kind: Some(ExecutorType::Custom),
        executor_id: Id::new(t.executor_id.clone()),
        framework_id: None,
        command: Some(CommandInfo {
            shell: Some(false),
            value: Some(t.executor.command.clone()),
            arguments: t.executor.args.clone(),
            environment: Some(kaon_mesos::types::Environment {
                variables: [(
                    kaon_mesos::executor::ENV_IDLE_MS,
                    t.executor.idle_ms.to_string(),
                )]
                .into_iter()
                .chain((!t.executor.secrets_dir.is_empty()).then(|| {
                    (
                        kaon_mesos::executor::ENV_SECRETS_DIR,
                        t.executor.secrets_dir.clone(),
                    )
                }))
                .map(|(name, value)| kaon_mesos::types::EnvVar {
                    name: name.into(),
                    value: Some(value),
                })
                .collect(),
            }),
            ..Default::default()
        }),
        resources: vec![
            Resource::scalar("cpus", t.executor.cpus),
            Resource::scalar("mem", t.executor.mem_mb),
        ],
        name: Some("kaon executor".into()),
        data: None,
        shutdown_grace_period: None,
    };
    TaskInfo {
        name: t.name.clone(),
        task_id: Id::new(t.task_id.clone()),
        agent_id: Id::new(t.agent_id.clone()),
        resources: t
            .resources
            .iter()
            .map(|(n, v)| Resource::scalar(n, *v))
            .collect(),
        executor: Some(executor),
        command: None,
        kill_policy: None,
        data: Some(B64(serde_json::to_vec(&spec).expect("step spec serializes"))),
        labels: None,
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
    let mut reason = s.reason.clone().unwrap_or_default();
    if reason.is_empty()
        && result
            .as_ref()
            .is_some_and(|r| r.reason == kaon_mesos::executor::REASON_PLATFORM_FAILURE)
    {
        // The executor's word that the step failed through no fault of its
        // own (Mesos' reasons have none for it): the core classifies it.
        reason = kaon_core::state::REASON_KAON_PLATFORM_FAILURE.into();
    }
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
        executor_id: s
            .executor_id
            .as_ref()
            .map(|e| e.value.clone())
            .unwrap_or_default(),
        outputs_json: result.and_then(|r| r.outputs).map(|o| o.to_string()),
    }
}

/// One log line per run and step lifecycle event the leader committed,
/// with the run id, step path and attempt as fields (`--log-format json`
/// makes them searchable). Progress and bookkeeping events are not logged.
fn log_lifecycle(state: &kaon_core::State, committed: &[kaon_core::events::Event]) {
    use kaon_core::events::{Body, pb};
    let path = |run: u64, inst: u32| {
        state
            .run(run)
            .and_then(|r| r.instances.get(inst as usize))
            .map(|i| i.path.clone())
            .unwrap_or_default()
    };
    for e in committed {
        match &e.body {
            Some(Body::RunSubmitted(r)) => tracing::info!(
                run = e.index,
                workflow = %r.workflow,
                version = r.version,
                "run submitted"
            ),
            Some(Body::TaskLaunchRequested(l)) => tracing::info!(
                run = l.run_id,
                step = %l.step_path,
                attempt = l.attempt,
                task = %l.task_id,
                "step attempt launching"
            ),
            Some(Body::TaskStatusObserved(t)) => {
                let state_name = pb::TaskState::try_from(t.state)
                    .map(|s| s.as_str_name())
                    .unwrap_or("TASK_UNKNOWN");
                let terminal = !matches!(
                    pb::TaskState::try_from(t.state),
                    Ok(pb::TaskState::Staging
                        | pb::TaskState::Starting
                        | pb::TaskState::Running
                        | pb::TaskState::Killing)
                );
                if terminal {
                    tracing::info!(
                        run = t.run_id,
                        step = %path(t.run_id, t.instance),
                        attempt = t.attempt,
                        state = state_name,
                        exit_code = t.exit_code,
                        reason = %t.reason,
                        "step attempt ended"
                    );
                }
            }
            Some(Body::RetryScheduled(r)) => tracing::info!(
                run = r.run_id,
                step = %path(r.run_id, r.instance),
                next_attempt = r.next_attempt,
                "step retry scheduled"
            ),
            Some(Body::RunFinished(r)) => tracing::info!(
                run = r.run_id,
                outcome = pb::RunOutcome::try_from(r.outcome)
                    .map(|o| o.as_str_name())
                    .unwrap_or("?"),
                message = %r.message,
                "run finished"
            ),
            _ => {}
        }
    }
}
