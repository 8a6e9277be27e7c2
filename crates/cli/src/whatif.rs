//! `kaon workflow what-if FILE`: what a new definition would have done with
//! past runs, before it is registered (the replay itself is the pure
//! `kaon_core::whatif`; this reads the runs through the API and prints).

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use kaon_api::v1;
use kaon_core::events::TaskState;
use kaon_core::whatif::{RecordedAttempt, RecordedRun, RecordedStep, WhatIf, what_if};

use crate::client::{Opts, status_error};

/// Runs compared by default (the newest of the workflow).
pub const LAST_RUNS_DEFAULT: u32 = 10;

/// A run as the API shows it, as the replay wants it.
fn recorded(run: &v1::Run) -> anyhow::Result<RecordedRun> {
    let params: BTreeMap<String, serde_json::Value> = if run.params_json.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(&run.params_json)
            .with_context(|| format!("run {}'s parameters", run.id))?
    };
    Ok(RecordedRun {
        id: run.id,
        status: run.status.clone(),
        params,
        steps: run
            .steps
            .iter()
            .filter(|s| s.kind == "task")
            .map(|s| RecordedStep {
                path: s.path.clone(),
                status: s.status.clone(),
                attempts: s
                    .attempt_list
                    .iter()
                    .map(|a| RecordedAttempt {
                        number: a.number,
                        state: TaskState::from_mesos(&a.state).unwrap_or(TaskState::Unknown),
                        exit_code: a.exit_code,
                    })
                    .collect(),
                outputs: (!s.outputs_json.is_empty()).then(|| s.outputs_json.clone()),
            })
            .collect(),
    })
}

fn show(w: &WhatIf) {
    let verdict = if w.recorded_status == w.would_status {
        format!("{} (the same)", w.would_status)
    } else {
        format!("{} -> {}", w.recorded_status, w.would_status)
    };
    let differ = w.differences().count();
    println!(
        "run {}: {verdict}; {differ} of {} steps decided differently",
        w.run,
        w.steps.len()
    );
    let pair = |p: &Option<(String, u32)>| match p {
        None => "absent".to_string(),
        Some((status, 0)) => status.clone(),
        Some((status, 1)) => format!("{status} after 1 attempt"),
        Some((status, n)) => format!("{status} after {n} attempts"),
    };
    for s in w.differences() {
        let sign = match (&s.recorded, &s.would) {
            (None, _) => '+',
            (_, None) => '-',
            _ => '~',
        };
        let assumed = match s.assumed_attempts {
            0 => String::new(),
            n => format!(" ({n} attempt(s) nothing recorded: assumed to succeed)"),
        };
        println!(
            "  {sign} {}: {} -> {}{assumed}",
            s.path,
            pair(&s.recorded),
            pair(&s.would)
        );
    }
}

/// `kaon workflow what-if FILE [--run ID]... [--last N]`.
pub async fn what_if_cmd(
    o: &Opts,
    file: &str,
    runs: &[u64],
    last: u32,
) -> anyhow::Result<ExitCode> {
    let source = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
    let plan = kaon_core::validate::compile_source(&source, &kaon_core::Limits::default())
        .map_err(|errs| {
            anyhow::anyhow!(
                "{file}: {}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
    let mut client = o.client()?;
    let ids: Vec<u64> = if runs.is_empty() {
        let list = client
            .call(
                v1::ListRunsRequest {
                    workflow: plan.name.clone(),
                    status: String::new(),
                    page_size: last,
                    page_token: 0,
                },
                |mut k, r| async move { k.list_runs(r).await },
            )
            .await
            .map_err(status_error)?;
        // Finished runs only: a running one has no outcomes yet.
        list.runs
            .iter()
            .filter(|r| r.status != "running")
            .map(|r| r.id)
            .collect()
    } else {
        runs.to_vec()
    };
    anyhow::ensure!(
        !ids.is_empty(),
        "no finished runs of workflow {:?} to compare with (name runs with --run)",
        plan.name
    );
    let mut results = Vec::new();
    for id in ids {
        let run = client
            .call(v1::GetRunRequest { run_id: id }, |mut k, r| async move {
                k.get_run(r).await
            })
            .await
            .map_err(status_error)?;
        if run.workflow != plan.name {
            eprintln!(
                "note: run {id} is of workflow {:?}, the new definition is {:?}",
                run.workflow, plan.name
            );
        }
        let w = what_if(&source, &recorded(&run)?).map_err(|e| anyhow::anyhow!("{file}: {e}"))?;
        results.push((run.version, w));
    }
    if o.json {
        let list: Vec<_> = results
            .iter()
            .map(|(version, w)| {
                serde_json::json!({
                    "run": w.run, "version": version,
                    "recorded_status": w.recorded_status, "would_status": w.would_status,
                    "differences": w.differences().map(|s| serde_json::json!({
                        "step": s.path,
                        "recorded": s.recorded.as_ref().map(|(st, n)| serde_json::json!({"status": st, "attempts": n})),
                        "would": s.would.as_ref().map(|(st, n)| serde_json::json!({"status": st, "attempts": n})),
                        "assumed_attempts": s.assumed_attempts,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else {
        for (_, w) in &results {
            show(w);
        }
    }
    Ok(ExitCode::SUCCESS)
}
