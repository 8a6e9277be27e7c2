//! Failover with real processes on loopback (issue 4, "Tests"): a 3-node
//! cluster sharing one external Mesos emulator runs many concurrent
//! workflows while its leader is SIGKILLed again and again; an idempotent
//! submit crosses a leader change.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, KAON, get_run, run_events};
use kaon_core::events::{Body, TaskState};

const STEPS: [&str; 5] = ["a", "b", "c", "d", "e"];

/// A chain a -> b, then the parallel pair c, d, then e; every step appends
/// its Mesos task id to `marks/<step>` (one line per execution).
fn spec(marks: &Path) -> String {
    let step = |name: &str| {
        format!(
            "'echo \"$KAON_TASK_ID\" >> {}/{name}; sleep 0.3'",
            marks.display()
        )
    };
    format!(
        "apiVersion: kaon/v1
name: fan
defaults:
  resources: {{cpus: 0.1, mem: 16MiB}}
  retry: {{platform_errors: 5, backoff: {{kind: fixed, initial: 200ms}}}}
steps:
  a: {{shell: {}}}
  b: {{depends_on: [a], shell: {}}}
  c: {{depends_on: [b], shell: {}}}
  d: {{depends_on: [b], shell: {}}}
  e: {{depends_on: [c, d], shell: {}}}
",
        step("a"),
        step("b"),
        step("c"),
        step("d"),
        step("e")
    )
}

/// Every line of every marks file (task ids, one per execution).
fn executions(marks: &Path) -> Vec<String> {
    STEPS
        .iter()
        .flat_map(|s| {
            std::fs::read_to_string(marks.join(s))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Submits `keys` concurrently through the cluster; returns (key, run id)
/// in key order.
async fn submit_all(
    cluster: &Cluster,
    spec: &str,
    keys: impl Iterator<Item = String>,
) -> Vec<(String, u64)> {
    let mut set = tokio::task::JoinSet::new();
    for k in keys {
        let (urls, spec) = (cluster.urls(), spec.to_string());
        set.spawn(async move {
            let r = common::submit_to_leader(&urls, &spec, &k, Duration::from_secs(60)).await;
            (k, r.run_id)
        });
    }
    let mut acks = set.join_all().await;
    acks.sort();
    acks
}

/// SIGKILLs the leader and waits for another one; returns the killed index.
async fn kill_leader(cluster: &mut Cluster) -> usize {
    let leader = cluster.wait_leader(None, Duration::from_secs(15)).await;
    cluster.kill(leader);
    cluster
        .wait_leader(Some(leader), Duration::from_secs(15))
        .await;
    leader
}

/// Waits until `more` further step executions are recorded in `marks`.
async fn wait_executions(marks: &Path, more: usize) {
    let seen = executions(marks).len();
    common::wait_until("steps to run", Duration::from_secs(60), || async {
        (executions(marks).len() >= seen + more).then_some(())
    })
    .await;
}

/// Restarts node `i` and waits until all three agree on a leader again.
async fn restart(cluster: &mut Cluster, i: usize) -> usize {
    cluster.start_node(i).unwrap();
    cluster.wait_leader(None, Duration::from_secs(30)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_runs_survive_repeated_leader_sigkill_with_exactly_once_steps() {
    let mut cluster = common::cluster();
    let marks = cluster.dir.as_path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let spec = spec(&marks);
    let started = Instant::now();
    cluster.wait_leader(None, Duration::from_secs(30)).await;
    let mut acks: Vec<(String, u64)> = Vec::new();
    let mut kills = 0;

    // Kill 1: right after a batch of submits is acknowledged, while the new
    // runs' first steps are being launched.
    acks.extend(submit_all(&cluster, &spec, (0..8).map(|n| format!("run-{n}"))).await);
    let old = kill_leader(&mut cluster).await;
    kills += 1;
    restart(&mut cluster, old).await;

    // Kill 2: in the middle of steps running (more executions recorded).
    acks.extend(submit_all(&cluster, &spec, (8..16).map(|n| format!("run-{n}"))).await);
    wait_executions(&marks, 8).await;
    let old = kill_leader(&mut cluster).await;
    kills += 1;
    restart(&mut cluster, old).await;

    // Kill 3: right after a single submit (its first step is launching);
    // the rest of the batch is submitted while the cluster elects.
    acks.extend(submit_all(&cluster, &spec, std::iter::once("run-16".to_string())).await);
    let old = kill_leader(&mut cluster).await;
    kills += 1;
    acks.extend(submit_all(&cluster, &spec, (17..24).map(|n| format!("run-{n}"))).await);
    restart(&mut cluster, old).await;

    // Kill 4: while the last batch runs.
    wait_executions(&marks, 8).await;
    let old = kill_leader(&mut cluster).await;
    kills += 1;
    restart(&mut cluster, old).await;

    // Every acknowledged submission is a distinct run, and every run ends
    // succeeded.
    let runs: BTreeSet<u64> = acks.iter().map(|&(_, r)| r).collect();
    assert_eq!(runs.len(), 24, "one run per key: {acks:?}");
    let leader = cluster.wait_leader(None, Duration::from_secs(15)).await;
    let url = cluster.url(leader);
    for &(ref key, run) in &acks {
        let r = common::wait_until(
            &format!("run {run} ({key}) to end"),
            Duration::from_secs(120),
            || async { get_run(&url, run).await.filter(|r| r.status != "running") },
        )
        .await;
        assert_eq!(r.status, "succeeded", "run {run}: {r:?}");
        // The same key still names the same run.
        let again = cluster.submit(&spec, key, Duration::from_secs(30)).await;
        assert_eq!((again.run_id, again.existing), (run, true), "key {key}");
    }

    // Exactly once per recorded attempt: every execution in the marks files
    // is a recorded launch intent of an acknowledged run, none twice; an
    // intent ran iff its attempt was recorded FINISHED (a launch an old
    // leader recorded but never sent comes back LOST and is retried); each
    // step finished exactly once and GetRun's attempts count the intents.
    let done = executions(&marks);
    let mut ran: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &done {
        *ran.entry(t.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = ran.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "commands ran more than once: {twice:?}");
    let mut intents_total = 0;
    let mut all_intents = BTreeSet::new();
    for &run in &runs {
        let events = run_events(&url, run).await.expect("the run's events");
        // (instance, attempt) -> (task id, step path)
        let mut intents = BTreeMap::new();
        let mut finished = BTreeSet::new();
        for e in &events {
            match &e.body {
                Some(Body::TaskLaunchRequested(l)) => {
                    intents.insert(
                        (l.instance, l.attempt),
                        (l.task_id.clone(), l.step_path.clone()),
                    );
                }
                Some(Body::TaskStatusObserved(s)) if s.state() == TaskState::Finished => {
                    finished.insert((s.instance, s.attempt));
                }
                _ => {}
            }
        }
        let r = get_run(&url, run).await.unwrap();
        for step in STEPS {
            let of_step: Vec<_> = intents.iter().filter(|(_, (_, p))| p == step).collect();
            let attempts = r.steps.iter().find(|s| s.path == step).unwrap().attempts;
            assert_eq!(
                of_step.len() as u32,
                attempts,
                "run {run} step {step}: {of_step:?}"
            );
            let fin = of_step.iter().filter(|(k, _)| finished.contains(k)).count();
            assert_eq!(fin, 1, "run {run} step {step} finished once: {of_step:?}");
        }
        for (k, (task, _)) in &intents {
            assert_eq!(
                ran.contains_key(task.as_str()),
                finished.contains(k),
                "run {run}: task {task} ran iff recorded FINISHED"
            );
            all_intents.insert(task.clone());
        }
        intents_total += intents.len();
    }
    let stray: Vec<_> = ran.keys().filter(|t| !all_intents.contains(**t)).collect();
    assert!(
        stray.is_empty(),
        "executions without a recorded launch: {stray:?}"
    );
    assert_eq!(done.len(), runs.len() * STEPS.len());

    // All replicas end with the same state: once they applied the same
    // events, stop them and replay each one's archive (`kaon audit`).
    let applied = common::wait_until(
        "every replica to apply the same events",
        Duration::from_secs(30),
        || async {
            let mut idx = BTreeSet::new();
            for i in 0..3 {
                idx.insert(cluster.status(i).await?.applied_event_index);
            }
            (idx.len() == 1).then(|| idx.into_iter().next().unwrap())
        },
    )
    .await;
    cluster.kill_all();
    let mut digests = BTreeSet::new();
    for i in 0..3 {
        let dir = cluster.data_dir(i);
        let out = std::process::Command::new(KAON)
            .args(["audit", "verify", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "node {}: {out:?}", i + 1);
        let out = std::process::Command::new(KAON)
            .args(["--output", "json", "audit", "replay", "--data-dir"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "node {}: {out:?}", i + 1);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["applied_index"], applied, "node {}", i + 1);
        assert_eq!(v["runs"].as_array().unwrap().len(), runs.len());
        digests.insert((v["digest"].to_string(), v["chain"].to_string()));
    }
    assert_eq!(digests.len(), 1, "replicas differ: {digests:?}");
    eprintln!(
        "{} runs, {kills} leader kills, {intents_total} launch intents for {} steps, {applied} events, {:?}",
        runs.len(),
        runs.len() * STEPS.len(),
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_submit_across_a_leader_change_returns_the_same_run() {
    let mut cluster = common::cluster();
    let spec = "apiVersion: kaon/v1\nname: once\nsteps:\n  a: {run: [\"true\"], resources: {cpus: 0.1, mem: 16MiB}}\n";
    let leader = cluster.wait_leader(None, Duration::from_secs(30)).await;
    let first = common::submit(&cluster.url(leader), spec, "K")
        .await
        .expect("the leader accepts the submit");
    assert!(!first.existing);
    cluster.kill(leader);
    let new = cluster
        .wait_leader(Some(leader), Duration::from_secs(15))
        .await;
    // The new leader may answer "retry shortly" until its runtime runs.
    let again = common::wait_until(
        "the new leader to accept",
        Duration::from_secs(15),
        || async { common::submit(&cluster.url(new), spec, "K").await.ok() },
    )
    .await;
    assert_eq!((again.run_id, again.existing), (first.run_id, true));
    // A different key is a different run.
    let other = common::submit(&cluster.url(new), spec, "K2").await.unwrap();
    assert!(!other.existing);
    assert_ne!(other.run_id, first.run_id);
}

/// Minimal reproduction of a failover stall: a killed leader that restarts
/// while another node leads must not stop the new leader from launching.
/// (Seen failing: the restarted node briefly believes it still leads its old
/// term, starts its effect runtime and SUBSCRIBEs to Mesos with the
/// recorded framework id; Mesos fails the real leader's subscription over,
/// and that runtime never subscribes again, so nothing launches.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_old_leader_does_not_stall_the_new_leader() {
    let mut cluster = common::cluster();
    let spec = "apiVersion: kaon/v1\nname: after\nsteps:\n  a: {run: [\"true\"], resources: {cpus: 0.1, mem: 16MiB}}\n";
    cluster.wait_leader(None, Duration::from_secs(30)).await;
    for round in 0..3 {
        let old = kill_leader(&mut cluster).await;
        let leader = restart(&mut cluster, old).await;
        let run = cluster
            .submit(spec, &format!("after-{round}"), Duration::from_secs(30))
            .await
            .run_id;
        let r = common::wait_until(
            &format!("run {run} to end after restarting node {}", old + 1),
            Duration::from_secs(20),
            || async {
                get_run(&cluster.url(leader), run)
                    .await
                    .filter(|r| r.status != "running")
            },
        )
        .await;
        assert_eq!(r.status, "succeeded");
    }
}
