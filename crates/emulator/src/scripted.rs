//! A scripted, in-process stand-in for `kaon-executor`, for simulations.
//!
//! [`ScriptedLauncher`] is a [`Launcher`]: when an emulated agent launches a
//! custom executor, it starts a tokio task instead of a process. That task
//! speaks the real v1 executor HTTP API to its agent through the agent's
//! in-process router (the same handlers a real executor reaches over TCP):
//! SUBSCRIBE (a RecordIO stream), TASK_RUNNING on LAUNCH, framework MESSAGEs
//! with [`ExecutorMessage`] progress and heartbeats, and a terminal UPDATE
//! whose `data` is the [`StepResult`] `kaon-executor` would send; it honours
//! KILL and SHUTDOWN, waits for its updates to be ACKNOWLEDGED and then
//! exits with status 0. What each task does is a [`Script`], chosen per
//! task by a caller-supplied function of its `TaskInfo` (whose `data` holds
//! the step's [`StepSpec`]). Everything runs on tokio time (paused in a
//! simulation), draws its uuids from the emulator's id source and its
//! timestamps from the emulator's clock, and uses no socket, thread or file.
//!
//! Command tasks (tasks without an executor) launched through it end with
//! an exit status that follows their script (`Finish` → 0, `Fail` → its
//! code, ...); the agent reports them as it reports real commands.
//!
//! Faults: a script can end in [`End::CrashExecutor`] (the executor dies
//! without a terminal update), and [`ScriptedLauncher::crash_executor`]
//! kills a running one from outside at any moment; either way the agent
//! sees the exit and reports TASK_FAILED `REASON_EXECUTOR_TERMINATED` for
//! the executor's unfinished tasks and FAILURE to the scheduler.

use super::clock::Clock;
use super::ids::Ids;
use super::launcher::{
    LaunchKind, LaunchRequest, Launched, LaunchedProcess, Launcher, exit_status_code,
    exit_status_signal,
};
use super::process::{SpawnError, parse_stout_duration};
use axum::http::{HeaderMap, HeaderValue, Method};
use futures_util::FutureExt as _;
use kaon_mesos::executor::{
    ExecutorMessage, HEARTBEAT_DEFAULT, KILL_GRACE_DEFAULT, OUTPUTS_BYTES_HARD_MAX,
    OUTPUTS_BYTES_MAX_DEFAULT, StepResult, StepSpec, step_spec,
};
use kaon_mesos::recordio::{Decoder, RECORD_BYTES_MAX_DEFAULT};
use kaon_mesos::transport::{HttpRequest, HttpResponse, HttpTransport as _, InProcessTransport};
use kaon_mesos::types::executor::{self as ex, Call, CallType, Event, EventType};
use kaon_mesos::types::{B64, Id, Source, TaskInfo, TaskState, TaskStatus};
use std::collections::BTreeMap;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// A progress report the step makes while it runs (what `kaon-executor`
/// relays from the step's progress file as a framework message).
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Percent complete (0–100): `ExecutorMessage::Progress`.
    Percent(f64),
    /// Free text: `ExecutorMessage::Status`.
    Status(String),
}

/// How an executor "process" ends when it dies abruptly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecutorExit {
    /// Exited with this code (e.g. 137, as a shell reports SIGKILL).
    Code(i32),
    /// Killed by this signal (e.g. 9).
    Signal(i32),
}

impl ExecutorExit {
    /// As the exit status the agent sees.
    pub fn status(self) -> ExitStatus {
        match self {
            ExecutorExit::Code(c) => exit_status_code(c),
            ExecutorExit::Signal(s) => exit_status_signal(s),
        }
    }
}

/// How a task's step ends after [`Script::run_for`].
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The step exits 0 having written `outputs`: TASK_FINISHED with
    /// `outputs` in the result (`Null` = it wrote no outputs file). As with
    /// the real executor, outputs that are not a JSON object fail the task
    /// (`outputs_invalid`), and larger than the step's `outputs_bytes_max`
    /// (`outputs_too_large`).
    Finish {
        /// The outputs object.
        outputs: serde_json::Value,
    },
    /// The step exits with `exit_code`: TASK_FAILED, `nonzero_exit` (a code
    /// of 0 behaves like `Finish` with no outputs, as for a real step).
    Fail {
        /// The step's exit code.
        exit_code: i32,
    },
    /// The step is killed by `signal` (e.g. the OOM killer's 9):
    /// TASK_FAILED, `signaled`.
    Signaled {
        /// The signal.
        signal: i32,
    },
    /// The step never ends; only KILL or SHUTDOWN (or a crash) stop it.
    Hang,
    /// The executor itself dies abruptly at that moment, with `exit`,
    /// sending no terminal update: the agent reports the executor's
    /// unfinished tasks TASK_FAILED `REASON_EXECUTOR_TERMINATED`.
    CrashExecutor {
        /// The executor's exit.
        exit: ExecutorExit,
    },
}

/// What one task does, from its TASK_RUNNING on.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    /// Progress reports, each at its offset from TASK_RUNNING (reports due
    /// after the step ended are not sent).
    pub progress: Vec<(Duration, Progress)>,
    /// How long the step runs before [`Script::end`] (ignored for `Hang`).
    pub run_for: Duration,
    /// How the step ends.
    pub end: End,
    /// Send heartbeat messages every `StepSpec.heartbeat_seconds` (default
    /// 10 s) while the step runs, as `kaon-executor` does (default: true).
    pub heartbeats: bool,
    /// The step ignores SIGTERM, so a kill takes the whole grace period and
    /// ends with SIGKILL (default: false, the step dies on SIGTERM).
    pub ignore_sigterm: bool,
}

impl Script {
    fn with_end(run_for: Duration, end: End) -> Self {
        Script {
            progress: Vec::new(),
            run_for,
            end,
            heartbeats: true,
            ignore_sigterm: false,
        }
    }

    /// Runs for `run_for`, then finishes with `outputs`.
    pub fn finish(run_for: Duration, outputs: serde_json::Value) -> Self {
        Self::with_end(run_for, End::Finish { outputs })
    }

    /// Runs for `run_for`, then exits with `exit_code`.
    pub fn fail(run_for: Duration, exit_code: i32) -> Self {
        Self::with_end(run_for, End::Fail { exit_code })
    }

    /// Runs until killed.
    pub fn hang() -> Self {
        Self::with_end(Duration::ZERO, End::Hang)
    }

    /// Runs for `run_for`, then the executor crashes with `exit`.
    pub fn crash(run_for: Duration, exit: ExecutorExit) -> Self {
        Self::with_end(run_for, End::CrashExecutor { exit })
    }

    /// Adds a progress report `after` TASK_RUNNING.
    pub fn with_progress(mut self, after: Duration, progress: Progress) -> Self {
        self.progress.push((after, progress));
        self
    }

    /// Turns heartbeat messages off (fewer events in a trace).
    pub fn without_heartbeats(mut self) -> Self {
        self.heartbeats = false;
        self
    }

    /// Makes the step ignore SIGTERM (kills take the grace period).
    pub fn ignoring_sigterm(mut self) -> Self {
        self.ignore_sigterm = true;
        self
    }
}

/// The per-task script chooser: gets the task as the executor receives it
/// (id, name, `data` with the [`StepSpec`]). It may keep state of its own
/// (e.g. fail a step's first attempt only) behind interior mutability.
pub type ScriptFn = Arc<dyn Fn(&TaskInfo) -> Script + Send + Sync>;

/// Names a running scripted executor (or command task).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScriptedId {
    /// Agent index.
    pub agent: usize,
    /// Framework id.
    pub framework_id: String,
    /// Executor id (the task id for a command task).
    pub executor_id: String,
}

type Registry = Mutex<BTreeMap<ScriptedId, Arc<ScriptedProcess>>>;

/// A [`Launcher`] that runs executors (and command tasks) as scripted tokio
/// tasks. Keep an `Arc` of it to inject crashes; hand a clone to
/// [`super::EmulatorConfig::launcher`].
pub struct ScriptedLauncher {
    script: ScriptFn,
    running: Arc<Registry>,
    serial: AtomicU64,
}

impl std::fmt::Debug for ScriptedLauncher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedLauncher")
            .field("running", &self.running())
            .finish_non_exhaustive()
    }
}

impl ScriptedLauncher {
    /// A launcher whose tasks follow `script(task)`.
    pub fn new(script: impl Fn(&TaskInfo) -> Script + Send + Sync + 'static) -> Self {
        Self::from_script_fn(Arc::new(script))
    }

    /// Like [`ScriptedLauncher::new`], for a chooser already shared as a
    /// [`ScriptFn`] (e.g. by several emulators of one simulation).
    pub fn from_script_fn(script: ScriptFn) -> Self {
        ScriptedLauncher {
            script,
            running: Arc::new(Mutex::new(BTreeMap::new())),
            serial: AtomicU64::new(0),
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, BTreeMap<ScriptedId, Arc<ScriptedProcess>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The scripted executors and command tasks alive now, in order.
    pub fn running(&self) -> Vec<ScriptedId> {
        self.registry().keys().cloned().collect()
    }

    /// Crashes a running scripted executor at once: it sends nothing more
    /// and "exits" with `exit`, which the agent handles like a real
    /// executor's death. Returns whether it was running.
    pub fn crash_executor(
        &self,
        agent: usize,
        framework_id: &str,
        executor_id: &str,
        exit: ExecutorExit,
    ) -> bool {
        let id = ScriptedId {
            agent,
            framework_id: framework_id.to_owned(),
            executor_id: executor_id.to_owned(),
        };
        let process = self.registry().get(&id).cloned();
        match process {
            Some(p) => {
                p.finish(exit.status());
                true
            }
            None => false,
        }
    }
}

impl Launcher for ScriptedLauncher {
    fn launch(&self, request: LaunchRequest) -> Result<Launched, SpawnError> {
        let id = ScriptedId {
            agent: request.agent,
            framework_id: request.framework_id.clone(),
            executor_id: request.executor_id.clone(),
        };
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let process = Arc::new(ScriptedProcess {
            id: id.clone(),
            serial: self.serial.fetch_add(1, Ordering::Relaxed),
            ctl: ctl_tx,
            exit: Mutex::new(Some(exit_tx)),
            task: Mutex::new(None),
            registry: Arc::downgrade(&self.running),
        });
        self.registry().insert(id, process.clone());
        let body = match request.kind {
            LaunchKind::CommandTask => {
                run_command_task((self.script)(&request.task), ctl_rx).boxed()
            }
            LaunchKind::Executor | LaunchKind::CommandExecutor => {
                ScriptedExecutor::new(&request, self.script.clone())
                    .run(ctl_rx)
                    .boxed()
            }
        };
        let me = process.clone();
        let task = tokio::spawn(async move {
            let status = body.await;
            me.finish(status);
        });
        *process.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task.abort_handle());
        Ok(Launched {
            process,
            exit: async move { exit_rx.await.ok() }.boxed(),
        })
    }
}

enum Control {
    /// SIGTERM from the agent.
    Term,
}

/// The agent's handle on a scripted executor.
struct ScriptedProcess {
    id: ScriptedId,
    serial: u64,
    ctl: mpsc::UnboundedSender<Control>,
    exit: Mutex<Option<oneshot::Sender<ExitStatus>>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
    registry: Weak<Registry>,
}

impl ScriptedProcess {
    /// Ends it (once): leaves the registry, stops its task, reports `status`.
    fn finish(&self, status: ExitStatus) {
        let Some(tx) = self.exit.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return;
        };
        if let Some(reg) = self.registry.upgrade() {
            let mut reg = reg.lock().unwrap_or_else(|p| p.into_inner());
            if reg.get(&self.id).is_some_and(|p| p.serial == self.serial) {
                reg.remove(&self.id);
            }
        }
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
        let _ = tx.send(status);
    }
}

impl LaunchedProcess for ScriptedProcess {
    fn signal(&self, signal: i32) {
        match signal {
            0 => {}
            libc::SIGTERM => {
                let _ = self.ctl.send(Control::Term);
            }
            // Every other signal the agent sends (SIGKILL) is fatal.
            other => self.finish(exit_status_signal(other)),
        }
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A command task's "process": its script decides its exit status.
async fn run_command_task(script: Script, mut ctl: mpsc::UnboundedReceiver<Control>) -> ExitStatus {
    let end_at = (script.end != End::Hang).then(|| Instant::now() + script.run_for);
    let mut ctl_open = true;
    loop {
        tokio::select! {
            biased;
            c = ctl.recv(), if ctl_open => match c {
                Some(Control::Term) if !script.ignore_sigterm => {
                    return exit_status_signal(libc::SIGTERM);
                }
                Some(Control::Term) => {}
                None => ctl_open = false,
            },
            _ = sleep_until_or_never(end_at) => {
                return match &script.end {
                    End::Finish { .. } => exit_status_code(0),
                    End::Fail { exit_code } => exit_status_code(*exit_code),
                    End::Signaled { signal } => exit_status_signal(*signal),
                    End::CrashExecutor { exit } => exit.status(),
                    End::Hang => exit_status_signal(libc::SIGKILL),
                };
            }
        }
    }
}

/// A task the scripted executor runs.
struct Running {
    /// Plain command task run as Mesos's command executor would.
    command_mode: bool,
    spec: StepSpec,
    end: End,
    killed: bool,
    ignore_sigterm: bool,
}

/// A timed event of the scripted executor.
enum Timer {
    Progress {
        task: String,
        progress: Progress,
    },
    Heartbeat {
        task: String,
        every: Duration,
    },
    End {
        task: String,
    },
    /// The killed step is gone: by SIGTERM, or SIGKILL after the grace.
    Killed {
        task: String,
        signal: i32,
    },
}

impl Timer {
    fn task(&self) -> &str {
        match self {
            Timer::Progress { task, .. }
            | Timer::Heartbeat { task, .. }
            | Timer::End { task }
            | Timer::Killed { task, .. } => task,
        }
    }
}

/// The executor's state, mirroring `kaon-executor`'s.
struct ScriptedExecutor {
    transport: InProcessTransport,
    url: String,
    framework_id: String,
    executor_id: String,
    checkpoint: bool,
    recovery_timeout: Duration,
    subscription_backoff_max: Duration,
    shutdown_grace: Duration,
    ids: Ids,
    clock: Clock,
    script: ScriptFn,
    tasks: BTreeMap<String, Running>,
    /// Launched tasks with no acknowledged update yet.
    unacked_tasks: BTreeMap<String, TaskInfo>,
    /// Updates sent but not ACKNOWLEDGED, in send order.
    unacked_updates: Vec<TaskStatus>,
    launched_any: bool,
    shutting_down: bool,
    killing_state: bool,
    /// Pending timed events, by deadline then insertion order.
    timers: BTreeMap<(Instant, u64), Timer>,
    timer_seq: u64,
    /// Set when a script crashes the executor.
    crashed: Option<ExecutorExit>,
    /// How long it stays without a task (`KAON_EXECUTOR_IDLE_MS`, as
    /// kaon's executor; zero: it exits with its last task).
    idle: Duration,
}

impl ScriptedExecutor {
    fn new(request: &LaunchRequest, script: ScriptFn) -> Self {
        let env = |k: &str| {
            request
                .env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        let dur = |k: &str, d: Duration| env(k).and_then(|v| parse_stout_duration(&v)).unwrap_or(d);
        let endpoint = env("MESOS_AGENT_ENDPOINT").unwrap_or_else(|| "agent".into());
        ScriptedExecutor {
            transport: InProcessTransport::new(request.agent_router.clone()),
            url: format!("http://{endpoint}/api/v1/executor"),
            framework_id: env("MESOS_FRAMEWORK_ID").unwrap_or_else(|| request.framework_id.clone()),
            executor_id: env("MESOS_EXECUTOR_ID").unwrap_or_else(|| request.executor_id.clone()),
            checkpoint: env("MESOS_CHECKPOINT").is_some_and(|v| v == "1"),
            recovery_timeout: dur("MESOS_RECOVERY_TIMEOUT", Duration::from_secs(15 * 60)),
            subscription_backoff_max: dur("MESOS_SUBSCRIPTION_BACKOFF_MAX", Duration::from_secs(2)),
            shutdown_grace: dur(
                "MESOS_EXECUTOR_SHUTDOWN_GRACE_PERIOD",
                Duration::from_secs(5),
            ),
            ids: request.ids.clone(),
            clock: request.clock.clone(),
            script,
            tasks: BTreeMap::new(),
            unacked_tasks: BTreeMap::new(),
            unacked_updates: Vec::new(),
            launched_any: false,
            shutting_down: false,
            killing_state: false,
            timers: BTreeMap::new(),
            timer_seq: 0,
            crashed: None,
            idle: request
                .command
                .environment
                .iter()
                .flat_map(|e| e.variables.iter())
                .find(|v| v.name == kaon_mesos::executor::ENV_IDLE_MS)
                .and_then(|v| v.value.as_deref()?.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
                .unwrap_or(Duration::ZERO),
        }
    }

    /// The executor's life, as `kaon-executor`'s `run`: subscribe, handle
    /// events and timers, exit 0 once its work is done and acknowledged;
    /// without checkpointing, losing the agent ends it with status 1.
    async fn run(mut self, mut ctl: mpsc::UnboundedReceiver<Control>) -> ExitStatus {
        let mut disconnected_since: Option<Instant> = None;
        let mut backoff = Duration::from_millis(50);
        let mut ctl_open = true;
        let mut idle_since: Option<Instant> = None;
        loop {
            let mut resp = match self.subscribe().await {
                Ok(r) => {
                    disconnected_since = None;
                    backoff = Duration::from_millis(50);
                    r
                }
                Err(e) => {
                    let since = *disconnected_since.get_or_insert_with(Instant::now);
                    if !self.checkpoint || since.elapsed() > self.recovery_timeout {
                        tracing::warn!(error = %e, executor = %self.executor_id, "scripted executor cannot subscribe; exiting");
                        return exit_status_code(1);
                    }
                    // Steps go on while the agent is away; updates that
                    // cannot be sent travel in the next SUBSCRIBE.
                    let until = Instant::now() + backoff;
                    loop {
                        let next = self.next_timer();
                        tokio::select! {
                            biased;
                            _ = tokio::time::sleep_until(until) => break,
                            _ = sleep_until_or_never(next) => {
                                if let Some(exit) = self.fire_timers().await {
                                    return exit.status();
                                }
                            }
                        }
                    }
                    backoff = (backoff * 2).min(self.subscription_backoff_max);
                    continue;
                }
            };
            let mut decoder = Decoder::new(RECORD_BYTES_MAX_DEFAULT);
            let stream_end = loop {
                let next = self.next_timer();
                tokio::select! {
                    biased;
                    c = ctl.recv(), if ctl_open => match c {
                        Some(Control::Term) => {
                            tracing::info!(executor = %self.executor_id, "SIGTERM: shutting down");
                            self.shutdown();
                        }
                        None => ctl_open = false,
                    },
                    chunk = resp.chunk() => {
                        let chunk = match chunk {
                            Ok(Some(c)) => c,
                            Ok(None) => break "agent closed the stream".to_string(),
                            Err(e) => break format!("stream read failed: {e}"),
                        };
                        let records = match decoder.feed(&chunk) {
                            Ok(r) => r,
                            Err(e) => break e.to_string(),
                        };
                        for r in records {
                            match serde_json::from_slice::<Event>(&r) {
                                Ok(ev) => self.on_event(ev).await,
                                Err(e) => tracing::warn!(error = %e, "undecodable executor event ignored"),
                            }
                        }
                    }
                    _ = sleep_until_or_never(next) => {
                        if let Some(exit) = self.fire_timers().await {
                            return exit.status();
                        }
                    }
                    _ = sleep_until_or_never(idle_since.map(|t| t + self.idle)) => {
                        return exit_status_code(0);
                    }
                }
                if let Some(exit) = self.crashed {
                    return exit.status();
                }
                if self.done() {
                    if self.shutting_down || self.idle.is_zero() {
                        return exit_status_code(0);
                    }
                    idle_since.get_or_insert_with(Instant::now);
                } else {
                    idle_since = None;
                }
            };
            tracing::warn!(reason = %stream_end, executor = %self.executor_id, "scripted executor lost the agent");
            if !self.checkpoint {
                return exit_status_code(1);
            }
            disconnected_since.get_or_insert_with(Instant::now);
        }
    }

    fn done(&self) -> bool {
        (self.launched_any || self.shutting_down)
            && self.tasks.is_empty()
            && self.unacked_updates.is_empty()
    }

    fn call(&self, kind: CallType) -> Call {
        Call {
            executor_id: Id::new(&self.executor_id),
            framework_id: Id::new(&self.framework_id),
            kind,
            subscribe: None,
            update: None,
            message: None,
        }
    }

    async fn post(&self, call: &Call) -> Result<HttpResponse, String> {
        let json = HeaderValue::from_static("application/json");
        let mut headers = HeaderMap::new();
        headers.insert("Content-Type", json.clone());
        headers.insert("Accept", json);
        let request = HttpRequest {
            method: Method::POST,
            url: self.url.clone(),
            headers,
            body: serde_json::to_vec(call).unwrap_or_default().into(),
            timeout: None,
        };
        let resp = self
            .transport
            .send(request)
            .await
            .map_err(|e| e.to_string())?;
        if !(200..300).contains(&resp.status) {
            let status = resp.status;
            return Err(format!("{status}: {}", resp.text().await));
        }
        Ok(resp)
    }

    async fn subscribe(&self) -> Result<HttpResponse, String> {
        let mut call = self.call(CallType::Subscribe);
        call.subscribe = Some(ex::Subscribe {
            unacknowledged_tasks: self.unacked_tasks.values().cloned().collect(),
            unacknowledged_updates: self
                .unacked_updates
                .iter()
                .map(|s| ex::UnackedUpdate { status: s.clone() })
                .collect(),
        });
        self.post(&call).await
    }

    async fn send_update(
        &mut self,
        task_id: &str,
        state: TaskState,
        message: Option<String>,
        data: Option<Vec<u8>>,
    ) {
        let mut status = TaskStatus::new(Id::new(task_id), state);
        status.source = Some(Source::Executor);
        status.executor_id = Some(Id::new(&self.executor_id));
        status.message = message;
        status.data = data.map(B64);
        status.uuid = Some(B64(self.ids.uuid_bytes().to_vec()));
        status.timestamp = Some(self.clock.now_secs());
        self.unacked_updates.push(status.clone());
        let mut call = self.call(CallType::Update);
        call.update = Some(ex::Update { status });
        if let Err(e) = self.post(&call).await {
            tracing::warn!(error = %e, task = task_id, "status update not delivered yet");
        }
    }

    async fn send_message(&self, msg: &ExecutorMessage) {
        let mut call = self.call(CallType::Message);
        call.message = Some(ex::Message {
            data: B64(serde_json::to_vec(msg).unwrap_or_default()),
        });
        if let Err(e) = self.post(&call).await {
            tracing::debug!(error = %e, "framework message dropped");
        }
    }

    fn at(&mut self, at: Instant, timer: Timer) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), timer);
    }

    fn next_timer(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    fn forget_task(&mut self, task_id: &str) -> Option<Running> {
        self.timers.retain(|_, t| t.task() != task_id);
        self.tasks.remove(task_id)
    }

    async fn on_event(&mut self, ev: Event) {
        match ev.kind {
            EventType::Subscribed => {
                if let Some(sub) = ev.subscribed {
                    self.killing_state = sub.framework_info.has_capability("TASK_KILLING_STATE");
                }
            }
            EventType::Launch => {
                if let Some(l) = ev.launch {
                    self.launch(l.task).await;
                }
            }
            EventType::Kill => {
                if let Some(k) = ev.kill {
                    let grace = k
                        .kill_policy
                        .and_then(|p| p.grace_period)
                        .map(|g| g.to_std());
                    let first = self.tasks.get(&k.task_id.value).is_some_and(|t| !t.killed);
                    self.kill(&k.task_id.value, grace);
                    if first && self.killing_state {
                        self.send_update(&k.task_id.value, TaskState::Killing, None, None)
                            .await;
                    }
                }
            }
            EventType::Acknowledged => {
                if let Some(a) = ev.acknowledged {
                    self.unacked_updates
                        .retain(|s| s.uuid.as_ref() != Some(&a.uuid));
                    self.unacked_tasks.remove(&a.task_id.value);
                }
            }
            EventType::Shutdown => self.shutdown(),
            EventType::Error => {
                tracing::warn!(message = ?ev.error.map(|e| e.message), "agent reported an error")
            }
            _ => {}
        }
    }

    fn shutdown(&mut self) {
        self.shutting_down = true;
        let grace = self
            .shutdown_grace
            .saturating_sub(Duration::from_millis(500));
        let ids: Vec<String> = self.tasks.keys().cloned().collect();
        for id in ids {
            self.kill(&id, Some(grace));
        }
    }

    /// SIGTERM to the step: it dies now, or (ignoring SIGTERM) by SIGKILL
    /// after the grace, unless its script ends it first.
    fn kill(&mut self, task_id: &str, grace: Option<Duration>) {
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        if t.killed {
            return;
        }
        let grace = grace
            .or(t
                .spec
                .kill_grace_seconds
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64))
            .unwrap_or(KILL_GRACE_DEFAULT);
        t.killed = true;
        let (at, signal) = if t.ignore_sigterm {
            (Instant::now() + grace, libc::SIGKILL)
        } else {
            (Instant::now(), libc::SIGTERM)
        };
        self.at(
            at,
            Timer::Killed {
                task: task_id.to_owned(),
                signal,
            },
        );
    }

    async fn launch(&mut self, task: TaskInfo) {
        let task_id = task.task_id.value.clone();
        self.launched_any = true;
        self.unacked_tasks.insert(task_id.clone(), task.clone());
        if task.command.is_some() {
            // Command-executor mode (command task of a checkpointing framework).
            self.send_update(&task_id, TaskState::Starting, None, None)
                .await;
            let script = (self.script)(&task);
            self.start(&task_id, StepSpec::default(), script, true);
            self.send_update(&task_id, TaskState::Running, None, None)
                .await;
            return;
        }
        let spec = match step_spec(task.data.as_ref()) {
            Ok(s) => s,
            Err(result) => {
                self.send_update(
                    &task_id,
                    TaskState::Failed,
                    result.error.clone(),
                    serde_json::to_vec(&result).ok(),
                )
                .await;
                return;
            }
        };
        let script = (self.script)(&task);
        self.start(&task_id, spec, script, false);
        self.send_update(&task_id, TaskState::Running, None, None)
            .await;
    }

    /// Registers a started step and schedules what its script says.
    fn start(&mut self, task_id: &str, spec: StepSpec, script: Script, command_mode: bool) {
        let now = Instant::now();
        if !command_mode {
            for (after, progress) in &script.progress {
                self.at(
                    now + *after,
                    Timer::Progress {
                        task: task_id.to_owned(),
                        progress: progress.clone(),
                    },
                );
            }
            if script.heartbeats {
                let every = spec
                    .heartbeat_seconds
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .map(Duration::from_secs_f64)
                    .unwrap_or(HEARTBEAT_DEFAULT);
                self.at(
                    now + every,
                    Timer::Heartbeat {
                        task: task_id.to_owned(),
                        every,
                    },
                );
            }
        }
        if script.end != End::Hang {
            self.at(
                now + script.run_for,
                Timer::End {
                    task: task_id.to_owned(),
                },
            );
        }
        self.tasks.insert(
            task_id.to_owned(),
            Running {
                command_mode,
                spec,
                end: script.end,
                killed: false,
                ignore_sigterm: script.ignore_sigterm,
            },
        );
    }

    /// Runs every timer that is due, in order. `Some` when the executor
    /// crashed.
    async fn fire_timers(&mut self) -> Option<ExecutorExit> {
        let now = Instant::now();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            match timer {
                Timer::Progress { task, progress } => {
                    if self.tasks.contains_key(&task) {
                        let msg = match progress {
                            Progress::Percent(percent) => ExecutorMessage::Progress {
                                task_id: task,
                                percent,
                            },
                            Progress::Status(text) => ExecutorMessage::Status {
                                task_id: task,
                                text,
                            },
                        };
                        self.send_message(&msg).await;
                    }
                }
                Timer::Heartbeat { task, every } => {
                    if self.tasks.contains_key(&task) {
                        self.at(
                            now + every,
                            Timer::Heartbeat {
                                task: task.clone(),
                                every,
                            },
                        );
                        self.send_message(&ExecutorMessage::Heartbeat { task_id: task })
                            .await;
                    }
                }
                Timer::End { task } => {
                    let Some(t) = self.forget_task(&task) else {
                        continue;
                    };
                    let (code, signal, outputs) = match &t.end {
                        End::Finish { outputs } => (Some(0), None, Some(outputs.clone())),
                        End::Fail { exit_code } => (Some(*exit_code), None, None),
                        End::Signaled { signal } => (None, Some(*signal), None),
                        End::CrashExecutor { exit } => {
                            self.crashed = Some(*exit);
                            return Some(*exit);
                        }
                        End::Hang => continue,
                    };
                    self.step_exited(&task, &t, code, signal, outputs).await;
                }
                Timer::Killed { task, signal } => {
                    let Some(t) = self.forget_task(&task) else {
                        continue;
                    };
                    self.step_exited(&task, &t, None, Some(signal), None).await;
                }
            }
        }
        None
    }

    /// The terminal update for a step that exited, exactly as
    /// `kaon-executor` words it.
    async fn step_exited(
        &mut self,
        task_id: &str,
        t: &Running,
        code: Option<i32>,
        signal: Option<i32>,
        outputs: Option<serde_json::Value>,
    ) {
        if t.command_mode {
            let (state, message) = match (t.killed, code, signal) {
                (true, _, _) => (
                    TaskState::Killed,
                    "Command terminated by a kill request".to_string(),
                ),
                (false, Some(0), _) => (TaskState::Finished, "Command exited with status 0".into()),
                (false, Some(c), _) => {
                    (TaskState::Failed, format!("Command exited with status {c}"))
                }
                (false, None, Some(sig)) => (
                    TaskState::Failed,
                    format!("Command terminated with signal {sig}"),
                ),
                _ => (
                    TaskState::Failed,
                    "Command ended with an unknown status".into(),
                ),
            };
            self.send_update(task_id, state, Some(message), None).await;
            return;
        }
        let limit = t
            .spec
            .outputs_bytes_max
            .unwrap_or(OUTPUTS_BYTES_MAX_DEFAULT)
            .min(OUTPUTS_BYTES_HARD_MAX);
        let (state, reason, error, outputs) = if t.killed {
            (
                TaskState::Killed,
                "killed".to_string(),
                Some("step killed on request".to_string()),
                None,
            )
        } else if let Some(sig) = signal {
            (
                TaskState::Failed,
                "signaled".into(),
                Some(format!("step terminated by signal {sig}")),
                None,
            )
        } else if code != Some(0) {
            (
                TaskState::Failed,
                "nonzero_exit".into(),
                Some(format!("step exited with status {}", code.unwrap_or(-1))),
                None,
            )
        } else {
            match check_outputs(outputs, limit) {
                Ok(outputs) => (TaskState::Finished, "exited".into(), None, outputs),
                Err((reason, detail)) => (TaskState::Failed, reason, Some(detail), None),
            }
        };
        let result = StepResult {
            exit_code: code,
            signal,
            outputs,
            reason,
            error: error.clone(),
        };
        self.send_update(task_id, state, error, serde_json::to_vec(&result).ok())
            .await;
    }
}

/// The real executor's checks of an outputs file, applied to the scripted
/// outputs (`Null` = no file).
fn check_outputs(
    outputs: Option<serde_json::Value>,
    limit: usize,
) -> Result<Option<serde_json::Value>, (String, String)> {
    let Some(v) = outputs.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let len = serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0);
    if len > limit {
        return Err((
            "outputs_too_large".into(),
            format!("outputs file is {len} bytes, over the limit of {limit} bytes"),
        ));
    }
    if !v.is_object() {
        return Err((
            "outputs_invalid".into(),
            "outputs file must hold a JSON object".into(),
        ));
    }
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_checked_like_a_file() {
        assert_eq!(check_outputs(None, 10), Ok(None));
        assert_eq!(check_outputs(Some(serde_json::Value::Null), 10), Ok(None));
        let o = serde_json::json!({"a": 1});
        assert_eq!(check_outputs(Some(o.clone()), 100), Ok(Some(o.clone())));
        assert_eq!(
            check_outputs(Some(o), 3).unwrap_err().0,
            "outputs_too_large"
        );
        assert_eq!(
            check_outputs(Some(serde_json::json!([1])), 100)
                .unwrap_err()
                .0,
            "outputs_invalid"
        );
    }

    #[test]
    fn executor_exits_read_back() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(ExecutorExit::Code(137).status().code(), Some(137));
        assert_eq!(ExecutorExit::Signal(9).status().signal(), Some(9));
    }
}
