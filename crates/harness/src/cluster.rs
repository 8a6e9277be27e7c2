//! One `kaon server`, or a cluster of them sharing one Mesos emulator.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kaon_api::v1;
use kaon_api::v1::kaon_client::KaonClient;
use tonic::transport::Channel;

use crate::net::NetLab;
use crate::proc::{Proc, free_ports, tail};

/// Deadline for a process to start listening (emulator, one-node server).
const LISTEN_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for one ClusterStatus probe of one node.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Grace a SIGTERMed emulator or one-node server has to stop its tasks.
const STOP_GRACE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- one node

/// A one-node `kaon server` (embedded Mesos emulator) on its data directory.
pub struct Server {
    /// The server process (its own process group).
    pub proc: Option<Proc>,
    /// Its API URL, from the line it prints when it listens.
    pub url: String,
    /// Its data directory.
    pub data: PathBuf,
}

impl Server {
    /// Starts `kaon server` on `data` (ports picked by the server) and waits
    /// until it prints its address. Its log is appended to
    /// `data/server.stderr`.
    pub fn start(kaon: &Path, data: &Path) -> anyhow::Result<Server> {
        Server::start_with(kaon, data, &[], &[])
    }

    /// [`Server::start`] with extra `kaon server` arguments and environment.
    pub fn start_with(
        kaon: &Path,
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        std::fs::create_dir_all(data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("server.stderr"))?;
        let mut proc = Proc::spawn_raw(
            Command::new(kaon)
                .args(["server", "--listen", "127.0.0.1:0"])
                .args(["--raft-listen", "127.0.0.1:0", "--data-dir"])
                .arg(data)
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log),
        )?;
        let stdout = proc.child_mut().stdout.take().context("piped stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(LISTEN_DEADLINE).unwrap_or_default();
        let mut server = Server {
            proc: Some(proc),
            url: String::new(),
            data: data.to_path_buf(),
        };
        let Some(addr) = line
            .strip_prefix("kaon server listening on ")
            .and_then(|r| r.split_whitespace().next())
        else {
            bail!(
                "kaon server did not start: {line:?}; log:\n{}",
                tail(&data.join("server.stderr"), 20)
            );
        };
        server.url = format!("http://{addr}");
        Ok(server)
    }

    /// SIGKILL, and wait until the process is gone.
    pub fn kill9(mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
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
        if let Some(p) = self.proc.take() {
            // SIGTERM for a clean shutdown (it stops the emulator's tasks).
            p.stop(libc::SIGTERM, STOP_GRACE);
        }
    }
}

// ------------------------------------------------------------ the cluster

type PeerFn = Box<dyn Fn(usize, usize) -> String>;

/// How to start a [`Cluster`].
pub struct ClusterBuilder {
    kaon: PathBuf,
    nodes: usize,
    dir: Option<PathBuf>,
    agents: Vec<String>,
    server_args: Vec<String>,
    raft: Option<Vec<u16>>,
    peer: Option<PeerFn>,
    net: Option<Arc<NetLab>>,
    token: Option<String>,
    tls_ca: Option<Vec<u8>>,
}

impl ClusterBuilder {
    /// The bearer token the harness's own probes (cluster status) send:
    /// for clusters started with `--auth-file`.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// The cluster CA (PEM) for clusters started with `--tls-*`: the
    /// nodes' URLs are `https://` and the harness verifies them with it.
    pub fn tls_ca(mut self, pem: Vec<u8>) -> Self {
        self.tls_ca = Some(pem);
        self
    }

    /// Number of nodes (3 by default; 5 works too).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// Keep data and logs in `dir` (default: a temp dir removed on drop).
    pub fn dir(mut self, dir: &Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// An emulator agent (`--agent` spec, e.g.
    /// `127.0.0.1:0;cpus=2;mem=16384`); default: the emulator's own.
    pub fn agent(mut self, spec: &str) -> Self {
        self.agents.push(spec.to_string());
        self
    }

    /// Extra arguments for every `kaon server`.
    pub fn server_args(mut self, args: &[&str]) -> Self {
        self.server_args
            .extend(args.iter().map(|s| (*s).to_string()));
        self
    }

    /// Raft listen ports, and the address node i dials for node j (e.g.
    /// through a proxy).
    pub fn peers(
        mut self,
        raft: Vec<u16>,
        peer: impl Fn(usize, usize) -> String + 'static,
    ) -> Self {
        self.raft = Some(raft);
        self.peer = Some(Box::new(peer));
        self
    }

    /// Every node in its own network namespace of `net` (real partitions);
    /// the emulator listens on the hub.
    pub fn netlab(mut self, net: Arc<NetLab>) -> Self {
        self.net = Some(net);
        self
    }

    /// Starts the emulator, waits until it listens, and starts every node.
    pub fn start(self) -> anyhow::Result<Cluster> {
        let n = self.nodes;
        assert!(n >= 1, "a cluster has at least one node");
        if let Some(net) = &self.net {
            assert!(net.nodes() >= n, "the lab has a namespace per node");
        }
        let (tmp, dir) = match self.dir {
            Some(d) => {
                std::fs::create_dir_all(&d)?;
                (None, d)
            }
            None => {
                let t = tempfile::Builder::new().prefix("kaon-cluster.").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let hosts: Vec<String> = (0..n)
            .map(|i| match &self.net {
                Some(net) => net.node_ip(i),
                None => "127.0.0.1".to_string(),
            })
            .collect();
        let mesos_host = match &self.net {
            Some(_) => NetLab::HUB_IP.to_string(),
            None => "127.0.0.1".to_string(),
        };
        // Every port of the cluster from one call: distinct (the emulator's
        // port once came back as a node's API port).
        let mut ports = free_ports(3 * n + 1);
        let mesos = ports.pop().expect("3n+1 ports");
        let admin: Vec<u16> = ports.split_off(2 * n);
        let api: Vec<u16> = ports.split_off(n);
        let raft = self.raft.unwrap_or(ports);
        let peers = (0..n)
            .map(|i| {
                (0..n)
                    .map(|j| match &self.peer {
                        Some(f) => f(i, j),
                        None => format!("{}:{}", hosts[j], raft[j]),
                    })
                    .collect()
            })
            .collect();
        let mut emu = Command::new(&self.kaon);
        emu.arg("mesos-emulator")
            .args(["--master", &format!("{mesos_host}:{mesos}")])
            .arg("--work-dir")
            .arg(dir.join("mesos"))
            .arg("--executor-path")
            .arg(&self.kaon);
        for a in &self.agents {
            emu.args(["--agent", a]);
        }
        let emulator = Proc::spawn(&mut emu, &dir.join("mesos.stderr"))?;
        let mut c = Cluster {
            kaon: self.kaon,
            _tmp: tmp,
            dir,
            mesos,
            mesos_host,
            hosts,
            raft,
            api,
            admin,
            peers,
            server_args: self.server_args,
            net: self.net,
            emulator: Some(emulator),
            nodes: (0..n).map(|_| None).collect(),
            paused: vec![false; n],
            token: self.token,
            tls_ca: self.tls_ca,
        };
        let end = Instant::now() + LISTEN_DEADLINE;
        while std::net::TcpStream::connect((c.mesos_host.as_str(), mesos)).is_err() {
            if Instant::now() > end {
                bail!(
                    "the Mesos emulator did not listen on {mesos} within {LISTEN_DEADLINE:?}:\n{}",
                    tail(&c.dir.join("mesos.stderr"), 20)
                );
            }
            std::thread::sleep(crate::POLL);
        }
        for i in 0..n {
            c.start_node(i)?;
        }
        Ok(c)
    }
}

/// `kaon server` nodes (ids 1..=n, index 0..n) sharing one external
/// `kaon mesos-emulator`. Dropping it SIGKILLs the nodes (they must survive
/// that: it is what the tests do to them) and stops the emulator with
/// SIGTERM (it stops its tasks).
pub struct Cluster {
    kaon: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    /// Data and logs: `n{id}/` and `n{id}.stderr` per node, `mesos/` (the
    /// emulator's work dir with the sandboxes) and `mesos.stderr`.
    pub dir: PathBuf,
    /// The Mesos master's port.
    pub mesos: u16,
    /// The Mesos master's host (loopback, or the lab's hub).
    pub mesos_host: String,
    /// Each node's address (loopback, or its namespace's).
    pub hosts: Vec<String>,
    /// Raft listen ports.
    pub raft: Vec<u16>,
    /// API ports.
    pub api: Vec<u16>,
    /// Admin HTTP ports (`--admin-listen`: health, readiness, metrics).
    pub admin: Vec<u16>,
    /// `peers[i][j]`: the address node i dials for node j's Raft RPC.
    pub peers: Vec<Vec<String>>,
    server_args: Vec<String>,
    net: Option<Arc<NetLab>>,
    emulator: Option<Proc>,
    nodes: Vec<Option<Proc>>,
    paused: Vec<bool>,
    /// See [`ClusterBuilder::token`].
    token: Option<String>,
    /// See [`ClusterBuilder::tls_ca`].
    tls_ca: Option<Vec<u8>>,
}

impl Cluster {
    /// How to start a cluster of the `kaon` binary at `kaon`.
    pub fn builder(kaon: impl AsRef<Path>) -> ClusterBuilder {
        ClusterBuilder {
            kaon: kaon.as_ref().to_path_buf(),
            nodes: 3,
            dir: None,
            agents: Vec::new(),
            server_args: Vec::new(),
            raft: None,
            peer: None,
            net: None,
            token: None,
            tls_ca: None,
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (a cluster has nodes); for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The network lab the nodes run in, if any.
    pub fn net(&self) -> Option<&NetLab> {
        self.net.as_deref()
    }

    /// Node i's data directory.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}", i + 1))
    }

    /// Node i's log (appended to across restarts).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("n{}.stderr", i + 1))
    }

    /// The emulator's work directory (agents' sandboxes).
    pub fn mesos_dir(&self) -> PathBuf {
        self.dir.join("mesos")
    }

    /// The Mesos master's URL.
    pub fn mesos_url(&self) -> String {
        format!("http://{}:{}", self.mesos_host, self.mesos)
    }

    /// Node i's API URL.
    pub fn url(&self, i: usize) -> String {
        let scheme = if self.tls_ca.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{}", self.hosts[i], self.api[i])
    }

    /// Every node's API URL.
    pub fn urls(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.url(i)).collect()
    }

    /// Whether node i's process was started and not killed (it may be
    /// paused).
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// Whether node i's process was started and has exited by itself (a
    /// node that refused to start).
    pub fn has_exited(&mut self, i: usize) -> bool {
        self.nodes[i].as_mut().is_some_and(|p| !p.is_running())
    }

    /// Whether node i is up and not paused.
    pub fn is_serving(&self, i: usize) -> bool {
        self.is_up(i) && !self.paused[i]
    }

    /// Starts node i (again) on its data directory; its log is appended to
    /// [`Cluster::log_path`].
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        assert!(self.nodes[i].is_none(), "node {} is running", i + 1);
        let mut c = match &self.net {
            Some(net) => net.command(i, &self.kaon),
            None => Command::new(&self.kaon),
        };
        c.args(["server", "--node-id", &(i + 1).to_string()])
            .args(["--listen", &format!("{}:{}", self.hosts[i], self.api[i])])
            .args([
                "--raft-listen",
                &format!("{}:{}", self.hosts[i], self.raft[i]),
            ])
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--mesos-master", &self.mesos_url()])
            .args([
                "--admin-listen",
                &format!("{}:{}", self.hosts[i], self.admin[i]),
            ])
            // `{n}` in an argument stands for the node's number (per-node
            // files such as TLS certificates).
            .args(
                self.server_args
                    .iter()
                    .map(|a| a.replace("{n}", &(i + 1).to_string())),
            );
        for j in (0..self.len()).filter(|&j| j != i) {
            c.args(["--peer", &format!("{}={}", j + 1, self.peers[i][j])]);
        }
        self.nodes[i] = Some(Proc::spawn(&mut c, &self.log_path(i))?);
        self.paused[i] = false;
        Ok(())
    }

    /// Node i's admin HTTP base URL (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_url(&self, i: usize) -> String {
        format!("http://{}:{}", self.hosts[i], self.admin[i])
    }

    /// SIGKILLs node i and waits until the process is gone.
    pub fn kill(&mut self, i: usize) {
        let p = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", i + 1));
        p.kill9();
        self.paused[i] = false;
    }

    /// Stops node i as an operator's restart does (SIGTERM, SIGKILL after
    /// a grace) and waits until it is gone.
    pub fn stop(&mut self, i: usize) {
        let p = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("node {} is not running", i + 1));
        p.stop(libc::SIGTERM, STOP_GRACE);
        self.paused[i] = false;
    }

    /// The extra `kaon server` arguments of nodes started from now on (a
    /// rolling upgrade restarts nodes with new settings).
    pub fn set_server_args(&mut self, args: &[&str]) {
        self.server_args = args.iter().map(|s| (*s).to_string()).collect();
    }

    /// SIGKILLs every running node (the emulator and its tasks go on).
    pub fn kill_all(&mut self) {
        for i in 0..self.len() {
            if self.is_up(i) {
                self.kill(i);
            }
        }
    }

    /// SIGSTOPs node i (a process that stops answering without dying: a
    /// long GC pause, a stalled VM).
    pub fn pause(&mut self, i: usize) {
        let p = self.nodes[i].as_mut().expect("node is running");
        p.signal_group(libc::SIGSTOP);
        self.paused[i] = true;
    }

    /// SIGCONTs a paused node i.
    pub fn resume(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].as_mut() {
            p.signal_group(libc::SIGCONT);
        }
        self.paused[i] = false;
    }

    /// A client for node i (connect deadline [`PROBE_TIMEOUT`], no call
    /// deadline: callers set their own).
    pub async fn connect(&self, i: usize) -> anyhow::Result<KaonClient<Channel>> {
        let mut endpoint = Channel::from_shared(self.url(i))?
            .connect_timeout(PROBE_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(ca) = &self.tls_ca {
            endpoint = endpoint.tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )?;
        }
        let ch = endpoint
            .connect()
            .await
            .with_context(|| format!("connecting to node {}", i + 1))?;
        Ok(KaonClient::new(ch))
    }

    /// Node i's ClusterStatus, None if it does not answer within
    /// [`PROBE_TIMEOUT`].
    pub async fn status(&self, i: usize) -> Option<v1::ClusterStatusResponse> {
        if !self.is_serving(i) {
            return None;
        }
        let fut = async {
            let mut c = self.connect(i).await.ok()?;
            let mut req = tonic::Request::new(v1::ClusterStatusRequest {});
            if let Some(t) = &self.token {
                req.metadata_mut()
                    .insert("authorization", format!("Bearer {t}").parse().ok()?);
            }
            c.cluster_status(req).await.ok().map(|r| r.into_inner())
        };
        tokio::time::timeout(PROBE_TIMEOUT, fut).await.ok()?
    }

    /// The leader every serving node names (all of them the same one, a
    /// full membership), if it is not `not`.
    pub async fn leader(&self, not: Option<usize>) -> Option<usize> {
        let mut leader = None;
        for i in (0..self.len()).filter(|&i| self.is_serving(i)) {
            let st = self.status(i).await?;
            if st.leader_id == 0 || st.members.len() != self.len() {
                return None;
            }
            if leader.is_some_and(|l| l != st.leader_id) {
                return None;
            }
            leader = Some(st.leader_id);
        }
        let l = (leader? - 1) as usize;
        (Some(l) != not && self.is_serving(l)).then_some(l)
    }

    /// Waits until every serving node answers and names the same leader,
    /// which is not `not`; returns its index. Panics after `deadline`.
    pub async fn wait_leader(&self, not: Option<usize>, deadline: Duration) -> usize {
        match crate::try_wait_until(deadline, || self.leader(not)).await {
            Some(l) => l,
            None => {
                // The logs say why (a node that does not answer may have
                // died at start).
                let logs: Vec<String> = (0..self.len())
                    .map(|i| format!("--- n{} log:\n{}", i + 1, tail(&self.log_path(i), 15)))
                    .collect();
                panic!(
                    "no leader every running node agrees on within {deadline:?} ({})\n{}",
                    self.describe().await,
                    logs.join("\n")
                )
            }
        }
    }

    /// Waits until every node answers, all name the same leader, the leader
    /// sees every member with no lag, and all applied the same events.
    /// Returns the leader's index.
    pub async fn wait_healthy(&self, deadline: Duration) -> anyhow::Result<usize> {
        let healthy = || async {
            let mut sts = Vec::new();
            for i in 0..self.len() {
                sts.push(self.status(i).await?);
            }
            let l = sts[0].leader_id;
            let same = sts.iter().all(|s| {
                s.leader_id == l
                    && s.applied_event_index == sts[0].applied_event_index
                    && s.applied_index == s.committed_index
            });
            if l == 0 || !same {
                return None;
            }
            let ls = &sts[(l - 1) as usize];
            (ls.state == "Leader"
                && ls.members.len() == self.len()
                && ls.members.iter().all(|m| m.lag_entries == 0))
            .then_some((l - 1) as usize)
        };
        match crate::try_wait_until(deadline, healthy).await {
            Some(l) => Ok(l),
            None => bail!(
                "cluster not healthy within {deadline:?} ({}); logs in {}",
                self.describe().await,
                self.dir.display()
            ),
        }
    }

    /// One line per node: leader, state, term, applied index (for errors).
    pub async fn describe(&self) -> String {
        let mut parts = Vec::new();
        for i in 0..self.len() {
            parts.push(match self.status(i).await {
                Some(s) => format!(
                    "n{}: leader {} {} term {} applied {}",
                    i + 1,
                    s.leader_id,
                    s.state,
                    s.term,
                    s.applied_index
                ),
                None if !self.is_up(i) => format!("n{}: down", i + 1),
                None if self.paused[i] => format!("n{}: paused", i + 1),
                None => format!("n{}: no answer", i + 1),
            });
        }
        parts.join("; ")
    }

    /// [`crate::submit_to_leader`] on this cluster.
    pub async fn submit(&self, spec: &str, key: &str, deadline: Duration) -> v1::SubmitRunResponse {
        crate::submit_to_leader(&self.urls(), spec, key, deadline).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(keep) = std::env::var_os("KAON_TEST_KEEP_LOGS") {
                // Debugging aid: keep the logs of a failed test.
                let _ = Command::new("cp")
                    .arg("-r")
                    .arg(&self.dir)
                    .arg(keep)
                    .status();
            }
            for i in 0..self.len() {
                eprintln!("--- node {} log:\n{}", i + 1, tail(&self.log_path(i), 40));
            }
        }
        for n in self.nodes.iter_mut() {
            if let Some(p) = n.take() {
                p.kill9();
            }
        }
        if let Some(e) = self.emulator.take() {
            // SIGTERM: the emulator stops its executors.
            e.stop(libc::SIGTERM, STOP_GRACE);
        }
    }
}
