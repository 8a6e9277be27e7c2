//! The invariants a simulated run must keep, each in its own function,
//! with where it comes from. Some are checked continuously (sampled every
//! tick of virtual time), the rest at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use kaon_core::events::{self, Body, Event, FailureCause, pb};
use kaon_core::state::{InstKind, NodeStatus, RunStatus, State};
use kaon_log::ClusterStatus;
use kaon_server::log::RaftLog;
use sha2::{Digest, Sha256};

use crate::workload::{Ledger, Scripted};

/// Violations at most kept per run (the first ones tell the story).
const VIOLATIONS_MAX: usize = 50;

/// The invariants' memory across a run.
#[derive(Default)]
pub struct Checks {
    /// What broke, in order found.
    pub violations: Vec<String>,
    leaders: BTreeMap<u64, BTreeSet<u64>>,
    digests: BTreeMap<u64, ([u8; 32], u64)>,
    reference: Vec<Event>,
    compared: BTreeMap<u64, u64>,
}

/// What the end of a run found besides violations.
pub struct Summary {
    /// SHA-256 (hex) of the committed log.
    pub trace: String,
    /// Events committed.
    pub events: u64,
    /// Runs in the final state.
    pub runs: u64,
}

impl Checks {
    /// The committed log as observed so far.
    pub fn reference(&self) -> &[Event] {
        &self.reference
    }

    /// Records a violation (once, bounded).
    pub fn violation(&mut self, v: String) {
        if self.violations.len() < VIOLATIONS_MAX && !self.violations.contains(&v) {
            self.violations.push(v);
        }
    }

    /// One sample of every node that is up.
    pub fn observe(&mut self, logs: &[(u64, Arc<RaftLog>)]) {
        for (id, log) in logs {
            let st = log.node().status();
            self.one_leader_per_term(*id, &st);
            let (applied, digest) = log.node().with_state(|s| (s.applied_index, s.digest()));
            self.replicas_agree_at_each_index(*id, applied, digest);
            self.committed_entries_never_change(*id, log, applied);
        }
    }

    /// Raft's election safety: at most one leader per term. A node that
    /// says it leads in a term another node led in means two leaders could
    /// have committed different entries.
    fn one_leader_per_term(&mut self, id: u64, st: &ClusterStatus) {
        if st.state != "Leader" {
            return;
        }
        let set = self.leaders.entry(st.term).or_default();
        set.insert(id);
        if set.len() > 1 {
            let v = format!("term {}: nodes {:?} all led", st.term, set);
            self.violation(v);
        }
    }

    /// Brief 4.1 (one source of truth): every replica that applied event
    /// index i has the same state digest at i.
    fn replicas_agree_at_each_index(&mut self, id: u64, applied: u64, digest: [u8; 32]) {
        match self.digests.get(&applied) {
            Some((d, other)) if *d != digest => {
                let v = format!(
                    "event index {applied}: node {id}'s state digest differs from node {other}'s"
                );
                self.violation(v);
            }
            Some(_) => {}
            None => {
                self.digests.insert(applied, (digest, id));
            }
        }
    }

    /// Raft's state machine safety and brief 4.7: a committed entry never
    /// changes; every replica's event archive is a prefix of the one log.
    fn committed_entries_never_change(&mut self, id: u64, log: &RaftLog, applied: u64) {
        let from = self.compared.get(&id).copied().unwrap_or(0) + 1;
        if applied < from {
            return;
        }
        let events = match log.node().read_events(from, applied) {
            Ok(e) => e,
            Err(e) => {
                self.violation(format!("node {id}: reading its archive failed: {e}"));
                return;
            }
        };
        let mut last = from - 1;
        for e in events {
            let i = e.index as usize;
            last = e.index;
            match self.reference.get(i - 1) {
                Some(r) if events::encode(r) != events::encode(&e) => {
                    let v = format!(
                        "event {i} on node {id} differs from the event committed before: {:?} vs {:?}",
                        e.body, r.body
                    );
                    self.violation(v);
                }
                Some(_) => {}
                None if i == self.reference.len() + 1 => self.reference.push(e),
                None => self.violation(format!("node {id}: archive skips to event {i}")),
            }
        }
        // Up to what the archive held (the state may run a batch ahead).
        self.compared.insert(id, last);
    }

    /// The end of a run: every node up and converged (the caller waited).
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &mut self,
        logs: &[(u64, Arc<RaftLog>)],
        ledger: &Ledger,
        acked: &BTreeMap<String, u64>,
        registered_ms: Option<i64>,
        now_ms: i64,
        settled_in: Duration,
        settle_max: Duration,
    ) -> Summary {
        self.observe(logs);
        // Replicas converge: the same state and the whole same log.
        for (id, log) in logs {
            if let Ok(all) = log.node().read_events(1, self.reference.len() as u64)
                && all.len() != self.reference.len()
            {
                self.violation(format!(
                    "node {id} holds {} events after healing, the log has {}",
                    all.len(),
                    self.reference.len()
                ));
            }
        }
        let digests: BTreeSet<[u8; 32]> = logs.iter().map(|(_, l)| l.node().digest()).collect();
        if digests.len() > 1 {
            self.violation("replicas hold different states after healing".into());
        }
        let mut h = Sha256::new();
        for e in &self.reference {
            h.update(events::encode(e));
        }
        let trace = h
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        let Some((_, log)) = logs.first() else {
            self.violation("no node is up at the end".into());
            return Summary {
                trace,
                events: self.reference.len() as u64,
                runs: 0,
            };
        };
        let reference = std::mem::take(&mut self.reference);
        let runs = log.node().with_state(|s| {
            self.acknowledged_submissions_exist(s, acked);
            self.attempts_run_at_most_once(ledger);
            self.launches_have_committed_intents(s, ledger);
            self.recorded_outputs_are_the_written_ones(s, ledger);
            self.budgets_match_what_happened(s, ledger);
            self.runs_end_once_faults_heal(s, settled_in, settle_max);
            s.runs.len() as u64
        });
        self.cron_fires_once_and_none_is_lost(&reference, registered_ms, now_ms);
        Summary {
            trace,
            events: reference.len() as u64,
            runs,
        }
    }

    /// Brief 4.6 (idempotent clients) and durability: a submission the
    /// cluster acknowledged exists, under its key, after any faults.
    fn acknowledged_submissions_exist(&mut self, s: &State, acked: &BTreeMap<String, u64>) {
        for (key, &run) in acked {
            if s.idempotency.get(key) != Some(&run) || s.run(run).is_none() {
                self.violation(format!(
                    "acknowledged submit {key:?} (run {run}) is not in the final state"
                ));
            }
        }
    }

    /// The product's promise (brief 4.3): a step attempt's command runs at
    /// most once, counted from outside kaon (the scripted executors).
    fn attempts_run_at_most_once(&mut self, ledger: &Ledger) {
        for (task, &n) in &ledger.started {
            if n > 1 {
                self.violation(format!("task {task} ran {n} times"));
            }
        }
    }

    /// Brief 4.3 (intent before effect): every task Mesos ran was the
    /// committed intent of an attempt, when it ran and in the end.
    fn launches_have_committed_intents(&mut self, s: &State, ledger: &Ledger) {
        for t in &ledger.launched_without_intent {
            self.violation(format!(
                "task {t} was launched while no replica held its intent"
            ));
        }
        for t in ledger.started.keys() {
            let known = kaon_core::ids::parse_task_id(t).is_some_and(|(run, inst, attempt)| {
                s.run(run)
                    .and_then(|r| r.instances.get(inst as usize))
                    .is_some_and(|i| i.attempts.iter().any(|a| a.number == attempt))
            });
            if !known {
                self.violation(format!(
                    "task {t} ran but no committed attempt of it exists"
                ));
            }
        }
    }

    /// Issue 8's defect: a step's recorded outputs are the ones it wrote
    /// (never a reconciliation answer's empty ones).
    fn recorded_outputs_are_the_written_ones(&mut self, s: &State, ledger: &Ledger) {
        for run in s.runs.values() {
            for (i, inst) in run.instances.iter().enumerate() {
                if inst.kind != InstKind::Task || inst.status != NodeStatus::Succeeded {
                    continue;
                }
                let Some(a) = inst.attempts.last() else {
                    continue; // reused from a retried run
                };
                let t = run.task_id(i as u32, a.number);
                let got: serde_json::Value = inst
                    .outputs
                    .as_deref()
                    .and_then(|o| serde_json::from_str(o).ok())
                    .unwrap_or(serde_json::Value::Null);
                match ledger.scripted.get(&t) {
                    Some(Scripted::Finish(want)) if *want == got => {}
                    Some(Scripted::Finish(want)) => self.violation(format!(
                        "{t}: recorded outputs {got} but the step wrote {want}"
                    )),
                    other => self.violation(format!(
                        "{t}: recorded as succeeded, but the task did {other:?}"
                    )),
                }
            }
        }
    }

    /// Issue 8: no user-budget retry is spent on a platform fault, and no
    /// platform retry on a user's failure (the defect retried a failed
    /// step as lost, and ran its command again).
    fn budgets_match_what_happened(&mut self, s: &State, ledger: &Ledger) {
        for run in s.runs.values() {
            for (i, inst) in run.instances.iter().enumerate() {
                for a in &inst.attempts {
                    let t = run.task_id(i as u32, a.number);
                    let scripted = ledger.scripted.get(&t);
                    match a.cause {
                        Some(FailureCause::User) => match scripted {
                            Some(Scripted::Fail(code)) if a.exit_code == Some(*code) => {}
                            other => self.violation(format!(
                                "{t}: the user budget was spent ({:?}, exit {:?}) but the task did {other:?}",
                                a.state, a.exit_code
                            )),
                        },
                        Some(FailureCause::Platform) => {
                            let ended_by_itself =
                                matches!(scripted, Some(Scripted::Finish(_) | Scripted::Fail(_)));
                            let executor_crashed = ledger
                                .executor
                                .get(&t)
                                .is_some_and(|e| ledger.crashed_executors.contains(e));
                            if ended_by_itself
                                && !ledger.faulted.contains(&t)
                                && !executor_crashed
                            {
                                self.violation(format!(
                                    "{t}: the platform budget was spent ({:?}: {}) on a task that ran and ended by itself ({scripted:?}) and that no fault hit",
                                    a.state, a.message
                                ));
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Liveness after healing: every run reaches a terminal state within
    /// the settle bound once faults stop.
    fn runs_end_once_faults_heal(&mut self, s: &State, settled_in: Duration, max: Duration) {
        let open: Vec<u64> = s
            .runs
            .values()
            .filter(|r| r.status == RunStatus::Running)
            .map(|r| r.id)
            .collect();
        if !open.is_empty() {
            let detail: Vec<String> = open
                .iter()
                .flat_map(|id| {
                    let r = &s.runs[id];
                    r.instances
                        .iter()
                        .filter(|i| !i.status.is_terminal() && i.kind == InstKind::Task)
                        .map(|i| {
                            format!(
                                "r{id}/{} {:?} attempts {:?} retry {:?} awaiting {}",
                                i.path,
                                i.status,
                                i.attempts
                                    .iter()
                                    .map(|a| (a.number, a.state, a.reported_terminal, a.kill))
                                    .collect::<Vec<_>>(),
                                i.retry,
                                i.awaiting_decision
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            self.violation(format!(
                "runs {open:?} still running {settled_in:?} after faults healed (bound {max:?}): {}",
                detail.join("; ")
            ));
        }
    }

    /// Schedules (brief: cron): a cron tick fires at most once, and none
    /// inside its catch-up window is lost (here every minute of the run
    /// after registration; outages are far shorter than the window).
    fn cron_fires_once_and_none_is_lost(
        &mut self,
        log: &[Event],
        registered_ms: Option<i64>,
        _now_ms: i64,
    ) {
        let mut since = None;
        let mut handled: BTreeMap<i64, u32> = BTreeMap::new();
        let mut missed = Vec::new();
        for e in log {
            match &e.body {
                Some(Body::WorkflowRegistered(w)) if w.name == "cron" => {
                    since.get_or_insert(e.time_unix_ms);
                }
                Some(Body::ScheduleFired(f)) if f.workflow == "cron" => {
                    if f.action() == pb::FireAction::Missed {
                        missed.push(f.fire_time_unix_ms);
                    } else {
                        *handled.entry(f.fire_time_unix_ms).or_default() += 1;
                    }
                }
                _ => {}
            }
        }
        for (fire, n) in &handled {
            if *n > 1 {
                self.violation(format!("cron fire {fire} handled {n} times"));
            }
        }
        for m in missed {
            self.violation(format!(
                "cron fire {m} recorded missed though no outage lasted its catch-up window"
            ));
        }
        let (Some(since), Some(_)) = (since, registered_ms) else {
            return;
        };
        // Up to 90 s before the last event (its fire may still be due).
        let end = log.last().map(|e| e.time_unix_ms).unwrap_or(since) - 90_000;
        let mut f = (since / 60_000 + 1) * 60_000;
        while f <= end {
            if !handled.contains_key(&f) {
                self.violation(format!("cron fire {f} was lost"));
            }
            f += 60_000;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_that_ran_twice_is_a_violation() {
        let mut c = Checks::default();
        let mut l = Ledger::default();
        l.started.insert("r5-i1-a1:a".into(), 2);
        l.started.insert("r5-i2-a1:b".into(), 1);
        c.attempts_run_at_most_once(&l);
        assert_eq!(
            c.violations,
            vec!["task r5-i1-a1:a ran 2 times".to_string()]
        );
    }

    #[test]
    fn two_leaders_in_one_term_are_a_violation() {
        let mut c = Checks::default();
        let st = |id, term| ClusterStatus {
            id,
            term,
            state: "Leader".into(),
            leader: Some(id),
            last_log_index: 0,
            committed_index: 0,
            applied_index: 0,
            applied_event_index: 0,
            members: Vec::new(),
            replication: Vec::new(),
        };
        c.one_leader_per_term(1, &st(1, 3));
        c.one_leader_per_term(2, &st(2, 4));
        assert!(c.violations.is_empty());
        c.one_leader_per_term(3, &st(3, 4));
        assert_eq!(c.violations.len(), 1, "{:?}", c.violations);
    }

    #[test]
    fn replicas_that_disagree_at_an_index_are_a_violation() {
        let mut c = Checks::default();
        c.replicas_agree_at_each_index(1, 10, [1; 32]);
        c.replicas_agree_at_each_index(2, 10, [1; 32]);
        c.replicas_agree_at_each_index(2, 11, [3; 32]);
        assert!(c.violations.is_empty());
        c.replicas_agree_at_each_index(3, 10, [2; 32]);
        assert_eq!(c.violations.len(), 1);
    }

    #[test]
    fn a_lost_or_repeated_cron_fire_is_a_violation() {
        let fired = |index: u64, t: i64, fire: i64, action: pb::FireAction| Event {
            index,
            time_unix_ms: t,
            body: Some(Body::ScheduleFired(pb::ScheduleFired {
                workflow: "cron".into(),
                schedule_index: 0,
                fire_time_unix_ms: fire,
                action: action as i32,
            })),
        };
        let reg = Event {
            index: 1,
            time_unix_ms: 30_000,
            body: Some(Body::WorkflowRegistered(pb::WorkflowRegistered {
                name: "cron".into(),
                ..Default::default()
            })),
        };
        let started = pb::FireAction::Started;
        let good = vec![
            reg.clone(),
            fired(2, 60_000, 60_000, started),
            fired(3, 120_000, 120_000, started),
            fired(4, 300_000, 180_000, started),
        ];
        let mut c = Checks::default();
        c.cron_fires_once_and_none_is_lost(&good, Some(30_000), 0);
        assert!(c.violations.is_empty(), "{:?}", c.violations);
        let bad = vec![
            reg,
            fired(2, 60_000, 60_000, started),
            fired(3, 61_000, 60_000, started),
            fired(4, 300_000, 180_000, started),
        ];
        let mut c = Checks::default();
        c.cron_fires_once_and_none_is_lost(&bad, Some(30_000), 0);
        assert_eq!(c.violations.len(), 2, "{:?}", c.violations);
    }
}
