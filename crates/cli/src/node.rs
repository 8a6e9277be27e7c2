//! `kaon server`: one kaon node (Raft replica, API, and, while it leads,
//! the effect runtime), with an embedded Mesos emulator by default.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kaon_server::log::EventLog;

/// `kaon server` options. Each is also read from `KAON_<NAME>` (the flag's
/// name in capitals, `-` as `_`: `KAON_DATA_DIR`, `KAON_PEER` as a
/// comma-separated list). Precedence: the command line, then the
/// environment, then `--config`, then the default.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Address for the gRPC API.
    #[arg(long, default_value = "127.0.0.1:7070", env = "KAON_LISTEN")]
    pub listen: String,
    /// Data directory: the replicated event log (`raft/`) and the embedded
    /// emulator's task sandboxes (`mesos/`).
    #[arg(long, default_value = "kaon-data", env = "KAON_DATA_DIR")]
    pub data_dir: std::path::PathBuf,
    /// Address for Raft RPC between kaon nodes.
    #[arg(long, default_value = "127.0.0.1:7071", env = "KAON_RAFT_LISTEN")]
    pub raft_listen: std::net::SocketAddr,
    /// This node's id in the cluster.
    #[arg(long, default_value_t = 1, env = "KAON_NODE_ID")]
    pub node_id: u64,
    /// Other members, `ID=HOST:PORT` of their Raft address (repeatable). A
    /// fresh cluster is formed from this node and its peers.
    #[arg(long = "peer", env = "KAON_PEER", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Mesos master URL; without it an embedded Mesos emulator is started.
    #[arg(long, env = "KAON_MESOS_MASTER")]
    pub mesos_master: Option<String>,
    /// The CA certificate (PEM) an `https://` Mesos master's certificate
    /// is verified against (required for one).
    #[arg(long, value_name = "FILE", env = "KAON_MESOS_CA")]
    pub mesos_ca: Option<std::path::PathBuf>,
    /// The framework's principal for a Mesos master that authenticates
    /// frameworks (HTTP Basic; `--authenticate_http_frameworks`).
    #[arg(long, env = "KAON_MESOS_PRINCIPAL", requires = "mesos_secret_file")]
    pub mesos_principal: Option<String>,
    /// A file holding the principal's secret (read at start; never on a
    /// command line).
    #[arg(
        long,
        value_name = "FILE",
        env = "KAON_MESOS_SECRET_FILE",
        requires = "mesos_principal"
    )]
    pub mesos_secret_file: Option<std::path::PathBuf>,
    /// Framework name shown by Mesos.
    #[arg(long, default_value = "kaon", env = "KAON_FRAMEWORK_NAME")]
    pub framework_name: String,
    /// Mesos role kaon registers in.
    #[arg(long, default_value = "*", env = "KAON_ROLE")]
    pub role: String,
    /// Seconds Mesos keeps kaon's tasks running while no leader is subscribed.
    #[arg(long, default_value_t = kaon_mesos::driver::FAILOVER_TIMEOUT_DEFAULT_SECS, env = "KAON_FAILOVER_TIMEOUT")]
    pub failover_timeout: f64,
    /// Do not form a cluster: wait to be added to one (`kaon cluster
    /// add-node` on a member) or formed by `kaon cluster init`.
    #[arg(long, env = "KAON_JOIN")]
    pub join: bool,
    /// A TOML file with any of these options, named as the flags without
    /// dashes (`node-id = 2`, `peer = ["1=10.0.0.1:7071"]`, `join = true`);
    /// flags given on the command line win.
    #[arg(long, value_name = "FILE", env = "KAON_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Raft leader heartbeat interval, ms.
    #[arg(long, default_value_t = 40, env = "KAON_HEARTBEAT_MS")]
    pub heartbeat_ms: u64,
    /// Raft election timeout range `MIN-MAX`, ms: a follower that hears no
    /// leader for a random time in this range starts an election (the
    /// leader's lease is MAX). Lower fails over faster; too low for the
    /// machine's scheduling delays causes needless elections.
    #[arg(long, default_value = "120-240", value_parser = parse_range, env = "KAON_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: (u64, u64),
    /// Build a snapshot every this many Raft log entries.
    #[arg(long, default_value_t = 10_000, env = "KAON_SNAPSHOT_EVERY_ENTRIES")]
    pub snapshot_every_entries: u64,
    /// Raft log entries kept behind a snapshot (for followers slightly
    /// behind; the event archive keeps all history regardless).
    #[arg(long, default_value_t = 1_000, env = "KAON_KEEP_LOG_ENTRIES")]
    pub keep_log_entries: u64,
    /// The API address other nodes and clients use to reach this node
    /// (default: the address it listens on; set it when listening on
    /// 0.0.0.0).
    #[arg(long, env = "KAON_ADVERTISE_API")]
    pub advertise_api: Option<String>,
    /// The Raft address (`HOST:PORT`, a name is fine) other nodes dial for
    /// this node; it is recorded in the cluster's membership when this node
    /// forms the cluster (default: `--raft-listen`; required when that is a
    /// wildcard such as 0.0.0.0).
    #[arg(long, env = "KAON_ADVERTISE_RAFT")]
    pub advertise_raft: Option<String>,
    /// Address for the admin HTTP port: `GET /healthz` (the process is
    /// alive), `GET /readyz` (it can serve linearizable reads and
    /// writes; 503 with the reason otherwise) and `GET /metrics`
    /// (Prometheus text format; docs/metrics.md). Off unless given.
    #[arg(long, env = "KAON_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,
    /// How long `cluster add-node` waits for a new node to catch up as a
    /// learner before it fails (the node then stays a learner), ms.
    #[arg(long, default_value_t = 10_000, env = "KAON_CATCH_UP_TIMEOUT_MS")]
    pub catch_up_timeout_ms: u64,
    /// A peer is reachable when the leader heard from it within this, ms:
    /// membership changes need a reachable majority of voters, and a leader
    /// that has not heard from a quorum within it is not ready (health
    /// NOT_SERVING, `/readyz` 503).
    #[arg(long, default_value_t = 1_000, env = "KAON_CONTACT_MS_MAX")]
    pub contact_ms_max: u64,
    /// A running step whose executor sent nothing (heartbeat, progress,
    /// status) for this long is killed and retried as lost (platform
    /// budget), ms; 0: never. kaon's executor heartbeats every 10 s.
    #[arg(long, default_value_t = 60_000, env = "KAON_EXECUTOR_SILENCE_MS_MAX")]
    pub executor_silence_ms_max: u64,
    /// kaon runs one executor per agent for many steps; one with no step
    /// for this long exits, ms (0: with its last step, one executor per
    /// step as before).
    #[arg(long, default_value_t = 60_000, env = "KAON_EXECUTOR_IDLE_MS")]
    pub executor_idle_ms: u64,
    /// How long a finished run stays in the live state (API, UI, memory,
    /// snapshots) after it ended; the leader then retires it. Its events
    /// stay in the archive (`kaon audit`, `kaon cluster backup`). A
    /// duration such as `7d`, `12h`, `30m`; `0` keeps every run forever.
    #[arg(long, default_value = "7d", value_parser = parse_retention, env = "KAON_RUN_RETENTION")]
    pub run_retention: std::time::Duration,
    /// The newest kaon event schema this node says it applies (default:
    /// all this kaon knows). The leader writes an event kind only when
    /// every voter applies it, so pinning this lower on upgraded nodes
    /// keeps their log readable by an older kaon (a staged upgrade that
    /// may be rolled back); docs/upgrades.md.
    #[arg(long, default_value_t = kaon_core::events::EVENT_SCHEMA, value_parser = clap::value_parser!(u32).range(1..=kaon_core::events::EVENT_SCHEMA as i64), env = "KAON_EVENT_SCHEMA_MAX")]
    pub event_schema_max: u32,
    /// Export tracing spans over OTLP/gRPC to this collector (e.g.
    /// `http://127.0.0.1:4317`): one trace per run from the API call
    /// through decide, the Raft append and the Mesos launch, with the
    /// workflow, run, step and attempt ids. Off unless given.
    #[arg(long, env = "KAON_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The directory on every agent holding the secrets steps name
    /// (`env: {PW: {secret: db-password}}`, `secrets: [api-key]`), one file
    /// per secret named as the secret. Executors read a step's secrets
    /// from it when the step starts; kaon never stores or logs a value.
    /// SECURITY.md.
    #[arg(long, value_name = "DIR", env = "KAON_SECRETS_DIR")]
    pub secrets_dir: Option<std::path::PathBuf>,
    /// The cluster CA's certificate (PEM). With `--tls-cert` and
    /// `--tls-key`, the API and Raft ports speak TLS only, Raft mutually:
    /// a peer needs a certificate this CA signed to join, vote or append.
    /// The files are re-read when they change. `kaon tls init` makes a CA
    /// and node certificates. SECURITY.md.
    #[arg(long, value_name = "FILE", env = "KAON_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<std::path::PathBuf>,
    /// This node's certificate (PEM, signed by `--tls-ca`; it must name
    /// the addresses peers and clients dial).
    #[arg(long, value_name = "FILE", env = "KAON_TLS_CERT", requires_all = ["tls_ca", "tls_key"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, value_name = "FILE", env = "KAON_TLS_KEY", requires_all = ["tls_ca", "tls_cert"])]
    pub tls_key: Option<std::path::PathBuf>,
    /// The cluster's signing key (`kaon audit keygen`; the same file on
    /// every node): the leader signs the hash chain's head with it every
    /// `--sign-every`, recorded in the log, so an auditor with the public
    /// key can prove a copy of the log is the one that was signed (`kaon
    /// audit verify --public-key`). A new key file is a rotation, recorded
    /// by the next signature.
    #[arg(long, value_name = "FILE", env = "KAON_SIGNING_KEY")]
    pub signing_key: Option<std::path::PathBuf>,
    /// How often the leader signs the chain head while events arrive
    /// (with `--signing-key`).
    #[arg(long, default_value = "1m", value_parser = parse_retention, env = "KAON_SIGN_EVERY")]
    pub sign_every: std::time::Duration,
    /// Do not read the whole event archive back at start (its checksums,
    /// indexes and hash chain are checked by default, about a second per
    /// million events, so a corrupted or altered record stops the node
    /// before it serves).
    #[arg(long, env = "KAON_SKIP_VERIFY_AT_START")]
    pub skip_verify_at_start: bool,
    /// A tokens file (YAML; `kaon token new` makes entries): every API
    /// call then needs a bearer token it lists, and the token's role
    /// (viewer, submitter, operator, admin) decides what the caller may
    /// do; the file is re-read when it changes. Without it every caller
    /// may do everything (the single-machine default). SECURITY.md.
    #[arg(long, value_name = "FILE", env = "KAON_AUTH_FILE")]
    pub auth_file: Option<std::path::PathBuf>,
    /// Log format on stderr: `text` (colours only on a terminal) or `json`
    /// (one object per line, with the span fields: node, term, run, step).
    /// Levels from `RUST_LOG` (default `info,openraft=error`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"], env = "KAON_LOG_FORMAT")]
    pub log_format: String,
}

/// Parses `--run-retention`: a humantime duration (`7d`, `90m`) or `0`.
fn parse_retention(s: &str) -> Result<std::time::Duration, String> {
    if s.trim() == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    humantime::parse_duration(s.trim()).map_err(|e| {
        format!("{e}: --run-retention is a duration such as 7d, 12h or 30m (0: keep forever)")
    })
}

/// The default log filter: kaon at info; openraft only at error (its info
/// lines dump whole Raft states, and a peer that is down makes it warn on
/// every heartbeat; kaon reports leadership and health itself).
pub const LOG_FILTER_DEFAULT: &str = "info,openraft=error";

/// Sets up stderr logging in `format` (`text` or `json`).
pub fn init_logging(format: &str) {
    init_tracing(format, None);
}

/// Sets up stderr logging in `format` (`text` or `json`) and, with an
/// `otlp` endpoint, exports the spans (API call, decide, Raft append, Mesos
/// launch and kill, with workflow, run, step and attempt ids) over OTLP/gRPC.
/// Must run inside the tokio runtime that lives as long as the process
/// (the exporter's channel runs on it). Returns the provider to flush at
/// exit.
pub fn init_tracing(
    format: &str,
    otlp: Option<(&str, u64)>,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry::trace::TracerProvider as _;
    use std::io::IsTerminal;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| LOG_FILTER_DEFAULT.into());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if format == "json" {
        fmt.json().with_current_span(true).boxed()
    } else {
        fmt.with_ansi(std::io::stderr().is_terminal()).boxed()
    };
    let provider = otlp.and_then(|(endpoint, node)| match otlp_provider(endpoint, node) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("kaon: --otlp-endpoint {endpoint}: {e:#}; spans are not exported");
            None
        }
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("kaon")));
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    provider
}

/// An OTLP/gRPC span pipeline to `endpoint` (batched; the service is
/// `kaon`, the instance `node-N`).
fn otlp_provider(
    endpoint: &str,
    node: u64,
) -> anyhow::Result<opentelemetry_sdk::trace::SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .context("building the OTLP span exporter")?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("kaon")
        .with_attributes([
            opentelemetry::KeyValue::new("service.instance.id", format!("node-{node}")),
            opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Runs a single-node kaon server until Ctrl-C / SIGTERM.
pub fn server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let advertise_raft = raft_advertise(args.raft_listen, &args.advertise_raft, args.join)?;
    let rt = tokio::runtime::Runtime::new()?;
    let tracer = {
        let _in_rt = rt.enter();
        init_tracing(
            &args.log_format,
            args.otlp_endpoint.as_deref().map(|e| (e, args.node_id)),
        )
    };
    let exe =
        std::env::current_exe().context("locating the kaon binary (it is also the executor)")?;
    // Every path absolute from the start (issue 9, A): the embedded
    // emulator's executors run inside their sandboxes, and logs and errors
    // should name the place a user can find.
    let mut args = args;
    args.data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("resolving --data-dir {}", args.data_dir.display()))?;
    rt.block_on(async move {
        // The API port first (issue 9 G): a port in use must stop the node
        // before it starts an emulator or forms or joins a cluster.
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {} (--listen)", args.listen))?;
        let addr = listener.local_addr()?;
        let admin = match &args.admin_listen {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("listening on {a} (--admin-listen)"))?,
            ),
            None => None,
        };
        // A node told to use TLS never starts in plain text: unreadable or
        // mismatched certificate files stop it here.
        let tls = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
            (Some(ca), Some(cert), Some(key)) => {
                let t = kaon_log::tls::Tls::load(kaon_log::tls::TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })?;
                t.spawn_reloader();
                tracing::info!(cert = %cert.display(), "TLS on: the API and Raft ports speak TLS only (Raft mutually)");
                Some(t)
            }
            _ => None,
        };
        // An https:// Mesos master is verified against --mesos-ca.
        let mesos_https = match (&args.mesos_master, &args.mesos_ca) {
            (Some(m), Some(ca)) if m.starts_with("https://") => Some(
                kaon_server::mesos_tls::MesosHttps::new(
                    &std::fs::read(ca).with_context(|| format!("--mesos-ca {}", ca.display()))?,
                )
                .with_context(|| format!("--mesos-ca {}", ca.display()))?,
            ),
            (Some(m), None) if m.starts_with("https://") => anyhow::bail!(
                "--mesos-master {m} is https: give the CA that signed its certificate with --mesos-ca"
            ),
            _ => None,
        };
        // A node told to authenticate never starts open: a missing or
        // malformed tokens file stops it here.
        let auth = match &args.auth_file {
            Some(f) => {
                let a = std::sync::Arc::new(
                    kaon_server::auth::Authenticator::load(f).context("--auth-file")?,
                );
                a.spawn_reloader();
                Some(a)
            }
            None => {
                // Quiet on loopback (the single-machine default); a
                // warning where others can reach the port.
                if addr.ip().is_loopback() {
                    tracing::info!("authentication off (no --auth-file)");
                } else {
                    tracing::warn!(
                        "authentication off (no --auth-file): anyone who reaches {addr} may do anything"
                    );
                }
                None
            }
        };
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating data directory {}", args.data_dir.display()))?;
        let (master, emulator) = match args.mesos_master {
            Some(url) => (url, None),
            None => {
                let emu =
                    kaon_mesos_emulator::Emulator::start(kaon_mesos_emulator::EmulatorConfig {
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
        node_config.catch_up_timeout_ms = args.catch_up_timeout_ms;
        node_config.contact_ms_max = args.contact_ms_max;
        node_config.event_schema = args.event_schema_max;
        if let Some(tls) = &tls {
            node_config.transport = kaon_log::Transport::GrpcTls(tls.clone());
        }
        for p in &args.peers {
            let (id, addr) = p
                .split_once('=')
                .with_context(|| format!("--peer {p:?}: expected ID=HOST:PORT"))?;
            let id: u64 = id
                .parse()
                .with_context(|| format!("--peer {p:?}: the id must be a number"))?;
            node_config.peers.insert(id, addr.to_string());
        }
        // A corrupted or altered record stops the node before it serves
        // or votes (issue 12): every archived event is read back, its
        // checksum and index checked, the hash chain recomputed and
        // compared with the applied head and with the heads the log's
        // signatures recorded.
        let raft_dir = args.data_dir.join("raft");
        if !args.skip_verify_at_start && raft_dir.join("state.redb").exists() {
            let started = std::time::Instant::now();
            let rebuild = format!(
                "This node will not serve it. Rebuild it from its peers: `kaon cluster \
                 rebuild-node --data-dir {}` (SECURITY.md)",
                args.data_dir.display()
            );
            let store = match kaon_log::StateMachineStore::open(&raft_dir) {
                Ok(s) => s,
                Err(e) if e.is_in_use() => {
                    anyhow::bail!("{} is in use by another kaon server", raft_dir.display())
                }
                Err(e) => anyhow::bail!(
                    "the event archive in {} cannot be read: {e}. {rebuild}",
                    raft_dir.display()
                ),
            };
            match store.verify_chain() {
                Ok(r) => tracing::info!(
                    events = r.events,
                    ms = started.elapsed().as_millis() as u64,
                    "event archive verified"
                ),
                Err(e) => anyhow::bail!(
                    "the event archive in {} is corrupted or was altered: {e}. {rebuild}",
                    raft_dir.display()
                ),
            }
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
        // No leader yet is no reason to exit (issue 9, B): a survivor of a
        // lost majority must stay up, say NOT_SERVING and answer `cluster
        // status`, and a node whose peers start later must wait for them.
        if node.is_initialized().await
            && node
                .wait_for_leader(Duration::from_secs(10))
                .await
                .is_none()
        {
            tracing::warn!(
                node = args.node_id,
                "no Raft leader within 10 s: serving anyway, health NOT_SERVING until a \
                 quorum of voters is reachable (`kaon cluster status`; if a majority is lost \
                 for good, `kaon cluster recover`)"
            );
        }
        let log = Arc::new(kaon_server::log::RaftLog::new(node));
        let metrics = Arc::new(kaon_server::metrics::Metrics::new());
        metrics.follow(log.clone());
        let mut config =
            kaon_server::runtime::RuntimeConfig::new(master.clone(), exe.display().to_string());
        config.framework_name = args.framework_name;
        config.role = args.role;
        config.failover_timeout_secs = args.failover_timeout;
        config.executor_silence_ms_max =
            (args.executor_silence_ms_max > 0).then_some(args.executor_silence_ms_max as i64);
        config.executor_idle_ms = args.executor_idle_ms.min(i64::MAX as u64) as i64;
        if let Some(https) = &mesos_https {
            config.mesos_transport = kaon_mesos::transport::MesosTransport::custom(https.clone());
        }
        if let (Some(p), Some(f)) = (&args.mesos_principal, &args.mesos_secret_file) {
            let secret = std::fs::read_to_string(f)
                .with_context(|| format!("--mesos-secret-file {}", f.display()))?;
            config.mesos_credential = Some((p.clone(), secret.trim_end().to_string()));
        }
        if let Some(k) = &args.signing_key {
            let key = kaon_server::signing::SigningKey::load(k)?;
            tracing::info!(public_key = %key.public_hex(), "signing the chain head");
            config.signing_key = Some(Arc::new(key));
            config.limits.sign_every_ms =
                (args.sign_every.as_millis().min(i64::MAX as u128) as i64).max(1);
        }
        if let Some(d) = &args.secrets_dir {
            config.secrets_dir = std::path::absolute(d)
                .with_context(|| format!("resolving --secrets-dir {}", d.display()))?
                .display()
                .to_string();
        }
        config.limits.run_retention_ms =
            args.run_retention.as_millis().min(i64::MAX as u128) as i64;
        config.api_addr = Some(args.advertise_api.clone().unwrap_or(addr.to_string()));
        config.metrics = Some(metrics.clone());
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
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let admin_addr = match admin {
            Some(listener) => {
                let at = listener.local_addr()?;
                let mut stop = stop_rx.clone();
                let log = log.clone();
                let metrics = metrics.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let done = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let clock = Arc::new(kaon_log::SystemClock);
                    // The UI reads through this node's own API, on loopback
                    // when it listens on every interface.
                    let api = match addr.ip() {
                        ip if ip.is_unspecified() => format!("http://127.0.0.1:{}", addr.port()),
                        _ => format!("http://{addr}"),
                    };
                    let ui = match kaon_server::ui::Ui::new(&api, tls.clone()) {
                        Ok(ui) => Some(ui),
                        Err(e) => {
                            tracing::error!(error = %e, "the web UI is off");
                            None
                        }
                    };
                    if let Err(e) =
                        kaon_server::admin::serve(log, metrics, clock, ui, listener, done).await
                    {
                        tracing::error!(error = %e, "admin HTTP server stopped");
                    }
                });
                format!(", admin HTTP on {at}")
            }
            None => String::new(),
        };
        println!(
            "kaon server listening on {addr} (Mesos master {master}, data in {}{admin_addr})",
            args.data_dir.display()
        );
        let shutdown = async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            let _ = stop_tx.send(true);
        };
        let service = kaon_server::grpc::ServiceConfig {
            peer_channel: None,
            mesos_master: Some(master.clone()),
            local_sandboxes: emulator.as_ref().map(|_| args.data_dir.join("mesos")),
            auth: auth.clone(),
            tls: tls.clone(),
            mesos_https: mesos_https.clone(),
        };
        kaon_server::grpc::serve(log, runtime, service, listener, shutdown).await?;
        if let Some(emu) = emulator {
            emu.shutdown().await;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    if let Some(t) = tracer {
        // The last spans: flushed on a thread of its own (the exporter's
        // channel still has the runtime, which is dropped after this).
        let _in_rt = rt.enter();
        let _ = std::thread::spawn(move || t.shutdown()).join();
    }
    Ok(ExitCode::SUCCESS)
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

/// The environment variable of a server option: `data-dir` ->
/// `KAON_DATA_DIR`.
pub fn env_name(key: &str) -> String {
    format!("KAON_{}", key.to_uppercase().replace('-', "_"))
}

/// Expands `kaon server --config FILE`: every `key = value` of the TOML
/// file becomes `--key value` unless the command line already has
/// `--key` (arrays repeat the flag; `true` is a bare switch). Unknown keys
/// are refused with the file and the key named, so a typo does not pass
/// silently. `known` holds the server's long flag names.
pub fn expand_config(
    argv: Vec<std::ffi::OsString>,
    known: &[String],
) -> anyhow::Result<Vec<std::ffi::OsString>> {
    let args: Vec<String> = argv
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.get(1).map(String::as_str) != Some("server") {
        return Ok(argv);
    }
    let mut path = None;
    for (i, a) in args.iter().enumerate() {
        if a == "--config" {
            path = args.get(i + 1).cloned();
        } else if let Some(p) = a.strip_prefix("--config=") {
            path = Some(p.to_string());
        }
    }
    // `KAON_CONFIG` names the file as `--config` does (the flag wins).
    let path = path
        .or_else(|| std::env::var_os(env_name("config")).map(|p| p.to_string_lossy().into_owned()));
    let Some(path) = path else { return Ok(argv) };
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading --config {path}"))?;
    let table: toml::Table = text
        .parse()
        .with_context(|| format!("--config {path}: not valid TOML"))?;
    let given = |k: &str| {
        args.iter()
            .any(|a| a == &format!("--{k}") || a.starts_with(&format!("--{k}=")))
    };
    let mut out = argv;
    for (key, value) in table {
        if !known.contains(&key) || key == "config" {
            let hint = known
                .iter()
                .filter(|k| strsim_close(k, &key))
                .map(|k| format!(" (did you mean {k:?}?)"))
                .next()
                .unwrap_or_default();
            anyhow::bail!("--config {path}: unknown option {key:?}{hint}");
        }
        // The command line wins over the file, and so does the
        // environment (`KAON_<KEY>`, see `ServerArgs`).
        if given(&key) || std::env::var_os(env_name(&key)).is_some() {
            continue;
        }
        let flag = format!("--{key}");
        let scalar = |v: &toml::Value| -> anyhow::Result<String> {
            Ok(match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                other => anyhow::bail!("--config {path}: {key}: unsupported value {other:?}"),
            })
        };
        match &value {
            toml::Value::Boolean(true) => out.push(flag.into()),
            toml::Value::Boolean(false) => {}
            toml::Value::Array(items) => {
                for v in items {
                    out.push(flag.clone().into());
                    out.push(scalar(v)?.into());
                }
            }
            v => {
                out.push(flag.into());
                out.push(scalar(v)?.into());
            }
        }
    }
    Ok(out)
}

/// Close enough to suggest (one edit, or a `_` for a `-`).
fn strsim_close(a: &str, b: &str) -> bool {
    let b = b.replace('_', "-");
    if a == b {
        return true;
    }
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    let (mut i, mut j, mut edits) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        if a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        edits += 1;
        match a.len().cmp(&b.len()) {
            std::cmp::Ordering::Greater => i += 1,
            std::cmp::Ordering::Less => j += 1,
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    edits + (a.len() - i) + (b.len() - j) <= 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<String> {
        ["node-id", "peer", "join", "listen", "data-dir"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn config_file_fills_in_flags_the_command_line_did_not_give() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kaon.toml");
        std::fs::write(
            &f,
            "node-id = 2\npeer = [\"1=a:1\", \"3=c:3\"]\njoin = true\nlisten = \"0.0.0.0:7070\"\n",
        )
        .unwrap();
        let argv = [
            "kaon",
            "server",
            "--config",
            f.to_str().unwrap(),
            "--node-id",
            "5",
        ]
        .map(std::ffi::OsString::from)
        .to_vec();
        let out: Vec<String> = expand_config(argv, &known())
            .unwrap()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let tail = out[6..].join(" ");
        assert!(!tail.contains("--node-id"), "the flag wins: {tail}");
        assert!(tail.contains("--peer 1=a:1 --peer 3=c:3"), "{tail}");
        assert!(tail.contains("--join"), "{tail}");
        assert!(tail.contains("--listen 0.0.0.0:7070"), "{tail}");
    }

    #[test]
    fn config_file_errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kaon.toml");
        std::fs::write(&f, "node_idd = 2\n").unwrap();
        let argv = ["kaon", "server", "--config", f.to_str().unwrap()]
            .map(std::ffi::OsString::from)
            .to_vec();
        let e = expand_config(argv.clone(), &known())
            .unwrap_err()
            .to_string();
        assert!(e.contains("kaon.toml") && e.contains("\"node_idd\""), "{e}");
        std::fs::write(&f, "node-id = \n").unwrap();
        let e = format!("{:#}", expand_config(argv, &known()).unwrap_err());
        assert!(e.contains("not valid TOML"), "{e}");
    }

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
