//! The leader, pure: every decision the leader takes at the Mesos edge,
//! as a state machine the I/O shell only moves bytes for.
//!
//! [`crate::decide`] says what one input means; the [`Leader`] says which
//! inputs are decided together, what is proposed when, which launches wait
//! for resources and where they run, what to reconcile, when progress is
//! recorded, and which timers are armed. It reads no clock (`now` is an
//! argument), holds no copy of the replicated [`State`] (the caller lends
//! it, as applied so far), and returns everything it wants done as data.
//! The server's runtime, the core's [`crate::sim`] and the cluster
//! simulation all drive this same type, so batching, reconciliation and
//! failover are exercised by the randomized tests.
//!
//! # The contract (in the style of etcd-io/raft's `Ready`)
//!
//! 1. [`Leader::step`] hands in one input (a client command, a Mesos event).
//! 2. [`Leader::ready`] returns a [`Ready`]: events to propose, Mesos calls
//!    to make, command answers, when to call again.
//! 3. The shell performs `Ready::actions` at once and **in order** (an
//!    ACCEPT before a later RECONCILE): each follows only from committed
//!    events or from what Mesos said, never from `Ready::propose`. An
//!    acknowledgement appears only once its observation is committed
//!    (brief 4.4); a launch only once its intent is committed and applied
//!    as accepted (brief 4.3).
//! 4. The shell proposes `Ready::propose` as **one batch** and, once it is
//!    committed and applied to the state, calls [`Leader::advance`] with
//!    the committed events (indexes stamped), or [`Leader::abort`] if the
//!    log refused them (the leader then stops). At most one batch is in
//!    flight: `ready` proposes nothing while one is.
//! 5. The shell calls `ready` again after every `step`, `advance`, and once
//!    `Ready::wake_at_ms` has passed (timers).
//!
//! Decisions of one round are taken against the same state (the one after
//! the last commit): redundant events are recorded no-ops, identical
//! events are proposed once, only the intent apply accepted becomes a
//! launch, and commands that could conflict get a round of their own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::decide::{self, Command, Decision, Effect, Progress, Rejection, TaskUpdate, TimerKey};
use crate::events::{self, Body, Event, pb};
use crate::ids::parse_task_id;
use crate::limits::Limits;
use crate::placement::{self, Constraint, Offer, Request};
use crate::state::State;

/// Names a client command so its answer can be routed back.
pub type CommandId = u64;

/// How kaon's executor is started on an agent. One executor per agent
/// runs many steps (Mesos launches a task into a running executor whose
/// `ExecutorInfo` matches), so a step costs no process start and no
/// subscription; it exits after `idle_ms` without steps.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutorConfig {
    /// Program path on the agents.
    pub command: String,
    /// Its argv (argv\[0\] included).
    pub args: Vec<String>,
    /// CPUs reserved for the executor process besides its steps.
    pub cpus: f64,
    /// Memory reserved for the executor process, MB.
    pub mem_mb: f64,
    /// An executor with no step for this long exits, ms (0: with its last
    /// step). The leader moves an agent's next step to a new executor once
    /// the agent's executor has been idle for half of this, so a launch
    /// never races the executor's exit.
    pub idle_ms: i64,
    /// The directory on the agents where steps' secrets are read by name
    /// ("" = none: a step that names a secret fails saying so).
    pub secrets_dir: String,
}

/// The leader's configuration (all limits named, with units).
#[derive(Debug, Clone, PartialEq)]
pub struct LeaderConfig {
    /// This node's id (recorded in `LeaderStarted`).
    pub node_id: u64,
    /// The Raft term it leads in.
    pub term: u64,
    /// Its public API address, recorded so followers forward writes there.
    pub api_addr: Option<String>,
    /// The core's limits (decide uses them).
    pub limits: Limits,
    /// How steps' executors are started.
    pub executor: ExecutorConfig,
    /// Launches waiting for offers held in memory; more stay recorded in
    /// state (as live, unlaunched attempts) and are taken up as room frees.
    pub pending_launches_max: usize,
    /// Waiting launches go oldest run first; one that has waited this long
    /// goes first by arrival instead, so an old run that keeps adding steps
    /// (a large foreach, a loop) cannot starve newer runs, ms. Longer than
    /// a burst takes to drain: at 30 s, 10,000 runs fired at once aged
    /// before they drained and then went ahead of a running pipeline's next
    /// step (a 59 s wait in kaon-scale-bench).
    pub launch_aging_ms: i64,
    /// Client commands waiting to be decided; more are refused with
    /// RESOURCE_EXHAUSTED naming this limit.
    pub commands_queued_max: usize,
    /// Commands decided together in one round (only submissions combine).
    pub command_batch_max: usize,
    /// Events proposed in one batch (one decision's events stay together,
    /// so a single large decision may exceed it).
    pub round_events_max: usize,
    /// Offers declined while nothing waits are refused for this long, s.
    pub decline_refuse_secs_idle: f64,
    /// While runs are active, offers nothing can use yet are held (not
    /// declined), so the next launch goes out at once instead of waiting
    /// for a REVIVE and an allocation; an offer is held at most this long,
    /// ms, then declined with `decline_refuse_secs_busy` (it comes back).
    /// With no active run and nothing waiting, offers are declined at once.
    pub offer_hold_ms_max: i64,
    /// Offers held at most; more are declined.
    pub offers_held_max: usize,
    /// Offers declined while launches still wait (none fit) are refused
    /// for this long, s.
    pub decline_refuse_secs_busy: f64,
    /// A running task whose executor sent nothing (heartbeat, progress,
    /// status update) for this long is killed and, once the kill is
    /// confirmed, counts as lost (platform budget), ms. kaon's executor
    /// heartbeats every 10 s. The clock starts again at every subscription
    /// (framework messages are dropped while the scheduler is away). None:
    /// off (scripted executors of the simulations do not heartbeat).
    pub executor_silence_ms_max: Option<i64>,
    /// Waiting launches checked per offer round for a pending reason
    /// (no offering agent could run them even alone: a constraint no agent
    /// meets, more resources than any agent offers). The reason is
    /// recorded once per attempt as its status text.
    pub pending_reasons_per_round_max: usize,
}

impl LeaderConfig {
    /// Defaults for node `node_id` leading in `term`, with the executor
    /// `command` (argv `[kaon, executor]`).
    pub fn new(node_id: u64, term: u64, executor_command: impl Into<String>) -> LeaderConfig {
        LeaderConfig {
            node_id,
            term,
            api_addr: None,
            limits: Limits::default(),
            executor: ExecutorConfig {
                command: executor_command.into(),
                args: vec!["kaon".into(), "executor".into()],
                cpus: 0.01,
                mem_mb: 16.0,
                idle_ms: 60_000,
                secrets_dir: String::new(),
            },
            pending_launches_max: 100_000,
            launch_aging_ms: 300_000,
            commands_queued_max: 65_536,
            command_batch_max: 256,
            round_events_max: 8_192,
            decline_refuse_secs_idle: 5.0,
            decline_refuse_secs_busy: 1.0,
            offer_hold_ms_max: 5_000,
            offers_held_max: 1_024,
            pending_reasons_per_round_max: 64,
            executor_silence_ms_max: None,
        }
    }
}

/// What kaon's executor says about a running step (best effort: framework
/// messages, not reliable updates).
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutorNews {
    /// The step is alive.
    Heartbeat {
        /// Mesos task id.
        task_id: String,
    },
    /// Percent complete.
    Progress {
        /// Mesos task id.
        task_id: String,
        /// 0..=100 (clamped).
        percent: f64,
    },
    /// Free status text.
    Status {
        /// Mesos task id.
        task_id: String,
        /// Text (truncated to `progress_text_bytes_max` when recorded).
        text: String,
    },
}

/// What Mesos (through the scheduler driver) told this leader.
#[derive(Debug, Clone, PartialEq)]
pub enum MesosEvent {
    /// SUBSCRIBED: the framework id Mesos uses for us.
    Subscribed {
        /// Framework id.
        framework_id: String,
    },
    /// OFFERS.
    Offers(Vec<Offer>),
    /// RESCIND: an offer is no longer valid.
    Rescind {
        /// The offer.
        offer_id: String,
    },
    /// UPDATE (reliable or not; [`decide::Observation`] tells).
    Update(TaskUpdate),
    /// MESSAGE from an executor, decoded.
    Message(ExecutorNews),
    /// The event stream broke; the driver re-subscribes by itself.
    Disconnected,
    /// The driver gave up (its event channel closed): subscribe anew.
    DriverStopped,
    /// ERROR: Mesos ended our subscription (another scheduler took the
    /// framework). This leader must stop.
    SubscriptionEnded {
        /// Mesos' message.
        message: String,
    },
}

/// An input to the leader.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A client command; its answer comes back with `id` in a [`Ready`].
    Command {
        /// Routes the answer.
        id: CommandId,
        /// The command.
        command: Command,
    },
    /// Something Mesos said.
    Mesos(MesosEvent),
}

/// The command a step's executor runs (encoded into `TaskInfo.data` by
/// the shell as kaon's executor expects it).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepCommand {
    /// argv (empty when `shell` is set).
    pub argv: Vec<String>,
    /// A shell command line.
    pub shell: Option<String>,
    /// Environment (kaon's own variables included).
    pub env: Vec<(String, String)>,
    /// Secrets by name for the executor to resolve on the agent:
    /// (environment variable, or "" for a file; name).
    pub secrets: Vec<(String, String)>,
}

/// A task to launch, everything decided: the shell only encodes it as a
/// Mesos `TaskInfo` with a custom `ExecutorInfo`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// Mesos task id (derived from run, instance, attempt, path).
    pub task_id: String,
    /// Task name (the step path).
    pub name: String,
    /// Agent it runs on.
    pub agent_id: String,
    /// The step's own resources (name, amount).
    pub resources: Vec<(String, f64)>,
    /// Executor id: the agent's current shared executor ([`executor_id`]);
    /// the step's files are in `tasks/<task id>` of its sandbox.
    pub executor_id: String,
    /// Executor program and argv.
    pub executor: ExecutorConfig,
    /// What the executor runs.
    pub step: StepCommand,
    /// Step kind ("" = command).
    pub kind: String,
    /// Container image, for container steps.
    pub container_image: String,
}

/// A call to Mesos.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// SUBSCRIBE (again) with the recorded framework id.
    Subscribe {
        /// Framework id from the log, if one was recorded.
        framework_id: Option<String>,
    },
    /// ACCEPT offers (all of one agent) with LAUNCH of these tasks.
    Launch {
        /// The offers, one agent's.
        offer_ids: Vec<String>,
        /// Tasks packed into it.
        tasks: Vec<TaskSpec>,
    },
    /// DECLINE offers with a refuse filter.
    Decline {
        /// Offers.
        offer_ids: Vec<String>,
        /// Filter duration, s.
        refuse_seconds: f64,
    },
    /// REVIVE: launches wait for offers.
    Revive,
    /// SUPPRESS: nothing waits for offers.
    Suppress,
    /// KILL a task.
    Kill {
        /// Task.
        task_id: String,
        /// Agent, when known ("" if not).
        agent_id: String,
    },
    /// SHUTDOWN an executor (one that went silent: it may not act on a
    /// kill; the agent destroys it after its grace).
    ShutdownExecutor {
        /// Executor id.
        executor_id: String,
        /// Agent, when known ("" if not).
        agent_id: String,
    },
    /// ACKNOWLEDGE an update whose observation is committed.
    Acknowledge {
        /// Task.
        task_id: String,
        /// Agent that sent it.
        agent_id: String,
        /// The update's uuid.
        uuid: Vec<u8>,
    },
    /// RECONCILE these tasks explicitly, then implicitly (all).
    Reconcile {
        /// (task id, agent id or "").
        tasks: Vec<(String, String)>,
    },
    /// Not a Mesos call: sign the chain head after `index` with the
    /// cluster's key and send `Command::RecordChainSignature` back (the
    /// shell holds the key).
    SignChainHead {
        /// The event whose head is signed.
        index: u64,
        /// The chain head after it.
        chain_head: [u8; 32],
    },
}

/// What a command did: decide's answer and the events it committed.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutcome {
    /// Decide's answer (events proposed, `existing_run`, `existing_version`).
    pub decision: Decision,
    /// The events the command itself committed, with their indexes (a
    /// submit's run id is the index of its `RunSubmitted`).
    pub committed: Vec<Event>,
}

/// Where a waiting launch sits in the placement order: (run id, arrival).
type PendKey = (u64, u64);

/// When `l`'s attempt's launch intent was committed (it waits since).
fn attempt_launched_ms(state: &State, l: &pb::TaskLaunchRequested) -> Option<i64> {
    let run = state.run(l.run_id)?;
    let inst = run.instances.get(l.instance as usize)?;
    inst.attempts
        .iter()
        .find(|a| a.number == l.attempt)
        .map(|a| a.launched_ms)
}

/// A command's answer.
pub type Reply = Result<CommandOutcome, Rejection>;

/// What the shell must do now (see the module's contract).
#[derive(Debug, Default)]
pub struct Ready {
    /// Events to propose as one batch (empty: nothing, or a batch is in
    /// flight).
    pub propose: Vec<Body>,
    /// Mesos calls, to make at once and in order.
    pub actions: Vec<Action>,
    /// Answers to commands.
    pub replies: Vec<(CommandId, Reply)>,
    /// Call `ready` again at this time at the latest (a timer), ms since
    /// the epoch.
    pub wake_at_ms: Option<i64>,
    /// The leader stopped (why): stop the shell; commands got UNAVAILABLE.
    pub stop: Option<String>,
}

/// An input waiting for the next round.
#[derive(Debug, Clone, PartialEq)]
enum Queued {
    Started,
    RearmRetention,
    Update(TaskUpdate),
    Progress(Progress),
    Timer(TimerKey),
    Silent(String),
}

/// Timers the leader keeps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// One of decide's timers.
    Decide(TimerKey),
    /// Record a task's progress that the rate limit held back.
    Progress(String),
    /// Look for running tasks whose executors went silent.
    Silence,
    /// Decline offers held for `offer_hold_ms_max`.
    OfferHold,
}

/// An offer held for the next launch.
#[derive(Debug, Clone)]
struct HeldOffer {
    offer: Offer,
    /// When it arrived, ms.
    since_ms: i64,
}

/// The executor this leader uses on one agent.
#[derive(Debug, Clone, Default)]
struct AgentExecutor {
    /// Bumped when the agent's executor may be about to exit idle.
    generation: u32,
    /// Steps this leader sent to it that have not ended.
    live: usize,
    /// When its last step ended, ms.
    idle_since_ms: i64,
    /// Whether this leader used it at all.
    used: bool,
    /// It died or is being shut down: the next step goes to a new one
    /// (a launch into an executor id Mesos is still tearing down is lost).
    retired: bool,
}

/// Executor progress of one task as the leader tracks it.
#[derive(Debug, Clone, Default)]
struct Tracked {
    /// Latest (percent, text) heard.
    latest: (u32, String),
    /// Latest queued for recording.
    recorded: Option<(u32, String)>,
    /// When it was queued (the rate limit counts from here too, since its
    /// event may not be applied yet).
    queued_ms: i64,
}

/// The batch in flight.
#[derive(Debug)]
struct Round {
    /// Launch intents in it (their task ids). The state machine may apply
    /// them before `advance` reports the batch: until then they are this
    /// leader's own launches all the same (never reconciled).
    launches: BTreeSet<String>,
    /// Commands in it: (reply id, decision, number of its events).
    commands: Vec<(Option<CommandId>, Decision, usize)>,
    /// Index of the first command event in the batch.
    first_command_event: usize,
    /// Events in the batch.
    events: usize,
}

/// The pure leader (see the module docs for its contract).
#[derive(Debug)]
pub struct Leader {
    cfg: LeaderConfig,
    /// Commands waiting to be decided (`None`: the leader's own).
    commands: VecDeque<(Option<CommandId>, Command)>,
    /// Other inputs waiting to be decided.
    inputs: VecDeque<Queued>,
    /// Follow-up decisions on committed events, to propose next round.
    backlog: VecDeque<Decision>,
    in_flight: Option<Round>,
    to_propose: Vec<Body>,
    /// Committed intents waiting for offers, in placement order: oldest
    /// run first, then in the order they arrived. A run in progress is not
    /// starved by runs that arrive after it (10,000 schedules firing at
    /// once queue behind the next step of a pipeline already running).
    pending: BTreeMap<PendKey, pb::TaskLaunchRequested>,
    pending_ids: BTreeMap<String, PendKey>,
    /// The same launches by arrival (sequence -> key): the oldest wait.
    pending_order: BTreeMap<u64, PendKey>,
    next_seq: u64,
    /// Tasks this leader sent to Mesos that have not ended, with their agent.
    sent: BTreeMap<String, String>,
    /// Offers held for launches to come, by agent.
    held: BTreeMap<String, Vec<HeldOffer>>,
    /// Pending launches or held offers changed since the last placement.
    placement_due: bool,
    /// The shared executor used on each agent.
    executors: BTreeMap<String, AgentExecutor>,
    /// The executor each live task runs in (from this leader's launches and
    /// from Mesos' updates), for a SHUTDOWN of a silent one.
    executor_of: BTreeMap<String, String>,
    /// A launch did not fit `pending_launches_max`: take launches up from
    /// state as room frees.
    overflowed: bool,
    progress: BTreeMap<String, Tracked>,
    /// Waiting launches whose pending reason was recorded (once each).
    pending_noted: BTreeSet<String>,
    /// When each live task's executor (or Mesos, for it) was last heard.
    heard: BTreeMap<String, i64>,
    /// Since when silence counts (the latest subscription).
    heard_since_ms: Option<i64>,
    /// Tasks already reported silent (once per attempt).
    silent_noted: BTreeSet<String>,
    timers: BTreeMap<Timer, i64>,
    due: BTreeSet<(i64, Timer)>,
    subscribed: bool,
    suppressed: bool,
    actions: Vec<Action>,
    replies: Vec<(CommandId, Reply)>,
    stopped: Option<String>,
}

/// A leader's gauges ([`Leader::stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LeaderStats {
    /// Launch intents committed and waiting for offers.
    pub launches_waiting: usize,
    /// How long the oldest of them has waited, ms (None: none waits).
    pub oldest_launch_wait_ms: Option<i64>,
    /// Offers held for launches to come.
    pub offers_held: usize,
    /// Tasks this leader sent to Mesos that have not ended.
    pub tasks_live: usize,
    /// Subscribed to the Mesos master.
    pub subscribed: bool,
    /// Offers suppressed (nothing waits for them).
    pub suppressed: bool,
}

/// The id of the executor a leader in `term` runs steps in on an agent,
/// its `generation` there. Each leader uses executors of its own (the
/// `ExecutorInfo` it sends must match the running one's), and a new
/// generation once one may be about to exit idle.
pub fn executor_id(term: u64, generation: u32) -> String {
    format!("kaon-exec-t{term}-g{generation}")
}

/// The executor id of a task launched before executors were shared (one
/// executor per attempt): where its logs are.
pub fn legacy_executor_id(task_id: &str) -> String {
    format!("kaon-exec-{task_id}")
}

impl Leader {
    /// A leader that just took office: its first round records who leads
    /// (with the API address) and rebuilds everything from state
    /// (`decide(LeaderStarted)`: subscribe, re-arm timers, re-derive
    /// follow-ups an earlier leader may not have proposed).
    pub fn new(cfg: LeaderConfig) -> Leader {
        let mut commands = VecDeque::new();
        if let Some(api_addr) = cfg.api_addr.clone() {
            commands.push_back((
                None,
                Command::AnnounceLeader {
                    node_id: cfg.node_id,
                    term: cfg.term,
                    api_addr,
                },
            ));
        }
        Leader {
            cfg,
            commands,
            inputs: VecDeque::from([Queued::Started]),
            backlog: VecDeque::new(),
            in_flight: None,
            to_propose: Vec::new(),
            pending: BTreeMap::new(),
            pending_ids: BTreeMap::new(),
            pending_order: BTreeMap::new(),
            next_seq: 0,
            sent: BTreeMap::new(),
            held: BTreeMap::new(),
            placement_due: false,
            executors: BTreeMap::new(),
            executor_of: BTreeMap::new(),
            overflowed: false,
            progress: BTreeMap::new(),
            pending_noted: BTreeSet::new(),
            heard: BTreeMap::new(),
            heard_since_ms: None,
            silent_noted: BTreeSet::new(),
            timers: BTreeMap::new(),
            due: BTreeSet::new(),
            subscribed: false,
            suppressed: false,
            actions: Vec::new(),
            replies: Vec::new(),
            stopped: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LeaderConfig {
        &self.cfg
    }

    /// Whether a batch is proposed and not yet advanced.
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Launches waiting for offers (held in memory).
    pub fn pending_launches(&self) -> usize {
        self.pending.len()
    }

    /// What the leader is doing now, for metrics: read only, decides
    /// nothing. `now_ms` ages the oldest waiting launch.
    pub fn stats(&self, state: &State, now_ms: i64) -> LeaderStats {
        // The first to arrive has waited longest (its attempt's launch
        // intent time is when it started to wait).
        let oldest = self
            .pending_order
            .values()
            .next()
            .and_then(|k| self.pending.get(k));
        let oldest_launch_wait_ms = oldest
            .and_then(|l| attempt_launched_ms(state, l))
            .map(|t| now_ms.saturating_sub(t).max(0));
        LeaderStats {
            launches_waiting: self.pending.len(),
            oldest_launch_wait_ms,
            offers_held: self.held.values().map(Vec::len).sum(),
            tasks_live: self.sent.len(),
            subscribed: self.subscribed,
            suppressed: self.suppressed,
        }
    }

    /// The newest event schema every voter applies, as the shell learned
    /// it from the Raft replies (`Limits::event_schema_max`): decisions
    /// that need a newer event kind wait until it is raised. Capped at
    /// this kaon's own.
    pub fn set_event_schema_max(&mut self, schema: u32) {
        let schema = schema.min(crate::events::EVENT_SCHEMA);
        let retire = events::body_schema(&Body::RunsRetired(Default::default()));
        if self.cfg.limits.event_schema_max < retire && schema >= retire {
            // Retirements held back while a voter could not apply them.
            self.inputs.push_back(Queued::RearmRetention);
        }
        self.cfg.limits.event_schema_max = schema;
    }

    /// The deadline of one of decide's timers, if it is armed.
    pub fn timer(&self, key: &TimerKey) -> Option<i64> {
        self.timers.get(&Timer::Decide(key.clone())).copied()
    }

    /// Why the leader stopped, if it did.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.as_deref()
    }

    /// Hands in one input. `state` is the applied state (the leader reads
    /// it, e.g. to place offers on live launches only).
    pub fn step(&mut self, state: &State, input: Input, now_ms: i64) {
        if self.stopped.is_some() {
            if let Input::Command { id, .. } = input {
                let why = self.stopped.clone().unwrap_or_default();
                self.replies.push((id, Err(Rejection::Unavailable(why))));
            }
            return;
        }
        match input {
            Input::Command { id, command } => {
                if self.commands.len() >= self.cfg.commands_queued_max {
                    self.replies.push((
                        id,
                        Err(Rejection::LimitExceeded(format!(
                            "{} commands are waiting for the leader, the limit commands_queued_max = {}",
                            self.commands.len(),
                            self.cfg.commands_queued_max
                        ))),
                    ));
                } else {
                    self.commands.push_back((Some(id), command));
                }
            }
            Input::Mesos(ev) => self.mesos(state, ev, now_ms),
        }
    }

    fn mesos(&mut self, state: &State, ev: MesosEvent, now_ms: i64) {
        match ev {
            MesosEvent::Subscribed { framework_id } => {
                self.subscribed = true;
                // Messages were dropped while unsubscribed: silence counts
                // from now.
                self.heard.clear();
                self.heard_since_ms = Some(now_ms);
                self.suppressed = false;
                // Offers of an earlier subscription are gone.
                self.held.clear();
                if state.framework_id.as_deref() != Some(framework_id.as_str()) {
                    self.commands
                        .push_back((None, Command::RecordFramework { framework_id }));
                }
                // Every task state says may be live, except launches still
                // waiting here (Mesos never heard of them: it would answer
                // "unknown", and they would be lost and launched again).
                self.actions.push(Action::Reconcile {
                    tasks: self.reconcile_selection(state),
                });
                if self.pending.is_empty() {
                    self.suppress();
                } else {
                    self.actions.push(Action::Revive);
                }
            }
            MesosEvent::Offers(offers) => self.hold(state, offers, now_ms),
            MesosEvent::Rescind { offer_id } => {
                for offers in self.held.values_mut() {
                    offers.retain(|h| h.offer.id != offer_id);
                }
                self.held.retain(|_, o| !o.is_empty());
            }
            MesosEvent::Update(u) => {
                if attempt_live(state, &u.task_id) {
                    self.heard.insert(u.task_id.clone(), now_ms);
                }
                if !u.executor_id.is_empty() && !u.state.is_terminal() {
                    self.executor_of
                        .insert(u.task_id.clone(), u.executor_id.clone());
                }
                if u.state.is_terminal() {
                    self.progress.remove(&u.task_id);
                    if u.reason == "REASON_EXECUTOR_TERMINATED"
                        && let Some(e) = self.executor_of.get(&u.task_id).cloned()
                    {
                        self.retire_executor(&u.agent_id, &e);
                    }
                    self.executor_of.remove(&u.task_id);
                    if let Some(agent) = self.sent.remove(&u.task_id)
                        && let Some(e) = self.executors.get_mut(&agent)
                    {
                        e.live = e.live.saturating_sub(1);
                        if e.live == 0 {
                            e.idle_since_ms = now_ms;
                        }
                    }
                    self.unpend(&u.task_id);
                }
                self.inputs.push_back(Queued::Update(u));
            }
            MesosEvent::Message(news) => self.news(state, news, now_ms),
            MesosEvent::Disconnected => {
                self.subscribed = false;
                // Mesos rescinds the offers of a disconnected framework.
                self.held.clear();
            }
            MesosEvent::DriverStopped => {
                self.subscribed = false;
                self.held.clear();
                self.actions.push(Action::Subscribe {
                    framework_id: state.framework_id.clone(),
                });
            }
            MesosEvent::SubscriptionEnded { message } => {
                self.stop(format!(
                    "Mesos ended this leader's subscription ({message}); another scheduler holds the framework"
                ));
            }
        }
    }

    /// The rounds: decides what waits and hands out the next batch; fires
    /// due timers. See the module docs.
    pub fn ready(&mut self, state: &State, now_ms: i64) -> Ready {
        if self.stopped.is_none() {
            self.fire_timers(state, now_ms);
            // Re-armed after firing, so `wake_at_ms` always includes it.
            if let Some(max) = self.cfg.executor_silence_ms_max
                && !self.timers.contains_key(&Timer::Silence)
                && self.heard_since_ms.is_some()
            {
                self.arm(Timer::Silence, now_ms.saturating_add((max / 4).max(1_000)));
            }
            if self.in_flight.is_none() {
                self.round(state, now_ms);
            }
            if self.placement_due {
                self.place(state, now_ms);
            }
            self.release_offers(state, now_ms);
        }
        Ready {
            propose: std::mem::take(&mut self.to_propose),
            actions: std::mem::take(&mut self.actions),
            replies: std::mem::take(&mut self.replies),
            wake_at_ms: self.due.first().map(|(at, _)| *at),
            stop: self.stopped.clone(),
        }
    }

    /// The batch handed out by `ready` is committed and applied: `committed`
    /// are its events with their indexes, in order; `state` includes them.
    /// Answers the commands in it and decides on each committed event.
    pub fn advance(&mut self, state: &State, committed: &[Event], now_ms: i64) {
        let round = self
            .in_flight
            .take()
            .expect("advance is called only for a batch in flight");
        assert_eq!(
            committed.len(),
            round.events,
            "the log committed {} events of a batch of {}",
            committed.len(),
            round.events
        );
        let mut at = round.first_command_event;
        for (id, d, n) in round.commands {
            let mine = committed[at..at + n].to_vec();
            at += n;
            if let Some(id) = id {
                self.replies.push((
                    id,
                    Ok(CommandOutcome {
                        decision: d,
                        committed: mine,
                    }),
                ));
            }
        }
        for e in committed {
            let d = decide::decide(state, decide::Input::Committed(e), now_ms, &self.cfg.limits)
                .expect("decide never rejects a committed event");
            self.absorb(state, d.effects);
            if !d.events.is_empty() {
                self.backlog.push_back(Decision {
                    events: d.events,
                    ..Decision::default()
                });
            }
        }
    }

    /// The log refused the batch in flight (lost leadership, storage
    /// failure): the leader stops; every waiting command is answered
    /// UNAVAILABLE (a client retries it at the next leader).
    pub fn abort(&mut self, why: &str) {
        self.stop(format!("the log refused a write ({why})"));
    }

    fn stop(&mut self, why: String) {
        if self.stopped.is_some() {
            return;
        }
        if let Some(round) = self.in_flight.take() {
            for (id, _, _) in round.commands {
                if let Some(id) = id {
                    self.replies
                        .push((id, Err(Rejection::Unavailable(why.clone()))));
                }
            }
        }
        for (id, _) in self.commands.drain(..) {
            if let Some(id) = id {
                self.replies
                    .push((id, Err(Rejection::Unavailable(why.clone()))));
            }
        }
        self.stopped = Some(why);
    }

    // ----- rounds ------------------------------------------------------------

    fn round(&mut self, state: &State, now: i64) {
        let max = self.cfg.round_events_max;
        let mut events: Vec<Body> = Vec::new();
        let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
        // Follow-ups and inputs decided against this same state may repeat
        // an event (two finished dependencies both start a step): propose
        // it once. Commands' events are never merged (two submits without
        // a key are two runs).
        let mut push = |events: &mut Vec<Body>, b: Body| {
            let key = events::encode(&Event {
                index: 0,
                time_unix_ms: 0,
                body: Some(b.clone()),
            });
            if seen.insert(key) {
                events.push(b);
            }
        };
        while let Some(d) = self.backlog.front() {
            if !events.is_empty() && events.len() + d.events.len() > max {
                break;
            }
            let d = self.backlog.pop_front().expect("front exists");
            for b in d.events {
                push(&mut events, b);
            }
        }
        // Retirements go after the commands' events: a command decided
        // against this state may name a run they remove (a retry of it).
        let mut retirements: Vec<Body> = Vec::new();
        while events.len() + retirements.len() < max
            && let Some(q) = self.inputs.pop_front()
        {
            let input = match q {
                Queued::Started => decide::Input::LeaderStarted,
                Queued::RearmRetention => decide::Input::RearmRetention,
                Queued::Update(u) => decide::Input::TaskUpdate(u),
                Queued::Progress(p) => decide::Input::Progress(p),
                Queued::Timer(k) => decide::Input::TimerFired(k),
                Queued::Silent(task_id) => decide::Input::ExecutorSilent { task_id },
            };
            let d = decide::decide(state, input, now, &self.cfg.limits)
                .expect("decide rejects only commands");
            self.absorb(state, d.effects);
            for b in d.events {
                if matches!(b, Body::RunsRetired(_)) {
                    retirements.push(b);
                } else {
                    push(&mut events, b);
                }
            }
        }
        let first_command_event = events.len();
        let commands = self.decide_commands(state, now, &mut events);
        for b in retirements {
            push(&mut events, b);
        }
        if events.is_empty() {
            debug_assert!(
                commands.is_empty(),
                "a command without events is answered at once"
            );
            return;
        }
        let launches = events
            .iter()
            .filter_map(|b| match b {
                Body::TaskLaunchRequested(l) => Some(l.task_id.clone()),
                _ => None,
            })
            .collect();
        self.in_flight = Some(Round {
            launches,
            commands,
            first_command_event,
            events: events.len(),
        });
        self.to_propose = events;
    }

    /// Decides waiting commands against `state`. Those whose decisions
    /// combine safely (they only submit runs, with distinct idempotency
    /// keys, within `active_runs_max`) share the round; any other command
    /// is decided alone, against the state its predecessors produced.
    /// Rejections and commands that propose nothing are answered at once.
    fn decide_commands(
        &mut self,
        state: &State,
        now: i64,
        events: &mut Vec<Body>,
    ) -> Vec<(Option<CommandId>, Decision, usize)> {
        let limits = self.cfg.limits.clone();
        let mut taken: Vec<(Option<CommandId>, Decision, usize)> = Vec::new();
        let mut keys: BTreeSet<String> = BTreeSet::new();
        let active = state.active_runs.len();
        while taken.len() < self.cfg.command_batch_max
            && let Some((id, cmd)) = self.commands.pop_front()
        {
            let d = match decide::decide(state, decide::Input::Command(cmd.clone()), now, &limits) {
                Err(r) => {
                    if let Some(id) = id {
                        self.replies.push((id, Err(r)));
                    }
                    continue;
                }
                Ok(d) => d,
            };
            if d.events.is_empty() {
                if let Some(id) = id {
                    self.replies.push((
                        id,
                        Ok(CommandOutcome {
                            decision: d,
                            committed: Vec::new(),
                        }),
                    ));
                }
                continue;
            }
            let key = d.events.iter().find_map(|e| match e {
                Body::RunSubmitted(r) if !r.idempotency_key.is_empty() => {
                    Some(r.idempotency_key.clone())
                }
                _ => None,
            });
            let combinable = d.events.iter().all(|e| matches!(e, Body::RunSubmitted(_)))
                && key.as_ref().is_none_or(|k| !keys.contains(k))
                && active + taken.len() < limits.active_runs_max;
            if !taken.is_empty() && !combinable {
                // Next round, against the state this round produces.
                self.commands.push_front((id, cmd));
                break;
            }
            keys.extend(key);
            let n = d.events.len();
            events.extend(d.events.iter().cloned());
            self.absorb(state, d.effects.clone());
            taken.push((
                id,
                Decision {
                    effects: Vec::new(),
                    ..d
                },
                n,
            ));
            if !combinable {
                break;
            }
        }
        taken
    }

    // ----- effects -----------------------------------------------------------

    fn absorb(&mut self, state: &State, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::LaunchTask(l) => self.pend(state, *l),
                Effect::KillTask { task_id, agent_id } => {
                    // A launch that never left: Mesos answers the kill with
                    // "unknown task", which ends the attempt.
                    self.unpend(&task_id);
                    self.actions.push(Action::Kill { task_id, agent_id });
                }
                Effect::ShutdownExecutor { task_id, agent_id } => {
                    // The executor it runs in, as this leader or Mesos said;
                    // a task of an earlier kaon ran in one of its own.
                    let executor_id = self
                        .executor_of
                        .get(&task_id)
                        .cloned()
                        .unwrap_or_else(|| legacy_executor_id(&task_id));
                    self.retire_executor(&agent_id, &executor_id);
                    self.actions.push(Action::ShutdownExecutor {
                        executor_id,
                        agent_id,
                    });
                }
                Effect::Acknowledge {
                    task_id,
                    agent_id,
                    uuid,
                } => self.actions.push(Action::Acknowledge {
                    task_id,
                    agent_id,
                    uuid,
                }),
                Effect::ArmTimer { key, at_ms } => self.arm(Timer::Decide(key), at_ms),
                Effect::Subscribe { framework_id } => {
                    self.subscribed = false;
                    self.actions.push(Action::Subscribe { framework_id });
                }
                Effect::SignChainHead { index, chain_head } => {
                    self.actions
                        .push(Action::SignChainHead { index, chain_head });
                }
            }
        }
    }

    fn pend(&mut self, state: &State, l: pb::TaskLaunchRequested) {
        if !attempt_live(state, &l.task_id)
            || self.pending_ids.contains_key(&l.task_id)
            || self.sent.contains_key(&l.task_id)
        {
            return;
        }
        if self.pending.len() >= self.cfg.pending_launches_max {
            // Not lost: the intent is in state; it is taken up again when
            // room frees (`refill`).
            self.overflowed = true;
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = (l.run_id, seq);
        self.pending_ids.insert(l.task_id.clone(), key);
        self.pending_order.insert(seq, key);
        self.pending.insert(key, l);
        self.placement_due = true;
        if self.subscribed && self.suppressed {
            self.suppressed = false;
            self.actions.push(Action::Revive);
        }
    }

    fn unpend(&mut self, task_id: &str) {
        if let Some(key) = self.pending_ids.remove(task_id) {
            self.pending.remove(&key);
            self.pending_order.remove(&key.1);
        }
        self.pending_noted.remove(task_id);
    }

    fn suppress(&mut self) {
        if !self.suppressed {
            self.suppressed = true;
            self.actions.push(Action::Suppress);
        }
    }

    /// Live tasks to ask Mesos about: every attempt state says may be live
    /// except this leader's own launches that have not left it (waiting
    /// for an offer, or intents in the batch in flight, which the applied
    /// state may already show).
    fn reconcile_selection(&self, state: &State) -> Vec<(String, String)> {
        let in_flight = self.in_flight.as_ref().map(|r| &r.launches);
        crate::state::live_tasks(state)
            .into_iter()
            .map(|(rid, i, a)| (state.runs[&rid].task_id(i, a.number), a.agent_id.clone()))
            .filter(|(t, _)| {
                !self.pending_ids.contains_key(t) && !in_flight.is_some_and(|l| l.contains(t))
            })
            .collect()
    }

    /// Takes launches up from state after an overflow: live attempts that
    /// never reached Mesos from this leader (still staging, not pending,
    /// not sent), oldest run first.
    fn refill(&mut self, state: &State) {
        if !self.overflowed || self.pending.len() > self.cfg.pending_launches_max / 2 {
            return;
        }
        self.overflowed = false;
        for &rid in &state.active_runs {
            let run = &state.runs[&rid];
            for (i, inst) in run.instances.iter().enumerate() {
                let Some(a) = inst.live_attempt() else {
                    continue;
                };
                if a.state != events::TaskState::Staging {
                    continue;
                }
                let task_id = run.task_id(i as u32, a.number);
                if self.pending_ids.contains_key(&task_id) || self.sent.contains_key(&task_id) {
                    continue;
                }
                if self.pending.len() >= self.cfg.pending_launches_max {
                    self.overflowed = true;
                    return;
                }
                // The launch as its committed intent described it.
                if let Some(l) = relaunch_intent(state, rid, i as u32, a.number) {
                    self.pend(state, l);
                }
            }
        }
    }

    /// Takes offers in: they are held for the launches waiting now and to
    /// come (see `release_offers` for how long), beyond `offers_held_max`
    /// declined.
    fn hold(&mut self, state: &State, offers: Vec<Offer>, now: i64) {
        let mut over = Vec::new();
        let mut count: usize = self.held.values().map(Vec::len).sum();
        for offer in offers {
            if count >= self.cfg.offers_held_max {
                over.push(offer.id);
                continue;
            }
            count += 1;
            self.held
                .entry(offer.agent_id.clone())
                .or_default()
                .push(HeldOffer {
                    offer,
                    since_ms: now,
                });
        }
        if !over.is_empty() {
            self.actions.push(Action::Decline {
                offer_ids: over,
                refuse_seconds: self.cfg.decline_refuse_secs_busy,
            });
        }
        self.placement_due = true;
        self.place(state, now);
    }

    /// Places waiting launches on the held offers: an agent's offers are
    /// one pool (one ACCEPT names them all; what it leaves comes back as a
    /// new offer), less the share of the agent's executor, which Mesos
    /// counts once when it starts. Offers nothing fits stay held.
    fn place(&mut self, state: &State, now: i64) {
        if !self.subscribed {
            // Offers of a subscription that ended are gone; a new one
            // brings new offers.
            return;
        }
        self.placement_due = false;
        // Launches whose attempt ended while they waited never go out.
        let dead: Vec<String> = self
            .pending
            .values()
            .filter(|l| !attempt_live(state, &l.task_id))
            .map(|l| l.task_id.clone())
            .collect();
        for t in dead {
            self.unpend(&t);
        }
        self.refill(state);
        if self.pending.is_empty() || self.held.is_empty() {
            return;
        }
        let share = [
            ("cpus", self.cfg.executor.cpus),
            ("mem", self.cfg.executor.mem_mb),
        ];
        let pools: Vec<Offer> = self.held.values().map(|h| pool(h)).collect();
        let for_tasks: Vec<Offer> = pools
            .iter()
            .cloned()
            .map(|mut o| {
                for (k, v) in share {
                    if let Some(have) = o.scalars.get_mut(k) {
                        *have = (*have - v).max(0.0);
                    }
                }
                o
            })
            .collect();
        // Placement order: launches that waited launch_aging_ms or more, by
        // arrival; then the rest, oldest run first.
        let aged_before = now.saturating_sub(self.cfg.launch_aging_ms);
        let mut order: Vec<PendKey> = Vec::with_capacity(self.pending.len());
        for key in self.pending_order.values() {
            let waited_since = self
                .pending
                .get(key)
                .and_then(|l| attempt_launched_ms(state, l));
            match waited_since {
                Some(t) if t <= aged_before => order.push(*key),
                _ => break,
            }
        }
        let aged: BTreeSet<PendKey> = order.iter().copied().collect();
        order.extend(self.pending.keys().filter(|k| !aged.contains(k)).copied());
        let requests: Vec<Request> = order
            .iter()
            .map(|k| self.request(&self.pending[k]))
            .collect();
        let plan = placement::place(&requests, &for_tasks);
        // A reason to wait is judged against whole offers and requests
        // with the executor's share (how a user reads it).
        let whole: Vec<Request> = requests
            .iter()
            .cloned()
            .map(|mut r| {
                for (k, v) in share {
                    *r.scalars.entry(k.to_string()).or_default() += v;
                }
                r
            })
            .collect();
        self.note_pending_reasons(&whole, &plan.unplaced, &pools);
        for (pool_id, placements) in plan.launches {
            let Some(agent) = pools
                .iter()
                .find(|o| o.id == pool_id)
                .map(|o| o.agent_id.clone())
            else {
                continue;
            };
            let offer_ids: Vec<String> = self
                .held
                .remove(&agent)
                .unwrap_or_default()
                .into_iter()
                .map(|h| h.offer.id)
                .collect();
            let mut tasks = Vec::with_capacity(placements.len());
            for p in placements {
                let Some(key) = self.pending_ids.remove(&p.task_id) else {
                    continue;
                };
                self.pending_order.remove(&key.1);
                let l = self
                    .pending
                    .remove(&key)
                    .expect("pending ids index pending");
                self.pending_noted.remove(&l.task_id);
                let executor_id = self.executor_for(&p.agent_id, now);
                self.sent.insert(l.task_id.clone(), p.agent_id.clone());
                self.executor_of
                    .insert(l.task_id.clone(), executor_id.clone());
                tasks.push(self.task_spec(&l, p.agent_id, executor_id));
            }
            self.actions.push(Action::Launch { offer_ids, tasks });
        }
    }

    /// The executor a step placed on `agent` now runs in: the agent's
    /// current one, or a new generation once it has had no step of this
    /// leader's for half its idle time (it may be about to exit: a task
    /// sent to an executor that exits is lost and retried, which a new
    /// executor id avoids).
    fn executor_for(&mut self, agent: &str, now: i64) -> String {
        let idle_ms = self.cfg.executor.idle_ms;
        let e = self.executors.entry(agent.to_string()).or_default();
        if e.retired
            || (e.used && e.live == 0 && now.saturating_sub(e.idle_since_ms) >= idle_ms / 2)
        {
            e.generation += 1;
            e.retired = false;
        }
        e.used = true;
        e.live += 1;
        executor_id(self.cfg.term, e.generation)
    }

    /// The executor `id` on `agent` died or is being shut down:
    /// if it is the agent's current one, the next step there goes to a new
    /// generation.
    fn retire_executor(&mut self, agent: &str, id: &str) {
        if let Some(e) = self.executors.get_mut(agent)
            && id == executor_id(self.cfg.term, e.generation)
        {
            e.retired = true;
        }
    }

    /// Gives back held offers: all of them at once when nothing waits and
    /// no run is active (then offers are suppressed), otherwise each after
    /// `offer_hold_ms_max` (declined briefly, so it comes back).
    fn release_offers(&mut self, state: &State, now: i64) {
        if self.held.is_empty() {
            return;
        }
        let idle = self.pending.is_empty() && state.active_runs.is_empty();
        let hold_ms = self.cfg.offer_hold_ms_max;
        let mut expired = Vec::new();
        let mut next: Option<i64> = None;
        for offers in self.held.values_mut() {
            offers.retain(|h| {
                let until = h.since_ms.saturating_add(hold_ms);
                if idle || until <= now {
                    expired.push(h.offer.id.clone());
                    false
                } else {
                    next = Some(next.map_or(until, |n: i64| n.min(until)));
                    true
                }
            });
        }
        self.held.retain(|_, o| !o.is_empty());
        if !expired.is_empty() {
            let refuse_seconds = if idle {
                self.cfg.decline_refuse_secs_idle
            } else {
                self.cfg.decline_refuse_secs_busy
            };
            self.actions.push(Action::Decline {
                offer_ids: expired,
                refuse_seconds,
            });
        }
        if idle {
            self.suppress();
        }
        if let Some(at) = next {
            self.arm(Timer::OfferHold, at);
        }
    }

    /// Records why a waiting launch cannot run on any agent offering now
    /// (issue 9, E: a step no agent can satisfy says so instead of hanging
    /// silently), as the attempt's status text, once per attempt and for at
    /// most `pending_reasons_per_round_max` launches per round. A launch
    /// that some offer could host alone only waits its turn: nothing is
    /// recorded.
    fn note_pending_reasons(
        &mut self,
        requests: &[Request],
        unplaced: &[String],
        offers: &[Offer],
    ) {
        let mut checked = 0;
        // `unplaced` keeps the order of `requests`: walk both at once.
        let mut rs = requests.iter();
        for task_id in unplaced {
            if checked >= self.cfg.pending_reasons_per_round_max {
                break;
            }
            let Some(r) = rs.by_ref().find(|r| &r.id == task_id) else {
                break;
            };
            if self.pending_noted.contains(task_id) {
                continue;
            }
            checked += 1;
            if let Some(text) = placement::unplaceable(r, offers) {
                self.pending_noted.insert(task_id.clone());
                self.inputs.push_back(Queued::Progress(Progress {
                    task_id: task_id.clone(),
                    percent: 0,
                    text,
                }));
            }
        }
    }

    /// What a launch needs from an offer: its resources (the executor's
    /// share is taken from the agent's pool once, see `place`) and its
    /// constraints.
    fn request(&self, l: &pb::TaskLaunchRequested) -> Request {
        let r = l.resources.unwrap_or_default();
        let mut scalars =
            BTreeMap::from([("cpus".to_string(), r.cpus), ("mem".to_string(), r.mem_mb)]);
        if r.disk_mb > 0.0 {
            scalars.insert("disk".into(), r.disk_mb);
        }
        if r.gpus > 0 {
            scalars.insert("gpus".into(), f64::from(r.gpus));
        }
        let constraints = l
            .constraints
            .iter()
            .map(|c| match &c.op {
                Some(pb::constraint::Op::Equals(v)) => Constraint::Equals {
                    name: c.attribute.clone(),
                    value: v.clone(),
                },
                Some(pb::constraint::Op::Like(p)) => Constraint::like(&c.attribute, p)
                    // Validated at submit; a pattern that no longer
                    // compiles matches nothing rather than everything.
                    .unwrap_or(Constraint::Hostname {
                        hostname: "\u{0}".into(),
                    }),
                None => Constraint::Hostname {
                    hostname: "\u{0}".into(),
                },
            })
            .collect();
        Request {
            id: l.task_id.clone(),
            scalars,
            ports: 0,
            constraints,
        }
    }

    fn task_spec(
        &self,
        l: &pb::TaskLaunchRequested,
        agent_id: String,
        executor_id: String,
    ) -> TaskSpec {
        let r = l.resources.unwrap_or_default();
        let mut resources = vec![("cpus".to_string(), r.cpus), ("mem".to_string(), r.mem_mb)];
        if r.disk_mb > 0.0 {
            resources.push(("disk".into(), r.disk_mb));
        }
        if r.gpus > 0 {
            resources.push(("gpus".into(), f64::from(r.gpus)));
        }
        TaskSpec {
            task_id: l.task_id.clone(),
            name: l.step_path.clone(),
            agent_id,
            resources,
            executor_id,
            executor: self.cfg.executor.clone(),
            step: StepCommand {
                argv: if l.shell { Vec::new() } else { l.argv.clone() },
                shell: if l.shell {
                    l.argv.first().cloned()
                } else {
                    None
                },
                env: l
                    .env
                    .iter()
                    .map(|e| (e.name.clone(), e.value.clone()))
                    .collect(),
                secrets: l
                    .secrets
                    .iter()
                    .map(|s| (s.env.clone(), s.name.clone()))
                    .collect(),
            },
            kind: l.kind.clone(),
            container_image: l.container_image.clone(),
        }
    }

    // ----- timers and progress ---------------------------------------------

    fn arm(&mut self, t: Timer, at_ms: i64) {
        if let Some(old) = self.timers.insert(t.clone(), at_ms) {
            self.due.remove(&(old, t.clone()));
        }
        self.due.insert((at_ms, t));
    }

    fn fire_timers(&mut self, state: &State, now: i64) {
        while let Some((at, _)) = self.due.first()
            && *at <= now
        {
            let (_, t) = self.due.pop_first().expect("first exists");
            self.timers.remove(&t);
            match t {
                Timer::Decide(k) => self.inputs.push_back(Queued::Timer(k)),
                Timer::Progress(task_id) => self.record_progress(state, task_id, now),
                Timer::Silence => self.check_silence(state, now),
                // `ready` releases what is due right after.
                Timer::OfferHold => {}
            }
        }
    }

    /// Reports running tasks whose executors were silent for more than
    /// `executor_silence_ms_max` (decide kills them), once per attempt;
    /// forgets tasks that ended.
    fn check_silence(&mut self, state: &State, now: i64) {
        let (Some(max), Some(since)) = (self.cfg.executor_silence_ms_max, self.heard_since_ms)
        else {
            return;
        };
        let live: BTreeSet<String> = crate::state::live_tasks(state)
            .into_iter()
            // The executor holds the task from STARTING on (it may hang
            // before its RUNNING update leaves) until it ends (a KILLING
            // task of a hung executor never ends); STAGING is Mesos' own.
            .filter(|(_, _, a)| {
                matches!(
                    a.state,
                    events::TaskState::Starting
                        | events::TaskState::Running
                        | events::TaskState::Killing
                )
            })
            .map(|(rid, i, a)| state.runs[&rid].task_id(i, a.number))
            .collect();
        self.heard.retain(|t, _| live.contains(t));
        self.silent_noted.retain(|t| live.contains(t));
        for task_id in live {
            let last = self
                .heard
                .get(&task_id)
                .copied()
                .unwrap_or(since)
                .max(since);
            if now.saturating_sub(last) > max && self.silent_noted.insert(task_id.clone()) {
                self.inputs.push_back(Queued::Silent(task_id));
            }
        }
    }

    fn news(&mut self, state: &State, news: ExecutorNews, now: i64) {
        let heard_of = match &news {
            ExecutorNews::Heartbeat { task_id }
            | ExecutorNews::Progress { task_id, .. }
            | ExecutorNews::Status { task_id, .. } => task_id,
        };
        if attempt_live(state, heard_of) {
            self.heard.insert(heard_of.clone(), now);
        }
        let task_id = match news {
            // Liveness only; Mesos tells us when an executor dies.
            ExecutorNews::Heartbeat { .. } => return,
            ExecutorNews::Progress { task_id, percent } => {
                let p = if percent.is_finite() {
                    percent.clamp(0.0, 100.0) as u32
                } else {
                    0
                };
                self.progress.entry(task_id.clone()).or_default().latest.0 = p;
                task_id
            }
            ExecutorNews::Status { task_id, text } => {
                self.progress.entry(task_id.clone()).or_default().latest.1 = text;
                task_id
            }
        };
        self.record_progress(state, task_id, now);
    }

    /// Queues `task_id`'s latest progress for recording unless it is
    /// recorded already. Progress is rate limited per attempt
    /// (`progress_interval_ms_min`); what is held back is recorded when the
    /// interval has passed, so the last percent and text of a quiet step
    /// are never lost.
    fn record_progress(&mut self, state: &State, task_id: String, now: i64) {
        let Some(last_recorded) = live_attempt_progress_ms(state, &task_id) else {
            self.progress.remove(&task_id);
            return;
        };
        let interval = self.cfg.limits.progress_interval_ms_min;
        let Some(t) = self.progress.get_mut(&task_id) else {
            return;
        };
        if t.recorded.as_ref() == Some(&t.latest) {
            return;
        }
        let last = last_recorded.max(t.queued_ms);
        if now.saturating_sub(last) >= interval {
            t.recorded = Some(t.latest.clone());
            t.queued_ms = now;
            let (percent, text) = t.latest.clone();
            self.inputs.push_back(Queued::Progress(Progress {
                task_id,
                percent,
                text,
            }));
        } else {
            let at = last.saturating_add(interval);
            self.arm(Timer::Progress(task_id), at);
        }
    }
}

/// Whether state says the attempt behind `task_id` is live.
fn attempt_live(state: &State, task_id: &str) -> bool {
    live_attempt_progress_ms(state, task_id).is_some()
}

/// The live attempt's last recorded progress time, if `task_id` names a
/// live attempt.
fn live_attempt_progress_ms(state: &State, task_id: &str) -> Option<i64> {
    let (run, inst, attempt) = parse_task_id(task_id)?;
    state
        .run(run)?
        .instances
        .get(inst as usize)?
        .live_attempt()
        .filter(|a| a.number == attempt)
        .map(|a| a.last_progress_ms)
}

/// Re-derives a launch (its rendered intent, with kaon's variables) from
/// state and the plan, for a live attempt that must be taken up again
/// after an overflow: the same rendering decide used (decide re-renders
/// from the same recorded state, so the command is identical).
fn relaunch_intent(
    state: &State,
    run: crate::ids::RunId,
    inst: u32,
    attempt: u32,
) -> Option<pb::TaskLaunchRequested> {
    decide::render_launch(state, run, inst, attempt)
}

/// One agent's held offers as one pool for placement (named by the first
/// offer's id): scalars summed, port ranges joined.
fn pool(held: &[HeldOffer]) -> Offer {
    let mut out = held[0].offer.clone();
    for h in &held[1..] {
        for (k, v) in &h.offer.scalars {
            *out.scalars.entry(k.clone()).or_default() += v;
        }
        out.ports.extend(h.offer.ports.iter().copied());
    }
    out
}
