//! Shared helpers for the driver/emulator/executor integration tests.
#![allow(dead_code)]

use kaon_mesos::driver::{Driver, DriverConfig, DriverEvent, DriverHandle};
use kaon_mesos::types::scheduler::Operation;
use kaon_mesos::types::{
    CommandInfo, FrameworkInfo, Id, Offer, Resource, TaskInfo, TaskState, TaskStatus,
};
use kaon_mesos_emulator::{AgentConfig, Emulator, EmulatorConfig, EmulatorHandle};
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

/// Longest a test waits for any single expected event.
pub const EVENT_WAIT_MAX: Duration = Duration::from_secs(15);

pub fn config(work_dir: &std::path::Path) -> EmulatorConfig {
    EmulatorConfig {
        agents: vec![AgentConfig::loopback(8.0, 16384.0)],
        heartbeat_interval: Duration::from_millis(500),
        allocation_interval: Duration::from_millis(50),
        status_update_retry_min: Duration::from_millis(300),
        status_update_retry_max: Duration::from_secs(2),
        executor_registration_timeout: Duration::from_secs(10),
        executor_shutdown_grace: Duration::from_secs(2),
        command_kill_grace: Duration::from_secs(2),
        work_dir: work_dir.to_path_buf(),
        executor_path: Some(env!("CARGO_BIN_EXE_kaon-executor").into()),
        ..EmulatorConfig::default()
    }
}

pub async fn start(work_dir: &std::path::Path) -> EmulatorHandle {
    Emulator::start(config(work_dir))
        .await
        .expect("emulator starts")
}

pub fn framework(id: Option<&str>, failover_timeout: f64) -> FrameworkInfo {
    FrameworkInfo {
        user: "kaon".into(),
        name: "kaon-test".into(),
        id: id.map(Id::new),
        failover_timeout: Some(failover_timeout),
        capabilities: vec![],
        ..Default::default()
    }
}

pub fn driver(url: &str, info: FrameworkInfo) -> (DriverHandle, Receiver<DriverEvent>) {
    let mut c = DriverConfig::new(url, info);
    c.backoff_min = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    Driver::subscribe(c)
}

/// Waits for the first event satisfying `f`, skipping others.
pub async fn wait_for<T>(
    rx: &mut Receiver<DriverEvent>,
    what: &str,
    mut f: impl FnMut(&DriverEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("timed out waiting for {what}"),
            Ok(None) => panic!("driver ended while waiting for {what}"),
            Ok(Some(e)) => {
                if let Some(t) = f(&e) {
                    return t;
                }
            }
        }
    }
}

pub async fn subscribed(rx: &mut Receiver<DriverEvent>) -> Id {
    wait_for(rx, "SUBSCRIBED", |e| match e {
        DriverEvent::Subscribed { framework_id, .. } => Some(framework_id.clone()),
        _ => None,
    })
    .await
}

pub async fn offers(rx: &mut Receiver<DriverEvent>) -> Vec<Offer> {
    wait_for(rx, "OFFERS", |e| match e {
        DriverEvent::Offers(o) if !o.is_empty() => Some(o.clone()),
        _ => None,
    })
    .await
}

pub async fn update(rx: &mut Receiver<DriverEvent>, task: &str, state: TaskState) -> TaskStatus {
    wait_for(rx, &format!("{task} {state:?}"), |e| match e {
        DriverEvent::Update(s) if s.task_id.value == task && s.state == state => Some(s.clone()),
        _ => None,
    })
    .await
}

/// Waits for `state` of `task`, acknowledging every reliable update seen.
pub async fn update_acking(
    h: &DriverHandle,
    rx: &mut Receiver<DriverEvent>,
    task: &str,
    state: TaskState,
) -> TaskStatus {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("timed out waiting for {task} {state:?}"),
            Ok(None) => panic!("driver ended while waiting for {task} {state:?}"),
            Ok(Some(DriverEvent::Update(s))) => {
                if s.uuid.is_some() {
                    h.acknowledge(&s).await.expect("ack");
                }
                if s.task_id.value == task && s.state == state {
                    return s;
                }
            }
            Ok(Some(_)) => {}
        }
    }
}

/// Waits until each of `tasks` reached `state`, in any order (updates of
/// different tasks race), acknowledging every reliable update seen.
pub async fn updates_acking(
    h: &DriverHandle,
    rx: &mut Receiver<DriverEvent>,
    tasks: &[&str],
    state: TaskState,
) -> std::collections::BTreeMap<String, TaskStatus> {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    let mut got = std::collections::BTreeMap::new();
    while got.len() < tasks.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!(
                "timed out waiting for {tasks:?} {state:?}; got {:?}",
                got.keys()
            ),
            Ok(None) => panic!("driver ended while waiting for {tasks:?} {state:?}"),
            Ok(Some(DriverEvent::Update(s))) => {
                if s.uuid.is_some() {
                    h.acknowledge(&s).await.expect("ack");
                }
                if tasks.contains(&s.task_id.value.as_str()) && s.state == state {
                    got.insert(s.task_id.value.clone(), s);
                }
            }
            Ok(Some(_)) => {}
        }
    }
    got
}

pub fn resources(cpus: f64, mem: f64) -> Vec<Resource> {
    vec![Resource::scalar("cpus", cpus), Resource::scalar("mem", mem)]
}

pub fn command_task(id: &str, offer: &Offer, cmd: &str) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: Id::new(id),
        agent_id: offer.agent_id.clone(),
        resources: resources(0.1, 32.0),
        executor: None,
        command: Some(CommandInfo::shell(cmd)),
        kill_policy: None,
        data: None,
        labels: None,
    }
}

pub async fn launch(h: &DriverHandle, offer: &Offer, tasks: Vec<TaskInfo>) {
    h.accept(
        vec![offer.id.clone()],
        vec![Operation::launch(tasks)],
        Some(0.0),
    )
    .await
    .expect("accept");
}

/// Polls `cond` until true or the deadline passes.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENT_WAIT_MAX;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn master_state(url: &str) -> serde_json::Value {
    let body = reqwest::get(format!("{url}/master/state"))
        .await
        .expect("state")
        .text()
        .await
        .expect("body");
    serde_json::from_str(&body).expect("state json")
}

/// Waits until every (task, state) pair was seen, in any order, acking all
/// reliable updates; returns the matching statuses in the order asked.
pub async fn all_acking(
    h: &DriverHandle,
    rx: &mut Receiver<DriverEvent>,
    want: &[(&str, TaskState)],
) -> Vec<TaskStatus> {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    let mut found: Vec<Option<TaskStatus>> = vec![None; want.len()];
    while found.iter().any(Option::is_none) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => panic!("timed out waiting for {want:?}; got {found:?}"),
            Ok(None) => panic!("driver ended while waiting for {want:?}"),
            Ok(Some(DriverEvent::Update(s))) => {
                if s.uuid.is_some() {
                    h.acknowledge(&s).await.expect("ack");
                }
                if let Some(i) = want
                    .iter()
                    .position(|(t, st)| s.task_id.value == *t && s.state == *st)
                {
                    found[i].get_or_insert(s);
                }
            }
            Ok(Some(_)) => {}
        }
    }
    found.into_iter().flatten().collect()
}
