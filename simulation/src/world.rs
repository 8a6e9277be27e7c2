//! The simulated world of one seed: N whole kaon nodes (openraft over a
//! `MemNetwork`, redb in memory, the leader's runtime with the pure
//! leader, the gRPC API handlers reached in-process), one Mesos emulator
//! whose executors are scripted, the clients, and the nemesis that injects
//! faults, all on one current-thread tokio runtime with paused time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use kaon_api::v1;
use kaon_api::v1::kaon_server::{Kaon, KaonServer};
use kaon_log::{
    Clock, Fate, MemNetwork, MemStorage, NodeConfig, RaftNode, Storage, TokioClock, Transport,
};
use kaon_mesos::transport::MesosTransport;
use kaon_mesos_emulator::scripted::{ExecutorExit, ScriptedLauncher};
use kaon_mesos_emulator::{AgentConfig, Emulator, EmulatorConfig, EmulatorHandle, IdSource};
use kaon_server::grpc::{KaonService, PeerChannel, ServiceConfig};
use kaon_server::log::RaftLog;
use kaon_server::runtime::{self, RuntimeConfig, RuntimeSlot};
use tonic::Request;

use crate::checks::Checks;
use crate::rng::Rng;
use crate::workload::{self, Act, Ledger, Scripted, SharedLedger, Workflow};

/// Virtual wall-clock start of every run: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: i64 = 1_767_225_600_000;

/// The API service of one node.
pub type Svc = KaonService<RaftLog>;

/// How a run is shaped.
#[derive(Debug, Clone)]
pub struct Options {
    /// Nodes in the cluster (3 or 5).
    pub nodes: usize,
    /// How long clients act and faults are injected (virtual time).
    pub fault_span: Duration,
    /// Bound on the time every run needs to end once faults heal.
    pub settle_max: Duration,
    /// Inject faults at all.
    pub faults: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            fault_span: Duration::from_secs(90),
            settle_max: Duration::from_secs(600),
            faults: true,
        }
    }
}

/// The node's wall clock: virtual time plus an offset the nemesis jumps.
#[derive(Debug, Clone)]
struct SimClock {
    base: TokioClock,
    offset_ms: Arc<AtomicI64>,
}

impl Clock for SimClock {
    fn now_unix_ms(&self) -> i64 {
        self.base.now_unix_ms() + self.offset_ms.load(Ordering::Relaxed)
    }
}

/// A running node's handles.
struct Up {
    log: Arc<RaftLog>,
    service: Arc<Svc>,
    slot: RuntimeSlot,
    supervisor: tokio::task::JoinHandle<()>,
}

/// One node: its disk and clock survive crashes.
struct Node {
    id: u64,
    raft_addr: SocketAddr,
    api_addr: String,
    storage: MemStorage,
    offset_ms: Arc<AtomicI64>,
    up: Option<Up>,
    /// The previous life's log and API (to tell what still holds a
    /// crashed node).
    last: std::sync::Weak<RaftLog>,
    last_svc: std::sync::Weak<Svc>,
}

/// In-process gRPC between nodes: API address -> service, and the tasks
/// serving its connections (aborted when the node crashes).
#[derive(Default)]
struct Apis {
    services: BTreeMap<String, Arc<Svc>>,
    serving: BTreeMap<String, Vec<tokio::task::AbortHandle>>,
}

type SharedApis = Arc<Mutex<Apis>>;

/// A channel to `addr` that stays in this process (a duplex pipe served by
/// the target node's API); refused when no node serves there.
fn peer_channel(apis: SharedApis) -> PeerChannel {
    Arc::new(move |addr: &str| {
        let apis = apis.clone();
        let addr = addr.to_string();
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let (apis, addr) = (apis.clone(), addr.clone());
                async move {
                    let svc = apis.lock().unwrap().services.get(&addr).cloned();
                    let Some(svc) = svc else {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            format!("{addr}: no node serves here"),
                        ));
                    };
                    let (client, server) = tokio::io::duplex(1 << 16);
                    let task = tokio::spawn(async move {
                        let _ = tonic::transport::Server::builder()
                            .add_service(KaonServer::from_arc(svc))
                            .serve_with_incoming(tokio_stream::once(Ok::<_, std::io::Error>(
                                server,
                            )))
                            .await;
                    });
                    apis.lock()
                        .unwrap()
                        .serving
                        .entry(addr)
                        .or_default()
                        .push(task.abort_handle());
                    Ok(hyper_util::rt::TokioIo::new(client))
                }
            }))
    })
}

/// What one seed's run produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Invariant violations (empty: the run passed).
    pub violations: Vec<String>,
    /// SHA-256 of the committed event log (hex): same seed, same trace.
    pub trace: String,
    /// Events committed.
    pub events: u64,
    /// Runs at the end.
    pub runs: u64,
    /// Submissions acknowledged to clients.
    pub acknowledged: u64,
    /// Task launches the scripted executors ran.
    pub executions: u64,
    /// Virtual time the run took, ms.
    pub virtual_ms: u64,
}

/// The world of one seed.
pub struct World {
    seed: u64,
    rng: Rng,
    opts: Options,
    net: MemNetwork,
    /// Nodes the scripts cut off at a launch, for the world to crash.
    freeze: Arc<Mutex<Option<Vec<usize>>>>,
    /// The scripts may cut nodes off (during the fault span only).
    nemesis_on: Arc<std::sync::atomic::AtomicBool>,
    emu: EmulatorHandle,
    launcher: Arc<ScriptedLauncher>,
    nodes: Vec<Node>,
    apis: SharedApis,
    ledger: SharedLedger,
    /// Logs of the nodes that are up (the scripts check launches against
    /// them).
    up_logs: Arc<Mutex<BTreeMap<u64, Arc<RaftLog>>>>,
    clock: TokioClock,
    checks: Checks,
    faults: BTreeMap<&'static str, u64>,
    workflows: Vec<Workflow>,
    /// Acknowledged submits and retries: key -> run id.
    acked: Arc<Mutex<BTreeMap<String, u64>>>,
    /// The workflow each submit key was first sent with.
    key_workflow: BTreeMap<String, usize>,
    /// When the cron workflow's registration was acknowledged (ms).
    registered_cron: Arc<Mutex<Option<i64>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    started: tokio::time::Instant,
}

impl World {
    /// Builds the cluster and Mesos for `seed`.
    pub async fn new(seed: u64, opts: Options) -> anyhow::Result<World> {
        let mut rng = Rng::new(seed);
        let started = tokio::time::Instant::now();
        let clock = TokioClock::starting_at(EPOCH_MS);
        let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
        let up_logs: Arc<Mutex<BTreeMap<u64, Arc<RaftLog>>>> = Default::default();
        let net = MemNetwork::new();
        let freeze: Arc<Mutex<Option<Vec<usize>>>> = Default::default();
        // Per seed: how often a launch is the moment the nemesis takes the
        // quorum away (percent), as issue 8's reproduction does by hand.
        let freeze_percent = if opts.faults {
            *rng.pick(&[0, 0, 5, 15])
        } else {
            0
        };
        let nemesis_on = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let script = {
            let (ledger, up_logs) = (ledger.clone(), up_logs.clone());
            let (net, freeze, on) = (net.clone(), freeze.clone(), nemesis_on.clone());
            move |task: &kaon_mesos::types::TaskInfo| {
                let id = task.task_id.value.clone();
                let spec = workload::step_spec(task);
                let (scripted, script) = workload::script_for(seed, &id, &spec);
                // The step is starting and its TASK_RUNNING is not yet
                // committed: cut the leader and one follower off at once
                // (the world then crashes them and restarts them later), so
                // the step may end while no leader listens.
                if on.load(Ordering::Relaxed)
                    && crate::rng::hash(seed ^ 0x6672_6565_7a65, &id) % 100 < freeze_percent
                {
                    let mut f = freeze.lock().unwrap();
                    if f.is_none() {
                        let logs = up_logs.lock().unwrap();
                        let leader = logs
                            .iter()
                            .find(|(_, l)| l.node().status().state == "Leader")
                            .map(|(id, _)| *id);
                        if let Some(leader) = leader
                            && let Some(other) = logs.keys().copied().find(|&n| n != leader)
                        {
                            net.isolate(leader);
                            net.isolate(other);
                            *f = Some(vec![leader as usize - 1, other as usize - 1]);
                        }
                    }
                }
                let mut l = ledger.lock().unwrap();
                *l.started.entry(id.clone()).or_default() += 1;
                let crashes = matches!(scripted, Scripted::Crash);
                l.scripted.insert(id.clone(), scripted);
                l.agent.insert(id.clone(), task.agent_id.value.clone());
                let executor = (
                    task.agent_id.value.clone(),
                    task.executor
                        .as_ref()
                        .map(|e| e.executor_id.value.clone())
                        .unwrap_or_default(),
                );
                if crashes {
                    l.crashed_executors.insert(executor.clone());
                }
                l.executor.insert(id.clone(), executor);
                // Intent before effect (brief 4.3): some replica must hold
                // the committed intent of a task Mesos runs.
                if !intent_committed(&up_logs.lock().unwrap(), &id) {
                    l.launched_without_intent.push(id);
                }
                script
            }
        };
        let launcher = Arc::new(ScriptedLauncher::new(script));
        let agents = (0..3)
            .map(|i| AgentConfig {
                addr: SocketAddr::from(([10, 0, 9, 10 + i as u8], 5051)),
                hostname: Some(format!("agent-{i}")),
                ..AgentConfig::loopback(16.0, 65_536.0)
            })
            .collect();
        let emu = Emulator::start_in_process(EmulatorConfig {
            master_addr: SocketAddr::from(([10, 0, 9, 1], 5050)),
            hostname: "mesos-master".into(),
            agents,
            agent_sockets: false,
            ids: IdSource::Seeded(seed),
            clock: kaon_mesos_emulator::Clock::from_tokio(
                UNIX_EPOCH + Duration::from_millis(EPOCH_MS as u64),
                started,
            ),
            launcher: launcher.clone(),
            work_dir: PathBuf::from("/nonexistent/kaon-simulation"),
            allocation_interval: Duration::from_millis(200),
            ..EmulatorConfig::default()
        })
        .await?;
        let n = opts.nodes as u64;
        let nodes = (1..=n)
            .map(|id| Node {
                id,
                raft_addr: SocketAddr::from(([10, 0, 0, id as u8], 7071)),
                api_addr: format!("10.0.0.{id}:7070"),
                storage: MemStorage::new(),
                offset_ms: Arc::new(AtomicI64::new(0)),
                up: None,
                last: std::sync::Weak::new(),
                last_svc: std::sync::Weak::new(),
            })
            .collect();
        let workflows = workload::workflows(&mut rng);
        // A workload kaon refuses would only test the retry loop.
        for w in &workflows {
            if let Err(errs) = kaon_core::compile_source(&w.spec, &kaon_core::Limits::default()) {
                let errs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
                anyhow::bail!(
                    "the workload's {} spec is invalid: {}",
                    w.name,
                    errs.join("; ")
                );
            }
        }
        let mut w = World {
            seed,
            rng,
            opts,
            net,
            freeze,
            nemesis_on,
            emu,
            launcher,
            nodes,
            apis: Default::default(),
            ledger,
            up_logs,
            clock,
            checks: Checks::default(),
            faults: BTreeMap::new(),
            workflows,
            acked: Default::default(),
            key_workflow: BTreeMap::new(),
            registered_cron: Default::default(),
            clients: Vec::new(),
            started,
        };
        for i in 0..w.nodes.len() {
            w.start_node(i).await?;
        }
        let members: BTreeMap<u64, String> = w
            .nodes
            .iter()
            .map(|n| (n.id, n.raft_addr.to_string()))
            .collect();
        w.nodes[0]
            .up
            .as_ref()
            .expect("started")
            .log
            .node()
            .initialize_with(members)
            .await?;
        Ok(w)
    }

    async fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let peers: BTreeMap<u64, String> = self
            .nodes
            .iter()
            .filter(|n| n.id != self.nodes[i].id)
            .map(|n| (n.id, n.raft_addr.to_string()))
            .collect();
        let node = &self.nodes[i];
        let clock: Arc<dyn Clock> = Arc::new(SimClock {
            base: self.clock,
            offset_ms: node.offset_ms.clone(),
        });
        let mut c = NodeConfig::new(
            node.id,
            node.raft_addr,
            PathBuf::from(format!("/sim/n{}", node.id)),
        );
        c.peers = peers;
        c.transport = Transport::Mem(self.net.clone());
        c.storage = Storage::Memory(node.storage.clone());
        c.clock = clock.clone();
        // Small enough that runs build snapshots and purge the log.
        c.snapshot_every_entries = 300;
        c.keep_entries_after_snapshot = 50;
        // A node whose disk is still held by its previous life (tasks
        // that have not noticed the crash yet) retries shortly.
        let mut tries = 0;
        let raft = loop {
            match RaftNode::start(c.clone()).await {
                Ok(r) => break r,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => anyhow::bail!(
                    "node {} cannot restart: {e} (its previous life is still held {} times, its API {} times; disk {:?})",
                    node.id,
                    node.last.strong_count(),
                    node.last_svc.strong_count(),
                    node.storage
                ),
            }
        };
        let log = Arc::new(RaftLog::new(raft));
        let mut rc = RuntimeConfig::new(self.emu.master_url(), "kaon-executor");
        // Scripted executors do not heartbeat.
        rc.executor_silence_ms_max = None;
        rc.mesos_transport = MesosTransport::in_process(self.emu.master_router());
        rc.clock = clock;
        rc.api_addr = Some(node.api_addr.clone());
        rc.limits.reliable_update_wait_ms = 120_000;
        let (slot, supervisor) = runtime::supervise_task(log.clone(), rc);
        let service = Arc::new(KaonService::new(
            log.clone(),
            slot.clone(),
            ServiceConfig {
                mesos_master: None,
                peer_channel: Some(peer_channel(self.apis.clone())),
                local_sandboxes: None,
                auth: None,
                tls: None,
                mesos_https: None,
            },
        ));
        self.apis
            .lock()
            .unwrap()
            .services
            .insert(node.api_addr.clone(), service.clone());
        self.up_logs.lock().unwrap().insert(node.id, log.clone());
        self.nodes[i].up = Some(Up {
            log,
            service,
            slot,
            supervisor,
        });
        Ok(())
    }

    /// Crashes node `i`: its Raft, runtime and API stop at once; what it
    /// wrote durably stays on its (memory) disk.
    async fn crash_node(&mut self, i: usize) {
        let Some(up) = self.nodes[i].up.take() else {
            return;
        };
        let addr = self.nodes[i].api_addr.clone();
        {
            let mut apis = self.apis.lock().unwrap();
            apis.services.remove(&addr);
            for t in apis.serving.remove(&addr).unwrap_or_default() {
                t.abort();
            }
        }
        self.up_logs.lock().unwrap().remove(&self.nodes[i].id);
        // A crash: nothing of this node runs on, wherever it was.
        up.supervisor.abort();
        if let Some(rt) = up.slot.write().await.take() {
            rt.abort();
        }
        up.log.node().stop().await;
        // The process is gone: its disk belongs to the next life, whatever
        // of the old one a client call still holds.
        self.nodes[i].storage.crash();
        self.nodes[i].last = Arc::downgrade(&up.log);
        self.nodes[i].last_svc = Arc::downgrade(&up.service);
    }

    fn up_indexes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up.is_some())
            .collect()
    }

    /// A random node that is up (clients may talk to any node).
    fn any_service(&mut self) -> Option<Arc<Svc>> {
        let up = self.up_indexes();
        if up.is_empty() {
            return None;
        }
        let i = *self.rng.pick(&up);
        self.nodes[i].up.as_ref().map(|u| u.service.clone())
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    fn fault(&mut self, kind: &'static str) {
        *self.faults.entry(kind).or_default() += 1;
    }

    /// The leader most nodes name, if one is up.
    fn leader_index(&self) -> Option<usize> {
        self.up_indexes().into_iter().find(|&i| {
            let st = self.nodes[i].up.as_ref().unwrap().log.node().status();
            st.state == "Leader"
        })
    }

    // ----- the run ------------------------------------------------------------

    /// Runs the seed: clients and faults for the fault span, then healing
    /// and settling, with the invariants checked throughout and at the end.
    pub async fn run(mut self) -> Report {
        let mut plan_rng = self.rng.fork();
        let acts = workload::acts(&mut plan_rng, &self.workflows, self.opts.fault_span);
        let mut acts = acts.into_iter().peekable();
        let mut fault_rng = self.rng.fork();
        let fault_end = self.started + self.opts.fault_span;
        let mut next_fault = self.started + Duration::from_millis(fault_rng.range(2_000, 6_000));
        let mut heals: Vec<(tokio::time::Instant, Heal)> = Vec::new();
        let tick = Duration::from_millis(250);
        loop {
            let now = tokio::time::Instant::now();
            if now >= fault_end {
                break;
            }
            while let Some((at, _)) = acts.peek() {
                if self.started + *at > now {
                    break;
                }
                let (_, act) = acts.next().expect("peeked");
                self.act(act);
            }
            let frozen = self.freeze.lock().unwrap().take();
            if let Some(nodes) = frozen {
                self.fault("quorum lost at a launch");
                for &i in &nodes {
                    self.crash_node(i).await;
                    heals.push((
                        now + Duration::from_millis(fault_rng.range(1_000, 5_000)),
                        Heal::Restart(i),
                    ));
                }
                self.net.heal();
            }
            if self.opts.faults && now >= next_fault {
                self.inject(&mut fault_rng, &mut heals).await;
                next_fault = now + Duration::from_millis(fault_rng.range(1_500, 7_000));
            }
            let due: Vec<Heal> = heals
                .iter()
                .filter(|(t, _)| *t <= now)
                .map(|(_, h)| h.clone())
                .collect();
            heals.retain(|(t, _)| *t > now);
            for h in due {
                self.heal(h).await;
            }
            self.observe();
            tokio::time::sleep(tick).await;
        }
        // Heal everything: links, disks, clocks, crashed nodes.
        self.nemesis_on.store(false, Ordering::Relaxed);
        let frozen = self.freeze.lock().unwrap().take();
        if let Some(nodes) = frozen {
            for i in nodes {
                self.crash_node(i).await;
                heals.push((tokio::time::Instant::now(), Heal::Restart(i)));
            }
        }
        for (_, h) in std::mem::take(&mut heals) {
            self.heal(h).await;
        }
        self.net.set_filter(None);
        self.net.heal();
        for i in 0..self.nodes.len() {
            self.nodes[i].storage.set_latency(Duration::ZERO);
            self.nodes[i].offset_ms.store(0, Ordering::Relaxed);
            if self.nodes[i].up.is_none()
                && let Err(e) = self.start_node(i).await
            {
                self.checks.violation(format!("after healing: {e}"));
            }
        }
        let healed = tokio::time::Instant::now();
        // Every run ends within the bound once faults heal (and clients
        // are done: their retries need a leader too).
        let settle_end = healed + self.opts.settle_max;
        loop {
            self.observe();
            let clients_done = self.clients.iter().all(|c| c.is_finished());
            if clients_done && self.all_runs_ended() && self.converged() {
                break;
            }
            if tokio::time::Instant::now() >= settle_end {
                break;
            }
            tokio::time::sleep(tick).await;
        }
        self.finish(healed).await
    }

    /// Whether every node that is up holds every run as ended.
    fn all_runs_ended(&self) -> bool {
        self.up_indexes().iter().all(|&i| {
            self.nodes[i]
                .up
                .as_ref()
                .unwrap()
                .log
                .node()
                .with_state(|s| s.active_runs.is_empty())
        })
    }

    /// Whether every node applied the same number of events.
    fn converged(&self) -> bool {
        let idx: BTreeSet<u64> = self
            .up_indexes()
            .iter()
            .map(|&i| {
                self.nodes[i]
                    .up
                    .as_ref()
                    .unwrap()
                    .log
                    .node()
                    .with_state(|s| s.applied_index)
            })
            .collect();
        idx.len() == 1
    }

    fn observe(&mut self) {
        let logs: Vec<(u64, Arc<RaftLog>)> = self
            .nodes
            .iter()
            .filter_map(|n| n.up.as_ref().map(|u| (n.id, u.log.clone())))
            .collect();
        self.checks.observe(&logs);
    }

    // ----- clients ------------------------------------------------------------

    fn act(&mut self, act: Act) {
        let until = self.started + self.opts.fault_span + self.opts.settle_max / 2;
        match act {
            Act::Submit { workflow, key } => {
                let w = *self.key_workflow.entry(key.clone()).or_insert(workflow);
                let spec = self.workflows[w].spec.clone();
                let (acked, apis) = (self.acked.clone(), self.client_apis());
                let mut rng = self.rng.fork();
                self.clients.push(tokio::spawn(async move {
                    let req = v1::SubmitRunRequest {
                        workflow: Some(v1::submit_run_request::Workflow::InlineSpec(spec)),
                        params_json: Default::default(),
                        idempotency_key: key.clone(),
                    };
                    if let Some(r) = retrying(&apis, &mut rng, until, |svc| {
                        let req = req.clone();
                        async move { svc.submit_run(Request::new(req)).await }
                    })
                    .await
                    {
                        let mut a = acked.lock().unwrap();
                        if let Some(&old) = a.get(&key) {
                            assert_eq!(old, r.run_id, "a retried submit returned another run");
                        }
                        a.insert(key, r.run_id);
                    }
                }));
            }
            Act::Cancel { key } => {
                let Some(run_id) = self.acked.lock().unwrap().get(&key).copied() else {
                    return;
                };
                let Some(svc) = self.any_service() else {
                    return;
                };
                self.clients.push(tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        svc.cancel_run(Request::new(v1::CancelRunRequest {
                            run_id,
                            reason: "simulated client".into(),
                        })),
                    )
                    .await;
                }));
            }
            Act::Retry { key, retry_key } => {
                let Some(run_id) = self.acked.lock().unwrap().get(&key).copied() else {
                    return;
                };
                let (acked, apis) = (self.acked.clone(), self.client_apis());
                let mut rng = self.rng.fork();
                self.clients.push(tokio::spawn(async move {
                    let req = v1::RetryRunRequest {
                        run_id,
                        idempotency_key: retry_key.clone(),
                    };
                    let r = retrying(&apis, &mut rng, until, |svc| {
                        let req = req.clone();
                        async move { svc.retry_run(Request::new(req)).await }
                    })
                    .await;
                    if let Some(r) = r {
                        acked.lock().unwrap().insert(retry_key, r.run_id);
                    }
                }));
            }
            Act::Register { workflow } => {
                let spec = self.workflows[workflow].spec.clone();
                let (registered, apis, clock) =
                    (self.registered_cron.clone(), self.client_apis(), self.clock);
                let mut rng = self.rng.fork();
                self.clients.push(tokio::spawn(async move {
                    let req = v1::RegisterWorkflowRequest { spec };
                    if retrying(&apis, &mut rng, until, |svc| {
                        let req = req.clone();
                        async move { svc.register_workflow(Request::new(req)).await }
                    })
                    .await
                    .is_some()
                    {
                        *registered.lock().unwrap() = Some(clock.now_unix_ms());
                    }
                }));
            }
        }
    }

    fn client_apis(&self) -> SharedApis {
        self.apis.clone()
    }

    // ----- the nemesis ----------------------------------------------------------

    async fn inject(&mut self, rng: &mut Rng, heals: &mut Vec<(tokio::time::Instant, Heal)>) {
        let now = tokio::time::Instant::now();
        let back = |rng: &mut Rng, lo, hi| now + Duration::from_millis(rng.range(lo, hi));
        let n = self.nodes.len();
        let down = n - self.up_indexes().len();
        match rng.below(15) {
            0 | 1 => {
                // Crash the leader (or any node), restart it later.
                let i = match self.leader_index() {
                    Some(l) if rng.chance(70) => l,
                    _ => rng.below(n as u64) as usize,
                };
                if self.nodes[i].up.is_some() && down <= n / 2 {
                    self.fault("node crash");
                    self.crash_node(i).await;
                    heals.push((back(rng, 500, 8_000), Heal::Restart(i)));
                }
            }
            2 => {
                // Isolate the leader.
                if let Some(l) = self.leader_index() {
                    self.fault("leader isolated");
                    let id = self.nodes[l].id;
                    self.net.isolate(id);
                    heals.push((back(rng, 1_000, 8_000), Heal::Network));
                }
            }
            3 => {
                // A symmetric partition of a random minority.
                let id = self.nodes[rng.below(n as u64) as usize].id;
                let others: Vec<u64> = self
                    .nodes
                    .iter()
                    .map(|x| x.id)
                    .filter(|&x| x != id)
                    .collect();
                self.fault("partition");
                self.net.partition(&[id], &others);
                heals.push((back(rng, 1_000, 6_000), Heal::Network));
            }
            4 => {
                // An asymmetric cut: one direction of one link.
                let a = self.nodes[rng.below(n as u64) as usize].id;
                let b = self.nodes[rng.below(n as u64) as usize].id;
                if a != b {
                    self.fault("one-way link cut");
                    self.net.cut(a, b);
                    heals.push((back(rng, 1_000, 6_000), Heal::Network));
                }
            }
            5 => {
                // Lossy, slow, reordering, duplicating links for a while.
                let (loss, delay, dup) = (rng.range(1, 20), rng.range(5, 40), rng.range(0, 10));
                let max_ms = rng.range(5, 150);
                let mut frng = rng.fork();
                let f = Arc::new(Mutex::new(move |_m: &kaon_log::mem_network::Message| {
                    let r = frng.below(100);
                    if r < loss {
                        Fate::Drop
                    } else if r < loss + delay {
                        Fate::Delay(Duration::from_millis(frng.range(1, max_ms)))
                    } else if r < loss + delay + dup {
                        Fate::Duplicate(Duration::from_millis(frng.range(1, max_ms)))
                    } else {
                        Fate::Deliver
                    }
                }));
                self.fault("message loss, delay and duplication");
                self.net
                    .set_filter(Some(Arc::new(move |m| (f.lock().unwrap())(m))));
                heals.push((back(rng, 2_000, 10_000), Heal::Filter));
            }
            6 => {
                let i = rng.below(n as u64) as usize;
                self.fault("slow disk");
                self.nodes[i]
                    .storage
                    .set_latency(Duration::from_millis(rng.range(5, 80)));
                heals.push((back(rng, 2_000, 10_000), Heal::Disk(i)));
            }
            7 => {
                if let Some(l) = self.leader_index() {
                    let jump = rng.range(1, 30_000) as i64 * if rng.chance(50) { 1 } else { -1 };
                    self.fault("leader clock jump");
                    self.nodes[l].offset_ms.store(jump, Ordering::Relaxed);
                    heals.push((back(rng, 2_000, 10_000), Heal::Clock(l)));
                }
            }
            8 => {
                let running = self.launcher.running();
                if !running.is_empty() {
                    let r = &running[rng.below(running.len() as u64) as usize];
                    self.fault("executor crash");
                    // Every step the executor runs goes down with it.
                    let tasks = self
                        .emu
                        .executor_tasks(r.agent, &r.framework_id, &r.executor_id);
                    self.launcher.crash_executor(
                        r.agent,
                        &r.framework_id,
                        &r.executor_id,
                        ExecutorExit::Code(137),
                    );
                    let mut l = self.ledger.lock().unwrap();
                    for t in &tasks {
                        l_fault(&mut l, t);
                    }
                }
            }
            9 => {
                self.fault("Mesos master failover");
                self.emu.master_failover();
            }
            10 => {
                if let Some(fw) = self.framework_id() {
                    self.fault("Mesos stream drop");
                    self.emu.drop_subscription(&fw);
                }
            }
            11 => {
                self.fault("redelivered updates");
                self.emu.redeliver_updates();
            }
            12 => {
                // Lose one agent for good (at most one of three).
                if !self.faults.contains_key("agent lost") {
                    let i = rng.below(3) as usize;
                    self.fault("agent lost");
                    let agent = self.emu.agent_ids().get(i).cloned().unwrap_or_default();
                    {
                        let mut l = self.ledger.lock().unwrap();
                        let on: Vec<String> = l
                            .agent
                            .iter()
                            .filter(|(_, a)| **a == agent)
                            .map(|(t, _)| t.clone())
                            .collect();
                        for t in on {
                            l_fault(&mut l, &t);
                        }
                        l.lost_agents.insert(agent);
                    }
                    self.emu.lose_agent(i);
                }
            }
            13 => {
                // Crash a follower.
                let followers: Vec<usize> = self
                    .up_indexes()
                    .into_iter()
                    .filter(|&i| Some(i) != self.leader_index())
                    .collect();
                if !followers.is_empty() && down == 0 {
                    let i = *rng.pick(&followers);
                    self.fault("follower crash");
                    self.crash_node(i).await;
                    heals.push((back(rng, 500, 8_000), Heal::Restart(i)));
                }
            }
            _ => {
                // Lose quorum for a while: crash a majority.
                if down == 0 && rng.chance(50) {
                    self.fault("quorum lost");
                    let k = n / 2 + 1;
                    for i in 0..k {
                        self.crash_node(i).await;
                        heals.push((back(rng, 1_000, 6_000), Heal::Restart(i)));
                    }
                }
            }
        }
    }

    fn framework_id(&self) -> Option<String> {
        self.up_indexes().first().and_then(|&i| {
            self.nodes[i]
                .up
                .as_ref()
                .unwrap()
                .log
                .node()
                .with_state(|s| s.framework_id.clone())
        })
    }

    async fn heal(&mut self, h: Heal) {
        match h {
            Heal::Restart(i) => {
                if self.nodes[i].up.is_none()
                    && let Err(e) = self.start_node(i).await
                {
                    self.checks.violation(format!("restart: {e}"));
                }
            }
            Heal::Network => self.net.heal(),
            Heal::Filter => self.net.set_filter(None),
            Heal::Disk(i) => self.nodes[i].storage.set_latency(Duration::ZERO),
            Heal::Clock(i) => self.nodes[i].offset_ms.store(0, Ordering::Relaxed),
        }
    }

    // ----- the end ---------------------------------------------------------------

    async fn finish(mut self, healed: tokio::time::Instant) -> Report {
        for c in std::mem::take(&mut self.clients) {
            c.abort();
        }
        self.observe();
        let logs: Vec<(u64, Arc<RaftLog>)> = self
            .nodes
            .iter()
            .filter_map(|n| n.up.as_ref().map(|u| (n.id, u.log.clone())))
            .collect();
        let acked = self.acked.lock().unwrap().clone();
        let registered = *self.registered_cron.lock().unwrap();
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap());
        let settled_in = tokio::time::Instant::now() - healed;
        if let Some(run) = std::env::var("KAON_SIM_DUMP_RUN")
            .ok()
            .and_then(|r| r.parse::<u64>().ok())
        {
            for e in self.checks.reference() {
                let mine = match &e.body {
                    Some(kaon_core::events::Body::RunSubmitted(_)) => e.index == run,
                    Some(b) => format!("{b:?}").contains(&format!("run_id: {run},")),
                    None => false,
                };
                if mine {
                    eprintln!("{} @{}: {:?}", e.index, e.time_unix_ms - EPOCH_MS, e.body);
                }
            }
        }
        let mut checks = std::mem::take(&mut self.checks);
        let summary = checks.finish(
            &logs,
            &ledger,
            &acked,
            registered,
            self.now_ms(),
            settled_in,
            self.opts.settle_max,
        );
        let report = Report {
            seed: self.seed,
            faults: self.faults.clone(),
            violations: checks.violations.clone(),
            trace: summary.trace,
            events: summary.events,
            runs: summary.runs,
            acknowledged: acked.len() as u64,
            executions: ledger.started.values().map(|&n| u64::from(n)).sum(),
            virtual_ms: (tokio::time::Instant::now() - self.started).as_millis() as u64,
        };
        for i in 0..self.nodes.len() {
            self.crash_node(i).await;
        }
        self.emu.shutdown().await;
        report
    }
}

/// Marks task `t` as hit by a platform fault (its loss is no surprise).
fn l_fault(l: &mut Ledger, t: &str) {
    l.faulted.insert(t.to_string());
}

/// What undoes a fault.
#[derive(Debug, Clone)]
enum Heal {
    Restart(usize),
    Network,
    Filter,
    Disk(usize),
    Clock(usize),
}

/// Whether any replica in `logs` holds the committed intent of task `id`.
fn intent_committed(logs: &BTreeMap<u64, Arc<RaftLog>>, id: &str) -> bool {
    let Some((run, inst, attempt)) = kaon_core::ids::parse_task_id(id) else {
        return false;
    };
    logs.values().any(|l| {
        l.node().with_state(|s| {
            s.run(run)
                .and_then(|r| r.instances.get(inst as usize))
                .is_some_and(|i| i.attempts.iter().any(|a| a.number == attempt))
        })
    })
}

/// Calls `call` on random up nodes until it succeeds or `until` passes,
/// as a client with a deadline per call and backoff would.
async fn retrying<T, F, Fut>(
    apis: &SharedApis,
    rng: &mut Rng,
    until: tokio::time::Instant,
    call: F,
) -> Option<T>
where
    F: Fn(Arc<Svc>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    while tokio::time::Instant::now() < until {
        let svcs: Vec<Arc<Svc>> = apis.lock().unwrap().services.values().cloned().collect();
        if !svcs.is_empty() {
            let svc = svcs[rng.below(svcs.len() as u64) as usize].clone();
            match tokio::time::timeout(Duration::from_secs(5), call(svc)).await {
                Ok(Ok(r)) => return Some(r.into_inner()),
                Ok(Err(s)) if s.code() == tonic::Code::FailedPrecondition => return None,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(100, 600))).await;
    }
    None
}
