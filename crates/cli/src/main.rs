//! `kaon`: the command-line front end.
//!
//! `kaon validate` checks specs offline; `kaon run-local` runs one workflow
//! on this machine; `kaon server` runs a kaon node (one-node cluster by
//! default) with its gRPC API; `kaon submit`, `kaon runs`,
//! `kaon run show|watch|cancel|retry|logs`, `kaon workflow register|list`
//! and `kaon cluster ...` are its clients; `kaon audit` reads a node's log;
//! `kaon executor` is kaon's Mesos executor; `kaon mesos-emulator` runs the
//! Mesos emulator.

mod audit;
mod backup;
mod client;
mod node;
mod whatif;

/// mimalloc: the state machine allocates many small objects (replay speed,
/// see BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kaon_core::Limits;

#[derive(Parser)]
#[command(
    name = "kaon",
    version,
    about = "kaon: a workflow orchestrator for machine-learning pipelines"
)]
struct Cli {
    /// kaon server address(es) for client commands, comma-separated: any
    /// node of a cluster will do; calls move on to another on failure.
    #[arg(
        long,
        global = true,
        env = "KAON_SERVER",
        default_value = "http://127.0.0.1:7070"
    )]
    server: String,
    /// Seconds a client call may take, retries across leader changes
    /// included.
    #[arg(long, global = true, default_value_t = 30.0)]
    timeout: f64,
    /// Read from the node asked without confirming with the leader (faster,
    /// possibly stale; default: linearizable reads).
    #[arg(long, global = true)]
    stale: bool,
    /// Output format of client commands.
    #[arg(long = "output", global = true, value_parser = ["text", "json"], default_value = "text")]
    output_format: String,
    /// Bearer token for a cluster that authenticates callers (servers
    /// started with `--auth-file`); prefer the environment variable, which
    /// other users cannot read in the process list.
    #[arg(long, global = true, env = "KAON_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The cluster CA's certificate (PEM) to verify `https://` servers.
    #[arg(long, global = true, value_name = "FILE", env = "KAON_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM, signed by the cluster CA) to present
    /// instead of a token: its common name must be listed under
    /// `certificates` in the servers' tokens file.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "KAON_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "KAON_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum TlsCmd {
    /// Make a cluster CA and a certificate for each node in DIR: `ca.pem`
    /// (give it to every node and client), `ca.key` (keep it offline),
    /// `node-N.pem` and `node-N.key`. Each node certificate names
    /// localhost, 127.0.0.1, ::1, `node-N` and every `--host`.
    Init {
        /// Directory to write to (created; an existing CA is never
        /// overwritten).
        dir: std::path::PathBuf,
        /// How many node certificates.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// A further name or address every node certificate covers
        /// (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Days the certificates are valid.
        #[arg(long, default_value_t = 825, allow_negative_numbers = true)]
        days: i64,
    },
    /// Sign one more certificate with DIR's CA: `NAME.pem` and `NAME.key`
    /// (a new node, or a rotation before the old one expires).
    Cert {
        /// The directory holding `ca.pem` and `ca.key`.
        dir: std::path::PathBuf,
        /// File name and common name of the certificate.
        name: String,
        /// A name or address it covers (repeatable; localhost, 127.0.0.1
        /// and ::1 always).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Days it is valid (negative: already expired, for tests).
        #[arg(long, default_value_t = 825, allow_negative_numbers = true)]
        days: i64,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Make a new random token for a principal: prints the token (give it
    /// to the principal; kaon keeps no copy) and the line to add under
    /// `tokens:` in the servers' `--auth-file`.
    New {
        /// Who the token is for (recorded in the events it causes).
        #[arg(long)]
        principal: String,
        /// viewer, submitter, operator or admin.
        #[arg(long)]
        role: String,
    },
    /// Print the SHA-256 a tokens file stores for a token read from
    /// standard input.
    Hash,
}

#[derive(Subcommand)]
enum RunCmd {
    /// Show a run and its steps.
    Show {
        /// Run id.
        id: u64,
    },
    /// Follow a run live until it ends (exit 0 if it succeeded).
    Watch {
        /// Run id.
        id: u64,
    },
    /// Cancel a run (its exit handler still runs).
    Cancel {
        /// Run id.
        id: u64,
        /// Why (recorded in the log).
        #[arg(long, default_value = "cancelled from the CLI")]
        reason: String,
    },
    /// Start a new run of a failed or cancelled run: same workflow version
    /// and parameters; steps that succeeded are reused, not run again (the
    /// exit handler runs again).
    Retry {
        /// Run id.
        id: u64,
        /// Idempotency key: a retried request with it returns the same run.
        #[arg(long)]
        key: Option<String>,
        /// Follow the new run until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// Print a step's stdout (or stderr) from its Mesos sandbox.
    Logs {
        /// Run id.
        id: u64,
        /// Step path, as `kaon run show` prints it (e.g. `train#2/fit[1]`).
        step: String,
        /// Attempt number (default: the latest).
        #[arg(long, default_value_t = 0)]
        attempt: u32,
        /// Print stderr instead of stdout.
        #[arg(long)]
        stderr: bool,
        /// Only the last N lines (looked for in the log's final 1 MiB).
        #[arg(long, value_name = "N")]
        tail: Option<u32>,
        /// Keep printing as the step writes, until the attempt ends.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Members, leader, term, commit and applied indexes, lag per member.
    Status,
    /// Form a cluster from nodes started with `kaon server --join`.
    Init {
        /// Member `ID=HOST:PORT` (Raft address), the node asked included
        /// (repeatable).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
    },
    /// Add a node (started with `--join`): it catches up as a learner
    /// (within the server's catch-up timeout, 10 s by default), then
    /// becomes a voter unless `--learner`. A node that does not catch up
    /// stays a learner (no quorum is lost) and the command fails saying so;
    /// a promotion that would leave fewer than a quorum of reachable voters
    /// is refused.
    AddNode {
        /// The new node's id.
        id: u64,
        /// Its Raft address (HOST:PORT).
        raft_addr: String,
        /// Keep it a non-voting learner.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// Node id.
        id: u64,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// Node id.
        id: u64,
    },
    /// Build a snapshot on the node asked (compacting its log behind it).
    Snapshot,
    /// Back up the cluster while it runs: every event up to an index the
    /// cluster committed (read linearizably, the same stream `kaon audit`
    /// reads), checked against the chain head the cluster reports, written
    /// with its state digest, members and a SHA-256 checksum to FILE
    /// (atomically: FILE.tmp, then renamed).
    Backup {
        /// Where to write the backup.
        file: std::path::PathBuf,
    },
    /// Start a new cluster from a backup: check FILE (checksum, format,
    /// the chain head and state digest its events rebuild) and write a
    /// one-node cluster's data directory holding every backed-up event.
    /// Start `kaon server` on it; it elects itself and reconciles every
    /// run that was live with Mesos. Add nodes with `add-node`.
    Restore {
        /// The backup file.
        file: std::path::PathBuf,
        /// The new node's data directory (must hold no kaon log).
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// The new node's id.
        #[arg(long, default_value_t = 1)]
        node_id: u64,
        /// The address other nodes will reach its Raft port at (its
        /// `--raft-listen`, or `--advertise-raft`).
        #[arg(long, default_value = "127.0.0.1:7071")]
        raft_addr: String,
    },
    /// Offline recovery of a cluster that lost its majority for good: on a
    /// STOPPED survivor, make the given members the only voters (usually
    /// just this node), then start it again; it elects itself and every
    /// event it holds is kept. Use the survivor with the highest last log
    /// index (`--dry-run` prints it); wipe the other survivors and add them
    /// back with `add-node`. See README, "Recovering a cluster".
    /// Rebuild a stopped node whose event archive is corrupted from its
    /// peers, in one command run on its host: checks the archive (a sound
    /// one is left alone unless `--force`), takes the node out of the
    /// cluster (`--server` names the others), moves `DATA_DIR/raft` aside
    /// (kept for inspection), then waits for the node to be started again
    /// with `--join` and adds it back: it catches up from the leader and
    /// becomes a voter. (A member must not come back with less than it
    /// acknowledged: Raft counts on it. Hence out, then in.)
    RebuildNode {
        /// The stopped node's data directory.
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// The node's id.
        #[arg(long)]
        node_id: u64,
        /// The node's Raft address, as the cluster knows it.
        #[arg(long)]
        raft_addr: String,
        /// Rebuild even if the archive verifies.
        #[arg(long)]
        force: bool,
        /// How long to wait for the node to be started again, seconds.
        #[arg(long, default_value_t = 600.0)]
        wait: f64,
    },
    Recover {
        /// The stopped node's data directory.
        #[arg(long, default_value = "kaon-data")]
        data_dir: std::path::PathBuf,
        /// This node's id (needed only when several members are given).
        #[arg(long)]
        node_id: Option<u64>,
        /// A member of the recovered cluster, `ID=HOST:PORT` (Raft address),
        /// this node included (repeatable).
        #[arg(long = "member", required = true)]
        members: Vec<String>,
        /// Print what the log holds and what would be written; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the SHA-256 hash chain over every event (from the first),
    /// replaying them, and check it against the head the node recorded.
    /// Live from `--server` (streamed; linearizable unless `--stale`), or
    /// offline from a stopped node's `--data-dir`.
    Verify {
        /// A stopped node's data directory (default: ask the server).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Checkpoints an auditor kept, checked too: one per line, `INDEX
        /// CHAIN_HEAD [STATE_DIGEST]` or a JSON object as kaon prints them
        /// (`kaon --output json cluster snapshot`, `audit state`, a
        /// backup's header line).
        #[arg(long)]
        digests: Option<std::path::PathBuf>,
        /// The cluster's public signing key (a `.pub` file from `kaon
        /// audit keygen`; repeat for the keys before and after a rotation):
        /// every signed chain head must verify and match the recomputed
        /// chain, and at least one must be signed by a given key.
        #[arg(long = "public-key", value_name = "FILE")]
        public_keys: Vec<std::path::PathBuf>,
    },
    /// Make a signing key for the cluster: DIR/signing.key (give it to
    /// every node: `kaon server --signing-key`) and DIR/signing.pub (give
    /// it to auditors: `kaon audit verify --public-key`).
    Keygen {
        /// Directory to write to.
        dir: std::path::PathBuf,
    },
    /// Rebuild the state as of an event index from the events and print
    /// its digest and runs (live, or offline with `--data-dir`).
    Replay {
        /// A stopped node's data directory (default: ask the server).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Last event index to apply (default: all).
        #[arg(long)]
        until: Option<u64>,
    },
    /// Write every event as JSON lines on stdout (protobuf JSON mapping of
    /// `kaon.events.v1.Event`), live or offline with `--data-dir`.
    Export {
        /// A stopped node's data directory (default: ask the server).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// First event index (default: 1).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last event index (default: the end).
        #[arg(long)]
        to: Option<u64>,
    },
    /// What the scheduler knew after event I: runs, steps and attempts,
    /// launch intents Mesos had not yet confirmed, and armed timers
    /// (retries, step and workflow timeouts). Live, or offline with
    /// `--data-dir`; `--json` for one object of facts.
    State {
        /// A stopped node's data directory (default: ask the server).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Event index (default: the end of the log).
        #[arg(long)]
        at: Option<u64>,
        /// Only this run.
        #[arg(long)]
        run: Option<u64>,
    },
    /// What changed between the state after event A and after event B:
    /// facts added (+), removed (-) and changed (~), and the kinds of
    /// events in between.
    Diff {
        /// A stopped node's data directory (default: ask the server).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Event index A (0: the empty state).
        #[arg(long)]
        from: u64,
        /// Event index B (default: the end of the log).
        #[arg(long)]
        to: Option<u64>,
        /// Only this run.
        #[arg(long)]
        run: Option<u64>,
    },
    /// Why kaon did what it did to a step: every launch, observation,
    /// retry, kill, skip and end recorded for it, with the time, the
    /// leader that recorded it, and the earlier events that led to it.
    Why {
        /// Run id.
        run: u64,
        /// Step path (`train`, `group/step`); a foreach's or loop's path
        /// also covers its elements and iterations.
        step: String,
        /// A stopped node's data directory (default: ask the server).
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum WorkflowCmd {
    /// Register a spec as a new version.
    Register {
        /// Spec file.
        file: String,
    },
    /// List registered workflows.
    List,
    /// What would this new definition have done? Replays the recorded task
    /// outcomes of past runs (the newest finished runs of its workflow, or
    /// those named) through it, without registering anything, and shows
    /// each run's outcome and every step it decides differently.
    WhatIf {
        /// The new spec file.
        file: String,
        /// A run to replay (repeatable; default: the newest finished runs).
        #[arg(long = "run")]
        runs: Vec<u64>,
        /// How many of the newest runs to look at when none is named.
        #[arg(long, default_value_t = whatif::LAST_RUNS_DEFAULT)]
        last: u32,
    },
}

#[derive(Subcommand)]
enum ScheduleCmd {
    /// List every workflow's cron schedules (paused or not, last fire).
    List,
    /// Pause a schedule: no fires until it is resumed (missed fires inside
    /// its catch-up window run on resume).
    Pause {
        /// Workflow name.
        workflow: String,
        /// Schedule index in the spec's `schedules:` (0-based, as `list` shows).
        #[arg(default_value_t = 0)]
        index: u32,
    },
    /// Resume a paused schedule.
    Resume {
        /// Workflow name.
        workflow: String,
        /// Schedule index (0-based, as `list` shows).
        #[arg(default_value_t = 0)]
        index: u32,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Check workflow specs offline: print every error (exit 1) or a summary (exit 0).
    Validate {
        /// Spec files (YAML or JSON); `-` reads standard input.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Run a kaon node (a one-node cluster with an embedded Mesos emulator
    /// by default).
    Server(Box<node::ServerArgs>),
    /// Submit a run of a spec file, or of a registered workflow.
    Submit {
        /// Spec file (`-`: standard input), or `NAME` / `NAME@VERSION` of a
        /// registered workflow (latest version without `@`).
        file: String,
        /// Parameter `NAME=VALUE` (VALUE is JSON if it parses, else text).
        #[arg(short = 'p', long = "param")]
        params: Vec<String>,
        /// Idempotency key: a retried submit with it returns the same run.
        #[arg(long)]
        key: Option<String>,
        /// Follow the run until it ends.
        #[arg(long)]
        watch: bool,
    },
    /// List runs, newest first.
    Runs {
        /// Only this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Only this status (running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many (the server caps a page at 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only runs older than this run id (the next page: the command
        /// prints the `--before` to use when there are more).
        #[arg(long, value_name = "RUN_ID")]
        before: Option<u64>,
    },
    /// One run: show, watch, cancel.
    #[command(subcommand)]
    Run(RunCmd),
    /// Workflow definitions: register, list.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// Cron schedules: list, pause, resume.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Audit a node's event log: verify the hash chain, replay to an index.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// API tokens: make one, hash one (SECURITY.md).
    #[command(subcommand)]
    Token(TokenCmd),
    /// TLS certificates: a cluster CA and node certificates (SECURITY.md).
    #[command(subcommand)]
    Tls(TlsCmd),
    /// The cluster: status, init, add-node, remove-node, transfer-leader,
    /// snapshot.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Run a workflow once on this machine and wait for it: an embedded Mesos
    /// emulator runs every step as a local process. Prints each step as it
    /// starts and ends; exits 0 if the run succeeded.
    RunLocal {
        /// Spec file (YAML or JSON).
        file: String,
        /// Parameter override `NAME=VALUE` (VALUE is JSON if it parses, else text).
        #[arg(short = 'p', long = "param")]
        params: Vec<String>,
        /// Folder for task sandboxes (default: a temporary folder).
        #[arg(long)]
        work_dir: Option<std::path::PathBuf>,
    },
    /// kaon's Mesos executor (started by a Mesos agent with the Mesos
    /// executor environment; not for interactive use).
    Executor,
    /// Run the Mesos 1.11 emulator (master + agents running local processes).
    MesosEmulator {
        /// Emulator options (`kaon mesos-emulator -- --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// The client's global flags (`--server`, `--timeout`, `--stale`,
/// `--output`, `--token`) mean nothing to the processes kaon starts (`server`,
/// `executor`, `run-local`): hidden from their `--help`
/// (issue 9 G), still accepted so scripts that pass them keep working.
fn without_client_flags(mut cmd: clap::Command) -> clap::Command {
    use clap::{Arg, ArgAction};
    // A subcommand's own argument of the same id stops clap from
    // propagating the global one into it (and so into its help).
    for sub in ["server", "executor", "run-local"] {
        cmd = cmd.mut_subcommand(sub, |s| {
            s.arg(Arg::new("server").long("server").num_args(1).hide(true))
                .arg(Arg::new("timeout").long("timeout").num_args(1).hide(true))
                .arg(
                    Arg::new("stale")
                        .long("stale")
                        .action(ArgAction::SetTrue)
                        .hide(true),
                )
                .arg(
                    Arg::new("output_format")
                        .long("output")
                        .num_args(1)
                        .hide(true),
                )
                .arg(Arg::new("token").long("token").num_args(1).hide(true))
        });
    }
    // `server` has a --tls-ca of its own (its CA for every port).
    for sub in ["executor", "run-local"] {
        cmd = cmd.mut_subcommand(sub, |s| {
            s.arg(Arg::new("tls_ca").long("tls-ca").num_args(1).hide(true))
                .arg(Arg::new("tls_cert").long("tls-cert").num_args(1).hide(true))
                .arg(Arg::new("tls_key").long("tls-key").num_args(1).hide(true))
        });
    }
    cmd
}

fn main() -> ExitCode {
    let cli = {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let known: Vec<String> = cmd
            .find_subcommand("server")
            .map(|s| {
                s.get_arguments()
                    .filter_map(|a| a.get_long().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        match node::expand_config(std::env::args_os().collect(), &known) {
            Ok(argv) => {
                use clap::FromArgMatches;
                let matches = without_client_flags(Cli::command()).get_matches_from(argv);
                Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
            }
            Err(e) => {
                eprintln!("kaon server: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    if !matches!(
        cli.command,
        Cmd::Server(_) | Cmd::Executor | Cmd::MesosEmulator { .. } | Cmd::RunLocal { .. }
    ) {
        // Like other Unix tools, a printing command ends quietly when the
        // reader closes the pipe (`kaon runs | head`): `println!` panics on
        // a closed stdout, and that panic exits as SIGPIPE would (141),
        // without a message. SIGPIPE itself stays ignored: a server that
        // closes a connection while the client writes (a plain-text client
        // at a TLS port) must give an error, not kill the client silently.
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| info.payload().downcast_ref::<&str>().copied())
                .unwrap_or("");
            if msg.contains("failed printing to stdout") && msg.contains("Broken pipe") {
                std::process::exit(141);
            }
            default(info);
        }));
    }
    let json = cli.output_format == "json";
    let o = client::Opts {
        server: cli.server.clone(),
        timeout: std::time::Duration::from_secs_f64(cli.timeout.max(0.001)),
        stale: cli.stale,
        json,
        token: cli.token.clone(),
        tls_ca: cli.tls_ca.clone(),
        tls_identity: cli.tls_cert.clone().zip(cli.tls_key.clone()),
    };
    match cli.command {
        Cmd::Validate { files } => validate(&files, json),
        Cmd::Server(args) => report(node::server(*args)),
        Cmd::Submit {
            file,
            params,
            key,
            watch,
        } => block(client::submit(&o, &file, &params, key, watch)),
        Cmd::Runs {
            workflow,
            status,
            limit,
            before,
        } => block(client::runs(&o, workflow, status, limit, before)),
        Cmd::Run(RunCmd::Show { id }) => block(client::show(&o, id)),
        Cmd::Run(RunCmd::Watch { id }) => block(client::watch_run(&o, id)),
        Cmd::Run(RunCmd::Cancel { id, reason }) => block(client::cancel(&o, id, reason)),
        Cmd::Run(RunCmd::Retry { id, key, watch }) => block(client::retry(&o, id, key, watch)),
        Cmd::Run(RunCmd::Logs {
            id,
            step,
            attempt,
            stderr,
            tail,
            follow,
        }) => block(client::logs(&o, id, &step, attempt, stderr, tail, follow)),
        Cmd::Workflow(WorkflowCmd::Register { file }) => block(client::register(&o, &file)),
        Cmd::Workflow(WorkflowCmd::List) => block(client::workflows(&o)),
        Cmd::Workflow(WorkflowCmd::WhatIf { file, runs, last }) => {
            block(whatif::what_if_cmd(&o, &file, &runs, last))
        }
        Cmd::Schedule(ScheduleCmd::List) => block(client::schedules(&o)),
        Cmd::Schedule(ScheduleCmd::Pause { workflow, index }) => {
            block(client::set_schedule_paused(&o, &workflow, index, true))
        }
        Cmd::Schedule(ScheduleCmd::Resume { workflow, index }) => {
            block(client::set_schedule_paused(&o, &workflow, index, false))
        }
        Cmd::Cluster(ClusterCmd::Status) => block(client::cluster_status(&o)),
        Cmd::Cluster(ClusterCmd::Init { members }) => block(client::cluster_init(&o, &members)),
        Cmd::Cluster(ClusterCmd::AddNode {
            id,
            raft_addr,
            learner,
        }) => block(client::add_node(&o, id, raft_addr, learner)),
        Cmd::Cluster(ClusterCmd::RemoveNode { id }) => block(client::remove_node(&o, id)),
        Cmd::Cluster(ClusterCmd::TransferLeader { id }) => block(client::transfer_leader(&o, id)),
        Cmd::Cluster(ClusterCmd::Snapshot) => block(client::snapshot(&o)),
        Cmd::Cluster(ClusterCmd::Backup { file }) => block(backup::backup(&o, &file)),
        Cmd::Cluster(ClusterCmd::Restore {
            file,
            data_dir,
            node_id,
            raft_addr,
        }) => report(backup::restore(&file, &data_dir, node_id, &raft_addr, json)),
        Cmd::Cluster(ClusterCmd::RebuildNode {
            data_dir,
            node_id,
            raft_addr,
            force,
            wait,
        }) => block(rebuild_node(
            &o,
            &data_dir,
            node_id,
            raft_addr,
            force,
            std::time::Duration::from_secs_f64(wait.max(1.0)),
        )),
        Cmd::Cluster(ClusterCmd::Recover {
            data_dir,
            node_id,
            members,
            dry_run,
        }) => report(cluster_recover(&data_dir, node_id, &members, dry_run, json)),
        Cmd::Audit(cmd) => {
            fn source<'a>(
                d: &'a Option<std::path::PathBuf>,
                o: &'a client::Opts,
            ) -> audit::Source<'a> {
                match d {
                    Some(d) => audit::Source::Offline(d.as_path()),
                    None => audit::Source::Live(o),
                }
            }
            match &cmd {
                AuditCmd::Verify {
                    data_dir,
                    digests,
                    public_keys,
                } => {
                    let kept = match digests.as_deref().map(audit::read_kept).transpose() {
                        Ok(k) => k.unwrap_or_default(),
                        Err(e) => return report(Err(e)),
                    };
                    let keys = match public_keys
                        .iter()
                        .map(|p| kaon_server::signing::load_public_key(p))
                        .collect::<anyhow::Result<Vec<_>>>()
                    {
                        Ok(k) => k,
                        Err(e) => return report(Err(e)),
                    };
                    block(audit::verify(source(data_dir, &o), &kept, &keys))
                }
                AuditCmd::Keygen { dir } => report(audit_keygen(dir)),
                AuditCmd::Replay { data_dir, until } => {
                    block(audit::replay(source(data_dir, &o), *until, json))
                }
                AuditCmd::Export { data_dir, from, to } => {
                    block(audit::export(source(data_dir, &o), *from, *to))
                }
                AuditCmd::State { data_dir, at, run } => {
                    block(audit::state(source(data_dir, &o), *at, *run, json))
                }
                AuditCmd::Diff {
                    data_dir,
                    from,
                    to,
                    run,
                } => block(audit::diff(source(data_dir, &o), *from, *to, *run, json)),
                AuditCmd::Why {
                    run,
                    step,
                    data_dir,
                } => block(audit::why(source(data_dir, &o), *run, step.clone(), json)),
            }
        }
        Cmd::Token(TokenCmd::New { principal, role }) => report(token_new(&principal, &role, json)),
        Cmd::Token(TokenCmd::Hash) => report(token_hash()),
        Cmd::Tls(TlsCmd::Init {
            dir,
            nodes,
            hosts,
            days,
        }) => report(tls_init(&dir, nodes, &hosts, days)),
        Cmd::Tls(TlsCmd::Cert {
            dir,
            name,
            hosts,
            days,
        }) => report(tls_cert(&dir, &name, &hosts, days).map(|_| ExitCode::SUCCESS)),
        Cmd::Executor => executor(),
        Cmd::RunLocal {
            file,
            params,
            work_dir,
        } => match run_local(&file, &params, work_dir) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("kaon run-local: {e:#}");
                ExitCode::from(2)
            }
        },
        Cmd::MesosEmulator { args } => {
            let mut argv = vec!["kaon mesos-emulator".to_string()];
            argv.extend(args);
            let rt = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kaon mesos-emulator: cannot start runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            match rt.block_on(kaon_mesos_emulator::run_from_args(argv)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kaon mesos-emulator: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints an operational error (with its causes) and exits 2.
fn report(r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kaon: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a client command on a small runtime.
fn block(f: impl std::future::Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => report(rt.block_on(f)),
        Err(e) => report(Err(e.into())),
    }
}

fn executor() -> ExitCode {
    node::init_logging("text");
    // Single-threaded on purpose: steps get PR_SET_PDEATHSIG, which fires
    // when the spawning thread exits (see kaon-mesos' executor).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kaon executor: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = rt.block_on(async {
        let env = kaon_mesos::executor::ExecutorEnv::from_env()?;
        kaon_mesos::executor::run(env).await
    });
    match code {
        Ok(c) => std::process::exit(c),
        Err(e) => {
            tracing::error!(error = %e, "kaon executor failed");
            ExitCode::FAILURE
        }
    }
}

fn read(file: &str) -> Result<String, String> {
    if file == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| format!("reading standard input: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("cannot read: {e}"))
    }
}

fn validate(files: &[String], json: bool) -> ExitCode {
    let limits = Limits::default();
    let mut ok = true;
    let mut results = Vec::new();
    for f in files {
        let outcome = read(f).map_err(|e| vec![e]).and_then(|src| {
            kaon_core::compile_source(&src, &limits)
                .map_err(|errs| errs.iter().map(|e| e.to_string()).collect())
        });
        match outcome {
            Ok(plan) => {
                if json {
                    results.push(serde_json::json!({"file": f, "valid": true, "summary": plan.summary(),
                        "steps": plan.task_count, "groups": plan.group_count, "schedules": plan.schedules.len()}));
                } else {
                    println!("{f}: ok: {}", plan.summary());
                }
            }
            Err(errors) => {
                ok = false;
                if json {
                    results.push(serde_json::json!({"file": f, "valid": false, "errors": errors}));
                } else {
                    for e in &errors {
                        eprintln!("{f}: {e}");
                    }
                    eprintln!(
                        "{f}: {} error{}",
                        errors.len(),
                        if errors.len() == 1 { "" } else { "s" }
                    );
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(results));
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `kaon run`: emulator + leader runtime in this process, one run, plain
/// progress lines.
fn run_local(
    file: &str,
    params: &[String],
    work_dir: Option<std::path::PathBuf>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use kaon_core::decide::{Command, SubmitTarget};
    use kaon_core::events::{Body, RunOutcome};
    use kaon_server::log::{EventLog, LocalLog};
    use std::sync::Arc;

    let source = read(file).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
    let mut given = std::collections::BTreeMap::new();
    for p in params {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("parameter {p:?}: expected NAME=VALUE"))?;
        let value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        given.insert(k.to_string(), value);
    }
    let tmp;
    let work = match work_dir {
        Some(w) => w,
        None => {
            tmp = std::env::temp_dir().join(format!("kaon-run-{}", std::process::id()));
            tmp.clone()
        }
    };
    let exe =
        std::env::current_exe().context("locating the kaon binary (it is also the executor)")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let emu = kaon_mesos_emulator::Emulator::start(kaon_mesos_emulator::EmulatorConfig {
            allocation_interval: std::time::Duration::from_millis(20),
            status_update_retry_min: std::time::Duration::from_secs(1),
            status_update_retry_max: std::time::Duration::from_secs(10),
            work_dir: work.clone(),
            executor_path: Some(exe.clone()),
            ..Default::default()
        })
        .await
        .context("starting the embedded Mesos emulator")?;
        let log = Arc::new(LocalLog::default());
        let handle = kaon_server::runtime::start(
            log.clone(),
            kaon_server::runtime::RuntimeConfig::new(emu.master_url(), exe.display().to_string()),
        );
        let submit = Command::SubmitRun {
            target: SubmitTarget::Inline { source },
            params: given,
            idempotency_key: "kaon-run".into(),
        };
        if let Err(rejection) = handle.command(submit).await? {
            emu.shutdown().await;
            eprintln!("{file}: {rejection}");
            return Ok(ExitCode::FAILURE);
        }
        let run_id = log.with_state(|s| s.idempotency["kaon-run"]);
        println!("run {run_id} started (sandboxes in {})", work.display());
        let mut printed = 0usize;
        let outcome = loop {
            let events = log.events();
            let mut done = None;
            for e in &events[printed..] {
                let line = log.with_state(|s| {
                    let path = |r: u64, i: u32| {
                        s.run(r).map(|r| r.inst(i).path.clone()).unwrap_or_default()
                    };
                    match &e.body {
                        Some(Body::TaskLaunchRequested(l)) => {
                            Some(format!("  start   {} (attempt {})", l.step_path, l.attempt))
                        }
                        Some(Body::TaskStatusObserved(o)) if o.state().is_terminal() => {
                            Some(format!(
                                "  {:<7} {}{}",
                                format!("{:?}", o.state()).to_lowercase(),
                                path(o.run_id, o.instance),
                                if o.message.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {}", o.message)
                                }
                            ))
                        }
                        Some(Body::NodeSkipped(k)) => Some(format!(
                            "  skip    {}: {}",
                            path(k.run_id, k.instance),
                            k.message
                        )),
                        Some(Body::RetryScheduled(r)) => Some(format!(
                            "  retry   {} as attempt {}",
                            path(r.run_id, r.instance),
                            r.next_attempt
                        )),
                        Some(Body::ProgressReported(p)) => Some(format!(
                            "  {:>3}%    {} {}",
                            p.percent,
                            path(p.run_id, p.instance),
                            p.status_text
                        )),
                        _ => None,
                    }
                });
                if let Some(line) = line {
                    println!("{line}");
                }
                if let Some(Body::RunFinished(f)) = &e.body
                    && f.run_id == run_id
                {
                    done = Some((f.outcome(), f.message.clone()));
                }
            }
            printed = events.len();
            if let Some(d) = done {
                break d;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        emu.shutdown().await;
        let (o, msg) = outcome;
        println!(
            "run {run_id} {}{}",
            format!("{o:?}").to_lowercase(),
            if msg.is_empty() {
                String::new()
            } else {
                format!(": {msg}")
            }
        );
        Ok(if o == RunOutcome::Succeeded {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    })
}

/// `kaon cluster recover`.
fn cluster_recover(
    data_dir: &std::path::Path,
    node_id: Option<u64>,
    members: &[String],
    dry_run: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut map = std::collections::BTreeMap::new();
    for m in members {
        let (id, addr) = client::parse_member(m)?;
        anyhow::ensure!(
            map.insert(id, addr).is_none(),
            "--member {m:?}: node {id} is given twice"
        );
    }
    let me = match node_id {
        Some(id) => id,
        None if map.len() == 1 => *map.keys().next().expect("one member"),
        None => anyhow::bail!("several members: say which one this node is with --node-id"),
    };
    let dir = data_dir.join("raft");
    anyhow::ensure!(
        dir.join("raft-log.redb").exists(),
        "{} holds no kaon Raft log (expected raft/raft-log.redb)",
        data_dir.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let r = rt
        .block_on(kaon_log::membership::recover(&dir, me, &map, dry_run))
        .map_err(|e| {
            anyhow::anyhow!(
                "recovering {} (stop the node first if it is running): {e}",
                dir.display()
            )
        })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "last_log_index": r.last_log_index,
                "last_log_term": r.last_log_term,
                "members_before": r.members_before,
                "members": map,
                "term": r.term,
                "index": r.index,
                "written": !dry_run,
            })
        );
    } else {
        let list = |m: &std::collections::BTreeMap<u64, String>| {
            m.iter()
                .map(|(id, a)| format!("{id}={a}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "last log index {} (term {}); members were: {}",
            r.last_log_index,
            r.last_log_term,
            list(&r.members_before)
        );
        if dry_run {
            println!("dry run: nothing written");
        } else {
            println!(
                "wrote membership {} at log index {} (term {}): start node {me} again; it \
                 elects itself and commits everything it holds",
                list(&map),
                r.index,
                r.term
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon token new`: a token and its tokens-file entry.
fn token_new(principal: &str, role: &str, json: bool) -> anyhow::Result<ExitCode> {
    use kaon_server::auth;
    let role = auth::Role::parse(role).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        !principal.trim().is_empty(),
        "--principal must not be empty"
    );
    let token = auth::new_token();
    let sha = auth::token_sha256(&token);
    if json {
        println!(
            "{}",
            serde_json::json!({"token": token, "principal": principal, "role": role.name(), "sha256": sha})
        );
    } else {
        println!("token: {token}");
        println!("# add under `tokens:` in the servers' --auth-file:");
        println!(
            "  - {{principal: {}, role: {}, sha256: {sha}}}",
            serde_json::Value::String(principal.to_string()),
            role.name()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon token hash`: the SHA-256 of a token on standard input.
fn token_hash() -> anyhow::Result<ExitCode> {
    let mut t = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut t).context("reading the token")?;
    anyhow::ensure!(!t.trim().is_empty(), "no token on standard input");
    println!("{}", kaon_server::auth::token_sha256(&t));
    Ok(ExitCode::SUCCESS)
}

use anyhow::Context as _;

/// Writes `path` with `text`, readable by its owner only when `secret`.
fn write_pem(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `kaon tls init`.
fn tls_init(
    dir: &std::path::Path,
    nodes: u32,
    hosts: &[String],
    days: i64,
) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = dir.join("ca.key");
    anyhow::ensure!(
        !ca_key.exists(),
        "{} exists: a new CA would orphan every certificate the old one signed (use `kaon tls cert` to sign more)",
        ca_key.display()
    );
    let ca = kaon_log::tls::new_ca("kaon cluster CA", days)?;
    write_pem(&dir.join("ca.pem"), &ca.cert, false)?;
    write_pem(&ca_key, &ca.key, true)?;
    println!(
        "{}: the cluster CA (give it to every node and client)",
        dir.join("ca.pem").display()
    );
    println!("{}: its key (keep it offline)", ca_key.display());
    for n in 1..=nodes {
        let name = format!("node-{n}");
        let mut names = hosts.to_vec();
        names.push(name.clone());
        tls_cert(dir, &name, &names, days)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `kaon tls cert`: NAME.pem and NAME.key signed by DIR's CA.
fn tls_cert(dir: &std::path::Path, name: &str, hosts: &[String], days: i64) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
        "certificate name {name:?}: letters, digits, '.', '_' and '-' only"
    );
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .with_context(|| format!("reading {}", dir.join(f).display()))
    };
    let ca = kaon_log::tls::Pem {
        cert: read("ca.pem")?,
        key: read("ca.key")?,
    };
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
    for h in hosts {
        if !names.contains(h) {
            names.push(h.clone());
        }
    }
    let c = kaon_log::tls::new_cert(&ca, name, &names, days)?;
    write_pem(&dir.join(format!("{name}.pem")), &c.cert, false)?;
    write_pem(&dir.join(format!("{name}.key")), &c.key, true)?;
    println!(
        "{}: certificate for {} (valid {days} days)",
        dir.join(format!("{name}.pem")).display(),
        names.join(", ")
    );
    Ok(())
}

/// `kaon audit keygen`.
fn audit_keygen(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = dir.join("signing.key");
    anyhow::ensure!(
        !key.exists(),
        "{} exists: a new key is a rotation; write it elsewhere and give the nodes the new file",
        key.display()
    );
    let (secret, public) = kaon_server::signing::SigningKey::generate()?;
    write_pem(&key, &format!("{secret}\n"), true)?;
    write_pem(&dir.join("signing.pub"), &format!("{public}\n"), false)?;
    println!(
        "{}: the signing key (every node: --signing-key)",
        key.display()
    );
    println!(
        "{}: its public key {public} (auditors: kaon audit verify --public-key)",
        dir.join("signing.pub").display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `kaon cluster rebuild-node`.
async fn rebuild_node(
    o: &client::Opts,
    data_dir: &std::path::Path,
    node_id: u64,
    raft_addr: String,
    force: bool,
    wait: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    let raft = data_dir.join("raft");
    anyhow::ensure!(
        raft.join("state.redb").exists(),
        "{} holds no kaon event log (expected raft/state.redb)",
        data_dir.display()
    );
    let verdict = match kaon_log::StateMachineStore::open(&raft) {
        Ok(store) => store
            .verify_chain()
            .map(|r| r.events)
            .map_err(|e| e.to_string()),
        Err(e) if e.is_in_use() => anyhow::bail!(
            "{} is in use by a running kaon server: stop it first",
            raft.display()
        ),
        Err(e) => Err(e.to_string()),
    };
    match &verdict {
        Ok(n) if !force => anyhow::bail!(
            "the archive in {} verifies ({n} events): nothing to rebuild (--force rebuilds anyway)",
            raft.display()
        ),
        Ok(n) => println!("the archive verifies ({n} events); rebuilding anyway (--force)"),
        Err(e) => println!("the archive does not verify: {e}"),
    }
    // Out of the membership first: a member that came back with less than
    // it acknowledged would break Raft's counting.
    let members = o
        .client()?
        .call(
            kaon_api::v1::ClusterStatusRequest {},
            |mut k, r| async move { k.cluster_status(r).await },
        )
        .await
        .map_err(client::status_error)?
        .members;
    if members.iter().any(|m| m.id == node_id) {
        client::remove_node(o, node_id).await?;
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let aside = data_dir.join(format!("raft.corrupt-{secs}"));
    std::fs::rename(&raft, &aside)
        .with_context(|| format!("moving {} to {}", raft.display(), aside.display()))?;
    println!(
        "moved {} to {} (delete it once inspected)",
        raft.display(),
        aside.display()
    );
    println!(
        "start node {node_id} again with its usual flags plus --join; waiting up to {wait:?} \
         to add it back"
    );
    // Added back once it answers: as a learner it catches up, then votes.
    let deadline = std::time::Instant::now() + wait;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let mut c = o.client()?;
        c.deadline = std::time::Duration::from_secs(15);
        match c
            .call(
                kaon_api::v1::AddNodeRequest {
                    node_id,
                    raft_addr: raft_addr.clone(),
                    learner: false,
                },
                |mut k, r| async move { k.add_node(r).await },
            )
            .await
        {
            Ok(_) => {
                println!("node {node_id} is back: it holds the cluster's log again");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => last = e.message().to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    anyhow::bail!(
        "node {node_id} was not added back within {wait:?} (last: {last}); start it with --join and run `kaon cluster add-node {node_id} {raft_addr}`"
    )
}
