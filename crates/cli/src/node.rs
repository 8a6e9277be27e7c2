//! `kaon server`: one kaon node (Raft replica, API, and, while it leads,
//! the effect runtime), with an embedded Mesos emulator by default.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kaon_server::log::EventLog;

/// `kaon server` options.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Address for the gRPC API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Data directory: the replicated event log (`raft/`) and the embedded
    /// emulator's task sandboxes (`mesos/`).
    #[arg(long, default_value = "kaon-data")]
    pub data_dir: std::path::PathBuf,
    /// Address for Raft RPC between kaon nodes.
    #[arg(long, default_value = "127.0.0.1:7071")]
    pub raft_listen: std::net::SocketAddr,
    /// This node's id in the cluster.
    #[arg(long, default_value_t = 1)]
    pub node_id: u64,
    /// Other members, `ID=HOST:PORT` of their Raft address (repeatable). A
    /// fresh cluster is formed from this node and its peers.
    #[arg(long = "peer")]
    pub peers: Vec<String>,
    /// Mesos master URL; without it an embedded Mesos emulator is started.
    #[arg(long)]
    pub mesos_master: Option<String>,
    /// Framework name shown by Mesos.
    #[arg(long, default_value = "kaon")]
    pub framework_name: String,
    /// Seconds Mesos keeps kaon's tasks running while no leader is subscribed.
    #[arg(long, default_value_t = kaon_mesos::driver::FAILOVER_TIMEOUT_DEFAULT_SECS)]
    pub failover_timeout: f64,
    /// Do not form a cluster: wait to be added to one (`kaon cluster
    /// add-node` on a member) or formed by `kaon cluster init`.
    #[arg(long)]
    pub join: bool,
    /// Raft leader heartbeat interval, ms.
    #[arg(long, default_value_t = 40)]
    pub heartbeat_ms: u64,
    /// Raft election timeout range `MIN-MAX`, ms: a follower that hears no
    /// leader for a random time in this range starts an election (the
    /// leader's lease is MAX). Lower fails over faster; too low for the
    /// machine's scheduling delays causes needless elections.
    #[arg(long, default_value = "120-240", value_parser = parse_range)]
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot every this many Raft log entries.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_every_entries: u64,
    /// Raft log entries kept behind a snapshot (for followers slightly
    /// behind; the event archive keeps all history regardless).
    #[arg(long, default_value_t = 1_000)]
    pub keep_log_entries: u64,
    /// The API address other nodes and clients use to reach this node
    /// (default: the address it listens on; set it when listening on
    /// 0.0.0.0).
    #[arg(long)]
    pub advertise_api: Option<String>,
    /// The Raft address (`HOST:PORT`, a name is fine) other nodes dial for
    /// this node; it is recorded in the cluster's membership when this node
    /// forms the cluster (default: `--raft-listen`; required when that is a
    /// wildcard such as 0.0.0.0).
    #[arg(long)]
    pub advertise_raft: Option<String>,
}

/// Runs a single-node kaon server until Ctrl-C / SIGTERM.
pub fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let advertise_raft = raft_advertise(args.raft_listen, &args.advertise_raft, args.join)?;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let exe =
        std::env::current_exe().context("locating the kaon binary (it is also the executor)")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
        let (master, emulator) = match args.mesos_master {
            Some(url) => (url, None),
            None => {
                let emu =
                    kaon_mesos::emulator::Emulator::start(kaon_mesos::emulator::EmulatorConfig {
                        allocation_interval: Duration::from_millis(20),
                        work_dir: args.data_dir.join("mesos"),
                        executor_path: Some(exe.clone()),
                        ..Default::default()
                    })
                    .await
                    .context("starting the embedded Mesos emulator")?;
                (emu.master_url(), Some(emu))
            }
        };
        let mut node_config =
            kaon_log::NodeConfig::new(args.node_id, args.raft_listen, args.data_dir.join("raft"));
        node_config.heartbeat_ms = args.heartbeat_ms;
        node_config.election_timeout_ms = args.election_timeout_ms;
        node_config.snapshot_every_entries = args.snapshot_every_entries;
        node_config.keep_entries_after_snapshot = args.keep_log_entries;
        node_config.advertise = advertise_raft;
        for p in &args.peers {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("--peer {p:?}: expected ID=HOST:PORT"))?;
            let id: u64 = id
                .parse()
                .with_context(|| format!("--peer {p:?}: the id must be a number"))?;
            node_config.peers.insert(id, addr.to_string());
        }
        let node = kaon_log::RaftNode::start(node_config)
            .await
            .with_context(|| {
                format!(
                    "opening the event log in {}",
                    args.data_dir.join("raft").display()
                )
            })?;
        // A fresh data directory forms a cluster of this node and its peers
        // (unless --join); an existing one refuses to initialize again (its
        // log already has a membership), which is fine: the node recovers
        // from its own log.
        if !args.join
            && !node.is_initialized().await
            && let Err(e) = node.initialize().await
        {
            // A peer that initialised first may have reached us already.
            tracing::info!(reason = %e, "not initializing: the log already holds a cluster");
        }
        if node.is_initialized().await {
            node.wait_for_leader(Duration::from_secs(10))
                .await
                .context("no Raft leader within 10 s")?;
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
        let log = Arc::new(kaon_server::log::RaftLog::new(node));
        let mut config =
            kaon_server::runtime::RuntimeConfig::new(master.clone(), exe.display().to_string());
        config.framework_name = args.framework_name;
        config.failover_timeout_secs = args.failover_timeout;
        config.api_addr = Some(args.advertise_api.clone().unwrap_or(addr.to_string()));
        let runtime = kaon_server::runtime::supervise(log.clone(), config);
        // Serve once this node's role is settled: a leader first starts its
        // runtime, so the first write after "listening" is accepted.
        let settle_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !args.join && tokio::time::Instant::now() < settle_deadline {
            // A follower forwards writes once the leader's API address is
            // applied here.
            let settled = match log.node().current_leader() {
                None => false,
                Some(l) if l == args.node_id => runtime.read().await.is_some(),
                Some(l) => log.with_state(|s| s.api_addrs.contains_key(&l)),
            };
            if settled {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "kaon server listening on {addr} (Mesos master {master}, data in {})",
            args.data_dir.display()
        );
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let service = kaon_server::grpc::ServiceConfig {
            mesos_master: Some(master.clone()),
        };
        kaon_server::grpc::serve(log, runtime, service, listener, shutdown).await?;
        if let Some(emu) = emulator {
            emu.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The Raft address to advertise: `--advertise-raft`, else none (the bound
/// address). A wildcard listen address cannot be dialed by peers, and a node
/// that forms a cluster records its address in the membership for good, so
/// that case is refused unless the node only joins (its address then comes
/// from `kaon cluster add-node`).
fn raft_advertise(
    listen: std::net::SocketAddr,
    advertise: &Option<String>,
    join: bool,
) -> anyhow::Result<Option<String>> {
    if advertise.is_none() && listen.ip().is_unspecified() && !join {
        anyhow::bail!(
            "--raft-listen {listen} is not an address other nodes can dial: \
             give --advertise-raft HOST:PORT (e.g. this host's name and the port)"
        );
    }
    Ok(advertise.clone())
}

/// `MIN-MAX` (milliseconds) for `--election-timeout-ms`.
fn parse_range(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 120-240"))?;
    let (a, b): (u64, u64) = (
        a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?,
        b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?,
    );
    if a == 0 || a >= b {
        return Err(format!("{s:?}: need 0 < MIN < MAX"));
    }
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::raft_advertise;

    #[test]
    fn wildcard_raft_listen_needs_an_advertised_address() {
        let any = "0.0.0.0:7071".parse().unwrap();
        let lo = "127.0.0.1:7071".parse().unwrap();
        let name = Some("kaon1:7071".to_string());
        assert!(raft_advertise(any, &None, false).is_err());
        assert_eq!(raft_advertise(any, &name, false).unwrap(), name);
        assert_eq!(raft_advertise(any, &None, true).unwrap(), None);
        assert_eq!(raft_advertise(lo, &None, false).unwrap(), None);
    }
}
