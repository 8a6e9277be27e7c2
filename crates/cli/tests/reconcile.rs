//! Issue 8's reproduction with real processes: a step that ends while no
//! leader is subscribed to Mesos. The new leader's reconciliation answer
//! ("latest state: TASK_FINISHED", no data) must not be taken as the
//! step's result: its outputs and exit code come only from the executor's
//! reliable update, which the agent delivers once a scheduler subscribes.
//!
//! How: submit a run, and the moment its first step's executor sandbox
//! appears (the launch reached Mesos; its TASK_RUNNING cannot have been
//! committed yet) SIGKILL the leader and one follower, so no quorum is
//! left; wait until Mesos knows the step ended; restart both. Before the
//! fix, the foreach over `gen`'s outputs failed ("No such key: items") and
//! a failed step was retried under the platform budget (its command ran a
//! second time).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Cluster, get_run, lines, wait_until};
use kaon_core::events::{Body, TaskState};

/// The step directories of `step` of run `run` (any attempt).
fn sandboxes(mesos: &Path, run: u64, step: &str) -> Vec<PathBuf> {
    common::step_dirs(mesos)
        .into_iter()
        .filter(|d| {
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            // Task ids are `r<run>-i<inst>-a<attempt>:<path>` (`:` made `_`).
            name.ends_with(&format!("_{step}")) && name.starts_with(&format!("r{run}-"))
        })
        .collect()
}

/// The Mesos state of every task of `step` of run `run`, from the
/// emulator's `/master/tasks`.
async fn mesos_states(mesos_port: u16, run: u64, step: &str) -> Vec<String> {
    let url = format!("http://127.0.0.1:{mesos_port}/master/tasks");
    let Ok(r) = reqwest::get(&url).await else {
        return Vec::new();
    };
    let Ok(body) = r.bytes().await else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    v["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            t["id"].as_str().is_some_and(|id| {
                id.starts_with(&format!("r{run}-")) && id.ends_with(&format!(":{step}"))
            })
        })
        .filter_map(|t| t["state"].as_str().map(str::to_string))
        .collect()
}

/// Kills the leader and one follower the moment the sandbox of `step` of
/// run `run` appears, waits until Mesos reports the step ended, restarts
/// both; returns when the cluster has a leader again. Returns when the
/// kill happened (ms since the epoch).
async fn kill_quorum_while_step_runs(cluster: &mut Cluster, run: u64, step: &str) -> i64 {
    let leader = cluster.wait_leader(None, Duration::from_secs(30)).await;
    let follower = (leader + 1) % 3;
    let mesos = cluster.dir.as_path().join("mesos");
    // Poll fast: the window between the sandbox appearing and the step's
    // TASK_RUNNING being committed is a few milliseconds.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while sandboxes(&mesos, run, step).is_empty() {
        assert!(
            std::time::Instant::now() < end,
            "no sandbox for step {step} appeared"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    cluster.kill(leader);
    cluster.kill(follower);
    let killed = common::now_unix_ms();
    let port = cluster.mesos;
    let end = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let states = mesos_states(port, run, step).await;
        if states.iter().any(|s| {
            !matches!(
                s.as_str(),
                "TASK_STAGING" | "TASK_STARTING" | "TASK_RUNNING" | "TASK_KILLING"
            )
        }) {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "Mesos did not report {step} ended within 60 s: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.start_node(leader).unwrap();
    cluster.start_node(follower).unwrap();
    cluster.wait_leader(None, Duration::from_secs(30)).await;
    killed
}

/// Waits for run `id` to end; returns it.
async fn finished(cluster: &Cluster, id: u64) -> kaon_api::v1::Run {
    wait_until("the run to finish", Duration::from_secs(120), || async {
        for url in cluster.urls() {
            if let Some(r) = get_run(&url, id).await
                && r.status != "running"
            {
                return Some(r);
            }
        }
        None
    })
    .await
}

/// Whether the kill hit the window the defect needs: the step's
/// TASK_RUNNING was recorded only after the restart (so Mesos held its
/// terminal update behind an unacknowledged one).
async fn hit_window(cluster: &Cluster, run: u64, killed_ms: i64) -> bool {
    common::run_events(&cluster.urls()[0], run)
        .await
        .unwrap_or_default()
        .iter()
        .any(|e| {
            matches!(&e.body, Some(Body::TaskStatusObserved(o)) if o.state() == TaskState::Running)
                && e.time_unix_ms > killed_ms
        })
}

/// Rounds per case: the kill lands in the few-millisecond window between
/// the launch and its TASK_RUNNING commit most of the time, not always.
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_ends_while_no_leader_listens_keeps_its_outputs_and_runs_once() {
    let mut cluster = common::cluster();
    let marks = cluster.dir.as_path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    cluster.wait_leader(None, Duration::from_secs(30)).await;
    let mut hits = 0;
    for round in 0..ROUNDS {
        let dir = marks.join(format!("fan-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.display();
        let spec = format!(
            r#"apiVersion: kaon/v1
name: fanout
defaults:
  resources: {{cpus: 0.1, mem: 16MiB}}
  retry: {{platform_errors: 3, backoff: {{kind: fixed, initial: 200ms}}}}
steps:
  gen:
    shell: 'echo "$KAON_TASK_ID" >> {m}/gen; sleep 1; printf "{{\"items\": [\"x\", \"y\", \"z\"]}}" > "$KAON_OUTPUTS_FILE"'
  fan:
    depends_on: [gen]
    foreach: {{items: steps.gen.outputs.items}}
    shell: 'echo "${{{{ item }}}}" >> {m}/fan'
  join:
    depends_on: [fan]
    shell: 'echo join >> {m}/join'
"#
        );
        let run = cluster
            .submit(&spec, &format!("fanout-{round}"), Duration::from_secs(30))
            .await
            .run_id;
        let killed = kill_quorum_while_step_runs(&mut cluster, run, "gen").await;
        let r = finished(&cluster, run).await;
        hits += usize::from(hit_window(&cluster, run, killed).await);
        assert_eq!(
            r.status, "succeeded",
            "round {round}: the run succeeds: {r:?}"
        );
        assert_eq!(lines(&dir, "gen").len(), 1, "gen ran exactly once");
        let mut fan = lines(&dir, "fan");
        fan.sort();
        assert_eq!(fan, ["x", "y", "z"], "one element per item gen wrote");
        assert_eq!(lines(&dir, "join"), ["join"]);
        let gen_step = r.steps.iter().find(|s| s.path == "gen").expect("gen");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&gen_step.outputs_json).unwrap(),
            serde_json::json!({"items": ["x", "y", "z"]}),
            "gen's recorded outputs are the ones it wrote"
        );
    }

    // A step that fails while no leader listens fails once, as the user's
    // error (exit code 3), and is not retried as a platform error.
    for round in 0..ROUNDS {
        let dir = marks.join(format!("bad-{round}"));
        std::fs::create_dir_all(&dir).unwrap();
        let m = dir.display();
        let failing = format!(
            r#"apiVersion: kaon/v1
name: failing
defaults:
  resources: {{cpus: 0.1, mem: 16MiB}}
  retry: {{user_errors: 0, platform_errors: 3, backoff: {{kind: fixed, initial: 200ms}}}}
steps:
  bad:
    shell: 'echo "$KAON_TASK_ID" >> {m}/bad; sleep 1; exit 3'
"#
        );
        let run = cluster
            .submit(
                &failing,
                &format!("failing-{round}"),
                Duration::from_secs(30),
            )
            .await
            .run_id;
        let killed = kill_quorum_while_step_runs(&mut cluster, run, "bad").await;
        let r = finished(&cluster, run).await;
        hits += usize::from(hit_window(&cluster, run, killed).await);
        assert_eq!(r.status, "failed", "{r:?}");
        assert_eq!(lines(&dir, "bad").len(), 1, "bad ran exactly once");
        let bad = r.steps.iter().find(|s| s.path == "bad").expect("bad");
        assert_eq!(bad.attempts, 1, "no retry: {bad:?}");
        assert!(
            bad.message.contains("exited with code 3"),
            "the user's failure is recorded: {bad:?}"
        );
    }
    eprintln!(
        "the kill landed before TASK_RUNNING was recorded in {hits} of {} rounds",
        2 * ROUNDS
    );
}
