//! The reference pipeline end to end on one node: the leader runtime
//! (decide -> log -> Mesos) drives the embedded Mesos 1.11 emulator, whose
//! agent runs every step through `kaon executor` as real local processes.
//! (Single node, in-memory log: the Raft log replaces it in the cluster
//! issue.)

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kaon_core::decide::{Command, SubmitTarget};
use kaon_core::events::Body;
use kaon_core::state::{NodeStatus, RunStatus};
use kaon_mesos_emulator::{AgentConfig, Emulator, EmulatorConfig};
use kaon_server::log::{EventLog, LocalLog};
use kaon_server::runtime::{self, RuntimeConfig};

const RUN_DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reference_pipeline_runs_on_one_node_with_real_processes() {
    let work = tempfile::tempdir().unwrap();
    let kaon = env!("CARGO_BIN_EXE_kaon");
    let emu = Emulator::start(EmulatorConfig {
        agents: vec![AgentConfig::loopback(8.0, 16384.0)],
        heartbeat_interval: Duration::from_millis(500),
        allocation_interval: Duration::from_millis(20),
        status_update_retry_min: Duration::from_millis(500),
        status_update_retry_max: Duration::from_secs(2),
        work_dir: work.path().to_path_buf(),
        executor_path: Some(kaon.into()),
        ..EmulatorConfig::default()
    })
    .await
    .expect("emulator starts");
    let log = Arc::new(LocalLog::default());
    let rt = runtime::start(log.clone(), RuntimeConfig::new(emu.master_url(), kaon));

    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/reference-pipeline"
    );
    let source = std::fs::read_to_string(format!("{root}/pipeline.yaml")).unwrap();
    let params = BTreeMap::from([(
        "scripts".to_string(),
        serde_json::json!(format!("{root}/scripts")),
    )]);
    let submit = Command::SubmitRun {
        target: SubmitTarget::Inline { source },
        params,
        idempotency_key: "e2e-1".into(),
    };
    rt.command(submit.clone())
        .await
        .unwrap()
        .expect("submit accepted");
    let run_id = log.with_state(|s| s.idempotency["e2e-1"]);
    // A retried submit returns the same run.
    let again = rt.command(submit).await.unwrap().expect("accepted");
    assert_eq!(again.decision.existing_run, Some(run_id));

    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        let status = log.with_state(|s| s.run(run_id).map(|r| r.status));
        if status != Some(RunStatus::Running) || Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let summary = log.with_state(|s| {
        let r = s.run(run_id).unwrap();
        r.instances
            .iter()
            .map(|i| format!("{} {:?} {}", i.path, i.status, i.message))
            .collect::<Vec<_>>()
            .join("\n")
    });
    assert_eq!(
        status,
        Some(RunStatus::Succeeded),
        "run did not succeed in time:\n{summary}"
    );

    log.with_state(|s| {
        let r = s.run(run_id).unwrap();
        let find = |p: &str| {
            r.instances
                .iter()
                .find(|i| i.path == p)
                .unwrap_or_else(|| panic!("no {p}:\n{summary}"))
        };
        // The foreach width came from prepare's outputs: three regions.
        assert_eq!(find("train#1/region-model").children.len(), 3);
        // validate said unstable in round 1, stable in round 2: one repeat.
        assert_eq!(find("train").iteration, 2);
        assert_eq!(
            find("train#2/validate").outputs.as_deref(),
            Some(r#"{"stable":true}"#)
        );
        assert_eq!(find("publish").status, NodeStatus::Succeeded);
        assert_eq!(find("on_exit/report").status, NodeStatus::Succeeded);
    });
    // Every step's task was launched exactly once (no retries needed) and
    // every update was recorded before being acknowledged (core contract).
    let launches = log
        .events()
        .iter()
        .filter(|e| matches!(e.body, Some(Body::TaskLaunchRequested(_))))
        .count();
    assert_eq!(launches, 14);
    emu.shutdown().await;
}

/// `kaon run` as a user runs it: a failing step fails the run (exit 1) after
/// its retry, and the dependent step is skipped.
#[test]
fn kaon_run_reports_failure_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("flow.yaml");
    std::fs::write(
        &spec,
        "apiVersion: kaon/v1\nname: failing\nsteps:\n  bad:\n    shell: 'echo oops >&2; exit 3'\n    retry: {user_errors: 1, backoff: {kind: fixed, initial: 100ms}}\n  after: {depends_on: [bad], run: [echo, never]}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kaon"))
        .args(["run-local", spec.to_str().unwrap(), "--work-dir"])
        .arg(dir.path().join("work"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("start   bad (attempt 2)"), "{stdout}");
    assert_eq!(
        stdout.matches("skip    after").count(),
        1,
        "skipped exactly once: {stdout}"
    );
    assert!(
        stdout.contains("run 2 failed: bad failed: attempt 2 exited with code 3"),
        "{stdout}"
    );
}

/// Intent before effect across a leader change: a first runtime commits
/// launch intents but cannot reach Mesos (its master is down); a second
/// runtime on the same log reconciles those tasks (Mesos never heard of
/// them: TASK_LOST), retries them under the platform budget, and the run
/// completes with every step run exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_reconciles_intents_the_old_one_never_launched() {
    let work = tempfile::tempdir().unwrap();
    let kaon = env!("CARGO_BIN_EXE_kaon");
    let log = Arc::new(LocalLog::default());
    // Runtime 1: a master address nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let rt1 = runtime::start(log.clone(), RuntimeConfig::new(dead_url, kaon));
    let source = "apiVersion: kaon/v1\nname: once\nsteps:\n  a: {shell: 'echo a >> \"$MARK\"', retry: {backoff: {kind: fixed, initial: 100ms}}}\n  b: {depends_on: [a], shell: 'echo b >> \"$MARK\"'}\n".replace(
        "$MARK",
        &work.path().join("marks").display().to_string(),
    );
    rt1.command(Command::SubmitRun {
        target: SubmitTarget::Inline { source },
        params: BTreeMap::new(),
        idempotency_key: "k".into(),
    })
    .await
    .unwrap()
    .expect("accepted");
    let run_id = log.with_state(|s| s.idempotency["k"]);
    // The answer comes once the run is recorded; the runtime then commits
    // step a's launch intent (it cannot launch it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.with_state(|s| s.run(run_id).unwrap().live_tasks) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        log.with_state(|s| s.run(run_id).unwrap().live_tasks),
        1,
        "step a's intent is committed"
    );
    rt1.shutdown().await;

    // Runtime 2 (the new leader) with a working Mesos.
    let emu = Emulator::start(EmulatorConfig {
        allocation_interval: Duration::from_millis(20),
        work_dir: work.path().join("mesos"),
        executor_path: Some(kaon.into()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut config = RuntimeConfig::new(emu.master_url(), kaon);
    config.limits = kaon_core::Limits::default();
    let _rt2 = runtime::start(log.clone(), config);
    let deadline = Instant::now() + RUN_DEADLINE;
    while log.with_state(|s| s.run(run_id).unwrap().status) == RunStatus::Running
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, attempts_a) = log.with_state(|s| {
        let r = s.run(run_id).unwrap();
        let a = r.instances.iter().find(|i| i.path == "a").unwrap();
        (r.status, a.attempts.len())
    });
    assert_eq!(status, RunStatus::Succeeded);
    assert_eq!(
        attempts_a, 2,
        "attempt 1 was lost (never launched), attempt 2 ran"
    );
    let marks = std::fs::read_to_string(work.path().join("marks")).unwrap();
    assert_eq!(marks, "a\nb\n", "each step's command ran exactly once");
    emu.shutdown().await;
}

/// The leader's runtime reaches Mesos through a handed-in transport: here
/// in-process to an emulator whose master binds no socket (the simulation
/// seam); a two-step workflow runs to success, steps as real processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_reaches_mesos_through_a_handed_in_transport() {
    let work = tempfile::tempdir().unwrap();
    let kaon = env!("CARGO_BIN_EXE_kaon");
    let emu = Emulator::start_in_process(EmulatorConfig {
        allocation_interval: Duration::from_millis(20),
        work_dir: work.path().join("mesos"),
        executor_path: Some(kaon.into()),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    // Nothing listens at the master URL: only the transport can reach it.
    assert!(
        std::net::TcpStream::connect(emu.master_url().trim_start_matches("http://")).is_err(),
        "the in-process master must not listen"
    );
    let log = Arc::new(LocalLog::default());
    let mut config = RuntimeConfig::new(emu.master_url(), kaon);
    config.mesos_transport = kaon_mesos::transport::MesosTransport::in_process(emu.master_router());
    let rt = runtime::start(log.clone(), config);
    let marks = work.path().join("marks");
    let source = format!(
        "apiVersion: kaon/v1\nname: seam\nsteps:\n  a: {{shell: 'echo a >> {m}'}}\n  b: {{depends_on: [a], shell: 'echo b >> {m}'}}\n",
        m = marks.display()
    );
    rt.command(Command::SubmitRun {
        target: SubmitTarget::Inline { source },
        params: BTreeMap::new(),
        idempotency_key: "seam".into(),
    })
    .await
    .unwrap()
    .expect("accepted");
    let run_id = log.with_state(|s| s.idempotency["seam"]);
    let deadline = Instant::now() + RUN_DEADLINE;
    while log.with_state(|s| s.run(run_id).unwrap().status) == RunStatus::Running
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        log.with_state(|s| s.run(run_id).unwrap().status),
        RunStatus::Succeeded
    );
    assert_eq!(std::fs::read_to_string(&marks).unwrap(), "a\nb\n");
    rt.shutdown().await;
    emu.shutdown().await;
}
