//! `kaon`: the command-line front end.
//!
//! Today: `kaon validate FILE...` checks workflow specs offline. The server,
//! submit, runs, watch and cluster commands arrive with the cluster issue.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Validate { files, output } => validate(&files, output == "json"),
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
