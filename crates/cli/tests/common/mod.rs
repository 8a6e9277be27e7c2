//! What the real-process tests share: the `kaon` binary under test, the CLI
//! run as a user runs it, and `kaon-harness` (processes, clusters, network
//! namespaces, gRPC helpers), re-exported. Every process started here is
//! killed when its owner is dropped (also on panic); a failing test prints
//! the tail of each server's log.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command};

pub use kaon_harness::*;

/// The `kaon` binary under test.
pub const KAON: &str = env!("CARGO_BIN_EXE_kaon");

/// A 3-node cluster of the binary under test on loopback.
pub fn cluster() -> Cluster {
    Cluster::builder(KAON).start().expect("the cluster starts")
}

/// A one-node `kaon server` of the binary under test on `data`.
pub fn start_server(data: &Path) -> Server {
    Server::start(Path::new(KAON), data).expect("kaon server starts")
}

/// Child processes killed (SIGKILL) and reaped on drop.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the `kaon` CLI against the API at `url`: (exit code, stdout, stderr).
pub fn kaon_at(url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(KAON)
        .arg("--server")
        .arg(url)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the `kaon` CLI with no server (offline commands: `--data-dir`,
/// `validate`, `cluster restore`): (exit code, stdout, stderr).
pub fn kaon_local(args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    let out = Command::new(KAON).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the `kaon` CLI against the API on loopback port `api`.
pub fn kaon(api: u16, args: &[&str]) -> (i32, String, String) {
    kaon_at(&format!("http://127.0.0.1:{api}"), args)
}

/// The leader named by `kaon cluster status` on `api`, once it knows one of
/// three members.
pub fn leader_of(api: u16) -> Option<u64> {
    let (code, out, _) = kaon(api, &["--output", "json", "cluster", "status"]);
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    let l = v["leader_id"].as_u64()?;
    (l != 0 && v["members"].as_array()?.len() == 3).then_some(l)
}

/// Every line of `marks/<name>` (steps append to such files, so tests
/// count executions from outside kaon); none if the file is missing.
pub fn lines(marks: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(marks.join(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Every executor sandbox under the emulator's work directory `mesos`:
/// `slaves/*/frameworks/*/executors/<executor id>` (an executor id ends
/// with its task id, `r<run>-i<inst>-a<attempt>:<path>`).
pub fn executor_sandboxes(mesos: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let dirs = |p: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut out = std::collections::BTreeSet::new();
    for agent in dirs(&mesos.join("slaves")) {
        for fw in dirs(&agent.join("frameworks")) {
            out.extend(dirs(&fw.join("executors")));
        }
    }
    out
}

/// The directories of the steps kaon's executors ran under an emulator's
/// work dir (`.../executors/*/runs/*/tasks/<task id, made path-safe>`):
/// one appears when a step's launch reached its executor.
pub fn step_dirs(mesos: &Path) -> std::collections::BTreeSet<std::path::PathBuf> {
    let dirs = |p: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let mut out = std::collections::BTreeSet::new();
    for ex in executor_sandboxes(mesos) {
        for run in dirs(&ex.join("runs")) {
            out.extend(dirs(&run.join("tasks")));
        }
    }
    out
}
