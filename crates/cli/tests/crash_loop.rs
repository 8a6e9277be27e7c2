//! kill -9 of a node in the middle of heavy appends, over and over (issue 4,
//! "Tests"): a one-node `kaon server` (nothing else holds its data, so this
//! is the harshest case for durability) takes submissions from several
//! concurrent clients, is SIGKILLed at a random moment while appends are in
//! flight, and restarts from its data directory. Every round it must reopen
//! and hold every run it ever acknowledged; at the end the hash chain of
//! its event archive verifies. (crates/log/tests/store.rs SIGKILLs the log
//! store alone; this is the whole node process.)
//!
//! `KAON_KILL_ROUNDS` sets the number of kills (default: the 100,
//! about 80 s here; set fewer for a quick local run).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{KAON, all_run_ids, start_server};
use kaon_api::v1;

/// Two steps skipped by their condition: each submit appends a handful of
/// events and launches nothing, so the load is appends, not processes.
const SPEC: &str = "apiVersion: kaon/v1
name: append
steps:
  a: {run: [\"true\"], when: \"false\"}
  b: {depends_on: [a], run: [\"true\"], when: \"false\"}
";

const SUBMITTERS: usize = 4;

/// Submits fresh keys in a loop until the server stops answering; records
/// every acknowledged (key, run id).
async fn submitter(url: String, prefix: String, acks: Arc<Mutex<Vec<(String, u64)>>>) {
    let Some(mut c) = common::client(&url).await else {
        return;
    };
    for n in 0.. {
        let key = format!("{prefix}-{n}");
        let r = c
            .submit_run(v1::SubmitRunRequest {
                workflow: Some(v1::submit_run_request::Workflow::InlineSpec(SPEC.into())),
                params_json: Default::default(),
                idempotency_key: key.clone(),
            })
            .await;
        match r {
            Ok(r) => {
                let r = r.into_inner();
                assert!(!r.existing, "fresh key {key} matched run {}", r.run_id);
                acks.lock().unwrap().push((key, r.run_id));
            }
            Err(_) => return, // killed
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_sigkilled_under_heavy_appends_always_reopens_with_every_acknowledged_run() {
    let rounds: usize = std::env::var("KAON_KILL_ROUNDS")
        .ok()
        .map(|v| v.parse().expect("KAON_KILL_ROUNDS is a number"))
        .unwrap_or(100);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let started = Instant::now();
    let mut restart_time = Duration::ZERO;
    for round in 0..rounds {
        let t = Instant::now();
        let server = start_server(&data);
        restart_time += t.elapsed();
        // Everything acknowledged before any earlier kill is here.
        let ids = all_run_ids(&server.url).await.expect("ListRuns answers");
        let lost: Vec<_> = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| !ids.contains(r))
            .cloned()
            .collect();
        assert!(
            lost.is_empty(),
            "seed {seed}, round {round}: acknowledged runs lost: {lost:?}"
        );
        // Kill after a random number of acknowledgements in this round,
        // while every submitter still has a request in flight.
        let before = acked.lock().unwrap().len();
        let target = before + 5 + (next() % 40) as usize;
        let tasks: Vec<_> = (0..SUBMITTERS)
            .map(|s| {
                tokio::spawn(submitter(
                    server.url.clone(),
                    format!("r{round}-s{s}"),
                    acked.clone(),
                ))
            })
            .collect();
        common::wait_until(
            &format!("{} acknowledgements (round {round})", target - before),
            Duration::from_secs(30),
            || async { (acked.lock().unwrap().len() >= target).then_some(()) },
        )
        .await;
        server.kill9();
        for t in tasks {
            t.await.expect("submitter");
        }
    }
    // A last restart: every acknowledged run exists, and each key still
    // names its run.
    let server = start_server(&data);
    let ids = all_run_ids(&server.url).await.expect("ListRuns answers");
    let acked = acked.lock().unwrap().clone();
    let runs: BTreeMap<u64, String> = acked.iter().map(|(k, r)| (*r, k.clone())).collect();
    assert_eq!(runs.len(), acked.len(), "one run per acknowledged key");
    let lost: Vec<_> = runs.keys().filter(|r| !ids.contains(r)).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged runs lost: {lost:?}"
    );
    for (key, run) in acked.iter().step_by(97) {
        let r = common::submit(&server.url, SPEC, key).await.unwrap();
        assert_eq!((r.run_id, r.existing), (*run, true), "key {key}");
    }
    drop(server); // SIGTERM: a clean stop, so the archive can be opened
    let out = std::process::Command::new(KAON)
        .args(["audit", "verify", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    eprintln!(
        "{rounds} kill -9 rounds, {} acknowledged runs, all present; {:?} in all ({:?} restarting); {}",
        acked.len(),
        started.elapsed(),
        restart_time,
        String::from_utf8_lossy(&out.stdout).trim()
    );
}
