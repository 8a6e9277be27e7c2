//! An emulator of an Apache Mesos 1.11 master with agents, good enough that
//! a v1 HTTP scheduler or executor cannot tell it from the real thing (JSON
//! encoding only). Agents run tasks as real local processes.
//!
//! Runs in-process ([`Emulator::start`]) or as its own process
//! ([`run_from_args`], used by `kaon mesos-emulator` and the
//! `kaon-mesos-emulator` binary).

pub mod checkpoint;
pub mod clock;
mod http;
pub mod ids;
pub mod launcher;
/// Process handling, shared with the executor (`kaon_mesos::process`).
pub use kaon_mesos::process;
pub mod scripted;
mod state;

pub use clock::Clock;
pub use ids::{IdSource, Ids};
pub use launcher::{
    LaunchKind, LaunchRequest, Launched, LaunchedProcess, Launcher, ProcessGroup, ProcessLauncher,
};
pub use state::Leadership;

use kaon_mesos::resources::Resources;
use kaon_mesos::types::{Attribute, Resource};
use state::{Agent, Core, State};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::Notify;

/// Version string reported by `/version` and `MasterInfo`; purely numeric
/// because some clients parse it as dot-separated integers.
pub const MESOS_VERSION: &str = "1.11.0";

/// Why the emulator could not start.
#[derive(Debug, Error)]
pub enum EmulatorError {
    /// Binding a listening socket failed.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// "master" or "agent N".
        what: String,
        /// Requested address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The work directory could not be created.
    #[error("cannot create work dir {path}: {source}")]
    WorkDir {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The checkpoint could not be read.
    #[error("cannot recover: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// Bad command-line arguments.
    #[error("invalid emulator arguments: {0}")]
    Args(String),
}

/// One emulated agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Address of the agent's HTTP server (executor API); port 0 = ephemeral.
    pub addr: SocketAddr,
    /// Host name reported in offers (defaults to the address's IP).
    pub hostname: Option<String>,
    /// Resources offered (cpus, mem, disk, ports, ...).
    pub resources: Vec<Resource>,
    /// Attributes, e.g. `rack: r1`.
    pub attributes: Vec<Attribute>,
}

impl AgentConfig {
    /// A loopback agent with the given cpus/mem and ports 31000-32000.
    pub fn loopback(cpus: f64, mem_mb: f64) -> Self {
        AgentConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostname: None,
            resources: vec![
                Resource::scalar("cpus", cpus),
                Resource::scalar("mem", mem_mb),
                Resource::scalar("disk", 100_000.0),
                Resource::ranges("ports", &[(31000, 32000)]),
            ],
            attributes: Vec::new(),
        }
    }
}

/// Emulator settings. Time limits mirror the Mesos defaults; tests shorten
/// them.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Master address; port 0 = ephemeral.
    pub master_addr: SocketAddr,
    /// Host name the master reports.
    pub hostname: String,
    /// Agents to run.
    pub agents: Vec<AgentConfig>,
    /// Scheduler heartbeat period (Mesos: 15 s).
    pub heartbeat_interval: Duration,
    /// Period of the allocator's offer round (Mesos: 1 s); it also runs on
    /// every change that frees or returns resources.
    pub allocation_interval: Duration,
    /// First retry of an unacknowledged status update (Mesos: 10 s).
    pub status_update_retry_min: Duration,
    /// Retry backoff cap (Mesos: 10 min).
    pub status_update_retry_max: Duration,
    /// How long an executor may take to SUBSCRIBE (Mesos: 1 min).
    pub executor_registration_timeout: Duration,
    /// SHUTDOWN grace before SIGKILL (Mesos: 5 s).
    pub executor_shutdown_grace: Duration,
    /// SIGTERM→SIGKILL grace for command tasks without a kill policy (3 s).
    pub command_kill_grace: Duration,
    /// Root of the agents' sandboxes.
    pub work_dir: PathBuf,
    /// Path of `kaon-executor`; `None` = sibling of the current executable.
    pub executor_path: Option<PathBuf>,
    /// Agent checkpointing: persist state to `<work_dir>/checkpoint.json`
    /// and recover it (frameworks with `checkpoint: true`, their tasks,
    /// pending updates and live executors) when started again on the same
    /// work dir. Recovered master/agents bind their previous addresses.
    pub checkpoint: bool,
    /// How long a recovered executor has to re-subscribe (Mesos: 2 s).
    pub executor_reregistration_timeout: Duration,
    /// Period of HEARTBEAT events to subscribed executors (Mesos: 30 min).
    pub executor_heartbeat_interval: Duration,
    /// Whether agents bind their TCP socket (default: true). Without one,
    /// an agent is reached only through [`EmulatorHandle::agent_router`],
    /// which suits executors that run in-process (see
    /// [`EmulatorConfig::launcher`]); its address is then only a name
    /// (in offers, `AgentInfo`, `MESOS_AGENT_ENDPOINT`), port 0 becoming
    /// 5051 + the agent's index so that names differ.
    pub agent_sockets: bool,
    /// Wall clock for `TaskStatus.timestamp` and other wall-clock values
    /// (default: the system clock). A simulation on paused tokio time gives
    /// [`Clock::from_tokio`] so timestamps are deterministic too; every
    /// duration and deadline already follows tokio time.
    pub clock: Clock,
    /// Source of the ids Mesos draws at random: master id (and with it the
    /// framework, agent and offer ids), Mesos-Stream-Ids, status update
    /// uuids, sandbox run directories. [`IdSource::Seeded`] makes them a
    /// function of the seed and the order of calls, for a deterministic
    /// simulation (default: [`IdSource::Random`]).
    pub ids: IdSource,
    /// How agents start executors and command tasks (default:
    /// [`ProcessLauncher`], real processes in their own process groups).
    /// A simulation hands in an in-process one, e.g.
    /// [`scripted::ScriptedLauncher`], together with `agent_sockets: false`.
    pub launcher: Arc<dyn Launcher>,
    /// Framework credentials (principal, secret): when set, every call to
    /// `/api/v1/scheduler` needs `Authorization: Basic` with one of them,
    /// else 401, as a Mesos master with `--authenticate_http_frameworks`
    /// and the basic authenticator (issue 12).
    pub credentials: Vec<(String, String)>,
    /// Serve the master over HTTPS with this certificate and key (PEM):
    /// for testing a scheduler's `https://` master URLs.
    pub master_tls: Option<(String, String)>,
}

/// Reads a Mesos credentials file: `{"credentials": [{"principal": ..,
/// "secret": ..}]}` (Mesos' own format).
pub fn read_credentials(path: &std::path::Path) -> Result<Vec<(String, String)>, EmulatorError> {
    #[derive(serde::Deserialize)]
    struct File {
        credentials: Vec<Cred>,
    }
    #[derive(serde::Deserialize)]
    struct Cred {
        principal: String,
        secret: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| EmulatorError::Args(format!("--credentials {}: {e}", path.display())))?;
    let f: File = serde_json::from_str(&text).map_err(|e| {
        EmulatorError::Args(format!(
            "--credentials {}: expected {{\"credentials\": [{{\"principal\": .., \"secret\": ..}}]}}: {e}",
            path.display()
        ))
    })?;
    Ok(f.credentials
        .into_iter()
        .map(|c| (c.principal, c.secret))
        .collect())
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            master_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostname: "127.0.0.1".into(),
            agents: vec![AgentConfig::loopback(4.0, 8192.0)],
            heartbeat_interval: Duration::from_secs(15),
            allocation_interval: Duration::from_secs(1),
            status_update_retry_min: Duration::from_secs(10),
            status_update_retry_max: Duration::from_secs(600),
            executor_registration_timeout: Duration::from_secs(60),
            executor_shutdown_grace: Duration::from_secs(5),
            command_kill_grace: Duration::from_secs(3),
            work_dir: std::env::temp_dir().join("kaon-mesos-emulator"),
            executor_path: None,
            checkpoint: false,
            executor_reregistration_timeout: Duration::from_secs(2),
            executor_heartbeat_interval: Duration::from_secs(30 * 60),
            clock: Clock::system(),
            ids: IdSource::Random,
            agent_sockets: true,
            credentials: Vec::new(),
            master_tls: None,
            launcher: Arc::new(ProcessLauncher),
        }
    }
}

/// The name an agent without a socket goes by: its configured address, or
/// port `5051 + index` (Mesos's agent port) when it asked for port 0.
fn unbound_agent_addr(configured: SocketAddr, index: usize) -> SocketAddr {
    if configured.port() != 0 {
        return configured;
    }
    let port = u16::try_from(5051 + index).unwrap_or(u16::MAX);
    SocketAddr::new(configured.ip(), port)
}

/// Finds `kaon-executor`: the configured path, else next to the current
/// executable (or one directory up, for test binaries in `target/*/deps`).
pub fn default_executor_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let sibling = dir.join("kaon-executor");
    if sibling.exists() {
        return sibling;
    }
    match dir.parent() {
        Some(up) if up.join("kaon-executor").exists() => up.join("kaon-executor"),
        _ => sibling,
    }
}

/// Entry point of the emulator.
pub struct Emulator;

/// A running emulator. Dropping it without [`EmulatorHandle::shutdown`]
/// leaves servers running until the runtime ends (task processes then die
/// with their parent thread).
pub struct EmulatorHandle {
    core: Arc<Core>,
    agent_addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    servers: Vec<tokio::task::JoinHandle<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    /// Set by `shutdown`/`stop_for_restart`; otherwise dropping the handle
    /// kills every task process (safety net for panicking tests).
    finished: bool,
}

impl Emulator {
    /// Binds the master and agents and starts serving on the current tokio
    /// runtime.
    pub async fn start(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        Self::start_with(config, true).await
    }

    /// Like [`Emulator::start`] but the master binds no socket: schedulers
    /// reach it only through [`EmulatorHandle::master_router`] (e.g. with
    /// [`kaon_mesos::transport::MesosTransport::in_process`]). `master_addr` is
    /// then only the name the master reports (in `MasterInfo`, redirects,
    /// `/state`); nothing listens there. Agents still bind their executor
    /// API, since real executors are separate processes, unless
    /// [`EmulatorConfig::agent_sockets`] is off (executors run in-process,
    /// through [`EmulatorHandle::agent_router`]): then nothing binds a
    /// socket at all.
    pub async fn start_in_process(config: EmulatorConfig) -> Result<EmulatorHandle, EmulatorError> {
        Self::start_with(config, false).await
    }

    async fn start_with(
        config: EmulatorConfig,
        bind_master: bool,
    ) -> Result<EmulatorHandle, EmulatorError> {
        let mut config = config;
        // Absolute before anything uses them: an executor runs with its
        // sandbox as working directory, so a relative work dir (`kaon
        // server` with its default `--data-dir kaon-data`) would be
        // resolved inside the sandbox itself (issue 9, A).
        let absolute = |p: &PathBuf| {
            std::path::absolute(p).map_err(|source| EmulatorError::WorkDir {
                path: p.display().to_string(),
                source,
            })
        };
        config.work_dir = absolute(&config.work_dir)?;
        // A bare program name is looked up in PATH; a path is made absolute.
        if let Some(p) = &config.executor_path
            && p.components().count() > 1
        {
            config.executor_path = Some(absolute(p)?);
        }
        std::fs::create_dir_all(&config.work_dir).map_err(|source| EmulatorError::WorkDir {
            path: config.work_dir.display().to_string(),
            source,
        })?;
        let recovered = if config.checkpoint {
            checkpoint::read(&config.work_dir)?
        } else {
            None
        };
        if let Some(ck) = &recovered {
            let (master, agents) = checkpoint::recovered_addrs(ck);
            config.master_addr = master;
            for (a, addr) in config.agents.iter_mut().zip(agents) {
                a.addr = addr;
            }
            tracing::info!(%master, "recovering from checkpoint");
        }
        let (master, master_addr) = if bind_master {
            let master = tokio::net::TcpListener::bind(config.master_addr)
                .await
                .map_err(|source| EmulatorError::Bind {
                    what: "master".into(),
                    addr: config.master_addr,
                    source,
                })?;
            let addr = master.local_addr().map_err(|source| EmulatorError::Bind {
                what: "master".into(),
                addr: config.master_addr,
                source,
            })?;
            (Some(master), addr)
        } else {
            (None, config.master_addr)
        };
        let ids = Ids::new(config.ids);
        let master_id = ids.uuid_string();
        let mut agents = Vec::new();
        let mut listeners = Vec::new();
        for (i, a) in config.agents.iter().enumerate() {
            let addr = if config.agent_sockets {
                let what = format!("agent {i}");
                let l = tokio::net::TcpListener::bind(a.addr)
                    .await
                    .map_err(|source| EmulatorError::Bind {
                        what: what.clone(),
                        addr: a.addr,
                        source,
                    })?;
                let addr = l.local_addr().map_err(|source| EmulatorError::Bind {
                    what,
                    addr: a.addr,
                    source,
                })?;
                listeners.push((i, l));
                addr
            } else {
                unbound_agent_addr(a.addr, i)
            };
            agents.push(Agent {
                id: format!("{master_id}-S{i}"),
                hostname: a.hostname.clone().unwrap_or_else(|| addr.ip().to_string()),
                addr,
                total: Resources::from_mesos(&a.resources),
                used: Resources::default(),
                attributes: a.attributes.clone(),
                executors: Default::default(),
                updates: Default::default(),
                seen_uuids: Default::default(),
                recovering: false,
                refused_updates: 0,
                lost: false,
                completed_executors: Default::default(),
            });
        }
        let agent_addrs = agents.iter().map(|a| a.addr).collect();
        let executor_path = config
            .executor_path
            .clone()
            .unwrap_or_else(default_executor_path);
        let core = Arc::new(Core {
            state: Mutex::new(State {
                master_id,
                leadership: Leadership::Leader,
                unavailable_next: 0,
                next_framework: 0,
                next_offer: 0,
                frameworks: Default::default(),
                completed: Default::default(),
                agents,
                offers: Default::default(),
                live_processes: 0,
                shutting_down: false,
            }),
            config,
            master_addr,
            allocate: Notify::new(),
            processes_changed: Notify::new(),
            executor_path,
            ids,
        });
        if let Some(ck) = recovered {
            let executors = {
                let mut st = core.lock();
                checkpoint::restore(ck, &mut st)
            };
            for (agent, framework, executor, pgid) in executors {
                core.watch_recovered(agent, framework, executor, pgid);
            }
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut servers = Vec::new();
        if let Some(master) = master {
            servers.push(tokio::spawn(http::serve_master(
                core.clone(),
                master,
                stop_rx.clone(),
            )));
        }
        for (i, l) in listeners {
            servers.push(tokio::spawn(http::serve_agent(
                core.clone(),
                i,
                l,
                stop_rx.clone(),
            )));
        }
        let mut tasks = Vec::new();
        if core.config.checkpoint {
            tasks.push(tokio::spawn(checkpointer(Arc::downgrade(&core))));
        }
        tasks.push(tokio::spawn(allocator(Arc::downgrade(&core))));
        tasks.push(tokio::spawn(update_retrier(Arc::downgrade(&core))));
        tracing::info!(%master_addr, "mesos emulator started");
        Ok(EmulatorHandle {
            core,
            agent_addrs,
            tasks,
            servers,
            stop: stop_tx,
            finished: false,
        })
    }
}

/// Period of the background checkpoint write (updates acknowledged to
/// executors are additionally checkpointed synchronously).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

async fn checkpointer(core: std::sync::Weak<Core>) {
    loop {
        tokio::time::sleep(CHECKPOINT_INTERVAL).await;
        let Some(c) = core.upgrade() else { return };
        let st = c.lock();
        if st.shutting_down {
            return;
        }
        c.persist(&st);
    }
}

async fn allocator(core: std::sync::Weak<Core>) {
    loop {
        let Some(c) = core.upgrade() else { return };
        let every = c.config.allocation_interval;
        c.allocate_once();
        let notified = async {
            let n = c.allocate.notified();
            n.await
        };
        let _ = tokio::time::timeout(every, notified).await;
    }
}

async fn update_retrier(core: std::sync::Weak<Core>) {
    loop {
        let Some(c) = core.upgrade() else { return };
        let tick = (c.config.status_update_retry_min / 4).max(Duration::from_millis(10));
        drop(c);
        tokio::time::sleep(tick).await;
        let Some(c) = core.upgrade() else { return };
        c.retry_updates();
    }
}

impl EmulatorHandle {
    /// `http://host:port` of the master.
    pub fn master_url(&self) -> String {
        let scheme = if self.core.config.master_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.core.master_addr)
    }

    /// The master's socket address.
    pub fn master_addr(&self) -> SocketAddr {
        self.core.master_addr
    }

    /// The master's HTTP API (`/api/v1/scheduler`, `/state`, ...) as an
    /// axum router, to be served in-process, e.g. by
    /// [`kaon_mesos::transport::MesosTransport::in_process`]. It shares the
    /// emulator's state with the master's TCP server, if any.
    pub fn master_router(&self) -> axum::Router {
        http::master_router(self.core.clone())
    }

    /// The agents' executor-API addresses, in configuration order (only
    /// names when [`EmulatorConfig::agent_sockets`] is off).
    pub fn agent_addrs(&self) -> &[SocketAddr] {
        &self.agent_addrs
    }

    /// Agent `index`'s HTTP API (`/api/v1/executor`, `/state`, `/health`,
    /// `/files/download`, `/files/read`) as an axum router, to be called
    /// in-process (e.g. with
    /// [`kaon_mesos::transport::MesosTransport::in_process`]). It shares the
    /// emulator's state with the agent's TCP server, if any; the mirror of
    /// [`EmulatorHandle::master_router`].
    ///
    /// # Panics
    /// If there is no agent `index`.
    pub fn agent_router(&self, index: usize) -> axum::Router {
        assert!(
            index < self.agent_addrs.len(),
            "no agent {index}: the emulator has {}",
            self.agent_addrs.len()
        );
        http::agent_router(self.core.clone(), index)
    }

    /// The agents' ids, in configuration order.
    pub fn agent_ids(&self) -> Vec<String> {
        self.core
            .lock()
            .agents
            .iter()
            .map(|a| a.id.clone())
            .collect()
    }

    /// The `kaon-executor` path the agents substitute for a bare
    /// `kaon-executor` command.
    pub fn executor_path(&self) -> PathBuf {
        self.core.executor_path.clone()
    }

    /// Simulates leader election: a standby redirects (307) or answers 503.
    pub fn set_leadership(&self, leadership: Leadership) {
        self.core.lock().leadership = leadership;
    }

    /// Makes the next `n` scheduler requests fail with 503 ("Master has not
    /// finished recovery"), to exercise client retries.
    pub fn fail_next_requests(&self, n: u32) {
        self.core.lock().unavailable_next = n;
    }

    /// Simulates losing agent `index` for good (machine failure): its
    /// processes die, offers are rescinded, tasks become TASK_LOST (or
    /// TASK_UNREACHABLE for partition-aware frameworks), frameworks get
    /// FAILURE with the agent id, and it makes no more offers.
    pub fn lose_agent(&self, index: usize) {
        self.core.lose_agent(index);
    }

    /// Breaks framework `framework_id`'s subscription stream like a broken
    /// TCP connection: the stream just ends (no ERROR, so the scheduler
    /// driver re-subscribes with the same framework id), the framework is
    /// disconnected, its offers are gone, and its failover timer runs as
    /// after any disconnection. Returns whether it was subscribed.
    pub fn drop_subscription(&self, framework_id: &str) -> bool {
        self.core.drop_subscription(framework_id)
    }

    /// Simulates a Mesos master failover (a new leader at the same address,
    /// with a new master id): every scheduler stream ends, outstanding
    /// offers are gone (no RESCIND: the new master never made them),
    /// frameworks are disconnected with no failover timer (as after a real
    /// failover, a framework that never comes back is orphaned, not
    /// removed), but agents keep their tasks, executors and unacknowledged
    /// status updates. A re-SUBSCRIBE with the framework id works and gets
    /// the pending updates again. Combine with
    /// [`EmulatorHandle::set_leadership`] to make the election take a while.
    pub fn master_failover(&self) {
        self.core.master_failover();
    }

    /// Delivers every unacknowledged in-flight status update again right
    /// now (a duplicate, exactly as a retry would resend it; the retry
    /// schedule is unchanged). Returns how many were sent.
    pub fn redeliver_updates(&self) -> usize {
        self.core.redeliver_updates()
    }

    /// Status updates held by the agents that the scheduler has not
    /// acknowledged yet (in flight or queued behind one per task).
    pub fn pending_updates(&self) -> usize {
        self.core.pending_updates()
    }

    /// Sends `signal` to the executor (or command task) `executor_id` of
    /// `framework_id` on agent `index`, as an agent or an operator would:
    /// `libc::SIGKILL` crashes it (TASK_FAILED `REASON_EXECUTOR_TERMINATED`
    /// for its unfinished tasks, FAILURE to the scheduler). Works for real
    /// processes and in-process launches alike. Returns whether it was
    /// running.
    pub fn signal_executor(
        &self,
        index: usize,
        framework_id: &str,
        executor_id: &str,
        signal: i32,
    ) -> bool {
        self.core
            .signal_executor(index, framework_id, executor_id, signal)
    }

    /// The tasks executor `executor_id` of `framework_id` on agent `index`
    /// runs now (not yet ended), in id order: what crashing it takes down.
    pub fn executor_tasks(
        &self,
        index: usize,
        framework_id: &str,
        executor_id: &str,
    ) -> Vec<String> {
        let st = self.core.lock();
        st.agents
            .get(index)
            .and_then(|a| {
                a.executors
                    .get(&(framework_id.to_owned(), executor_id.to_owned()))
            })
            .map(|e| e.tasks.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Simulates a restart of agent `index` with checkpointing: executor
    /// streams are cut and the executor API answers 503 ("recovering")
    /// until [`EmulatorHandle::finish_agent_recovery`]; tasks keep running.
    pub fn restart_agent(&self, index: usize) {
        self.core.restart_agent(index);
    }

    /// Ends a simulated agent restart; executors can re-subscribe.
    pub fn finish_agent_recovery(&self, index: usize) {
        self.core.finish_agent_recovery(index);
    }

    /// Executor UPDATE calls agent `index` refused while recovering.
    pub fn agent_refused_updates(&self, index: usize) -> u64 {
        self.core
            .lock()
            .agents
            .get(index)
            .map(|a| a.refused_updates)
            .unwrap_or(0)
    }

    /// Number of task/executor processes currently alive.
    pub fn live_processes(&self) -> usize {
        self.core.lock().live_processes
    }

    /// Stops serving and kills every task and executor process, waiting up
    /// to `process_reap_wait_max` for them to be reaped.
    pub async fn shutdown(mut self) {
        let process_reap_wait_max = Duration::from_secs(10);
        self.core.shutdown_all(process_reap_wait_max).await;
        self.stop_servers().await;
    }

    /// Stops the emulator like a crashed-and-restarting Mesos agent with
    /// checkpointing: state is checkpointed, streams close, servers stop,
    /// but executors of checkpointing frameworks keep running so that
    /// [`Emulator::start`] on the same work dir recovers them. Processes of
    /// other frameworks are killed.
    pub async fn stop_for_restart(mut self) {
        let doomed = {
            let mut st = self.core.lock();
            self.core.persist(&st);
            st.shutting_down = true;
            st.offers.clear();
            let keep: std::collections::BTreeSet<String> = st
                .frameworks
                .values()
                .filter(|f| self.core.config.checkpoint && f.info.checkpoint == Some(true))
                .map(|f| f.id.clone())
                .collect();
            for fw in st.frameworks.values_mut() {
                fw.sub = None;
            }
            let mut doomed = Vec::new();
            for a in st.agents.iter_mut() {
                for ((f, _), e) in a.executors.iter_mut() {
                    e.sub = None;
                    if !keep.contains(f) {
                        doomed.extend(e.process.clone());
                    }
                }
            }
            doomed
        };
        for p in doomed {
            p.signal(libc::SIGKILL);
        }
        self.stop_servers().await;
    }

    async fn stop_servers(&mut self) {
        self.finished = true;
        let graceful_wait_max = Duration::from_secs(5);
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for s in std::mem::take(&mut self.servers) {
            let abort = s.abort_handle();
            if tokio::time::timeout(graceful_wait_max, s).await.is_err() {
                abort.abort();
            }
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        let st = self.core.lock();
        for a in &st.agents {
            for e in a.executors.values() {
                e.signal(libc::SIGKILL);
            }
        }
    }
}

/// Blocking variant of [`run_from_args`] for callers without a tokio
/// runtime (e.g. the `kaon` CLI's `mesos-emulator` subcommand).
pub fn run_from_args_blocking<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Multi-threaded: task processes are tied (PR_SET_PDEATHSIG) to the
    // long-lived worker threads that spawn them.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_from_args(args))
}

/// Command-line options of `kaon mesos-emulator` / `kaon-mesos-emulator`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "kaon-mesos-emulator",
    about = "Mesos 1.11 master+agents emulator"
)]
pub struct Args {
    /// Master listen address.
    #[arg(long, default_value = "127.0.0.1:5050")]
    pub master: SocketAddr,
    /// Agent spec, repeatable: `ADDR;cpus=4;mem=8192;disk=100000;ports=31000-32000;attr.rack=r1`.
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// Sandbox root.
    #[arg(long, default_value = "/tmp/kaon-mesos-emulator")]
    pub work_dir: PathBuf,
    /// Path of kaon-executor.
    #[arg(long)]
    pub executor_path: Option<PathBuf>,
    /// Heartbeat interval in seconds.
    #[arg(long, default_value_t = 15.0)]
    pub heartbeat_secs: f64,
    /// Checkpoint agent state in the work dir and recover it on start;
    /// Ctrl-C then leaves checkpointed executors running for the next start.
    #[arg(long)]
    pub checkpoint: bool,
    /// Require framework authentication (HTTP Basic) with these
    /// credentials, a Mesos credentials JSON file
    /// (`{"credentials":[{"principal":"kaon","secret":"..."}]}`).
    #[arg(long)]
    pub credentials: Option<PathBuf>,
    /// Serve the master over HTTPS with this certificate (PEM; with
    /// `--tls-key`).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The master certificate's key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// Parses one `--agent` spec.
pub fn parse_agent_spec(spec: &str) -> Result<AgentConfig, EmulatorError> {
    let mut parts = spec.split(';');
    let addr: SocketAddr = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| EmulatorError::Args(format!("agent '{spec}': bad address: {e}")))?;
    let mut agent = AgentConfig {
        addr,
        hostname: None,
        resources: Vec::new(),
        attributes: Vec::new(),
    };
    for part in parts.filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            EmulatorError::Args(format!("agent '{spec}': '{part}' is not key=value"))
        })?;
        if let Some(name) = k.strip_prefix("attr.") {
            agent.attributes.push(Attribute::text(name, v));
        } else if k == "ports" {
            let (b, e) = v
                .split_once('-')
                .and_then(|(b, e)| Some((b.parse().ok()?, e.parse().ok()?)))
                .ok_or_else(|| EmulatorError::Args(format!("agent '{spec}': bad ports '{v}'")))?;
            agent.resources.push(Resource::ranges("ports", &[(b, e)]));
        } else {
            let n: f64 = v.parse().map_err(|_| {
                EmulatorError::Args(format!("agent '{spec}': bad number '{v}' for {k}"))
            })?;
            agent.resources.push(Resource::scalar(k, n));
        }
    }
    Ok(agent)
}

/// Runs the emulator until Ctrl-C, from command-line arguments (argv\[0\]
/// included). Used by `kaon mesos-emulator` and `kaon-mesos-emulator`.
pub async fn run_from_args<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::Parser as _;
    let args = Args::try_parse_from(args)?;
    let agents = if args.agents.is_empty() {
        vec![AgentConfig::loopback(4.0, 8192.0)]
    } else {
        args.agents
            .iter()
            .map(|s| parse_agent_spec(s))
            .collect::<Result<_, _>>()?
    };
    let config = EmulatorConfig {
        master_addr: args.master,
        hostname: args.master.ip().to_string(),
        agents,
        heartbeat_interval: Duration::from_secs_f64(args.heartbeat_secs.max(0.01)),
        work_dir: args.work_dir,
        executor_path: args.executor_path,
        checkpoint: args.checkpoint,
        credentials: match &args.credentials {
            Some(p) => read_credentials(p)?,
            None => Vec::new(),
        },
        master_tls: match (&args.tls_cert, &args.tls_key) {
            (Some(c), Some(k)) => Some((
                std::fs::read_to_string(c)
                    .map_err(|e| EmulatorError::Args(format!("--tls-cert {}: {e}", c.display())))?,
                std::fs::read_to_string(k)
                    .map_err(|e| EmulatorError::Args(format!("--tls-key {}: {e}", k.display())))?,
            )),
            _ => None,
        },
        ..EmulatorConfig::default()
    };
    let handle = Emulator::start(config).await?;
    println!("master {}", handle.master_url());
    for a in handle.agent_addrs() {
        println!("agent http://{a}");
    }
    tokio::signal::ctrl_c().await?;
    if args.checkpoint {
        handle.stop_for_restart().await;
    } else {
        handle.shutdown().await;
    }
    Ok(())
}
