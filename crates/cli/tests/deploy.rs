//! Issue 11, section 3: the deployments in `deploy/` work. The compose
//! deployment runs end to end (deploy/smoke.sh with this build's binary:
//! three nodes and the emulator in containers, a workflow through a
//! follower, the leader's container killed, a second workflow, the node
//! back in sync, admin ports with /metrics and the UI); every node's
//! example `kaon.toml` for the systemd units is read by `kaon server`.
//! `KAON_DOCKER_TESTS=skip` skips the compose part.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{KAON, Procs, free_port, free_ports, kaon, wait_for};

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_compose_deployment_survives_its_leader_and_serves_metrics_and_the_ui() {
    if std::env::var("KAON_DOCKER_TESTS").is_ok_and(|v| v == "skip") {
        eprintln!("KAON_DOCKER_TESTS=skip: the compose deployment test is SKIPPED");
        return;
    }
    let ports = free_ports(7);
    let out = Command::new("sh")
        .arg(repo().join("deploy/smoke.sh"))
        .arg("--no-build")
        .env("KAON_CLI", KAON)
        .env("KAON1_PORT", ports[0].to_string())
        .env("KAON2_PORT", ports[1].to_string())
        .env("KAON3_PORT", ports[2].to_string())
        .env("KAON1_ADMIN_PORT", ports[3].to_string())
        .env("KAON2_ADMIN_PORT", ports[4].to_string())
        .env("KAON3_ADMIN_PORT", ports[5].to_string())
        .env("KAON_MESOS_PORT", ports[6].to_string())
        .env("KAON_NET", "172.29.73")
        .output()
        .expect("sh runs deploy/smoke.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "deploy/smoke.sh failed:\n{text}");
    for step in [
        "ok: leader with 3 members",
        "ok: new leader (not node",
        "ok: all three nodes at the same applied event index and digest",
        "ok: every node ready, serving /metrics and the web UI",
        "ok: plain text and calls without a token are refused",
        "PASS",
    ] {
        assert!(text.contains(step), "no {step:?} in:\n{text}");
    }
}

#[test]
fn every_example_node_config_is_read_by_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mesos = free_port();
    let mut procs = Procs(vec![
        Command::new(KAON)
            .args(["mesos-emulator", "--master", &format!("127.0.0.1:{mesos}")])
            .arg("--work-dir")
            .arg(dir.path().join("mesos"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    ]);
    for n in 1..=3 {
        let config = repo().join(format!("deploy/systemd/kaon-{n}.toml"));
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains(&format!("node-id = {n}")), "{text}");
        // The file's addresses are a real network's: the command line (which
        // wins over the file) puts this node on loopback.
        let (api, raft, admin) = (free_port(), free_port(), free_port());
        let log = dir.path().join(format!("n{n}.log"));
        procs.0.push(
            Command::new(KAON)
                .arg("server")
                .arg("--config")
                .arg(&config)
                // Do not form the example's cluster (its peers are not here):
                // start as a node waiting to be added, serving at once.
                .arg("--join")
                .args(["--listen", &format!("127.0.0.1:{api}")])
                .args(["--raft-listen", &format!("127.0.0.1:{raft}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("n{n}")))
                .args(["--mesos-master", &format!("http://127.0.0.1:{mesos}")])
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(dir.path().join(format!("n{n}.err"))).unwrap())
                .spawn()
                .unwrap(),
        );
        // It starts and answers as the node the file names.
        let status = wait_for(
            &format!("node {n} to answer"),
            Duration::from_secs(30),
            || {
                let (code, out, _) = kaon(api, &["--output", "json", "cluster", "status"]);
                (code == 0).then_some(out)
            },
        );
        let v: serde_json::Value = serde_json::from_str(&status).unwrap();
        assert_eq!(v["node_id"], n, "{status}");
        let err = std::fs::read_to_string(dir.path().join(format!("n{n}.err"))).unwrap();
        assert!(
            err.lines().any(|l| l.starts_with('{')),
            "log-format json from the file: {err}"
        );
    }
}
