//! Scenario tests written as data: each `tests/scenarios/*.yaml` names a
//! workflow, the Mesos outcomes of its tasks (inputs), and the expected
//! run result, step states, launches and event counts (outputs). The runner
//! drives the pure core through `kaon_core::sim` and also checks that a
//! replay of the log reproduces the leader's state digest.

// The harness reads scenario files; the pure-core bans apply to the library, not to tests.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kaon_core::events::{Body, body_name};
use kaon_core::sim::{Outcome, Sim};
use kaon_core::state::{NodeStatus, RunStatus};
use kaon_core::{Limits, decide::status_name};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    description: String,
    /// Path of the spec, relative to the scenario file.
    #[serde(default)]
    workflow: Option<String>,
    /// Or the spec inline.
    #[serde(default)]
    spec: Option<serde_json::Value>,
    #[serde(default)]
    params: BTreeMap<String, serde_json::Value>,
    /// Outcomes per step path, one per attempt (the last one repeats).
    #[serde(default)]
    outcomes: BTreeMap<String, Vec<OutcomeSpec>>,
    /// Outcome of any other task (default: finish with `{}`).
    #[serde(default)]
    default: Option<OutcomeSpec>,
    /// Simulate a leader failover after this many world steps.
    #[serde(default)]
    failover_after_steps: Option<usize>,
    /// Cancel the run after this many world steps.
    #[serde(default)]
    cancel_after_steps: Option<usize>,
    expect: Expect,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum OutcomeSpec {
    Finish(serde_json::Value),
    Fail(i32),
    Lost,
    Hang,
}

impl OutcomeSpec {
    fn to_outcome(&self) -> Outcome {
        match self {
            OutcomeSpec::Finish(v) => Outcome::Finish(v.to_string()),
            OutcomeSpec::Fail(c) => Outcome::Fail(*c),
            OutcomeSpec::Lost => Outcome::Lost,
            OutcomeSpec::Hang => Outcome::Hang,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    run: String,
    #[serde(default)]
    message_contains: Option<String>,
    /// Final status per instance path.
    #[serde(default)]
    steps: BTreeMap<String, String>,
    /// Attempts launched per step path.
    #[serde(default)]
    launches: BTreeMap<String, usize>,
    #[serde(default)]
    launched_total: Option<usize>,
    /// Event counts by kind.
    #[serde(default)]
    events: BTreeMap<String, usize>,
    /// Step paths that must launch in this relative order (first attempts).
    #[serde(default)]
    order: Vec<String>,
}

fn run_scenario(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    // Through JSON so that `{finish: {...}}` maps select enum variants.
    let value: serde_json::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| format!("scenario file: {e}"))?;
    let sc: Scenario = serde_json::from_value(value).map_err(|e| format!("scenario file: {e}"))?;
    let source = match (&sc.workflow, &sc.spec) {
        (Some(rel), None) => std::fs::read_to_string(path.parent().unwrap().join(rel))
            .map_err(|e| format!("{rel}: {e}"))?,
        (None, Some(v)) => v.to_string(),
        _ => return Err("give exactly one of workflow and spec".into()),
    };
    let mut sim = Sim::new(Limits::default());
    let run_id = sim
        .submit(&source, sc.params.clone())
        .map_err(|e| format!("submit rejected: {e}"))?;
    let outcomes = sc.outcomes.clone();
    let default = sc
        .default
        .clone()
        .unwrap_or(OutcomeSpec::Finish(serde_json::json!({})));
    let mut policy = move |p: &str, attempt: u32| -> Outcome {
        match outcomes.get(p) {
            Some(list) if !list.is_empty() => {
                list[(attempt as usize - 1).min(list.len() - 1)].to_outcome()
            }
            _ => default.to_outcome(),
        }
    };
    let mut steps = 0;
    // Stop once the run under test ended: a cron schedule in the spec would
    // otherwise keep the simulated world busy forever.
    while sim
        .state
        .run(run_id)
        .is_some_and(|r| r.status == RunStatus::Running)
        && sim.step(&mut policy)
    {
        steps += 1;
        if Some(steps) == sc.failover_after_steps {
            sim.failover();
        }
        if Some(steps) == sc.cancel_after_steps {
            sim.command(kaon_core::decide::Command::CancelRun {
                run_id,
                reason: "scenario".into(),
            })
            .map_err(|e| format!("cancel rejected: {e}"))?;
        }
        if steps > 100_000 {
            return Err("did not settle in 100000 steps".into());
        }
    }
    let run = sim.state.run(run_id).ok_or("run vanished")?;
    let mut problems = Vec::new();
    let status = match run.status {
        RunStatus::Running => "running",
        RunStatus::Succeeded => "succeeded",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    };
    if status != sc.expect.run {
        problems.push(format!(
            "run ended {status} ({}), expected {}",
            run.message, sc.expect.run
        ));
    }
    if let Some(m) = &sc.expect.message_contains
        && !run.message.contains(m.as_str())
    {
        problems.push(format!(
            "run message {:?} does not contain {m:?}",
            run.message
        ));
    }
    for (p, want) in &sc.expect.steps {
        match run.instances.iter().find(|i| &i.path == p) {
            None => problems.push(format!("no instance {p:?}")),
            Some(i) => {
                let got = status_name(i.status);
                if got != want {
                    problems.push(format!("{p}: {got} ({}), expected {want}", i.message));
                }
            }
        }
    }
    let mut launches: BTreeMap<String, usize> = BTreeMap::new();
    let mut first_launch_order = Vec::new();
    for e in &sim.log {
        if let Some(Body::TaskLaunchRequested(l)) = &e.body {
            *launches.entry(l.step_path.clone()).or_default() += 1;
            if l.attempt == 1 {
                first_launch_order.push(l.step_path.clone());
            }
        }
    }
    for (p, n) in &sc.expect.launches {
        let got = launches.get(p).copied().unwrap_or(0);
        if got != *n {
            problems.push(format!("{p}: {got} launches, expected {n}"));
        }
    }
    if let Some(t) = sc.expect.launched_total
        && sim.launched.len() != t
    {
        problems.push(format!(
            "{} tasks launched, expected {t}",
            sim.launched.len()
        ));
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &sim.log {
        *counts
            .entry(body_name(e.body.as_ref().unwrap()))
            .or_default() += 1;
    }
    for (k, n) in &sc.expect.events {
        let got = counts.get(k.as_str()).copied().unwrap_or(0);
        if got != *n {
            problems.push(format!("{got} {k} events, expected {n}"));
        }
    }
    let positions: Vec<Option<usize>> = sc
        .expect
        .order
        .iter()
        .map(|p| first_launch_order.iter().position(|x| x == p))
        .collect();
    for (w, p) in sc.expect.order.windows(2).zip(positions.windows(2)) {
        match (p[0], p[1]) {
            (Some(a), Some(b)) if a < b => {}
            _ => problems.push(format!("{} did not launch before {}", w[0], w[1])),
        }
    }
    // Every terminal state must be final: nothing live, nothing pending.
    if run.status != RunStatus::Running {
        for i in &run.instances {
            if !i.status.is_terminal() && i.status != NodeStatus::Pending {
                problems.push(format!(
                    "{} still {:?} after the run ended",
                    i.path, i.status
                ));
            }
        }
        if !sim.live_tasks().is_empty() {
            problems.push(format!("tasks still live in Mesos: {:?}", sim.live_tasks()));
        }
    }
    let replayed = sim.replay();
    if replayed.digest() != sim.state.digest() {
        problems.push("replayed state digest differs from the leader's".into());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}:\n  {}", sc.description, problems.join("\n  ")))
    }
}

#[test]
fn scenarios() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("scenario folder")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| std::env::var("SCENARIO").map_or(true, |f| p.to_string_lossy().contains(&f)))
        .collect();
    files.sort();
    assert!(
        files.len() >= 8 || std::env::var("SCENARIO").is_ok(),
        "expected the scenario catalogue, found {}",
        files.len()
    );
    let mut failures = Vec::new();
    for f in &files {
        if let Err(e) = run_scenario(f) {
            failures.push(format!("{}: {e}", f.file_name().unwrap().to_string_lossy()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}
