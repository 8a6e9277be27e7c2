//! `kaon server` and the client commands (`submit`, `runs`, `run ...`,
//! `workflow ...`, `schedules`) over the public gRPC API.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kaon_api::v1;
use kaon_api::v1::kaon_client::KaonClient;
use tonic::transport::Channel;

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
}

/// Runs a single-node kaon server until Ctrl-C / SIGTERM.
pub fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
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
        // A fresh data directory forms a one-node cluster; an existing one
        // refuses to initialize again (its log already has a membership),
        // which is fine: the node recovers from its own log.
        if let Err(e) = node.initialize().await {
            tracing::info!(reason = %e, "not initializing: the log already holds a cluster");
        }
        node.wait_for_leader(Duration::from_secs(10))
            .await
            .context("no Raft leader within 10 s")?;
        let log = Arc::new(kaon_server::log::RaftLog::new(node));
        let mut config =
            kaon_server::runtime::RuntimeConfig::new(master.clone(), exe.display().to_string());
        config.framework_name = args.framework_name;
        config.failover_timeout_secs = args.failover_timeout;
        let runtime = kaon_server::runtime::supervise(log.clone(), config);
        // Serve once this node's role is settled: a leader first starts its
        // runtime, so the first write after "listening" is accepted.
        let settle_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < settle_deadline {
            let leader = log.node().current_leader();
            if leader.is_some() && (leader != Some(args.node_id) || runtime.read().await.is_some())
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        let addr = listener.local_addr()?;
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
        kaon_server::grpc::serve(log, runtime, listener, shutdown).await?;
        if let Some(emu) = emulator {
            emu.shutdown().await;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Connects to the API (deadline on connect; calls carry their own).
async fn connect(server: &str) -> anyhow::Result<KaonClient<Channel>> {
    let endpoint = Channel::from_shared(server.to_string())
        .with_context(|| format!("bad server address {server:?}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    let channel = endpoint.connect().await.with_context(|| {
        format!("connecting to {server} (is `kaon server` running? set --server or KAON_SERVER)")
    })?;
    Ok(KaonClient::new(channel))
}

fn status_error(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

fn parse_params(params: &[String]) -> anyhow::Result<HashMap<String, String>> {
    let mut out = HashMap::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("parameter {p:?}: expected NAME=VALUE"))?;
        // VALUE is JSON if it parses, else text.
        let json = match serde_json::from_str::<serde_json::Value>(v) {
            Ok(_) => v.to_string(),
            Err(_) => serde_json::Value::String(v.to_string()).to_string(),
        };
        out.insert(k.to_string(), json);
    }
    Ok(out)
}

/// `kaon submit`.
pub async fn submit(
    server: &str,
    file: &str,
    params: &[String],
    key: Option<String>,
    watch: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let spec = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let mut c = connect(server).await?;
    let r = c
        .submit_run(v1::SubmitRunRequest {
            workflow: Some(v1::submit_run_request::Workflow::InlineSpec(spec)),
            params_json: parse_params(params)?,
            idempotency_key: key.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"run_id": r.run_id, "existing": r.existing})
        );
    } else {
        println!(
            "run {}{}",
            r.run_id,
            if r.existing {
                " (existing: same idempotency key)"
            } else {
                ""
            }
        );
    }
    if watch {
        watch_run(server, r.run_id, json).await
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn run_json(r: &v1::Run) -> serde_json::Value {
    serde_json::json!({
        "id": r.id, "workflow": r.workflow, "version": r.version, "status": r.status, "message": r.message,
        "submitted_unix_ms": r.submitted_unix_ms, "finished_unix_ms": r.finished_unix_ms,
        "steps": r.steps.iter().map(|s| serde_json::json!({"path": s.path, "status": s.status, "kind": s.kind,
            "attempts": s.attempts, "percent": s.percent, "status_text": s.status_text, "message": s.message,
            "outputs": serde_json::from_str::<serde_json::Value>(&s.outputs_json).unwrap_or(serde_json::Value::Null)})).collect::<Vec<_>>(),
    })
}

fn print_run(r: &v1::Run) {
    println!(
        "run {} {}@{}: {}{}",
        r.id,
        r.workflow,
        r.version,
        r.status,
        if r.message.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.message)
        }
    );
    for s in &r.steps {
        if s.kind == "task" {
            let pct = if s.status == "running" {
                format!(" {:>3}%", s.percent)
            } else {
                String::new()
            };
            println!(
                "  {:<10}{} {}{}",
                s.status,
                pct,
                s.path,
                if s.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", s.message)
                }
            );
        }
    }
}

/// `kaon run show`.
pub async fn show(server: &str, id: u64, json: bool) -> anyhow::Result<ExitCode> {
    let r = connect(server)
        .await?
        .get_run(v1::GetRunRequest { run_id: id })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!("{}", run_json(&r));
    } else {
        print_run(&r);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon run watch`: one line per step change until the run ends; exit 0
/// if it succeeded.
pub async fn watch_run(server: &str, id: u64, json: bool) -> anyhow::Result<ExitCode> {
    let mut c = connect(server).await?;
    let mut stream = c
        .watch_run(v1::WatchRunRequest {
            run_id: id,
            after_index: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut last: HashMap<String, (String, u32)> = HashMap::new();
    let mut status = String::new();
    while let Some(ev) = stream.message().await.map_err(status_error)? {
        let Some(run) = ev.run else { continue };
        for s in run.steps.iter().filter(|s| s.kind == "task") {
            let now = (s.status.clone(), s.percent);
            if last.get(&s.path) != Some(&now) {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"index": ev.event.as_ref().map(|e| e.index), "path": s.path, "status": s.status, "percent": s.percent, "status_text": s.status_text})
                    );
                } else {
                    let pct = if s.status == "running" && s.percent > 0 {
                        format!(" {:>3}%", s.percent)
                    } else {
                        String::new()
                    };
                    println!("  {:<10}{} {}", s.status, pct, s.path);
                }
                last.insert(s.path.clone(), now);
            }
        }
        status = run.status.clone();
        if run.status != "running" {
            if !json {
                println!(
                    "run {id} {}{}",
                    run.status,
                    if run.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", run.message)
                    }
                );
            }
            break;
        }
    }
    Ok(if status == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `kaon run cancel`.
pub async fn cancel(server: &str, id: u64, reason: String) -> anyhow::Result<ExitCode> {
    connect(server)
        .await?
        .cancel_run(v1::CancelRunRequest { run_id: id, reason })
        .await
        .map_err(status_error)?;
    println!("run {id} cancelling");
    Ok(ExitCode::SUCCESS)
}

/// `kaon runs`.
pub async fn runs(
    server: &str,
    workflow: Option<String>,
    status: Option<String>,
    limit: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let r = connect(server)
        .await?
        .list_runs(v1::ListRunsRequest {
            workflow: workflow.unwrap_or_default(),
            status: status.unwrap_or_default(),
            page_size: limit,
            page_token: 0,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let list: Vec<_> = r.runs.iter().map(|x| serde_json::json!({"id": x.id, "workflow": x.workflow, "version": x.version, "status": x.status, "message": x.message})).collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        println!(
            "{:<8} {:<24} {:<8} {:<10} MESSAGE",
            "RUN", "WORKFLOW", "VERSION", "STATUS"
        );
        for x in &r.runs {
            println!(
                "{:<8} {:<24} {:<8} {:<10} {}",
                x.id, x.workflow, x.version, x.status, x.message
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon workflow register`.
pub async fn register(server: &str, file: &str, json: bool) -> anyhow::Result<ExitCode> {
    let spec = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let r = connect(server)
        .await?
        .register_workflow(v1::RegisterWorkflowRequest { spec })
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        println!(
            "{}",
            serde_json::json!({"name": r.name, "version": r.version, "created": r.created})
        );
    } else {
        println!(
            "{} version {}{}",
            r.name,
            r.version,
            if r.created { "" } else { " (unchanged)" }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon workflow list`.
pub async fn workflows(server: &str, json: bool) -> anyhow::Result<ExitCode> {
    let r = connect(server)
        .await?
        .list_workflows(v1::ListWorkflowsRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let list: Vec<_> = r.workflows.iter().map(|w| serde_json::json!({"name": w.name, "latest_version": w.latest_version, "schedules": w.schedules})).collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for w in &r.workflows {
            println!(
                "{} (latest version {}, {} schedules)",
                w.name, w.latest_version, w.schedules
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon cluster status`.
pub async fn cluster_status(server: &str, json: bool) -> anyhow::Result<ExitCode> {
    let r = connect(server)
        .await?
        .cluster_status(v1::ClusterStatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if json {
        let members: Vec<_> = r
            .members
            .iter()
            .map(|m| serde_json::json!({"id": m.id, "raft_addr": m.raft_addr, "voter": m.voter, "lag_entries": m.lag_entries}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"node_id": r.node_id, "state": r.state, "term": r.term, "leader_id": r.leader_id,
                "last_log_index": r.last_log_index, "committed_index": r.committed_index, "applied_index": r.applied_index,
                "applied_event_index": r.applied_event_index, "members": members})
        );
    } else {
        println!(
            "node {} ({}), term {}, leader {}, log {} committed {} applied {} ({} events)",
            r.node_id,
            r.state,
            r.term,
            if r.leader_id == 0 {
                "unknown".to_string()
            } else {
                r.leader_id.to_string()
            },
            r.last_log_index,
            r.committed_index,
            r.applied_index,
            r.applied_event_index
        );
        for m in &r.members {
            println!(
                "  member {} {} {} lag {}",
                m.id,
                m.raft_addr,
                if m.voter { "voter" } else { "learner" },
                m.lag_entries
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
