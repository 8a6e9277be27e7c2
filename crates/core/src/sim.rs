//! A deterministic, in-memory stand-in for the leader's runtime and Mesos.
//!
//! It drives [`decide`] and [`State::apply`] exactly as a leader would
//! (propose, commit, apply, react; perform effects; fire timers) with
//! simulated time and a scripted Mesos, and checks the brief's invariants
//! as it goes. Scenario tests, property tests and benchmarks use it; the
//! cluster simulation later wraps real nodes the same way. Pure: no clock,
//! no randomness (outcomes come from the caller's [`Policy`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::decide::{Command, Decision, Effect, Input, SubmitTarget, TaskUpdate, TimerKey, decide};
use crate::events::{Body, Event, TaskState};
use crate::ids::RunId;
use crate::limits::Limits;
use crate::state::State;

/// What a launched task does.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Runs and exits 0 with these outputs (JSON object text).
    Finish(String),
    /// Runs and exits non-zero.
    Fail(i32),
    /// Mesos loses it (agent gone).
    Lost,
    /// Runs and never ends on its own (until killed).
    Hang,
}

/// Chooses outcomes for launched tasks: (step path, attempt) -> outcome.
pub trait Policy {
    /// The outcome of one attempt.
    fn outcome(&mut self, path: &str, attempt: u32) -> Outcome;
}

impl<F: FnMut(&str, u32) -> Outcome> Policy for F {
    fn outcome(&mut self, path: &str, attempt: u32) -> Outcome {
        self(path, attempt)
    }
}

/// A live task in the fake Mesos.
#[derive(Debug, Clone)]
struct FakeTask {
    path: String,
    attempt: u32,
    outcome: Outcome,
    running_sent: bool,
}

/// The harness.
pub struct Sim {
    /// Replicated state (as every replica would have it).
    pub state: State,
    /// The committed log.
    pub log: Vec<Event>,
    /// Simulated time, ms since the epoch.
    pub now: i64,
    /// Limits the leader uses.
    pub limits: Limits,
    /// Effects performed, in order (for golden checks).
    pub effects: Vec<Effect>,
    /// Task ids launched, in order.
    pub launched: Vec<String>,
    launched_set: BTreeSet<String>,
    queue: Vec<usize>,
    timers: BTreeMap<(i64, u64), TimerKey>,
    timer_seq: u64,
    tasks: BTreeMap<String, FakeTask>,
    uuid_seq: u64,
    committed_intents: BTreeSet<String>,
    committed_uuids: BTreeSet<Vec<u8>>,
}

impl Sim {
    /// A fresh leader with empty state at a fixed start time.
    pub fn new(limits: Limits) -> Self {
        Sim {
            state: State::default(),
            log: Vec::new(),
            now: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            limits,
            effects: Vec::new(),
            launched: Vec::new(),
            launched_set: BTreeSet::new(),
            queue: Vec::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            tasks: BTreeMap::new(),
            uuid_seq: 0,
            committed_intents: BTreeSet::new(),
            committed_uuids: BTreeSet::new(),
        }
    }

    /// Commits and applies `bodies` at the current time; queues them for decide.
    pub fn propose(&mut self, bodies: Vec<Body>) {
        for body in bodies {
            let event = Event {
                index: self.log.len() as u64 + 1,
                time_unix_ms: self.now,
                body: Some(body),
            };
            self.state
                .apply(&event)
                .unwrap_or_else(|e| panic!("apply failed: {e}"));
            match &event.body {
                Some(Body::TaskLaunchRequested(l)) => {
                    self.committed_intents.insert(l.task_id.clone());
                }
                Some(Body::TaskStatusObserved(o)) if !o.mesos_uuid.is_empty() => {
                    self.committed_uuids.insert(o.mesos_uuid.clone());
                }
                _ => {}
            }
            self.log.push(event);
            self.queue.push(self.log.len() - 1);
        }
    }

    fn handle(&mut self, d: Decision) {
        self.propose(d.events);
        for e in d.effects {
            self.perform(e);
        }
    }

    fn perform(&mut self, e: Effect) {
        match &e {
            Effect::LaunchTask(t) => {
                // Intent before effect: the intent must be in the committed log.
                assert!(
                    self.committed_intents.contains(&t.task_id),
                    "launch of {} without a committed intent",
                    t.task_id
                );
                assert!(
                    self.launched_set.insert(t.task_id.clone()),
                    "task {} launched twice",
                    t.task_id
                );
                self.launched.push(t.task_id.clone());
                // Outcome is chosen when the task runs (see `step`).
                self.tasks.insert(
                    t.task_id.clone(),
                    FakeTask {
                        path: t.step_path.clone(),
                        attempt: t.attempt,
                        outcome: Outcome::Hang,
                        running_sent: false,
                    },
                );
            }
            Effect::KillTask { task_id, .. } => {
                if let Some(t) = self.tasks.get_mut(task_id) {
                    t.outcome = Outcome::Fail(-9);
                    t.running_sent = true;
                    let id = task_id.clone();
                    self.deliver(&id, TaskState::Killed, None, None);
                }
            }
            Effect::Acknowledge { uuid, .. } => {
                assert!(
                    self.committed_uuids.contains(uuid),
                    "acknowledged an update whose event is not committed"
                );
            }
            Effect::ArmTimer { key, at_ms } => {
                self.timer_seq += 1;
                self.timers.insert((*at_ms, self.timer_seq), key.clone());
            }
            Effect::Subscribe { .. } | Effect::Reconcile { .. } => {}
        }
        self.effects.push(e);
    }

    /// Feeds one Mesos status update through decide.
    fn deliver(
        &mut self,
        task_id: &str,
        state: TaskState,
        exit: Option<i32>,
        outputs: Option<String>,
    ) {
        self.uuid_seq += 1;
        let update = TaskUpdate {
            task_id: task_id.to_string(),
            state,
            reason: if state == TaskState::Lost {
                "REASON_AGENT_REMOVED".into()
            } else {
                String::new()
            },
            source: "SOURCE_EXECUTOR".into(),
            agent_id: "agent-0".into(),
            uuid: self.uuid_seq.to_be_bytes().repeat(2),
            exit_code: exit,
            outputs_json: outputs,
            ..TaskUpdate::default()
        };
        if state.is_terminal() {
            self.tasks.remove(task_id);
        }
        let d = decide(
            &self.state,
            Input::TaskUpdate(update),
            self.now,
            &self.limits,
        )
        .expect("updates are never rejected");
        self.handle(d);
    }

    /// Runs decide on every queued committed event until none is left.
    pub fn pump(&mut self) {
        let mut i = 0;
        while i < self.queue.len() {
            let idx = self.queue[i];
            i += 1;
            let event = self.log[idx].clone();
            let d = decide(
                &self.state,
                Input::Committed(&event),
                self.now,
                &self.limits,
            )
            .expect("committed events are never rejected");
            self.handle(d);
        }
        self.queue.clear();
    }

    /// Sends a client command; returns its decision's extra answers.
    pub fn command(&mut self, cmd: Command) -> Result<Decision, crate::decide::Rejection> {
        let d = decide(&self.state, Input::Command(cmd), self.now, &self.limits)?;
        let answer = Decision {
            events: d.events.clone(),
            effects: Vec::new(),
            ..d.clone()
        };
        self.handle(d);
        self.pump();
        Ok(answer)
    }

    /// Submits an inline spec; returns the run id.
    pub fn submit(
        &mut self,
        source: &str,
        params: BTreeMap<String, serde_json::Value>,
    ) -> Result<RunId, crate::decide::Rejection> {
        let before = self.log.len();
        let d = self.command(Command::SubmitRun {
            target: SubmitTarget::Inline {
                source: source.to_string(),
            },
            params,
            idempotency_key: String::new(),
        })?;
        if let Some(r) = d.existing_run {
            return Ok(r);
        }
        let idx = self.log[before..]
            .iter()
            .find(|e| matches!(e.body, Some(Body::RunSubmitted(_))))
            .map(|e| e.index)
            .expect("a submit commits RunSubmitted");
        Ok(idx)
    }

    /// Simulates a leader failover: a new leader rebuilds from state alone.
    /// Pending timers and in-flight decisions of the old leader are dropped.
    pub fn failover(&mut self) {
        self.timers.clear();
        self.queue.clear();
        let d = decide(&self.state, Input::LeaderStarted, self.now, &self.limits)
            .expect("never rejected");
        self.handle(d);
        self.pump();
    }

    /// Advances one step of the world: a task reports, or time jumps to
    /// the next timer. Returns false when nothing is left to happen.
    pub fn step(&mut self, policy: &mut dyn Policy) -> bool {
        self.pump();
        if let Some((id, t)) = self
            .tasks
            .iter()
            .find(|(_, t)| !matches!(t.outcome, Outcome::Hang) || !t.running_sent)
            .map(|(k, v)| (k.clone(), v.clone()))
        {
            if !t.running_sent {
                let outcome = policy.outcome(&t.path, t.attempt);
                let entry = self.tasks.get_mut(&id).expect("task present");
                entry.outcome = outcome.clone();
                entry.running_sent = true;
                if outcome == Outcome::Lost {
                    self.deliver(&id, TaskState::Lost, None, None);
                } else {
                    self.deliver(&id, TaskState::Running, None, None);
                }
            } else {
                self.now += 1_000;
                match t.outcome {
                    Outcome::Finish(out) => {
                        self.deliver(&id, TaskState::Finished, Some(0), Some(out))
                    }
                    Outcome::Fail(code) => self.deliver(&id, TaskState::Failed, Some(code), None),
                    Outcome::Lost => self.deliver(&id, TaskState::Lost, None, None),
                    Outcome::Hang => {}
                }
            }
            self.pump();
            return true;
        }
        if let Some((&(at, seq), _)) = self.timers.iter().next() {
            let key = self.timers.remove(&(at, seq)).expect("present");
            self.now = self.now.max(at);
            let d = decide(&self.state, Input::TimerFired(key), self.now, &self.limits)
                .expect("never rejected");
            self.handle(d);
            self.pump();
            return true;
        }
        false
    }

    /// Steps until quiet or `max_steps`; returns the steps taken.
    pub fn run_to_quiet(&mut self, policy: &mut dyn Policy, max_steps: usize) -> usize {
        let mut n = 0;
        while n < max_steps && self.step(policy) {
            n += 1;
        }
        n
    }

    /// Task ids that are live in the fake Mesos.
    pub fn live_tasks(&self) -> Vec<String> {
        self.tasks.keys().cloned().collect()
    }

    /// Replays the committed log into a fresh state (what a follower or an
    /// auditor does) and returns it.
    pub fn replay(&self) -> State {
        let mut s = State::default();
        for e in &self.log {
            s.apply(e)
                .unwrap_or_else(|err| panic!("replay failed: {err}"));
        }
        s
    }
}
