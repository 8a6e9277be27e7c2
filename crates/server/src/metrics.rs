//! Prometheus metrics (`GET /metrics` on the admin port).
//!
//! Three sources, all observation (nothing here decides anything):
//!
//! - **Events**: every node folds the events it applies ([`Metrics::follow`])
//!   into counters and histograms: runs submitted and finished by outcome,
//!   run and step-attempt durations, attempts by end state, retries by
//!   budget, kills by cause, schedule fires, events by kind. Every replica
//!   applies the same events, so every node reports them, counted from the
//!   process's start (Prometheus' `rate()` and `increase()` handle resets).
//! - **The leader's runtime** ([`crate::runtime`]): offers received,
//!   declined, accepted and rescinded, tasks launched and killed,
//!   reconciliations, the launch queue and its age, the Mesos subscription,
//!   and how long committing a decision batch takes. Zero on followers.
//! - **Scrape time**: the Raft view (term, role, leader, indexes, each
//!   follower's lag), the latest snapshot, live runs and steps, and the
//!   process' memory, read when Prometheus asks.
//!
//! Names and units follow Prometheus' conventions (`_total` counters,
//! `_seconds`, `_bytes`); the table in `docs/metrics.md` lists them all.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kaon_core::State;
use kaon_core::events::{Body, Event, pb};
use kaon_core::leader::LeaderStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::log::EventLog;

/// The `Content-Type` of what [`Metrics::render`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Events folded into the counters per read of the archive (bounds the
/// memory one catch-up takes).
const FOLLOW_BATCH_EVENTS_MAX: usize = 1024;

/// Ended steps of unfinished runs remembered so each is counted once
/// (about 40 bytes each); past this, further ends are not counted.
const STEPS_ENDED_TRACKED_MAX: usize = 1_000_000;

/// One label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

/// A run's or a step's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

/// How a step attempt ended: its Mesos state and the budget it spends.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptEnd {
    state: String,
    cause: String,
}

/// A retry budget (`user`, `platform`, `timeout`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Budget {
    budget: String,
}

/// A kill's cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Cause {
    cause: String,
}

/// What a schedule fire did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Action {
    action: String,
}

/// A run's trigger.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Trigger {
    trigger: String,
}

/// A Raft peer (node id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Peer {
    peer: String,
}

/// A run status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

type FGauge = Gauge<f64, AtomicU64>;

/// Every metric a node exports. Create one per process ([`Metrics::new`]),
/// hand it to the runtime's config and the admin router, and start
/// [`Metrics::follow`] on the node's log.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// The last event index folded into the event counters.
    followed: AtomicU64,
    // Events.
    events: Family<Kind, Counter>,
    runs_submitted: Family<Trigger, Counter>,
    runs_finished: Family<Outcome, Counter>,
    run_seconds: Family<Outcome, Histogram>,
    attempts_launched: Counter,
    attempts_ended: Family<AttemptEnd, Counter>,
    attempt_seconds: Family<Outcome, Histogram>,
    steps_finished: Family<Outcome, Counter>,
    /// Steps of unfinished runs already counted in `steps_finished`.
    steps_ended: std::sync::Mutex<std::collections::HashSet<(u64, u32)>>,
    retries: Family<Budget, Counter>,
    kills_requested: Family<Cause, Counter>,
    schedule_fires: Family<Action, Counter>,
    leader_changes: Counter,
    runs_retired: Counter,
    // The leader's runtime.
    offers_received: Counter,
    offers_declined: Counter,
    offers_accepted: Counter,
    offers_rescinded: Counter,
    tasks_launched: Counter,
    kills_sent: Counter,
    reconciliations: Counter,
    reconciled_tasks: Counter,
    task_updates: Counter,
    subscribe_calls: Counter,
    mesos_subscribed: Gauge,
    launches_waiting: Gauge,
    launch_wait_oldest: FGauge,
    offers_held: Gauge,
    tasks_live: Gauge,
    append_seconds: Histogram,
    append_events: Histogram,
    // Scrape time.
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_leader_id: Gauge,
    raft_last_log: Gauge,
    raft_committed: Gauge,
    raft_applied: Gauge,
    raft_voters: Gauge,
    raft_learners: Gauge,
    raft_lag: Family<Peer, Gauge>,
    events_applied_index: Gauge,
    snapshot_event_index: Gauge,
    snapshot_bytes: Gauge,
    snapshot_events_behind: Gauge,
    snapshot_age: FGauge,
    runs: Family<Status, Gauge>,
    runs_active: Gauge,
    steps_running: Gauge,
    workflows: Gauge,
    resident_bytes: Gauge,
}

/// Step and run durations: 10 ms to about 12 hours.
fn duration_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.01, 4.0, 12)
}

fn duration_histogram() -> Histogram {
    Histogram::new(duration_buckets())
}

/// `RUN_OUTCOME_SUCCEEDED` -> `succeeded`: a proto enum name as a label.
fn label(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All metrics at zero, registered under the `kaon_` prefix.
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("kaon"),
            followed: AtomicU64::new(0),
            events: Default::default(),
            runs_submitted: Default::default(),
            runs_finished: Default::default(),
            run_seconds: Family::new_with_constructor(duration_histogram),
            attempts_launched: Default::default(),
            attempts_ended: Default::default(),
            attempt_seconds: Family::new_with_constructor(duration_histogram),
            steps_finished: Default::default(),
            steps_ended: Default::default(),
            retries: Default::default(),
            kills_requested: Default::default(),
            schedule_fires: Default::default(),
            leader_changes: Default::default(),
            runs_retired: Default::default(),
            offers_received: Default::default(),
            offers_declined: Default::default(),
            offers_accepted: Default::default(),
            offers_rescinded: Default::default(),
            tasks_launched: Default::default(),
            kills_sent: Default::default(),
            reconciliations: Default::default(),
            reconciled_tasks: Default::default(),
            task_updates: Default::default(),
            subscribe_calls: Default::default(),
            mesos_subscribed: Default::default(),
            launches_waiting: Default::default(),
            launch_wait_oldest: Default::default(),
            offers_held: Default::default(),
            tasks_live: Default::default(),
            // 0.25 ms to about 4 s.
            append_seconds: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            append_events: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            raft_term: Default::default(),
            raft_leader: Default::default(),
            raft_leader_id: Default::default(),
            raft_last_log: Default::default(),
            raft_committed: Default::default(),
            raft_applied: Default::default(),
            raft_voters: Default::default(),
            raft_learners: Default::default(),
            raft_lag: Default::default(),
            events_applied_index: Default::default(),
            snapshot_event_index: Default::default(),
            snapshot_bytes: Default::default(),
            snapshot_events_behind: Default::default(),
            snapshot_age: Default::default(),
            runs: Default::default(),
            runs_active: Default::default(),
            steps_running: Default::default(),
            workflows: Default::default(),
            resident_bytes: Default::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "events_applied",
            "Events this node applied since it started, by kind",
            self.events.clone(),
        );
        r.register(
            "runs_submitted",
            "Runs submitted, by trigger (manual, schedule, retry)",
            self.runs_submitted.clone(),
        );
        r.register(
            "runs_finished",
            "Runs finished, by outcome (succeeded, failed, cancelled)",
            self.runs_finished.clone(),
        );
        r.register_with_unit(
            "run_duration",
            "Time from a run's submission to its end, by outcome",
            Unit::Seconds,
            self.run_seconds.clone(),
        );
        r.register(
            "step_attempts_launched",
            "Step attempts whose launch intent was recorded",
            self.attempts_launched.clone(),
        );
        r.register(
            "step_attempts_ended",
            "Step attempts ended, by Mesos state and the retry budget the end spends",
            self.attempts_ended.clone(),
        );
        r.register_with_unit(
            "step_attempt_duration",
            "Time from a step attempt's launch intent to its end, by Mesos end state",
            Unit::Seconds,
            self.attempt_seconds.clone(),
        );
        r.register(
            "steps_finished",
            "Steps (not groups) ended, by outcome (succeeded, failed, failed_ignored, skipped, cancelled)",
            self.steps_finished.clone(),
        );
        r.register(
            "retries_scheduled",
            "Step retries scheduled, by the budget they spend (user, platform, timeout)",
            self.retries.clone(),
        );
        r.register(
            "kills_requested",
            "Task kills recorded, by cause",
            self.kills_requested.clone(),
        );
        r.register(
            "schedule_fires",
            "Schedule fires, by what they did (started, skipped, queued, missed)",
            self.schedule_fires.clone(),
        );
        r.register(
            "leader_changes",
            "Leaders that started their runtime (LeaderStarted events)",
            self.leader_changes.clone(),
        );
        r.register(
            "runs_retired",
            "Finished runs retired from the live state after run_retention_ms (RunsRetired events)",
            self.runs_retired.clone(),
        );
        r.register(
            "mesos_offers_received",
            "Mesos offers this node received while leading",
            self.offers_received.clone(),
        );
        r.register(
            "mesos_offers_declined",
            "Mesos offers this node declined while leading",
            self.offers_declined.clone(),
        );
        r.register(
            "mesos_offers_accepted",
            "Mesos offers this node accepted (launching tasks) while leading",
            self.offers_accepted.clone(),
        );
        r.register(
            "mesos_offers_rescinded",
            "Mesos offers the master rescinded while this node led",
            self.offers_rescinded.clone(),
        );
        r.register(
            "mesos_tasks_launched",
            "Tasks this node launched on Mesos while leading",
            self.tasks_launched.clone(),
        );
        r.register(
            "mesos_kills_sent",
            "KILL calls this node sent to Mesos while leading",
            self.kills_sent.clone(),
        );
        r.register(
            "mesos_reconciliations",
            "RECONCILE calls this node sent while leading",
            self.reconciliations.clone(),
        );
        r.register(
            "mesos_reconciled_tasks",
            "Tasks named in explicit reconciliations this node sent",
            self.reconciled_tasks.clone(),
        );
        r.register(
            "mesos_task_updates",
            "Task status updates this node received from Mesos while leading",
            self.task_updates.clone(),
        );
        r.register(
            "mesos_subscribe_calls",
            "SUBSCRIBE calls this node made while leading",
            self.subscribe_calls.clone(),
        );
        r.register(
            "mesos_subscribed",
            "1 while this node holds the Mesos framework subscription",
            self.mesos_subscribed.clone(),
        );
        r.register(
            "launches_waiting",
            "Step launches committed and waiting for a Mesos offer (leader)",
            self.launches_waiting.clone(),
        );
        r.register_with_unit(
            "launch_wait_oldest",
            "How long the oldest waiting launch has waited (leader; 0 if none)",
            Unit::Seconds,
            self.launch_wait_oldest.clone(),
        );
        r.register(
            "mesos_offers_held",
            "Offers the leader holds for launches to come",
            self.offers_held.clone(),
        );
        r.register(
            "mesos_tasks_live",
            "Tasks the leader sent to Mesos that have not ended",
            self.tasks_live.clone(),
        );
        r.register_with_unit(
            "log_append_duration",
            "Time to commit one decision batch (replicated to a majority and durable)",
            Unit::Seconds,
            self.append_seconds.clone(),
        );
        r.register(
            "log_append_events",
            "Events in one committed decision batch",
            self.append_events.clone(),
        );
        r.register("raft_term", "Current Raft term", self.raft_term.clone());
        r.register(
            "raft_is_leader",
            "1 on the Raft leader",
            self.raft_leader.clone(),
        );
        r.register(
            "raft_leader_id",
            "The leader this node knows of (0: none)",
            self.raft_leader_id.clone(),
        );
        r.register(
            "raft_last_log_index",
            "Last Raft log index held here",
            self.raft_last_log.clone(),
        );
        r.register(
            "raft_commit_index",
            "Last Raft log index known committed",
            self.raft_committed.clone(),
        );
        r.register(
            "raft_applied_index",
            "Last Raft log index applied here",
            self.raft_applied.clone(),
        );
        r.register(
            "raft_voters",
            "Voting members in the membership config",
            self.raft_voters.clone(),
        );
        r.register(
            "raft_learners",
            "Learners (non-voting members) in the membership config",
            self.raft_learners.clone(),
        );
        r.register(
            "raft_replication_lag_entries",
            "On the leader: Raft entries each follower lacks (last log index - matched index)",
            self.raft_lag.clone(),
        );
        r.register(
            "events_applied_index",
            "Index of the last event applied here (durable)",
            self.events_applied_index.clone(),
        );
        r.register(
            "snapshot_event_index",
            "Events covered by this node's latest snapshot (0: none yet)",
            self.snapshot_event_index.clone(),
        );
        r.register_with_unit(
            "snapshot_state",
            "Size of the latest snapshot's serialized state",
            Unit::Bytes,
            self.snapshot_bytes.clone(),
        );
        r.register(
            "snapshot_events_behind",
            "Events applied since the latest snapshot (replayed on restart)",
            self.snapshot_events_behind.clone(),
        );
        r.register_with_unit(
            "snapshot_age",
            "Age of the newest event the latest snapshot covers (0: no snapshot)",
            Unit::Seconds,
            self.snapshot_age.clone(),
        );
        r.register("runs", "Runs in the state, by status", self.runs.clone());
        r.register(
            "runs_active",
            "Runs not yet finished",
            self.runs_active.clone(),
        );
        r.register(
            "steps_running",
            "Step attempts live on Mesos, as the state records them",
            self.steps_running.clone(),
        );
        r.register("workflows", "Registered workflows", self.workflows.clone());
        r.register_with_unit(
            "process_resident_memory",
            "Resident memory of this process",
            Unit::Bytes,
            self.resident_bytes.clone(),
        );
    }

    /// Folds committed events into the event counters. `state` is the
    /// applied state (at or past the events), for durations.
    pub fn fold(&self, state: &State, events: &[Event]) {
        for e in events {
            // Followed first: every event below may `continue`, and the
            // follower reads from here on (it re-read a batch that ended
            // with a RUNNING observation forever: a spinning worker thread
            // and inflated counters, found by kaon-scale-bench).
            self.followed.fetch_max(e.index, Ordering::Relaxed);
            let Some(body) = &e.body else { continue };
            let at = e.time_unix_ms;
            self.events
                .get_or_create(&Kind {
                    kind: kaon_core::events::body_name(body).to_string(),
                })
                .inc();
            match body {
                Body::RunSubmitted(r) => {
                    let trigger = match r.trigger.as_ref().and_then(|t| t.kind.as_ref()) {
                        Some(pb::trigger::Kind::Schedule(_)) => "schedule",
                        Some(pb::trigger::Kind::Retry(_)) => "retry",
                        _ => "manual",
                    };
                    self.runs_submitted
                        .get_or_create(&Trigger {
                            trigger: trigger.into(),
                        })
                        .inc();
                }
                Body::RunFinished(r) => {
                    let outcome = Outcome {
                        outcome: pb::RunOutcome::try_from(r.outcome)
                            .map(|o| label(o.as_str_name(), "RUN_OUTCOME_"))
                            .unwrap_or_else(|_| "unknown".into()),
                    };
                    self.runs_finished.get_or_create(&outcome).inc();
                    if let Some(run) = state.run(r.run_id) {
                        self.run_seconds
                            .get_or_create(&outcome)
                            .observe(seconds(at - run.submitted_ms));
                    }
                }
                Body::TaskLaunchRequested(_) => {
                    self.attempts_launched.inc();
                }
                Body::TaskStatusObserved(t) => {
                    let s = pb::TaskState::try_from(t.state).unwrap_or(pb::TaskState::Unspecified);
                    let terminal = !matches!(
                        s,
                        pb::TaskState::Unspecified
                            | pb::TaskState::Staging
                            | pb::TaskState::Starting
                            | pb::TaskState::Running
                            | pb::TaskState::Killing
                    );
                    // A reconciliation answer is a report, not the result.
                    if !terminal || t.state_only {
                        continue;
                    }
                    let state_label = label(s.as_str_name(), "TASK_STATE_");
                    let cause = match pb::FailureCause::try_from(t.cause) {
                        Ok(pb::FailureCause::Unspecified) | Err(_) => {
                            if s == pb::TaskState::Finished {
                                "none".to_string()
                            } else {
                                "unclassified".to_string()
                            }
                        }
                        Ok(c) => label(c.as_str_name(), "FAILURE_CAUSE_"),
                    };
                    self.attempts_ended
                        .get_or_create(&AttemptEnd {
                            state: state_label.clone(),
                            cause,
                        })
                        .inc();
                    let launched = state
                        .run(t.run_id)
                        .and_then(|r| r.instances.get(t.instance as usize))
                        .and_then(|i| i.attempts.iter().find(|a| a.number == t.attempt))
                        .map(|a| a.launched_ms);
                    if let Some(launched) = launched {
                        self.attempt_seconds
                            .get_or_create(&Outcome {
                                outcome: state_label,
                            })
                            .observe(seconds(at - launched));
                    }
                }
                Body::RetryScheduled(r) => {
                    let budget = pb::FailureCause::try_from(r.cause)
                        .map(|c| label(c.as_str_name(), "FAILURE_CAUSE_"))
                        .unwrap_or_else(|_| "unspecified".into());
                    self.retries.get_or_create(&Budget { budget }).inc();
                }
                Body::TaskKillRequested(k) => {
                    let cause = pb::KillCause::try_from(k.cause)
                        .map(|c| label(c.as_str_name(), "KILL_CAUSE_"))
                        .unwrap_or_else(|_| "unspecified".into());
                    self.kills_requested.get_or_create(&Cause { cause }).inc();
                }
                Body::ScheduleFired(f) => {
                    let action = pb::FireAction::try_from(f.action)
                        .map(|a| label(a.as_str_name(), "FIRE_ACTION_"))
                        .unwrap_or_else(|_| "unspecified".into());
                    self.schedule_fires.get_or_create(&Action { action }).inc();
                }
                Body::LeaderStarted(_) => {
                    self.leader_changes.inc();
                }
                Body::RunsRetired(r) => {
                    self.runs_retired.inc_by(r.run_ids.len() as u64);
                }
                _ => {}
            }
            self.count_step_end(state, body);
        }
    }

    /// Counts a step's end once: a step ends by its last attempt's
    /// observation, a skip or a cancel, so any event about it finds it
    /// ended in the state (which may be slightly ahead of the event) and
    /// counts it the first time. The set is emptied when the run ends.
    fn count_step_end(&self, state: &State, body: &Body) {
        use kaon_core::state::InstKind;
        let Some((run, inst)) = kaon_core::events::body_instance(body) else {
            if let Body::RunFinished(r) = body {
                let mut ended = self.steps_ended.lock().unwrap_or_else(|p| p.into_inner());
                ended.retain(|(run, _)| *run != r.run_id);
            }
            return;
        };
        let Some(i) = state.run(run).and_then(|r| r.instances.get(inst as usize)) else {
            return;
        };
        if i.kind != InstKind::Task || !i.status.is_terminal() {
            return;
        }
        let mut ended = self.steps_ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.len() >= STEPS_ENDED_TRACKED_MAX || !ended.insert((run, inst)) {
            return;
        }
        let outcome = kaon_core::decide::status_name(i.status);
        self.steps_finished
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Folds every event `log` applies from now on into the counters
    /// (events already applied are history, not this process' activity).
    /// Ends when the log's notifications end (the node shut down).
    pub fn follow<L: EventLog>(self: &Arc<Self>, log: Arc<L>) -> tokio::task::JoinHandle<()> {
        let metrics = Arc::downgrade(self);
        let mut applied = log.subscribe();
        let start = log.with_state(|s| s.applied_index);
        self.followed.store(start, Ordering::Relaxed);
        tokio::spawn(async move {
            loop {
                let Some(m) = metrics.upgrade() else { return };
                loop {
                    let after = m.followed.load(Ordering::Relaxed);
                    let batch = log.events_after(after, FOLLOW_BATCH_EVENTS_MAX);
                    if batch.is_empty() {
                        break;
                    }
                    log.with_state(|s| m.fold(s, &batch));
                    // Never hold a worker thread for a long catch-up.
                    tokio::task::yield_now().await;
                }
                drop(m);
                if applied.changed().await.is_err() {
                    return;
                }
            }
        })
    }

    /// The leader's runtime saw `n` offers.
    pub fn offers_received(&self, n: usize) {
        self.offers_received.inc_by(n as u64);
    }

    /// The master rescinded an offer.
    pub fn offer_rescinded(&self) {
        self.offers_rescinded.inc();
    }

    /// The leader's runtime received a task status update.
    pub fn task_update(&self) {
        self.task_updates.inc();
    }

    /// The leader's runtime performs `action` (counted before it is sent).
    pub fn action(&self, action: &kaon_core::leader::Action) {
        use kaon_core::leader::Action as A;
        match action {
            A::Subscribe { .. } => {
                self.subscribe_calls.inc();
            }
            A::Launch {
                offer_ids, tasks, ..
            } => {
                self.offers_accepted.inc_by(offer_ids.len() as u64);
                self.tasks_launched.inc_by(tasks.len() as u64);
            }
            A::Decline { offer_ids, .. } => {
                self.offers_declined.inc_by(offer_ids.len() as u64);
            }
            A::Kill { .. } => {
                self.kills_sent.inc();
            }
            A::Reconcile { tasks } => {
                self.reconciliations.inc();
                self.reconciled_tasks.inc_by(tasks.len() as u64);
            }
            _ => {}
        }
    }

    /// The leader's gauges now (all zero once it stops leading).
    pub fn leader_stats(&self, s: &LeaderStats) {
        self.mesos_subscribed.set(i64::from(s.subscribed));
        self.launches_waiting.set(s.launches_waiting as i64);
        self.launch_wait_oldest
            .set(s.oldest_launch_wait_ms.map(seconds).unwrap_or(0.0));
        self.offers_held.set(s.offers_held as i64);
        self.tasks_live.set(s.tasks_live as i64);
    }

    /// A decision batch of `events` events was committed in `elapsed`.
    pub fn appended(&self, events: usize, elapsed: std::time::Duration) {
        self.append_seconds.observe(elapsed.as_secs_f64());
        self.append_events.observe(events as f64);
    }

    /// The metrics in Prometheus' text format (version 0.0.4), with the
    /// scrape-time gauges read from `log` now.
    pub fn render<L: EventLog>(&self, log: &L, now_unix_ms: i64) -> String {
        self.read_gauges(log, now_unix_ms);
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("encoding into a String cannot fail");
        out
    }

    fn read_gauges<L: EventLog>(&self, log: &L, now_unix_ms: i64) {
        if let Some(st) = log.cluster_status() {
            let leading = st.leader == Some(st.id) && st.state == "Leader";
            self.raft_term.set(st.term as i64);
            self.raft_leader.set(i64::from(leading));
            self.raft_leader_id.set(st.leader.unwrap_or(0) as i64);
            self.raft_last_log.set(st.last_log_index as i64);
            self.raft_committed.set(st.committed_index as i64);
            self.raft_applied.set(st.applied_index as i64);
            self.raft_voters
                .set(st.members.iter().filter(|m| m.voter).count() as i64);
            self.raft_learners
                .set(st.members.iter().filter(|m| !m.voter).count() as i64);
            // Peers come and go: only the current ones are reported.
            self.raft_lag.clear();
            if leading {
                for (peer, matched) in st.replication.iter().filter(|(p, _)| *p != st.id) {
                    self.raft_lag
                        .get_or_create(&Peer {
                            peer: peer.to_string(),
                        })
                        .set(st.last_log_index.saturating_sub(*matched) as i64);
                }
            }
        }
        let applied = log.with_state(|s| {
            self.runs.clear();
            let mut by_status: std::collections::BTreeMap<String, i64> = Default::default();
            for r in s.runs.values() {
                *by_status
                    .entry(format!("{:?}", r.status).to_ascii_lowercase())
                    .or_default() += 1;
            }
            for (status, n) in by_status {
                self.runs.get_or_create(&Status { status }).set(n);
            }
            self.runs_active.set(s.active_runs.len() as i64);
            let live: u64 = s
                .active_runs
                .iter()
                .filter_map(|id| s.runs.get(id))
                .map(|r| u64::from(r.live_tasks))
                .sum();
            self.steps_running.set(live as i64);
            self.workflows.set(s.workflows.len() as i64);
            s.applied_index
        });
        self.events_applied_index.set(applied as i64);
        if let Some(snap) = log.raft_node().and_then(|n| n.snapshot_info()) {
            self.snapshot_event_index.set(snap.event_index as i64);
            self.snapshot_bytes.set(snap.state_bytes as i64);
            self.snapshot_events_behind
                .set(applied.saturating_sub(snap.event_index) as i64);
            let age = if snap.last_event_unix_ms > 0 {
                seconds(now_unix_ms - snap.last_event_unix_ms)
            } else {
                0.0
            };
            self.snapshot_age.set(age);
        } else {
            self.snapshot_events_behind.set(applied as i64);
        }
        if let Some(rss) = resident_bytes() {
            self.resident_bytes.set(rss as i64);
        }
    }
}

/// Milliseconds (never negative) as seconds.
fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// This process's resident memory (Linux `/proc/self/statm`), bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    (page > 0).then(|| pages * page as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_drops_the_enum_prefix() {
        assert_eq!(label("RUN_OUTCOME_SUCCEEDED", "RUN_OUTCOME_"), "succeeded");
        assert_eq!(label("TASK_STATE_LOST", "TASK_STATE_"), "lost");
    }

    /// Every event folded moves the follower on, whatever its kind: a
    /// batch that ends with a non-terminal observation is not read again
    /// (and counted again).
    #[test]
    fn folding_moves_past_every_event() {
        let m = Metrics::new();
        let running = |index| Event {
            index,
            time_unix_ms: 1,
            body: Some(Body::TaskStatusObserved(pb::TaskStatusObserved {
                run_id: 1,
                instance: 1,
                attempt: 1,
                state: pb::TaskState::Running as i32,
                ..Default::default()
            })),
        };
        m.fold(&State::default(), &[running(7), running(8)]);
        assert_eq!(m.followed.load(Ordering::Relaxed), 8);
        m.fold(
            &State::default(),
            &[Event {
                index: 9,
                time_unix_ms: 1,
                body: None,
            }],
        );
        assert_eq!(
            m.followed.load(Ordering::Relaxed),
            9,
            "an event without a body too"
        );
    }

    #[test]
    fn a_fresh_registry_renders_every_family_with_help_and_type() {
        let m = Metrics::new();
        let log = crate::log::LocalLog::default();
        let text = m.render(&log, 0);
        for name in [
            "kaon_raft_term",
            "kaon_runs_active",
            "kaon_log_append_duration_seconds",
            "kaon_mesos_offers_received_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line in:\n{text}"
            );
        }
    }
}
