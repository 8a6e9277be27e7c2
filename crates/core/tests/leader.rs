//! The pure leader's own rules (kaon_core::leader): rounds, batching,
//! what is reconciled, offers and placement, progress deferral, errors.
//! Each test drives `Leader` by hand: step, ready, commit, advance.

use std::collections::BTreeMap;

use kaon_core::Limits;
use kaon_core::decide::{Command, Rejection, SubmitTarget, TaskUpdate};
use kaon_core::events::{Body, Event, TaskState};
use kaon_core::leader::{
    Action, CommandId, ExecutorNews, Input, Leader, LeaderConfig, MesosEvent, Ready, Reply,
};

/// A leader that treats 60 s of executor silence as a lost task.
fn with_silence() -> World {
    let mut cfg = LeaderConfig::new(1, 1, "kaon");
    cfg.executor_silence_ms_max = Some(60_000);
    World::with(cfg)
}

/// Whether a retry was scheduled.
fn retried(w: &World) -> bool {
    w.log
        .iter()
        .any(|e| matches!(e.body, Some(Body::RetryScheduled(_))))
}

/// Whether a kill was asked for.
fn killed(w: &World) -> bool {
    w.log
        .iter()
        .any(|e| matches!(e.body, Some(Body::TaskKillRequested(_))))
}

/// One step launched on O1 (Mesos has said nothing of it yet); its task id.
fn one_launched(w: &mut World) -> String {
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a]}\n",
        "",
    );
    w.settle();
    w.offer("O1", 10.0, &[]);
    w.launched().pop().expect("launched")
}

/// One running step (launched on O1 and reported running); its task id.
fn one_running(w: &mut World) -> String {
    let t = one_launched(w);
    w.update(&t, TaskState::Running, 1);
    t
}

/// Issue 10, section 6: a running task whose executor goes silent past
/// the limit is killed, and once the kill is confirmed it is retried under
/// the platform budget.
#[test]
fn a_silent_executor_is_killed_and_its_step_retried_as_lost() {
    let mut w = with_silence();
    let t = one_running(&mut w);
    w.now += 50_000;
    w.settle();
    assert!(
        !w.actions.iter().any(|a| matches!(a, Action::Kill { .. })),
        "50 s of silence is within the limit"
    );
    // The shell calls again only when told to: the next check must be in
    // `wake_at_ms` even right after one fired (found with real processes).
    let r = w.round();
    assert!(
        r.wake_at_ms
            .is_some_and(|at| at > w.now && at <= w.now + 60_000),
        "{:?}",
        r.wake_at_ms
    );
    w.now += 20_000;
    w.settle();
    let kills = w
        .log
        .iter()
        .filter(|e| matches!(&e.body, Some(Body::TaskKillRequested(k)) if k.cause == kaon_core::events::KillCause::ExecutorSilent as i32))
        .count();
    assert_eq!(kills, 1, "killed once for silence");
    assert!(
        w.actions
            .iter()
            .any(|a| matches!(a, Action::Kill { task_id, .. } if *task_id == t)),
        "{:?}",
        w.actions
    );
    // Mesos confirms: the attempt is lost to the platform, and retried.
    w.update(&t, TaskState::Killed, 2);
    assert!(retried(&w), "retried under the platform budget");
    let run = w.state.runs.values().next().unwrap();
    let inst = run.instances.iter().find(|i| i.path == "a").unwrap();
    assert_eq!(inst.retries_used[1], 1, "one platform retry spent");
}

/// A step whose executor said STARTING and then stopped answering (hung
/// before its RUNNING update left; found in CI with real processes under
/// load) is silent too: it is killed, its executor shut down, and retried.
#[test]
fn an_executor_silent_before_running_is_shut_down() {
    let mut w = with_silence();
    let t = one_launched(&mut w);
    w.update(&t, TaskState::Starting, 1);
    w.now += 70_000;
    w.settle();
    w.now += 20_000;
    w.settle();
    assert!(
        w.actions
            .iter()
            .any(|a| matches!(a, Action::ShutdownExecutor { .. })),
        "the hung executor is shut down: {:?}",
        w.actions
    );
    w.update(&t, TaskState::Lost, 2);
    assert!(retried(&w), "retried under the platform budget");
}

/// A step being cancelled whose executor hangs (its kill can never be
/// carried out) gets its executor shut down; the cancel stays the cause.
#[test]
fn a_kill_stuck_in_a_silent_executor_shuts_it_down() {
    let mut w = with_silence();
    let t = one_running(&mut w);
    let run_id = *w.state.runs.keys().next().unwrap();
    w.command(Command::CancelRun {
        run_id,
        reason: "test".into(),
    });
    w.settle();
    w.update(&t, TaskState::Killing, 2);
    assert!(
        !w.actions
            .iter()
            .any(|a| matches!(a, Action::ShutdownExecutor { .. })),
        "a cancel alone kills the task, not its executor"
    );
    w.now += 90_000;
    w.settle();
    let shutdowns = w
        .actions
        .iter()
        .filter(|a| matches!(a, Action::ShutdownExecutor { .. }))
        .count();
    assert_eq!(shutdowns, 1, "{:?}", w.actions);
    assert_eq!(
        step(&w, "a").attempts[0].kill,
        Some(kaon_core::events::KillCause::RunCancelled),
        "the cancel is still why it was killed"
    );
}

/// A task Mesos has not yet handed to an executor (STAGING: fetching,
/// executor starting) is not the executor's silence: Mesos' own
/// registration timeout covers it.
#[test]
fn a_staging_task_is_not_silent() {
    let mut w = with_silence();
    one_launched(&mut w);
    w.now += 200_000;
    w.settle();
    assert!(!killed(&w), "never killed");
}

/// A chain p1 -> p2 with p1 launched on an offer that has room for one
/// task; p1's task id.
fn chain_with_p1_running(w: &mut World) -> String {
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: chain\nsteps:\n  p1: {run: [./p1]}\n  p2: {depends_on: [p1], run: [./p2]}\n",
        "",
    );
    w.settle();
    w.offer("O1", 0.15, &[]);
    let p1 = w.launched().pop().expect("p1 launched");
    assert!(p1.ends_with(":p1"), "{p1}");
    p1
}

/// p1 ends, then an offer with room for one task comes: what it launched.
fn finish_p1_and_offer_room_for_one(w: &mut World, p1: &str) -> String {
    w.update(p1, TaskState::Running, 1);
    w.update(p1, TaskState::Finished, 2);
    w.actions.clear();
    w.offer("O2", 0.15, &[]);
    let launched = w.launched();
    assert_eq!(launched.len(), 1, "room for one: {launched:?}");
    launched[0].clone()
}

/// Issue 11 (the midnight peak): a run in progress is not starved by runs
/// that arrive after it: its next step is placed before their first ones,
/// although their launches waited longer.
#[test]
fn the_next_step_of_an_older_run_goes_before_newer_runs() {
    let mut w = World::new();
    let p1 = chain_with_p1_running(&mut w);
    for k in 0..5 {
        w.submit(
            &format!("apiVersion: kaon/v1\nname: new{k}\nsteps:\n  a: {{run: [./a]}}\n"),
            "",
        );
    }
    w.settle();
    assert_eq!(w.launched().len(), 1, "no room for the newer runs yet");
    let launched = finish_p1_and_offer_room_for_one(&mut w, &p1);
    assert!(
        launched.ends_with(":p2"),
        "the older run's next step first, not {launched:?}"
    );
}

/// ... but a launch that has waited `launch_aging_ms` goes first, so an
/// old run that keeps adding steps cannot starve a newer one.
#[test]
fn a_launch_that_waited_long_enough_goes_first() {
    let mut w = World::new();
    let p1 = chain_with_p1_running(&mut w);
    w.submit(
        "apiVersion: kaon/v1\nname: newer\nsteps:\n  a: {run: [./a]}\n",
        "",
    );
    w.settle();
    w.now += 301_000; // past launch_aging_ms (300 s)
    let launched = finish_p1_and_offer_room_for_one(&mut w, &p1);
    assert!(
        launched.ends_with(":a"),
        "the launch that waited 301 s first, not {launched:?}"
    );
}

/// Heartbeats keep a long step alive; silence counts again from each
/// subscription (messages are dropped while the scheduler is away).
#[test]
fn heartbeats_keep_a_long_step_alive() {
    let mut w = with_silence();
    let t = one_running(&mut w);
    for _ in 0..10 {
        w.now += 30_000;
        w.mesos(MesosEvent::Message(ExecutorNews::Heartbeat {
            task_id: t.clone(),
        }));
        w.settle();
    }
    // Away and back: 50 s after the new subscription is still fine.
    w.now += 55_000;
    w.subscribe();
    w.now += 50_000;
    w.settle();
    assert!(!killed(&w), "never killed");
}
use kaon_core::placement::Offer;
use kaon_core::state::State;

/// A leader over a log that commits every batch at once.
struct World {
    state: State,
    log: Vec<Event>,
    now: i64,
    leader: Leader,
    actions: Vec<Action>,
    replies: BTreeMap<CommandId, Reply>,
    batches: Vec<Vec<Body>>,
    next_id: CommandId,
}

impl World {
    fn new() -> World {
        World::with(LeaderConfig::new(1, 1, "kaon"))
    }

    fn with(cfg: LeaderConfig) -> World {
        let mut w = World {
            state: State::default(),
            log: Vec::new(),
            now: 1_767_225_600_000,
            leader: Leader::new(cfg),
            actions: Vec::new(),
            replies: BTreeMap::new(),
            batches: Vec::new(),
            next_id: 1,
        };
        w.settle();
        w
    }

    /// One `ready`, its batch committed and advanced.
    fn round(&mut self) -> Ready {
        let mut r = self.leader.ready(&self.state, self.now);
        self.actions.extend(r.actions.iter().cloned());
        for (id, reply) in std::mem::take(&mut r.replies) {
            self.replies.insert(id, reply);
        }
        if !r.propose.is_empty() {
            self.batches.push(r.propose.clone());
            let mut committed = Vec::new();
            for body in r.propose.clone() {
                let e = Event {
                    index: self.log.len() as u64 + 1,
                    time_unix_ms: self.now,
                    body: Some(body),
                };
                self.state.apply(&e).unwrap();
                self.log.push(e.clone());
                committed.push(e);
            }
            self.leader.advance(&self.state, &committed, self.now);
        }
        r
    }

    /// Rounds until nothing is proposed.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let r = self.round();
            if r.propose.is_empty() {
                // Replies and actions of follow-ups come with the next call.
                let r = self.round();
                if r.propose.is_empty() {
                    return;
                }
            }
        }
        panic!("did not settle");
    }

    fn mesos(&mut self, ev: MesosEvent) {
        self.leader.step(&self.state, Input::Mesos(ev), self.now);
    }

    fn command(&mut self, command: Command) -> CommandId {
        let id = self.next_id;
        self.next_id += 1;
        self.leader
            .step(&self.state, Input::Command { id, command }, self.now);
        id
    }

    fn submit(&mut self, source: &str, key: &str) -> CommandId {
        self.command(Command::SubmitRun {
            target: SubmitTarget::Inline {
                source: source.into(),
            },
            params: BTreeMap::new(),
            idempotency_key: key.into(),
        })
    }

    fn subscribe(&mut self) {
        self.mesos(MesosEvent::Subscribed {
            framework_id: "fw".into(),
        });
        self.settle();
    }

    fn offer(&mut self, id: &str, cpus: f64, attrs: &[(&str, &str)]) {
        self.mesos(MesosEvent::Offers(vec![Offer {
            id: id.into(),
            agent_id: format!("agent-{id}"),
            hostname: format!("host-{id}"),
            scalars: BTreeMap::from([("cpus".into(), cpus), ("mem".into(), 1e6)]),
            attributes: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Offer::default()
        }]));
        self.settle();
    }

    /// Another offer of an agent already offering (what a launch left, or
    /// resources freed), in the shape `offer` gives.
    fn more_of(&mut self, agent: &str, id: &str, cpus: f64) {
        let host = agent.replace("agent-", "host-");
        self.mesos(MesosEvent::Offers(vec![Offer {
            id: id.into(),
            agent_id: agent.into(),
            hostname: host,
            scalars: BTreeMap::from([("cpus".into(), cpus), ("mem".into(), 1e6)]),
            ..Offer::default()
        }]));
        self.settle();
    }

    fn launched(&self) -> Vec<String> {
        self.actions
            .iter()
            .flat_map(|a| match a {
                Action::Launch { tasks, .. } => tasks.iter().map(|t| t.task_id.clone()).collect(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn update(&mut self, task: &str, state: TaskState, uuid: u8) {
        self.mesos(MesosEvent::Update(TaskUpdate {
            task_id: task.into(),
            state,
            source: "SOURCE_EXECUTOR".into(),
            agent_id: "agent-O1".into(),
            uuid: vec![uuid; 16],
            outputs_json: (state == TaskState::Finished).then(|| "{}".to_string()),
            ..TaskUpdate::default()
        }));
        self.settle();
    }
}

/// The instance of step `path` in the first run.
fn step<'w>(w: &'w World, path: &str) -> &'w kaon_core::state::Instance {
    let run = w.state.runs.values().next().unwrap();
    run.instances.iter().find(|i| i.path == path).unwrap()
}

const JOIN: &str = "apiVersion: kaon/v1\nname: j\nsteps:\n  a: {run: [./a]}\n  b: {run: [./b], when: 'false'}\n  c: {depends_on: [a, b], run: [./c]}\n";

#[test]
fn a_step_woken_twice_in_one_round_is_launched_once() {
    // a and b end in the same round: both committed observations wake c,
    // decided against the same state. c's intent is proposed once and
    // launched once.
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: j\nsteps:\n  a: {run: [./a]}\n  b: {run: [./b]}\n  c: {depends_on: [a, b], run: [./c]}\n",
        "",
    );
    w.settle();
    w.offer("O1", 100.0, &[]);
    let (a, b) = (w.launched()[0].clone(), w.launched()[1].clone());
    w.update(&a, TaskState::Running, 1);
    w.update(&b, TaskState::Running, 2);
    for (t, uuid) in [(&a, 3), (&b, 4)] {
        w.mesos(MesosEvent::Update(TaskUpdate {
            task_id: t.clone(),
            state: TaskState::Finished,
            source: "SOURCE_EXECUTOR".into(),
            uuid: vec![uuid; 16],
            outputs_json: Some("{}".into()),
            ..TaskUpdate::default()
        }));
    }
    w.settle();
    w.offer("O2", 100.0, &[]);
    let launched = w.launched();
    assert_eq!(launched.len(), 3, "a, b and c, once each: {launched:?}");
    assert!(launched[2].ends_with(":c"));
    for batch in &w.batches {
        let intents: Vec<&Body> = batch
            .iter()
            .filter(|b| matches!(b, Body::TaskLaunchRequested(_)))
            .collect();
        let mut unique = intents.clone();
        unique.dedup();
        assert_eq!(
            intents.len(),
            unique.len(),
            "an event proposed twice in one batch"
        );
    }
}

#[test]
fn acknowledgements_follow_commits_and_one_batch_is_in_flight() {
    let mut w = World::new();
    w.subscribe();
    w.submit(JOIN, "");
    w.settle();
    w.offer("O1", 100.0, &[]);
    let a = w.launched()[0].clone();
    w.mesos(MesosEvent::Update(TaskUpdate {
        task_id: a.clone(),
        state: TaskState::Running,
        uuid: vec![9; 16],
        agent_id: "agent-O1".into(),
        ..TaskUpdate::default()
    }));
    let r = w.leader.ready(&w.state, w.now);
    assert_eq!(r.propose.len(), 1, "the observation");
    assert!(
        !r.actions
            .iter()
            .any(|x| matches!(x, Action::Acknowledge { .. })),
        "no ack before the commit"
    );
    // While the batch is in flight, nothing else is proposed.
    w.update(&a, TaskState::Finished, 10);
    let again = w.leader.ready(&w.state, w.now);
    assert!(again.propose.is_empty() && w.leader.in_flight());
    // Commit it: the ack comes with the next ready.
    let mut committed = Vec::new();
    for body in r.propose {
        let e = Event {
            index: w.log.len() as u64 + 1,
            time_unix_ms: w.now,
            body: Some(body),
        };
        w.state.apply(&e).unwrap();
        w.log.push(e.clone());
        committed.push(e);
    }
    w.leader.advance(&w.state, &committed, w.now);
    let after = w.leader.ready(&w.state, w.now);
    assert!(after.actions.contains(&Action::Acknowledge {
        task_id: a,
        agent_id: "agent-O1".into(),
        uuid: vec![9; 16]
    }));
}

#[test]
fn reconciles_every_live_task_but_the_launches_it_holds() {
    // Leader 1 launches a; b waits for an offer; leader 2 takes over.
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: two\nsteps:\n  a: {run: [./a]}\n  b: {run: [./b], resources: {cpus: 50}}\n",
        "",
    );
    w.settle();
    w.offer("O1", 10.0, &[]); // fits a only
    let launched = w.launched();
    assert_eq!(launched.len(), 1);
    let a = launched[0].clone();
    // A re-subscription of the same leader: b is its own launch, never
    // reconciled (Mesos would call it unknown: lost, launched again).
    w.actions.clear();
    w.subscribe();
    let tasks = w
        .actions
        .iter()
        .find_map(|x| match x {
            Action::Reconcile { tasks } => Some(tasks.clone()),
            _ => None,
        })
        .expect("reconciles on every subscription");
    assert_eq!(tasks, vec![(a.clone(), String::new())]);
    assert!(w.actions.contains(&Action::Revive), "b waits for offers");
    // A new leader holds nothing: it reconciles both.
    let mut cfg = LeaderConfig::new(2, 2, "kaon");
    cfg.limits = Limits::default();
    w.leader = Leader::new(cfg);
    w.settle();
    w.actions.clear();
    w.subscribe();
    let tasks = w
        .actions
        .iter()
        .find_map(|x| match x {
            Action::Reconcile { tasks } => Some(tasks.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(tasks.len(), 2, "{tasks:?}");
}

#[test]
fn placement_honours_constraints_and_holds_what_it_cannot_use_yet() {
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: eu\nsteps:\n  a: {run: [./a], constraints: [{attribute: zone, like: 'eu-.*'}]}\n",
        "",
    );
    w.settle();
    w.offer("O1", 10.0, &[("zone", "us-east-1")]);
    assert!(w.launched().is_empty(), "not in the us");
    // It says why it waits (issue 9, E), once, as the attempt's status.
    let a = step(&w, "a");
    assert_eq!(
        a.status_text,
        "pending: none of the 1 agent offering resources can run it: constraint zone like \"eu-.*\" not met (agent host-O1 has zone = \"us-east-1\")"
    );
    w.offer("O3", 10.0, &[("zone", "us-west-1")]);
    let noted = w
        .log
        .iter()
        .filter(|e| matches!(e.body, Some(Body::ProgressReported(_))))
        .count();
    assert_eq!(noted, 1, "recorded once per attempt");
    assert!(
        !w.actions
            .iter()
            .any(|x| matches!(x, Action::Decline { .. })),
        "held while a run is active (the next launch may use them): {:?}",
        w.actions
    );
    w.offer("O2", 10.0, &[("zone", "eu-west-1")]);
    assert_eq!(w.launched().len(), 1);
    let Some(Action::Launch { offer_ids, tasks }) = w
        .actions
        .iter()
        .find(|x| matches!(x, Action::Launch { .. }))
    else {
        panic!()
    };
    assert_eq!(offer_ids, &vec!["O2".to_string()]);
    let t = &tasks[0];
    assert_eq!(t.agent_id, "agent-O2");
    assert_eq!(
        t.executor_id, "kaon-exec-t1-g0",
        "the agent's shared executor"
    );
    assert!(
        t.step.env.iter().any(|(k, _)| k == "KAON_TASK_ID"),
        "kaon's variables reach the step"
    );
    // Held no longer than offer_hold_ms_max, then declined briefly (it
    // comes back while the run is active).
    w.actions.clear();
    w.now += LeaderConfig::new(1, 1, "kaon").offer_hold_ms_max;
    w.settle();
    assert!(
        w.actions.iter().any(|x| matches!(x, Action::Decline { offer_ids, refuse_seconds } if offer_ids == &vec!["O1".to_string(), "O3".to_string()] && *refuse_seconds == 1.0)),
        "{:?}",
        w.actions
    );
    assert!(!w.actions.contains(&Action::Suppress), "a run is active");
}

/// While runs are active, an offer nothing needs now is held, and the
/// next launch goes out on it at once: no REVIVE and no new offer between
/// a step's end and the next step's start (issue 10, section 1). Once no
/// run is active, held offers go back and offers are suppressed.
#[test]
fn held_offers_take_the_next_launch_at_once_and_go_back_when_idle() {
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: chain\nsteps:\n  a: {run: [./a]}\n  b: {run: [./b], depends_on: [a]}\n",
        "",
    );
    w.settle();
    w.offer("O1", 10.0, &[]);
    let a = w.launched()[0].clone();
    // What the launch left comes back as a new offer of the same agent.
    w.more_of("agent-O1", "O1b", 8.0);
    w.update(&a, TaskState::Running, 1);
    w.actions.clear();
    w.update(&a, TaskState::Finished, 2);
    let launches: Vec<&Action> = w
        .actions
        .iter()
        .filter(|x| matches!(x, Action::Launch { .. } | Action::Revive))
        .collect();
    assert!(
        matches!(launches.as_slice(), [Action::Launch { offer_ids, tasks }] if offer_ids == &vec!["O1b".to_string()] && tasks[0].task_id.ends_with(":b") && tasks[0].executor_id == "kaon-exec-t1-g0"),
        "b went out on the held offer, in a's executor: {launches:?}"
    );
    let b = w.launched()[0].clone();
    w.more_of("agent-O1", "O1c", 8.0);
    w.actions.clear();
    w.update(&b, TaskState::Running, 3);
    w.update(&b, TaskState::Finished, 4);
    assert!(w.state.active_runs.is_empty());
    assert!(
        w.actions.iter().any(|x| matches!(x, Action::Decline { offer_ids, refuse_seconds } if offer_ids == &vec!["O1c".to_string()] && *refuse_seconds == 5.0)),
        "idle: the held offer goes back: {:?}",
        w.actions
    );
    assert!(w.actions.contains(&Action::Suppress), "{:?}", w.actions);
}

/// An agent's executor is shared by its steps; once it has had no step for
/// half its idle time, the next step goes to a new executor (the old one
/// may be exiting).
#[test]
fn steps_share_an_agents_executor_until_it_idles() {
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: two\nsteps:\n  a: {run: [./a]}\n  b: {run: [./b]}\n  c: {run: [./c], depends_on: [a, b]}\n",
        "",
    );
    w.settle();
    w.offer("O1", 10.0, &[]);
    let tasks: Vec<(String, String)> = w
        .actions
        .iter()
        .flat_map(|x| match x {
            Action::Launch { tasks, .. } => tasks
                .iter()
                .map(|t| (t.task_id.clone(), t.executor_id.clone()))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(tasks.len(), 2);
    assert!(
        tasks.iter().all(|(_, e)| e == "kaon-exec-t1-g0"),
        "{tasks:?}"
    );
    for (i, (t, _)) in tasks.iter().enumerate() {
        w.update(t, TaskState::Running, 10 + i as u8);
        w.update(t, TaskState::Finished, 20 + i as u8);
    }
    // c waits for an offer, which comes after half the idle time.
    w.now += LeaderConfig::new(1, 1, "kaon").executor.idle_ms / 2;
    w.actions.clear();
    w.offer("O1", 10.0, &[]);
    let c = w
        .actions
        .iter()
        .find_map(|x| match x {
            Action::Launch { tasks, .. } => Some(tasks[0].clone()),
            _ => None,
        })
        .expect("c launched");
    assert!(c.task_id.ends_with(":c"));
    assert_eq!(
        c.executor_id, "kaon-exec-t1-g1",
        "a new executor after the idle half"
    );
}

/// An offer Mesos rescinds is never used.
#[test]
fn a_rescinded_offer_is_never_used() {
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: big\nsteps:\n  a: {run: [./a], resources: {cpus: 50}}\n  s: {run: [./s]}\n",
        "",
    );
    w.settle();
    // s runs (the run stays active) on O0; O1 is too small for a: held.
    w.offer("O0", 1.0, &[]);
    w.offer("O1", 10.0, &[]);
    w.mesos(MesosEvent::Rescind {
        offer_id: "O1".into(),
    });
    w.settle();
    w.actions.clear();
    // More of the same agent: the pool would now fit a, if O1 still counted.
    w.more_of("agent-O1", "O1b", 45.0);
    assert!(w.launched().is_empty(), "{:?}", w.actions);
    w.more_of("agent-O1", "O1c", 10.0);
    assert!(
        w.actions.iter().any(|x| matches!(x, Action::Launch { offer_ids, .. } if offer_ids == &vec!["O1b".to_string(), "O1c".to_string()])),
        "one ACCEPT names every offer of the agent's pool: {:?}",
        w.actions
    );
}

/// A step larger than any agent offers says so; one that some offer could
/// host alone but that lost to others only waits (nothing recorded).
#[test]
fn a_step_larger_than_any_offer_says_why_it_waits() {
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: big\nsteps:\n  a: {run: [./a], resources: {cpus: 32}}\n",
        "",
    );
    w.settle();
    w.offer("O1", 4.0, &[]);
    let a = step(&w, "a");
    assert!(
        a.status_text.starts_with("pending: none of the 1 agent offering resources can run it: needs cpus 32.01 (the executor's share included), agent host-O1 offers 4"),
        "{}",
        a.status_text
    );
    w.offer("O2", 64.0, &[]);
    assert_eq!(w.launched().len(), 1);
}

#[test]
fn a_launch_whose_attempt_ended_never_goes_out() {
    let mut w = World::new();
    w.subscribe();
    let id = w.submit(
        "apiVersion: kaon/v1\nname: big\nsteps:\n  a: {run: [./a], resources: {cpus: 50}}\n",
        "",
    );
    w.settle();
    let run = match w.replies.remove(&id) {
        Some(Ok(o)) => {
            o.committed
                .iter()
                .find(|e| matches!(e.body, Some(Body::RunSubmitted(_))))
                .unwrap()
                .index
        }
        other => panic!("{other:?}"),
    };
    w.command(Command::CancelRun {
        run_id: run,
        reason: "no".into(),
    });
    w.settle();
    assert!(
        w.actions.iter().any(|x| matches!(x, Action::Kill { .. })),
        "the held launch is killed (Mesos answers: unknown)"
    );
    w.offer("O1", 100.0, &[]);
    assert!(w.launched().is_empty(), "{:?}", w.actions);
}

#[test]
fn only_submissions_share_a_round_other_commands_go_alone() {
    let mut w = World::new();
    w.subscribe();
    w.batches.clear();
    let one = "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a]}\n";
    // Two registrations of new versions of the same workflow: each must
    // see the other's version, so they are decided one after the other.
    w.command(Command::RegisterWorkflow { source: one.into() });
    w.command(Command::RegisterWorkflow {
        source: one.replace("./a", "./b"),
    });
    w.submit(one, "k1");
    w.submit(one, "k2");
    w.submit(one, "k1"); // same key as an earlier one in the round
    w.settle();
    let versions: Vec<u32> = w
        .log
        .iter()
        .filter_map(|e| match &e.body {
            Some(Body::WorkflowRegistered(r)) => Some(r.version),
            _ => None,
        })
        .collect();
    assert_eq!(versions, vec![1, 2], "each registration saw the one before");
    let runs: Vec<u64> = w
        .log
        .iter()
        .filter(|e| matches!(e.body, Some(Body::RunSubmitted(_))))
        .map(|e| e.index)
        .collect();
    assert_eq!(runs.len(), 2, "k1 once, k2 once");
    // The three submits answered: the repeated key with the first run.
    let answers: Vec<Option<u64>> = (3..=5)
        .map(|id| match &w.replies[&id] {
            Ok(o) => o
                .decision
                .existing_run
                .or_else(|| o.committed.first().map(|e| e.index)),
            Err(e) => panic!("{e}"),
        })
        .collect();
    assert_eq!(answers[0], answers[2], "{answers:?}");
}

#[test]
fn a_refused_write_answers_unavailable_and_stops() {
    let mut w = World::new();
    w.subscribe();
    let id = w.submit(JOIN, "");
    let r = w.leader.ready(&w.state, w.now);
    assert!(!r.propose.is_empty());
    let later = w.submit(JOIN, "");
    w.leader.abort("lost leadership");
    let r = w.leader.ready(&w.state, w.now);
    assert!(r.stop.is_some());
    let got: BTreeMap<CommandId, Reply> = r.replies.into_iter().collect();
    for i in [id, later] {
        assert!(
            matches!(&got[&i], Err(Rejection::Unavailable(m)) if m.contains("lost leadership")),
            "{:?}",
            got.get(&i)
        );
    }
}

#[test]
fn a_full_command_queue_is_refused_naming_its_limit() {
    let mut cfg = LeaderConfig::new(1, 1, "kaon");
    cfg.commands_queued_max = 2;
    let mut w = World::with(cfg);
    for _ in 0..3 {
        w.submit(JOIN, "");
    }
    let r = w.leader.ready(&w.state, w.now);
    let refused: Vec<&Reply> = r.replies.iter().map(|(_, r)| r).collect();
    assert!(
        refused.iter().any(
            |r| matches!(r, Err(Rejection::LimitExceeded(m)) if m.contains("commands_queued_max"))
        ),
        "{refused:?}"
    );
}

#[test]
fn progress_held_back_by_the_rate_limit_is_recorded_later() {
    let mut w = World::new();
    w.subscribe();
    w.submit(JOIN, "");
    w.settle();
    w.offer("O1", 100.0, &[]);
    let a = w.launched()[0].clone();
    w.update(&a, TaskState::Running, 1);
    let progress = |w: &World| {
        w.log
            .iter()
            .filter_map(|e| match &e.body {
                Some(Body::ProgressReported(p)) => Some((p.percent, p.status_text.clone())),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    w.mesos(MesosEvent::Message(ExecutorNews::Progress {
        task_id: a.clone(),
        percent: 10.0,
    }));
    w.settle();
    w.now += 100;
    w.mesos(MesosEvent::Message(ExecutorNews::Progress {
        task_id: a.clone(),
        percent: 40.0,
    }));
    w.mesos(MesosEvent::Message(ExecutorNews::Status {
        task_id: a.clone(),
        text: "loading".into(),
    }));
    let r = w.round();
    assert_eq!(progress(&w), vec![(10, String::new())], "rate limited");
    let wake = r.wake_at_ms.expect("a deferred record is armed");
    assert_eq!(
        wake,
        w.now - 100 + Limits::default().progress_interval_ms_min
    );
    w.now = wake;
    w.settle();
    assert_eq!(
        progress(&w),
        vec![(10, String::new()), (40, "loading".to_string())],
        "the last percent and text of a quiet step are kept"
    );
}

#[test]
fn a_subscription_taken_by_another_scheduler_stops_the_leader() {
    let mut w = World::new();
    w.subscribe();
    w.mesos(MesosEvent::SubscriptionEnded {
        message: "Framework failed over".into(),
    });
    let r = w.leader.ready(&w.state, w.now);
    assert!(r.stop.unwrap().contains("Framework failed over"));
    let id = w.submit(JOIN, "");
    let r = w.leader.ready(&w.state, w.now);
    assert!(matches!(&r.replies[..], [(i, Err(Rejection::Unavailable(_)))] if *i == id));
}

#[test]
fn an_intent_in_flight_is_never_reconciled_even_once_applied() {
    // The state machine applies a batch before the shell reports it with
    // `advance`. A SUBSCRIBED in between must not reconcile the launch in
    // that batch: Mesos would answer "unknown" (it was never sent), and the
    // step would be retried while this leader launches it anyway (found by
    // the cluster simulation, seed 826).
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: one\nsteps:\n  a: {run: [./a]}\n",
        "",
    );
    // Commit the submit; its follow-up (the launch intent) goes next round.
    w.round();
    let r = w.leader.ready(&w.state, w.now);
    assert!(
        r.propose
            .iter()
            .any(|b| matches!(b, Body::TaskLaunchRequested(_))),
        "{:?}",
        r.propose
    );
    for body in r.propose {
        let e = Event {
            index: w.log.len() as u64 + 1,
            time_unix_ms: w.now,
            body: Some(body),
        };
        w.state.apply(&e).unwrap();
        w.log.push(e);
    }
    // Applied, not yet advanced: a re-subscription now.
    w.mesos(MesosEvent::Subscribed {
        framework_id: "fw".into(),
    });
    let r = w.leader.ready(&w.state, w.now);
    let tasks = r
        .actions
        .iter()
        .find_map(|x| match x {
            Action::Reconcile { tasks } => Some(tasks.clone()),
            _ => None,
        })
        .unwrap();
    assert!(tasks.is_empty(), "its own launch reconciled: {tasks:?}");
}

/// An executor that died (its steps reported REASON_EXECUTOR_TERMINATED)
/// is not launched into again: Mesos may still be tearing it down, and a
/// task sent to it then would be lost.
#[test]
fn a_dead_executor_is_not_reused() {
    let mut w = World::new();
    w.subscribe();
    w.submit(
        "apiVersion: kaon/v1\nname: two\nsteps:\n  a: {run: [./a], retry: {platform_errors: 1, backoff: {kind: fixed, initial: 1s}}}\n",
        "",
    );
    w.settle();
    w.offer("O1", 10.0, &[]);
    let a = w.launched()[0].clone();
    w.update(&a, TaskState::Running, 1);
    w.actions.clear();
    w.mesos(MesosEvent::Update(TaskUpdate {
        task_id: a.clone(),
        state: TaskState::Failed,
        reason: "REASON_EXECUTOR_TERMINATED".into(),
        source: "SOURCE_AGENT".into(),
        agent_id: "agent-O1".into(),
        uuid: vec![2; 16],
        ..TaskUpdate::default()
    }));
    w.settle();
    // The retry waits out its backoff (well within the executor's idle
    // time), then goes to the same agent.
    w.now += 2_000;
    w.settle();
    w.more_of("agent-O1", "O1b", 10.0);
    let retry = w
        .actions
        .iter()
        .find_map(|x| match x {
            Action::Launch { tasks, .. } => Some(tasks[0].clone()),
            _ => None,
        })
        .expect("the retry is launched");
    assert_ne!(retry.task_id, a);
    assert_eq!(retry.executor_id, "kaon-exec-t1-g1", "a new executor");
}
