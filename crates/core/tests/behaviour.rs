//! Focused tests of apply's and decide's contracts: loud failure on unknown
//! or out-of-order events, the hash chain, idempotent submits, Mesos update
//! handling (acknowledge only after commit, unknown tasks, oversized
//! outputs), progress rate limits, leader start, and cron schedules.

use std::collections::BTreeMap;

use kaon_core::Limits;
use kaon_core::decide::{
    Command, Effect, Input, Progress, Rejection, SubmitTarget, TaskUpdate, TimerKey, decide,
};
use kaon_core::events::{self, Body, Event, TaskState, pb};
use kaon_core::sim::{Outcome, Sim};
use kaon_core::state::{ApplyError, RunStatus, State};

const ONE_STEP: &str = "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a]}\n";

fn finish_all(_: &str, _: u32) -> Outcome {
    Outcome::Finish("{}".into())
}

#[test]
fn unknown_event_kind_fails_loudly() {
    let mut s = State::default();
    // An event whose body uses a field number this version does not know.
    let mut bytes = events::encode(&Event {
        index: 1,
        time_unix_ms: 5,
        body: None,
    });
    bytes.extend_from_slice(&[0xfa, 0x07, 0x00]); // field 1000, length-delimited, empty
    let err = s.apply_bytes(1, &bytes).unwrap_err();
    assert_eq!(err, ApplyError::UnknownEvent { index: 1 });
    assert_eq!(s.applied_index, 0, "nothing applied");
    let err = s.apply_bytes(1, &[0xff, 0xff, 0xff]).unwrap_err();
    assert!(matches!(err, ApplyError::Decode { index: 1, .. }), "{err}");
}

#[test]
fn events_apply_in_order_only() {
    let mut sim = Sim::new(Limits::default());
    sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    let mut s = State::default();
    let err = s.apply(&sim.log[1]).unwrap_err();
    assert_eq!(
        err,
        ApplyError::OutOfOrder {
            index: 2,
            expected: 1
        }
    );
}

#[test]
fn hash_chain_detects_any_change_to_history() {
    let mut sim = Sim::new(Limits::default());
    sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    sim.run_to_quiet(&mut finish_all, 100);
    let honest = sim.replay();
    let mut log = sim.log.clone();
    if let Some(Body::TaskStatusObserved(o)) = &mut log
        .iter_mut()
        .find(|e| matches!(e.body, Some(Body::TaskStatusObserved(_))))
        .unwrap()
        .body
    {
        o.message = "edited".into();
    }
    let mut tampered = State::default();
    for e in &log {
        tampered.apply(e).unwrap();
    }
    assert_ne!(
        tampered.chain, honest.chain,
        "an edited event must change the chain head"
    );
    assert_ne!(tampered.digest(), honest.digest());
}

#[test]
fn idempotent_submit_returns_the_same_run() {
    let mut sim = Sim::new(Limits::default());
    let cmd = || Command::SubmitRun {
        target: SubmitTarget::Inline {
            source: ONE_STEP.into(),
        },
        params: BTreeMap::new(),
        idempotency_key: "client-42".into(),
    };
    sim.command(cmd()).unwrap();
    let first = sim.state.idempotency["client-42"];
    let again = sim.command(cmd()).unwrap();
    assert_eq!(again.existing_run, Some(first));
    assert!(again.events.is_empty(), "a retried submit proposes nothing");
    assert_eq!(sim.state.runs.len(), 1);
    // Even if two submits race past decide, apply keeps one run.
    let d = decide(
        &State::default(),
        Input::Command(cmd()),
        0,
        &Limits::default(),
    )
    .unwrap();
    let run_submitted = d
        .events
        .into_iter()
        .find(|b| matches!(b, Body::RunSubmitted(_)))
        .unwrap();
    sim.propose(vec![run_submitted]);
    assert_eq!(sim.state.runs.len(), 1, "duplicate key applied as a no-op");
}

#[test]
fn commands_are_rejected_with_domain_errors() {
    let s = State::default();
    let l = Limits::default();
    let submit = |name: &str| Command::SubmitRun {
        target: SubmitTarget::Registered {
            name: name.into(),
            version: None,
        },
        params: BTreeMap::new(),
        idempotency_key: String::new(),
    };
    assert!(matches!(
        decide(&s, Input::Command(submit("nope")), 0, &l),
        Err(Rejection::NotFound(_))
    ));
    let bad = decide(
        &s,
        Input::Command(Command::RegisterWorkflow {
            source: "apiVersion: kaon/v1\nname: x\nsteps: {}\n".into(),
        }),
        0,
        &l,
    );
    match bad {
        Err(Rejection::InvalidSpec(errs)) => assert_eq!(
            errs[0].to_string(),
            "steps: a workflow needs at least one step"
        ),
        other => panic!("{other:?}"),
    }
    let r = decide(
        &s,
        Input::Command(Command::CancelRun {
            run_id: 9,
            reason: "x".into(),
        }),
        0,
        &l,
    );
    assert_eq!(r, Err(Rejection::NotFound("run 9".into())));
    // Parameters are type-checked, unknown ones named.
    let mut sim = Sim::new(l.clone());
    let src = "apiVersion: kaon/v1\nname: p\nparams:\n  n: {type: int}\nsteps:\n  a: {run: [x]}\n";
    let err = sim
        .submit(
            src,
            BTreeMap::from([
                ("n".into(), serde_json::json!("x")),
                ("m".into(), serde_json::json!(1)),
            ]),
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid argument: params.m: unknown parameter; params.n: expected int, got string \"x\""
    );
    // Active runs are bounded.
    let mut sim = Sim::new(Limits {
        active_runs_max: 1,
        ..Limits::default()
    });
    sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    let err = sim.submit(ONE_STEP, BTreeMap::new()).unwrap_err();
    assert!(matches!(err, Rejection::LimitExceeded(_)), "{err}");
}

#[test]
fn updates_are_acknowledged_only_after_their_event_commits() {
    let mut sim = Sim::new(Limits::default());
    let run = sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    let task_id = sim.launched[0].clone();
    let update = TaskUpdate {
        task_id: task_id.clone(),
        state: TaskState::Running,
        agent_id: "ag".into(),
        uuid: vec![7; 16],
        ..TaskUpdate::default()
    };
    let d = decide(
        &sim.state,
        Input::TaskUpdate(update.clone()),
        sim.now,
        &sim.limits,
    )
    .unwrap();
    assert!(
        d.effects
            .iter()
            .all(|e| !matches!(e, Effect::Acknowledge { .. })),
        "no ack before commit: {:?}",
        d.effects
    );
    assert!(matches!(d.events[0], Body::TaskStatusObserved(_)));
    let committed_index = sim.log.len() as u64 + 1;
    sim.propose(d.events);
    let ev = sim.log.last().unwrap().clone();
    assert_eq!(ev.index, committed_index);
    let after = decide(&sim.state, Input::Committed(&ev), sim.now, &sim.limits).unwrap();
    assert!(after.effects.contains(&Effect::Acknowledge {
        task_id: task_id.clone(),
        agent_id: "ag".into(),
        uuid: vec![7; 16]
    }));
    // A redelivery of the same update: acknowledged, no new event.
    let again = decide(&sim.state, Input::TaskUpdate(update), sim.now, &sim.limits).unwrap();
    assert!(again.events.is_empty());
    assert_eq!(again.effects.len(), 1);
    assert_eq!(sim.state.run(run).unwrap().status, RunStatus::Running);
}

#[test]
fn unknown_tasks_are_acknowledged_and_killed() {
    // A task of an older log (index 1 is no run here): acknowledged, and
    // killed so it does not run on unknown to kaon. (Tasks beyond what
    // this state has applied are left alone: tests/observations.rs.)
    let mut sim = Sim::new(Limits::default());
    sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    let u = TaskUpdate {
        task_id: "r1-i1-a1:ghost".into(),
        state: TaskState::Running,
        uuid: vec![1; 16],
        agent_id: "ag".into(),
        ..TaskUpdate::default()
    };
    let d = decide(&sim.state, Input::TaskUpdate(u), 0, &Limits::default()).unwrap();
    assert!(d.events.is_empty());
    assert_eq!(d.effects.len(), 2);
    assert!(
        matches!(&d.effects[1], Effect::KillTask { task_id, .. } if task_id == "r1-i1-a1:ghost")
    );
}

#[test]
fn oversized_or_invalid_outputs_fail_the_step() {
    let limits = Limits {
        outputs_bytes_max: 16,
        ..Limits::default()
    };
    for (outputs, reason) in [
        (
            r#"{"x": "0123456789abcdef"}"#,
            "REASON_KAON_OUTPUTS_TOO_LARGE",
        ),
        ("[1]", "REASON_KAON_OUTPUTS_INVALID"),
    ] {
        let mut sim = Sim::new(limits.clone());
        sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
        let u = TaskUpdate {
            task_id: sim.launched[0].clone(),
            state: TaskState::Finished,
            outputs_json: Some(outputs.into()),
            exit_code: Some(0),
            ..TaskUpdate::default()
        };
        let d = decide(&sim.state, Input::TaskUpdate(u), sim.now, &sim.limits).unwrap();
        match &d.events[0] {
            Body::TaskStatusObserved(o) => {
                assert_eq!(o.state(), TaskState::Failed);
                assert_eq!(o.reason, reason);
                assert!(o.outputs_json.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn progress_is_recorded_at_a_bounded_rate() {
    let mut sim = Sim::new(Limits::default());
    sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    let task = sim_task(&sim);
    let p = |pct| {
        Input::Progress(Progress {
            task_id: task.clone(),
            percent: pct,
            text: "x".repeat(2000),
        })
    };
    let d = decide(&sim.state, p(10), sim.now, &sim.limits).unwrap();
    assert_eq!(d.events.len(), 1);
    if let Body::ProgressReported(r) = &d.events[0] {
        assert_eq!(
            r.status_text.len(),
            sim.limits.progress_text_bytes_max,
            "text truncated to the limit"
        );
    }
    sim.propose(d.events);
    let soon = decide(&sim.state, p(20), sim.now + 500, &sim.limits).unwrap();
    assert!(soon.events.is_empty(), "within progress_interval_ms_min");
    let later = decide(&sim.state, p(250), sim.now + 1000, &sim.limits).unwrap();
    match &later.events[0] {
        Body::ProgressReported(r) => assert_eq!(r.percent, 100, "clamped"),
        other => panic!("{other:?}"),
    }
}

fn sim_task(sim: &Sim) -> String {
    sim.launched[0].clone()
}

#[test]
fn leader_start_resubscribes_reconciles_and_rearms() {
    let mut sim = Sim::new(Limits::default());
    sim.command(Command::RecordFramework {
        framework_id: "fw-1".into(),
    })
    .unwrap();
    let src = "apiVersion: kaon/v1\nname: t\ntimeout: 1h\nsteps:\n  a: {run: [./a], timeout: 5m}\n";
    let run = sim.submit(src, BTreeMap::new()).unwrap();
    let d = decide(&sim.state, Input::LeaderStarted, sim.now, &sim.limits).unwrap();
    let task = sim.launched[0].clone();
    assert_eq!(
        d.effects[0],
        Effect::Subscribe {
            framework_id: Some("fw-1".into())
        }
    );
    // What to reconcile is the leader's choice once Mesos answers the
    // subscription (tests/leader.rs): decide only says what to redo.
    assert!(sim.live_tasks().contains(&task));
    assert!(d.effects.iter().any(
        |e| matches!(e, Effect::ArmTimer { key: TimerKey::RunTimeout { run: r }, .. } if *r == run)
    ));
    assert!(d.effects.iter().any(|e| matches!(
        e,
        Effect::ArmTimer {
            key: TimerKey::StepTimeout { .. },
            ..
        }
    )));
    assert!(
        d.effects
            .iter()
            .all(|e| !matches!(e, Effect::LaunchTask(_))),
        "a new leader never relaunches"
    );
    assert!(d.events.is_empty(), "nothing to redo: {:?}", d.events);
}

#[test]
fn workflow_timeout_cancels_and_fails_the_run() {
    let mut sim = Sim::new(Limits::default());
    let src = "apiVersion: kaon/v1\nname: t\ntimeout: 10m\nsteps:\n  a: {run: [./a]}\n";
    let run = sim.submit(src, BTreeMap::new()).unwrap();
    sim.run_to_quiet(&mut |_: &str, _: u32| Outcome::Hang, 1000);
    let r = sim.state.run(run).unwrap();
    assert_eq!(r.status, RunStatus::Failed);
    assert!(r.message.contains("workflow timeout"), "{}", r.message);
}

const DAILY: &str = "apiVersion: kaon/v1\nname: nightly\nsteps:\n  a: {run: [./a]}\nschedules:\n  - cron: \"0 3 * * *\"\n    timezone: Europe/Amsterdam\n    overlap: OVERLAP\n    catchup_window: 3d\n";

fn fires(sim: &Sim) -> Vec<(i64, i32)> {
    sim.log
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::ScheduleFired(f)) => Some((f.fire_time_unix_ms, f.action)),
            _ => None,
        })
        .collect()
}

#[test]
fn cron_fires_in_its_time_zone_and_catches_up_within_the_window() {
    let mut sim = Sim::new(Limits::default());
    sim.command(Command::RegisterWorkflow {
        source: DAILY.replace("OVERLAP", "allow_all"),
    })
    .unwrap();
    // The first fire is armed for 03:00 Amsterdam = 02:00 UTC in January.
    let armed = sim.timer(&TimerKey::Schedule {
        workflow: "nightly".into(),
        index: 0,
    });
    assert_eq!(armed, Some(1_767_225_600_000 + 2 * 3_600_000));
    // The leader was away for 5 days: fires older than the 3-day window are
    // recorded as missed (once), the rest start runs.
    sim.now += 5 * 86_400_000 + 3 * 3_600_000;
    sim.failover();
    let f = fires(&sim);
    let missed: Vec<_> = f
        .iter()
        .filter(|(_, a)| *a == pb::FireAction::Missed as i32)
        .collect();
    let started: Vec<_> = f
        .iter()
        .filter(|(_, a)| *a == pb::FireAction::Started as i32)
        .collect();
    assert_eq!(missed.len(), 1, "{f:?}");
    assert_eq!(started.len(), 3, "{f:?}");
    assert_eq!(sim.state.runs.len(), 3);
    // Re-deciding after a failover does not start the same fires again.
    sim.failover();
    assert_eq!(sim.state.runs.len(), 3);
}

/// Issue 9, A: submitting a spec file runs it once; its schedules become
/// active only when the workflow is registered (same version, no new one),
/// and a later submitted edit leaves the registered schedules as they are.
#[test]
fn a_submitted_file_runs_once_and_registering_it_arms_its_schedules() {
    let mut sim = Sim::new(Limits::default());
    let src = DAILY.replace("OVERLAP", "allow_all");
    let key = TimerKey::Schedule {
        workflow: "nightly".into(),
        index: 0,
    };
    let run = sim.submit(&src, BTreeMap::new()).unwrap();
    assert_eq!(sim.timer(&key), None, "a submitted file arms no schedule");
    sim.run_to_quiet(&mut |_: &str, _: u32| Outcome::Finish("{}".into()), 1000);
    assert_eq!(sim.state.run(run).unwrap().status, RunStatus::Succeeded);
    sim.now += 3 * 86_400_000;
    sim.failover();
    assert!(fires(&sim).is_empty(), "{:?}", fires(&sim));
    assert_eq!(sim.state.runs.len(), 1, "only the submitted run");
    let w = &sim.state.workflows["nightly"];
    assert!(w.schedule_version().is_none() && w.schedules.is_empty());

    // Registered: the same version, now with its schedule armed.
    sim.command(Command::RegisterWorkflow {
        source: src.clone(),
    })
    .unwrap();
    let w = &sim.state.workflows["nightly"];
    assert_eq!(w.versions.len(), 1);
    assert_eq!(w.schedule_version().map(|v| v.version), Some(1));
    assert!(sim.timer(&key).is_some(), "registering arms the schedule");

    // A submitted edit (another cron) is a new version that runs once; the
    // registered version's schedule stays as it was.
    let edit = src.replace("0 3 * * *", "0 4 * * *");
    sim.submit(&edit, BTreeMap::new()).unwrap();
    let w = &sim.state.workflows["nightly"];
    assert_eq!(w.versions.len(), 2);
    assert_eq!(w.schedule_version().map(|v| v.version), Some(1));
    assert_eq!(w.schedules.len(), 1);
    // Replay agrees (snapshot round trip included).
    let replayed = kaon_core::State::from_snapshot(&sim.state.to_snapshot()).unwrap();
    assert_eq!(
        replayed.workflows["nightly"]
            .schedule_version()
            .map(|v| v.version),
        Some(1)
    );
}

#[test]
fn cron_overlap_policies() {
    for (policy, runs, actions) in [
        (
            "skip",
            1,
            vec![pb::FireAction::Started, pb::FireAction::Skipped],
        ),
        (
            "queue_one",
            1,
            vec![pb::FireAction::Started, pb::FireAction::Queued],
        ),
        (
            "cancel_previous",
            2,
            vec![pb::FireAction::Started, pb::FireAction::Started],
        ),
        (
            "allow_all",
            2,
            vec![pb::FireAction::Started, pb::FireAction::Started],
        ),
    ] {
        let mut sim = Sim::new(Limits::default());
        sim.command(Command::RegisterWorkflow {
            source: DAILY.replace("OVERLAP", policy),
        })
        .unwrap();
        // Tasks hang, so the first run is still active at the second fire.
        let mut hang = |_: &str, _: u32| Outcome::Hang;
        while sim.state.runs.is_empty() {
            assert!(sim.step(&mut hang));
        }
        sim.now += 86_400_000;
        sim.failover();
        let got: Vec<i32> = fires(&sim).iter().map(|(_, a)| *a).collect();
        let want: Vec<i32> = actions.iter().map(|a| *a as i32).collect();
        assert_eq!(got, want, "policy {policy}");
        assert_eq!(sim.state.runs.len(), runs, "policy {policy}");
        if policy == "cancel_previous" {
            let first = sim.state.runs.values().next().unwrap();
            assert!(first.ending.is_some(), "previous run is being cancelled");
        }
        if policy == "queue_one" {
            // When the active run ends, the queued fire starts.
            let first = *sim.state.runs.keys().next().unwrap();
            sim.command(Command::CancelRun {
                run_id: first,
                reason: "done".into(),
            })
            .unwrap();
            assert_eq!(
                sim.state.runs.len(),
                2,
                "queued fire started after the active run ended"
            );
        }
    }
}

#[test]
fn paused_schedules_do_not_fire() {
    let mut sim = Sim::new(Limits::default());
    sim.command(Command::RegisterWorkflow {
        source: DAILY.replace("OVERLAP", "skip"),
    })
    .unwrap();
    sim.command(Command::SetSchedulePaused {
        workflow: "nightly".into(),
        index: 0,
        paused: true,
    })
    .unwrap();
    sim.now += 2 * 86_400_000;
    sim.failover();
    assert!(sim.state.runs.is_empty());
    let err = sim
        .command(Command::SetSchedulePaused {
            workflow: "nightly".into(),
            index: 3,
            paused: true,
        })
        .unwrap_err();
    assert_eq!(
        err,
        Rejection::NotFound("workflow \"nightly\" has no schedule 3".into())
    );
}

#[test]
fn versions_increase_and_runs_stay_pinned() {
    let mut sim = Sim::new(Limits::default());
    let v1 = "apiVersion: kaon/v1\nname: wf\nsteps:\n  a: {run: [./v1]}\n";
    let v2 = "apiVersion: kaon/v1\nname: wf\nsteps:\n  a: {run: [./v2]}\n  b: {run: [./b]}\n";
    sim.command(Command::RegisterWorkflow { source: v1.into() })
        .unwrap();
    let submit = |version| Command::SubmitRun {
        target: SubmitTarget::Registered {
            name: "wf".into(),
            version,
        },
        params: BTreeMap::new(),
        idempotency_key: String::new(),
    };
    sim.command(submit(None)).unwrap();
    sim.command(Command::RegisterWorkflow { source: v2.into() })
        .unwrap();
    // Registering an identical spec again is not a new version.
    let again = sim
        .command(Command::RegisterWorkflow { source: v2.into() })
        .unwrap();
    assert_eq!(again.existing_version, Some(("wf".into(), 2)));
    assert_eq!(sim.state.workflows["wf"].versions.len(), 2);
    sim.command(submit(None)).unwrap();
    sim.command(submit(Some(1))).unwrap();
    let versions: Vec<u32> = sim.state.runs.values().map(|r| r.version).collect();
    assert_eq!(versions, vec![1, 2, 1]);
    // The first run keeps running version 1's one step after version 2 exists.
    let first = sim.state.runs.values().next().unwrap();
    assert_eq!(first.instances.len(), 2, "body + step a of version 1");
    let launches: Vec<Vec<String>> = sim
        .log
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::TaskLaunchRequested(l)) if l.step_path == "a" => Some(l.argv.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        launches,
        vec![
            vec!["./v1".to_string()],
            vec!["./v2".to_string()],
            vec!["./v1".to_string()]
        ]
    );
    let err = sim.command(submit(Some(7))).unwrap_err();
    assert_eq!(
        err,
        Rejection::NotFound("workflow \"wf\" version Some(7)".into())
    );
}

/// `RetryRun` starts a new run of the same version and parameters that
/// reuses every step that succeeded (outputs included) and runs the rest.
#[test]
fn retry_reuses_succeeded_steps_and_runs_the_failed_ones() {
    let spec = "apiVersion: kaon/v1\nname: r\nsteps:\n  \
        prep: {run: [./prep]}\n  \
        fan: {depends_on: [prep], foreach: {items: steps.prep.outputs.items, as: it}, run: [./fan, '${{ it }}']}\n  \
        last: {depends_on: [fan], run: [./last, '${{ steps.prep.outputs.tag }}']}\n";
    let mut sim = Sim::new(Limits::default());
    let first = sim.submit(spec, BTreeMap::new()).unwrap();
    // First run: prep and fan[0] succeed, fan[1] fails (no retries).
    let mut policy = |p: &str, _: u32| match p {
        "prep" => Outcome::Finish(r#"{"items": ["x", "y"], "tag": "t1"}"#.into()),
        "fan[1]" => Outcome::Fail(3),
        _ => Outcome::Finish("{}".into()),
    };
    sim.run_to_quiet(&mut policy, 1000);
    assert_eq!(sim.state.run(first).unwrap().status, RunStatus::Failed);
    let launched_before = sim.launched.len();

    // Retrying a run that is not failed or cancelled is refused.
    let other = sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    sim.run_to_quiet(&mut finish_all, 100);
    let err = sim
        .command(Command::RetryRun {
            run_id: other,
            idempotency_key: String::new(),
        })
        .unwrap_err();
    assert!(
        matches!(&err, Rejection::FailedPrecondition(m) if m.contains("succeeded")),
        "{err}"
    );
    assert!(matches!(
        sim.command(Command::RetryRun {
            run_id: 999_999,
            idempotency_key: String::new()
        }),
        Err(Rejection::NotFound(_))
    ));

    let d = sim
        .command(Command::RetryRun {
            run_id: first,
            idempotency_key: "retry-1".into(),
        })
        .unwrap();
    assert!(d.existing_run.is_none());
    let retry = *sim.state.idempotency.get("retry-1").unwrap();
    // Second time with the same key: the same retry run.
    let again = sim
        .command(Command::RetryRun {
            run_id: first,
            idempotency_key: "retry-1".into(),
        })
        .unwrap();
    assert_eq!(again.existing_run, Some(retry));
    let mut all_ok = |p: &str, _: u32| match p {
        "prep" => Outcome::Finish(r#"{"items": ["changed"], "tag": "t2"}"#.into()),
        _ => Outcome::Finish("{}".into()),
    };
    sim.run_to_quiet(&mut all_ok, 1000);
    let r = sim.state.run(retry).unwrap();
    assert_eq!(r.status, RunStatus::Succeeded, "{}", r.message);
    assert_eq!(r.retry_of, Some(first));
    let relaunched: Vec<&String> = sim.launched[launched_before..]
        .iter()
        .filter(|t| t.starts_with(&format!("r{retry}-")))
        .collect();
    // prep and fan[0] are reused (prep's old outputs drive the fan-out and
    // the template of `last`); fan[1] and last run.
    assert_eq!(relaunched.len(), 2, "{relaunched:?}");
    assert!(
        relaunched.iter().any(|t| t.ends_with(":fan[1]")),
        "{relaunched:?}"
    );
    assert!(
        relaunched.iter().any(|t| t.ends_with(":last")),
        "{relaunched:?}"
    );
    let prep = r.instances.iter().find(|i| i.path == "prep").unwrap();
    assert_eq!(prep.message, format!("reused from run {first}"));
    assert!(prep.attempts.is_empty());
    let last_launch = sim
        .log
        .iter()
        .rev()
        .find_map(|e| match &e.body {
            Some(Body::TaskLaunchRequested(l)) if l.run_id == retry && l.step_path == "last" => {
                Some(l.argv.clone())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(last_launch, vec!["./last".to_string(), "t1".to_string()]);
    assert_eq!(sim.replay().digest(), sim.state.digest());
}

/// A new leader records itself and its API address once per term; the
/// same announcement again records nothing.
#[test]
fn leader_announcement_is_recorded_once_per_change() {
    let mut sim = Sim::new(Limits::default());
    let announce = |term| Command::AnnounceLeader {
        node_id: 2,
        term,
        api_addr: "10.0.0.2:7070".into(),
    };
    let d = sim.command(announce(5)).unwrap();
    assert_eq!(d.events.len(), 1);
    assert_eq!(sim.state.leader, Some((2, 5)));
    assert_eq!(
        sim.state.api_addrs.get(&2).map(String::as_str),
        Some("10.0.0.2:7070")
    );
    assert!(sim.command(announce(5)).unwrap().events.is_empty());
    assert_eq!(sim.command(announce(6)).unwrap().events.len(), 1);
}

/// `run.id` and `run.workflow` render in every step (a step may name its
/// files after its run), not only in exit handlers.
#[test]
fn a_step_can_name_its_run() {
    let mut sim = Sim::new(Limits::default());
    sim.command(Command::SubmitRun {
        target: SubmitTarget::Inline {
            source: "apiVersion: kaon/v1\nname: named\nsteps:\n  a: {run: [./a, '${{ run.workflow }}-${{ run.id }}']}\n".into(),
        },
        params: BTreeMap::new(),
        idempotency_key: String::new(),
    })
    .unwrap();
    let run = *sim.state.runs.keys().next().unwrap();
    let argv: Vec<Vec<String>> = sim
        .log
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::TaskLaunchRequested(l)) => Some(l.argv.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(argv, vec![vec!["./a".to_string(), format!("named-{run}")]]);
}

/// Issue 12: a command asked by an authenticated caller records who asked
/// in its events (and survives replay); a submitter may cancel or retry
/// only its own runs, decided against the run's recorded submitter.
#[test]
fn commands_record_who_asked_and_submitters_act_on_their_own_runs_only() {
    let by = |principal: &str, role: &str, command: Command| Command::By {
        actor: pb::Actor {
            principal: principal.into(),
            method: "token".into(),
            role: role.into(),
        },
        command: Box::new(command),
    };
    let mut sim = Sim::new(Limits::default());
    let submit = Command::SubmitRun {
        target: SubmitTarget::Inline {
            source: ONE_STEP.into(),
        },
        params: BTreeMap::new(),
        idempotency_key: String::new(),
    };
    let d = sim.command(by("alice", "submitter", submit)).unwrap();
    for b in &d.events {
        let who = match b {
            Body::RunSubmitted(e) => e.requested_by.as_ref(),
            Body::WorkflowRegistered(e) => e.requested_by.as_ref(),
            _ => continue,
        };
        assert_eq!(who.map(|a| a.principal.as_str()), Some("alice"), "{b:?}");
    }
    let run = *sim.state.runs.keys().next().unwrap();
    assert_eq!(
        sim.state.run(run).unwrap().submitted_by.as_deref(),
        Some("alice")
    );
    assert_eq!(
        sim.replay().run(run).unwrap().submitted_by.as_deref(),
        Some("alice"),
        "replay derives the submitter from the log"
    );
    let cancel = || Command::CancelRun {
        run_id: run,
        reason: "stop".into(),
    };
    match sim.command(by("bob", "submitter", cancel())) {
        Err(Rejection::PermissionDenied(m)) => assert!(
            m.contains("bob (role submitter) may not cancel run")
                && m.contains("submitted by alice"),
            "{m}"
        ),
        other => panic!("bob cancelled alice's run: {other:?}"),
    }
    assert!(sim.state.run(run).unwrap().status == RunStatus::Running);
    // An operator may cancel any run; the event names the operator.
    let d = sim.command(by("olga", "operator", cancel())).unwrap();
    match &d.events[..] {
        [Body::RunCancelRequested(e)] => {
            assert_eq!(e.requested_by.as_ref().unwrap().principal, "olga")
        }
        other => panic!("{other:?}"),
    }
    sim.run_to_quiet(&mut finish_all, 100);
    let retry = || Command::RetryRun {
        run_id: run,
        idempotency_key: String::new(),
    };
    assert!(matches!(
        sim.command(by("bob", "submitter", retry())),
        Err(Rejection::PermissionDenied(_))
    ));
    sim.command(by("alice", "submitter", retry())).unwrap();
    // Commands without an actor (no authentication) record none.
    let d = sim
        .command(Command::SubmitRun {
            target: SubmitTarget::Inline {
                source: ONE_STEP.into(),
            },
            params: BTreeMap::new(),
            idempotency_key: String::new(),
        })
        .unwrap();
    assert!(d.events.iter().all(|b| match b {
        Body::RunSubmitted(e) => e.requested_by.is_none(),
        _ => true,
    }));
}

/// Issue 12, section 4: the core decides when the chain head is signed
/// and records the shell's signature only for this log's head; not while
/// a voter cannot apply `ChainHeadSigned`.
#[test]
fn the_leader_signs_its_chain_head_at_the_interval_and_records_only_true_heads() {
    let limits = Limits {
        sign_every_ms: 1_000,
        ..Limits::default()
    };
    let mut sim = Sim::new(limits.clone());
    sim.submit(ONE_STEP, BTreeMap::new()).unwrap();
    let s = sim.state.clone();
    let armed = decide(&s, Input::LeaderStarted, 10_000, &limits).unwrap();
    assert!(
        armed.effects.iter().any(
            |e| matches!(e, Effect::ArmTimer { key: TimerKey::SignHead, at_ms } if *at_ms <= 12_000)
        ),
        "{:?}",
        armed.effects
    );
    let fired = decide(&s, Input::TimerFired(TimerKey::SignHead), 12_000, &limits).unwrap();
    let (index, head) = fired
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::SignChainHead { index, chain_head } => Some((*index, *chain_head)),
            _ => None,
        })
        .expect("a signature is asked for");
    assert_eq!((index, head), (s.applied_index, s.chain));
    assert!(fired.effects.iter().any(
        |e| matches!(e, Effect::ArmTimer { key: TimerKey::SignHead, at_ms } if *at_ms == 13_000)
    ));
    let record = |head: Vec<u8>| Command::RecordChainSignature {
        index,
        chain_head: head,
        public_key: vec![1; 32],
        signature: vec![2; 64],
    };
    assert!(matches!(
        sim.command(record(vec![9; 32])),
        Err(Rejection::FailedPrecondition(_))
    ));
    let d = sim.command(record(head.to_vec())).unwrap();
    assert!(matches!(&d.events[..], [Body::ChainHeadSigned(e)] if e.index == index));
    assert_eq!(sim.state.signed_index, index);
    // Nothing new but the signature: nothing to sign.
    let again = decide(
        &sim.state,
        Input::TimerFired(TimerKey::SignHead),
        13_000,
        &limits,
    )
    .unwrap();
    assert!(
        !again
            .effects
            .iter()
            .any(|e| matches!(e, Effect::SignChainHead { .. }))
    );
    // A voter on schema 2 cannot apply it: no signing.
    let old = Limits {
        event_schema_max: 2,
        ..limits
    };
    let d = decide(&s, Input::TimerFired(TimerKey::SignHead), 12_000, &old).unwrap();
    assert!(d.effects.is_empty(), "{:?}", d.effects);
}

#[test]
fn an_exit_handler_sees_the_status_the_run_ends_with() {
    // `run.status` in an exit handler is what RunFinished records:
    // cancelled for a cancelled run (its killed body reads `failed`).
    let src = "apiVersion: kaon/v1\nname: x\nsteps:\n  a: {run: [./a]}\non_exit:\n  bye: {run: [echo, '${{ run.status }}', '${{ run.cancelled }}']}\n";
    let argv_of_bye = |sim: &Sim| -> Vec<String> {
        sim.log
            .iter()
            .find_map(|e| match &e.body {
                Some(Body::TaskLaunchRequested(t)) if t.step_path == "on_exit/bye" => {
                    Some(t.argv.clone())
                }
                _ => None,
            })
            .expect("the exit handler launched")
    };
    for (cancel, want) in [(true, "cancelled"), (false, "succeeded")] {
        let mut sim = Sim::new(Limits::default());
        let run = sim.submit(src, BTreeMap::new()).unwrap();
        let mut policy = |path: &str, _: u32| {
            if path == "a" && cancel {
                Outcome::Hang
            } else {
                Outcome::Finish("{}".into())
            }
        };
        if cancel {
            while sim.state.runs[&run].live_tasks == 0 {
                assert!(sim.step(&mut policy));
            }
            sim.command(Command::CancelRun {
                run_id: run,
                reason: "enough".into(),
            })
            .unwrap();
        }
        while sim.state.runs[&run].status == RunStatus::Running {
            assert!(sim.step(&mut policy), "stuck");
        }
        let argv = argv_of_bye(&sim);
        assert_eq!(
            argv[1..],
            [want.to_string(), cancel.to_string()],
            "{argv:?}"
        );
        let ended = if cancel {
            RunStatus::Cancelled
        } else {
            RunStatus::Succeeded
        };
        assert_eq!(sim.state.runs[&run].status, ended);
    }
}

#[test]
fn a_retry_runs_the_exit_handler_again() {
    // The exit handler reports its own run's result: a retry that reuses
    // the body's succeeded steps still runs it (with the new status).
    let spec = "apiVersion: kaon/v1\nname: r\nsteps:\n  a: {run: [./a]}\n  b: {depends_on: [a], run: [./b]}\non_exit:\n  notify: {run: [echo, '${{ run.status }}']}\n";
    let mut sim = Sim::new(Limits::default());
    let first = sim.submit(spec, BTreeMap::new()).unwrap();
    let mut b_fails = |p: &str, _: u32| match p {
        "b" => Outcome::Fail(1),
        _ => Outcome::Finish("{}".into()),
    };
    sim.run_to_quiet(&mut b_fails, 1000);
    assert_eq!(sim.state.run(first).unwrap().status, RunStatus::Failed);
    sim.command(Command::RetryRun {
        run_id: first,
        idempotency_key: String::new(),
    })
    .unwrap();
    let retry = *sim.state.runs.keys().last().unwrap();
    sim.run_to_quiet(&mut finish_all, 1000);
    assert_eq!(sim.state.run(retry).unwrap().status, RunStatus::Succeeded);
    let launches: Vec<(u64, String, Vec<String>)> = sim
        .log
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::TaskLaunchRequested(t)) => {
                Some((t.run_id, t.step_path.clone(), t.argv.clone()))
            }
            _ => None,
        })
        .collect();
    let of = |run: u64| -> Vec<&str> {
        launches
            .iter()
            .filter(|l| l.0 == run)
            .map(|l| l.1.as_str())
            .collect()
    };
    assert_eq!(of(first), ["a", "b", "on_exit/notify"]);
    // `a` is reused; `b` and the exit handler run.
    assert_eq!(of(retry), ["b", "on_exit/notify"]);
    let notify = launches.iter().rfind(|l| l.1 == "on_exit/notify").unwrap();
    assert_eq!(notify.2[1], "succeeded");
}
