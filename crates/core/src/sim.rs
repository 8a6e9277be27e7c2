//! A deterministic, in-memory world for the pure [`Leader`]: a log that
//! commits at once and a scripted Mesos that keeps Mesos' delivery rules.
//!
//! It drives the same [`Leader`] the server's runtime does (step, ready,
//! perform the actions, propose, advance), so the leader's rounds,
//! batching, reconciliation and failover are what scenario tests,
//! property tests and benchmarks exercise. The scripted Mesos delivers each
//! task's status updates reliably as an agent does: one update in flight
//! per task, resent after every (re-)subscription until acknowledged, and
//! answers reconciliation with the latest state it knows (no uuid, no
//! data) before it resends. It checks the brief's invariants as it goes.
//! Pure: no clock, no randomness (outcomes come from the caller's
//! [`Policy`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::decide::{Command, Decision, SubmitTarget, TaskUpdate, TimerKey};
use crate::events::{Body, Event, TaskState};
use crate::ids::RunId;
use crate::leader::{self, Action, CommandId, Leader, LeaderConfig, MesosEvent};
use crate::limits::Limits;
use crate::placement::Offer;
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

/// A task in the scripted Mesos.
#[derive(Debug, Clone)]
struct FakeTask {
    path: String,
    attempt: u32,
    /// Chosen when the task starts running.
    outcome: Option<Outcome>,
    /// The latest state the "master" knows (what reconciliation answers).
    state: TaskState,
    /// Reliable updates not yet acknowledged, oldest first.
    updates: VecDeque<TaskUpdate>,
    /// The head update was delivered on the current subscription.
    head_sent: bool,
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
    /// Every Mesos call the leaders made, in order (for golden checks).
    pub actions: Vec<Action>,
    /// Task ids launched, in order.
    pub launched: Vec<String>,
    /// The leader; None while it is down ([`Sim::crash`]).
    leader: Option<Leader>,
    term: u64,
    launched_set: BTreeSet<String>,
    /// Task ids with a committed launch intent, and the uuids of committed
    /// status observations: what the intent-before-effect and the
    /// events-first checks look up (an index of the log, so a long
    /// simulation does not rescan the whole log at every launch).
    intents: BTreeSet<String>,
    observed_uuids: BTreeSet<Vec<u8>>,
    /// The outcome the policy chose for each task that started.
    chosen: BTreeMap<String, Outcome>,
    tasks: BTreeMap<String, FakeTask>,
    uuid_seq: u64,
    offer_seq: u64,
    next_command: CommandId,
    replies: BTreeMap<CommandId, leader::Reply>,
    wake_at: Option<i64>,
    subscribed: bool,
}

fn config(limits: &Limits, term: u64) -> LeaderConfig {
    let mut cfg = LeaderConfig::new(1, term, "kaon");
    cfg.limits = limits.clone();
    cfg
}

impl Sim {
    /// A fresh leader with empty state at a fixed start time.
    pub fn new(limits: Limits) -> Self {
        let mut sim = Sim {
            state: State::default(),
            log: Vec::new(),
            now: 1_767_225_600_000, // 2026-01-01T00:00:00Z
            leader: Some(Leader::new(config(&limits, 1))),
            limits,
            actions: Vec::new(),
            launched: Vec::new(),
            term: 1,
            launched_set: BTreeSet::new(),
            intents: BTreeSet::new(),
            observed_uuids: BTreeSet::new(),
            chosen: BTreeMap::new(),
            tasks: BTreeMap::new(),
            uuid_seq: 0,
            offer_seq: 0,
            next_command: 1,
            replies: BTreeMap::new(),
            wake_at: None,
            subscribed: false,
        };
        sim.pump();
        sim
    }

    /// The leader (to inspect its timers and held launches).
    pub fn leader(&self) -> &Leader {
        self.leader.as_ref().expect("the leader is up")
    }

    /// Commits and applies `bodies` at the current time, bypassing the
    /// leader (tests use it to race events past decide).
    pub fn propose(&mut self, bodies: Vec<Body>) -> Vec<Event> {
        let mut out = Vec::with_capacity(bodies.len());
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
                    self.intents.insert(l.task_id.clone());
                }
                Some(Body::TaskStatusObserved(o)) => {
                    self.observed_uuids.insert(o.mesos_uuid.clone());
                }
                _ => {}
            }
            self.log.push(event.clone());
            out.push(event);
        }
        out
    }

    /// Runs the leader's rounds until nothing is left to do now: performs
    /// its actions, commits its batches, delivers Mesos' updates.
    pub fn pump(&mut self) {
        for _ in 0..1_000_000 {
            let Some(leader) = self.leader.as_mut() else {
                return; // down: Mesos holds its updates
            };
            let r = leader.ready(&self.state, self.now);
            self.wake_at = r.wake_at_ms;
            for (id, reply) in r.replies {
                self.replies.insert(id, reply);
            }
            let busy = !r.actions.is_empty() || !r.propose.is_empty();
            for a in r.actions {
                self.perform(a);
            }
            if !r.propose.is_empty() {
                let committed = self.propose(r.propose);
                if let Some(l) = self.leader.as_mut() {
                    l.advance(&self.state, &committed, self.now);
                }
            }
            let delivered = self.deliver();
            let offered = self.offer();
            if !busy && !delivered && !offered {
                return;
            }
        }
        panic!("the leader did not settle in 1,000,000 rounds");
    }

    fn mesos(&mut self, ev: MesosEvent) {
        if self.subscribed
            && let Some(l) = self.leader.as_mut()
        {
            l.step(&self.state, leader::Input::Mesos(ev), self.now);
        }
    }

    /// Offers one large agent while the leader holds launches.
    fn offer(&mut self) -> bool {
        if !self.subscribed
            || self
                .leader
                .as_ref()
                .is_none_or(|l| l.pending_launches() == 0)
        {
            return false;
        }
        self.offer_seq += 1;
        let offer = Offer {
            id: format!("O{}", self.offer_seq),
            agent_id: "agent-0".into(),
            hostname: "agent-0".into(),
            scalars: BTreeMap::from([
                ("cpus".to_string(), 1e9),
                ("mem".to_string(), 1e12),
                ("disk".to_string(), 1e15),
                ("gpus".to_string(), 1e6),
            ]),
            ..Offer::default()
        };
        self.mesos(MesosEvent::Offers(vec![offer]));
        true
    }

    /// Delivers every task's head update not yet delivered on this
    /// subscription (task id order: deterministic).
    fn deliver(&mut self) -> bool {
        if !self.subscribed {
            return false;
        }
        let heads: Vec<TaskUpdate> = self
            .tasks
            .values_mut()
            .filter(|t| !t.head_sent && !t.updates.is_empty())
            .map(|t| {
                t.head_sent = true;
                t.updates[0].clone()
            })
            .collect();
        let any = !heads.is_empty();
        for u in heads {
            self.mesos(MesosEvent::Update(u));
        }
        any
    }

    fn perform(&mut self, a: Action) {
        match &a {
            Action::Subscribe { .. } => {
                self.subscribed = true;
                for t in self.tasks.values_mut() {
                    t.head_sent = false; // resent on the new subscription
                }
                self.mesos(MesosEvent::Subscribed {
                    framework_id: "fw-sim".into(),
                });
            }
            Action::Launch { tasks, .. } => {
                for t in tasks {
                    // Intent before effect: the intent must be committed, and
                    // apply must have accepted it for this attempt.
                    let accepted = self.intents.contains(&t.task_id);
                    assert!(
                        accepted,
                        "launch of {} without a committed intent",
                        t.task_id
                    );
                    assert!(
                        self.launched_set.insert(t.task_id.clone()),
                        "task {} launched twice",
                        t.task_id
                    );
                    self.launched.push(t.task_id.clone());
                    let attempt = crate::ids::parse_task_id(&t.task_id)
                        .map(|(_, _, a)| a)
                        .unwrap_or(0);
                    self.tasks.insert(
                        t.task_id.clone(),
                        FakeTask {
                            path: t.name.clone(),
                            attempt,
                            outcome: None,
                            state: TaskState::Staging,
                            updates: VecDeque::new(),
                            head_sent: false,
                        },
                    );
                }
            }
            Action::Kill { task_id, .. } => {
                let running = self
                    .tasks
                    .get(task_id)
                    .is_some_and(|t| !t.state.is_terminal());
                if running {
                    self.end(task_id, TaskState::Killed, None, None);
                } else if !self.tasks.contains_key(task_id) {
                    // Mesos answers a kill of a task it does not know as a
                    // reconciliation: "unknown".
                    let u = self.unknown(task_id);
                    self.mesos(MesosEvent::Update(u));
                }
            }
            Action::ShutdownExecutor { .. } => {
                // One executor per attempt: the kill sent with it ends the
                // task here already.
            }
            Action::SignChainHead { .. } => {
                // The sim holds no key (signing is off in its limits); the
                // runtime's signing is tested with real nodes.
            }
            Action::Acknowledge { task_id, uuid, .. } => {
                // Inputs are events first (brief 4.4): acknowledge only what
                // the log says already, the update's own event, or an
                // attempt recorded in this state or ended.
                let committed = self.observed_uuids.contains(uuid);
                let head = self
                    .tasks
                    .get(task_id)
                    .and_then(|t| t.updates.iter().find(|u| &u.uuid == uuid));
                let recorded = head.is_none_or(|u| self.recorded(task_id, u.state));
                assert!(
                    committed || recorded,
                    "acknowledged an update of {task_id} that the log does not hold"
                );
                if let Some(t) = self.tasks.get_mut(task_id)
                    && t.updates.front().is_some_and(|u| &u.uuid == uuid)
                {
                    t.updates.pop_front();
                    t.head_sent = false;
                    if t.updates.is_empty() && t.state.is_terminal() {
                        self.tasks.remove(task_id);
                    }
                }
            }
            Action::Reconcile { tasks } => {
                // The master answers from its latest knowledge, before any
                // resent update: the race issue 8 is about.
                let answers: Vec<TaskUpdate> = tasks
                    .iter()
                    .map(|(id, _)| match self.tasks.get(id) {
                        Some(t) => TaskUpdate {
                            task_id: id.clone(),
                            state: t.state,
                            reason: "REASON_RECONCILIATION".into(),
                            message: "Reconciliation: Latest task state".into(),
                            source: "SOURCE_MASTER".into(),
                            agent_id: "agent-0".into(),
                            ..TaskUpdate::default()
                        },
                        None => self.unknown(id),
                    })
                    .collect();
                for u in answers {
                    self.mesos(MesosEvent::Update(u));
                }
            }
            Action::Decline { .. } | Action::Revive | Action::Suppress => {}
        }
        self.actions.push(a);
    }

    /// Whether committed state already holds `state` for `task_id`'s
    /// attempt (or the attempt ended, or state does not know the task).
    fn recorded(&self, task_id: &str, state: TaskState) -> bool {
        let Some((run, inst, attempt)) = crate::ids::parse_task_id(task_id) else {
            return true;
        };
        let Some(a) = self
            .state
            .run(run)
            .and_then(|r| r.instances.get(inst as usize))
            .and_then(|i| i.attempts.iter().find(|a| a.number == attempt))
        else {
            return true;
        };
        a.state.is_terminal() || a.state == state
    }

    fn unknown(&self, task_id: &str) -> TaskUpdate {
        TaskUpdate {
            task_id: task_id.to_string(),
            state: TaskState::Lost,
            reason: "REASON_RECONCILIATION".into(),
            message: "Reconciliation: Task is unknown".into(),
            source: "SOURCE_MASTER".into(),
            ..TaskUpdate::default()
        }
    }

    /// Queues a reliable update from the "executor".
    fn report(&mut self, task_id: &str, state: TaskState, exit: Option<i32>, out: Option<String>) {
        self.uuid_seq += 1;
        let uuid = self.uuid_seq.to_be_bytes().repeat(2);
        let Some(t) = self.tasks.get_mut(task_id) else {
            return;
        };
        t.state = state;
        t.updates.push_back(TaskUpdate {
            task_id: task_id.to_string(),
            state,
            source: "SOURCE_EXECUTOR".into(),
            agent_id: "agent-0".into(),
            uuid,
            exit_code: exit,
            outputs_json: out,
            ..TaskUpdate::default()
        });
    }

    fn end(&mut self, task_id: &str, state: TaskState, exit: Option<i32>, out: Option<String>) {
        self.report(task_id, state, exit, out);
    }

    /// Sends a client command; returns its decision's answer.
    pub fn command(&mut self, cmd: Command) -> Result<Decision, crate::decide::Rejection> {
        let id = self.next_command;
        self.next_command += 1;
        let Some(l) = self.leader.as_mut() else {
            return Err(crate::decide::Rejection::Unavailable(
                "no leader (the simulation crashed it)".into(),
            ));
        };
        l.step(
            &self.state,
            leader::Input::Command { id, command: cmd },
            self.now,
        );
        self.pump();
        let reply = self
            .replies
            .remove(&id)
            .expect("the leader answers every command once it settles");
        reply.map(|o| o.decision)
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

    /// Simulates a leader failover: a new leader rebuilds from state alone;
    /// the old one's held launches, timers and undecided inputs are gone,
    /// and Mesos resends every unacknowledged update on the new
    /// subscription.
    pub fn failover(&mut self) {
        self.crash();
        self.recover();
    }

    /// The leader dies: nothing decides, nothing is committed, Mesos holds
    /// the tasks' updates (tasks go on running and ending) until a new
    /// leader subscribes ([`Sim::recover`]).
    pub fn crash(&mut self) {
        self.leader = None;
        self.subscribed = false;
    }

    /// A new leader takes office (after [`Sim::crash`]).
    pub fn recover(&mut self) {
        self.term += 1;
        self.leader = Some(Leader::new(config(&self.limits, self.term)));
        self.subscribed = false;
        self.pump();
    }

    /// What every voter applies (a rolling upgrade in progress when lower
    /// than this kaon's): this leader and the next ones use it.
    pub fn set_event_schema_max(&mut self, schema: u32) {
        self.limits.event_schema_max = schema;
        if let Some(l) = self.leader.as_mut() {
            l.set_event_schema_max(schema);
        }
    }

    /// Whether a leader is up.
    pub fn leader_up(&self) -> bool {
        self.leader.is_some()
    }

    /// Advances one step of the world: a task starts or ends (whether or
    /// not a leader listens), or time jumps to the leader's next timer.
    /// Returns false when nothing is left to happen.
    pub fn step(&mut self, policy: &mut dyn Policy) -> bool {
        self.pump();
        let next = self
            .tasks
            .iter()
            .find(|(_, t)| !t.state.is_terminal() && !matches!(t.outcome, Some(Outcome::Hang)))
            .map(|(k, t)| (k.clone(), t.clone()));
        if let Some((id, t)) = next {
            match t.outcome {
                None => {
                    let outcome = policy.outcome(&t.path, t.attempt);
                    self.tasks.get_mut(&id).expect("present").outcome = Some(outcome.clone());
                    self.chosen.insert(id.clone(), outcome.clone());
                    if outcome == Outcome::Lost {
                        // The master's own word (agent removed): no uuid,
                        // never resent; lost if no leader hears it (a new
                        // leader learns it by reconciliation).
                        self.tasks.remove(&id);
                        self.mesos(MesosEvent::Update(TaskUpdate {
                            task_id: id.clone(),
                            state: TaskState::Lost,
                            reason: "REASON_AGENT_REMOVED".into(),
                            source: "SOURCE_MASTER".into(),
                            agent_id: "agent-0".into(),
                            ..TaskUpdate::default()
                        }));
                    } else {
                        self.report(&id, TaskState::Running, None, None);
                    }
                }
                Some(outcome) => {
                    self.now += 1_000;
                    match outcome {
                        Outcome::Finish(out) => {
                            self.end(&id, TaskState::Finished, Some(0), Some(out))
                        }
                        Outcome::Fail(code) => self.end(&id, TaskState::Failed, Some(code), None),
                        Outcome::Lost | Outcome::Hang => {}
                    }
                }
            }
            self.pump();
            return true;
        }
        if self.leader.is_some()
            && let Some(at) = self.wake_at
        {
            self.now = self.now.max(at);
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

    /// Task ids that are live in the scripted Mesos.
    pub fn live_tasks(&self) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|(_, t)| !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The outcome the policy chose for task `task_id` when it started
    /// (None: it never started, e.g. killed or lost before).
    pub fn outcome_of(&self, task_id: &str) -> Option<&Outcome> {
        self.chosen.get(task_id)
    }

    /// The deadline of one of decide's timers, as the leader holds it.
    pub fn timer(&self, key: &TimerKey) -> Option<i64> {
        self.leader.as_ref().and_then(|l| l.timer(key))
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

/// A 10-step fan (1 -> 8 -> 1) with outputs: a typical small ML pipeline,
/// the workload of the core and restart benchmarks.
pub const FAN_SPEC: &str = r#"
apiVersion: kaon/v1
name: fan
steps:
  prepare: {run: [./prepare]}
  train:
    depends_on: [prepare]
    foreach: {items: "[1,2,3,4,5,6,7,8]"}
    run: [./train, "${{ item }}"]
  publish: {depends_on: [train], run: [./publish]}
"#;

/// The first `target` events of a log of [`FAN_SPEC`] runs, each run driven
/// to its end (every step finishing with outputs) through decide and apply
/// by the in-memory leader: a realistic log for benchmarks.
pub fn fan_log(target: usize) -> Vec<Event> {
    fan_log_retained(target, 0)
}

/// [`fan_log`] with `run_retention_ms = retention_ms` (0: none): one fan
/// run takes about 10 s of simulated time, so about `retention_ms / 10_000`
/// finished runs stay in the live state and the rest are retired
/// (`RunsRetired`), as on a node whose history is longer than its
/// retention.
pub fn fan_log_retained(target: usize, retention_ms: i64) -> Vec<Event> {
    let mut sim = Sim::new(Limits {
        active_runs_max: usize::MAX,
        run_retention_ms: retention_ms,
        ..Limits::default()
    });
    sim.command(Command::RegisterWorkflow {
        source: FAN_SPEC.into(),
    })
    .expect("the fan spec registers");
    let mut policy = |_: &str, _: u32| Outcome::Finish(r#"{"auc":0.91,"rows":123456}"#.into());
    while sim.log.len() < target {
        sim.command(Command::SubmitRun {
            target: SubmitTarget::Registered {
                name: "fan".into(),
                version: None,
            },
            params: std::collections::BTreeMap::new(),
            idempotency_key: String::new(),
        })
        .expect("a fan run submits");
        if retention_ms == 0 {
            sim.run_to_quiet(&mut policy, usize::MAX);
            continue;
        }
        // Not to quiet: that would jump to the next retirement at once.
        while !sim.state.active_runs.is_empty() && sim.step(&mut policy) {}
    }
    sim.log.truncate(target);
    sim.log
}
