//! kaon-executor run by the emulator's agent, driven by the scheduler driver.

mod common;

use common::*;
use kaon_mesos::driver::{DriverEvent, DriverHandle};
use kaon_mesos::executor::{ExecutorMessage, StepResult, StepSpec, executor_info};
use kaon_mesos::types::{B64, Id, Offer, TaskInfo, TaskState};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::Receiver;

fn step_task(id: &str, offer: &Offer, spec: StepSpec) -> TaskInfo {
    TaskInfo {
        name: id.into(),
        task_id: Id::new(id),
        agent_id: offer.agent_id.clone(),
        resources: resources(0.1, 32.0),
        executor: Some(executor_info(
            &format!("exec-{id}"),
            "kaon-executor",
            resources(0.05, 32.0),
        )),
        command: None,
        kill_policy: None,
        data: Some(B64(serde_json::to_vec(&spec).unwrap())),
        labels: None,
    }
}

/// Waits until a step reports the status text `text` (its progress file).
async fn step_says(rx: &mut Receiver<DriverEvent>, text: &str) {
    wait_for(rx, text, |e| match e {
        DriverEvent::Message { data, .. } => serde_json::from_slice::<ExecutorMessage>(data)
            .ok()
            .filter(|m| matches!(m, ExecutorMessage::Status { text: t, .. } if t == text)),
        _ => None,
    })
    .await;
}

fn shell(cmd: &str) -> StepSpec {
    StepSpec {
        shell: Some(cmd.into()),
        ..Default::default()
    }
}

fn result(status: &kaon_mesos::types::TaskStatus) -> StepResult {
    serde_json::from_slice(&status.data.as_ref().expect("terminal status has data").0)
        .expect("step result json")
}

async fn setup(
    dir: &std::path::Path,
) -> (
    kaon_mesos_emulator::EmulatorHandle,
    DriverHandle,
    Receiver<DriverEvent>,
    Offer,
) {
    let emu = start(dir).await;
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    (emu, h, rx, offer)
}

/// Collects framework messages and acks updates until `task` reaches `state`.
async fn run_until(
    h: &DriverHandle,
    rx: &mut Receiver<DriverEvent>,
    task: &str,
    state: TaskState,
) -> (kaon_mesos::types::TaskStatus, Vec<ExecutorMessage>) {
    run_until_seeing(h, rx, task, state, &mut Vec::new()).await
}

/// Like `run_until`, also keeping the FAILURE events seen on the way.
async fn run_until_seeing(
    h: &DriverHandle,
    rx: &mut Receiver<DriverEvent>,
    task: &str,
    state: TaskState,
    failures: &mut Vec<kaon_mesos::types::scheduler::Failure>,
) -> (kaon_mesos::types::TaskStatus, Vec<ExecutorMessage>) {
    let deadline = tokio::time::Instant::now() + EVENT_WAIT_MAX;
    let mut messages = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("event in time")
            .expect("driver alive")
        {
            DriverEvent::Message {
                data, executor_id, ..
            } => {
                let m: ExecutorMessage =
                    serde_json::from_slice(&data).expect("executor message json");
                let (ExecutorMessage::Heartbeat { task_id }
                | ExecutorMessage::Progress { task_id, .. }
                | ExecutorMessage::Status { task_id, .. }) = &m;
                assert_eq!(executor_id.value, format!("exec-{task_id}"));
                messages.push(m);
            }
            DriverEvent::Failure(f) => failures.push(f),
            DriverEvent::Update(s) => {
                if s.uuid.is_some() {
                    h.acknowledge(&s).await.unwrap();
                }
                if s.task_id.value == task && s.state == state {
                    return (s, messages);
                }
                assert!(
                    !s.state.is_terminal() || s.task_id.value != task,
                    "unexpected terminal {:?}: {:?}",
                    s.state,
                    s.message
                );
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_and_progress_reach_the_scheduler() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let spec = StepSpec {
        heartbeat_seconds: Some(0.05),
        ..shell(
            r#"echo 'percent 50' >> "$KAON_PROGRESS_FILE"; echo 'status training hard' >> "$KAON_PROGRESS_FILE"; echo "$STEP_NAME" > out.txt; printf '{"loss": 0.25, "name": "%s"}' "$STEP_NAME" > "$KAON_OUTPUTS_FILE""#,
        )
    };
    let mut spec = spec;
    spec.env.insert("STEP_NAME".into(), "train".into());
    launch(&h, &offer, vec![step_task("s1", &offer, spec)]).await;
    let mut failures = Vec::new();
    let (done, messages) =
        run_until_seeing(&h, &mut rx, "s1", TaskState::Finished, &mut failures).await;
    let r = result(&done);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.reason, "exited");
    assert_eq!(
        r.outputs,
        Some(serde_json::json!({"loss": 0.25, "name": "train"}))
    );
    assert!(
        messages.contains(&ExecutorMessage::Progress {
            task_id: "s1".into(),
            percent: 50.0
        }),
        "{messages:?}"
    );
    assert!(
        messages.contains(&ExecutorMessage::Status {
            task_id: "s1".into(),
            text: "training hard".into()
        }),
        "{messages:?}"
    );
    assert_eq!(done.source, Some(kaon_mesos::types::Source::Executor));
    // The executor exits once its work is acknowledged: FAILURE with status 0.
    // (It may overtake TASK_FINISHED, which waits for the RUNNING ack.)
    let failure = match failures.pop() {
        Some(f) => f,
        None => {
            wait_for(&mut rx, "executor exit", |e| match e {
                DriverEvent::Failure(f) => Some(f.clone()),
                _ => None,
            })
            .await
        }
    };
    assert_eq!(failure.executor_id, Some(Id::new("exec-s1")));
    assert_eq!(failure.status, Some(0));
    eventually("executor reaped", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_step_reports_exit_code_and_oversized_outputs_fail() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let big = StepSpec {
        outputs_bytes_max: Some(100),
        ..shell(r#"printf '{"blob": "%0500d"}' 0 > "$KAON_OUTPUTS_FILE""#)
    };
    launch(
        &h,
        &offer,
        vec![
            step_task("fail7", &offer, shell("echo oops >&2; exit 7")),
            step_task("big", &offer, big),
        ],
    )
    .await;
    let got = all_acking(
        &h,
        &mut rx,
        &[("fail7", TaskState::Failed), ("big", TaskState::Failed)],
    )
    .await;
    let r = result(&got[0]);
    assert_eq!(
        (r.exit_code, r.signal, r.reason.as_str()),
        (Some(7), None, "nonzero_exit")
    );
    assert_eq!(got[0].message.as_deref(), Some("step exited with status 7"));
    let r = result(&got[1]);
    assert_eq!(r.reason, "outputs_too_large");
    assert!(r.error.unwrap().contains("over the limit of 100 bytes"));
    assert_eq!(r.outputs, None);
    // stderr went to the sandbox log file.
    let stderr =
        find_file(dir.path(), "stderr", "oops").expect("step stderr captured in the sandbox");
    // ... and the agent serves it.
    let agent = emu.agent_addrs()[0];
    let served = reqwest::Client::new()
        .get(format!(
            "http://{agent}/files/download?path={}",
            stderr.display()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.text().await.unwrap(), "oops\n");
    let outside = reqwest::Client::new()
        .get(format!("http://{agent}/files/download?path=/etc/passwd"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        outside.status(),
        403,
        "paths outside the sandboxes are refused"
    );
    h.stop();
    emu.shutdown().await;
}

fn find_file(root: &std::path::Path, name: &str, needle: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let p = entry.path();
        if p.is_dir() {
            if let Some(found) = find_file(&p, name, needle) {
                return Some(found);
            }
        } else if p.file_name().is_some_and(|n| n == name)
            && std::fs::read_to_string(&p).is_ok_and(|s| s.contains(needle))
        {
            return Some(p);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_escalates_to_sigkill_after_grace() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let mut info = framework(None, 60.0);
    info.capabilities = vec![kaon_mesos::types::Capability {
        kind: "TASK_KILLING_STATE".into(),
    }];
    let (h, mut rx) = driver(&emu.master_url(), info);
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let grace = Duration::from_millis(600);
    let spec = StepSpec {
        kill_grace_seconds: Some(grace.as_secs_f64()),
        ..shell(r#"trap '' TERM; echo 'status ready' >> "$KAON_PROGRESS_FILE"; sleep 30"#)
    };
    launch(&h, &offer, vec![step_task("stubborn", &offer, spec)]).await;
    let _ = update_acking(&h, &mut rx, "stubborn", TaskState::Running).await;
    step_says(&mut rx, "ready").await;
    let asked = Instant::now();
    h.kill(Id::new("stubborn"), Some(offer.agent_id.clone()))
        .await
        .unwrap();
    run_until(&h, &mut rx, "stubborn", TaskState::Killing).await;
    let (killed, _) = run_until(&h, &mut rx, "stubborn", TaskState::Killed).await;
    assert!(
        asked.elapsed() >= grace,
        "SIGKILL only after the grace period ({:?})",
        asked.elapsed()
    );
    let r = result(&killed);
    assert_eq!(r.reason, "killed");
    assert_eq!(r.signal, Some(9));
    eventually("executor exits after the kill", || {
        emu.live_processes() == 0
    })
    .await;
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_scheduler_messages_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let spec = StepSpec {
        heartbeat_seconds: Some(0.05),
        ..shell("sleep 30")
    };
    launch(&h, &offer, vec![step_task("hb", &offer, spec)]).await;
    update_acking(&h, &mut rx, "hb", TaskState::Running).await;
    wait_for(&mut rx, "heartbeat", |e| match e {
        DriverEvent::Message { data, .. } => serde_json::from_slice::<ExecutorMessage>(data)
            .ok()
            .filter(|m| matches!(m, ExecutorMessage::Heartbeat { task_id } if task_id == "hb")),
        _ => None,
    })
    .await;
    h.message(
        offer.agent_id.clone(),
        Id::new("exec-hb"),
        b"hello".to_vec(),
    )
    .await
    .unwrap();
    h.shutdown(Id::new("exec-hb"), offer.agent_id.clone())
        .await
        .unwrap();
    let (_, _) = run_until(&h, &mut rx, "hb", TaskState::Killed).await;
    eventually("executor gone", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_step_spec_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let mut t = step_task("nospec", &offer, StepSpec::default());
    t.data = Some(B64(b"not json".to_vec()));
    launch(&h, &offer, vec![t]).await;
    let s = update_acking(&h, &mut rx, "nospec", TaskState::Failed).await;
    assert_eq!(result(&s).reason, "bad_step_spec");
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_resubscribes_with_unacked_update_after_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let emu = start(dir.path()).await;
    let mut info = framework(None, 60.0);
    info.checkpoint = Some(true);
    let (h, mut rx) = driver(&emu.master_url(), info);
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    // The step waits for a file the test creates while the agent is down.
    let spec = shell(
        r#"while [ ! -f go ]; do sleep 0.02; done; printf '{"ok": true}' > "$KAON_OUTPUTS_FILE""#,
    );
    launch(&h, &offer, vec![step_task("rs", &offer, spec)]).await;
    update_acking(&h, &mut rx, "rs", TaskState::Running).await;
    emu.restart_agent(0);
    let task_dir = find_file(dir.path(), "progress", "")
        .expect("task dir")
        .parent()
        .unwrap()
        .to_path_buf();
    std::fs::write(task_dir.join("go"), b"").unwrap();
    eventually("the executor's terminal UPDATE is refused", || {
        emu.agent_refused_updates(0) >= 1
    })
    .await;
    assert_eq!(emu.live_processes(), 1, "executor waits for the agent");
    emu.finish_agent_recovery(0);
    let (done, _) = run_until(&h, &mut rx, "rs", TaskState::Finished).await;
    assert_eq!(result(&done).outputs, Some(serde_json::json!({"ok": true})));
    eventually(
        "executor exits once its replayed update is acknowledged",
        || emu.live_processes() == 0,
    )
    .await;
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_that_never_subscribes_or_crashes_fails_its_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.executor_registration_timeout = Duration::from_millis(300);
    let emu = kaon_mesos_emulator::Emulator::start(cfg).await.unwrap();
    let (h, mut rx) = driver(&emu.master_url(), framework(None, 60.0));
    subscribed(&mut rx).await;
    let offer = offers(&mut rx).await.remove(0);
    let mut silent = step_task("silent", &offer, shell("true"));
    silent.executor.as_mut().unwrap().command =
        Some(kaon_mesos::types::CommandInfo::shell("sleep 30"));
    let mut crash = step_task("crash", &offer, shell("true"));
    crash.executor.as_mut().unwrap().command =
        Some(kaon_mesos::types::CommandInfo::shell("exit 3"));
    launch(&h, &offer, vec![silent, crash]).await;
    let got = all_acking(
        &h,
        &mut rx,
        &[("silent", TaskState::Failed), ("crash", TaskState::Failed)],
    )
    .await;
    assert_eq!(
        got[0].reason.as_deref(),
        Some("REASON_EXECUTOR_REGISTRATION_TIMEOUT")
    );
    assert_eq!(got[1].reason.as_deref(), Some("REASON_EXECUTOR_TERMINATED"));
    assert_eq!(got[1].source, Some(kaon_mesos::types::Source::Agent));
    assert!(
        got[1].uuid.is_some(),
        "agent-generated failures are reliable"
    );
    eventually("both executors gone", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_without_checkpointing_exits_when_the_agent_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    launch(
        &h,
        &offer,
        vec![step_task("gone", &offer, shell("sleep 30"))],
    )
    .await;
    update_acking(&h, &mut rx, "gone", TaskState::Running).await;
    emu.restart_agent(0);
    // MESOS_CHECKPOINT=0: the executor kills its step and exits at once.
    eventually("executor exits", || emu.live_processes() == 0).await;
    emu.finish_agent_recovery(0);
    let failed = update_acking(&h, &mut rx, "gone", TaskState::Failed).await;
    assert_eq!(failed.reason.as_deref(), Some("REASON_EXECUTOR_TERMINATED"));
    h.stop();
    emu.shutdown().await;
}

/// Issue 9 G: a step whose interpreter is not installed says which program
/// is missing, where it was looked for, and what provides it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_interpreter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let spec = StepSpec {
        argv: vec!["Rscript".into(), "model.R".into()],
        env: [("PATH".to_string(), "/nowhere".to_string())].into(),
        ..Default::default()
    };
    launch(&h, &offer, vec![step_task("r", &offer, spec)]).await;
    let (s, _) = run_until(&h, &mut rx, "r", TaskState::Failed).await;
    let msg = s.message.clone().unwrap_or_default();
    assert!(
        msg.contains("program \"Rscript\" is not installed on agent")
            && msg.contains("(not found in PATH=/nowhere); kind: r needs R (Debian: apt-get install r-base-core)"),
        "{msg}"
    );
    h.stop();
    emu.shutdown().await;
}

// ------------------------------------------------------- container steps

/// The test image (built once from this machine's files, no registry), or
/// None when `KAON_DOCKER_TESTS=skip` says this machine has no Docker.
fn test_image() -> Option<&'static str> {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    const IMAGE: &str = "kaon-test-sh:local";
    if std::env::var("KAON_DOCKER_TESTS").as_deref() == Ok("skip") {
        eprintln!("container tests SKIPPED: KAON_DOCKER_TESTS=skip");
        return None;
    }
    BUILT.get_or_init(|| {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/images/build-sh-image.sh"
        );
        let out = std::process::Command::new(script)
            .arg(IMAGE)
            .output()
            .expect("run build-sh-image.sh");
        assert!(
            out.status.success(),
            "building the test image needs a Docker daemon (set KAON_DOCKER_TESTS=skip \
             on a machine without one): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    Some(IMAGE)
}

fn containers_of(task: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "--all",
            "--quiet",
            "--filter",
            &format!("label=kaon.task={task}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn in_container(image: &str, cmd: &str) -> StepSpec {
    StepSpec {
        container: Some(kaon_mesos::executor::ContainerSpec {
            image: image.into(),
            cpus: Some(0.5),
            mem_mb: Some(64.0),
        }),
        env: [("GREETING".to_string(), "hello".to_string())].into(),
        ..shell(cmd)
    }
}

/// Issue 10, section 3: a container step runs in its image (not on the
/// host), with its environment, outputs and progress files reachable
/// inside, and the container is removed after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_step_runs_in_its_image_and_is_removed_after() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let spec = in_container(
        image,
        r#"echo percent 40 >> "$KAON_PROGRESS_FILE"; printf '{"where":"%s","greeting":"%s"}' "$(cat /etc/kaon-image)" "$GREETING" > "$KAON_OUTPUTS_FILE""#,
    );
    // A colon in the id, as kaon's task ids have: the sandbox path has one.
    launch(&h, &offer, vec![step_task("r1:boxed", &offer, spec)]).await;
    let (done, messages) = run_until(&h, &mut rx, "r1:boxed", TaskState::Finished).await;
    let r = result(&done);
    assert_eq!(
        r.outputs,
        Some(serde_json::json!({"where": "in-image", "greeting": "hello"})),
        "{r:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| matches!(m, ExecutorMessage::Progress { percent, .. } if *percent == 40.0)),
        "{messages:?}"
    );
    eventually("the container is removed", || {
        containers_of("r1:boxed").is_empty()
    })
    .await;
    h.stop();
    emu.shutdown().await;
}

/// An image that does not exist is a clear step failure naming it, never a
/// run on the host (an agent without Docker: the executor's unit test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_a_clear_failure() {
    if test_image().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let spec = in_container("kaon-no-such-image:nope", "true");
    launch(&h, &offer, vec![step_task("noimage", &offer, spec)]).await;
    let (failed, _) = run_until(&h, &mut rx, "noimage", TaskState::Failed).await;
    let r = result(&failed);
    assert_eq!(r.reason, "container_failed", "{r:?}");
    let e = r.error.unwrap();
    assert!(
        e.starts_with("the container step (image \"kaon-no-such-image:nope\") did not run: docker exited 125: "),
        "{e}"
    );
    assert!(e.contains("kaon-no-such-image"), "docker's words: {e}");
    h.stop();
    emu.shutdown().await;
}

/// Killing a container step stops its container (even one that ignores
/// SIGTERM) and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_container_step_stops_and_removes_its_container() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let spec = StepSpec {
        kill_grace_seconds: Some(1.0),
        ..in_container(
            image,
            r#"trap '' TERM; echo 'status ready' >> "$KAON_PROGRESS_FILE"; sleep 600"#,
        )
    };
    launch(&h, &offer, vec![step_task("boxkill", &offer, spec)]).await;
    let _ = update_acking(&h, &mut rx, "boxkill", TaskState::Running).await;
    step_says(&mut rx, "ready").await;
    assert!(
        !containers_of("boxkill").is_empty(),
        "it runs in a container"
    );
    h.kill(Id::new("boxkill"), Some(offer.agent_id.clone()))
        .await
        .unwrap();
    let (killed, _) = run_until(&h, &mut rx, "boxkill", TaskState::Killed).await;
    assert_eq!(result(&killed).reason, "killed");
    eventually("the container is gone", || {
        containers_of("boxkill").is_empty()
    })
    .await;
    h.stop();
    emu.shutdown().await;
}

/// Issue 10, section 6: a step that prints far more than its log limit
/// keeps at most the limit in `stdout` plus as much in `stdout.1`, the
/// newest output last; the step is never blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatty_step_cannot_fill_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let max = 100_000u64;
    let spec = StepSpec {
        log_bytes_max: Some(max),
        // About 2 MB to stdout and 2 MB to stderr.
        ..shell(
            r#"i=0; while [ $i -lt 20000 ]; do echo "line $i of a step that talks too much, padded to about a hundred bytes............"; echo "err $i ......................................................................................." >&2; i=$((i+1)); done; echo last-line"#,
        )
    };
    launch(&h, &offer, vec![step_task("chatty", &offer, spec)]).await;
    let (done, _) = run_until(&h, &mut rx, "chatty", TaskState::Finished).await;
    assert_eq!(result(&done).exit_code, Some(0));
    let stdout = find_file(dir.path(), "stdout", "last-line").expect("the newest output is kept");
    let task_dir = stdout.parent().unwrap();
    for name in ["stdout", "stdout.1", "stderr", "stderr.1"] {
        let len = std::fs::metadata(task_dir.join(name)).unwrap().len();
        assert!(len <= max, "{name} holds {len} bytes, over {max}");
        assert!(len > 0, "{name} is used");
    }
    let text = std::fs::read_to_string(&stdout).unwrap();
    assert!(text.ends_with("last-line\n"), "the last bytes are there");
    h.stop();
    emu.shutdown().await;
}

/// Issue 10, section 6: a step that uses more memory than its task asked
/// for is stopped and reported as Mesos' memory isolator reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_over_its_memory_is_stopped_as_mesos_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    // 32 MB asked (step_task); about 200 MB touched, in a child of the shell.
    let spec = shell(
        r#"python3 -c 'import time; b = bytearray(200 * 1024 * 1024); time.sleep(30)'; echo survived"#,
    );
    launch(&h, &offer, vec![step_task("hog", &offer, spec)]).await;
    let (failed, _) = run_until(&h, &mut rx, "hog", TaskState::Failed).await;
    assert_eq!(
        failed.reason.as_deref(),
        Some("REASON_CONTAINER_LIMITATION_MEMORY")
    );
    let m = failed.message.clone().unwrap_or_default();
    assert!(
        m.starts_with("Memory limit exceeded: Requested: 32MB Maximum Used: "),
        "{m}"
    );
    assert_eq!(result(&failed).reason, "memory_limit");
    assert!(
        find_file(dir.path(), "stdout", "survived").is_none(),
        "the whole group was stopped"
    );
    h.stop();
    emu.shutdown().await;
}

/// Issue 10, section 6: a step that starts a background process and exits
/// leaves nothing behind (its process group ends with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_forks_and_exits_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let pidfile = dir.path().join("orphan.pid");
    let spec = shell(&format!(
        "sleep 300 & echo $! > {}; exit 0",
        pidfile.display()
    ));
    launch(&h, &offer, vec![step_task("forker", &offer, spec)]).await;
    let (done, _) = run_until(&h, &mut rx, "forker", TaskState::Finished).await;
    assert_eq!(result(&done).exit_code, Some(0));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually("the background process is gone", || {
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        // A zombie not yet reaped by init counts as gone.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        !alive || zombie
    })
    .await;
    h.stop();
    emu.shutdown().await;
}

/// A container step over its memory is stopped as a host step is, also
/// where the kernel does not enforce Docker's --memory (as on this machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_step_over_its_memory_is_stopped() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    // 32 MB asked (step_task); the shell holds about 150 MB.
    let spec = in_container(
        image,
        "x=$(head -c 150000000 /dev/urandom); sleep 30; echo survived",
    );
    launch(&h, &offer, vec![step_task("boxhog", &offer, spec)]).await;
    let (failed, _) = run_until(&h, &mut rx, "boxhog", TaskState::Failed).await;
    assert_eq!(
        failed.reason.as_deref(),
        Some("REASON_CONTAINER_LIMITATION_MEMORY")
    );
    eventually("the container is gone", || {
        containers_of("boxhog").is_empty()
    })
    .await;
    h.stop();
    emu.shutdown().await;
}

/// `kind: spark` without Spark: a stand-in `spark-submit` prints what a
/// real driver prints. A job aborted by a lost executor is the platform's
/// failure, an exception in the job the user's; a killed cluster-mode
/// step kills its application with `spark-submit --kill`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spark_step_says_whose_failure_it_was_and_a_cluster_application_is_killed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("spark-submit");
    std::fs::write(
        &fake,
        r#"#!/bin/sh
case " $* " in *" --kill "*) echo "$@" > "$MARK/killed"; exit 0;; esac
case "$MODE" in
  lost) echo "ERROR Job aborted due to stage failure: Task 0 in stage 1.0 failed 4 times: ExecutorLostFailure (executor 1 exited)" >&2; exit 1;;
  user) printf 'Traceback (most recent call last):\nValueError: bad input\n' >&2; exit 1;;
  cluster) echo "INFO Client: Driver successfully submitted as driver-42" >&2; sleep 2; echo 'status submitted' >> "$KAON_PROGRESS_FILE"; sleep 30;;
esac
"#,
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let spark = |mode: &str, args: &[&str]| {
        let mut spec = StepSpec {
            argv: std::iter::once(fake.display().to_string())
                .chain(args.iter().map(|a| a.to_string()))
                .collect(),
            kind: Some("spark".into()),
            ..Default::default()
        };
        spec.env.insert("MODE".into(), mode.into());
        spec.env
            .insert("MARK".into(), dir.path().display().to_string());
        spec
    };
    let local = ["--master", "local[2]", "job.py"];
    let cluster = [
        "--master",
        "spark://127.0.0.1:7077",
        "--deploy-mode",
        "cluster",
        "app.py",
    ];
    launch(
        &h,
        &offer,
        vec![
            step_task("lost", &offer, spark("lost", &local)),
            step_task("user", &offer, spark("user", &local)),
            step_task("cl", &offer, spark("cluster", &cluster)),
        ],
    )
    .await;
    // Both fail at once, in either order.
    let ended = updates_acking(&h, &mut rx, &["lost", "user"], TaskState::Failed).await;
    let lost = &ended["lost"];
    let r = result(lost);
    assert_eq!(r.reason, "platform_failure", "{r:?}");
    assert_eq!(
        r.error.as_deref(),
        Some("a Spark executor was lost (Spark); spark-submit ended with status 1")
    );
    assert_eq!(lost.reason, None, "only Mesos' own reasons go on the wire");
    assert_eq!(result(&ended["user"]).reason, "nonzero_exit");

    // The cluster-mode driver says so 2 s after it starts: well after both
    // failures above.
    step_says(&mut rx, "submitted").await;
    h.kill(Id::new("cl"), Some(offer.agent_id.clone()))
        .await
        .unwrap();
    run_until(&h, &mut rx, "cl", TaskState::Killed).await;
    let killed = dir.path().join("killed");
    // The shell creates the file before it writes the line: wait for the
    // whole line, not for the file.
    eventually("spark-submit --kill", || {
        std::fs::read_to_string(&killed).is_ok_and(|s| s.ends_with('\n'))
    })
    .await;
    assert_eq!(
        std::fs::read_to_string(&killed).unwrap().trim(),
        "--master spark://127.0.0.1:7077 --kill driver-42"
    );
    h.stop();
    emu.shutdown().await;
}

/// A task for a shared executor `exec` that stays `idle_ms` without steps.
fn shared_task(id: &str, exec: &str, idle_ms: u64, offer: &Offer, spec: StepSpec) -> TaskInfo {
    let mut t = step_task(id, offer, spec);
    let e = t.executor.as_mut().unwrap();
    e.executor_id = Id::new(exec);
    e.command.as_mut().unwrap().environment = Some(kaon_mesos::types::Environment {
        variables: vec![kaon_mesos::types::EnvVar {
            name: kaon_mesos::executor::ENV_IDLE_MS.into(),
            value: Some(idle_ms.to_string()),
        }],
    });
    t
}

/// Issue 10, section 1: one executor process runs many steps, each in a
/// directory of its own; it stays while more may come and exits after its
/// idle time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_executor_runs_many_steps_and_exits_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    let pids = |cmd: &str| shell(&format!("echo $$ > pid; echo \"$PPID\" > ppid; {cmd}"));
    launch(
        &h,
        &offer,
        vec![
            shared_task("m1", "shared", 5_000, &offer, pids("true")),
            shared_task("m2", "shared", 5_000, &offer, pids("true")),
        ],
    )
    .await;
    for t in ["m1", "m2"] {
        update_acking(&h, &mut rx, t, TaskState::Finished).await;
    }
    assert_eq!(emu.live_processes(), 1, "one executor for both");
    let offer2 = offers(&mut rx).await.remove(0);
    launch(
        &h,
        &offer2,
        vec![shared_task("m3", "shared", 5_000, &offer2, pids("true"))],
    )
    .await;
    let done = update_acking(&h, &mut rx, "m3", TaskState::Finished).await;
    assert_eq!(
        done.executor_id.as_ref().map(|e| e.value.as_str()),
        Some("shared")
    );
    // The same executor process was the parent of all three steps.
    let parent = |t: &str| {
        let path = walk(dir.path())
            .into_iter()
            .find(|p| p.ends_with(format!("tasks/{t}/ppid")))
            .unwrap_or_else(|| panic!("{t}'s ppid file"));
        std::fs::read_to_string(path).unwrap().trim().to_string()
    };
    assert_eq!(parent("m1"), parent("m3"));
    assert_eq!(parent("m2"), parent("m3"));
    // Idle: it exits by itself after its idle time.
    eventually("the idle executor exits", || emu.live_processes() == 0).await;
    h.stop();
    emu.shutdown().await;
}

/// Every file below `root`.
fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An executor that crashes takes its steps with it, including the
/// processes they moved to groups of their own, before its tasks are
/// reported failed (`REASON_EXECUTOR_TERMINATED`, the platform's): a retry
/// never runs beside a step of the dead executor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_executor_leaves_no_step_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (emu, h, mut rx, offer) = setup(dir.path()).await;
    // The step starts a child in a process group of its own.
    let stray = r#"perl -e 'setpgrp(0,0); sleep 300' & echo 'status forked' >> "$KAON_PROGRESS_FILE"; sleep 300"#;
    launch(
        &h,
        &offer,
        vec![
            shared_task("c1", "crashy", 60_000, &offer, shell(stray)),
            shared_task("c2", "crashy", 60_000, &offer, shell("sleep 300")),
        ],
    )
    .await;
    step_says(&mut rx, "forked").await;
    let sandbox = dir.path().display().to_string();
    // Processes of the steps: they carry a task id and a sandbox of ours.
    let steps = || {
        kaon_mesos::process::all_pids()
            .into_iter()
            .filter(|pid| {
                let env = kaon_mesos::process::environ(*pid);
                kaon_mesos::process::env_value(&env, "KAON_TASK_ID").is_some()
                    && kaon_mesos::process::env_value(&env, "MESOS_DIRECTORY")
                        .is_some_and(|d| d.starts_with(sandbox.as_bytes()))
            })
            .count()
    };
    assert!(steps() >= 3, "two steps and the stray child run");
    assert!(emu.signal_executor(0, &offer.framework_id.value, "crashy", libc::SIGKILL));
    for t in ["c1", "c2"] {
        let s = update_acking(&h, &mut rx, t, TaskState::Failed).await;
        assert_eq!(s.reason.as_deref(), Some("REASON_EXECUTOR_TERMINATED"));
        assert_eq!(
            steps(),
            0,
            "nothing of the dead executor's steps runs when {t} is reported"
        );
    }
    h.stop();
    emu.shutdown().await;
}
