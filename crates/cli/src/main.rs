//! `kaon`: the command-line front end.
//!
//! Today: `kaon validate FILE...` checks workflow specs offline; `kaon
//! executor` is kaon's Mesos executor (agents start it); `kaon
//! mesos-emulator` runs the Mesos 1.11 emulator. The server, submit, runs,
//! watch and cluster commands arrive with the cluster issue.

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
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check workflow specs offline: print every error (exit 1) or a summary (exit 0).
    Validate {
        /// Spec files (YAML or JSON); `-` reads standard input.
        #[arg(required = true)]
        files: Vec<String>,
        /// Print the result as JSON.
        #[arg(long, value_parser = ["text", "json"], default_value = "text")]
        output: String,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Validate { files, output } => validate(&files, output == "json"),
        Cmd::Executor => executor(),
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
            match rt.block_on(kaon_mesos::emulator::run_from_args(argv)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kaon mesos-emulator: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn executor() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
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
