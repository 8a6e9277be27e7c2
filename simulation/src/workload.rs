//! What the simulated users do, from the seed: random valid workflows
//! (foreach over a step's outputs, loops until an output says done,
//! conditions, retries of every kind, step timeouts, exit handlers,
//! failure modes, a cron schedule), clients submitting, resubmitting with
//! the same idempotency key, cancelling and retrying runs; and what every
//! task does when it runs (its script), derived from the seed and its task
//! id only, so it does not depend on when or where it runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kaon_mesos::executor::StepSpec;
use kaon_mesos::types::TaskInfo;
use kaon_mesos_emulator::scripted::{ExecutorExit, Progress, Script};
use serde_json::{Value, json};

use crate::rng::{Rng, hash};

/// A workflow the clients submit.
#[derive(Debug, Clone)]
pub struct Workflow {
    /// Its name.
    pub name: String,
    /// The spec (JSON).
    pub spec: String,
    /// Carries a cron schedule (registered, not submitted).
    pub cron: bool,
}

/// One thing a client does.
#[derive(Debug, Clone, PartialEq)]
pub enum Act {
    /// Submit workflow `workflow` with this idempotency key.
    Submit {
        /// Index into the workflows.
        workflow: usize,
        /// Idempotency key.
        key: String,
    },
    /// Cancel the run that `key` started (if it was acknowledged).
    Cancel {
        /// The submit's key.
        key: String,
    },
    /// Retry the run `key` started, once it failed or was cancelled.
    Retry {
        /// The submit's key.
        key: String,
        /// The retry's own idempotency key.
        retry_key: String,
    },
    /// Register the cron workflow.
    Register {
        /// Index into the workflows.
        workflow: usize,
    },
}

/// Step behaviour knobs: per-mille chances of failing (user error),
/// hanging (timeouts), crashing its executor (platform error).
#[derive(Debug, Clone, Copy)]
struct Knobs {
    fail: u64,
    hang: u64,
    crash: u64,
}

fn run(kind: &str, k: Knobs, extra: &str) -> Value {
    json!([
        "sim",
        kind,
        k.fail.to_string(),
        k.hang.to_string(),
        k.crash.to_string(),
        extra
    ])
}

fn retry(rng: &mut Rng) -> Value {
    json!({
        "user_errors": rng.below(3),
        "platform_errors": 3 + rng.below(3),
        "timeouts": rng.below(2),
        "backoff": {"kind": "exponential", "initial": "500ms", "max": "4s"}
    })
}

fn knobs(rng: &mut Rng) -> Knobs {
    Knobs {
        fail: *rng.pick(&[0, 50, 150, 300]),
        hang: *rng.pick(&[0, 0, 30, 80]),
        crash: *rng.pick(&[0, 20, 60]),
    }
}

/// The workflows of one seed.
pub fn workflows(rng: &mut Rng) -> Vec<Workflow> {
    let mut out = Vec::new();
    let on_failure = |rng: &mut Rng| *rng.pick(&["fail_fast", "finish_running", "ignore"]);
    // gen -> foreach over gen's outputs -> join.
    let width = rng.range(1, 4);
    let k = knobs(rng);
    out.push(Workflow {
        name: "fan".into(),
        cron: false,
        spec: json!({
            "apiVersion": "kaon/v1", "name": "fan",
            "defaults": {"resources": {"cpus": 0.5, "mem": "64MiB"}, "timeout": "20s"},
            "steps": {
                "gen": {"run": run("gen", knobs(rng), &width.to_string()), "retry": retry(rng)},
                "fan": {"depends_on": ["gen"], "foreach": {"items": "steps.gen.outputs.items", "max_concurrency": rng.range(1, 3)},
                        "run": run("work", k, "${{ item }}"), "retry": retry(rng), "on_failure": on_failure(rng)},
                "join": {"depends_on": ["fan"], "run": run("work", knobs(rng), ""), "retry": retry(rng)}
            },
            "on_exit": {"report": {"run": run("work", Knobs { fail: 0, hang: 0, crash: 0 }, "${{ run.status }}")}}
        })
        .to_string(),
    });
    // A loop until an output says done, then a condition on an output.
    out.push(Workflow {
        name: "loop".into(),
        cron: false,
        spec: json!({
            "apiVersion": "kaon/v1", "name": "loop",
            "defaults": {"resources": {"cpus": 0.25, "mem": "32MiB"}, "timeout": "20s"},
            "steps": {
                "train": {
                    "repeat": {"until": "steps.check.outputs.done", "max_iterations": rng.range(1, 3), "on_max_iterations": "succeed"},
                    "steps": {
                        "fit": {"run": run("work", knobs(rng), "${{ iteration }}"), "retry": retry(rng)},
                        "check": {"depends_on": ["fit"], "run": run("check", knobs(rng), "${{ iteration }}"), "retry": retry(rng)}
                    }
                },
                "publish": {"depends_on": ["train"], "when": "steps.train.outputs.check.done", "run": run("work", knobs(rng), ""), "retry": retry(rng)},
                "skipped": {"depends_on": ["train"], "when": "false", "run": run("work", knobs(rng), "")}
            }
        })
        .to_string(),
    });
    // A chain with a failure mode and an ignored step.
    out.push(Workflow {
        name: "chain".into(),
        cron: false,
        spec: json!({
            "apiVersion": "kaon/v1", "name": "chain",
            "defaults": {"resources": {"cpus": 0.1, "mem": "16MiB"}, "timeout": "20s"},
            "steps": {
                "a": {"run": run("work", knobs(rng), ""), "retry": retry(rng)},
                "b": {"depends_on": ["a"], "run": run("work", knobs(rng), ""), "retry": retry(rng), "on_failure": "ignore"},
                "c": {"depends_on": ["a"], "run": run("work", knobs(rng), ""), "retry": retry(rng), "on_failure": on_failure(rng)},
                "d": {"depends_on": ["b", "c"], "when": "steps.a.outputs.v % 2 == 0", "run": run("work", knobs(rng), ""), "retry": retry(rng)}
            }
        })
        .to_string(),
    });
    // Random DAGs.
    for d in 0..rng.range(1, 2) {
        out.push(random_dag(rng, &format!("dag{d}")));
    }
    // A schedule: every minute, fires caught up within five minutes.
    out.push(Workflow {
        name: "cron".into(),
        cron: true,
        spec: json!({
            "apiVersion": "kaon/v1", "name": "cron",
            "defaults": {"resources": {"cpus": 0.1, "mem": "16MiB"}, "timeout": "20s"},
            "steps": {"tick": {"run": run("work", Knobs { fail: 0, hang: 0, crash: 0 }, ""), "retry": retry(rng)}},
            "schedules": [{"cron": "* * * * *", "timezone": "UTC", "overlap": "allow_all", "catchup_window": "5m"}]
        })
        .to_string(),
    });
    out
}

/// A random valid DAG: tasks (some writing lists), foreach over a static
/// list or over an upstream step's list, loops, conditions on upstream
/// outputs, failure modes, sometimes an exit handler.
fn random_dag(rng: &mut Rng, name: &str) -> Workflow {
    let n = rng.range(2, 7) as usize;
    let mut steps = serde_json::Map::new();
    let mut gens: Vec<usize> = Vec::new();
    let mut works: Vec<usize> = Vec::new();
    for i in 0..n {
        let deps: Vec<usize> = (0..i).filter(|_| rng.chance(35)).take(2).collect();
        let shape = rng.below(10);
        let mut node = if shape < 2 {
            gens.push(i);
            json!({"run": run("gen", knobs(rng), &rng.range(0, 3).to_string()), "retry": retry(rng)})
        } else if shape < 6 {
            works.push(i);
            json!({"run": run("work", knobs(rng), ""), "retry": retry(rng)})
        } else if shape < 8 {
            let upstream: Vec<&usize> = gens.iter().filter(|g| deps.contains(g)).collect();
            let items = match upstream.first() {
                Some(g) => format!("steps.s{g}.outputs.items"),
                None => format!("{:?}", (0..rng.range(0, 3)).collect::<Vec<_>>()),
            };
            json!({"foreach": {"items": items, "max_concurrency": rng.range(1, 3)},
                   "run": run("work", knobs(rng), "${{ item }}"), "retry": retry(rng)})
        } else {
            json!({
                "repeat": {"until": "steps.check.outputs.done", "max_iterations": rng.range(1, 3), "on_max_iterations": "succeed"},
                "steps": {
                    "body": {"run": run("work", knobs(rng), "${{ iteration }}"), "retry": retry(rng)},
                    "check": {"depends_on": ["body"], "run": run("check", knobs(rng), "${{ iteration }}"), "retry": retry(rng)}
                }
            })
        };
        node["depends_on"] = json!(deps.iter().map(|d| format!("s{d}")).collect::<Vec<_>>());
        node["on_failure"] = json!(*rng.pick(&["fail_fast", "finish_running", "ignore"]));
        if let Some(w) = works.iter().find(|w| deps.contains(w))
            && rng.chance(30)
        {
            node["when"] = json!(format!("steps.s{w}.outputs.v % 2 == 0"));
        }
        steps.insert(format!("s{i}"), node);
    }
    let mut spec = json!({
        "apiVersion": "kaon/v1", "name": name,
        "defaults": {"resources": {"cpus": 0.2, "mem": "32MiB"}, "timeout": "20s"},
        "steps": steps
    });
    if rng.chance(50) {
        spec["on_exit"] = json!({"report": {"run": run("work", Knobs { fail: 0, hang: 0, crash: 0 }, "${{ run.status }}")}});
    }
    Workflow {
        name: name.to_string(),
        cron: false,
        spec: spec.to_string(),
    }
}

/// The clients' acts over `span`, with their times, sorted.
pub fn acts(rng: &mut Rng, workflows: &[Workflow], span: Duration) -> Vec<(Duration, Act)> {
    let mut out = Vec::new();
    let ms = span.as_millis() as u64;
    if let Some(i) = workflows.iter().position(|w| w.cron) {
        out.push((
            Duration::from_millis(rng.below(ms / 4)),
            Act::Register { workflow: i },
        ));
    }
    let plain: Vec<usize> = (0..workflows.len())
        .filter(|&i| !workflows[i].cron)
        .collect();
    let n = rng.range(6, 14);
    for k in 0..n {
        let at = rng.below(ms * 3 / 4);
        let key = format!("submit-{k}");
        out.push((
            Duration::from_millis(at),
            Act::Submit {
                workflow: *rng.pick(&plain),
                key: key.clone(),
            },
        ));
        // A client that retries the same submit through another node.
        if rng.chance(40) {
            out.push((
                Duration::from_millis(at + rng.below(3_000)),
                Act::Submit {
                    workflow: 0, // ignored: the key decides (a retry resends the same request)
                    key: key.clone(),
                },
            ));
        }
        if rng.chance(15) {
            out.push((
                Duration::from_millis(at + rng.range(500, 10_000)),
                Act::Cancel { key: key.clone() },
            ));
        }
        if rng.chance(30) {
            out.push((
                Duration::from_millis(at + rng.range(20_000, 40_000)),
                Act::Retry {
                    key: key.clone(),
                    retry_key: format!("retry-{k}"),
                },
            ));
        }
    }
    out.sort_by_key(|(t, _)| *t);
    out
}

/// How a task ended by its own script.
#[derive(Debug, Clone, PartialEq)]
pub enum Scripted {
    /// Finished and wrote these outputs.
    Finish(Value),
    /// Exited with this code (the user's failure).
    Fail(i32),
    /// Never ends by itself.
    Hang,
    /// Its executor dies abruptly (a platform failure).
    Crash,
}

/// What every task did, as the scripts ran it: the simulation's view from
/// outside kaon (like side-effect files counting executions).
#[derive(Debug, Default)]
pub struct Ledger {
    /// Task id -> times its command started (launches the executor ran).
    pub started: BTreeMap<String, u32>,
    /// Task id -> what its script does.
    pub scripted: BTreeMap<String, Scripted>,
    /// Task id -> agent it ran on.
    pub agent: BTreeMap<String, String>,
    /// Launches that no replica held a committed intent for (task ids).
    pub launched_without_intent: Vec<String>,
    /// Tasks a platform fault hit (their executor crashed, their agent was
    /// lost): a platform loss of these is no surprise.
    pub faulted: std::collections::BTreeSet<String>,
    /// Agents lost for good.
    pub lost_agents: std::collections::BTreeSet<String>,
    /// Task id -> (agent, executor id) it ran in.
    pub executor: BTreeMap<String, (String, String)>,
    /// Executors (agent, executor id) a task's own script crashed: kaon's
    /// executor runs many steps, so every step in one goes down with it
    /// (a platform fault for them; the ids are per leader and generation,
    /// so this names the executor's few incarnations, not others').
    pub crashed_executors: std::collections::BTreeSet<(String, String)>,
}

/// Shared ledger.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// What a task with this step spec and task id does (pure in its inputs).
pub fn script_for(seed: u64, task_id: &str, spec: &StepSpec) -> (Scripted, Script) {
    let h = hash(seed, task_id);
    let arg = |i: usize| spec.argv.get(i).map(String::as_str).unwrap_or("");
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    let (kind, fail, hang, crash) = (arg(1), num(2), num(3), num(4));
    let run_for = Duration::from_millis(200 + h % 3_000);
    let roll = (h >> 16) % 1000;
    let scripted = if roll < fail {
        Scripted::Fail(1 + (h % 3) as i32)
    } else if roll < fail + hang {
        Scripted::Hang
    } else if roll < fail + hang + crash {
        Scripted::Crash
    } else {
        Scripted::Finish(match kind {
            "gen" => json!({"items": (0..num(5)).collect::<Vec<_>>()}),
            "check" => json!({"done": (h >> 8).is_multiple_of(2) || num(5) >= 3}),
            _ => json!({"v": (h >> 24) % 1000}),
        })
    };
    let script = match &scripted {
        Scripted::Finish(v) => Script::finish(run_for, v.clone()),
        Scripted::Fail(code) => Script::fail(run_for, *code),
        Scripted::Hang => Script::hang(),
        Scripted::Crash => Script::crash(run_for, ExecutorExit::Code(137)),
    };
    let script = if (h >> 40).is_multiple_of(3) {
        script.with_progress(run_for / 2, Progress::Percent(50.0))
    } else {
        script
    };
    (scripted, script)
}

/// The step spec kaon's executor would run for `task`.
pub fn step_spec(task: &TaskInfo) -> StepSpec {
    task.data
        .as_ref()
        .and_then(|d| serde_json::from_slice(&d.0).ok())
        .unwrap_or_default()
}
