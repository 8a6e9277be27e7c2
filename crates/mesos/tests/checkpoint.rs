//! Agent checkpointing: an emulator restarted on the same work dir recovers
//! a checkpointing framework, its running custom executor and the executor's
//! pending update; the scheduler driver re-subscribes by itself.

mod common;

use common::*;
use kaon_mesos::driver::DriverEvent;
use kaon_mesos::executor::{StepResult, StepSpec, executor_info};
use kaon_mesos::types::{B64, Id, TaskInfo, TaskState};
use kaon_mesos_emulator::Emulator;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_emulator_recovers_running_executor() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.checkpoint = true;
    cfg.executor_reregistration_timeout = Duration::from_secs(10);
    let emu = Emulator::start(cfg.clone()).await.unwrap();
    let url = emu.master_url();
    let mut info = framework(Some("ck-fw"), 3600.0);
    info.checkpoint = Some(true);
    let (h, mut rx) = driver(&url, info);
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let spec = StepSpec {
        shell: Some(r#"while [ ! -f go ]; do sleep 0.02; done; printf '{"survived": true}' > "$KAON_OUTPUTS_FILE""#.into()),
        ..Default::default()
    };
    let task = TaskInfo {
        name: "ck".into(),
        task_id: Id::new("ck"),
        agent_id: offer.agent_id.clone(),
        resources: resources(0.1, 32.0),
        executor: Some(executor_info(
            "exec-ck",
            "kaon-executor",
            resources(0.05, 32.0),
        )),
        command: None,
        kill_policy: None,
        data: Some(B64(serde_json::to_vec(&spec).unwrap())),
        labels: None,
    };
    let cmd = command_task(
        "cmd",
        &offer,
        "while [ ! -f go ]; do sleep 0.02; done; exit 4",
    );
    launch(&h, &offer, vec![task, cmd]).await;
    all_acking(
        &h,
        &mut rx,
        &[("ck", TaskState::Running), ("cmd", TaskState::Running)],
    )
    .await;

    emu.stop_for_restart().await;
    assert!(dir.path().join("checkpoint.json").exists());
    wait_for(&mut rx, "driver notices the master is gone", |e| {
        matches!(e, DriverEvent::Disconnected { .. }).then_some(())
    })
    .await;

    let emu = Emulator::start(cfg).await.expect("recovering start");
    assert_eq!(
        emu.master_url(),
        url,
        "recovered master binds its old address"
    );
    assert_eq!(
        emu.live_processes(),
        2,
        "both executors survived the restart"
    );
    assert_eq!(subscribed(&mut rx).await, Id::new("ck-fw"));
    let st = master_state(&url).await;
    assert_eq!(st["frameworks"][0]["tasks"][0]["state"], "TASK_RUNNING");
    assert_eq!(st["frameworks"][0]["tasks"][1]["state"], "TASK_RUNNING");

    for dir in find_all(dir.path(), "stdout") {
        std::fs::write(dir.parent().unwrap().join("go"), b"").unwrap();
    }
    let got = all_acking(
        &h,
        &mut rx,
        &[("ck", TaskState::Finished), ("cmd", TaskState::Failed)],
    )
    .await;
    assert_eq!(
        got[1].message.as_deref(),
        Some("Command exited with status 4"),
        "command task's exit status survives the restart"
    );
    let done = got[0].clone();
    let r: StepResult = serde_json::from_slice(&done.data.unwrap().0).unwrap();
    assert_eq!(r.outputs, Some(serde_json::json!({"survived": true})));
    eventually("executor exits after its work is acknowledged", || {
        emu.live_processes() == 0
    })
    .await;
    h.stop();
    emu.shutdown().await;
}

fn find_all(root: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(find_all(&p, name));
        } else if p.file_name().is_some_and(|n| n == name) {
            out.push(p);
        }
    }
    out
}
