//! What would a new definition have done? (`kaon workflow what-if`)
//!
//! A past run's recorded task outcomes (each step attempt's end: exit
//! code, outputs, lost, killed) are replayed through a new version of its
//! workflow in the in-memory world of [`crate::sim`]: the real decide and
//! apply, a scripted Mesos whose tasks end as the recorded ones did. Where
//! the new definition asks for an attempt nothing recorded (a new step, an
//! extra retry), the attempt is assumed to succeed with empty outputs, and
//! the report says so. The result compares, step by step, what the run did
//! with what the new definition would have done, before it is registered.

use std::collections::BTreeMap;

use crate::decide::{Command, SubmitTarget, status_name};
use crate::events::TaskState;
use crate::limits::Limits;
use crate::sim::{Outcome, Sim};

/// Steps of the world a replay may take at most (a definition whose run
/// never ends, e.g. a recorded attempt that was killed and now is not,
/// stops here and is reported still running).
pub const REPLAY_STEPS_MAX: usize = 1_000_000;

/// How one recorded attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedAttempt {
    /// 1-based.
    pub number: u32,
    /// Its last state.
    pub state: TaskState,
    /// Exit code, if one was reported.
    pub exit_code: Option<i32>,
}

/// A step of a recorded run.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedStep {
    /// Step path, e.g. `train[2]`.
    pub path: String,
    /// Its status (`succeeded`, `skipped`, ...).
    pub status: String,
    /// Its attempts, oldest first.
    pub attempts: Vec<RecordedAttempt>,
    /// Outputs of its successful attempt (JSON object), if any.
    pub outputs: Option<String>,
}

/// A past run as the log recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedRun {
    /// Run id.
    pub id: u64,
    /// Its status.
    pub status: String,
    /// The parameters it ran with.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Its steps.
    pub steps: Vec<RecordedStep>,
}

/// What one step did and would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepComparison {
    /// Step path.
    pub path: String,
    /// Recorded (status, attempts); None: the step did not exist.
    pub recorded: Option<(String, u32)>,
    /// Under the new definition (status, attempts); None: it would not
    /// exist.
    pub would: Option<(String, u32)>,
    /// Attempts the replay assumed succeeded because nothing recorded them.
    pub assumed_attempts: u32,
}

impl StepComparison {
    /// The new definition decides differently for this step.
    pub fn differs(&self) -> bool {
        self.recorded != self.would
    }
}

/// The replay of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhatIf {
    /// The recorded run.
    pub run: u64,
    /// Its recorded status.
    pub recorded_status: String,
    /// Its status under the new definition (`running` if the replay did not
    /// end: an attempt recorded killed that nothing now kills).
    pub would_status: String,
    /// Every step of either, in path order.
    pub steps: Vec<StepComparison>,
}

impl WhatIf {
    /// Steps whose decisions differ.
    pub fn differences(&self) -> impl Iterator<Item = &StepComparison> {
        self.steps.iter().filter(|s| s.differs())
    }
}

/// Replays `run`'s recorded outcomes through the workflow spec `source`
/// (YAML or JSON). Err: the spec does not compile, or the run's parameters
/// do not fit it.
pub fn what_if(source: &str, run: &RecordedRun) -> Result<WhatIf, String> {
    let mut sim = Sim::new(Limits {
        active_runs_max: usize::MAX,
        ..Limits::default()
    });
    let registered = sim
        .command(Command::RegisterWorkflow {
            source: source.to_string(),
        })
        .map_err(|e| format!("the new definition: {e:?}"))?;
    drop(registered);
    let name = sim
        .replay()
        .workflows
        .keys()
        .next()
        .cloned()
        .ok_or("the new definition registered no workflow")?;
    sim.command(Command::SubmitRun {
        target: SubmitTarget::Registered {
            name,
            version: None,
        },
        params: run.params.clone(),
        idempotency_key: String::new(),
    })
    .map_err(|e| {
        format!(
            "run {}'s parameters under the new definition: {e:?}",
            run.id
        )
    })?;
    let recorded: BTreeMap<&str, &RecordedStep> =
        run.steps.iter().map(|s| (s.path.as_str(), s)).collect();
    let mut assumed: BTreeMap<String, u32> = BTreeMap::new();
    let mut policy = |path: &str, attempt: u32| -> Outcome {
        let step = recorded.get(path);
        let Some(a) = step.and_then(|s| s.attempts.iter().find(|a| a.number == attempt)) else {
            *assumed.entry(path.to_string()).or_default() += 1;
            return Outcome::Finish("{}".into());
        };
        match a.state {
            TaskState::Finished => Outcome::Finish(
                step.and_then(|s| s.outputs.clone())
                    .filter(|o| !o.is_empty())
                    .unwrap_or_else(|| "{}".into()),
            ),
            TaskState::Failed => Outcome::Fail(a.exit_code.unwrap_or(1)),
            // Killed (a timeout, a cancel, a fail-fast): it ran until
            // something stopped it; the new definition decides whether
            // anything does.
            TaskState::Killed
            | TaskState::Killing
            | TaskState::Running
            | TaskState::Starting
            | TaskState::Staging => Outcome::Hang,
            _ => Outcome::Lost,
        }
    };
    sim.run_to_quiet(&mut policy, REPLAY_STEPS_MAX);
    let state = sim.replay();
    let replayed = state
        .runs
        .values()
        .next()
        .ok_or("the replay holds no run")?;
    let mut would: BTreeMap<String, (String, u32)> = BTreeMap::new();
    for i in replayed.instances.iter().filter(|i| !i.path.is_empty()) {
        would.insert(
            i.path.clone(),
            (status_name(i.status).to_string(), i.attempts.len() as u32),
        );
    }
    let mut paths: Vec<String> = would.keys().cloned().collect();
    paths.extend(run.steps.iter().map(|s| s.path.clone()));
    paths.sort();
    paths.dedup();
    let steps = paths
        .into_iter()
        .map(|path| StepComparison {
            recorded: recorded
                .get(path.as_str())
                .map(|s| (s.status.clone(), s.attempts.len() as u32)),
            would: would.get(&path).cloned(),
            assumed_attempts: assumed.get(&path).copied().unwrap_or(0),
            path,
        })
        .collect();
    Ok(WhatIf {
        run: run.id,
        recorded_status: run.status.clone(),
        would_status: crate::decide::run_status_name(replayed.status).to_string(),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "apiVersion: kaon/v1\nname: p\nsteps:\n  a: {run: [a]}\n  b: {depends_on: [a], run: [b], retry: {user_errors: 1}}\n  c: {depends_on: [b], when: 'steps.a.outputs.n > 5', run: [c]}\n";

    fn recorded() -> RecordedRun {
        let ok = |n| RecordedAttempt {
            number: n,
            state: TaskState::Finished,
            exit_code: Some(0),
        };
        RecordedRun {
            id: 7,
            status: "succeeded".into(),
            params: BTreeMap::new(),
            steps: vec![
                RecordedStep {
                    path: "a".into(),
                    status: "succeeded".into(),
                    attempts: vec![ok(1)],
                    outputs: Some(r#"{"n": 3}"#.into()),
                },
                RecordedStep {
                    path: "b".into(),
                    status: "succeeded".into(),
                    attempts: vec![
                        RecordedAttempt {
                            number: 1,
                            state: TaskState::Failed,
                            exit_code: Some(2),
                        },
                        ok(2),
                    ],
                    outputs: Some("{}".into()),
                },
                RecordedStep {
                    path: "c".into(),
                    status: "skipped".into(),
                    attempts: vec![],
                    outputs: None,
                },
            ],
        }
    }

    #[test]
    fn the_same_definition_decides_the_same() {
        let w = what_if(OLD, &recorded()).unwrap();
        assert_eq!(w.would_status, "succeeded");
        assert_eq!(w.differences().count(), 0, "{w:?}");
    }

    #[test]
    fn a_new_definition_shows_where_it_differs() {
        // b loses its retry (the run now fails), c's condition is true for
        // n = 3, and d is new.
        let new = "apiVersion: kaon/v1\nname: p\nsteps:\n  a: {run: [a]}\n  b: {depends_on: [a], run: [b]}\n  c: {depends_on: [b], when: 'steps.a.outputs.n > 2', run: [c]}\n  d: {depends_on: [a], run: [d]}\n";
        let w = what_if(new, &recorded()).unwrap();
        assert_eq!(w.would_status, "failed", "{w:?}");
        let by: BTreeMap<&str, &StepComparison> =
            w.steps.iter().map(|s| (s.path.as_str(), s)).collect();
        assert_eq!(by["b"].would, Some(("failed".into(), 1)));
        assert_eq!(by["c"].recorded, Some(("skipped".into(), 0)));
        assert_eq!(
            by["c"].would.as_ref().map(|w| w.0.as_str()),
            Some("skipped")
        );
        assert_eq!(by["d"].recorded, None);
        // d starts beside b; b's failure fails the run fast and cancels it.
        assert_eq!(by["d"].would, Some(("cancelled".into(), 1)));
        assert!(!by["a"].differs());

        // With the retry kept, c now runs (its condition holds for n = 3).
        let new2 = OLD.replace("n > 5", "n > 2");
        let w = what_if(&new2, &recorded()).unwrap();
        let c = w.steps.iter().find(|s| s.path == "c").unwrap();
        assert_eq!(c.would, Some(("succeeded".into(), 1)));
        assert_eq!(c.assumed_attempts, 1, "c never ran: its attempt is assumed");
    }

    #[test]
    fn a_broken_definition_says_why() {
        let e = what_if(
            "apiVersion: kaon/v1\nname: p\nsteps:\n  a: {depends_on: [a], run: [a]}\n",
            &recorded(),
        )
        .unwrap_err();
        assert!(e.starts_with("the new definition:"), "{e}");
    }
}
