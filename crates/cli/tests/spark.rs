//! `kind: spark` with a real Spark (issue 10 section 2): `pyspark` from
//! PyPI ships `spark-submit` and runs in local mode on the machine's Java.
//! `scripts/test` installs it; `KAON_SPARK_TESTS=skip` skips these tests
//! on a machine without it (saying so).

mod common;

use common::{Server, kaon_at, processes_with_env, start_server};
use std::time::Duration;

/// Waits polling every half second: each poll is a CLI call, and Spark
/// needs the CPU.
fn wait_for<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    common::wait_for_every(what, deadline, Duration::from_millis(500), f)
}

fn kaon(server: &Server, args: &[&str]) -> (i32, String, String) {
    kaon_at(&server.url, args)
}

/// Whether to run: Spark is installed, or the tests fail saying how to
/// get it (never a silent pass).
fn spark_here() -> bool {
    if std::env::var("KAON_SPARK_TESTS").as_deref() == Ok("skip") {
        eprintln!("Spark test SKIPPED: KAON_SPARK_TESTS=skip");
        return false;
    }
    let found = std::process::Command::new("spark-submit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "spark-submit is not installed: `pip install pyspark numpy` (scripts/test does), \
         or KAON_SPARK_TESTS=skip"
    );
    true
}

fn script(name: &str) -> String {
    format!("{}/tests/spark/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run_id(out: &str) -> String {
    out.lines()
        .next()
        .and_then(|l| l.strip_prefix("run "))
        .unwrap_or_else(|| panic!("submit prints `run N` first: {out:?}"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn show(server: &Server, id: &str) -> serde_json::Value {
    let (code, out, err) = kaon(server, &["--output", "json", "run", "show", id]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn spec(dir: &std::path::Path, name: &str, job: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: kaon/v1\nname: {name}\nsteps:\n  fit:\n    kind: spark\n    \
             run: [--master, 'local[2]', '{}']\n    resources: {{cpus: 2, mem: 3GiB}}\n",
            script(job)
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// An MLlib job: the recorded progress of the step moves between 0 and
/// 100 with the application id and its UI link, the step ends at 100 with
/// the job's outputs.
#[test]
fn a_spark_step_reports_its_applications_progress() {
    if !spark_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let spec = spec(dir.path(), "mllib", "mllib_progress.py");
    let (code, out, err) = kaon(&server, &["submit", &spec, "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    let id = run_id(&out);
    let run = show(&server, &id);
    let fit = &run["steps"][0];
    assert_eq!(fit["status"], "succeeded", "{run}");
    assert_eq!(fit["percent"], 100, "{run}");
    assert_eq!(
        fit["outputs"]["coefficients"].as_array().map(Vec::len),
        Some(2),
        "{run}"
    );
    // What the log recorded while it ran.
    let (code, out, err) = kaon(&server, &["audit", "export"]);
    assert_eq!(code, 0, "{err}");
    let progress: Vec<(u64, String)> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| {
            let p = e.get("progressReported")?.clone();
            (p["runId"].as_str()? == id).then(|| {
                (
                    p["percent"].as_u64().unwrap_or(0),
                    p["statusText"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect();
    let between: Vec<&(u64, String)> = progress
        .iter()
        .filter(|(p, t)| *p > 0 && *p < 100 && t.starts_with("spark local-"))
        .collect();
    assert!(
        !between.is_empty(),
        "progress between 0 and 100 with the application id: {progress:?}"
    );
    assert!(
        between.iter().all(|(_, t)| t.contains(" (http://")),
        "the UI link: {progress:?}"
    );
}

/// Cancelling a run while its Spark job runs kills the driver: no Spark
/// JVM (or Python worker) of the step is left.
#[test]
fn a_cancelled_spark_step_leaves_no_jvm_behind() {
    if !spark_here() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let spec = spec(dir.path(), "long", "long_job.py");
    let (code, out, err) = kaon(&server, &["submit", &spec]);
    assert_eq!(code, 0, "{out}{err}");
    let id = run_id(&out);
    // Every process of the step's executor carries its sandbox in
    // MESOS_DIRECTORY, inside this test's directory.
    let sandbox = dir.path().display().to_string();
    let step_jvms = || {
        processes_with_env("MESOS_DIRECTORY", &sandbox)
            .into_iter()
            .filter(|(_, comm)| comm == "java")
            .collect::<Vec<_>>()
    };
    wait_for(
        "the Spark application to run",
        Duration::from_secs(120),
        || {
            let run = show(&server, &id);
            let text = run["steps"][0]["status_text"].as_str().unwrap_or("");
            text.starts_with("spark local-").then_some(())
        },
    );
    assert!(!step_jvms().is_empty(), "the driver JVM runs");
    let (code, _, err) = kaon(&server, &["run", "cancel", &id]);
    assert_eq!(code, 0, "{err}");
    wait_for("the run to end cancelled", Duration::from_secs(60), || {
        let run = show(&server, &id);
        (run["status"] == "cancelled").then_some(())
    });
    wait_for("no Spark JVM of the step", Duration::from_secs(30), || {
        step_jvms().is_empty().then_some(())
    });
}
