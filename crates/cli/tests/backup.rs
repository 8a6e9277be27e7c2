//! Issue 11, section 3: `kaon cluster backup` takes a consistent,
//! checksummed copy of a running cluster's log; `kaon cluster restore`
//! starts a new cluster from it with the same digest, every run present,
//! and a run that was running resumed (reconciled with Mesos, not run
//! again); damaged files are refused before anything is written.

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::{Cluster, KAON, kaon_at, kaon_local, wait_for};

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

#[test]
fn a_backup_restores_into_a_new_cluster_that_resumes_its_runs() {
    let mut cluster = Cluster::builder(KAON).nodes(1).start().unwrap();
    let url = cluster.url(0);
    let dir = tempfile::tempdir().unwrap();
    let mark = dir.path().join("release");
    let quick = dir.path().join("quick.yaml");
    std::fs::write(
        &quick,
        "apiVersion: kaon/v1\nname: quick\nsteps:\n  a: {shell: 'true'}\n",
    )
    .unwrap();
    let slow = dir.path().join("slow.yaml");
    std::fs::write(
        &slow,
        format!(
            "apiVersion: kaon/v1\nname: slow\nsteps:\n  s:\n    shell: 'while [ ! -f {m} ]; do sleep 0.1; done; echo $KAON_TASK_ID >> {m}.ran'\n",
            m = mark.display()
        ),
    )
    .unwrap();
    wait_for("the node to serve", Duration::from_secs(30), || {
        (kaon_at(&url, &["cluster", "status"]).0 == 0).then_some(())
    });
    let (code, out, err) = kaon_at(&url, &["submit", quick.to_str().unwrap(), "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = kaon_at(
        &url,
        &["--output", "json", "submit", slow.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{out}{err}");
    let slow_id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["run_id"]
        .as_u64()
        .unwrap();
    let facts = |url: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["--output", "json", "audit", "state"];
        args.extend_from_slice(extra);
        let (code, out, err) = kaon_at(url, &args);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    };
    let running = format!("run {slow_id} step s attempt 1");
    wait_for("the slow step to run", Duration::from_secs(30), || {
        let f = facts(&url, &[]);
        f["facts"][&running]
            .as_str()
            .is_some_and(|s| s.starts_with("running"))
            .then_some(())
    });

    // Back up the running cluster.
    let file = dir.path().join("kaon.backup");
    let (code, out, err) = kaon_at(&url, &["cluster", "backup", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("backed up "), "{out}");
    assert!(
        !dir.path().join("kaon.backup.tmp").exists(),
        "no temporary file is left"
    );
    let header: serde_json::Value = {
        let data = std::fs::read(&file).unwrap();
        assert!(data.starts_with(b"KAON-BACKUP 1\n"));
        let line = data[14..].split(|b| *b == b'\n').next().unwrap();
        serde_json::from_slice(line).unwrap()
    };
    let events = header["events"].as_u64().unwrap();
    let at_backup = facts(&url, &["--at", &events.to_string()]);
    assert_eq!(header["state_digest"], at_backup["digest"], "{header}");
    assert_eq!(header["chain_head"], at_backup["chain"], "{header}");

    // Damaged copies are refused before anything is written.
    let target = dir.path().join("restored");
    let raft_addr = format!("127.0.0.1:{}", cluster.raft[0]);
    let restore = |f: &std::path::Path, d: &std::path::Path| {
        kaon_local(&[
            os("cluster"),
            os("restore"),
            f.as_os_str(),
            os("--data-dir"),
            d.as_os_str(),
            os("--raft-addr"),
            os(&raft_addr),
        ])
    };
    let data = std::fs::read(&file).unwrap();
    let flipped = dir.path().join("flipped.backup");
    let mut bad = data.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&flipped, &bad).unwrap();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, &data[..data.len() - 100]).unwrap();
    let other = dir.path().join("other.backup");
    std::fs::write(&other, b"hello").unwrap();
    for (f, says) in [
        (&flipped, "is damaged: its SHA-256 checksum does not match"),
        (&cut, "is damaged"),
        (&other, "is not a kaon backup"),
    ] {
        let (code, _, err) = restore(f, &target);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(says), "{f:?}: {err}");
        assert!(!target.join("raft").exists(), "nothing written for {f:?}");
    }

    // Lose the node and its data; restore in its place.
    cluster.kill(0);
    let data_dir = cluster.data_dir(0);
    std::fs::remove_dir_all(&data_dir).unwrap();
    let (code, out, err) = restore(&file, &data_dir);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with(&format!("restored {events} events")),
        "{out}"
    );
    let (code, _, err) = restore(&file, &data_dir);
    assert_eq!(code, 2, "a second restore over it is refused");
    assert!(err.contains("already holds a kaon log"), "{err}");
    cluster.start_node(0).unwrap();
    wait_for(
        "the restored node to serve",
        Duration::from_secs(30),
        || (kaon_at(&url, &["cluster", "status"]).0 == 0).then_some(()),
    );

    // The same history: the state at the backup's last event has the
    // backup's digest, the whole log verifies, every run is there.
    let restored = facts(&url, &["--at", &events.to_string()]);
    assert_eq!(restored["digest"], header["state_digest"]);
    let (code, out, err) = kaon_at(&url, &["audit", "verify"]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, runs, _) = kaon_at(&url, &["--output", "json", "runs"]);
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    let ids: Vec<u64> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{runs}");
    assert!(ids.contains(&slow_id), "{runs}");

    // The run that was running resumes: the task kept running on Mesos,
    // the new leader reconciles it, and it ends once released: one attempt,
    // one execution.
    std::fs::write(&mark, "").unwrap();
    wait_for("the slow run to succeed", Duration::from_secs(60), || {
        let f = facts(&url, &["--run", &slow_id.to_string()]);
        (f["facts"][format!("run {slow_id}")] == "slow@1 succeeded").then_some(f)
    });
    let f = facts(&url, &["--run", &slow_id.to_string()]);
    assert!(
        f["facts"][format!("run {slow_id} step s attempt 2")].is_null(),
        "no second attempt: {f}"
    );
    let ran = std::fs::read_to_string(format!("{}.ran", mark.display())).unwrap();
    assert_eq!(ran.lines().count(), 1, "the step ran once: {ran}");
}
