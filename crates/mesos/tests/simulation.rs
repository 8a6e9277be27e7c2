//! The emulator as a simulation would use it: no socket anywhere (the
//! master and the agents are reached only through their routers), scripted
//! in-process executors behind the launcher seam, seeded ids, a wall clock
//! derived from tokio time, a current_thread runtime on paused time, and
//! the real scheduler driver over the in-process transport.

use kaon_mesos::driver::{Driver, DriverConfig, DriverEvent, DriverHandle};
use kaon_mesos::executor::{ExecutorMessage, StepResult, StepSpec, executor_info};
use kaon_mesos::transport::{HttpRequest, HttpTransport as _, InProcessTransport, MesosTransport};
use kaon_mesos::types::scheduler::Operation;
use kaon_mesos::types::{B64, FrameworkInfo, Id, Offer, Resource, TaskInfo, TaskState, TaskStatus};
use kaon_mesos_emulator::scripted::{ExecutorExit, Progress, Script, ScriptedLauncher};
use kaon_mesos_emulator::{
    AgentConfig, Clock, Emulator, EmulatorConfig, EmulatorHandle, IdSource, Leadership,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc::Receiver;
use tokio::time::Instant;

/// Longest (virtual) time any single wait may take.
const WAIT_MAX: Duration = Duration::from_secs(300);

/// Wall-clock origin of the simulated clock.
fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn resources(cpus: f64, mem: f64) -> Vec<Resource> {
    vec![Resource::scalar("cpus", cpus), Resource::scalar("mem", mem)]
}

fn agent(addr: SocketAddr, hostname: &str) -> AgentConfig {
    AgentConfig {
        addr,
        hostname: Some(hostname.into()),
        ..AgentConfig::loopback(8.0, 16384.0)
    }
}

/// A simulated cluster's emulator config: no sockets, seeded ids, the
/// tokio-derived clock, scripted executors, Mesos's default timings.
fn sim_config(
    work_dir: &std::path::Path,
    seed: u64,
    launcher: Arc<ScriptedLauncher>,
    master: SocketAddr,
    agents: Vec<AgentConfig>,
) -> EmulatorConfig {
    EmulatorConfig {
        master_addr: master,
        hostname: "master-1".into(),
        agents,
        work_dir: work_dir.to_path_buf(),
        agent_sockets: false,
        ids: IdSource::Seeded(seed),
        clock: Clock::from_tokio(epoch(), Instant::now()),
        launcher,
        ..EmulatorConfig::default()
    }
}

fn framework(failover_timeout: f64) -> FrameworkInfo {
    FrameworkInfo {
        user: "kaon".into(),
        name: "kaon-sim".into(),
        failover_timeout: Some(failover_timeout),
        ..Default::default()
    }
}

fn driver(emu: &EmulatorHandle, info: FrameworkInfo) -> (DriverHandle, Receiver<DriverEvent>) {
    let mut c = DriverConfig::new(emu.master_url(), info);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(500);
    c.transport = MesosTransport::in_process(emu.master_router());
    Driver::subscribe(c)
}

/// A kaon step task with its own kaon-executor.
fn step_task(name: &str, offer: &Offer) -> TaskInfo {
    let spec = StepSpec {
        shell: Some(format!("run {name}")),
        ..Default::default()
    };
    TaskInfo {
        name: name.into(),
        task_id: Id::new(name),
        agent_id: offer.agent_id.clone(),
        resources: resources(0.5, 64.0),
        executor: Some(executor_info(
            &format!("exec-{name}"),
            "kaon-executor",
            resources(0.1, 32.0),
        )),
        command: None,
        kill_policy: None,
        data: Some(B64(serde_json::to_vec(&spec).unwrap())),
        labels: None,
    }
}

/// The scripts of the scenarios, by task name.
fn script_for(task: &TaskInfo) -> Script {
    if task.command.is_none() {
        let spec: StepSpec = serde_json::from_slice(&task.data.as_ref().unwrap().0).unwrap();
        assert_eq!(
            spec.shell.as_deref(),
            Some(format!("run {}", task.name).as_str())
        );
    }
    let secs = Duration::from_secs;
    match task.name.as_str() {
        "cmd-ok" => Script::finish(secs(2), serde_json::Value::Null),
        "cmd-fail" => Script::fail(secs(2), 3),
        "stubborn" => Script::hang().ignoring_sigterm(),
        "ok-1" => Script::finish(secs(5), serde_json::json!({"loss": 0.25}))
            .with_progress(secs(1), Progress::Percent(50.0))
            .with_progress(secs(2), Progress::Status("half way".into())),
        "ok-2" => Script::finish(secs(3), serde_json::json!({"n": 2})),
        "fail" => Script::fail(secs(2), 3),
        "crash" => Script::crash(secs(4), ExecutorExit::Code(137)),
        "slow" => Script::finish(secs(30), serde_json::json!({"slow": true})),
        "quick" => Script::finish(secs(1), serde_json::json!({})).without_heartbeats(),
        _ => Script::hang(), // "hang", "victim"
    }
}

async fn next_event(rx: &mut Receiver<DriverEvent>, what: &str) -> DriverEvent {
    match tokio::time::timeout(WAIT_MAX, rx.recv()).await {
        Err(_) => panic!("no driver event within {WAIT_MAX:?} waiting for {what}"),
        Ok(None) => panic!("driver ended waiting for {what}"),
        Ok(Some(e)) => e,
    }
}

async fn subscribed(rx: &mut Receiver<DriverEvent>) -> Id {
    loop {
        if let DriverEvent::Subscribed { framework_id, .. } = next_event(rx, "SUBSCRIBED").await {
            return framework_id;
        }
    }
}

async fn first_offer(rx: &mut Receiver<DriverEvent>) -> Offer {
    loop {
        if let DriverEvent::Offers(mut o) = next_event(rx, "OFFERS").await
            && !o.is_empty()
        {
            return o.remove(0);
        }
    }
}

/// Waits for `task` in `state` without acknowledging anything.
async fn update(rx: &mut Receiver<DriverEvent>, task: &str, state: TaskState) -> TaskStatus {
    loop {
        if let DriverEvent::Update(s) = next_event(rx, &format!("{task} {state:?}")).await
            && s.task_id.value == task
            && s.state == state
        {
            return s;
        }
    }
}

/// Waits for `task` in `state`, acknowledging every reliable update seen.
async fn update_acking(
    h: &DriverHandle,
    rx: &mut Receiver<DriverEvent>,
    task: &str,
    state: TaskState,
) -> TaskStatus {
    loop {
        if let DriverEvent::Update(s) = next_event(rx, &format!("{task} {state:?}")).await {
            if s.uuid.is_some() {
                h.acknowledge(&s).await.expect("ack");
            }
            if s.task_id.value == task && s.state == state {
                return s;
            }
        }
    }
}

/// Polls `cond` on virtual time until it holds (panics after `WAIT_MAX`).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT_MAX;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn result(s: &TaskStatus) -> StepResult {
    serde_json::from_slice(&s.data.as_ref().expect("terminal data").0).expect("StepResult")
}

/// GET `path` from the master through its router.
async fn master_get(emu: &EmulatorHandle, path: &str) -> serde_json::Value {
    let resp = InProcessTransport::new(emu.master_router())
        .send(HttpRequest {
            method: axum::http::Method::GET,
            url: format!("{}{path}", emu.master_url()),
            headers: Default::default(),
            body: Default::default(),
            timeout: Some(Duration::from_secs(5)),
        })
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    serde_json::from_str(&resp.text().await).unwrap()
}

/// A loopback address nothing listens on (bound, then released).
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Step tasks through scripted executors and the real driver: outputs,
/// progress, failure, kill, a scripted executor crash and one injected from
/// outside; every update acknowledged, then the updates stop.
#[tokio::test(start_paused = true)]
async fn scripted_steps_run_to_their_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = Arc::new(ScriptedLauncher::new(script_for));
    let (master, agent_addr) = (dead_addr(), dead_addr());
    let emu = Emulator::start_in_process(sim_config(
        dir.path(),
        1,
        launcher.clone(),
        master,
        vec![agent(agent_addr, "agent-1")],
    ))
    .await
    .unwrap();
    for addr in [master, agent_addr] {
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "nothing may listen on {addr}"
        );
    }
    let wall = std::time::Instant::now();
    let (h, mut rx) = driver(&emu, framework(3600.0));
    let fw = subscribed(&mut rx).await;
    let offer = first_offer(&mut rx).await;
    let names = ["ok-1", "ok-2", "fail", "hang", "crash", "victim"];
    let tasks = names.iter().map(|n| step_task(n, &offer)).collect();
    h.accept(vec![offer.id.clone()], vec![Operation::launch(tasks)], None)
        .await
        .unwrap();

    let mut terminal: BTreeMap<String, TaskStatus> = BTreeMap::new();
    let mut running = Vec::new();
    let mut messages = Vec::new();
    let mut failures = Vec::new();
    while terminal.len() < names.len() {
        match next_event(&mut rx, "the tasks' outcomes").await {
            DriverEvent::Update(s) => {
                assert!(s.uuid.is_some(), "reliable updates only: {s:?}");
                h.acknowledge(&s).await.unwrap();
                let t = s.task_id.value.clone();
                if s.state == TaskState::Running {
                    running.push(t.clone());
                    if t == "hang" {
                        h.kill(s.task_id.clone(), s.agent_id.clone()).await.unwrap();
                    }
                    if t == "victim" {
                        assert!(
                            launcher
                                .running()
                                .iter()
                                .any(|r| r.executor_id == "exec-victim")
                        );
                        assert!(launcher.crash_executor(
                            0,
                            &fw.value,
                            "exec-victim",
                            ExecutorExit::Signal(9)
                        ));
                    }
                } else if s.state.is_terminal() {
                    assert!(terminal.insert(t, s).is_none(), "one terminal update each");
                }
            }
            DriverEvent::Message {
                executor_id, data, ..
            } => messages.push((
                executor_id.value,
                serde_json::from_slice::<ExecutorMessage>(&data).unwrap(),
            )),
            DriverEvent::Failure(f) => failures.push(f),
            DriverEvent::Offers(_) | DriverEvent::Rescind(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    running.sort();
    let mut all: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    all.sort();
    assert_eq!(running, all, "every step reported TASK_RUNNING");

    let ok1 = &terminal["ok-1"];
    assert_eq!(ok1.state, TaskState::Finished);
    assert_eq!(ok1.executor_id, Some(Id::new("exec-ok-1")));
    let r = result(ok1);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.reason, "exited");
    assert_eq!(r.outputs, Some(serde_json::json!({"loss": 0.25})));
    assert_eq!(
        result(&terminal["ok-2"]).outputs,
        Some(serde_json::json!({"n": 2}))
    );
    // Timestamps come from the simulated clock.
    let ts = ok1.timestamp.unwrap();
    let since_epoch = ts
        - epoch()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
    assert!((5.0..10.0).contains(&since_epoch), "timestamp {ts}");

    let fail = &terminal["fail"];
    assert_eq!(fail.state, TaskState::Failed);
    assert_eq!(fail.message.as_deref(), Some("step exited with status 3"));
    let r = result(fail);
    assert_eq!((r.exit_code, r.reason.as_str()), (Some(3), "nonzero_exit"));

    let killed = &terminal["hang"];
    assert_eq!(killed.state, TaskState::Killed);
    let r = result(killed);
    assert_eq!(
        (r.signal, r.reason.as_str()),
        (Some(libc::SIGTERM), "killed")
    );

    for (task, raw) in [("crash", 137 << 8), ("victim", 9)] {
        let s = &terminal[task];
        assert_eq!(s.state, TaskState::Failed, "{task}");
        assert_eq!(s.reason.as_deref(), Some("REASON_EXECUTOR_TERMINATED"));
        assert_eq!(s.source, Some(kaon_mesos::types::Source::Agent));
        assert!(s.uuid.is_some() && s.data.is_none());
        let f = failures
            .iter()
            .find(|f| f.executor_id == Some(Id::new(format!("exec-{task}"))))
            .expect("FAILURE for the crashed executor");
        assert_eq!(f.status, Some(raw));
        assert_eq!(f.agent_id, Some(offer.agent_id.clone()));
    }

    assert!(messages.contains(&(
        "exec-ok-1".into(),
        ExecutorMessage::Progress {
            task_id: "ok-1".into(),
            percent: 50.0
        }
    )));
    assert!(messages.contains(&(
        "exec-ok-1".into(),
        ExecutorMessage::Status {
            task_id: "ok-1".into(),
            text: "half way".into()
        }
    )));

    // Everything acknowledged: the executors exit, nothing is retried.
    until("every executor exited", || emu.live_processes() == 0).await;
    assert!(launcher.running().is_empty());
    assert_eq!(emu.pending_updates(), 0);
    let quiet = Instant::now() + Duration::from_secs(1800);
    loop {
        match tokio::time::timeout_at(quiet, rx.recv()).await {
            Err(_) => break,
            Ok(Some(DriverEvent::Update(s))) => panic!("update after all acks: {s:?}"),
            Ok(Some(DriverEvent::Failure(f))) => failures.push(f),
            Ok(Some(_)) => {}
            Ok(None) => panic!("driver ended"),
        }
    }
    // The executors that ended normally exited 0.
    assert!(
        failures
            .iter()
            .any(|f| f.executor_id == Some(Id::new("exec-ok-1")) && f.status == Some(0))
    );
    assert!(
        wall.elapsed() < Duration::from_secs(20),
        "half an hour of virtual time took {:?}",
        wall.elapsed()
    );
    h.stop();
    emu.shutdown().await;
}

/// One scripted scenario in a fresh current_thread runtime on paused time:
/// every driver event, in order (ids, uuids, offers, states, timestamps).
fn trace(seed: u64) -> Vec<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let launcher = Arc::new(ScriptedLauncher::new(script_for));
        let agents = vec![
            agent("10.0.1.1:5051".parse().unwrap(), "agent-1"),
            agent("10.0.1.2:5051".parse().unwrap(), "agent-2"),
        ];
        let emu = Emulator::start_in_process(sim_config(
            dir.path(),
            seed,
            launcher.clone(),
            "10.0.0.1:5050".parse().unwrap(),
            agents,
        ))
        .await
        .unwrap();
        let (h, mut rx) = driver(&emu, framework(3600.0));
        let mut out = Vec::new();
        let mut log = |e: &DriverEvent| out.push(format!("{e:?}"));
        let mut launched = 0;
        let mut terminal = 0;
        let names = ["ok-1", "fail", "hang", "crash", "victim", "ok-2"];
        while terminal < names.len() {
            let ev = next_event(&mut rx, "scenario events").await;
            log(&ev);
            match ev {
                DriverEvent::Offers(offers) => {
                    for offer in offers {
                        let tasks: Vec<TaskInfo> = names
                            .iter()
                            .skip(launched)
                            .take(3)
                            .map(|n| step_task(n, &offer))
                            .collect();
                        launched += tasks.len();
                        if tasks.is_empty() {
                            h.decline(vec![offer.id], Some(3600.0)).await.unwrap();
                        } else {
                            h.accept(vec![offer.id], vec![Operation::launch(tasks)], None)
                                .await
                                .unwrap();
                        }
                    }
                }
                DriverEvent::Update(s) => {
                    h.acknowledge(&s).await.unwrap();
                    if s.state.is_terminal() {
                        terminal += 1;
                    }
                    if s.state == TaskState::Running && s.task_id.value == "hang" {
                        h.kill(s.task_id, s.agent_id).await.unwrap();
                    } else if s.state == TaskState::Running && s.task_id.value == "victim" {
                        let agent = emu
                            .agent_ids()
                            .iter()
                            .position(|a| Some(a) == s.agent_id.as_ref().map(|i| &i.value))
                            .unwrap();
                        let fw = h.framework_id().unwrap();
                        assert!(emu.signal_executor(
                            agent,
                            &fw.value,
                            "exec-victim",
                            libc::SIGKILL
                        ));
                    }
                }
                _ => {}
            }
        }
        h.stop();
        emu.shutdown().await;
        out
    })
}

/// Same seed, same calls: the same events, byte for byte; another seed
/// gives other ids.
#[test]
fn same_seed_same_trace() {
    let a = trace(42);
    if std::env::var_os("KAON_SIM_TRACE").is_some() {
        for e in &a {
            eprintln!("{e}");
        }
    }
    let b = trace(42);
    assert!(a.len() > 20, "a real scenario: {a:#?}");
    assert!(
        a.iter().any(|e| e.contains("REASON_EXECUTOR_TERMINATED")),
        "{a:#?}"
    );
    assert_eq!(a, b, "same seed, different traces");
    let c = trace(43);
    assert_eq!(a.len(), c.len(), "the seed changes ids, not the scenario");
    assert_ne!(a, c, "another seed, same ids");
}

/// Starts a one-agent simulated emulator and a subscribed driver with a
/// launched "slow" step whose TASK_RUNNING is left unacknowledged.
async fn slow_step_running(
    dir: &std::path::Path,
    failover_timeout: f64,
) -> (
    EmulatorHandle,
    DriverHandle,
    Receiver<DriverEvent>,
    Id,
    TaskStatus,
) {
    let launcher = Arc::new(ScriptedLauncher::new(script_for));
    let emu = Emulator::start_in_process(sim_config(
        dir,
        7,
        launcher,
        "10.0.0.1:5050".parse().unwrap(),
        vec![agent("10.0.1.1:5051".parse().unwrap(), "agent-1")],
    ))
    .await
    .unwrap();
    let (h, mut rx) = driver(&emu, framework(failover_timeout));
    let fw = subscribed(&mut rx).await;
    let offer = first_offer(&mut rx).await;
    h.accept(
        vec![offer.id.clone()],
        vec![Operation::launch(vec![step_task("slow", &offer)])],
        None,
    )
    .await
    .unwrap();
    let running = update(&mut rx, "slow", TaskState::Running).await;
    (emu, h, rx, fw, running)
}

/// Waits for the driver's re-subscription (after `Disconnected`) and the
/// pending update it then gets again; returns that update.
async fn resubscribed_with_update(
    rx: &mut Receiver<DriverEvent>,
    fw: &Id,
    task: &str,
) -> TaskStatus {
    let mut disconnected = false;
    loop {
        match next_event(rx, "re-subscription").await {
            DriverEvent::Disconnected { .. } => disconnected = true,
            DriverEvent::Subscribed { framework_id, .. } => {
                assert!(disconnected, "re-subscribed without a disconnection");
                assert_eq!(&framework_id, fw, "same framework id");
                break;
            }
            DriverEvent::Error(e) => panic!("no failover semantics expected: {e}"),
            _ => {}
        }
    }
    loop {
        if let DriverEvent::Update(s) = next_event(rx, "the pending update").await
            && s.task_id.value == task
        {
            return s;
        }
    }
}

/// A broken subscription stream: the driver re-subscribes with the same
/// framework id and gets the unacknowledged update again.
#[tokio::test(start_paused = true)]
async fn dropped_stream_resubscribes_and_gets_pending_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, fw, running) = slow_step_running(dir.path(), 60.0).await;
    assert!(emu.drop_subscription(&fw.value));
    assert!(!emu.drop_subscription("no-such-framework"));
    let again = resubscribed_with_update(&mut rx, &fw, "slow").await;
    assert_eq!(again.state, TaskState::Running);
    assert_eq!(again.uuid, running.uuid, "the same update, redelivered");
    h.acknowledge(&again).await.unwrap();
    let done = update_acking(&h, &mut rx, "slow", TaskState::Finished).await;
    assert_eq!(
        result(&done).outputs,
        Some(serde_json::json!({"slow": true}))
    );
    until("acks processed", || emu.pending_updates() == 0).await;
    h.stop();
    emu.shutdown().await;
}

/// A master failover that takes a while (no leader for 10 s, longer than
/// the framework's failover timeout): the framework survives, its task
/// keeps running, old offers are gone, and after re-subscription the
/// pending update arrives again and the task finishes.
#[tokio::test(start_paused = true)]
async fn master_failover_keeps_tasks_and_pending_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, fw, running) = slow_step_running(dir.path(), 1.0).await;
    let before = master_get(&emu, "/master/state").await;
    let old_master = before["id"].as_str().unwrap().to_owned();

    emu.set_leadership(Leadership::Standby { leader: None });
    emu.master_failover();
    let state = master_get(&emu, "/master/state").await;
    assert_ne!(state["id"], old_master.as_str(), "a new master id");
    assert_eq!(state["frameworks"][0]["connected"], false);
    assert_eq!(state["frameworks"][0]["offers"], serde_json::json!([]));
    // The election takes longer than the failover timeout: no removal.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let state = master_get(&emu, "/master/state").await;
    assert_eq!(state["frameworks"][0]["id"], fw.value.as_str());
    assert_eq!(state["frameworks"][0]["tasks"][0]["state"], "TASK_RUNNING");
    assert_eq!(state["completed_frameworks"], serde_json::json!([]));
    assert_eq!(emu.live_processes(), 1, "the executor kept running");

    emu.set_leadership(Leadership::Leader);
    let again = resubscribed_with_update(&mut rx, &fw, "slow").await;
    assert_eq!(again.state, TaskState::Running);
    assert_eq!(again.uuid, running.uuid, "the pending update, again");
    h.acknowledge(&again).await.unwrap();
    // New offers come from the new master.
    let offer = first_offer(&mut rx).await;
    let new_master = master_get(&emu, "/master/state").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(offer.id.value.starts_with(&new_master), "{offer:?}");
    let done = update_acking(&h, &mut rx, "slow", TaskState::Finished).await;
    assert_eq!(result(&done).reason, "exited");
    h.stop();
    emu.shutdown().await;
}

/// `redeliver_updates` duplicates the in-flight update at once, long
/// before the retry timer (10 s) would.
#[tokio::test(start_paused = true)]
async fn redelivery_duplicates_the_in_flight_update() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, _fw, running) = slow_step_running(dir.path(), 60.0).await;
    let t0 = Instant::now();
    assert_eq!(emu.redeliver_updates(), 1);
    let dup = update(&mut rx, "slow", TaskState::Running).await;
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(dup, running, "an exact duplicate");
    h.acknowledge(&dup).await.unwrap();
    until("ack processed", || emu.pending_updates() == 0).await;
    assert_eq!(emu.redeliver_updates(), 0);
    update_acking(&h, &mut rx, "slow", TaskState::Finished).await;
    h.stop();
    emu.shutdown().await;
}

/// The task finished at the agent, but its reliable TASK_FINISHED waits
/// behind the unacknowledged TASK_RUNNING. As in Mesos 1.11, whose master
/// answers `task->status_update_state()`, the reconciliation answer is the
/// state being delivered, TASK_RUNNING (no uuid, no data), not the queued
/// TASK_FINISHED (issue 9 F); the reliable update with the outputs comes
/// after the ack.
#[tokio::test(start_paused = true)]
async fn reconciliation_answer_races_the_reliable_update() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = Arc::new(ScriptedLauncher::new(script_for));
    let emu = Emulator::start_in_process(sim_config(
        dir.path(),
        9,
        launcher,
        "10.0.0.1:5050".parse().unwrap(),
        vec![agent("10.0.1.1:5051".parse().unwrap(), "agent-1")],
    ))
    .await
    .unwrap();
    let (h, mut rx) = driver(&emu, framework(60.0));
    subscribed(&mut rx).await;
    let offer = first_offer(&mut rx).await;
    h.accept(
        vec![offer.id.clone()],
        vec![Operation::launch(vec![step_task("quick", &offer)])],
        None,
    )
    .await
    .unwrap();
    let running = update(&mut rx, "quick", TaskState::Running).await;
    until("the step finished at the agent", || {
        emu.pending_updates() == 2
    })
    .await;
    h.reconcile(vec![(running.task_id.clone(), running.agent_id.clone())])
        .await
        .unwrap();
    let answer = loop {
        if let DriverEvent::Update(s) = next_event(&mut rx, "reconciliation").await
            && s.uuid.is_none()
        {
            break s;
        }
    };
    assert_eq!(
        answer.state,
        TaskState::Running,
        "the state being delivered, not the one queued behind it"
    );
    assert_eq!(answer.reason.as_deref(), Some("REASON_RECONCILIATION"));
    assert!(answer.data.is_none());
    h.acknowledge(&running).await.unwrap();
    let reliable = update(&mut rx, "quick", TaskState::Finished).await;
    assert!(reliable.uuid.is_some());
    assert_eq!(result(&reliable).outputs, Some(serde_json::json!({})));
    h.acknowledge(&reliable).await.unwrap();
    h.stop();
    emu.shutdown().await;
}

/// Command tasks (no executor) through the scripted launcher: the agent
/// reports them from their scripted exit status as it does for real
/// commands; and a step that ignores SIGTERM is SIGKILLed after the grace.
#[tokio::test(start_paused = true)]
async fn scripted_command_tasks_and_a_stubborn_step() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = Arc::new(ScriptedLauncher::new(script_for));
    let emu = Emulator::start_in_process(sim_config(
        dir.path(),
        11,
        launcher,
        "10.0.0.1:5050".parse().unwrap(),
        vec![agent("10.0.1.1:5051".parse().unwrap(), "agent-1")],
    ))
    .await
    .unwrap();
    let (h, mut rx) = driver(&emu, framework(60.0));
    subscribed(&mut rx).await;
    let offer = first_offer(&mut rx).await;
    let command = |name: &str| TaskInfo {
        name: name.into(),
        task_id: Id::new(name),
        agent_id: offer.agent_id.clone(),
        resources: resources(0.1, 32.0),
        executor: None,
        command: Some(kaon_mesos::types::CommandInfo::shell("sleep 2")),
        kill_policy: None,
        data: None,
        labels: None,
    };
    let tasks = vec![
        command("cmd-ok"),
        command("cmd-fail"),
        command("cmd-hang"),
        step_task("stubborn", &offer),
    ];
    h.accept(vec![offer.id.clone()], vec![Operation::launch(tasks)], None)
        .await
        .unwrap();
    let mut terminal: BTreeMap<String, (TaskStatus, Instant)> = BTreeMap::new();
    let mut killed_at = BTreeMap::new();
    while terminal.len() < 4 {
        if let DriverEvent::Update(s) = next_event(&mut rx, "outcomes").await {
            h.acknowledge(&s).await.unwrap();
            let t = s.task_id.value.clone();
            if s.state == TaskState::Running && (t == "cmd-hang" || t == "stubborn") {
                h.kill(s.task_id.clone(), s.agent_id.clone()).await.unwrap();
                killed_at.insert(t.clone(), Instant::now());
            }
            if s.state.is_terminal() {
                terminal.insert(t, (s, Instant::now()));
            }
        }
    }
    let msg = |t: &str| terminal[t].0.message.clone().unwrap_or_default();
    assert_eq!(terminal["cmd-ok"].0.state, TaskState::Finished);
    assert_eq!(msg("cmd-ok"), "Command exited with status 0");
    assert_eq!(terminal["cmd-fail"].0.state, TaskState::Failed);
    assert_eq!(msg("cmd-fail"), "Command exited with status 3");
    assert_eq!(terminal["cmd-hang"].0.state, TaskState::Killed);
    assert_eq!(msg("cmd-hang"), "Command terminated by a kill request");
    let (stubborn, at) = &terminal["stubborn"];
    assert_eq!(stubborn.state, TaskState::Killed);
    assert_eq!(result(stubborn).signal, Some(libc::SIGKILL));
    let took = *at - killed_at["stubborn"];
    assert!(
        took >= kaon_mesos::executor::KILL_GRACE_DEFAULT,
        "SIGKILL only after the grace, took {took:?}"
    );
    until("all exited", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;
}

/// An agent restart while a checkpointing framework's step ends: the
/// scripted executor (like kaon-executor) keeps re-subscribing while the
/// agent answers 503, then hands over its unacknowledged terminal update
/// in SUBSCRIBE; the scheduler gets it once. Without checkpointing the
/// executor exits when the agent goes and its task fails.
#[tokio::test(start_paused = true)]
async fn agent_restart_with_scripted_executors() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = Arc::new(ScriptedLauncher::new(script_for));
    let emu = Emulator::start_in_process(sim_config(
        dir.path(),
        13,
        launcher,
        "10.0.0.1:5050".parse().unwrap(),
        vec![agent("10.0.1.1:5051".parse().unwrap(), "agent-1")],
    ))
    .await
    .unwrap();
    let mut info = framework(60.0);
    info.checkpoint = Some(true);
    let (h, mut rx) = driver(&emu, info);
    subscribed(&mut rx).await;
    let offer = first_offer(&mut rx).await;
    h.accept(
        vec![offer.id.clone()],
        vec![Operation::launch(vec![step_task("quick", &offer)])],
        None,
    )
    .await
    .unwrap();
    update_acking(&h, &mut rx, "quick", TaskState::Running).await;
    emu.restart_agent(0);
    // The step ends (after 1 s) while the agent is away.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(emu.agent_refused_updates(0) >= 1, "the UPDATE met a 503");
    assert_eq!(emu.live_processes(), 1, "the executor waits for the agent");
    emu.finish_agent_recovery(0);
    let done = update_acking(&h, &mut rx, "quick", TaskState::Finished).await;
    assert_eq!(result(&done).reason, "exited");
    until("the executor exited", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;

    let dir = tempfile::tempdir().unwrap();
    let launcher = Arc::new(ScriptedLauncher::new(script_for));
    let emu = Emulator::start_in_process(sim_config(
        dir.path(),
        13,
        launcher,
        "10.0.0.1:5050".parse().unwrap(),
        vec![agent("10.0.1.1:5051".parse().unwrap(), "agent-1")],
    ))
    .await
    .unwrap();
    let (h, mut rx) = driver(&emu, framework(60.0));
    subscribed(&mut rx).await;
    let offer = first_offer(&mut rx).await;
    h.accept(
        vec![offer.id.clone()],
        vec![Operation::launch(vec![step_task("slow", &offer)])],
        None,
    )
    .await
    .unwrap();
    update_acking(&h, &mut rx, "slow", TaskState::Running).await;
    emu.restart_agent(0);
    emu.finish_agent_recovery(0);
    let failed = update_acking(&h, &mut rx, "slow", TaskState::Failed).await;
    assert_eq!(failed.reason.as_deref(), Some("REASON_EXECUTOR_TERMINATED"));
    h.stop();
    emu.shutdown().await;
}
