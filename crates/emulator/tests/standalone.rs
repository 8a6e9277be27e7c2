//! The standalone `kaon-mesos-emulator` binary serves a Mesos master and
//! agents and stops cleanly on SIGINT.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_emulator_serves_and_stops_on_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kaon-mesos-emulator"))
        .args([
            "--master",
            "127.0.0.1:0",
            "--agent",
            "127.0.0.1:0;cpus=1;mem=512;attr.zone=z1",
            "--work-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("emulator binary starts");
    let mut child = KillOnDrop(Some(child));
    let child_ref = child.0.as_mut().unwrap();
    let mut lines = BufReader::new(child_ref.stdout.take().unwrap()).lines();
    let master = lines.next().expect("a line").expect("utf8");
    let url = master
        .strip_prefix("master ")
        .expect("master line")
        .to_owned();
    let agent = lines.next().expect("agent line").expect("utf8");
    assert!(agent.starts_with("agent http://127.0.0.1:"), "{agent}");
    let version: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{url}/version"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(version["version"], "1.11.0");
    let state: serde_json::Value = serde_json::from_str(
        &reqwest::get(format!("{url}/master/state"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(state["slaves"][0]["attributes"]["zone"], "z1");
    assert_eq!(state["slaves"][0]["resources"]["cpus"], 1.0);
    // SAFETY: plain syscall on our own child's pid.
    unsafe {
        libc::kill(child_ref.id() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child_ref.try_wait().unwrap() {
            assert!(status.success(), "clean exit, got {status}");
            child.0 = None;
            break;
        }
        assert!(Instant::now() < deadline, "emulator did not stop on SIGINT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the emulator process if the test fails before stopping it.
struct KillOnDrop(Option<std::process::Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
