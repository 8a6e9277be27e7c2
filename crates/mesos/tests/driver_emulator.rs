//! Scheduler driver against the emulator over real HTTP on loopback.

mod common;

use common::*;
use kaon_mesos::driver::{DriverError, DriverEvent};
use kaon_mesos::types::{Id, TaskState};
use kaon_mesos_emulator::{Emulator, Leadership};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_task_updates_are_ordered_retried_and_acked() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    let fw = subscribed(&mut rx).await;
    assert!(fw.value.ends_with("-0000"), "framework id {fw}");
    assert!(h.stream_id().is_some());
    let offer = offers(&mut rx).await.remove(0);
    assert_eq!(offer.framework_id, fw);
    launch(
        &h,
        &offer,
        vec![command_task("t1", &offer, "echo hello; exit 0")],
    )
    .await;

    // STARTING is retried (same uuid) until acknowledged; RUNNING waits behind it.
    let first = update(&mut rx, "t1", TaskState::Starting).await;
    let again = wait_for(&mut rx, "retry of STARTING", |e| match e {
        DriverEvent::Update(s) if s.task_id.value == "t1" => Some(s.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        again.state,
        TaskState::Starting,
        "next update must wait for the ack"
    );
    assert_eq!(again.uuid, first.uuid);
    assert_eq!(first.uuid.as_ref().unwrap().0.len(), 16);
    h.acknowledge(&first).await.unwrap();
    let running = update_acking(&h, &mut rx, "t1", TaskState::Running).await;
    assert_eq!(running.agent_id, Some(offer.agent_id.clone()));
    let done = update_acking(&h, &mut rx, "t1", TaskState::Finished).await;
    assert_eq!(
        done.message.as_deref(),
        Some("Command exited with status 0")
    );
    eventually("process reaped", || emu.live_processes() == 0).await;
    let stdout = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(stdout > 0);
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_command_reports_exit_code_and_kill_uses_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(
        &h,
        &offer,
        vec![
            command_task("bad", &offer, "exit 3"),
            command_task("long", &offer, "sleep 30"),
        ],
    )
    .await;
    let got = all_acking(
        &h,
        &mut rx,
        &[("bad", TaskState::Failed), ("long", TaskState::Running)],
    )
    .await;
    assert_eq!(
        got[0].message.as_deref(),
        Some("Command exited with status 3")
    );
    h.kill(Id::new("long"), Some(offer.agent_id.clone()))
        .await
        .unwrap();
    let killed = update_acking(&h, &mut rx, "long", TaskState::Killed).await;
    assert!(killed.uuid.is_some());
    eventually("sleep killed", || emu.live_processes() == 0).await;
    // Killing an unknown task answers like reconciliation (TASK_LOST).
    h.kill(Id::new("nope"), None).await.unwrap();
    let lost = update(&mut rx, "nope", TaskState::Lost).await;
    assert!(lost.uuid.is_none());
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_explicit_then_implicit() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(&h, &offer, vec![command_task("r1", &offer, "sleep 30")]).await;
    update_acking(&h, &mut rx, "r1", TaskState::Running).await;
    h.reconcile(vec![
        (Id::new("r1"), Some(offer.agent_id.clone())),
        (Id::new("ghost"), Some(offer.agent_id.clone())),
    ])
    .await
    .unwrap();
    let r1 = update(&mut rx, "r1", TaskState::Running).await;
    assert_eq!(r1.reason.as_deref(), Some("REASON_RECONCILIATION"));
    assert!(r1.uuid.is_none() && r1.data.is_none());
    let ghost = update(&mut rx, "ghost", TaskState::Lost).await;
    assert_eq!(ghost.reason.as_deref(), Some("REASON_RECONCILIATION"));
    h.reconcile_round(vec![(Id::new("ghost2"), None)])
        .await
        .unwrap();
    update(&mut rx, "ghost2", TaskState::Lost).await;
    let implicit = update(&mut rx, "r1", TaskState::Running).await;
    assert_eq!(implicit.reason.as_deref(), Some("REASON_RECONCILIATION"));
    h.stop();
    emu.shutdown().await;
}

/// Mesos answers reconciliation with the state of the update being
/// delivered (`task->status_update_state()`), not a later one still queued
/// behind it; `/master/state` shows the latest (issue 9 F).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_answers_the_state_being_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(&h, &offer, vec![command_task("d1", &offer, "sleep 30")]).await;
    // STARTING delivered and not acknowledged; RUNNING queued behind it.
    update(&mut rx, "d1", TaskState::Starting).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let st = master_state(&emu.master_url()).await;
        if st["frameworks"][0]["tasks"][0]["state"] == "TASK_RUNNING" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "task never RUNNING at the master: {st}"
        );
        tokio::task::yield_now().await;
    }
    h.reconcile(vec![(Id::new("d1"), Some(offer.agent_id.clone()))])
        .await
        .unwrap();
    let answer = wait_for(&mut rx, "reconciliation answer", |e| match e {
        DriverEvent::Update(s) if s.reason.as_deref() == Some("REASON_RECONCILIATION") => {
            Some(s.clone())
        }
        _ => None,
    })
    .await;
    assert_eq!(
        answer.state,
        TaskState::Starting,
        "the answer is the update being delivered, not the queued RUNNING"
    );
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubscribe_with_same_id_keeps_tasks_running() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h1, mut rx1) = driver(&emu.master_url(), framework(Some("kaon-fw-1"), 60.0));
    assert_eq!(subscribed(&mut rx1).await, Id::new("kaon-fw-1"));
    let offer = offers(&mut rx1).await.remove(0);
    launch(&h1, &offer, vec![command_task("keep", &offer, "sleep 30")]).await;
    update_acking(&h1, &mut rx1, "keep", TaskState::Running).await;
    h1.stop();
    drop(rx1);
    let url = emu.master_url();
    let deadline = std::time::Instant::now() + EVENT_WAIT_MAX;
    loop {
        let st = master_state(&url).await;
        if st["frameworks"][0]["connected"] == false {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "framework never seen disconnected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        emu.live_processes(),
        1,
        "task keeps running while the scheduler is away"
    );
    let (h2, mut rx2) = driver(&url, framework(Some("kaon-fw-1"), 60.0));
    assert_eq!(subscribed(&mut rx2).await, Id::new("kaon-fw-1"));
    h2.reconcile(vec![(Id::new("keep"), None)]).await.unwrap();
    update(&mut rx2, "keep", TaskState::Running).await;
    assert_eq!(emu.live_processes(), 1);
    h2.teardown().await.unwrap();
    eventually("teardown kills the task", || emu.live_processes() == 0).await;
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_subscription_fences_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (a, mut rxa) = driver(&emu.master_url(), framework(Some("ha-fw"), 60.0));
    subscribed(&mut rxa).await;
    let old_stream = a.stream_id().unwrap();
    let (b, mut rxb) = driver(&emu.master_url(), framework(Some("ha-fw"), 60.0));
    subscribed(&mut rxb).await;
    let err = wait_for(&mut rxa, "ERROR on old stream", |e| match e {
        DriverEvent::Error(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(err, "Framework failed over");
    assert_ne!(b.stream_id().unwrap(), old_stream);
    // The old instance's stream id is fenced off with 400.
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/scheduler", emu.master_url()))
        .header("Content-Type", "application/json")
        .header("Mesos-Stream-Id", &old_stream)
        .body(r#"{"type":"REVIVE","framework_id":{"value":"ha-fw"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(matches!(
        a.revive(vec![]).await,
        Err(DriverError::NotSubscribed { .. })
    ));
    b.revive(vec![]).await.unwrap();
    b.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_redirect_and_retries_503() {
    let dir = tempfile::tempdir().unwrap();
    let leader = start(&dir.path().join("leader")).await;
    let standby = start(&dir.path().join("standby")).await;
    standby.set_leadership(Leadership::Standby {
        leader: Some(leader.master_addr().to_string()),
    });
    leader.fail_next_requests(3);
    let (h, mut rx) = driver(&standby.master_url(), framework(None, 60.0));
    let master = wait_for(&mut rx, "SUBSCRIBED", |e| match e {
        DriverEvent::Subscribed { master_url, .. } => Some(master_url.clone()),
        _ => None,
    })
    .await;
    assert_eq!(master, leader.master_url());
    assert_eq!(h.master_url(), leader.master_url());
    leader.fail_next_requests(2);
    h.revive(vec![]).await.expect("call survives two 503s");
    // A standby without a leader answers 503 to everything.
    standby.set_leadership(Leadership::Standby { leader: None });
    let resp = reqwest::get(format!("{}/api/v1/scheduler", standby.master_url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    h.stop();
    leader.shutdown().await;
    standby.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_timeout_removes_framework_and_kills_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(Some("short-fw"), 0.3));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(&h, &offer, vec![command_task("doomed", &offer, "sleep 30")]).await;
    update_acking(&h, &mut rx, "doomed", TaskState::Running).await;
    h.stop();
    drop(rx);
    eventually("failover timeout kills the task", || {
        emu.live_processes() == 0
    })
    .await;
    let (_h2, mut rx2) = driver(&emu.master_url(), framework(Some("short-fw"), 0.3));
    let err = wait_for(&mut rx2, "ERROR", |e| match e {
        DriverEvent::Error(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(err, "Framework has been removed");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decline_filters_and_revive() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    h.decline(vec![offer.id.clone()], Some(3600.0))
        .await
        .unwrap();
    h.revive(vec![]).await.unwrap();
    let again = offers(&mut rx).await.remove(0);
    assert_ne!(again.id, offer.id);
    // Accepting a used offer id makes the tasks TASK_LOST (no uuid).
    launch(&h, &again, vec![command_task("x", &again, "true")]).await;
    update_acking(&h, &mut rx, "x", TaskState::Finished).await;
    launch(&h, &again, vec![command_task("y", &again, "true")]).await;
    let lost = update(&mut rx, "y", TaskState::Lost).await;
    assert_eq!(lost.reason.as_deref(), Some("REASON_INVALID_OFFERS"));
    assert!(lost.uuid.is_none());
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_standalone_config_parses_agents() {
    let a = kaon_mesos_emulator::parse_agent_spec(
        "127.0.0.1:0;cpus=2;mem=1024;ports=31000-31010;attr.rack=r1",
    )
    .unwrap();
    assert_eq!(a.resources.len(), 3);
    assert_eq!(a.attributes[0].value_text(), "r1");
    assert!(kaon_mesos_emulator::parse_agent_spec("127.0.0.1:0;cpus=lots").is_err());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.agents = vec![a.clone(), a];
    let emu = Emulator::start(cfg).await.unwrap();
    assert_eq!(emu.agent_addrs().len(), 2);
    let st = master_state(&emu.master_url()).await;
    assert_eq!(st["slaves"].as_array().unwrap().len(), 2);
    assert_eq!(st["slaves"][0]["attributes"]["rack"], "r1");
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_filter_delays_the_next_offer() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let refuse = std::time::Duration::from_millis(400);
    let declined_at = std::time::Instant::now();
    h.decline(vec![offer.id.clone()], Some(refuse.as_secs_f64()))
        .await
        .unwrap();
    let again = offers(&mut rx).await.remove(0);
    assert!(
        declined_at.elapsed() >= refuse,
        "re-offered after {:?}",
        declined_at.elapsed()
    );
    assert_eq!(again.agent_id, offer.agent_id);
    // SUPPRESS then REVIVE: the revive clears filters and brings offers back at once.
    h.decline(vec![again.id.clone()], Some(3600.0))
        .await
        .unwrap();
    h.suppress(vec![]).await.unwrap();
    h.revive(vec![]).await.unwrap();
    let revived = offers(&mut rx).await.remove(0);
    assert_ne!(revived.id, again.id);
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_killing_state_for_capable_frameworks() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let mut info = framework(None, 60.0);
    info.capabilities = vec![kaon_mesos::types::Capability {
        kind: "TASK_KILLING_STATE".into(),
    }];
    let (h, mut rx) = driver(&emu.master_url(), info);
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let mut t = command_task("k", &offer, "sleep 30");
    t.kill_policy = Some(kaon_mesos::types::KillPolicy {
        grace_period: Some(kaon_mesos::types::DurationInfo {
            nanoseconds: 100_000_000,
        }),
    });
    launch(&h, &offer, vec![t]).await;
    update_acking(&h, &mut rx, "k", TaskState::Running).await;
    h.kill(Id::new("k"), None).await.unwrap();
    let got = all_acking(
        &h,
        &mut rx,
        &[("k", TaskState::Killing), ("k", TaskState::Killed)],
    )
    .await;
    assert!(
        got[0].timestamp.unwrap() <= got[1].timestamp.unwrap(),
        "KILLING before KILLED"
    );
    eventually("killed", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_and_teardown() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let url = emu.master_url();
    let mut info = framework(Some("op-fw"), 60.0);
    info.principal = Some("alice".into());
    let (h, mut rx) = driver(&url, info.clone());
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(&h, &offer, vec![command_task("op", &offer, "sleep 30")]).await;
    update_acking(&h, &mut rx, "op", TaskState::Running).await;
    let get = |path: &'static str| {
        let url = url.clone();
        async move {
            serde_json::from_str::<serde_json::Value>(
                &reqwest::get(format!("{url}{path}"))
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            )
            .unwrap()
        }
    };
    assert_eq!(
        get("/master/frameworks").await["frameworks"][0]["id"],
        "op-fw"
    );
    assert_eq!(
        get("/master/tasks").await["tasks"][0]["state"],
        "TASK_RUNNING"
    );
    assert_eq!(
        get("/master/slaves").await["slaves"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // A re-subscription may not change the principal: ERROR, old one keeps going.
    let mut other = info.clone();
    other.principal = Some("mallory".into());
    let (_h2, mut rx2) = driver(&url, other);
    let err = wait_for(&mut rx2, "principal ERROR", |e| match e {
        DriverEvent::Error(m) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert!(err.contains("principal"), "{err}");
    h.revive(vec![])
        .await
        .expect("first subscription still valid");
    let client = reqwest::Client::new();
    let teardown = |id: &'static str| {
        client
            .post(format!("{url}/master/teardown"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("frameworkId={id}"))
            .send()
    };
    assert_eq!(teardown("nobody").await.unwrap().status(), 400);
    assert_eq!(teardown("op-fw").await.unwrap().status(), 200);
    eventually("teardown kills the task", || emu.live_processes() == 0).await;
    assert_eq!(
        get("/master/frameworks").await["completed_frameworks"][0]["id"],
        "op-fw"
    );
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_role_offers_carry_allocation_info() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let mut info = framework(None, 60.0);
    info.roles = vec!["kaon".into()];
    info.capabilities = vec![kaon_mesos::types::Capability {
        kind: "MULTI_ROLE".into(),
    }];
    let (h, mut rx) = driver(&emu.master_url(), info);
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    assert_eq!(
        offer
            .allocation_info
            .as_ref()
            .and_then(|a| a.role.as_deref()),
        Some("kaon")
    );
    assert!(
        offer
            .resources
            .iter()
            .all(|r| r.allocation_info == offer.allocation_info)
    );
    // Resources echoed back with allocation_info are accepted.
    let mut t = command_task("mr", &offer, "true");
    for r in t.resources.iter_mut() {
        r.allocation_info = offer.allocation_info.clone();
    }
    launch(&h, &offer, vec![t]).await;
    update_acking(&h, &mut rx, "mr", TaskState::Finished).await;
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstartable_executor_fails_with_container_launch_failed() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let mut t = command_task("nope", &offer, "true");
    t.command = None;
    t.executor = Some(kaon_mesos::executor::executor_info(
        "nope-exec",
        "/nonexistent/kaon-executor",
        resources(0.05, 32.0),
    ));
    // A task that fails validation (command and executor) gets TASK_ERROR without uuid.
    let mut bad = command_task("bad", &offer, "true");
    bad.executor = Some(kaon_mesos::executor::executor_info(
        "e",
        "kaon-executor",
        vec![],
    ));
    launch(&h, &offer, vec![t, bad]).await;
    let got = all_acking(
        &h,
        &mut rx,
        &[("nope", TaskState::Failed), ("bad", TaskState::Error)],
    )
    .await;
    let (failed, err) = (got[0].clone(), got[1].clone());
    assert_eq!(
        failed.reason.as_deref(),
        Some("REASON_CONTAINER_LAUNCH_FAILED")
    );
    assert!(
        failed
            .message
            .unwrap()
            .contains("/nonexistent/kaon-executor")
    );
    assert_eq!(err.reason.as_deref(), Some("REASON_TASK_INVALID"));
    assert!(err.uuid.is_none());
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_framework_and_unsupported_operations() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let info = framework(Some("upd-fw"), 60.0);
    let (h, mut rx) = driver(&emu.master_url(), info.clone());
    subscribed(&mut rx).await;
    let mut renamed = info.clone();
    renamed.name = "renamed".into();
    renamed.failover_timeout = Some(120.0);
    h.update_framework(renamed.clone()).await.unwrap();
    let st = master_state(&emu.master_url()).await;
    assert_eq!(st["frameworks"][0]["name"], "renamed");
    assert_eq!(st["frameworks"][0]["failover_timeout"], 120.0);
    renamed.principal = Some("someone-else".into());
    match h.update_framework(renamed).await {
        Err(DriverError::Status {
            status: 400, body, ..
        }) => assert!(body.contains("principal"), "{body}"),
        other => panic!("expected 400, got {other:?}"),
    }
    // LAUNCH with an operation id, and LAUNCH_GROUP, are refused with TASK_ERROR.
    let offer = offers(&mut rx).await.remove(0);
    let mut op = kaon_mesos::types::scheduler::Operation::launch(vec![command_task(
        "with-id", &offer, "true",
    )]);
    op.id = Some(Id::new("op-1"));
    let group = kaon_mesos::types::scheduler::Operation {
        kind: kaon_mesos::types::scheduler::OperationType::LaunchGroup,
        id: None,
        launch: None,
        launch_group: Some(kaon_mesos::types::scheduler::LaunchGroup {
            executor: kaon_mesos::executor::executor_info("g", "kaon-executor", vec![]),
            task_group: kaon_mesos::types::scheduler::TaskGroup {
                tasks: vec![command_task("grouped", &offer, "true")],
            },
        }),
    };
    h.accept(vec![offer.id.clone()], vec![op, group], Some(0.0))
        .await
        .unwrap();
    let e1 = update(&mut rx, "with-id", TaskState::Error).await;
    assert_eq!(e1.reason.as_deref(), Some("REASON_TASK_INVALID"));
    let e2 = update(&mut rx, "grouped", TaskState::Error).await;
    assert_eq!(e2.reason.as_deref(), Some("REASON_TASK_GROUP_INVALID"));
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_handle_kills_task_processes() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(
        &h,
        &offer,
        vec![command_task(
            "orphan",
            &offer,
            "echo $$ > pid.tmp && mv pid.tmp pid; exec sleep 30",
        )],
    )
    .await;
    update_acking(&h, &mut rx, "orphan", TaskState::Running).await;
    let mut pid = 0i32;
    eventually("task wrote its pid", || {
        pid = find_named(dir.path(), "pid")
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    })
    .await;
    // SAFETY: signal 0 only probes for existence.
    let alive = |pid: i32| unsafe { libc::kill(pid, 0) } == 0;
    assert!(alive(pid));
    h.stop();
    drop(emu);
    eventually("task killed when the handle is dropped", || !alive(pid)).await;
}

fn find_named(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(f) = find_named(&p, name) {
                return Some(f);
            }
        } else if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_during_disconnection_are_delivered_after_resubscribe() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let url = emu.master_url();
    let (h1, mut rx1) = driver(&url, framework(Some("away-fw"), 60.0));
    subscribed(&mut rx1).await;
    let offer = offers(&mut rx1).await.remove(0);
    launch(
        &h1,
        &offer,
        vec![command_task(
            "away",
            &offer,
            "while [ ! -f go ]; do sleep 0.02; done",
        )],
    )
    .await;
    update_acking(&h1, &mut rx1, "away", TaskState::Running).await;
    h1.stop();
    drop(rx1);
    let deadline = std::time::Instant::now() + EVENT_WAIT_MAX;
    while master_state(&url).await["frameworks"][0]["connected"] != false {
        assert!(
            std::time::Instant::now() < deadline,
            "disconnect not noticed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The task finishes while nobody is subscribed.
    let go = find_named(dir.path(), "stdout")
        .expect("sandbox")
        .parent()
        .unwrap()
        .join("go");
    std::fs::write(go, b"").unwrap();
    eventually("task finished", || emu.live_processes() == 0).await;
    let (h2, mut rx2) = driver(&url, framework(Some("away-fw"), 60.0));
    subscribed(&mut rx2).await;
    let finished = update(&mut rx2, "away", TaskState::Finished).await;
    assert!(
        finished.uuid.is_some(),
        "the agent kept the update for delivery"
    );
    h2.acknowledge(&finished).await.unwrap();
    // Acknowledged terminal tasks are forgotten by the master.
    h2.reconcile(vec![(Id::new("away"), Some(offer.agent_id.clone()))])
        .await
        .unwrap();
    update(&mut rx2, "away", TaskState::Lost).await;
    h2.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_aware_reconciliation_states() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let mut info = framework(None, 60.0);
    info.capabilities = vec![kaon_mesos::types::Capability {
        kind: "PARTITION_AWARE".into(),
    }];
    let (h, mut rx) = driver(&emu.master_url(), info);
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let agent = Id::new(&emu.agent_ids()[0]);
    assert_eq!(agent, offer.agent_id);
    h.reconcile(vec![
        (Id::new("gone"), Some(agent)),
        (Id::new("unknown"), Some(Id::new("no-such-agent"))),
    ])
    .await
    .unwrap();
    update(&mut rx, "gone", TaskState::Gone).await;
    update(&mut rx, "unknown", TaskState::Unknown).await;
    // Invalid offers: TASK_DROPPED instead of TASK_LOST.
    h.decline(vec![offer.id.clone()], Some(0.0)).await.unwrap();
    launch(&h, &offer, vec![command_task("late", &offer, "true")]).await;
    let dropped = update(&mut rx, "late", TaskState::Dropped).await;
    assert_eq!(dropped.reason.as_deref(), Some("REASON_INVALID_OFFERS"));
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_an_agent_rescinds_offers_and_loses_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    launch(&h, &offer, vec![command_task("doomed", &offer, "sleep 30")]).await;
    // Collect the re-offered leftover and TASK_RUNNING, in whatever order.
    let (mut leftover, mut running) = (None, false);
    while leftover.is_none() || !running {
        match tokio::time::timeout(EVENT_WAIT_MAX, rx.recv())
            .await
            .expect("event")
            .expect("driver")
        {
            DriverEvent::Offers(o) => leftover = o.into_iter().next().map(|o| o.id),
            DriverEvent::Update(s) => {
                if s.uuid.is_some() {
                    h.acknowledge(&s).await.unwrap();
                }
                running |= s.state == TaskState::Running;
            }
            _ => {}
        }
    }
    emu.lose_agent(0);
    let rescinded = wait_for(&mut rx, "RESCIND", |e| match e {
        DriverEvent::Rescind(id) => Some(id.clone()),
        _ => None,
    })
    .await;
    assert_eq!(Some(rescinded), leftover);
    let lost = update(&mut rx, "doomed", TaskState::Lost).await;
    assert_eq!(lost.reason.as_deref(), Some("REASON_AGENT_REMOVED"));
    assert!(lost.uuid.is_none());
    let failure = wait_for(&mut rx, "FAILURE", |e| match e {
        DriverEvent::Failure(f) => Some(f.clone()),
        _ => None,
    })
    .await;
    assert_eq!(failure.agent_id, Some(offer.agent_id.clone()));
    assert_eq!(failure.executor_id, None);
    eventually("the agent's processes died", || emu.live_processes() == 0).await;
    h.reconcile(vec![(Id::new("doomed"), None)]).await.unwrap();
    update(&mut rx, "doomed", TaskState::Lost).await;
    h.stop();
    emu.shutdown().await;
}

/// Issue 9, F: a task larger than its offer gets TASK_ERROR with Mesos
/// 1.11's wording (frameworks such as Singularity match on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_larger_than_its_offer_gets_mesos_wording() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let mut t = command_task("huge", &offer, "true");
    t.resources = resources(100_000.0, 32.0);
    launch(&h, &offer, vec![t]).await;
    let got = all_acking(&h, &mut rx, &[("huge", TaskState::Error)]).await;
    let msg = got[0].message.clone().unwrap_or_default();
    assert!(
        msg.starts_with("Total resources cpus:100000; mem:32 required by task and its executor is more than available cpus:"),
        "{msg}"
    );
    assert_eq!(got[0].reason.as_deref(), Some("REASON_TASK_INVALID"));
    h.stop();
    emu.shutdown().await;
}
