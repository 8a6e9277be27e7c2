//! `kaon server` and its clients as a user runs them: a real server process
//! (embedded Mesos emulator), the CLI over gRPC on loopback.

mod common;

use common::{Server, kaon_at, start_server};

fn kaon(server: &Server, args: &[&str]) -> (i32, String, String) {
    kaon_at(&server.url, args)
}

#[test]
fn submit_watch_list_show_and_errors_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/reference-pipeline"
    );
    let spec = format!("{root}/pipeline.yaml");
    let scripts = format!("scripts={root}/scripts");

    let (code, out, err) = kaon(
        &server,
        &["submit", &spec, "-p", &scripts, "--key", "k1", "--watch"],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let run_id: u64 = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(out.contains(&format!("run {run_id} succeeded")), "{out}");
    assert!(out.contains("succeeded  train#2/validate"), "{out}");

    // A retried submit with the same key is the same run.
    let (code, out, _) = kaon(&server, &["submit", &spec, "-p", &scripts, "--key", "k1"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("run {run_id} (existing: same idempotency key)")
    );

    let (code, out, _) = kaon(&server, &["--output", "json", "runs"]);
    assert_eq!(code, 0);
    let runs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(runs[0]["id"], run_id);
    assert_eq!(runs[0]["status"], "succeeded");

    let (code, out, _) = kaon(
        &server,
        &["run", "show", &run_id.to_string(), "--output", "json"],
    );
    assert_eq!(code, 0);
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    let validate = run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "train#2/validate")
        .unwrap();
    assert_eq!(validate["outputs"]["stable"], true);

    // The replicated log's view: a one-node cluster led by node 1.
    let (code, out, err) = kaon(&server, &["--output", "json", "cluster", "status"]);
    assert_eq!(code, 0, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["leader_id"], 1);
    assert_eq!(st["state"], "Leader");
    assert_eq!(st["members"].as_array().unwrap().len(), 1);
    assert!(st["applied_event_index"].as_u64().unwrap() >= run_id);

    // Bad requests name the problem, with the gRPC code.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: kaon/v1\nname: b\nsteps:\n  a: {run: [x]}\n  b: {depends_on: [aa], run: [y]}\n").unwrap();
    let (code, _, err) = kaon(&server, &["submit", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("InvalidArgument: invalid spec: steps.b.depends_on[0]: unknown step \"aa\" (did you mean \"a\"?)"), "{err}");
    let (code, _, err) = kaon(&server, &["run", "show", "999999"]);
    assert_eq!(code, 2);
    assert!(err.contains("NotFound: run 999999"), "{err}");
    let (code, _, err) = kaon(&server, &["run", "cancel", &run_id.to_string()]);
    assert_eq!(code, 2);
    assert!(err.contains("FailedPrecondition"), "{err}");

    // kill -9 and restart on the same data directory: nothing committed is lost.
    server.kill9();
    let server = start_server(dir.path());
    let (code, out, err) = kaon(
        &server,
        &["--output", "json", "run", "show", &run_id.to_string()],
    );
    assert_eq!(code, 0, "{err}");
    let run: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["steps"].as_array().unwrap().len(), 20, "{out}");
    // And it keeps working: the same key still names the same run.
    let (code, out, _) = kaon(&server, &["submit", &spec, "-p", &scripts, "--key", "k1"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("run {run_id} (existing: same idempotency key)")
    );
}
