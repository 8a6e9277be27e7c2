//! Property tests of the pure core: random workflows (DAGs with foreach,
//! loops, retries, failure modes) meet random task outcomes, driven by the
//! in-memory leader (`kaon_core::sim`). Each property is checked on every
//! generated case; proptest shrinks any failure to a small workflow.

use std::collections::BTreeMap;

use kaon_core::Limits;
use kaon_core::events::{Body, Event, FailureCause, TaskState};
use kaon_core::plan::Body as PlanBody;
use kaon_core::sim::{Outcome, Sim};
use kaon_core::state::{InstKind, NodeStatus, RunStatus, State};
use proptest::prelude::*;
use serde_json::json;

#[derive(Debug, Clone)]
enum Shape {
    Task,
    Foreach { width: usize, cap: Option<u32> },
    Loop { max: u32 },
}

#[derive(Debug, Clone)]
struct StepGen {
    deps: Vec<usize>,
    shape: Shape,
    retry: (u32, u32, u32),
    on_failure: &'static str,
}

fn step_gen(i: usize) -> impl Strategy<Value = StepGen> {
    let deps = proptest::collection::btree_set(0..i.max(1), 0..=i.min(3))
        .prop_map(move |s| s.into_iter().filter(|&d| d < i).collect::<Vec<_>>());
    let shape = prop_oneof![
        4 => Just(Shape::Task),
        2 => (0usize..5, proptest::option::of(1u32..3)).prop_map(|(width, cap)| Shape::Foreach { width, cap }),
        1 => (1u32..4).prop_map(|max| Shape::Loop { max }),
    ];
    let on_failure = prop_oneof![Just("fail_fast"), Just("finish_running"), Just("ignore")];
    (deps, shape, (0u32..3, 0u32..3, 0u32..2), on_failure).prop_map(
        |(deps, shape, retry, on_failure)| StepGen {
            deps,
            shape,
            retry,
            on_failure,
        },
    )
}

fn workflow() -> impl Strategy<Value = Vec<StepGen>> {
    (1usize..9).prop_flat_map(|n| (0..n).map(step_gen).collect::<Vec<_>>())
}

fn spec_of(steps: &[StepGen]) -> String {
    let mut map = serde_json::Map::new();
    for (i, s) in steps.iter().enumerate() {
        let deps: Vec<String> = s.deps.iter().map(|d| format!("s{d}")).collect();
        let retry = json!({"user_errors": s.retry.0, "platform_errors": s.retry.1, "timeouts": s.retry.2,
                           "backoff": {"kind": "exponential", "initial": "1s", "max": "10s"}});
        let mut node = match &s.shape {
            Shape::Task => json!({"run": ["./t"], "retry": retry, "timeout": "1m"}),
            Shape::Foreach { width, cap } => {
                let items: Vec<usize> = (0..*width).collect();
                let mut f = json!({"items": serde_json::to_string(&items).unwrap()});
                if let Some(c) = cap {
                    f["max_concurrency"] = json!(c);
                }
                json!({"run": ["./t", "${{ item }}"], "retry": retry, "timeout": "1m", "foreach": f})
            }
            Shape::Loop { max } => json!({
                "repeat": {"until": "steps.body.outputs.ok == true", "max_iterations": max, "on_max_iterations": "succeed"},
                "steps": {"body": {"run": ["./b", "${{ iteration }}"], "retry": retry, "timeout": "1m"}}
            }),
        };
        node["depends_on"] = json!(deps);
        node["on_failure"] = json!(s.on_failure);
        map.insert(format!("s{i}"), node);
    }
    json!({"apiVersion": "kaon/v1", "name": "prop", "steps": map, "on_exit": {"exit": {"run": ["./e"], "timeout": "1m"}}}).to_string()
}

fn outcome_of(code: u8) -> Outcome {
    match code % 8 {
        0..=3 => Outcome::Finish(json!({"ok": code.is_multiple_of(2)}).to_string()),
        4 | 5 => Outcome::Fail(1),
        6 => Outcome::Lost,
        _ => Outcome::Hang,
    }
}

/// The instance id of `inst` in `run`.
fn inst_index(run: &kaon_core::state::Run, inst: &kaon_core::state::Instance) -> u32 {
    run.instances
        .iter()
        .position(|i| std::ptr::eq(i, inst))
        .expect("an instance of the run") as u32
}

/// Replays `log` checking invariants before and after every event.
fn replay_checking(log: &[Event]) -> Result<State, String> {
    let mut s = State::default();
    for e in log {
        if let Some(Body::TaskLaunchRequested(l)) = &e.body {
            let run = s.run(l.run_id).ok_or("launch for unknown run")?;
            let inst = run.inst(l.instance);
            // No step starts before its dependencies are done.
            if let Some(p) = inst.parent {
                let owner = run.inst(p);
                if matches!(owner.kind, InstKind::Group | InstKind::Iteration) {
                    for &d in &run.plan.node(inst.node).depends_on {
                        let dep = run.inst(owner.children[d as usize]);
                        if !dep.status.satisfies_dependents() {
                            return Err(format!(
                                "{} launched while its dependency {} is {:?}",
                                inst.path, dep.path, dep.status
                            ));
                        }
                    }
                }
            }
        }
        s.apply(e).map_err(|err| err.to_string())?;
        // At most one live attempt per step.
        for run in s.runs.values() {
            for inst in &run.instances {
                let live = inst
                    .attempts
                    .iter()
                    .filter(|a| !a.state.is_terminal())
                    .count();
                if live > 1 {
                    return Err(format!("{} has {live} live attempts", inst.path));
                }
            }
        }
    }
    Ok(s)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_workflows_meet_the_invariants(steps in workflow(), codes in proptest::collection::vec(any::<u8>(), 1..64), snap_at in any::<prop::sample::Index>(), failover_at in 0usize..40, downtime in 0usize..6) {
        let source = spec_of(&steps);
        let mut sim = Sim::new(Limits::default());
        let run_id = sim.submit(&source, BTreeMap::new()).map_err(|e| TestCaseError::fail(format!("rejected: {e}\n{source}")))?;
        let mut k = 0usize;
        let mut policy = |_: &str, _: u32| { k += 1; outcome_of(codes[k % codes.len()]) };
        let mut n = 0;
        loop {
            if sim.state.run(run_id).unwrap().status != RunStatus::Running {
                break;
            }
            if !sim.step(&mut policy) {
                // Nothing moves while the leader is down: it comes back.
                if sim.leader_up() { break; }
                sim.recover();
                continue;
            }
            n += 1;
            // The leader dies for a while: tasks go on running and ending
            // while nobody listens (their updates wait at the agent).
            if n == failover_at { sim.crash(); }
            if n == failover_at + downtime { sim.recover(); }
            prop_assert!(n < 50_000, "did not terminate");
        }
        let run = sim.state.run(run_id).unwrap();
        // Random DAGs with random outcomes always reach a terminal state.
        prop_assert_ne!(run.status, RunStatus::Running, "run stuck:\n{}", source);
        prop_assert_eq!(run.live_tasks, 0);
        prop_assert!(sim.live_tasks().is_empty(), "tasks left running: {:?}", sim.live_tasks());
        for inst in &run.instances {
            prop_assert!(inst.status.is_terminal() || inst.status == NodeStatus::Pending && inst.parent.is_some_and(|p| run.inst(p).status.is_terminal()),
                "{} left {:?}", inst.path, inst.status);
            if let PlanBody::Task(t) = &run.plan.node(inst.node).body {
                // Retry budgets obeyed, per kind.
                prop_assert!(inst.retries_used[0] <= t.retry.user_errors, "{}: user retries {:?}", inst.path, inst.retries_used);
                prop_assert!(inst.retries_used[1] <= t.retry.platform_errors, "{}: platform retries {:?}", inst.path, inst.retries_used);
                prop_assert!(inst.retries_used[2] <= t.retry.timeouts, "{}: timeout retries {:?}", inst.path, inst.retries_used);
                prop_assert!(inst.attempts.len() as u32 <= 1 + t.retry.user_errors + t.retry.platform_errors + t.retry.timeouts);
            }
            // What is recorded about each attempt is what the task did:
            // outputs are the ones it wrote, a failure spends the user
            // budget and a loss the platform budget (issue 8).
            for a in &inst.attempts {
                let task = run.task_id(inst_index(run, inst), a.number);
                let killed = a.kill.is_some();
                match (sim.outcome_of(&task), a.state) {
                    (Some(Outcome::Finish(out)), TaskState::Finished) if a.number as usize == inst.attempts.len() => {
                        let want: serde_json::Value = serde_json::from_str(out).unwrap();
                        let got: serde_json::Value = serde_json::from_str(inst.outputs.as_deref().unwrap_or("null")).unwrap();
                        prop_assert_eq!(got, want, "{}: outputs are not the ones it wrote", task);
                    }
                    (Some(Outcome::Finish(_)), TaskState::Finished) => {}
                    (Some(Outcome::Fail(code)), TaskState::Failed) => {
                        prop_assert_eq!(a.exit_code, Some(*code), "{}: exit code", task);
                        prop_assert_eq!(a.cause, Some(FailureCause::User), "{}: a failure is the user's", task);
                    }
                    (Some(Outcome::Lost), TaskState::Lost) => {
                        prop_assert_eq!(a.cause, Some(FailureCause::Platform), "{}", task);
                    }
                    (_, TaskState::Killed) if killed => {}
                    (None, TaskState::Lost) => {
                        prop_assert_eq!(a.cause, Some(FailureCause::Platform), "{}: never started", task);
                    }
                    (o, st) if st.is_terminal() => {
                        prop_assert!(false, "{}: recorded {:?} but the task did {:?}", task, st, o);
                    }
                    _ => {}
                }
            }
            // foreach: exactly one child per element, indexed in order.
            if inst.kind == InstKind::Foreach
                && let Some(items) = &inst.items {
                    prop_assert_eq!(inst.children.len(), items.len());
                    for (k, &c) in inst.children.iter().enumerate() {
                        prop_assert_eq!(run.inst(c).element, Some(k as u32));
                    }
                }
            // Loops stop at max_iterations.
            if inst.kind == InstKind::Loop
                && let PlanBody::Group { repeat: Some(r), .. } = &run.plan.node(inst.node).body {
                    prop_assert!(inst.iteration <= r.max_iterations, "{}: {} iterations > {}", inst.path, inst.iteration, r.max_iterations);
                    prop_assert_eq!(inst.children.len() as u32, inst.iteration);
                }
        }
        // Replaying the same events gives the same digest, with every
        // invariant holding at every index.
        let replayed = replay_checking(&sim.log).map_err(TestCaseError::fail)?;
        prop_assert_eq!(replayed.digest(), sim.state.digest());
        prop_assert_eq!(replayed.chain, sim.state.chain);
        // Snapshot at any index + the suffix equals the full replay.
        let cut = snap_at.index(sim.log.len() + 1);
        let mut prefix = State::default();
        for e in &sim.log[..cut] { prefix.apply(e).unwrap(); }
        let mut restored = State::from_snapshot(&prefix.to_snapshot()).unwrap();
        prop_assert_eq!(restored.digest(), prefix.digest(), "restore changed the state");
        for e in &sim.log[cut..] { restored.apply(e).unwrap(); }
        prop_assert_eq!(restored.digest(), sim.state.digest(), "snapshot at {} + suffix differs", cut);
    }
}
