//! Helpers shared by the real-process tests: free ports, the `kaon` binary,
//! a one-node server, a 3-node cluster sharing one external Mesos emulator,
//! deadline waits and gRPC calls. Every process started here is killed when
//! its owner is dropped (also on panic); a failing test prints the tail of
//! each server's log.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kaon_api::v1;
use kaon_api::v1::kaon_client::KaonClient;
use tonic::transport::Channel;

/// The `kaon` binary under test.
pub const KAON: &str = env!("CARGO_BIN_EXE_kaon");

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

/// A free loopback port (bound and released: another process may take it
/// before the caller binds it, which is rare enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// Runs the `kaon` CLI against the API on loopback port `api`.
pub fn kaon(api: u16, args: &[&str]) -> (i32, String, String) {
    kaon_at(&format!("http://127.0.0.1:{api}"), args)
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Async [`wait_for`]: polls `f` every 50 ms until Some or the deadline.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// The last `n` lines of a file (for failure reports).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn sigterm_then_kill(child: &mut Child, grace: Duration) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

// ---------------------------------------------------------------- one node

/// A one-node `kaon server` (embedded Mesos emulator) on its data directory.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data: PathBuf,
}

impl Server {
    /// SIGKILL, and wait until the process is gone.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- server log ({}):\n{}",
                self.data.display(),
                tail(&self.data.join("server.stderr"), 40)
            );
        }
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM for a clean shutdown (it stops the emulator's processes).
            sigterm_then_kill(&mut self.child, Duration::from_secs(10));
        }
    }
}

/// Starts `kaon server` on `data` (ports picked by the server) and waits
/// until it prints its address. Its log is appended to `data/server.stderr`.
pub fn start_server(data: &Path) -> Server {
    std::fs::create_dir_all(data).unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("server.stderr"))
        .unwrap();
    let mut child = Command::new(KAON)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--raft-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(data)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("kaon server starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let mut server = Server {
        child,
        url: String::new(),
        data: data.to_path_buf(),
    };
    assert!(
        line.starts_with("kaon server listening on "),
        "server did not start: {line:?}"
    );
    let addr = line
        .split_whitespace()
        .nth(4)
        .expect("listening on ADDR")
        .to_string();
    server.url = format!("http://{addr}");
    server
}

// ------------------------------------------------------------ 3-node cluster

/// Three `kaon server` processes (node ids 1..=3, index 0..=2) sharing one
/// external `kaon mesos-emulator`, data in a temp dir.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub mesos: u16,
    /// Raft listen ports.
    pub raft: Vec<u16>,
    /// API ports.
    pub api: Vec<u16>,
    /// `peers[i][j]`: the address node i dials for node j's Raft RPC.
    pub peers: Vec<Vec<String>>,
    emulator: Option<Child>,
    nodes: Vec<Option<Child>>,
}

impl Cluster {
    /// A cluster whose nodes dial each other directly.
    pub fn start() -> Cluster {
        let raft: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let direct = raft.clone();
        Cluster::start_with(raft, |_, j| format!("127.0.0.1:{}", direct[j]))
    }

    /// A cluster on these Raft listen ports where node i dials node j at
    /// `peer(i, j)`.
    pub fn start_with(raft: Vec<u16>, peer: impl Fn(usize, usize) -> String) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mesos = free_port();
        let api: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers = (0..3)
            .map(|i| (0..3).map(|j| peer(i, j)).collect())
            .collect();
        let emulator = Command::new(KAON)
            .args([
                "mesos-emulator",
                "--master",
                &format!("127.0.0.1:{mesos}"),
                "--work-dir",
            ])
            .arg(dir.path().join("mesos"))
            .args(["--executor-path", KAON])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("mesos.stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut c = Cluster {
            dir,
            mesos,
            raft,
            api,
            peers,
            emulator: Some(emulator),
            nodes: vec![None, None, None],
        };
        for i in 0..3 {
            c.start_node(i);
        }
        c
    }

    /// Node i's data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}.stderr", i + 1))
    }

    /// Node i's API URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.api[i])
    }

    /// Whether node i's process was started and not killed.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// Starts node i (again) on its data directory; its log is appended to
    /// `n{i+1}.stderr`.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {} is running", i + 1);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let mut c = Command::new(KAON);
        c.args(["server", "--node-id", &(i + 1).to_string()])
            .args(["--listen", &format!("127.0.0.1:{}", self.api[i])])
            .args(["--raft-listen", &format!("127.0.0.1:{}", self.raft[i])])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args([
                "--mesos-master",
                &format!("http://127.0.0.1:{}", self.mesos),
            ]);
        for j in (0..3).filter(|&j| j != i) {
            c.args(["--peer", &format!("{}={}", j + 1, self.peers[i][j])]);
        }
        self.nodes[i] = Some(c.stdout(Stdio::null()).stderr(log).spawn().unwrap());
    }

    /// SIGKILLs node i and waits until the process is gone.
    pub fn kill(&mut self, i: usize) {
        let mut c = self.nodes[i].take().expect("node is running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGKILLs every node (the emulator keeps running).
    pub fn kill_all(&mut self) {
        for i in 0..3 {
            if self.is_up(i) {
                self.kill(i);
            }
        }
    }

    /// The node's status over gRPC, None if it does not answer.
    pub async fn status(&self, i: usize) -> Option<v1::ClusterStatusResponse> {
        cluster_status(&self.url(i)).await
    }

    /// Waits until every running node answers and names the same leader
    /// (of three members), which is not `not`; returns its index.
    pub async fn wait_leader(&self, not: Option<usize>, deadline: Duration) -> usize {
        wait_until(
            "every running node to name one leader",
            deadline,
            || async {
                let mut leader = None;
                for i in (0..3).filter(|&i| self.is_up(i)) {
                    let st = self.status(i).await?;
                    if st.leader_id == 0 || st.members.len() != 3 {
                        return None;
                    }
                    if leader.is_some_and(|l| l != st.leader_id) {
                        return None;
                    }
                    leader = Some(st.leader_id);
                }
                let l = (leader? - 1) as usize;
                (Some(l) != not).then_some(l)
            },
        )
        .await
    }

    /// Every node's API URL (for [`submit_to_leader`]).
    pub fn urls(&self) -> Vec<String> {
        (0..3).map(|i| self.url(i)).collect()
    }

    /// [`submit_to_leader`] on this cluster.
    pub async fn submit(&self, spec: &str, key: &str, deadline: Duration) -> v1::SubmitRunResponse {
        submit_to_leader(&self.urls(), spec, key, deadline).await
    }
}

/// Submits `spec` with `key` through the nodes at `urls` (any node
/// forwards to the leader), retrying (same key) across errors and leader
/// changes until acknowledged.
pub async fn submit_to_leader(
    urls: &[String],
    spec: &str,
    key: &str,
    deadline: Duration,
) -> v1::SubmitRunResponse {
    let end = Instant::now() + deadline;
    let mut last = String::new();
    loop {
        assert!(
            Instant::now() < end,
            "submit {key} not acknowledged in {deadline:?}: {last}"
        );
        // Any node will do: followers forward writes to the leader.
        for url in urls {
            match submit(url, spec, key).await {
                Ok(r) => return r,
                Err(e) => last = e,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(keep) = std::env::var_os("KAON_TEST_KEEP_LOGS") {
                // Debugging aid: keep the logs of a failed test.
                let _ = Command::new("cp")
                    .arg("-r")
                    .arg(self.dir.path())
                    .arg(keep)
                    .status();
            }
            for i in 0..3 {
                eprintln!("--- node {} log:\n{}", i + 1, tail(&self.log_path(i), 40));
            }
        }
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut e) = self.emulator.take() {
            // SIGTERM: the emulator stops its executors.
            sigterm_then_kill(&mut e, Duration::from_secs(5));
        }
    }
}

// -------------------------------------------------------------------- gRPC

/// A client for the API at `url`: connect deadline 1 s, call deadline 5 s.
pub async fn client(url: &str) -> Option<KaonClient<Channel>> {
    client_with_timeout(url, Duration::from_secs(5)).await
}

/// A client whose calls time out after `timeout`.
pub async fn client_with_timeout(url: &str, timeout: Duration) -> Option<KaonClient<Channel>> {
    let ch = Channel::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(timeout)
        .connect()
        .await
        .ok()?;
    Some(KaonClient::new(ch))
}

/// ClusterStatus of the node at `url`, None if it does not answer.
pub async fn cluster_status(url: &str) -> Option<v1::ClusterStatusResponse> {
    client(url)
        .await?
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// One SubmitRun of an inline spec with an idempotency key.
pub async fn submit(url: &str, spec: &str, key: &str) -> Result<v1::SubmitRunResponse, String> {
    let mut c = client(url)
        .await
        .ok_or_else(|| format!("{url} does not answer"))?;
    c.submit_run(v1::SubmitRunRequest {
        workflow: Some(v1::submit_run_request::Workflow::InlineSpec(
            spec.to_string(),
        )),
        params_json: Default::default(),
        idempotency_key: key.to_string(),
    })
    .await
    .map(|r| r.into_inner())
    .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
}

/// GetRun on the node at `url`.
pub async fn get_run(url: &str, run_id: u64) -> Option<v1::Run> {
    client(url)
        .await?
        .get_run(v1::GetRunRequest { run_id })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// Every run id the node at `url` holds (ListRuns, all pages).
pub async fn all_run_ids(url: &str) -> Option<std::collections::BTreeSet<u64>> {
    let mut c = client(url).await?;
    let mut ids = std::collections::BTreeSet::new();
    let mut page_token = 0;
    loop {
        let r = c
            .list_runs(v1::ListRunsRequest {
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        ids.extend(r.runs.iter().map(|r| r.id));
        if r.next_page_token == 0 {
            return Some(ids);
        }
        page_token = r.next_page_token;
    }
}

/// All committed events of a finished run (WatchRun from its start; the
/// stream ends with RunFinished).
pub async fn run_events(url: &str, run_id: u64) -> Option<Vec<kaon_core::events::Event>> {
    let mut c = client_with_timeout(url, Duration::from_secs(30)).await?;
    let mut stream = c
        .watch_run(v1::WatchRunRequest {
            run_id,
            after_index: 0,
        })
        .await
        .ok()?
        .into_inner();
    let mut events = Vec::new();
    while let Some(m) = stream.message().await.ok()? {
        events.extend(m.event);
    }
    Some(events)
}
