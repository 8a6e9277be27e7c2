//! Retention (issue 11, "state that does not grow forever"): finished runs
//! leave the live state `run_retention_ms` after they ended, decided by the
//! leader in the pure core (`RunsRetired` events), across failovers; the
//! archive (the log) keeps them, and replay and snapshots agree.

use std::collections::{BTreeMap, BTreeSet};

use kaon_core::Limits;
use kaon_core::decide::{Command, SubmitTarget};
use kaon_core::events::{self, Body, Event};
use kaon_core::sim::{Outcome, Sim};
use kaon_core::state::{RunStatus, State};

const SPEC: &str = "apiVersion: kaon/v1\nname: two\nsteps:\n  a: {run: [./a]}\n  b: {depends_on: [a], run: [./b]}\n";
const HANG: &str = "apiVersion: kaon/v1\nname: hang\nsteps:\n  h: {run: [./h]}\n";

const RETENTION_MS: i64 = 3_600_000;

fn sim() -> Sim {
    Sim::new(Limits {
        run_retention_ms: RETENTION_MS,
        ..Limits::default()
    })
}

fn submit_keyed(sim: &mut Sim, source: &str, key: &str) -> u64 {
    let before = sim.log.len();
    let d = sim
        .command(Command::SubmitRun {
            target: SubmitTarget::Inline {
                source: source.into(),
            },
            params: BTreeMap::new(),
            idempotency_key: key.into(),
        })
        .expect("accepted");
    d.existing_run.unwrap_or_else(|| {
        sim.log[before..]
            .iter()
            .find(|e| matches!(e.body, Some(Body::RunSubmitted(_))))
            .expect("a submit commits RunSubmitted")
            .index
    })
}

/// Every `RunsRetired` in the log: (event, run ids).
fn retirements(log: &[Event]) -> Vec<(&Event, Vec<u64>)> {
    log.iter()
        .filter_map(|e| match &e.body {
            Some(Body::RunsRetired(r)) => Some((e, r.run_ids.clone())),
            _ => None,
        })
        .collect()
}

/// When each run finished, from the log.
fn finished_at(log: &[Event]) -> BTreeMap<u64, i64> {
    log.iter()
        .filter_map(|e| match &e.body {
            Some(Body::RunFinished(f)) => Some((f.run_id, e.time_unix_ms)),
            _ => None,
        })
        .collect()
}

/// Finished runs are retired once each, never before their retention,
/// also when the leader that saw them finish died
/// before their time came; a run still going is kept; the archive, replay
/// and a snapshot at any retirement agree.
#[test]
fn finished_runs_are_retired_after_their_retention_across_a_failover() {
    let mut sim = sim();
    let policy = |_: &str, _: u32| Outcome::Finish("{}".into());
    let hang = sim.submit(HANG, BTreeMap::new()).unwrap();
    let mut hang_policy = |p: &str, a: u32| {
        if p == "h" {
            Outcome::Hang
        } else {
            policy(p, a)
        }
    };
    let runs: Vec<u64> = (0..5)
        .map(|k| submit_keyed(&mut sim, SPEC, &format!("key-{k}")))
        .collect();
    // Until every run of SPEC has finished, then the leader dies before
    // any retention passed; the next one must retire them from state alone.
    for _ in 0..10_000 {
        if runs
            .iter()
            .all(|r| sim.state.run(*r).unwrap().status != RunStatus::Running)
        {
            break;
        }
        assert!(sim.step(&mut hang_policy), "stuck before the runs finished");
    }
    assert!(
        retirements(&sim.log).is_empty(),
        "nothing is retired before its retention"
    );
    // Down for longer than the retention: the new leader finds all five
    // due at once and retires each.
    sim.crash();
    sim.now += 2 * RETENTION_MS;
    sim.recover();
    sim.run_to_quiet(&mut hang_policy, 10_000);

    let retired = retirements(&sim.log);
    let ends = finished_at(&sim.log);
    let mut seen = BTreeSet::new();
    for (e, ids) in &retired {
        assert_eq!(ids.len(), 1, "one run per event: {ids:?}");
        for id in ids {
            assert!(seen.insert(*id), "run {id} retired twice");
            assert!(
                e.time_unix_ms >= ends[id] + RETENTION_MS,
                "run {id} retired at {} but it ended at {}",
                e.time_unix_ms,
                ends[id]
            );
        }
    }
    assert_eq!(
        seen,
        runs.iter().copied().collect::<BTreeSet<_>>(),
        "every finished run retired, the running one kept"
    );
    assert_eq!(retired.len(), 5, "each run retired once");
    assert!(
        sim.state.run(hang).is_some(),
        "a running run is never retired"
    );
    assert_eq!(sim.state.runs.len(), 1);
    assert_eq!(sim.state.runs_retired, 5);
    assert!(
        sim.state.idempotency.is_empty(),
        "keys leave with their runs: {:?}",
        sim.state.idempotency
    );
    assert!(
        sim.state.run_not_found(runs[0]).contains("retired"),
        "the API can say why a run is missing"
    );

    // Replay, and a snapshot taken right after each retirement plus the
    // rest of the log, give the same state.
    let replayed = sim.replay();
    assert_eq!(replayed.digest(), sim.state.digest());
    for (e, _) in &retired {
        let cut = e.index as usize;
        let mut prefix = State::default();
        for ev in &sim.log[..cut] {
            prefix.apply(ev).unwrap();
        }
        let mut restored = State::from_snapshot(&prefix.to_snapshot()).unwrap();
        for ev in &sim.log[cut..] {
            restored.apply(ev).unwrap();
        }
        assert_eq!(restored.digest(), sim.state.digest(), "snapshot at {cut}");
    }

    // The key of a retired run is free: a submit with it is a new run.
    let again = submit_keyed(&mut sim, SPEC, "key-0");
    assert!(!runs.contains(&again), "a new run, not the retired one");
}

/// Without a retention (the core's default) nothing is ever retired, and
/// the state's digest is computed as before retention existed.
#[test]
fn no_retention_keeps_every_run() {
    let mut sim = Sim::new(Limits::default());
    let mut policy = |_: &str, _: u32| Outcome::Finish("{}".into());
    let id = sim.submit(SPEC, BTreeMap::new()).unwrap();
    sim.run_to_quiet(&mut policy, 10_000);
    sim.now += 10 * 365 * 24 * 3600 * 1000;
    sim.run_to_quiet(&mut policy, 10_000);
    assert!(retirements(&sim.log).is_empty());
    assert_eq!(sim.state.run(id).unwrap().status, RunStatus::Succeeded);
    let json = serde_json::to_string(&sim.state).unwrap();
    assert!(
        !json.contains("runs_retired"),
        "a state without retirements serializes as before (digests auditors kept still match)"
    );
}

/// Apply refuses a retirement of a run that has not finished, or of an
/// unknown run, and changes nothing (a bad event is a bug, not a partial
/// state).
#[test]
fn a_retirement_of_a_live_or_unknown_run_is_refused_whole() {
    let mut sim = Sim::new(Limits::default());
    let mut policy = |p: &str, _: u32| {
        if p == "h" {
            Outcome::Hang
        } else {
            Outcome::Finish("{}".into())
        }
    };
    let done = sim.submit(SPEC, BTreeMap::new()).unwrap();
    let live = sim.submit(HANG, BTreeMap::new()).unwrap();
    sim.run_to_quiet(&mut policy, 10_000);
    let mut s = sim.replay();
    let before = s.digest();
    for ids in [vec![done, live], vec![done, 999_999]] {
        let e = Event {
            index: s.applied_index + 1,
            time_unix_ms: sim.now,
            body: Some(Body::RunsRetired(events::pb::RunsRetired {
                run_ids: ids.clone(),
                retention_ms: 1,
            })),
        };
        let err = s.apply(&e).expect_err("refused");
        assert!(err.to_string().contains("run"), "{err}");
        assert!(s.run(done).is_some(), "{ids:?}: nothing retired");
        assert_eq!(s.digest(), before, "{ids:?}: the state is unchanged");
    }
}

/// During a rolling upgrade (a voter applies only event schema 1) no
/// `RunsRetired` is written, however long it lasts; once every voter
/// applies schema 2 the runs due are retired.
#[test]
fn nothing_is_retired_while_a_voter_cannot_apply_it() {
    let mut sim = sim();
    sim.set_event_schema_max(1);
    let mut policy = |_: &str, _: u32| Outcome::Finish("{}".into());
    let id = sim.submit(SPEC, BTreeMap::new()).unwrap();
    sim.run_to_quiet(&mut policy, 10_000);
    sim.now += 2 * RETENTION_MS;
    for _ in 0..10 {
        sim.step(&mut policy);
    }
    assert!(sim.now > sim.state.run(id).unwrap().finished_ms.unwrap() + RETENTION_MS);
    assert!(
        retirements(&sim.log).is_empty(),
        "held back for the old voter"
    );
    assert!(sim.state.run(id).is_some());
    sim.set_event_schema_max(kaon_core::events::EVENT_SCHEMA);
    for _ in 0..10 {
        sim.step(&mut policy);
    }
    assert_eq!(
        retirements(&sim.log).len(),
        1,
        "retired once all voters read it"
    );
    assert!(sim.state.run(id).is_none());
}

/// A retry of a run asked for in the very round that retires it: the retry
/// is decided against the state before the retirement and its events come
/// first in the batch, so every replica applies both (the retirement used
/// to come first and every replica refused the batch).
#[test]
fn a_retry_racing_its_runs_retirement_is_applied_before_it() {
    let mut sim = sim();
    let mut policy = |_: &str, _: u32| Outcome::Fail(3);
    let id = sim
        .submit(HANG.replace("hang", "fails").as_str(), BTreeMap::new())
        .unwrap();
    // Until it fails, not to quiet (that would jump to its retirement).
    while sim.state.run(id).unwrap().status == RunStatus::Running {
        assert!(sim.step(&mut policy));
    }
    let run = sim.state.run(id).expect("not retired yet");
    assert_eq!(run.status, RunStatus::Failed);
    sim.now = run.finished_ms.unwrap() + RETENTION_MS;
    // The Retire timer is due now: it and the retry meet in one round.
    let d = sim
        .command(Command::RetryRun {
            run_id: id,
            idempotency_key: String::new(),
        })
        .expect("the retry is accepted");
    assert!(!d.events.is_empty());
    assert!(sim.state.run(id).is_none(), "and the run retired after it");
    let retry = sim
        .state
        .runs
        .values()
        .find(|r| r.retry_of == Some(id))
        .expect("the retry run exists");
    assert_eq!(retry.status, RunStatus::Running);
    assert_eq!(sim.replay().digest(), sim.state.digest());
}

/// A retirement naming a run twice is refused, not applied in part.
#[test]
fn a_retirement_naming_a_run_twice_is_refused() {
    let mut sim = Sim::new(Limits::default());
    let mut policy = |_: &str, _: u32| Outcome::Finish("{}".into());
    let done = sim.submit(SPEC, BTreeMap::new()).unwrap();
    sim.run_to_quiet(&mut policy, 10_000);
    let mut s = sim.replay();
    let e = Event {
        index: s.applied_index + 1,
        time_unix_ms: sim.now,
        body: Some(Body::RunsRetired(events::pb::RunsRetired {
            run_ids: vec![done, done],
            retention_ms: 1,
        })),
    };
    assert!(s.apply(&e).is_err());
    assert!(s.run(done).is_some());
}
