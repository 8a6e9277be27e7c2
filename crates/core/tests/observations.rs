//! What a Mesos status update means (issue 8): a reconciliation answer is
//! a report of the task's state, never its result. These tests drive
//! `decide` and `apply` directly (a tiny leader: decide, commit, decide on
//! the committed event), so each names one rule of the model.

use kaon_core::Limits;
use kaon_core::decide::{Command, Effect, Input, SubmitTarget, TaskUpdate, TimerKey, decide};
use kaon_core::events::{Body, Event, FailureCause, TaskState, pb};
use kaon_core::state::{NodeStatus, RunStatus, State};

/// A minimal leader over `State`: every decision's events are committed at
/// once, and decide runs on each committed event; effects are collected.
struct Leader {
    state: State,
    log: Vec<Event>,
    now: i64,
    limits: Limits,
    effects: Vec<Effect>,
}

impl Leader {
    fn new() -> Leader {
        Leader {
            state: State::default(),
            log: Vec::new(),
            now: 1_767_225_600_000,
            limits: Limits::default(),
            effects: Vec::new(),
        }
    }

    fn input(&mut self, input: Input<'_>) {
        let d = decide(&self.state, input, self.now, &self.limits).expect("accepted");
        self.effects.extend(d.effects);
        self.commit(d.events);
    }

    fn commit(&mut self, bodies: Vec<Body>) {
        let mut queue = Vec::new();
        for body in bodies {
            let e = Event {
                index: self.log.len() as u64 + 1,
                time_unix_ms: self.now,
                body: Some(body),
            };
            self.state.apply(&e).expect("applies");
            self.log.push(e.clone());
            queue.push(e);
        }
        for e in queue {
            self.input(Input::Committed(&e));
        }
    }

    fn submit(&mut self, source: &str) -> u64 {
        self.input(Input::Command(Command::SubmitRun {
            target: SubmitTarget::Inline {
                source: source.into(),
            },
            params: Default::default(),
            idempotency_key: String::new(),
        }));
        *self.state.active_runs.iter().last().expect("a run")
    }

    /// Task ids launched so far, in order.
    fn launched(&self) -> Vec<String> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::LaunchTask(l) => Some(l.task_id.clone()),
                _ => None,
            })
            .collect()
    }

    fn update(&mut self, u: TaskUpdate) {
        self.input(Input::TaskUpdate(u));
    }

    fn observations(&self) -> Vec<pb::TaskStatusObserved> {
        self.log
            .iter()
            .filter_map(|e| match &e.body {
                Some(Body::TaskStatusObserved(o)) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }
}

const GEN_FAN: &str = "apiVersion: kaon/v1\nname: gf\nsteps:\n  gen: {run: [./gen_task]}\n  fan: {depends_on: [gen], foreach: {items: steps.gen.outputs.items}, run: ['./f', '${{ item }}']}\n";

/// A reliable update from kaon's executor (uuid: acknowledge after commit).
fn reliable(task: &str, state: TaskState, uuid: u8) -> TaskUpdate {
    TaskUpdate {
        task_id: task.into(),
        state,
        source: "SOURCE_EXECUTOR".into(),
        agent_id: "agent-1".into(),
        uuid: vec![uuid; 16],
        ..TaskUpdate::default()
    }
}

/// The master's answer to a reconciliation (no uuid, no data).
fn reconciled(task: &str, state: TaskState, message: &str) -> TaskUpdate {
    TaskUpdate {
        task_id: task.into(),
        state,
        reason: "REASON_RECONCILIATION".into(),
        message: message.into(),
        source: "SOURCE_MASTER".into(),
        agent_id: "agent-1".into(),
        ..TaskUpdate::default()
    }
}

#[test]
fn a_reconciliation_answer_is_not_a_result_the_reliable_update_is() {
    let mut l = Leader::new();
    let run = l.submit(GEN_FAN);
    let gen_task = l.launched()[0].clone();
    l.update(reliable(&gen_task, TaskState::Running, 1));
    // Gen finished while no leader listened: the master answers its latest
    // state before the agent's retry of the reliable update arrives.
    l.update(reconciled(
        &gen_task,
        TaskState::Finished,
        "Reconciliation: Latest task state",
    ));
    let inst = &l.state.run(run).unwrap().instances[1];
    assert_eq!(inst.status, NodeStatus::Running, "gen_task is not over yet");
    assert!(inst.outputs.is_none(), "no outputs from a state report");
    assert!(inst.live_attempt().is_some(), "the attempt stays live");
    let o = l.observations().pop().unwrap();
    assert!(o.state_only && o.mesos_uuid.is_empty(), "{o:?}");
    assert!(
        l.effects.iter().any(|e| matches!(
            e,
            Effect::ArmTimer {
                key: TimerKey::ReliableUpdate { .. },
                at_ms
            } if *at_ms == l.now + l.limits.reliable_update_wait_ms
        )),
        "the wait for the reliable update is bounded"
    );
    assert_eq!(l.launched().len(), 1, "nothing else starts yet");
    // A second report changes nothing.
    let before = l.log.len();
    l.update(reconciled(
        &gen_task,
        TaskState::Finished,
        "Reconciliation: Latest task state",
    ));
    assert_eq!(l.log.len(), before);
    // The reliable update carries the outputs: they are recorded and the
    // foreach expands over them.
    let mut fin = reliable(&gen_task, TaskState::Finished, 2);
    fin.exit_code = Some(0);
    fin.outputs_json = Some(r#"{"items": [1, 2, 3]}"#.into());
    l.update(fin);
    let r = l.state.run(run).unwrap();
    assert_eq!(r.instances[1].status, NodeStatus::Succeeded);
    assert_eq!(
        r.instances[1].outputs.as_deref(),
        Some(r#"{"items": [1, 2, 3]}"#)
    );
    assert_eq!(l.launched().len(), 4, "gen_task + one step per item");
    assert!(l.effects.contains(&Effect::Acknowledge {
        task_id: gen_task.clone(),
        agent_id: "agent-1".into(),
        uuid: vec![2; 16]
    }));
}

#[test]
fn a_failure_reported_by_reconciliation_is_the_users_once_its_update_comes() {
    let mut l = Leader::new();
    let run = l.submit("apiVersion: kaon/v1\nname: bad\nsteps:\n  bad: {run: [./bad], retry: {user_errors: 0, platform_errors: 3}}\n");
    let bad = l.launched()[0].clone();
    l.update(reconciled(
        &bad,
        TaskState::Failed,
        "Reconciliation: Latest task state",
    ));
    assert_eq!(
        l.state.run(run).unwrap().status,
        RunStatus::Running,
        "no retry decided on a state report"
    );
    let mut failed = reliable(&bad, TaskState::Failed, 3);
    failed.exit_code = Some(3);
    failed.message = "exited with code 3".into();
    l.update(failed);
    let r = l.state.run(run).unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    let a = &r.instances[1].attempts;
    assert_eq!(a.len(), 1, "not retried: {a:?}");
    assert_eq!(a[0].cause, Some(FailureCause::User));
    assert_eq!(a[0].exit_code, Some(3));
    assert_eq!(l.launched().len(), 1, "the command ran once");
    let o = l.observations().pop().unwrap();
    assert_eq!(o.cause(), FailureCause::User, "decide recorded the budget");
}

#[test]
fn no_reliable_update_within_the_limit_is_a_platform_loss() {
    let mut l = Leader::new();
    let run = l.submit(
        "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a], retry: {platform_errors: 1}}\n",
    );
    let a = l.launched()[0].clone();
    l.update(reconciled(
        &a,
        TaskState::Finished,
        "Reconciliation: Latest task state",
    ));
    let key = TimerKey::ReliableUpdate {
        run,
        inst: 1,
        attempt: 1,
    };
    // Early: the timer re-arms itself.
    l.now += l.limits.reliable_update_wait_ms - 1;
    l.input(Input::TimerFired(key.clone()));
    assert_eq!(l.state.run(run).unwrap().instances[1].attempts.len(), 1);
    l.now += 1;
    l.input(Input::TimerFired(key));
    let o = l.observations().pop().unwrap();
    assert_eq!(o.state(), TaskState::Lost);
    assert_eq!(o.source_kind(), pb::TaskSource::Kaon);
    assert_eq!(o.cause(), FailureCause::Platform);
    assert!(o.message.contains("reliable_update_wait_ms"), "{o:?}");
    let inst = &l.state.run(run).unwrap().instances[1];
    assert_eq!(inst.retries_used, [0, 1, 0], "one platform retry");
}

#[test]
fn a_task_mesos_does_not_know_is_lost_at_once() {
    let mut l = Leader::new();
    let run = l.submit(
        "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a], retry: {platform_errors: 1}}\n",
    );
    let a = l.launched()[0].clone();
    l.update(reconciled(
        &a,
        TaskState::Lost,
        "Reconciliation: Task is unknown",
    ));
    let inst = &l.state.run(run).unwrap().instances[1];
    assert_eq!(inst.attempts[0].state, TaskState::Lost);
    assert_eq!(inst.attempts[0].cause, Some(FailureCause::Platform));
    assert_eq!(inst.retries_used, [0, 1, 0]);
}

#[test]
fn leader_start_rearms_the_wait_for_a_reliable_update() {
    let mut l = Leader::new();
    let run = l.submit("apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a]}\n");
    let a = l.launched()[0].clone();
    let reported_at = l.now;
    l.update(reconciled(
        &a,
        TaskState::Finished,
        "Reconciliation: Latest task state",
    ));
    l.now += 5_000;
    let d = decide(&l.state, Input::LeaderStarted, l.now, &l.limits).unwrap();
    assert!(
        d.effects.contains(&Effect::ArmTimer {
            key: TimerKey::ReliableUpdate {
                run,
                inst: 1,
                attempt: 1
            },
            at_ms: reported_at + l.limits.reliable_update_wait_ms,
        }),
        "{:?}",
        d.effects
    );
}

#[test]
fn a_redundant_intent_is_never_a_second_launch() {
    // Two inputs decided against one state both wake step c: two identical
    // intents are proposed; apply records the second as a no-op, and only
    // the accepted one becomes a launch effect.
    let mut l = Leader::new();
    l.submit("apiVersion: kaon/v1\nname: j\nsteps:\n  a: {run: [./a]}\n  b: {run: [./b]}\n  c: {depends_on: [a, b], run: [./c]}\n");
    let ids = l.launched();
    let (a, b) = (ids[0].clone(), ids[1].clone());
    for (t, u) in [(&a, 1), (&b, 2)] {
        let mut fin = reliable(t, TaskState::Finished, u);
        fin.outputs_json = Some("{}".into());
        // Decided, committed, but not yet reacted to.
        let d = decide(&l.state, Input::TaskUpdate(fin), l.now, &l.limits).unwrap();
        for body in d.events {
            let e = Event {
                index: l.log.len() as u64 + 1,
                time_unix_ms: l.now,
                body: Some(body),
            };
            l.state.apply(&e).unwrap();
            l.log.push(e);
        }
    }
    // Both committed observations are decided against the same state: each
    // proposes c's launch.
    let n = l.log.len();
    let (e1, e2) = (l.log[n - 2].clone(), l.log[n - 1].clone());
    let d1 = decide(&l.state, Input::Committed(&e1), l.now, &l.limits).unwrap();
    let d2 = decide(&l.state, Input::Committed(&e2), l.now, &l.limits).unwrap();
    let intents: Vec<Body> = d1.events.into_iter().chain(d2.events).collect();
    assert_eq!(intents.len(), 2, "{intents:?}");
    assert!(
        intents
            .iter()
            .all(|b| matches!(b, Body::TaskLaunchRequested(_)))
    );
    let before = l.launched().len();
    l.commit(intents);
    assert_eq!(
        l.launched().len(),
        before + 1,
        "one launch for one accepted intent"
    );
}

#[test]
fn an_observation_written_before_causes_were_recorded_replays_as_before() {
    // Events from older versions carry no cause: apply classifies by the
    // Mesos reason, as those versions did.
    let mut l = Leader::new();
    let run = l.submit("apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a]}\n");
    let old = pb::TaskStatusObserved {
        run_id: run,
        instance: 1,
        attempt: 1,
        state: TaskState::Failed as i32,
        reason: "REASON_EXECUTOR_TERMINATED".into(),
        ..Default::default()
    };
    let e = Event {
        index: l.log.len() as u64 + 1,
        time_unix_ms: l.now,
        body: Some(Body::TaskStatusObserved(old)),
    };
    l.state.apply(&e).unwrap();
    let a = &l.state.run(run).unwrap().instances[1].attempts[0];
    assert_eq!(a.cause, Some(FailureCause::Platform));
}

#[test]
fn a_kill_that_never_took_effect_is_sent_again() {
    // A step timeout asks for a kill; the kill is lost (a Mesos connection
    // broke): the task is still running when the resend timer fires, so the
    // kill goes out again; a new leader sends it again too.
    let mut l = Leader::new();
    let run =
        l.submit("apiVersion: kaon/v1\nname: slow\nsteps:\n  a: {run: [./a], timeout: 10s}\n");
    let a = l.launched()[0].clone();
    l.update(reliable(&a, TaskState::Running, 1));
    l.now += 10_000;
    l.input(Input::TimerFired(TimerKey::StepTimeout {
        run,
        inst: 1,
        attempt: 1,
    }));
    let kills = |l: &Leader| {
        l.effects
            .iter()
            .filter(|e| matches!(e, Effect::KillTask { task_id, .. } if *task_id == a))
            .count()
    };
    assert_eq!(kills(&l), 1);
    let key = TimerKey::KillResend {
        run,
        inst: 1,
        attempt: 1,
    };
    assert!(l.effects.contains(&Effect::ArmTimer {
        key: key.clone(),
        at_ms: l.now + l.limits.kill_resend_ms
    }));
    l.now += l.limits.kill_resend_ms;
    l.input(Input::TimerFired(key.clone()));
    assert_eq!(kills(&l), 2, "the kill is sent again");
    let d = decide(&l.state, Input::LeaderStarted, l.now, &l.limits).unwrap();
    assert!(
        d.effects
            .iter()
            .any(|e| matches!(e, Effect::KillTask { task_id, .. } if *task_id == a)),
        "a new leader sends the kill again"
    );
    // Once it ended, nothing more is sent.
    l.update(reliable(&a, TaskState::Killed, 2));
    let before = kills(&l);
    l.now += l.limits.kill_resend_ms;
    l.input(Input::TimerFired(key));
    assert_eq!(kills(&l), before);
}

#[test]
fn a_leader_behind_the_log_leaves_newer_tasks_alone() {
    // A deposed leader that has not applied the newest events still holds
    // the Mesos subscription for a moment. An update for a task a newer
    // leader launched (a later attempt, a later run) must not be
    // acknowledged (Mesos would forget the task and report it unknown to
    // the real leader) nor killed.
    let mut l = Leader::new();
    let run = l.submit("apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a]}\n");
    let a = l.launched()[0].clone();
    let newer_attempt = a.replace("-a1:", "-a2:");
    let newer_run = format!("r{}-i1-a1:a", l.state.applied_index + 10);
    for t in [newer_attempt, newer_run] {
        let d = decide(
            &l.state,
            Input::TaskUpdate(reliable(&t, TaskState::Finished, 7)),
            l.now,
            &l.limits,
        )
        .unwrap();
        assert!(d.events.is_empty() && d.effects.is_empty(), "{t}: {d:?}");
    }
    // A task of an older log this state knows nothing of is still cleaned up.
    let d = decide(
        &l.state,
        Input::TaskUpdate(reliable("r1-i1-a1:ghost", TaskState::Running, 8)),
        l.now,
        &l.limits,
    )
    .unwrap();
    assert_eq!(d.effects.len(), 2, "acknowledged and killed: {d:?}");
    assert!(run > 1);
}
