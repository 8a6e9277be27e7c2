//! The reference pipeline for real (issue 10 section 4):
//! `examples/ml-pipeline/` with SQLite and Python, a Spark MLlib job, R
//! models in a foreach, a JVM validation that repeats the training block
//! until stable, and a container step that packages the model; on one node,
//! and on a 3-node cluster whose leader is killed while the Spark step runs.
//!
//! Needs what `examples/ml-pipeline/setup.sh` installs (`scripts/test`
//! runs it): Rscript, java, spark-submit and a Docker daemon.
//! `KAON_ML_TESTS=skip` skips these tests on a machine without them,
//! saying so; otherwise a missing tool fails them, naming it.

mod common;

use common::{Cluster, Server, kaon_at, processes_with_env, start_server};
use std::path::Path;
use std::time::Duration;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/ml-pipeline");

/// Whether to run: every tool is here (and the publish image built), or
/// the test fails naming what is missing.
fn tools_here() -> bool {
    if std::env::var("KAON_ML_TESTS").as_deref() == Ok("skip") {
        eprintln!("ML pipeline test SKIPPED: KAON_ML_TESTS=skip");
        return false;
    }
    for (tool, arg) in [
        ("Rscript", "--version"),
        ("java", "-version"),
        ("spark-submit", "--version"),
        ("docker", "info"),
    ] {
        let ok = std::process::Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "{tool} is missing: run examples/ml-pipeline/setup.sh (scripts/test does), or KAON_ML_TESTS=skip"
        );
    }
    let built = std::process::Command::new(format!("{EXAMPLE}/build-publish-image.sh"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the publish image: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    true
}

/// Waits polling every half second: each poll is a CLI call, and Spark
/// needs the CPU.
fn wait_for<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    common::wait_for_every(what, deadline, Duration::from_millis(500), f)
}

fn submit(url: &str, work: &Path, watch: bool) -> u64 {
    let dir = std::fs::canonicalize(EXAMPLE).unwrap();
    let spec = format!("{}/pipeline.yaml", dir.display());
    let mut args = vec![
        "submit".to_string(),
        spec,
        "-p".into(),
        format!("dir={}", dir.display()),
        "-p".into(),
        format!("work={}", work.display()),
        "-p".into(),
        "users=6000".into(),
    ];
    if watch {
        args.push("--watch".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = kaon_at(url, &args);
    assert!(
        code == 0 || (watch && code == 1),
        "submit: {code}\n{out}\n{err}"
    );
    out.lines()
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("submit prints `run N` first: {out}"))
}

fn show(url: &str, id: u64) -> serde_json::Value {
    let (code, out, err) = kaon_at(url, &["--output", "json", "run", "show", &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn step(run: &serde_json::Value, path: &str) -> serde_json::Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == path)
        .unwrap_or_else(|| panic!("no step {path} in {run}"))
        .clone()
}

/// What a successful run of the pipeline must show.
fn check_outcome(run: &serde_json::Value) {
    assert_eq!(run["status"], "succeeded", "{run:#}");
    assert_eq!(
        step(run, "train#1/validate")["outputs"]["stable"],
        false,
        "the first round has nothing to compare with"
    );
    assert_eq!(step(run, "train#2/validate")["outputs"]["stable"], true);
    for round in [1, 2] {
        let global = step(run, &format!("train#{round}/global-model"));
        assert!(
            global["outputs"]["rmse"].as_f64().is_some_and(|r| r < 1.0),
            "the Spark model fits: {global}"
        );
        for (i, region) in ["apac", "eu", "us"].iter().enumerate() {
            let r = step(run, &format!("train#{round}/region-model[{i}]"));
            assert_eq!(r["outputs"]["region"], *region, "{r}");
        }
    }
    let publish = step(run, "publish");
    let package = publish["outputs"]["package"].as_str().unwrap_or_default();
    let bytes = std::fs::metadata(package)
        .unwrap_or_else(|e| panic!("the published package {package:?}: {e}"))
        .len();
    assert_eq!(publish["outputs"]["bytes"], bytes, "{publish}");
    let listing = std::process::Command::new("tar")
        .args(["-tzf", package])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout).trim(),
        "package/\npackage/model.json"
    );
}

/// Java processes of the steps run by the agent whose sandboxes are under
/// `mesos` (a Spark driver is one).
fn spark_jvms(mesos: &Path) -> Vec<(i32, String)> {
    processes_with_env("MESOS_DIRECTORY", &mesos.display().to_string())
        .into_iter()
        .filter(|(_, comm)| comm == "java")
        .collect()
}

#[test]
fn the_real_pipeline_runs_on_one_node() {
    if !tools_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server: Server = start_server(dir.path());
    let work = dir.path().join("work");
    let id = submit(&server.url, &work, true);
    let run = show(&server.url, id);
    check_outcome(&run);
    // The Spark step's progress was recorded with its application.
    let (code, out, _) = kaon_at(&server.url, &["audit", "export"]);
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.contains("progressReported") && l.contains("\"statusText\":\"spark local-")),
        "Spark progress recorded"
    );
    assert!(spark_jvms(dir.path()).is_empty(), "no Spark JVM left");
}

/// A leader kill while the Spark step runs: the run goes on under the new
/// leader, the Spark step is not run a second time, and no Spark JVM is
/// left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_pipeline_survives_a_leader_kill_during_its_spark_step() {
    if !tools_here() {
        return;
    }
    let mut cluster: Cluster = common::cluster();
    let work = cluster.dir.join("work");
    let urls = cluster.urls().join(",");
    let leader = cluster.wait_leader(None, Duration::from_secs(30)).await;
    let id = {
        let (urls, work) = (urls.clone(), work.clone());
        tokio::task::spawn_blocking(move || submit(&urls, &work, false))
            .await
            .unwrap()
    };
    let u = urls.clone();
    tokio::task::spawn_blocking(move || {
        wait_for(
            "the Spark application to run",
            Duration::from_secs(180),
            || {
                // The step exists once the training block has started.
                let run = show(&u, id);
                run["steps"]
                    .as_array()?
                    .iter()
                    .find(|s| s["path"] == "train#1/global-model")?["status_text"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("spark local-"))
                    .then_some(())
            },
        )
    })
    .await
    .unwrap();
    cluster.kill(leader);
    let u = urls.clone();
    let run = tokio::task::spawn_blocking(move || {
        wait_for("the run to end", Duration::from_secs(600), || {
            let run = show(&u, id);
            (run["status"] != "running").then_some(run)
        })
    })
    .await
    .unwrap();
    check_outcome(&run);
    let global = step(&run, "train#1/global-model");
    assert_eq!(global["attempts"], 1, "the Spark step ran once: {global}");
    let mesos = cluster.mesos_dir();
    assert!(spark_jvms(&mesos).is_empty(), "no Spark JVM left");
}
